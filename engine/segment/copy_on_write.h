#pragma once
// Copy-on-write snapshots (issue #10, S14): a commit write-protects the
// pages written since the previous one and returns; the engine's worker
// then copies the snapshot's pages into a stage while the application
// goes on writing. An application write to a page the worker has not
// copied yet lands in this process's SIGBUS handler (userfaultfd
// write-protect with UFFD_FEATURE_SIGBUS: the fault is handled in the
// writing thread, ~4 us, not by a handler thread on the other core), which
// copies that page into the stage first, notes the page as written for the
// next commit, lifts the protection, and lets the write go on. So the
// stage receives exactly the memory as it was at the commit.
//
// Every page stays write-protected between commits (the first write to
// each page after a commit faults once): that is also how the written
// pages are found, without PAGEMAP_SCAN, since the kernel's asynchronous
// write-protect (dirty_tracker.h) cannot also stop a write.
//
// Traps (docs/user-guide.md): a write the kernel makes into a protected
// page on the process's behalf (read(2) into the segment, for instance)
// fails with EFAULT instead of faulting into the handler; writes through
// another mapping of the memory (a memfd handed out) or by a device are
// not seen at all. The engine drops copy-on-write for a segment whose
// memory it hands out.
//
// Threads: the handler runs in any thread that writes the memory; the
// committer calls freeze() (Segment::mu and the poll token held); the
// poll-token holder calls settle(). The three meet only in a per-page
// state word and a reader-writer gate, both lock-free and signal safe.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "baton/result.h"

namespace baton {

class ChunkBitmap;

class CopyOnWrite {
 public:
  static constexpr uint64_t kPage = 4096;

  /// Why this kernel or process cannot (userfaultfd with SIGBUS and
  /// write-protect of shared memory, Linux 5.19; "" when it can): probed
  /// once, on a small memfd of its own. Thread: any.
  static const std::string& unavailable_reason();

  /// Write-protects [base, base + len) (page aligned, mapped shared by this
  /// process, 4 KiB pages) and starts counting writes. Every page counts as
  /// written until the first freeze(). Errors: kUnavailable (with the
  /// reason; at most kMaxRegions regions per process), kIo.
  static Result<std::unique_ptr<CopyOnWrite>> attach(std::byte* base, uint64_t len);
  static constexpr uint32_t kMaxRegions = 1024;

  /// Lifts the protection and stops handling faults: every write after it
  /// goes straight through. The caller settled every page first.
  ~CopyOnWrite();
  CopyOnWrite(const CopyOnWrite&) = delete;
  CopyOnWrite& operator=(const CopyOnWrite&) = delete;

  /// The commit point. Held by the committer while it takes the written
  /// pages, says which pages the new snapshot must copy and protects what
  /// was written again; the fault handler waits meanwhile (it never sees
  /// half a commit).
  class Freeze {
   public:
    explicit Freeze(CopyOnWrite& cow);
    ~Freeze();
    Freeze(const Freeze&) = delete;
    Freeze& operator=(const Freeze&) = delete;

    /// Calls `written(offset, length)` for each run of pages written since
    /// the previous freeze (all of them at the first), and takes them:
    /// protect() protects them again.
    template <typename Fn>
    void take_written(Fn&& written) {
      cow_.take_runs();
      for (const auto& [off, len] : cow_.runs_) written(off, len);
    }
    /// The pages set in `pages` (one bit per kPage) hold the snapshot only
    /// until they are written: each is copied to the same offset of `aside`
    /// first, by settle() or by the fault handler. Every page set must be
    /// protected: unwritten since the last freeze, or among those taken.
    void pend(std::byte* aside, const ChunkBitmap& pages);
    /// Write-protects the pages take_written() reported. Errors: kIo (the
    /// snapshot cannot be trusted; the caller stops copy-on-write).
    Result<void> protect();

   private:
    CopyOnWrite& cow_;
  };

  /// Makes sure page `page` of the snapshot is in the aside buffer: copies
  /// it there if it is still pending, or waits out the fault handler that
  /// is copying it. Thread: the poll-token holder.
  void settle(uint32_t page) noexcept;
  /// Whether a page is still to be copied. Thread: the poll-token holder.
  bool pending(uint32_t page) const noexcept;

  /// Every page counts as written and is left unprotected until the next
  /// freeze (for a caller about to rewrite the whole memory: no fault per
  /// page). Nothing may be pending. Errors: kIo.
  Result<void> release_all();

  /// Whether any page was written since the last freeze. Thread: the
  /// committer (a write racing it may or may not be seen).
  bool any_written() const noexcept;

  /// Faults handled (writes that reached a protected page), and pages the
  /// handler copied aside for a snapshot. Thread: any.
  uint64_t faults() const noexcept { return faults_.load(std::memory_order_relaxed); }
  uint64_t copied_aside() const noexcept { return copied_aside_.load(std::memory_order_relaxed); }

 private:
  struct Handler;
  friend struct Handler;
  enum PageState : uint8_t { kIdle = 0, kPending = 1, kCopying = 2 };
  static constexpr uint32_t kWriter = 1u << 31;

  CopyOnWrite() = default;
  void take_runs();
  /// Sets every page's written bit (under the gate, or before any handler).
  void mark_all_written() noexcept;
  bool protect_range(uint64_t off, uint64_t len, bool on) noexcept;
  /// Copies `page` aside if it is pending (or waits for whoever copies it).
  bool claim(uint32_t page) noexcept;
  /// The fault path: in the writing thread, in signal context.
  bool on_fault(uintptr_t addr) noexcept;
  void lock_writer() noexcept;
  void unlock_writer() noexcept;

  std::byte* base_ = nullptr;
  uint64_t len_ = 0;
  uint32_t pages_ = 0;
  int uffd_ = -1;
  int slot_ = -1;  ///< where the handler finds this region
  /// Readers: fault handlers in flight; kWriter: a freeze or release_all.
  std::atomic<uint32_t> gate_{0};
  /// One bit per page written since the last freeze: set by the handler
  /// (any thread), taken by the committer under the gate.
  std::unique_ptr<std::atomic<uint64_t>[]> written_;
  /// A PageState per page: the committer sets kPending under the gate; the
  /// handler or the settler moves kPending -> kCopying -> kIdle.
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
  /// Where pending pages go: written under the gate, read by the handler
  /// and the settler.
  std::atomic<std::byte*> aside_{nullptr};
  /// The runs the last take_written() reported: committer only.
  std::vector<std::pair<uint64_t, uint64_t>> runs_;
  std::atomic<uint64_t> faults_{0};
  std::atomic<uint64_t> copied_aside_{0};
};

}  // namespace baton
