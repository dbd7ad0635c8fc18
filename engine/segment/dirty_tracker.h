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

/// Write tracking with its policy, for one segment's memory: what the next
/// commit must copy. The engine keeps one per embedded segment; the client
/// library one per segment it maps in daemon mode (batond cannot see the
/// application's writes). A commit that finds more than half the memory
/// written rests the tracker for kRest commits, which count as "everything
/// written" (a fault per page would cost more than the copy it saves),
/// then arms it again. A tracker error stops it for good.
///
/// Thread: the segment's committer.
class WriteWatch {
 public:
  static constexpr uint32_t kRest = 8;

  /// Watches [base, base + len) if the kernel can (else null, with the
  /// reason in `why`).
  static std::unique_ptr<WriteWatch> start(std::byte* base, uint64_t len, std::string* why) {
    auto t = DirtyTracker::attach(base, len);
    if (!t) {
      if (why != nullptr) *why = t.error().message;
      return nullptr;
    }
    auto w = std::unique_ptr<WriteWatch>(new WriteWatch);
    w->tracker_ = std::move(*t);
    w->len_ = len;
    return w;
  }

  /// Calls `written(offset, length)` for each run written since the last
  /// call and returns true; or returns false: count everything as written
  /// (resting, just armed again, or stopped; `error`, if given, is set
  /// when it stopped now).
  template <typename Fn>
  bool collect(Fn&& written, std::string* error = nullptr) {
    if (tracker_ == nullptr) return false;
    if (!tracker_->armed()) {
      if (rest_ > 0) --rest_;
      if (rest_ > 0) return false;
      if (auto ok = tracker_->arm(); !ok) return stop(ok.error().message, error);
      return false;  // writes while resting were not seen
    }
    uint64_t total = 0;
    auto ok = tracker_->collect([&](uint64_t off, uint64_t len) {
      written(off, len);
      total += len;
    });
    if (!ok) return stop(ok.error().message, error);
    if (total > len_ / 2) {
      tracker_->disarm();
      rest_ = kRest;
    }
    return true;
  }

  /// Whether the next collect() reports what was written (armed).
  bool tracking() const noexcept { return tracker_ != nullptr && tracker_->armed(); }

 private:
  WriteWatch() = default;
  bool stop(const std::string& why, std::string* error) {
    tracker_.reset();
    if (error != nullptr) *error = why;
    return false;
  }

  std::unique_ptr<DirtyTracker> tracker_;
  uint64_t len_ = 0;
  uint32_t rest_ = 0;
};

}  // namespace baton
