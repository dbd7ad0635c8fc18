#pragma once
// Copy-on-write snapshots (issue #10, S14): a commit write-protects the
// pages written since the previous one and returns; the engine's worker
// then copies the snapshot's pages into a stage while the application
// goes on writing. An application write to a page the worker has not
// copied yet lands in this process's SIGBUS handler (userfaultfd
// write-protect with UFFD_FEATURE_SIGBUS: the fault is handled in the
// writing thread, ~4 us, not by a handler thread on the other core), which
// copies that page aside first, notes the page as written for the next
// commit, lifts the protection, and lets the write go on. So the stage
// receives exactly the memory as it was at the commit.
//
// Every page stays write-protected between commits (the first write to
// each page after a commit faults once): that is also how the written
// pages are found, without PAGEMAP_SCAN, since the kernel's asynchronous
// write-protect (dirty_tracker.h) cannot also stop a write.
//
// Protection ahead of the commit. Protecting a written page again costs
// one kernel call per run of pages (1.2-2.7 us on some hosts, 15-45 us
// under shadow paging, where every change of a page-table entry traps),
// and the commit would pay it for every page written since the last one.
// With `ahead` (EngineConfig::cow_protect_ahead), written pages are
// protected again while the application writes on, so the commit finds
// only the last few still to protect: the commit's pause no longer grows
// with how many pages were written. Each writing thread's fault handler
// protects again the page that thread lifted kTrailPages (4) faults
// before (its write has landed: the thread has run on to another fault),
// on the thread's own core; a thread of this process (the protector, one
// for all regions, started with the first) takes what the trails leave
// (the last pages of a thread that stopped writing, and those a quiescent
// commit left writable). The protector alone did it all once, but its
// calls run while the writer runs on another core, and each one's TLB
// shootdown interrupts the writer (4-15 us a call on this VM, against
// ~1.3 us for the commit's own): it lagged the writer by 10-1 000 pages
// and slowed its writes (docs/performance.md). A page
// protected ahead still counts as written (its delta must travel); a
// write to it faults once more, and it is protected ahead once more; a
// page that does so twice within kHotFreezes freezes (a hot page) is left
// to the commits until then: each page costs at most two extra faults per
// commit, and a hot set none most of the time (a page written twice at
// random is no hot page: at 1% of 1 GiB, ~13 a cycle, which the commit
// would each have protected with a call of its own). This is
// the kernel work the commit would have done, moved off its pause into
// the writes; where page-table changes are slow, the writes lose more
// than the pause gains (docs/performance.md), hence off by default.
//
// Quiescent commits. What the protector has not reached by the commit,
// the commit protects, at the host's price per page. A commit that comes
// when nothing but its own thread writes the memory (an application
// checkpointing from its only writer, as Redis forks from its only
// thread) copies those pages into the snapshot instead (copy_left) and
// leaves them writable, counted as written for the next freeze; the
// protector protects them after the commit, and a hot page it leaves to
// the commits is copied at each one and never faults. It does so where
// copies have cost less per page than protections in the region's recent
// commits (copy_left_pays): much less under shadow paging, about the same
// on hardware paging. A periodic commit is never quiescent: other writes
// run during it.
//
// Three roles (Role):
//  - kLocal (embedded mode): one process writes, protects and settles; a
//    page copied aside goes straight into the stage.
//  - kClient and kSettler (daemon mode): the application's client library
//    protects its own mapping and runs the handler (kClient); batond keeps
//    the stage and settles from its mapping of the same memory
//    (kSettler). They share the page states and an aside buffer
//    (CowShare): the handler copies a page into the aside buffer and marks
//    it so; the settler copies it from there into its stage, which no
//    client can write. batond trusts nothing the client writes there:
//    a page a client left "copying" is waited for at most
//    kClientPatienceNs per snapshot, then taken from the segment as it is
//    (only that client's own snapshot can suffer). And the client never
//    waits for batond: the settler copies a page from the segment first
//    and claims it after, in one compare-and-swap that fails if the
//    client's handler got there first (then the aside copy is taken). A
//    batond stopped or descheduled in the middle of a page holds nothing
//    the application's writes need.
//
// Dense writers. A writer that rewrites most of the memory between
// commits pays a fault for every page it writes first (20-45 us each on
// this VM's shadow paging: 320-390 ms per cycle for 10 000 pages of
// 64 MiB), where the stage copy's tracker pays ~1 us. A freeze that finds
// more than half the pages written (counted by the faults: a cycle in
// which pages were lifted in bulk counts nothing) makes the region dense
// for the next kDenseFreezes freezes (doubling, up to kDenseMaxFreezes,
// while it stays so). The settler
// copies in order from the first page; a fault on a page below the first
// one still to copy lifts the protection of all the pages below it not
// lifted yet, in one pass, and they count as written, so the writes to
// them run free (once the snapshot has settled, the next fault lifts
// what is left). The next freeze protects the whole memory again in one
// pass and the snapshot copies all of it. The application pays a fault
// per page it writes ahead of the settler and a few passes per cycle,
// not a fault per page. Every lifted page counts as written, so a dense
// commit copies and sends every page lifted since the last one, usually
// the whole memory (a writer that turned sparse meanwhile too, until the
// dense freezes are over). Then a cycle counts page by page again and
// decides anew.
//
// Traps (docs/user-guide.md): a write the kernel makes into a protected
// page on the process's behalf (read(2) into the segment, for instance)
// fails with EFAULT instead of faulting into the handler; writes through
// another mapping of the memory (a memfd handed out) or by a device are
// not seen at all. The engine drops copy-on-write for a segment whose
// memory it hands out (but to a client library that protects its own).
//
// Threads: the handler runs in any thread that writes the memory; the
// committer holds a Freeze (Segment::mu and the poll token held, or the
// client library's commit); the poll-token holder calls settle(); the
// protector protects ahead. They meet only in per-page state bytes and
// bitmaps and a reader-writer gate (handlers and the protector read, a
// freeze writes), all lock-free and signal safe.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <sys/types.h>
#include <span>
#include <string>
#include <vector>

