#pragma once
// Rounds of questions to peers (S9, S11, S22): a load's query (what does
// each node hold of a name), a claim (accept owner epoch E), a delete's
// tombstone, a set record (accept replica set S, version V, of the owner's
// epoch). The asking side runs on the control thread (control/rounds.cc):
// it owns the rounds in flight, decides whom to ask again and when a round
// is settled, and sends its questions through the data path as
// ControlMsg::kSend. The answering side stays on the data path, which owns
// what the answers are about (replica stores, records, owned segments): it
// forwards each answer here as a RoundEvent, and applies a fence (an epoch
// granted, a tombstone stored) before the frame that reports it goes out.

#include <cstdint>
#include <vector>

#include "baton/engine.h"
#include "control/detector.h"

namespace baton {

struct Op;
struct QueryOp;
struct ClaimOp;
struct TombstoneOp;

/// The data path's news about rounds. Plain data, copied through a ring.
/// Thread: produced by the poll-token holder, consumed by the control thread.
struct RoundEvent {
  enum class Kind : uint8_t {
    kStartQuery,      ///< `op` (a QueryOp) starts; its own answer is in already
    kStartClaim,      ///< `op` (a ClaimOp) starts; its own answer is in already
    kStartTombstone,  ///< `op` (a TombstoneOp) starts; its own answer is in already
    kFound,           ///< FETCH_META answering a query
    kGranted,         ///< FETCH_META answering a claim at `epoch`: promised, granted with a copy if kFlagFound
    kRefused,         ///< STALE_EPOCH: `src` holds the newer `epoch` (claims and tombstones of `seg_id`)
    kNoSuchSegment,   ///< NO_SUCH_SEGMENT: `src` holds nothing of `seg_id` (claims)
    kStored,          ///< `src` stored the tombstone at `epoch`
    kStartRecord,     ///< a set record starts: segment `seg_id` at `epoch`, version `generation`, set `sack`;
                      ///< `flags`: this node stored it (kFlagComplete) or holds another owner's (0)
    kRecordAck,       ///< `src` stored the set record `generation` of `seg_id` at `epoch`
  };
  Kind kind = Kind::kFound;
  uint16_t src = 0;
  uint16_t flags = 0;       ///< the frame's (kFound)
  uint32_t gen_crc = 0;     ///< a record's version (kFound)
  uint32_t chunk_size = 0;  ///< a record's owner (kFound)
  uint64_t seg_id = 0;
  uint64_t epoch = 0;
  uint64_t generation = 0;
  uint64_t total_len = 0;
  uint64_t sack = 0;       ///< a record's or a copy's set
  uint64_t aux_epoch = 0;  ///< a record's epoch (kFound), a copy's data epoch (kGranted)
  /// The answerer's set record or tombstone (kGranted; epoch 0: none).
  struct Record {
    uint64_t epoch = 0, version = 0, set = 0;
    uint16_t owner = 0;
    bool deleted = false;
  } record;
  Op* op = nullptr;        ///< kStart*
};

/// A set record in flight (control/rounds.cc): asked of every reachable node
/// until a quorum stored it, or too many hold another owner's record of the
/// epoch for one to (two nodes creating one name at once). No deadline: the
/// owner records its set for as long as it owns the segment; a newer
/// proposal of the segment replaces it. Control thread.
struct RecordRound {
  uint64_t seg_id = 0;
  uint64_t epoch = 0;
  uint64_t version = 0;
  uint64_t set = 0;  ///< wire::pack_set
  std::vector<uint16_t> acked;    ///< nodes that stored it (this one included)
  std::vector<uint16_t> refused;  ///< nodes holding another owner's record of this epoch
  uint64_t last_sent_ns = 0;
};

/// The asking side of every round in flight. Thread: control (Control::step).
class Rounds {
 public:
  Rounds(Engine::Impl& engine, const Detector& detector) : e_(engine), detector_(detector) {}
  /// Takes the data path's round news (round_starts, round_answers), asks
  /// again whom it must, finishes settled rounds and wakes their callers,
  /// and settles set records; appends questions and verdicts to `out`.
  void step(uint64_t now, std::vector<ControlMsg>& out) noexcept;
  /// Forgets the set record in flight of a segment no longer owned here.
  void forget(uint64_t seg_id) noexcept;
  /// Rounds are in flight: they are asked again on their own clock.
  bool busy() const noexcept {
    return !queries_.empty() || !claims_.empty() || !tombstones_.empty() || !set_records_.empty();
  }
  /// Finishes every round (the engine stops): nobody waits forever. Called
  /// once both threads are gone.
  void abort() noexcept;

 private:
  void step_set_records(uint64_t now, std::vector<ControlMsg>& out) noexcept;

  Engine::Impl& e_;
  const Detector& detector_;
  std::vector<QueryOp*> queries_;
  std::vector<ClaimOp*> claims_;
  std::vector<TombstoneOp*> tombstones_;
  std::vector<RecordRound> set_records_;
};

}  // namespace baton
