// shm driver (include/baton/shm.h): two SPSC rings of frame slots in a
// shared file mapping.
//
// Layout: a header page (format, geometry, each side's process id and
// peer lock), then
// ring 0 (side 0 -> side 1), then ring 1. A ring is a head (the consumer's,
// on its own cache line), a tail (the producer's, on its own) and `slots`
// slots of (length, max_frame bytes). Indices only grow; slot = index % slots.

#include "baton/shm.h"

#include <fcntl.h>
#include <numaif.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/log.h"
#include "runtime/futex.h"
#include "runtime/peer_lock.h"

namespace baton::shm {
namespace {

constexpr uint64_t kMagic = 0x62746f6e73686d32ull;  // "btonshm2"
constexpr uint64_t kCheckNs = 10'000'000;            // how often the peer's process is looked at

struct alignas(64) Header {
  std::atomic<uint64_t> magic;
  uint32_t max_frame;
  uint32_t slots;
  std::atomic<int32_t> pid[2];     ///< 0: that side is not attached
  std::atomic<uint64_t> start[2];  ///< the process's start time (/proc/PID/stat): a reused pid is another process
  /// Each side's robust mutex, held while it is attached: its holder's
  /// death shows there before the process is torn down (runtime/peer_lock.h).
  LockPair alive;
};
static_assert(sizeof(Header) <= 4096, "the header page");

struct alignas(64) RingIndex {
  std::atomic<uint64_t> value;
};

struct Slot {
  uint32_t len;
  uint32_t pad;
  // max_frame bytes follow
};

uint64_t slot_bytes(uint32_t max_frame) { return (sizeof(Slot) + max_frame + 63) / 64 * 64; }
uint64_t ring_bytes(uint32_t max_frame, uint32_t slots) { return 2 * sizeof(RingIndex) + slots * slot_bytes(max_frame); }
uint64_t region_bytes(uint32_t max_frame, uint32_t slots) { return 4096 + 2 * ring_bytes(max_frame, slots); }

// The start time of process `pid` (clock ticks since boot, /proc/PID/stat's
// 22nd field), or 0 if it is gone or a zombie (killed, not yet reaped: it
// holds nothing any more).
uint64_t process_start(int32_t pid) {
  if (pid <= 0) return 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');  // the name may hold spaces and parentheses
  if (p == nullptr || p[1] == 0) return 0;
  p += 2;
  if (*p == 'Z' || *p == 'X') return 0;
  for (int field = 3; field < 22 && p != nullptr; ++field) {  // state is field 3
    p = std::strchr(p, ' ');
    if (p != nullptr) ++p;
  }
  return p == nullptr ? 0 : std::strtoull(p, nullptr, 10);
}

// Whether side `side` of the region is held by a live process.
bool held(const Header* h, int side) {
  const int32_t pid = h->pid[side].load(std::memory_order_acquire);
  if (pid == 0) return false;
  const uint64_t start = process_start(pid);
  return start != 0 && start == h->start[side].load(std::memory_order_acquire);
}

struct Ring {
  RingIndex* head;
  RingIndex* tail;
  std::byte* slots;
  uint32_t count;
  uint64_t stride;
  Slot* at(uint64_t index) const { return reinterpret_cast<Slot*>(slots + (index % count) * stride); }
};

Ring ring_at(std::byte* base, int which, uint32_t max_frame, uint32_t slots) {
  std::byte* r = base + 4096 + which * ring_bytes(max_frame, slots);
  return Ring{reinterpret_cast<RingIndex*>(r), reinterpret_cast<RingIndex*>(r + sizeof(RingIndex)),
              r + 2 * sizeof(RingIndex), slots, slot_bytes(max_frame)};
}

class ShmLink final : public Link {
 public:
  ShmLink(std::byte* base, size_t len, int side, uint16_t peer, uint32_t max_frame, uint32_t slots, std::string name)
      : base_(base), len_(len), side_(side), peer_(peer), max_frame_(max_frame), name_(std::move(name)),
        out_(ring_at(base, side, max_frame, slots)), in_(ring_at(base, 1 - side, max_frame, slots)) {
    // The lock first: the peer takes this side for attached once its pid
    // is there, and for gone if the lock is free after it was held.
    if (auto l = PeerLock::hold(&header()->alive, side_)) lock_ = std::move(*l);
    else BT_WARN("%s: %s; the peer sees this side die by its process alone", name_.c_str(), l.error().to_string().c_str());
    header()->start[side_].store(process_start(getpid()), std::memory_order_relaxed);
    header()->pid[side_].store(getpid(), std::memory_order_release);
    // Frames queued for this side before it attached were written for a
    // previous incarnation (or for nobody yet): this one starts after them,
    // as a memif reconnection starts on fresh rings. Read, they reached the
    // new incarnation as news: a restarted coordinator took its dead
    // predecessor's queued reports, seconds old, for current ones and
    // failed a group over to the node already running it (a campaign,
    // session 30). Frames the peer writes once it sees this side attached
    // come after the tail read here. Where the previous incarnation left
    // off writing is where this one goes on.
    const uint64_t queued = in_.tail->value.load(std::memory_order_acquire);
    in_.head->value.store(queued, std::memory_order_release);
    rx_next_ = queued;
    tx_next_ = out_.tail->value.load(std::memory_order_acquire);
  }
  ~ShmLink() override {
    header()->pid[side_].store(0, std::memory_order_release);
    lock_.release();  // in the mapping
    munmap(base_, len_);
  }

