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

#include <cstdint>
#include <vector>

#include "protocol/wire.h"

namespace baton {

/// The data path's news about the segments this node owns. Plain data,
/// copied through a ring; never dropped (a backlog holds what does not
/// fit). Thread: produced by the poll-token holder, consumed by control.
struct SegmentNews {
  enum class Kind : uint8_t {
    kAdded,   ///< owned now, with `slots` empty replica slots; `set`: nodes to prefer (a set taken over)
    kSlots,   ///< its slots hold `set` now (after a kPlace, applied or not)
    kFenced,  ///< superseded: no more placement
    kGone,    ///< no longer owned here
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
  int32_t numa_node = -1;
};

/// Placement's view of one segment this node owns. Control thread.
struct Placement {
  enum Reason : uint16_t { kInitial = 0, kLost = 1, kBetter = 2 };
  uint8_t slots = 0;
  wire::ReplicaSet nodes{};          ///< as the data path last reported (0: an empty slot)
  std::vector<uint16_t> preferred;   ///< until the first placement: the set taken over
  bool placed = false;               ///< the first placement was sent
  bool fenced = false;
  bool waiting = false;              ///< a decision is on its way: none other until the data path reports
};

}  // namespace baton
