#pragma once
// Failover decisions (S18, S19, S21; issue #12): which node runs each
// service group. The coordinator is the lowest node id of a quorate view
// every member agrees on; it decides from the nodes' reports alone, so a
// new coordinator picks up where the last one left off. Data safety does
// not rest on it: two instances of a group that somehow both start meet in
// the engine, where the later owner epoch fences the other.
//
// A node runs the groups its capabilities cover (make_room(): summed
// minimums within its cores and memory; a group that declares no minimums
// runs alone). Choosing a node for a group (choose()):
//  - eligible: in the view, the same group configuration, at least the
//    group's cores and memory, every tag it asks for, not tried already in
//    this failover;
//  - an idle one first: for a first start its home nodes in order, then
//    nodes outside the spare pool; for a failover its hot standbys, then the
//    spare pool, each first the nodes that hold a copy of the group's
//    segments (their replica sets as this node's records say: the load
//    there takes its own replica over instead of fetching); for a
//    performance move the best capabilities first;
//  - else one with room beside its work, the least busy first;
//  - else the one where what must stop to make room is of the lowest
//    priority, all below the group's own (that work is stopped there and
//    fails over in turn);
//  - for a performance move, only nodes with better capabilities than the
//    one it runs on (more cores, or as many and more memory).
// A first start waits up to a start timeout for one of the group's home
// nodes to join the view (a cluster still coming up), as VCS's AutoStartList
// does, then takes any eligible node.
// Nodes that failed in a failover are passed over until the group has run
// a start timeout long, or, at a dead end, for a start timeout (then each
// gets another try). A group that fails over on performance only is
// restarted where it failed, unless that node left.
// Every candidate's verdict is kept, for the event that reports a decision.
//
// No I/O and no clock: time is passed in, and where a group's state lies is
// asked of the Holders it was given (set_holders). Thread: the failover
// manager's.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "failover/service_group.h"

namespace baton::failover {

enum class Why : uint8_t {
  kStart,        ///< never placed yet
  kFailure,      ///< the application, its node or a step of the failover failed
  kPerformance,  ///< slow for the whole window
};

struct Choice {
  std::optional<uint16_t> node;
  std::vector<std::pair<uint16_t, std::string>> rejected;  ///< candidate, why not
  std::string to_string() const;                            ///< "rejected: 2 (has 1 cores, needs 2), ..."
};

/// Groups given to nodes in one pass of the coordinator, beside what they report.
using Given = std::map<uint16_t, std::vector<const ServiceGroup*>>;

/// The nodes that hold a copy of every segment of a group (a hint for a
/// failover's choice; empty when unknown).
using Holders = std::function<std::set<uint16_t>(const ServiceGroup&)>;

/// Chooses a node for `g` among `members` (sorted) from their reports.
/// `exclude`: tried in this failover. `current`: the node it runs on (a
/// performance move must beat it). `taken`: groups given to nodes in this pass.
/// `holders`: nodes that hold a copy of `g`'s segments, preferred by a
/// failover among otherwise equal idle nodes.
Choice choose(const ServiceGroup& g, Why why, std::span<const uint16_t> members,
              const std::map<uint16_t, NodeReport>& reports, const std::vector<ServiceGroup>& groups,
              uint64_t hash, const std::set<uint16_t>& exclude, std::optional<uint16_t> current,
              const Given& taken, const std::set<uint16_t>& holders = {});

/// A coordinator that starts, or resumes after a stall, asks every member
/// for its report and decides on the answers (or, if some do not come, once
/// `settle_ns` passed): reports received before may have waited in a link
/// meanwhile, seconds old (a SIGSTOPped coordinator reads them on SIGCONT).
/// No I/O and no clock. Thread: the failover manager's.
class ReportRound {
 public:
  /// A new round at `now`: the number to ask with (never 0). `self` has
  /// answered.
  uint64_t start(uint64_t now, uint16_t self);
  /// A report that answered round `answer`.
  void answered(uint16_t node, uint64_t answer);
  /// Every member answered this round, or it began `settle_ns` ago.
  bool ready(uint64_t now, std::span<const uint16_t> members, uint64_t settle_ns) const;
  /// Every member answered this round.
  bool all(std::span<const uint16_t> members) const;
  uint64_t since() const noexcept { return since_; }

