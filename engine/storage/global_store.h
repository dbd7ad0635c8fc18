#pragma once
// Global storage (S7): replicas also write each published generation to a
// directory (a shared file system in production), so the state survives the
// loss of every replica's memory. One file per (segment, epoch, generation,
// node): written to a temp file, fsynced, renamed, and the directory fsynced;
// the newest `keep` per segment and node are kept. A reader takes the newest
// file whose checksum matches; temp files (a write killed half-way) are never
// read.
//
// A delete leaves a marker, `deleted-e<epoch>`, written the same way before
// any copy is removed: copies at or below that owner epoch are never read
// again, even once every node (and its in-memory tombstone) is gone, and a
// write that was still in flight removes its own file when it lands under
// the marker. A new history of the name starts above the marker's epoch.
//
// Writes happen on the store's own threads, never on the poll loop: the poll
// loop submits a pinned replica slot; the copier thread copies it into a
// buffer of its own and releases the pin at once, so a slow or hung file
// system never holds a replica's slots (durability is the replicas', S7
// comes after); the writer thread writes the buffers. Per segment only the
// newest unwritten generation is kept (a newer one replaces it), and a
// write that fails is tried again (every second, backing off to 30 s)
// until it succeeds or a newer generation replaces it.

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "baton/result.h"

namespace baton {

struct GlobalCopy {
  std::string path;
  uint64_t epoch = 0;
  uint64_t generation = 0;
  uint64_t size = 0;
  std::string name;  ///< the segment's (newest() sets it): read() checks the file's header says so
};

class GlobalStore {
 public:
  /// One write. Plain data (the name in place): submitting allocates nothing.
  struct Job {
    char name_buf[64] = {};  ///< a segment name (wire::kMaxNameLen = 63)
    uint8_t name_len = 0;
    uint64_t seg_id = 0;  ///< the submitter's id of the segment (skipped_segments())
    uint64_t epoch = 0, generation = 0, size = 0;
    const std::byte* data = nullptr;
    std::atomic<uint32_t>* pin = nullptr;  ///< decremented once the bytes are no longer needed

    std::string_view name() const noexcept { return {name_buf, name_len}; }
    /// False (and nothing set) for a name longer than 63 bytes.
    bool set_name(std::string_view n) noexcept;
  };
  static constexpr size_t kMaxQueued = 16;  ///< slots waiting for the copier; more are skipped
  /// Bytes of copies waiting for the writer (one per segment at most) by
  /// default; a copy that would go past them is skipped (two of the
  /// segment's size always fit: the one being written and this one).
  static constexpr uint64_t kMaxBuffered = uint64_t{256} << 20;
  /// Segments with a skipped generation remembered for skipped_segments();
  /// past this many, every segment counts as skipped.
  static constexpr size_t kMaxSkipped = 64;

  /// Creates `dir` if needed and starts the copier and the writer. Errors: kIo. Thread: control.
  static Result<std::unique_ptr<GlobalStore>> open(const std::string& dir, uint32_t keep, uint16_t node,
                                                   uint64_t max_buffered = kMaxBuffered);
  ~GlobalStore();  ///< finishes queued writes, however long they take, then stops

  /// Stops `store`: what was queued is copied, and the copies waiting are
  /// written for as long as the writer makes progress (a slow file system
  /// still gets the last generations: after a whole-cluster stop they are
  /// all there is). A write that makes none for `patience_ns` (an NFS
  /// server gone, a FIFO at a temp name) is abandoned: the writer thread is
  /// detached and left the store, which it deletes if its system call ever
  /// returns. Returns false then (and logs it).
  /// Thread: the owner's, instead of destroying the store.
  static bool shut_down(std::unique_ptr<GlobalStore> store, uint64_t patience_ns);

  /// Queues a write; the job's pin is released once its bytes are copied
  /// (a memory copy: no file I/O holds it). Returns false (and releases
  /// nothing) when the copier is far behind: that generation is skipped.
  /// `seg_id` names the segment in skipped_segments(). Thread: poll-token holder.
  bool submit(Job job, uint64_t seg_id);

  /// The segments (their ids) whose newest submitted generation was
  /// skipped (the copier behind, the buffer full, no memory) and has not
  /// been replaced by a newer one since: the submitter offers their newest
  /// generation again, or it would never be stored if no commit followed.
  /// Fills `out` and forgets them; sets `all` when more than kMaxSkipped
  /// were (every segment is then to be offered again). Returns how many.
  /// Allocates nothing. Thread: poll-token holder.
  size_t skipped_segments(std::span<uint64_t> out, bool& all);
  /// Makes the next skipped_segments() say `all` again: a sweep over every
  /// segment that stopped part-way (the copier's queue full). Thread: poll-token holder.
  void sweep_again();
  /// Whether skipped_segments() has anything: one atomic load. Thread: any.
  bool has_skipped() const noexcept { return has_skipped_.load(std::memory_order_relaxed); }