#include "baton/result.h"

namespace baton {

/// The memory a client library and batond share for one segment's
/// copy-on-write snapshots (daemon mode): a header, a state byte per page,
/// and an aside buffer as large as the segment, in a sealed memfd that
/// batond creates for each client that opens the segment. Sparse: only the
/// pages a handler copies aside ever take memory. Thread: its owner's.
class CowShare {
 public:
  static constexpr uint32_t kMagic = 0xBA70C0C0;
  struct Header {
    uint32_t magic;
    uint32_t pages;
    /// The client's counters, for batond's status (untrusted: shown only).
    std::atomic<uint64_t> faults;
    std::atomic<uint64_t> copied_aside;
    std::atomic<uint64_t> protected_ahead;
    std::atomic<uint64_t> protected_at_commit;
    std::atomic<uint64_t> lifted_whole;
    std::atomic<uint64_t> copied_at_commit;
    /// The client library did not take copy-on-write (BATON_TRACK_WRITES=0,
    /// or this kernel cannot): its commits copy. Shown in batond's status.
    std::atomic<uint32_t> declined;
    /// batond's: the generation whose snapshot is settled whole and after
    /// which the next commit's stage needs only the pages written since
    /// (0: none). The client library then pends its own pages and posts
    /// the commit (CopyOnWrite::ready()). The settler's (poll-token
    /// holder) to write; a client that writes it harms only its own
    /// snapshots.
    std::atomic<uint64_t> ready;
  };
  static constexpr uint64_t kStatesOffset = 128;
  static_assert(sizeof(Header) <= kStatesOffset);

  /// batond: a new share for `len` bytes of memory (a multiple of 4 KiB).
  /// Errors: kNoMemory, kIo.
  static Result<CowShare> create(uint64_t len);
  /// The client library: maps the share batond sent for `len` bytes of
  /// memory, after checking its size, seals and header. Takes `fd`.
  /// Errors: kInvalidArgument (not a share for this length), kIo.
  static Result<CowShare> map(int fd, uint64_t len);
  /// Bytes of a share for `len` bytes of memory.
  static uint64_t size_for(uint64_t len) noexcept;

  CowShare() = default;
  CowShare(CowShare&& o) noexcept { *this = std::move(o); }
  CowShare& operator=(CowShare&& o) noexcept;
  CowShare(const CowShare&) = delete;
  CowShare& operator=(const CowShare&) = delete;
  ~CowShare();

  Header& header() const noexcept { return *reinterpret_cast<Header*>(base_); }
  std::atomic<uint8_t>* states() const noexcept {
    return reinterpret_cast<std::atomic<uint8_t>*>(base_ + kStatesOffset);
  }
  std::byte* aside() const noexcept { return base_ + aside_offset_; }
  int fd() const noexcept { return fd_; }

