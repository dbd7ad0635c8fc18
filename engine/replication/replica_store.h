#pragma once
// Replica store (S6): what this node holds of another node's segment. Each
// generation is built in a shadow slot and published atomically once every
// chunk arrived and the generation checksum matched; readers only ever see
// published slots. Keeps the latest plus `retain` older generations, so it
// holds at most (2 + retain) x segment size.
//
// Thread: worker (the one that owns the segment id's shard).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "replication/transfer.h"
#include "segment/local_storage.h"

namespace baton {

class ReplicaStore {
 public:
  struct Slot {
    LocalStorage mem;
    uint64_t generation = 0;  ///< 0: empty
    uint64_t epoch = 0;       ///< owner epoch the generation was written under
    uint64_t set = 0;         ///< the owner's replica set then (wire::pack_set)
    uint32_t gen_crc = 0;
    uint32_t chunk_size = 0;
    std::vector<uint32_t> chunk_crcs;
    uint32_t pins = 0;  ///< readers (fetch senders) using it
    /// What the memory holds, kept after the slot is taken for a shadow
    /// (then `generation` is 0): a delta is built on it when it is the
    /// base, or one delta away from it. 0: unknown (half written).
    uint64_t content = 0;
    uint64_t content_epoch = 0;
    /// The generation this one arrived as a delta of (0: whole), and the
    /// chunks that delta carried.
    uint64_t delta_of = 0;
    std::vector<uint32_t> delta_chunks;
  };

  /// What a store is made from: the first frame of its segment, and
  /// whether this node is one of its hot standbys.
  struct Origin {
    std::string name;
    uint64_t id = 0;
    uint64_t size = 0;
    uint64_t epoch = 0;
    uint16_t owner = 0;
    /// Keep a hot copy (below) too.
    bool hot = false;
    /// The kind of pages an application's memory is on here: the slots' and
    /// the hot copy's, so that a takeover on this node can hand a slot (or
    /// the hot copy) to the application as its memory (promote()).
    LocalStorage::Pages pages = LocalStorage::Pages::kAny;
    static Origin of(const wire::Frame& first) {
      return Origin{std::string(first.name), first.seg_id, first.total_len, first.epoch, first.src};
    }
  };

  /// Creates a store for `first`'s segment (size and name from the frame),
  /// allocating 2 + retain slots: up to (2 + retain) x the segment size,
  /// faulted in, and one more for a hot standby. Thread: any (the slot allocator's, or the worker in a
  /// simulation).
  static Result<std::unique_ptr<ReplicaStore>> create(const Origin& first, uint32_t retain, int numa_node);
  static Result<std::unique_ptr<ReplicaStore>> create(const wire::Frame& first, uint32_t retain, int numa_node) {
    return create(Origin::of(first), retain, numa_node);
  }

  /// What an owner keeps of its own segment once a newer owner fenced it
  /// (Engine's keep_fenced_copy): its last complete snapshot, published as
  /// this store's latest generation under the owner's own epoch, and its
  /// other stage as the slot the next generation is built in. Both are
  /// the owner's memory mapped again (LocalStorage::share), so nothing is
  /// allocated or copied.
  struct Kept {
    LocalStorage latest;
    LocalStorage spare;
    uint64_t generation = 0;
    uint64_t epoch = 0;
    uint64_t set = 0;  ///< the owner's recorded replica set (wire::pack_set)
    uint32_t gen_crc = 0;
    uint32_t chunk_size = 0;
    std::vector<uint32_t> chunk_crcs;
  };
  /// A store of `origin`'s segment made of what a fenced owner kept: it
  /// holds k.generation of owner epoch k.epoch as if it had received it,
  /// answers queries and claims with it and serves fetches from it, and
  /// takes a newer owner's data like any replica (the same generation
  /// whole is relabelled, not received again). Thread: worker.
  static std::unique_ptr<ReplicaStore> from_owner(const Origin& origin, Kept k);

  enum class Accept : uint8_t {
    kStored, kDuplicate, kPublished, kStale, kCorrupt, kNoSlot, kBadFrame, kNeedFull, kRestamped,
    kCompleting };

