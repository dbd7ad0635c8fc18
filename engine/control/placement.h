#pragma once
// Placement (S4, S12): which peers hold the replicas of the segments this
// node owns. The control thread decides (control/placement.cc): the first
// set when a segment is added (the live members of a set taken over first,
// then failure domains, then rendezvous rank), a replacement for a replica
// on a node that died, and a move to a node that adds failure domains. It
// sends each decision to the data path as ControlMsg::kPlace, which the data
// path applies only if the slots still hold what the decision was made on
// (and, for a move, only to a settled segment), and reports the slots as
// they are now. The data path owns the senders, what each replica holds,
// and the set records' durability gate; it proposes a set record whenever
// the slots change.

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "baton/engine.h"
#include "control/detector.h"
#include "protocol/wire.h"

namespace baton {

class Rounds;

/// The data path's news about the segments this node owns. Plain data,
/// copied through a ring; never dropped (a backlog holds what does not
/// fit). Thread: produced by the poll-token holder, consumed by control.
struct SegmentNews {
  enum class Kind : uint8_t {
    kAdded,   ///< owned now, with `slots` empty replica slots; `set`: nodes to prefer (a set taken over)
    kSlots,   ///< its slots hold `set` now (after a kPlace, applied or not)
    kFenced,  ///< superseded: no more placement
    kGone,    ///< no longer owned here
    kRefusing,  ///< the node in `set` (alone) refuses this owner's epoch: it holds another owner's copy of it
    kRefusingNoMore,  ///< the node in `set` (alone), which refused, restarted: it holds nothing, so it may be picked
  };
  Kind kind = Kind::kAdded;
  uint8_t slots = 0;
  uint64_t seg_id = 0;
  uint64_t set = 0;  ///< wire::pack_set
};

/// A peer's placement tags, from its heartbeats. Control thread.
struct PeerTags {
  uint32_t blade = 0;  ///< 0: unknown
  uint32_t power_domain = 0;
  int32_t package = -1;  ///< on its blade; -1: unknown
  int32_t numa_node = -1;
};

/// Placement's view of one segment this node owns. Control thread.
struct Placement {
  enum Reason : uint16_t { kInitial = 0, kLost = 1, kBetter = 2, kStandby = 3 };
  uint8_t slots = 0;
  wire::ReplicaSet nodes{};          ///< as the data path last reported (0: an empty slot)
  std::vector<uint16_t> preferred;   ///< until the first placement: the set taken over
  bool placed = false;               ///< the first placement was sent
  bool fenced = false;
  bool waiting = false;              ///< a decision is on its way: none other until the data path reports
  /// Nodes that refused this owner's own epoch (another owner of the same
  /// epoch holds them, records.cc): replaced like lost ones, never picked,
  /// until they restart (their other copy is gone then).
  std::vector<uint16_t> refusing;
};

/// Decides where the replicas of the segments this node owns go. Thread:
/// control (Control::step).
class Placer {
 public:
  Placer(Engine::Impl& engine, const Detector& detector) : e_(engine), detector_(detector) {}
  /// A peer's tags, from a heartbeat the data path passed on.
  void on_tags(uint16_t node, const PeerTags& tags) { peer_tags_[node] = tags; }
  /// Takes the data path's segment news (a segment gone is forgotten by
  /// `rounds` too) and decides: the first placement of a new segment at
  /// once; replacements and moves every heartbeat, in a quorate view every
  /// member agrees on. Appends the decisions to `out`.
  void step(uint64_t now, Rounds& rounds, std::vector<ControlMsg>& out) noexcept;

 private:
  /// The peer to hold a replica of `seg_id` next, not in `nodes`: alive
  /// (`live_only`) or at least not known to be gone, on another blade /
  /// power domain / package / NUMA node than this node and the other replicas where
  /// possible, then a preferred one (Engine::prefer_replicas_on), then by
  /// rendezvous rank; a hot standby before all; 0 if none.
  uint16_t pick_replica(uint64_t seg_id, const wire::ReplicaSet& nodes, bool live_only) const noexcept;
  /// Whether `node` is one of `seg_id`'s hot standbys (EngineConfig::standbys).
  bool standby(uint64_t seg_id, uint16_t node) const noexcept;
  /// Failure domains `cand` would add: another blade, power domain,
  /// package, NUMA node than this node and the reachable nodes in `nodes`
  /// but `skip` (a package or NUMA node is another one on another blade).
  /// Compared as a tuple: a new blade first.
  using Diversity = std::tuple<bool, bool, bool, bool>;
  Diversity diversity(const wire::ReplicaSet& nodes, uint16_t cand, uint16_t skip) const noexcept;
  void place(uint64_t id, Placement& pl, const wire::ReplicaSet& next, Placement::Reason why,
             std::vector<ControlMsg>& out) noexcept;

  Engine::Impl& e_;
  const Detector& detector_;
  std::unordered_map<uint64_t, Placement> placements_;  ///< the segments this node owns, as reported
  std::unordered_map<uint16_t, PeerTags> peer_tags_;
  std::vector<uint16_t> preferred_;  ///< Engine::prefer_replicas_on, sorted, as of `preferred_version_`
  uint64_t preferred_version_ = 0;
  bool preferred(uint16_t node) const noexcept {
    return std::binary_search(preferred_.begin(), preferred_.end(), node);
  }
  uint64_t last_ns_ = 0;  ///< the last look for replacements and moves
};

}  // namespace baton