 private:
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t aside_offset_ = 0;
  int fd_ = -1;
};

class CopyOnWrite {
 public:
  static constexpr uint64_t kPage = 4096;
  enum class Role : uint8_t { kLocal, kClient, kSettler };
  /// How long, in all, a settler waits per snapshot for pages a client
  /// left "copying" (a client preempted in its handler, or dead, or
  /// hostile), before it takes them from the segment as they are.
  static constexpr uint64_t kClientPatienceNs = 2'000'000;
  /// A handler wakes a sleeping protector once this many pages a
  /// quiescent commit left writable wait for it (fewer wait for it to wake
  /// by itself, or for the commit).
  static constexpr uint32_t kAheadAfter = 4;
  /// With protection ahead, a writing thread's fault handler protects
  /// again the page that thread lifted this many faults before (its trail).
  static constexpr uint32_t kTrailPages = 4;
  /// A page written again twice after it was protected ahead is left to
  /// the commits until the next of every this many freezes.
  static constexpr uint32_t kHotFreezes = 16;
  /// Freezes a region stays dense (above) after a cycle that wrote more
  /// than half its pages; doubled, up to kDenseMaxFreezes, each time a
  /// counted cycle finds it so again.
  static constexpr uint32_t kDenseFreezes = 8;
  static constexpr uint32_t kDenseMaxFreezes = 64;
  /// copy_left() copies at most this many pages (4 MiB); beyond, the
  /// commit protects.
  static constexpr uint32_t kCopyLeftMax = 1024;
  /// Every this many quiescent commits, the way that has cost more per
  /// page is tried again (copy_left_pays): the host's prices change.
  static constexpr uint32_t kRetryEvery = 16;

  /// Why this kernel or process cannot (userfaultfd with SIGBUS and
  /// write-protect of shared memory, Linux 5.19; "" when it can): probed
  /// once, on a small memfd of its own. Thread: any.
  static const std::string& unavailable_reason();

  /// kLocal: write-protects [base, base + len) (page aligned, mapped shared
  /// by this process, 4 KiB pages) and starts counting writes. Every page
  /// counts as written until the first freeze(). `ahead`: the protector
  /// protects written pages again before the commit (off: the commit
  /// protects them all). Errors: kUnavailable (with the reason; at most
  /// kMaxRegions regions per process), kIo.
  static Result<std::unique_ptr<CopyOnWrite>> attach(std::byte* base, uint64_t len, bool ahead);
  /// kClient: as attach(), with the page states and the aside buffer in
  /// `share` (batond's, for this memory's length).
  static Result<std::unique_ptr<CopyOnWrite>> attach_client(std::byte* base, uint64_t len, CowShare share,
                                                            bool ahead);
  /// kSettler: batond's side of a client's copy-on-write: nothing is
  /// protected here; settle() copies pending pages from [base, base + len)
  /// (batond's mapping of the memory) or from the aside buffer.
  static Result<std::unique_ptr<CopyOnWrite>> settler(std::byte* base, uint64_t len, CowShare share);
  static constexpr uint32_t kMaxRegions = 1024;

  /// kLocal: from the next freeze on, a page's fault tags its state byte,
  /// so that a freeze whose stage needs only the pages it took makes them
  /// pending without a store per page (Freeze::pend_tagged). Every Freeze
  /// must then pend (pend or pend_tagged; one that does not has its tags
  /// dropped by the next), and come after the previous snapshot settled
  /// whole (as the engine's commits do): a freeze makes the last one's
  /// tag a written page's again. Thread: the committer, before the first
  /// freeze.
  void tag_writes() noexcept {
    if (role_ == Role::kLocal) write_tag_.store(kTagA, std::memory_order_relaxed);
  }

  /// Lifts the protection and stops handling faults: every write after it
  /// goes straight through. The caller settled every page first.
  ~CopyOnWrite();
  CopyOnWrite(const CopyOnWrite&) = delete;
  CopyOnWrite& operator=(const CopyOnWrite&) = delete;

  Role role() const noexcept { return role_; }
  /// kSettler: the share, to send to the client. Thread: any.
  const CowShare* share() const noexcept { return share_.get(); }

