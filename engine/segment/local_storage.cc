#include "segment/local_storage.h"

#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

namespace baton {
namespace {

constexpr uint64_t kHugePage = 2ull << 20;
constexpr uint64_t kPage = 4096;

uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// libnuma fills process-wide caches on first use without locking
// (numa_node_to_cpus): storage is created by several threads (API callers,
// each engine's slot allocator), so its libnuma calls take turns.
std::mutex numa_mu;

int current_numa_node() {
  if (numa_available() < 0) return -1;
  int cpu = sched_getcpu();
  if (cpu < 0) return -1;
  std::lock_guard lock(numa_mu);
  return numa_node_of_cpu(cpu);
}

}  // namespace

LocalStorage& LocalStorage::operator=(LocalStorage&& o) noexcept {
  if (this != &o) {
    this->~LocalStorage();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
    fd_ = std::exchange(o.fd_, -1);
    node_ = o.node_;
    huge_ = o.huge_;
    populated_ = o.populated_;
  }
  return *this;
}

LocalStorage::~LocalStorage() {
  if (data_ != nullptr) munmap(data_, mapped_);
  if (fd_ >= 0) close(fd_);
  data_ = nullptr;
  fd_ = -1;
}

// Maps `size` bytes of a new memfd, binds it to `node` and faults it in
// (huge pages always). Returns false (and leaves nothing open) if any step
// fails.
bool LocalStorage::map_memfd(const std::string& label, uint64_t size, int node, bool huge, bool populate) {
  const uint64_t page = huge ? kHugePage : kPage;
  int fd = memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));
  if (fd < 0) return false;
  const uint64_t mapped = round_up(size, page);
  void* p = MAP_FAILED;
  // The size is sealed: a process this descriptor is handed to (an
  // application, under batond) cannot shrink the file under this mapping,
  // which would make every later access here a SIGBUS.
  if (ftruncate(fd, static_cast<off_t>(mapped)) == 0 &&
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
    p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return false;
  }
  // Bind before the first touch so pages come from that node.
  if (node >= 0) {
    std::lock_guard lock(numa_mu);
    numa_tonode_memory(p, mapped, node);
  }
  // Fault everything in now (small pages: unless the caller has it done
  // later, populate()): the first commit must not pay for page faults, and
  // a short hugetlb pool must show here (ENOMEM), not as SIGBUS later.
  populate |= huge;
  if (populate && madvise(p, mapped, MADV_POPULATE_WRITE) != 0) {
    munmap(p, mapped);
    close(fd);
    return false;
  }
  data_ = static_cast<std::byte*>(p);
  mapped_ = mapped;
  fd_ = fd;
  huge_ = huge;
  populated_ = populate;
  return true;
}

void LocalStorage::populate() const noexcept {
  // A failure leaves the pages to fault in on first touch, as before.
  if (!populated_ && data_ != nullptr) (void)madvise(data_, mapped_, MADV_POPULATE_WRITE);
}

Result<LocalStorage> LocalStorage::share() const {
  if (data_ == nullptr) return fail(Errc::kInvalidArgument, "no memory to share");
  const int fd = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kIo, "cannot duplicate a memory descriptor: ", std::strerror(errno));
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    close(fd);
    return fail(Errc::kIo, "cannot map memory again: ", std::strerror(err));
  }
  LocalStorage s;
  s.data_ = static_cast<std::byte*>(p);
  s.size_ = size_;
  s.mapped_ = mapped_;
  s.fd_ = fd;
  s.node_ = node_;
  s.huge_ = huge_;
  s.populated_ = populated_;
  return s;
}

Result<LocalStorage> LocalStorage::create(const std::string& name, uint64_t size, int numa_node, Pages pages,
                                          Populate populate) {
  if (size == 0) return fail(Errc::kInvalidArgument, "segment size is 0");
  LocalStorage s;
  s.size_ = size;
  s.node_ = numa_node >= 0 ? numa_node : current_numa_node();
  const std::string label = "baton:" + name;
  // Huge pages only pay off (and only fit) for segments of at least one page.
  if (pages == Pages::kAny && size >= kHugePage && s.map_memfd(label, size, s.node_, true, true)) return s;
  if (s.map_memfd(label, size, s.node_, false, populate == Populate::kNow)) return s;
  return fail(Errc::kNoMemory, "cannot map ", std::to_string(size), " bytes for ", name, ": ",
              std::strerror(errno));
}

}  // namespace baton
