#pragma once
// A segment this node owns (the primary copy), its snapshot stages and its
// replica slots. Fields say which thread writes them (engine/engine_impl.h
// names the threads).

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "replication/transfer.h"
#include "segment/copy_on_write.h"
#include "segment/dirty_tracker.h"
#include "segment/local_storage.h"

namespace baton {

/// A snapshot buffer: one committed generation, ready to send.
struct Stage {
  enum State : uint32_t { kFree = 0, kPosted = 1 };
  LocalStorage mem;
  std::vector<uint32_t> chunk_crcs;
  uint32_t gen_crc = 0;                ///< valid once ready == every chunk
  uint64_t generation = 0;
  /// Chunks snapshotted so far: stored (release) by the committing caller
  /// after each chunk and its CRC, which for a large segment copies without
  /// the poll token; the token holder's senders send up to it (acquire).
  std::atomic<uint32_t> ready{0};
  std::atomic<uint32_t> state{kFree};
  /// Pages (kStalePage bytes) whose copy here may differ from the
  /// segment's memory as last seen by a commit (written since this stage's
  /// snapshot): the next snapshot into this stage copies only these, and
  /// checksums again only the chunks they touch. Written under the poll
  /// token: by the committer's apply_marks (it also holds Segment::mu)
  /// and, between commits, by Engine::Impl::catch_up_stage, which copies
  /// into the free stage what the current one holds newer. A posted
  /// stage's is also its committer's (the copy, which may run without the
  /// token) or, copy-on-write, the token holder's (advance_cow).
  static constexpr uint64_t kStalePage = 4096;
  ChunkBitmap stale;
  /// The chunks written since the previous generation (ascending), for
  /// replicas that hold it: they are sent only these. `delta_base` is that
  /// generation; 0: no delta (everything may have changed). Written by the
  /// committer before the stage is posted, read by the token holder.
  std::vector<uint32_t> delta;
  uint64_t delta_base = 0;
  /// A copy-on-write snapshot still being taken (S14): its stale pages are
  /// copied from the segment (or were, by a writer's fault handler) and
  /// checksummed chunk by chunk by the poll-token holder
  /// (Engine::Impl::advance_cow), which raises `ready` as it goes and
  /// clears this at the end. Token holder only.
  bool cow = false;
};

/// A replica slot of one of our segments. The set of slots is fixed when the
/// segment is added; re-replication (S12) swaps the node in a slot in place.
struct ReplicaTarget {
  std::atomic<uint16_t> node{0};     ///< written by the token holder, read by anyone; 0: empty slot
  ChunkSender sender;                ///< token holder only
  std::atomic<uint64_t> held{0};     ///< newest generation the replica published
};

/// A segment this node owns (the primary copy).
struct Segment {
  std::string name;
  uint64_t id = 0;
  uint64_t size = 0;
  uint32_t chunk_size = 0;
  LocalStorage mem;                     ///< the application's memory
  std::array<Stage, 2> stages;          ///< double-buffered snapshots
  /// Serialises the application's calls on this segment (commit, restore,
  /// removal), so that a commit needs neither another segment's lock nor,
  /// while it copies a large segment, the poll token. Lock order: a busy
  /// name (SegmentTable::NameGuard), the table's mutex, then this, then
  /// the poll token.
  std::mutex mu;
  /// Finds the pages written since the last commit, so a snapshot copies
  /// only their chunks (S15); null: untracked, every chunk counts as
  /// written. Committer (under mu) only.
  std::unique_ptr<WriteWatch> watch;
  /// Copy-on-write snapshots (EngineConfig::SnapshotMode::kCopyOnWrite),
  /// instead of `watch`; null: commits copy. Created with the segment,
  /// dropped by the committer holding mu and the poll token; pages settled
  /// by the token holder; its fault handler runs in any writing thread.
  /// Declared after `stages`: destroyed first, so no handler copies into
  /// a stage that is gone.
  std::unique_ptr<CopyOnWrite> cow;
  /// Faults in, on a thread of its own, the stage that the second snapshot
  /// takes, while the segment starts: a load's or a create's caller does
  /// not wait for it, and a commit into that stage before it is done
  /// touches what it has not reached yet. Declared after `stages`: joined
  /// before they are unmapped. Thread: its own.
  std::jthread prefault;
  std::atomic<bool> copy_on_write{false};  ///< cow != null: committer writes, anyone reads
  /// Periodic commits (EngineConfig::commit_every_ms): the period (0:
  /// none), and when the next one is due on the engine's clock (an
  /// application's commit pushes it back). Under mu.
  uint64_t commit_every_ns = 0;
  uint64_t next_periodic_ns = 0;
  /// Chunks written since the last generation, and whether that may not
  /// be all that changed (the tracker rested or failed, nothing was said,
  /// the engine wrote the memory itself, or there is no generation yet).
  /// Gathered until a snapshot takes them. Committer only.
  ChunkBitmap written_chunks;
  bool written_unknown = true;
  /// A copy-on-write commit's chunks, ascending, when they are all that
  /// written_chunks holds (mark_written lists them from the pages it
  /// took; prepare_stage takes the list instead of walking the bitmap).
  /// Committer only.
  std::vector<uint32_t> delta_list;
  bool delta_listed = false;
  bool rewritten = false;  ///< Engine::reopen put the memory back: the next commit is no delta
  /// The memfd was handed out (Engine::memory_fd): writes through another
  /// mapping are invisible to the tracker, so the next commit drops it.
  std::atomic<bool> shared_out{false};
  /// The memory is exactly the last committed generation (zeroes if none):
  /// made from it and handed to no one since (Engine::data or memory_fd
  /// clears it; once handed out, a mapping may outlive any reopen).
  /// Engine::reopen then has nothing to put back. Anyone reads and writes.
  std::atomic<bool> pristine{false};
  /// Whether the next commit copies only written chunks (the tracker is
  /// armed): committer writes, anyone reads (SegmentStatus).
  std::atomic<bool> tracked{false};
  std::atomic<uint64_t> committed{0};   ///< last generation handed out (written under mu)
  std::atomic<uint64_t> epoch{1};
  std::atomic<bool> fenced{false};
  std::vector<std::unique_ptr<ReplicaTarget>> replicas;  ///< fixed once the worker added it
  int current_stage = -1;               ///< worker: stage being replicated
  /// The free stage being brought up to the current one between commits
  /// (Engine::Impl::catch_up_stage): the generation it is brought to (0:
  /// none yet; kCatchUpStopped: not for this generation, the stages were
  /// marked since), and the chunk it goes on from. Token holder only.
  static constexpr uint64_t kCatchUpStopped = UINT64_MAX;
  uint64_t catch_up_to = 0;
  uint32_t catch_up_chunk = 0;
  /// What mark_written() found written, for apply_marks(): (first byte,
  /// last byte) runs, words of a bitmap of pages (kStalePage: the word's
  /// index, its bits) from a copy-on-write freeze, or everything.
  /// Committer (under mu).
  std::vector<std::pair<uint64_t, uint64_t>> marks;
  std::vector<std::pair<uint32_t, uint64_t>> mark_words;
  bool marks_all = false;
  /// The stage the next snapshot goes into (null: none free, which
  /// cannot happen: starting one frees the other). Token holder.
  Stage* free_stage() noexcept {
    Stage* free = nullptr;
    for (auto& s : stages)
      if (s.state.load(std::memory_order_acquire) == Stage::kFree) free = &s;
    return free;
  }
  // The replica set as recorded at a quorum of nodes (see "Fencing" in
  // docs/architecture.md). Durability counts only a recorded set: the newest
  // generation a majority of it holds under this epoch. A new set (the
  // slots changed: placed, re-replicated, moved, or a member restarted) is
  // proposed here; once a majority of it holds `need` (every generation
  // that may be durable) the control thread records it (a RecordRound) and
  // says so (kRecorded). Until then durability waits. All token holder
  // only, but `durable`.
  bool placed = false;                  ///< the control thread's first placement arrived
  std::vector<uint16_t> recorded_set;   ///< empty: none recorded yet (nothing is durable)
  uint64_t recorded_version = 0;
  struct PendingRecord {
    bool active = false;
    bool sent = false;                  ///< handed to the control thread: a majority of the set holds `need`
    uint64_t version = 0;
    uint64_t need = 0;
    std::vector<uint16_t> set;
    bool failed = false;                ///< refused by too many nodes for a quorum
  } pending;
  /// Engine::create_fresh waits for the first record: a refused one is its
  /// to withdraw (a lost race to create the name), not a fence. Set when
  /// made, cleared by the creator once it returns; read by the token holder.
  std::atomic<bool> creating{false};
  /// Members that refused this owner's own epoch, told to the control
  /// thread once each (SegmentNews::kRefusing), until they restart
  /// (kRefusingNoMore). Token holder only.
  std::vector<uint16_t> refusing;
  std::atomic<uint64_t> durable{0};
  /// When `durable` last rose (the engine's clock): token holder writes
  /// (before `durable`), anyone reads.
  std::atomic<uint64_t> durable_at_ns{0};
  /// Nodes that held copies of this segment before this owner (the set it
  /// took over, stale holders its query found): once this owner's set is
  /// recorded at a quorum, those outside it are told to drop their copies
  /// (reclamation). Token holder only.
  std::vector<uint16_t> release_to;
  /// A name made again after a delete: the newest epoch of its deleted
  /// history (the new segment's epoch - 1; 0: none). Every copy at or
  /// below it, anywhere, is of that history. Once this owner's set is
  /// recorded, and again with each periodic release, every live peer is
  /// told to drop such a copy, members of the new set too: a stale copy
  /// on a member outlived the tombstone, which the new set record
  /// replaced, and a later load restored it (simulation seed 70 with
  /// --token-waits). Set before the segment is published; read by the
  /// token holder.
  uint64_t deleted_history = 0;
  /// Fenced by a delete, or released by a newer owner (whose set, recorded
  /// at a quorum, holds the generation): no replica copy is kept of it
  /// (Engine::Impl::keep_fenced_copy), whatever records arrive later (a
  /// keep put off until a copy-on-write snapshot settled once found a new
  /// history's record in the tombstone's place, and kept the deleted
  /// generation: simulation seed 157). Token holder only.
  bool nothing_to_keep = false;
};

/// What a sender streams to a replica of `seg`: the snapshot in `stage`,
/// gated on the chunks snapshotted so far. Thread: token holder.
inline SendSource stage_source(const Segment& seg, const Stage& stage) noexcept {
  return SendSource{stage.mem.data(), seg.size, seg.chunk_size, stage.chunk_crcs, 0, stage.generation, &stage.ready};
}

/// The same as a delta, for a replica that holds stage.delta_base.
inline SendSource stage_delta_source(const Segment& seg, const Stage& stage) noexcept {
  SendSource src = stage_source(seg, stage);
  src.delta = stage.delta;
  src.base = stage.delta_base;
  return src;
}

}  // namespace baton