  /// The commit point (kLocal, kClient). Held by the committer while it
  /// takes the written pages, says which pages the new snapshot must copy
  /// and protects what was written again; the fault handler waits
  /// meanwhile (it never sees half a commit).
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
      cow_.take();
      RunJoin<Fn&> runs{written};
      for (const auto& [w, bits] : taken_words()) runs.word(w, bits);
      runs.finish();
    }
    /// As take_written(), as lists instead of runs: taken_words() has
    /// (w, bits) for each word of the written-page bitmap that has pages
    /// written (bit b is page 64 w + b), and taken_pages() each written
    /// page's index, both ascending, until the next freeze. For the
    /// engine's own commit, whose pause a list of a run per scattered
    /// page cost ~20 us at 1% of 1 GiB, and a walk over a sparse bitmap
    /// ~5 ns a word, most of it the loop's exit mispredicted (~20 us at
    /// 1 GiB): the bitmap is walked once, here; everything after walks
    /// the lists.
    void take_lists() { cow_.take(); }
    std::span<const std::pair<uint32_t, uint64_t>> taken_words() const noexcept {
      return {cow_.taken_words_.get(), cow_.taken_words_count_};
    }
    std::span<const uint32_t> taken_pages() const noexcept { return cow_.taken(); }
    /// kClient, when ready() is the generation of the previous commit:
    /// makes the pages taken pending, as batond's pend would (its next
    /// stage needs just these, and no page of the last snapshot is left to
    /// settle), so the commit need not wait for batond (a posted commit,
    /// CommitOptions::pended).
    void pend_taken() noexcept {
      for (const uint32_t p : cow_.taken())
        if (p < cow_.pages_) cow_.state_[p].store(kPending, std::memory_order_relaxed);
    }
    /// Pages protect() will protect: those written since the previous
    /// freeze that the protector has not protected again already.
    uint32_t to_protect() const noexcept;
    /// kLocal: the pages set in `pages` (one bit per kPage: anything with
    /// count() and next_set()) hold the snapshot only until they are
    /// written: each is copied to the same offset of `aside` first, by
    /// settle() or by the fault handler. Every page set must be protected:
    /// unwritten since the last freeze, or among those taken.
    template <typename Bits>
    void pend(std::byte* aside, const Bits& pages) {
      cow_.pend(aside, pages);
    }
    /// Whether pend_tagged() may stand in for pend(): the region tags
    /// (tag_writes) and every page this freeze took was tagged by its
    /// fault (none counted as written in bulk: the first freeze, a
    /// release, a dense writer's lift).
    bool tags_complete() const noexcept { return cow_.taken_tag_ != 0 && !cow_.took_untagged_; }
    /// As pend() with the pages taken_pages() lists below page `limit`
    /// (the stage's pages), when they are all the stage needs: they are
    /// pending by their tags, and nothing is stored per page (a byte per
    /// page, each on a line of its own at 1% of 1 GiB, was ~20 us of that
    /// pause: cache misses). Only after tags_complete().
    void pend_tagged(std::byte* aside, uint32_t limit) noexcept { cow_.pend_tagged(aside, limit); }
    /// Write-protects the pages take_written() reported. Errors: kIo (the
    /// snapshot cannot be trusted; the caller stops copy-on-write).
    Result<void> protect();
    /// For a quiescent commit: whether copy_left() is to stand in for
    /// protect(). Only with the protector on (it protects the pages left
    /// writable, after the commit, within its next nap at most), at most
    /// kCopyLeftMax pages to protect, not the whole region at once (the
    /// first freeze, or after a release or a dense writer's lift:
    /// protected in long runs, cheaper per page than copies, and the writes
    /// would otherwise never fault again), and where a copy has cost less
    /// per page than a protection in this region's recent commits (a
    /// protection costs 1.3 us on some hosts, 12-20 us under shadow
    /// paging; a copy 0.5-1 us, more where the aside buffer's page is new):
    /// the first such commit protects, the next copies, and then every
    /// kRetryEvery-th tries the dearer one again.
    bool copy_left_pays() noexcept;
    /// A quiescent commit (nothing but the committing thread writes the
    /// memory until the Freeze ends: CommitOptions::quiescent): copies the
    /// pages protect() would protect into the snapshot now, instead of
    /// protecting them, and leaves them writable, counted as written for
    /// the next freeze. They must be pending first (kLocal: after pend();
    /// kClient: after batond's pend, so a page batond settled meanwhile
    /// is left to its copy). A write from another thread during the
    /// copies could land in the snapshot after a later write that does
    /// not: hence the caller's promise.
    void copy_left() noexcept;
    /// The commit did not happen after all: every page counts as written
    /// again (the next freeze takes them all).
    void untake() noexcept { cow_.mark_all_written(); }