  /// Takes one chunk (verifying it if decode did not). kStale: older than
  /// what is published (ack it as held). kNoSlot: every non-latest slot is
  /// pinned by a reader; drop (it is resent). kBadFrame: CRC mismatch.
  /// A delta (kFlagDelta): kNeedFull when this store does not hold its base
  /// (or the delta did not check out against it): ask for the generation
  /// whole. When the shadow must become a copy of the base first (the
  /// chain of deltas back to what it holds is broken, as after a whole
  /// generation), each frame copies a slice of the base besides keeping its
  /// own chunk, drawn from `budget`: the worker gives each poll one slice
  /// (EngineConfig::copy_slice) for all the frames it receives, and lists
  /// the store as behind while there is copying left (preparing()).
  /// (Frames used to be dropped until the copy was done: each resent after
  /// a backed-off timeout, a 64 MiB delta took a second. Then each frame
  /// copied a slice of its own: a burst of 32 frames copied 128 MiB in one
  /// poll, 130-260 ms on a VM whose pages not touched for a while cost
  /// microseconds each, and live peers were suspected meanwhile.)
  /// kCompleting: that was the delta's last chunk, but some of the base is
  /// left to copy; advance_within() copies it from the poll's budget and
  /// publishes. (The last frame used to copy all of it at once: 30-100 ms
  /// of one poll for a 128 MiB base.)
  ///
  /// kRestamped: a new owner (after adopt_epoch) sends, whole, the very
  /// generation this store published last under the old epoch (a
  /// takeover loads the newest generation and re-replicates it under its
  /// own epoch). Its number, generation checksum and this frame's chunk
  /// checksum match: the published slot is relabelled with the new epoch
  /// and owner's set instead of received again, and the generation is
  /// acked whole. The rest of the sender's window arrives as kStale.
  Accept accept(wire::Frame& f, uint64_t& budget) noexcept;
  /// The same with a slice of its own for this frame (set_copy_slice()):
  /// for callers that pace nothing (tests).
  Accept accept(wire::Frame& f) noexcept {
    uint64_t budget = slice_;
    return accept(f, budget);
  }
  /// Bytes of the base a delta's shadow copies per frame by accept(f)
  /// (tests; the engine passes its budget per poll), when it must copy all
  /// of it, unless set_copy_slice() says otherwise.
  static constexpr uint64_t kPrepareSlice = 4 << 20;
  void set_copy_slice(uint64_t bytes) noexcept { slice_ = std::max<uint64_t>(bytes, 1); }
  /// A delta's shadow is still becoming a copy of its base (kCompleting
  /// included): advance_within() has copying to do.
  bool preparing() const noexcept {
    return shadow_ >= 0 && assembler_.active() && assembler_.is_delta() && prepared_ < size_;
  }
  static constexpr size_t kDeltaReserve = 256;

  /// Ack for the generation in progress or the one just published.
  void fill_ack(wire::Frame& ack) const noexcept;

  /// Latest published slot, or nullptr. Thread: worker.
  Slot* latest() noexcept { return published_.empty() ? nullptr : &slots_[published_.front()]; }
  /// A published slot by generation (0: latest), or nullptr.
  Slot* find(uint64_t generation) noexcept;
  /// Published generations, newest first.
  std::vector<uint64_t> generations() const;
  /// A pin another thread (the global-storage writer) holds on `slot` until it
  /// decrements it; the slot is not reused meanwhile. Thread: token holder pins.
  std::atomic<uint32_t>& writer_pin(const Slot& slot) noexcept { return writer_pins_[&slot - slots_.data()]; }

  /// True while a global-storage write still reads one of the slots.
  bool writer_pinned() const noexcept {
    for (size_t i = 0; i < slots_.size(); ++i)
      if (writer_pins_[i].load() != 0) return true;
    return false;
  }

  // --- Hot standby (S16) ---------------------------------------------------
  // A hot standby keeps, beside its slots, a copy of the latest published
  // generation as the application's memory: a takeover on this node hands
  // that memory over (Engine's load) instead of allocating, faulting and
  // copying the segment. The copy follows the latest slot: each publish
  // marks the chunks that changed (a delta's, or all), and advance_hot()
  // copies them from the slot, a bounded slice per call, so the worker's
  // poll stays short. The latest slot is never a shadow, so it holds still
  // while it is copied. Thread: worker.

  /// What the hot copy holds.
  struct HotStatus {
    bool on = false;           ///< this store keeps one
    uint64_t generation = 0;   ///< the generation it equals (0: none yet)
    uint64_t behind_bytes = 0; ///< still to copy from the latest published generation
  };
  HotStatus hot_status() const noexcept;
  /// Whether the hot copy lags the latest published generation.
  bool hot_behind() const noexcept { return hot_ != nullptr && hot_->stale_count != 0; }
  /// Copies up to `budget` bytes (at least one chunk) of what the hot copy
  /// lacks; returns false while there is more to copy.
  bool advance_hot(uint64_t budget) noexcept { return hot_within(budget); }

  // --- The next shadow, ahead of time ---------------------------------------
  // A delta is built on a copy of its base: the slot that becomes its
  // shadow first takes the chunks the generations since its own content
  // carried (begin_delta). With one slot besides the latest (retain 0),
  // that is the previous delta's chunks, copied when the next delta's
  // first frame arrives: at 1 GiB with 1% of the pages written, ~2 ms of
  // each replication. After a delta is published, the slot it replaced is
  // brought up to it between generations instead, a slice per poll
  // (advance_within), so the next delta finds its shadow current.
  // A half-done copy still says it holds its old generation: the chain
  // from there to any later base carries every chunk it touched, so the
  // delta copies them again. Thread: worker.