  const std::string& name() const noexcept override { return name_; }
  uint16_t peer() const noexcept override { return peer_; }

  /// Binds the ring this side writes to its node (moving pages already
  /// there): the peer's worker then reads remote and writes its replica
  /// slots local, as a destination's bulk copy should. Whole pages inside
  /// the ring only; a failure leaves the ring where it was and caps() saying
  /// no node (placement, not correctness: nothing else depends on it).
  void place(int numa_node) noexcept override {
    if (numa_node < 0 || numa_node >= 1024) return;
    const uintptr_t page = 4096;
    const auto first = reinterpret_cast<uintptr_t>(out_.head);
    const auto end = reinterpret_cast<uintptr_t>(out_.slots) + uint64_t{out_.count} * out_.stride;
    const uintptr_t from = (first + page - 1) / page * page, to = end / page * page;
    if (to <= from) return;
    unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {};
    mask[numa_node / (8 * sizeof(unsigned long))] = 1ul << (numa_node % (8 * sizeof(unsigned long)));
    if (mbind(reinterpret_cast<void*>(from), to - from, MPOL_BIND, mask, 1024, MPOL_MF_MOVE) == 0)
      bound_ = numa_node;
  }

  /// Its buffers sit on no node in particular until place() bound the ring it writes.
  LinkCaps caps() const noexcept override { return LinkCaps{max_frame_, false, bound_, true}; }

  bool up() noexcept override {
    const int32_t pid = header()->pid[1 - side_].load(std::memory_order_acquire);
    if (pid == 0) return false;
    // Its holder's death, seen before the process's memory is torn down
    // (which the /proc look below waits for: a zombie comes after it).
    if (lock_.peer_gone()) return false;
    // Another process's death leaves its pid behind: look every kCheckNs.
    const uint64_t now = now_ns();
    if (pid != checked_pid_ || now - checked_ns_ >= kCheckNs) {
      checked_pid_ = pid;
      checked_ns_ = now;
      peer_alive_ = held(header(), 1 - side_);
    }
    return peer_alive_;
  }

  uint16_t rx_burst(RxFrame* out, uint16_t n) noexcept override {
    const uint64_t tail = in_.tail->value.load(std::memory_order_acquire);
    uint16_t k = 0;
    for (uint64_t i = rx_next_; i < tail && k < n; ++i, ++k) {
      const Slot* s = in_.at(i);
      // A length past the slot is a corrupt region (or a writer of another
      // geometry): the frame is dropped, not read past its slot.
      const uint32_t len = s->len <= max_frame_ ? s->len : 0;
      if (len == 0) ++counters_.rx_dropped;
      out[k] = RxFrame{{reinterpret_cast<const std::byte*>(s + 1), len}, nullptr};
      counters_.rx_bytes += len;
    }
    rx_next_ += k;
    counters_.rx_frames += k;
    return k;
  }

  void release_rx(RxFrame* /*frames*/, uint16_t n) noexcept override {
    // Frames are released in the order they were received: the head moves
    // past the oldest n.
    const uint64_t head = in_.head->value.load(std::memory_order_relaxed);
    in_.head->value.store(std::min(head + n, rx_next_), std::memory_order_release);
  }

  uint16_t tx_burst(const TxFrame* frames, uint16_t n) noexcept override {
    const uint64_t head = out_.head->value.load(std::memory_order_acquire);
    uint16_t k = 0;
    for (; k < n; ++k) {
      if (tx_next_ - head >= out_.count) break;  // full: the peer has not released
      const TxFrame& f = frames[k];
      const size_t len = f.head.size() + f.payload.size();
      if (len > max_frame_) break;
      Slot* s = out_.at(tx_next_);
      auto* p = reinterpret_cast<std::byte*>(s + 1);
      std::memcpy(p, f.head.data(), f.head.size());
      if (!f.payload.empty()) std::memcpy(p + f.head.size(), f.payload.data(), f.payload.size());
      s->len = static_cast<uint32_t>(len);
      ++tx_next_;
      counters_.tx_bytes += len;
    }
    if (k > 0) out_.tail->value.store(tx_next_, std::memory_order_release);  // published, in order
    counters_.tx_frames += k;
    return k;
  }

  LinkCounters counters() const noexcept override { return counters_; }

