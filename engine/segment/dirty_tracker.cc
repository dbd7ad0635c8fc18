#include "segment/dirty_tracker.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "segment/uffd.h"

namespace baton {
namespace {

// Debian 12's kernel headers predate these (Linux 6.7); the kernel is
// probed for it at run time.
constexpr uint64_t kWpAsync = uint64_t{1} << 15;  // UFFD_FEATURE_WP_ASYNC

struct PageRegion {  // struct page_region
  uint64_t start, end, categories;
};
struct PmScanArg {  // struct pm_scan_arg
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);  // PAGEMAP_SCAN
constexpr uint64_t kPageIsWritten = 1 << 1;
constexpr uint64_t kScanWpMatching = 1 << 0;  // write-protect what matched
constexpr uint64_t kScanCheckWpAsync = 1 << 1;  // fail on a page not registered for it

using uffd::errno_text;

}  // namespace

const std::string& DirtyTracker::unavailable_reason() {
  static const std::string reason = [] {
    const long page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno_text("mmap");
    std::string why;
    {  // the tracker goes before the mapping
      auto base = static_cast<std::byte*>(p);
      auto t = attach(base, 4 * page);
      if (!t) {
        why = t.error().message;
      } else {
        base[page] = std::byte{1};  // one write, one page reported
        uint64_t seen = 0, at = ~uint64_t{0};
        if (auto ok = (*t)->collect([&](uint64_t off, uint64_t len) { seen += len, at = off; }); !ok)
          why = ok.error().message;
        else if (seen != static_cast<uint64_t>(page) || at != static_cast<uint64_t>(page))
          why = "PAGEMAP_SCAN did not report a written page";
      }
    }
    munmap(p, 4 * page);
    return why;
  }();
  return reason;
}

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::attach(std::byte* base, uint64_t len) {
  std::unique_ptr<DirtyTracker> t(new DirtyTracker);
  t->base_ = base;
  t->len_ = len;
  auto fd = uffd::open_write_protect(base, len, kWpAsync | uffd::kWpUnpopulated,
                                     "WP_ASYNC | WP_UNPOPULATED (Linux 6.7 or newer)");
  if (!fd) return tl::unexpected(fd.error());
  t->uffd_ = *fd;
  t->pagemap_ = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (t->pagemap_ < 0) return fail(Errc::kUnavailable, errno_text("/proc/self/pagemap"));
  if (auto ok = t->arm(); !ok) return tl::unexpected(ok.error());
  return t;
}

DirtyTracker::~DirtyTracker() {
  // Closing the userfaultfd unregisters the range and drops its protection.
  if (uffd_ >= 0) close(uffd_);
  if (pagemap_ >= 0) close(pagemap_);
}

Result<void> DirtyTracker::arm() {
  uffdio_writeprotect wp{};
  wp.range.start = reinterpret_cast<uintptr_t>(base_);
  wp.range.len = len_;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) != 0) return fail(Errc::kIo, errno_text("UFFDIO_WRITEPROTECT"));
  armed_ = true;
  return {};
}

Result<void> DirtyTracker::scan(void (*fn)(void*, uint64_t, uint64_t), void* ctx) {
  if (!armed_) return fail(Errc::kInternal, "dirty tracker scanned while disarmed");
  std::array<PageRegion, 256> vec;
  const uint64_t begin = reinterpret_cast<uintptr_t>(base_);
  const uint64_t end = begin + len_;
  uint64_t at = begin;
  // The kernel stops early when `vec` fills (and sometimes before the end
  // even when it did not): go on from where its walk ended.
  while (at < end) {
    PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = kScanWpMatching | kScanCheckWpAsync;
    arg.start = at;
    arg.end = end;
    arg.vec = reinterpret_cast<uintptr_t>(vec.data());
    arg.vec_len = vec.size();
    arg.category_mask = kPageIsWritten;
    arg.return_mask = kPageIsWritten;
    const long n = ioctl(pagemap_, kPagemapScan, &arg);
    if (n < 0) return fail(Errc::kIo, errno_text("PAGEMAP_SCAN"));
    for (long i = 0; i < n; ++i) fn(ctx, vec[i].start - begin, vec[i].end - vec[i].start);
    if (arg.walk_end <= at) return fail(Errc::kIo, "PAGEMAP_SCAN made no progress");
    at = arg.walk_end;
  }
  return {};
}

}  // namespace baton