  /// Whether there is work for advance_within(): a delta's base to
  /// copy into its shadow (preparing()), a completed delta to publish
  /// (kCompleting; a frame sent again may have finished its copy), the
  /// hot copy's or the next shadow's.
  bool behind() const noexcept { return hot_behind() || ahead_ >= 0 || preparing() || completing(); }
  /// Copies up to `budget` bytes in all (at least a chunk; the engine's
  /// stores share one budget per poll) and takes them from it: a delta's
  /// base first, publishing the delta once its base is whole and all its
  /// chunks are in (kCompleting; `*published` set: the caller acks it as
  /// for kPublished), then the hot copy's and the next shadow's chunks.
  /// Returns false while there is more to copy.
  bool advance_within(uint64_t& budget, bool* published) noexcept {
    *published = finish_delta(budget);
    if (completing()) return false;
    // The hot copy goes on while a delta's base is copied (a chunk a call,
    // what is left of the budget).
    const bool hot_done = hot_within(budget);
    const bool shadow_done = budget == 0 ? ahead_ < 0 : advance_shadow(budget);
    return hot_done && shadow_done && !preparing();
  }
  /// The same with a budget of its own (tests).
  bool advance_background(uint64_t budget, bool* published) noexcept { return advance_within(budget, published); }
  /// Hands the hot copy over if the latest published generation is
  /// `generation` of owner epoch `epoch`, bringing it current first (the
  /// caller is loading it and waits anyway). The store keeps no hot copy
  /// after that.
  std::optional<LocalStorage> take_hot(uint64_t generation, uint64_t epoch) noexcept;

  /// What a replica hands a load that takes the segment over here
  /// (promote()): the application's memory, the new owner's first snapshot
  /// stage with the generation's CRCs, and (a hot standby's) a free slot's
  /// memory for its second stage. No allocation, no checksum.
  struct Promotion {
    LocalStorage app;
    LocalStorage stage;
    std::vector<uint32_t> chunk_crcs;
    uint32_t gen_crc = 0;
    uint32_t chunk_size = 0;
    LocalStorage spare;
    /// kInPlace: whether `stage` already holds the generation but for the
    /// chunks in `stage_behind` (it was a shadow brought up to it, or a
    /// chain of deltas away from it); else fill_stage() copies it whole.
    bool stage_chained = false;
    std::vector<uint32_t> stage_behind;
    /// kInPlace: makes `stage` a copy of `app` (the generation; the caller
    /// may have moved it out of here), copying only what it lacks. The
    /// caller runs it before the application may write `app`. Returns the
    /// bytes copied.
    uint64_t fill_stage(const LocalStorage& app) noexcept;
  };
  /// What promote() hands over.
  enum class Hand : uint8_t {
    /// A hot standby's: take_hot() as the application's memory, the
    /// latest slot as the first stage, a free slot for the second.
    kHotCopy,
    /// Zero-copy takeover (issue #11): the latest slot itself, mapped in
    /// place, as the application's memory (`app`), and a free slot as the
    /// first stage (`stage`, with the generation's CRCs), which the caller
    /// fills from `app` before the application may write (fill_stage());
    /// a third free slot, where the store keeps one (retain >= 1), as the
    /// second stage (`spare`). The stage is the free slot closest to the
    /// generation: one the worker brought up to it between generations
    /// (advance_within) needs no copy, one a chain of deltas away
    /// only their chunks.
    /// Only where both slots are on pages an application's memory may be
    /// on here (Origin::pages: the slots are allocated so), so nothing
    /// needs allocating once the store gave its copy away.
    kInPlace,
  };
  /// Hands this store's copy over to a load that takes the segment over
  /// here; the store must be dropped after. Nothing if the latest
  /// published generation is not `generation` of owner epoch `epoch`, or
  /// a reader holds a slot it needs.
  std::optional<Promotion> promote(uint64_t generation, uint64_t epoch, Hand hand = Hand::kHotCopy) noexcept;

  const std::string& name() const noexcept { return name_; }
  uint64_t id() const noexcept { return id_; }
  uint64_t size() const noexcept { return size_; }
  uint64_t epoch() const noexcept { return epoch_; }
  uint16_t owner() const noexcept { return owner_; }
  /// The owner's incarnation whose history this copy is (0: not known yet).
  /// Thread: worker.
  uint64_t owner_incarnation() const noexcept { return owner_incarnation_; }
  void set_owner_incarnation(uint64_t incarnation) noexcept { owner_incarnation_ = incarnation; }
  /// Adopts a newer owner epoch (ownership moved). Generations are ordered by
  /// (epoch, generation): the new owner's next generation wins even if an old
  /// epoch had reached a higher number. Thread: worker.
  void adopt_epoch(uint16_t owner, uint64_t epoch) noexcept {
    owner_ = owner;
    owner_incarnation_ = 0;
    epoch_ = epoch;
    last_published_ = 0;
    assembler_.stop();
    ahead_ = -1;
  }