 private:
  uint64_t ask_ = 0;
  uint64_t since_ = 0;
  std::set<uint16_t> answered_;
};

class Coordinator {
 public:
  struct Alert {
    std::string group;
    std::string reason;
  };
  struct Out {
    std::vector<Assignment> assign;  ///< new ones: broadcast them
    std::vector<std::string> events; ///< each decision with its reasons
    std::vector<Alert> alerts;       ///< dead ends: run the group's alert hook
  };

  Coordinator(uint16_t self, std::vector<ServiceGroup> groups);

  /// One pass at `now` as coordinator of `members` (sorted; a quorate,
  /// agreed view with this node in it) over their latest reports.
  /// `floor`: the least number a new assignment takes (the wall clock in
  /// ms): numbers keep growing across coordinators that remember nothing
  /// of each other (every node restarted), like a hybrid logical clock.
  void step(uint64_t now, uint64_t floor, std::span<const uint16_t> members,
            const std::map<uint16_t, NodeReport>& reports, Out& out);
  /// An assignment heard from another coordinator (an earlier view's):
  /// later decisions number above it.
  void heard(const Assignment& a);
  /// Every group's current assignment, to broadcast again (late joiners,
  /// lost notes).
  std::vector<Assignment> current() const;
  const std::vector<ServiceGroup>& groups() const noexcept { return groups_; }
  uint64_t hash() const noexcept { return hash_; }
  /// Where a group's state already is, asked when a failover chooses a
  /// node (none set: nowhere known).
  void set_holders(Holders holders) { holders_ = std::move(holders); }

 private:
  struct Track {
    uint64_t seq = 0;         ///< the newest assignment known
    uint16_t node = 0;        ///< whom it named (0: unknown, e.g. heard only from a report)
    uint64_t assigned_ns = 0; ///< when this coordinator made it (0: not this one)
    Why why = Why::kStart;
    std::set<uint16_t> tried; ///< nodes that failed this failover (cleared once it runs steadily)
    uint64_t running_ns = 0;  ///< since when the current assignment runs (0: it does not)
    std::string stuck;        ///< the dead end last reported, so it is said once
    uint64_t stuck_ns = 0;    ///< since when it is at a dead end: the failed nodes get another try later
    uint64_t stuck_seq = 0;   ///< the assignment that ended there: one dead end per assignment and try
    bool slow_said = false;   ///< "stays: no better node" said for this slow spell
    bool heard = false;       ///< learnt from another coordinator since the last step
    uint64_t unplaced_ns = 0; ///< never placed: since when this coordinator waits to start it
    std::string reason;       ///< the decision behind `seq`, repeated with it (empty: another coordinator's)
  };
  /// Restarts a group that fails over on performance only where it ran.
  void restart_here(const ServiceGroup& g, Track& t, const std::string& why, uint64_t now,
                    std::span<const uint16_t> members, const std::map<uint16_t, NodeReport>& reports,
                    Given& taken, Out& out);
  void place(const ServiceGroup& g, Track& t, Why why, const std::string& reason, uint64_t now,
             std::span<const uint16_t> members, const std::map<uint16_t, NodeReport>& reports,
             std::optional<uint16_t> current, Given& taken, Out& out);

  uint16_t self_;
  std::vector<ServiceGroup> groups_;  ///< by priority, highest first
  uint64_t hash_;
  std::map<std::string, Track> tracks_;
  uint64_t floor_ = 0;  ///< this step's least new number
  Holders holders_;
};

}  // namespace baton::failover
