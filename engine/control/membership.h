#pragma once
// Membership views (S17, issue #4 item 2). A view is the set of nodes that
// can reach each other now, with an id that rises on every change and a
// quorum flag. Decisions about replicas and ownership are taken only in a
// quorate view: a minority partition makes no ownership change.
//
// Views come from a MembershipSource. The built-in one derives them from the
// backplane failure detector (heartbeats on every link); the Corosync one
// (control/corosync_membership.h: CPG for membership, votequorum for
// quorum) delivers them instead for clusters larger than one chassis, while
// the backplane heartbeats stay the fast failure detector.
//
// Thread: control (the Detector's owner). poll() does I/O and is never
// called under simulation.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "baton/engine.h"

namespace baton {

class MembershipSource {
 public:
  virtual ~MembershipSource() = default;
  virtual const char* name() const noexcept = 0;
  /// Feeds the failure detector's verdict: the peers alive now. Returns true
  /// if the view (members, quorum or agreement) changed.
  virtual bool update(std::span<const uint16_t> alive_peers) = 0;
  /// A peer's report of its own view (from its heartbeat). Returns true if
  /// agreement changed.
  virtual bool reported(uint16_t peer, uint64_t digest) = 0;
  /// Reads what an outside membership service delivered since the last
  /// call (I/O, never blocking). Returns true if the view changed.
  virtual bool poll(uint64_t now_ns) {
    (void)now_ns;
    return false;
  }
  virtual const View& view() const noexcept = 0;
};

/// Which members report the same member set as this node (from their
/// heartbeats' view digests): a view is agreed when all do.
class Agreement {
 public:
  /// Records `peer`'s report; returns false if it is the one it had.
  bool report(uint16_t peer, uint64_t digest);
  /// Forgets the reports of nodes outside `members` (sorted): they said
  /// nothing about the new member set.
  void keep_only(const std::vector<uint16_t>& members);
  /// Whether every member but `self` reported `v`'s member set.
  bool agreed(const View& v, uint16_t self) const noexcept;

 private:
  std::vector<std::pair<uint16_t, uint64_t>> reports_;  // peer -> digest of its view
};

/// Views from the backplane heartbeats. Quorum is a strict majority of
/// expected votes. Two nodes are a special case, as in votequorum's two_node
/// mode: one node alone is quorate, but only after it has once seen its peer
/// (wait_for_all), so two nodes started apart never both decide. Data safety
/// does not rest on this: ownership still moves only with a majority of the
/// segment's replica set (see docs/architecture.md, "Fencing").
std::unique_ptr<MembershipSource> make_heartbeat_membership(uint16_t self, uint32_t expected_votes);

}  // namespace baton