 private:
  /// A store of `origin`'s segment with 2 + `retain` slots, their memory
  /// still to come, and the room deltas are tracked in (create, from_owner).
  static std::unique_ptr<ReplicaStore> shaped(const Origin& origin, uint32_t retain);
  int pick_shadow() noexcept;
  /// Whether slot `from` holds a generation that published slot `to` is a
  /// chain of deltas away from (or `to`'s own), every hop under `to`'s
  /// epoch and chunking; appends the chunks those deltas carried to
  /// `hops` (possibly some twice). `from` then becomes a copy of `to` by
  /// copying them from `to`.
  bool chains_to(const Slot& from, const Slot& to, std::vector<uint32_t>& hops) noexcept;
  /// Whether `f` (whole, with its generation checksum) is the latest
  /// published generation again, under a newer epoch. Verifies `f`.
  bool same_as_latest(wire::Frame& f) noexcept;
  bool in_use(int i) const noexcept { return slots_[i].pins != 0 || writer_pins_[i].load() != 0; }

  std::string name_;
  LocalStorage::Pages pages_ = LocalStorage::Pages::kAny;  ///< Origin::pages
  uint64_t id_ = 0;
  uint64_t size_ = 0;
  uint64_t epoch_ = 0;
  uint16_t owner_ = 0;
  uint64_t owner_incarnation_ = 0;
  uint32_t retain_ = 0;
  std::vector<Slot> slots_;
  std::unique_ptr<std::atomic<uint32_t>[]> writer_pins_;  // one per slot
  std::vector<int> published_;  // slot indices, newest first; at most retain_ + 1
  int shadow_ = -1;
  ChunkAssembler assembler_;
  uint64_t last_published_ = 0;
  uint64_t shadow_set_ = 0;  ///< replica set of the generation being built
  /// A delta's shadow becoming a copy of its base: bytes copied so far
  /// (`size_`: done). The base slot is `prepare_from_`.
  uint64_t prepared_ = 0;
  int prepare_from_ = -1;
  uint64_t slice_ = kPrepareSlice;  ///< bytes of the base accept() copies per frame
  ChunkBitmap received_;  ///< while preparing: the chunks the delta brought (not copied from the base)
  /// Copies up to `budget` bytes more of the base into the shadow (whole
  /// chunks: it may pass the budget by less than one); returns the bytes
  /// it moved past, copied or kept from the delta.
  uint64_t prepare(uint64_t budget) noexcept;
  /// A delta whose every chunk is in (kCompleting) waits for the rest of its
  /// base: the generation it is (0: none). Anything that stops or restarts
  /// the assembly, or begins another generation, ends the wait.
  uint64_t completing_ = 0;
  bool completing() const noexcept {
    return completing_ != 0 && assembler_.complete() && assembler_.generation() == completing_ && shadow_ >= 0;
  }
  /// Copies up to `budget` bytes more of a delta's base into its shadow;
  /// publishes a completing delta once its base is whole (returns true then).
  bool finish_delta(uint64_t& budget) noexcept;
  std::vector<uint32_t> shadow_delta_;  ///< the chunks of the delta being built
  std::vector<uint32_t> hops_;          ///< scratch: the chunks a shadow copies from the base
  /// The slot being brought up to the latest generation ahead of the next
  /// delta (-1: none), the latest's slot and generation then, and how many
  /// of that generation's delta chunks it has copied.
  int ahead_ = -1;
  int ahead_from_ = -1;
  uint64_t ahead_generation_ = 0;
  size_t ahead_next_ = 0;
  bool advance_shadow(uint64_t& budget) noexcept;
  /// advance_hot(), taking what it copies from `budget`.
  bool hot_within(uint64_t& budget) noexcept;
  void plan_ahead() noexcept;

  /// The hot copy: chunks in `stale` may differ from the latest published
  /// slot (generation `follows`); the rest equal it. `equals`: the last
  /// generation it was wholly a copy of.
  struct Hot {
    LocalStorage mem;
    ChunkBitmap stale;
    uint32_t stale_count = 0;
    uint32_t chunk_size = 0;
    uint64_t follows = 0;
    uint64_t follows_epoch = 0;
    uint64_t equals = 0;
    uint32_t next = 0;  ///< where advance_hot() looks first
  };
  std::unique_ptr<Hot> hot_;
  void hot_published(const Slot& s) noexcept;

  Accept begin_delta(wire::Frame& f) noexcept;
  void publish() noexcept;
};

}  // namespace baton
