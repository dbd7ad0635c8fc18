#pragma once
// Membership views (S17, issue #4 item 2). A view is the set of nodes that
// can reach each other now, with an id that rises on every change and a
// quorum flag. Decisions about replicas and ownership are taken only in a
// quorate view: a minority partition makes no ownership change.
//
// Views come from a MembershipSource. The built-in one derives them from the
// backplane failure detector (heartbeats on every link); a Corosync source
// (CPG for membership, votequorum for quorum) can deliver them instead for
// clusters larger than one chassis, while the backplane heartbeats stay the
// fast failure detector.
//
// Thread: the poll-token holder calls update() and reported(); the engine
// publishes copies of view() to control threads.

#include <cstdint>
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
  virtual const View& view() const noexcept = 0;
};

/// Views from the backplane heartbeats. Quorum is a strict majority of
/// expected votes. Two nodes are a special case, as in votequorum's two_node
/// mode: one node alone is quorate, but only after it has once seen its peer
/// (wait_for_all), so two nodes started apart never both decide. Data safety
/// does not rest on this: ownership still moves only with a majority of the
/// segment's replica set (see docs/architecture.md, "Fencing").
std::unique_ptr<MembershipSource> make_heartbeat_membership(uint16_t self, uint32_t expected_votes);

}  // namespace baton