 private:
  Header* header() const { return reinterpret_cast<Header*>(base_); }

  std::byte* base_;
  size_t len_;
  int side_;
  int bound_ = -1;  ///< the node place() bound the outgoing ring to
  uint16_t peer_;
  uint32_t max_frame_;
  std::string name_;
  Ring out_, in_;
  uint64_t rx_next_ = 0;  ///< the next frame to hand out (head <= rx_next_ <= tail)
  uint64_t tx_next_ = 0;  ///< the next slot to fill (published up to it)
  int32_t checked_pid_ = 0;
  uint64_t checked_ns_ = 0;
  bool peer_alive_ = false;
  PeerLock lock_;  ///< this side's hold on its mutex in the header
  LinkCounters counters_{};
};

}  // namespace

Result<std::unique_ptr<Link>> open(const Config& c) {
  if (c.path.empty()) return fail(Errc::kInvalidArgument, "shm: empty path");
  if (c.side != 0 && c.side != 1) return fail(Errc::kInvalidArgument, "shm: side must be 0 or 1");
  if (c.peer == 0 || c.peer == 0xFFFF) return fail(Errc::kInvalidArgument, "shm: peer must be 1..65534");
  if (c.max_frame < 1024 || c.max_frame > (1u << 20)) return fail(Errc::kInvalidArgument, "shm: max_frame must be 1 KiB..1 MiB");
  if (c.slots < 2 || c.slots > 65536) return fail(Errc::kInvalidArgument, "shm: slots must be 2..65536");
  const int fd = ::open(c.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return fail(Errc::kIo, "shm: open ", c.path, ": ", std::strerror(errno));
  const uint64_t len = region_bytes(c.max_frame, c.slots);
  // One side initialises the region at a time; the other waits here.
  if (flock(fd, LOCK_EX) != 0) {
    ::close(fd);
    return fail(Errc::kIo, "shm: lock ", c.path, ": ", std::strerror(errno));
  }
  struct stat st {};
  fstat(fd, &st);
  if (static_cast<uint64_t>(st.st_size) != len && ftruncate(fd, static_cast<off_t>(len)) != 0) {
    flock(fd, LOCK_UN);
    ::close(fd);
    return fail(Errc::kIo, "shm: size ", c.path, ": ", std::strerror(errno));
  }
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    flock(fd, LOCK_UN);
    ::close(fd);
    return fail(Errc::kIo, "shm: map ", c.path, ": ", std::strerror(errno));
  }
  auto* base = static_cast<std::byte*>(m);
  auto* h = reinterpret_cast<Header*>(base);
  // Another format or geometry (a crashed run of another build, another
  // config): start the region afresh.
  if (h->magic.load(std::memory_order_acquire) != kMagic || h->max_frame != c.max_frame || h->slots != c.slots) {
    std::memset(base, 0, len);
    if (auto ok = init_lock_pair(&h->alive); !ok) {
      munmap(m, len);
      flock(fd, LOCK_UN);
      ::close(fd);
      return fail(Errc::kIo, "shm: ", c.path, ": ", ok.error().message);
    }
    h->max_frame = c.max_frame;
    h->slots = c.slots;
    h->magic.store(kMagic, std::memory_order_release);
  }
  const int32_t other = h->pid[c.side].load(std::memory_order_acquire);
  if (other != 0 && other != getpid() && held(h, c.side)) {
    munmap(m, len);
    flock(fd, LOCK_UN);
    ::close(fd);
    // The side is the node ids' order: a second node with this one's id
    // (a copied config), or this node started twice, lands here.
    return fail(Errc::kInvalidArgument, "shm: side ", std::to_string(c.side), " of ", c.path, " (the ",
                c.side == 0 ? "lower" : "higher", " node id's, this node's) is held by live process ",
                std::to_string(other), ": another node with this node's id, or this node started twice?");
  }
  flock(fd, LOCK_UN);
  ::close(fd);  // the mapping stays
  return std::unique_ptr<Link>(new ShmLink(base, len, c.side, c.peer, c.max_frame, c.slots,
                                           "shm:" + c.path + "#" + std::to_string(c.side) + " -> node " +
                                               std::to_string(c.peer)));
}

Result<std::pair<std::unique_ptr<Link>, std::unique_ptr<Link>>> pair(const std::string& path, uint16_t node_a,
                                                                      uint16_t node_b, uint32_t max_frame,
                                                                      uint32_t slots) {
  ::unlink(path.c_str());
  auto a = open(Config{path, 0, node_b, max_frame, slots});
  if (!a) return tl::unexpected(a.error());
  auto b = open(Config{path, 1, node_a, max_frame, slots});
  if (!b) return tl::unexpected(b.error());
  ::unlink(path.c_str());  // both are mapped: the file need not outlive them
  return std::pair{std::move(*a), std::move(*b)};
}

}  // namespace baton::shm
