#pragma once
// Which pages of a segment were written since the last commit (issue #10,
// S15: only what changed is copied). The kernel keeps the record:
// userfaultfd's asynchronous write-protect (UFFD_FEATURE_WP_ASYNC, Linux
// 6.7) clears a page's protection on its first write without any fault
// handler, at about 1 us per page, and the PAGEMAP_SCAN ioctl reports the
// written pages and protects them again in one walk (about 0.2 ms for
// 64 MiB here). Only writes through this process's mapping are seen: a
// segment whose memfd is handed out (batond's) or written by DMA is not
// tracked (engine/engine.cc decides).
//
// Thread: the segment's committer, under Segment::mu.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "baton/result.h"

namespace baton {

class DirtyTracker {
 public:
  /// Why this kernel or process cannot track writes ("" when it can):
  /// probed once, on a small mapping of its own. Thread: any.
  static const std::string& unavailable_reason();

  /// Starts tracking writes to [base, base + len) (page aligned, mapped
  /// shared or private by this process). Nothing counts as written yet:
  /// the caller treats the whole range as changed for its first commit.
  /// Errors: kUnavailable (with the reason), kIo.
  static Result<std::unique_ptr<DirtyTracker>> attach(std::byte* base, uint64_t len);
  ~DirtyTracker();
  DirtyTracker(const DirtyTracker&) = delete;
  DirtyTracker& operator=(const DirtyTracker&) = delete;

  /// Calls `written(offset, length)` for each run of pages written since
  /// the last collect() or arm(), and write-protects them again (pages
  /// written meanwhile are reported now or next time, never lost). Only
  /// while armed. Errors: kIo (the caller stops tracking).
  template <typename Fn>
  Result<void> collect(Fn&& written) {
    return scan([](void* ctx, uint64_t off, uint64_t len) { (*static_cast<Fn*>(ctx))(off, len); }, &written);
  }

  /// Write-protects every page again (about 0.7 ms per 64 MiB): writes
  /// from now on are reported. After disarm() the caller must treat the
  /// whole range as changed at the next arm().
  Result<void> arm();
  /// Stops protecting pages once written: a writer that rewrites most of
  /// the segment between commits pays no fault per page (the caller copies
  /// everything meanwhile). Costs nothing now; pages stay unprotected as
  /// they are written.
  void disarm() noexcept { armed_ = false; }
  bool armed() const noexcept { return armed_; }

 private:
  DirtyTracker() = default;
  Result<void> scan(void (*fn)(void*, uint64_t, uint64_t), void* ctx);

  std::byte* base_ = nullptr;
  uint64_t len_ = 0;
  int uffd_ = -1;
  int pagemap_ = -1;
  bool armed_ = false;
};

}  // namespace baton