   private:
    CopyOnWrite& cow_;
  };

  /// kSettler (batond; the client holds its Freeze meanwhile): as
  /// Freeze::pend, with `stage` as where settle() puts the pages.
  template <typename Bits>
  void pend(std::byte* stage, const Bits& pages) {
    aside_.store(stage, std::memory_order_relaxed);  // published by the gate's release (kLocal)
    patience_ns_ = kClientPatienceNs;
    const uint32_t n = pages.count() < pages_ ? pages.count() : pages_;
    if (taken_tag_ != 0) {  // tags: the taken pages not in `pages` are not pending (those in it are made so below)
      for (const uint32_t p : taken()) {
        bool in = p < n;
        if constexpr (requires { pages.test(0u); }) in = in && pages.test(p);
        else in = false;
        if (!in) untag(p);
      }
      pended_ = true;
    }
    if constexpr (requires { pages.word(0u); }) {  // a word at a time: no call per page
      for (uint32_t w = 0; w < (n + 63) / 64; ++w) {
        for (uint64_t bits = pages.word(w); bits != 0; bits &= bits - 1) {
          const uint32_t p = w * 64 + static_cast<uint32_t>(__builtin_ctzll(bits));
          if (p < n) state_[p].store(kPending, std::memory_order_relaxed);
        }
      }
    } else {
      for (uint32_t p = pages.next_set(0); p < n; p = pages.next_set(p + 1))
        state_[p].store(kPending, std::memory_order_relaxed);
    }
    std::atomic_thread_fence(std::memory_order_release);  // kSettler: before the client opens its gate
  }

  /// kClient: batond's word in the share (CowShare::Header::ready).
  /// kSettler: what it says; set_ready() says it. Thread: the client's
  /// committer; the settler's poll-token holder.
  uint64_t ready() const noexcept {
    return share_ != nullptr ? share_->header().ready.load(std::memory_order_acquire) : 0;
  }
  void set_ready(uint64_t generation) noexcept {
    if (share_ != nullptr) share_->header().ready.store(generation, std::memory_order_release);
  }
  /// kSettler: a posted commit batond refused (CommitOptions::pended): the
  /// pages the client made pending for it are no snapshot's. Every page
  /// not idle is made so, whatever the client's handler did with it. The
  /// caller settled every snapshot first (no page is pending for one).
  /// Nothing was copied for the refused commit, and the client library
  /// counts its pages as written again (Freeze::untake).
  void unpend_all() noexcept {
    for (uint32_t p = 0; p < pages_; ++p)
      if (state_[p].load(std::memory_order_relaxed) != kIdle) state_[p].store(kIdle, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
  /// kSettler: the snapshot the client pended itself (CommitOptions::pended)
  /// settles into `stage`.
  void aim(std::byte* stage) noexcept {
    aside_.store(stage, std::memory_order_relaxed);
    patience_ns_ = kClientPatienceNs;
  }

  /// Makes sure page `page` of the snapshot is in the stage: copies it
  /// there if it is still pending, or waits out the fault handler that is
  /// copying it (kSettler: takes it from the aside buffer where the client
  /// put it). Thread: the poll-token holder.
  void settle(uint32_t page) noexcept;
  /// Whether a page is still to be copied. Thread: the poll-token holder.
  bool pending(uint32_t page) const noexcept;

  /// Every page counts as written and is left unprotected until the next
  /// freeze (for a caller about to rewrite the whole memory: no fault per
  /// page). Nothing may be pending. kSettler: nothing to do (a client
  /// that opens the memory next gets a share of its own). Errors: kIo.
  Result<void> release_all();

  /// Whether any page was written since the last freeze. Thread: the
  /// committer (a write racing it may or may not be seen).
  bool any_written() const noexcept;

  /// Whether a write may be on its way into the memory: a fault handler
  /// runs, or one returned less than kWriteLandsNs ago. The write that
  /// faulted lands only after its handler returns, so a freeze just then
  /// takes the page as written without the write, protects it again, and
  /// the write faults a second time: two generations for one write, the
  /// first of nothing new. A periodic commit waits this out once
  /// (let_write_land); an application's own commit needs not: its
  /// thread's writes have landed. Thread: any.
  bool write_in_flight() const noexcept;
  static constexpr uint64_t kWriteLandsNs = 50'000;
  /// A periodic commit's question before it freezes: true, once, while a
  /// write is in flight (come back in kWriteLandsNs); false after that
  /// (commit now, whatever is in flight). Thread: the periodic committer.
  bool let_write_land() noexcept;

  /// Protects every page now, so that from here on only what is written
  /// counts as written (until then every page does: the first freeze
  /// protects them all). For a segment committed by a period: a periodic
  /// commit of one that was opened and only read is then no generation.
  /// Its price is a fault at each page's first write, instead of a minor
  /// fault, until the first commit. Not for kSettler. Thread: the
  /// committer, before the application writes. Errors: kIo.
  Result<void> protect_all();

  /// Faults handled (writes that reached a protected page), and pages the
  /// handler copied aside for a snapshot (kSettler: as the client counts
  /// them). Thread: any.
  uint64_t faults() const noexcept { return faults_->load(std::memory_order_relaxed); }
  /// kSettler: the client library said it did not take copy-on-write
  /// (CowShare::Header::declined). Thread: any.
  bool declined() const noexcept {
    return share_ != nullptr && share_->header().declined.load(std::memory_order_relaxed) != 0;
  }
  uint64_t copied_aside() const noexcept { return copied_aside_->load(std::memory_order_relaxed); }
  /// Pages the protector protected again before a commit needed it, and
  /// pages the commits protected themselves. Thread: any.
  uint64_t protected_ahead() const noexcept { return protected_ahead_->load(std::memory_order_relaxed); }
  uint64_t protected_at_commit() const noexcept { return protected_at_commit_->load(std::memory_order_relaxed); }
  /// Pages quiescent commits copied instead of protecting (copy_left).
  uint64_t copied_at_commit() const noexcept { return copied_at_commit_->load(std::memory_order_relaxed); }
  /// kSettler: times this settler stopped waiting for the client (its
  /// patience for a snapshot spent on pages the client's handler held
  /// "copying", or a page the client kept moving on while it was copied)
  /// and took pages from the segment as they were: a client preempted in
  /// its handler, dead, or hostile; only its own snapshots can suffer.
  /// batond's own count, not the share's. Thread: any.
  uint64_t settler_gave_up() const noexcept { return gave_up_.load(std::memory_order_relaxed); }
  /// Times a dense region's protection was lifted whole (above), and
  /// whether the freezes treat it as dense now. Thread: any (dense():
  /// the committer).
  uint64_t lifted_whole() const noexcept { return lifted_whole_->load(std::memory_order_relaxed); }
  bool dense() const noexcept { return dense_; }

 private:
  struct Handler;
  friend struct Handler;
  /// kCopying: the fault handler (or a kLocal settler) is copying the
  /// page; kAside: a kClient's handler put it in the aside buffer, for the
  /// settler to take. A kSettler never marks a page it is copying (3 was
  /// that, once: a batond stopped mid-copy stopped the application's next
  /// write to the page).
  /// kTagA, kTagB (tag_writes, kLocal only): written since the last
  /// freeze (the one write_tag_ names), or pending in the current snapshot
  /// (the one pending_tag_ names): the two take turns, freeze by freeze.
  enum PageState : uint8_t { kIdle = 0, kPending = 1, kCopying = 2, kAside = 4, kTagA = 8, kTagB = 16 };
  /// Whether a state byte's value makes its page pending in the current
  /// snapshot. A handler's or the settler's.
  bool is_pending(uint8_t v) const noexcept {
    return v == kPending || v == pending_tag_.load(std::memory_order_relaxed);
  }
  static constexpr uint32_t kWriter = 1u << 31;

  CopyOnWrite() = default;
  static Result<std::unique_ptr<CopyOnWrite>> make(Role role, std::byte* base, uint64_t len,
                                                   std::unique_ptr<CowShare> share, bool ahead);
  /// Takes the written pages into taken_words_ and taken_pages_ (and what
  /// protect() is to protect into protect_runs_), under the gate.
  void take();
  /// Freeze::pend_tagged.
  void pend_tagged(std::byte* stage, uint32_t limit) noexcept;
  /// A page taken with the tag the last freeze retired (taken_tag_) is
  /// not pending after all: idle again (under the gate).
  void untag(uint32_t page) noexcept {
    if (state_[page].load(std::memory_order_relaxed) == taken_tag_) state_[page].store(kIdle, std::memory_order_relaxed);
  }
  /// Tags `page` as written for the next freeze, if this region tags (a
  /// handler's, or a quiescent freeze's copy_left).
  void tag_written(uint32_t page) noexcept {
    if (const uint8_t tag = write_tag_.load(std::memory_order_relaxed); tag != 0)
      state_[page].store(tag, std::memory_order_relaxed);
  }
  /// The pages the last freeze took (Freeze::taken_pages). Committer only.
  std::span<const uint32_t> taken() const noexcept { return {taken_pages_.get(), taken_pages_count_}; }
  /// Joins pages into runs: word(w, bits) for words in ascending order
  /// (bit b: page 64 w + b), then finish(); emit(offset, length) for each
  /// run of pages, in order.
  template <typename Emit>
  struct RunJoin {
    Emit emit;
    uint64_t begin = 0, len = 0;
    void word(uint32_t w, uint64_t bits) {
      for (; bits != 0; bits &= bits - 1) {
        const uint64_t off = (uint64_t{w} * 64 + static_cast<unsigned>(__builtin_ctzll(bits))) * kPage;
        if (len != 0 && begin + len == off) {
          len += kPage;
          continue;
        }
        if (len != 0) emit(begin, len);
        begin = off;
        len = kPage;
      }
    }
    void finish() {
      if (len != 0) emit(begin, len);
    }
  };
  /// RunJoin over the words `ws` lists (ascending), word(w) giving the
  /// bits of word w.
  template <typename Words, typename Word, typename Emit>
  static void for_each_run(const Words& ws, Word&& word, Emit&& emit) {
    RunJoin<Emit&> runs{emit};
    for (const uint32_t w : ws) runs.word(w, word(w));
    runs.finish();
  }
  /// The protector's pass over this region: protects the pages unprotected
  /// since they were last protected (but hot ones, and those it protected
  /// once since the last freeze) that it saw so on its previous pass too
  /// (a page just lifted has a write about to run again: protected at
  /// once, it would fault twice), one run per hold of the gate, so a
  /// freeze waits for one call at most. Returns whether it protected any
  /// or saw any to protect next time.
  bool protect_ahead() noexcept;
  /// Whether to enter the gate as a reader: false once a freeze waits, the
  /// region is going, or every page waits for the next freeze.
  bool try_read() noexcept;
  /// Sets every page's written bit (under the gate, or before any handler).
  void mark_all_written() noexcept;
  bool protect_range(uint64_t off, uint64_t len, bool on) noexcept;
  /// Protects pages 64 w + b .. + len (one word's run) again ahead of the
  /// commit, those still marked unprotected: clears their marks, marks
  /// them protected ahead, and protects the run; false if the kernel
  /// refused (the marks are back: the freeze tries, and reports). A
  /// reader of the gate's (the protector, or a handler).
  bool protect_again(uint32_t w, unsigned b, unsigned len) noexcept;
  /// The fault handler's protection ahead of a page its thread lifted a
  /// few faults ago (on_fault), if it is still writable and neither hot
  /// nor protected ahead already. A handler's (a reader of the gate).
  void protect_trailing(uint32_t page) noexcept;
  /// Copies `page` aside if it is pending (or waits for whoever copies it).
  bool claim(uint32_t page) noexcept;
  /// kSettler's settle().
  void settle_shared(uint32_t page) noexcept;
  /// The fault path: in the writing thread, in signal context.
  bool on_fault(uintptr_t addr) noexcept;
  /// The pages of the snapshot left to copy (pending or being copied)
  /// all lie at or above this: scans on from settled_below_. A handler's
  /// (a reader of the gate).
  uint32_t settled_below() noexcept;
  /// A dense region: the pages below settled_below_ not lifted yet count
  /// as written and their protection is lifted, in one pass (the region
  /// is wholesale once that reaches the end), and `page` if another
  /// handler lifted it; [off, off + len) is the range it lifted (len 0:
  /// none). A handler's.
  bool lift_settled(uint32_t page, uint64_t& off, uint64_t& len) noexcept;
  /// A freeze's choice between counting page by page and dense (above),
  /// from the pages it takes. Under the gate (a writer).
  void decide_dense(uint64_t written_pages) noexcept;
  void lock_writer() noexcept;
  void unlock_writer() noexcept;

  Role role_ = Role::kLocal;
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
  /// A PageState per page (own_state_, or the share's): the committer (or
  /// the settler) sets kPending under the gate; the handler or the settler
  /// moves it on to kIdle.
  std::atomic<uint8_t>* state_ = nullptr;
  std::unique_ptr<std::atomic<uint8_t>[]> own_state_;
  /// kClient, kSettler: the memory shared with the other side.
  std::unique_ptr<CowShare> share_;
  /// Where this process copies pending pages: the stage (kLocal, kSettler)
  /// or the share's aside buffer (kClient). Written under the gate, read
  /// by the handler and the settler.
  std::atomic<std::byte*> aside_{nullptr};
  /// kSettler: what is left of kClientPatienceNs for this snapshot
  /// (poll-token holder).
  uint64_t patience_ns_ = kClientPatienceNs;
  std::atomic<uint64_t> gave_up_{0};  ///< settler_gave_up(): the poll-token holder counts
  /// One bit per page whose protection a handler lifted since it was last
  /// protected: set by the handler after it lifted it (so the protector
  /// never sees the bit of a page still about to be lifted), cleared by
  /// whoever protects the page again (the protector, or a freeze), under
  /// the gate.
  std::unique_ptr<std::atomic<uint64_t>[]> unprotected_;
  /// Pages the protector protected since the last freeze (set by the
  /// protector, read by the handler, cleared by a freeze).
  std::unique_ptr<std::atomic<uint64_t>[]> ahead_;
  /// Pages written again after they were protected ahead (since the
  /// freeze that did), once (again_: protected ahead once more) and twice
  /// (hot_: left to the commits) since the last of every kHotFreezes
  /// freezes, which clears both. Set by handlers.
  std::unique_ptr<std::atomic<uint64_t>[]> again_;
  std::unique_ptr<std::atomic<uint64_t>[]> hot_;
  /// CLOCK_MONOTONIC when a fault handler last returned (write_in_flight).
  std::atomic<uint64_t> last_fault_ns_{0};
  /// The due periodic commit waited once already (let_write_land): the
  /// periodic committer's.
  bool waited_for_landing_ = false;
  /// Pages unprotected since the protector last looked (the handler counts,
  /// the protector zeroes).
  std::atomic<uint32_t> backlog_{0};
  /// The protector's own: pages it saw to protect on its last pass, and
  /// whether there are any.
  std::unique_ptr<uint64_t[]> seen_;
  bool seen_any_ = false;
  bool ahead_on_ = false;  ///< protects ahead (set before the region is published)
  pid_t owner_ = 0;  ///< the process that attached it (a forked child's protector leaves it)
  /// Set under the gate by the destructor: the protector leaves it.
  bool going_ = false;
  /// Every page counts as written and unprotected until the next freeze,
  /// which protects them all at once (mark_all_written): the protector
  /// leaves the region alone meanwhile. Written under the gate.
  std::atomic<bool> wholesale_{false};
  uint32_t freezes_ = 0;  ///< committer only
  /// Dense (above): set by a freeze (the gate's writer), read by handlers.
  /// The freezes left dense and the last dense period: committer only.
  bool dense_ = false;
  uint32_t dense_left_ = 0;
  uint32_t dense_period_ = 0;
  /// Pages below this are neither pending nor being copied in the current
  /// snapshot: zeroed by a freeze, moved up by handlers (settled_below).
  /// Of those, the dense region's handlers lifted the pages below
  /// lifted_below_ (lift_settled; zeroed by a freeze).
  std::atomic<uint32_t> settled_below_{0};
  std::atomic<uint32_t> lifted_below_{0};
  /// Tags (tag_writes()): the tag a handler puts in the state byte of a
  /// page it lifts (0: none; kTagA or kTagB), flipped by each freeze
  /// (under the gate), and read by handlers; the tag that makes a page
  /// pending in the current snapshot (kPending: none), set by the pend of
  /// a freeze, read by handlers and the settler (published to it with the
  /// stage); the tag the last freeze retired (committer only); pages
  /// counted as written since the last freeze without a tag (a bulk lift,
  /// every page at once): set by whoever does so, taken by the freeze into
  /// took_untagged_ (committer only); and whether the last freeze pended
  /// (committer only: a freeze that did not has its tags cleared by the
  /// next).
  std::atomic<uint8_t> write_tag_{0};
  std::atomic<uint8_t> pending_tag_{kPending};
  uint8_t taken_tag_ = 0;
  std::atomic<bool> untagged_{true};
  bool took_untagged_ = true;
  bool pended_ = true;
  /// The words of pages the last freeze took, (w, bits) for each that is
  /// not zero, and the pages: ascending, committer only (Freeze::
  /// taken_words).
  std::unique_ptr<std::pair<uint32_t, uint64_t>[]> taken_words_;
  std::unique_ptr<uint32_t[]> taken_pages_;
  uint32_t taken_words_count_ = 0, taken_pages_count_ = 0;
  /// The runs protect() is to protect (joined across short gaps: take),
  /// with the pages in them that were writable: committer only.
  std::vector<std::pair<uint64_t, uint64_t>> protect_runs_;
  uint64_t protect_pages_ = 0;
  /// The writable pages among those taken, before the joining: what
  /// copy_left() copies; and how many pages the last copy_left() left
  /// writable and counted as written, which the next freeze does not count
  /// as the writer's when it decides whether the region is dense
  /// (committer only).
  std::vector<std::pair<uint64_t, uint64_t>> left_runs_;
  uint64_t left_pages_ = 0;
  /// The last take found the region wholesale (every page writable: the
  /// first freeze, or after a release or a dense lift): its protection is
  /// one long run per MiB, not copies (committer only).
  bool took_wholesale_ = false;
  /// What protecting and copying a page left to the commit has cost here
  /// (moving averages, ns; 0: not measured yet), and the quiescent commits
  /// asked so far (committer only).
  uint64_t protect_ns_per_page_ = 0;
  uint64_t copy_ns_per_page_ = 0;
  uint32_t quiescent_freezes_ = 0;

  std::atomic<uint64_t> own_faults_{0};
  std::atomic<uint64_t> own_copied_aside_{0};
  std::atomic<uint64_t> own_protected_ahead_{0};
  std::atomic<uint64_t> own_protected_at_commit_{0};
  std::atomic<uint64_t> own_lifted_whole_{0};
  std::atomic<uint64_t> own_copied_at_commit_{0};
  std::atomic<uint64_t>* faults_ = &own_faults_;
  std::atomic<uint64_t>* copied_aside_ = &own_copied_aside_;
  std::atomic<uint64_t>* protected_ahead_ = &own_protected_ahead_;
  std::atomic<uint64_t>* protected_at_commit_ = &own_protected_at_commit_;
  std::atomic<uint64_t>* lifted_whole_ = &own_lifted_whole_;
  std::atomic<uint64_t>* copied_at_commit_ = &own_copied_at_commit_;
};

}  // namespace baton