  /// The newest intact copy of `name` in `dir`, written by any node.
  /// Thread: any (reads the directory).
  /// Only copies written under owner epoch `min_epoch` or later, and above
  /// the name's delete marker, count (a deleted history's files are older
  /// than its tombstone's epoch).
  static std::optional<GlobalCopy> newest(const std::string& dir, std::string_view name, uint64_t max_size,
                                          uint64_t min_epoch = 0);
  /// Deletes `name` at owner epoch `epoch`: durably marks it so, then
  /// removes every copy written under that epoch or below. Errors: kIo,
  /// kInvalidArgument. Thread: any.
  static Result<void> remove(const std::string& dir, std::string_view name, uint64_t epoch);
  /// The copies of `name` in `dir` at owner epoch `min_epoch` or above and
  /// above its delete marker, intact or not (their file names: nothing is
  /// read). Thread: any.
  struct Listing {
    size_t copies = 0;
    uint64_t newest_epoch = 0;  ///< the highest epoch among them (0: none)
  };
  /// With `max_size`, only copies newest() would read (1..max_size bytes).
  static Listing list(const std::string& dir, std::string_view name, uint64_t min_epoch = 0,
                      uint64_t max_size = UINT64_MAX);
  /// The owner epoch of the newest delete marker of `name` (0: none).
  /// Thread: any.
  static uint64_t deleted_epoch(const std::string& dir, std::string_view name);
  /// Reads a copy into `dest` (exactly its size), verifying its checksum.
  /// Errors: kIo, kCorrupt. Thread: any.
  static Result<void> read(const GlobalCopy& copy, std::span<std::byte> dest);

  uint64_t written() const noexcept { return written_.load(); }
  uint64_t failed() const noexcept { return failed_.load(); }
  /// Writes dropped because the name was deleted at or above their epoch.
  uint64_t dropped() const noexcept { return dropped_.load(); }
  /// Generations not written because the copier was kMaxQueued behind, or
  /// the copies waiting for the writer filled their budget.
  uint64_t skipped() const noexcept { return skipped_.load(); }

  /// What an operator needs to see (`batonctl status`): whether the last
  /// write failed, why, and when (steady clock, ns; 0: never).
  struct Health {
    uint64_t written = 0, failed = 0, skipped = 0, dropped = 0;
    bool failing = false;        ///< the last write failed
    uint64_t failing_since_ns = 0;  ///< the first failure of this spell (while failing)
    std::string last_error;      ///< the newest failure's message ("" if none)
    uint64_t last_error_ns = 0;  ///< when it failed
    uint64_t last_write_ns = 0;  ///< when a file was last made safe
  };
  Health health() const;

 private:
  /// A generation copied out of its slot, waiting for the writer.
  struct Copy {
    Job job;                       ///< data and pin unset: the bytes are `bytes`
    std::unique_ptr<std::byte[]> bytes;  ///< job.size of them (not zeroed first)
    uint32_t crc = 0;
    uint64_t not_before_ns = 0;    ///< a failed write's next try
    uint32_t failures = 0;
  };

  GlobalStore(std::string dir, uint32_t keep, uint16_t node, uint64_t max_buffered)
      : dir_(std::move(dir)), keep_(keep), node_(node), max_buffered_(max_buffered) {}
  void copy_loop();
  void write_loop();
  /// The copy of segment `name` waiting for the writer (at most one), or end. mu_ held.
  std::vector<Copy>::iterator waiting_for(std::string_view name);
  /// Counts `job`'s generation as not stored (the writer logs it) and
  /// remembers its segment for skipped_segments(). mu_ held.
  void skip_locked(const Job& job);
  /// `job`'s generation was taken: a skip of it or an older one is made
  /// good. mu_ held.
  void unskip_locked(const Job& job);
  /// Writes the copy's file; false (nothing left behind) when the name was
  /// deleted at or above its epoch, before or while it was written.
  Result<bool> write(const Copy& c);
  void prune(std::string_view name);
  /// Records a write's outcome (nullopt: written or dropped) and logs,
  /// rate-limited. Thread: the writer.
  void note(const std::optional<std::string>& error);

  std::string dir_;
  uint32_t keep_;
  uint16_t node_;
  uint64_t max_buffered_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::array<Job, kMaxQueued> queue_{};  ///< a ring: head_ is the oldest, count_ queued
  size_t head_ = 0, count_ = 0;
  bool stopping_ = false;   ///< the copier ends once the queue is empty
  bool copier_done_ = false;  ///< the writer ends once it is and nothing is waiting
  std::condition_variable written_cv_;  ///< the writer's: a copy waits, or the copier ended
  std::vector<Copy> waiting_;  ///< copies for the writer, one per segment name, oldest first
  uint64_t waiting_bytes_ = 0;  ///< theirs and the one being written
  std::thread copier_, writer_;
  /// When the writer last got somewhere (started a write, wrote a chunk,
  /// synced, finished): shut_down() gives up on it when this stands still.
  /// Steady clock, ns. Written by the writer, read by the owner.
  std::atomic<uint64_t> progress_ns_{0};
  bool writer_done_ = false;  ///< the writer returned (or is about to). Guarded by mu_.
  bool abandoned_ = false;    ///< shut_down gave up on the writer, which deletes the store. Guarded by mu_.
  std::atomic<uint64_t> written_{0}, failed_{0}, dropped_{0}, skipped_{0};
  // Guarded by mu_; written by the writer thread (skips: the submitter and the copier).
  bool failing_ = false;
  std::string last_error_;
  uint64_t last_error_ns_ = 0, last_write_ns_ = 0, failing_since_ns_ = 0;
  uint64_t failures_unlogged_ = 0, last_warned_ns_ = 0;  ///< the warning's rate limit
  uint64_t skips_unlogged_ = 0, last_skip_warned_ns_ = 0;
  struct Skip {
    uint64_t seg_id = 0, epoch = 0, generation = 0;  ///< the newest generation of the segment skipped
  };
  std::array<Skip, kMaxSkipped> skipped_ids_{};  ///< guarded by mu_
  size_t skipped_count_ = 0;                     ///< guarded by mu_
  bool skipped_overflow_ = false;                    ///< guarded by mu_
  std::atomic<bool> has_skipped_{false};
};

}  // namespace baton
