#pragma once
// Membership from Corosync (S17; issue #12 item 8): for clusters larger than
// one chassis, the view's members come from a Corosync process group (CPG)
// that every batond joins, and its quorum from votequorum, while the
// backplane heartbeats stay the fast failure detector.
//
// Corosync knows processes, not Baton nodes: a CPG member is a (corosync
// node id, pid) pair, and one corosync node may run several batonds (a
// chassis of blades on one host). Every batond therefore announces its Baton
// node id to the group with an agreed (totally ordered) message whenever a
// process joins, itself included; CPG's virtual synchrony delivers the join
// before any message of the joiner, so every member learns every other. A
// member that leaves takes its announcement with it.
//
// The view, from those:
//  - members: this node, and every node whose announced process is in the
//    group now and that the heartbeats hold alive (a node Corosync still
//    lists but the backplane cannot hear is out at once, as with the
//    backplane source; a node the backplane hears but that is not in the
//    group is out too);
//  - quorate: connected, this process in the group, and votequorum says the
//    cluster is quorate;
//  - agreed: as for the backplane source, every member's heartbeat reports
//    the same member set.
// `View::quorum` (how many answers a round needs) stays a majority of
// Baton's expected votes: it counts Baton nodes, not Corosync votes.
//
// CpgMembership is the decision, with no I/O: the adaptor (make_corosync_
// membership, corosync_membership.cc) feeds it what libcpg and
// libvotequorum deliver, and tests feed it by hand.
//
// Thread: control.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "control/membership.h"

namespace baton {

/// A process in a CPG group.
struct CpgMember {
  uint32_t nodeid = 0;  ///< corosync's node id
  uint32_t pid = 0;
  auto operator<=>(const CpgMember&) const = default;
};

class CpgMembership : public MembershipSource {
 public:
  CpgMembership(uint16_t self, uint32_t expected_votes);

  const char* name() const noexcept override { return "corosync"; }
  const View& view() const noexcept override { return view_; }
  bool update(std::span<const uint16_t> alive_peers) override;
  bool reported(uint16_t peer, uint64_t digest) override;

  // What Corosync delivered. Each returns whether the view changed.
  /// Connected; this process is `local` in the group (once it is listed).
  bool on_connected(CpgMember local);
  /// The group's members now (a configuration change). Announcements of
  /// processes that left are forgotten.
  bool on_members(std::span<const CpgMember> members);
  /// Process `from` says it is Baton node `node`.
  bool on_announce(CpgMember from, uint16_t node);
  /// votequorum's verdict on the cluster.
  bool on_quorum(bool quorate);
  /// The connection to corosync is gone: alone and without quorum.
  bool on_disconnected();

  bool connected() const noexcept { return connected_; }
  /// Baton nodes whose processes are in the group now (whether or not the
  /// heartbeats hear them), sorted.
  std::vector<uint16_t> group_nodes() const;

  /// The announcement's bytes: magic "BTNM", the node id (little endian),
  /// two zero bytes.
  static std::array<std::byte, 8> announcement(uint16_t node) noexcept;
  /// Parses an announcement; nullopt unless it is exactly one, with a node
  /// id in 1..65534 (anyone in the group may send anything).
  static std::optional<uint16_t> parse_announcement(std::span<const std::byte> msg) noexcept;

 private:
  bool recompute();

  uint16_t self_;
  View view_;
  Agreement agreement_;
  bool connected_ = false;
  bool cluster_quorate_ = false;
  CpgMember local_{};
  std::vector<CpgMember> members_;                        ///< the group now, sorted
  std::vector<std::pair<CpgMember, uint16_t>> announced_;  ///< process -> Baton node
  std::vector<uint16_t> alive_;                            ///< heartbeat-alive peers, sorted
};

/// Events the Corosync source reports (connected, lost, quorum changes).
using MembershipEvents = std::function<void(std::string)>;

/// The Corosync source: a CpgMembership fed by libcpg and libvotequorum on
/// a thread of its own (they may block; the control thread must not).
/// Joins `group` at once and again every second while corosync does not
/// answer. Fails (kInvalidArgument) in a build without them.
Result<std::unique_ptr<MembershipSource>> make_corosync_membership(uint16_t self, uint32_t expected_votes,
                                                                  std::string group, MembershipEvents events);

}  // namespace baton
