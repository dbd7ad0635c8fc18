#pragma once
// Service groups and what nodes say about them (S18-S21, issue #12): the
// configuration every batond of a cluster shares, and the plain records the
// failover manager's parts pass around. No I/O.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace baton::failover {

/// An application with what it needs: how to start, probe and provision
/// it, the segments it keeps its state in, hardware minimums and a
/// priority. Commands run under /bin/sh with BATON_SOCKET, BATON_NODE,
/// BATON_GROUP and BATON_REASON in their environment.
struct ServiceGroup {
  std::string name;                   ///< 1..63 printable characters, no spaces
  std::vector<std::string> segments;  ///< loaded on the chosen node before start
  std::string start;                  ///< the application; runs until it fails or is stopped
  std::string probe;                  ///< optional: exit 0 while it serves; its response time is measured
  std::string provision;              ///< optional hook before start; exit 0: provisioned
  std::string alert;                  ///< optional: run on a dead end (failover impossible)
  uint32_t probe_interval_ms = 1000;
  uint32_t probe_timeout_ms = 2000;   ///< a probe this slow fails
  uint32_t slow_ms = 0;               ///< probe responses slower than this are slow (0: no performance moves)
  uint32_t slow_for_ms = 5000;        ///< slow this long (every probe): a performance failover
  /// Optional: a metric the application reports (baton_report) that
  /// judges slowness instead of the probe's response time: slow while
  /// every report is above `slow_above`, for slow_for_ms.
  std::string metric;
  double slow_above = 0;
  enum class On : uint8_t { kFailure, kPerformance, kEither };
  On failover_on = On::kEither;
  int32_t priority = 0;               ///< a node running lower-priority work may be taken for this
  uint32_t min_cores = 0;
  uint64_t min_memory_mib = 0;
  std::vector<std::string> tags;      ///< a node must carry every one
  std::vector<uint16_t> home;         ///< where it starts first, in order (default: any eligible node)
  /// Hot standbys (S16): nodes that keep the group's segments ready in
  /// memory; a failover goes to an idle eligible one first (its load takes
  /// that memory over: no fetch).
  std::vector<uint16_t> standby;
  /// Standby instances (S16's standby instance, like a Pacemaker
  /// promotable clone's unpromoted copies): on each `standby` node that
  /// does not run the group, the application runs in advance (provision
  /// hook, then `start` with BATON_ROLE=standby and BATON_PROMOTE_FD) and
  /// waits in baton_await_promotion(). A failover to that node loads the
  /// segments there and promotes it: no process starts. Standby instances
  /// take no capacity (make_room counts only what works).
  bool standby_instances = false;
  uint32_t start_timeout_ms = 15000;  ///< from assignment to running, else the next node
};

/// Whether `g` has its node to itself: it declares no minimums to pack by.
inline bool runs_alone(const ServiceGroup& g) { return g.min_cores == 0 && g.min_memory_mib == 0; }

/// Whether `g` moves on failures / on slowness.
inline bool on_failure(const ServiceGroup& g) { return g.failover_on != ServiceGroup::On::kPerformance; }
inline bool on_performance(const ServiceGroup& g) {
  return g.failover_on != ServiceGroup::On::kFailure && (g.slow_ms > 0 || !g.metric.empty());
}

/// A node's capabilities, from its [node] table.
struct NodeCaps {
  uint32_t cores = 0;
  uint64_t memory_mib = 0;
  std::vector<std::string> tags;
  bool spare = false;  ///< in the spare pool: runs groups when they fail over to it
};

enum class RunState : uint8_t {
  kStarting,  ///< assigned: provisioning, loading, starting
  kRunning,
  kSlow,      ///< running, but its probe has been slow for the whole window
  kFailed,    ///< the application, its probe, the hook or the load failed; `why` says
  kStopped,   ///< stopped here (moved elsewhere, or taken for higher-priority work)
};
const char* run_state_name(RunState s) noexcept;
/// Whether a group in state `s` occupies its node (it is starting, running or slow).
inline bool works(RunState s) noexcept {
  return s == RunState::kStarting || s == RunState::kRunning || s == RunState::kSlow;
}

/// What a node says of one group it was assigned.
struct GroupRun {
  std::string group;
  uint64_t seq = 0;  ///< the assignment it runs under
  RunState state = RunState::kStarting;
  std::string why;   ///< kFailed / kStopped: the reason
};

/// A node's report, sent to every peer a few times a second.
struct NodeReport {
  uint16_t node = 0;
  uint64_t groups_hash = 0;  ///< of its group configuration: nodes must agree
  NodeCaps caps;
  std::vector<GroupRun> runs;
  /// A coordinator that starts or resumes asks every node for its report
  /// (`ask`: a number of its own) and decides on the answers (`answer`:
  /// the number answered), not on reports that may have waited in a link
  /// meanwhile. 0: neither.
  uint64_t ask = 0;
  uint64_t answer = 0;
};

/// The coordinator's decision: `group` runs on `node` from assignment `seq`
/// on (every later seq supersedes it).
struct Assignment {
  std::string group;
  uint16_t node = 0;
  uint64_t seq = 0;
  uint16_t coordinator = 0;
  /// Why: the decision as the coordinator's event says it (the reason, the
  /// nodes passed over and why), cut to fit a note; empty in a repeat.
  std::string reason;
};

/// Capacity (S18, like Pacemaker's utilization or VCS's Limits): a node
/// runs any set of groups whose summed minimums (cores, memory) its
/// capabilities cover. A group that declares neither minimum has its node
/// to itself (nothing runs beside it). To take `g` beside `running` (the
/// groups that work there now, `g` not among them), a node stops what it
/// must: every group that has to run alone, then the rest lowest priority
/// first (then by name) until `g` fits. Those are returned, in that order;
/// none when `g` fits beside them all. nullopt: `g` does not fit on this
/// node even alone. The coordinator (choosing) and the runner (making
/// room) both go by it, so they agree on what an assignment stops.
std::optional<std::vector<const ServiceGroup*>> make_room(const NodeCaps& caps, const ServiceGroup& g,
                                                          std::vector<const ServiceGroup*> running);

/// A hash of the group configuration, the same on every node that has the
/// same groups (FNV-1a over a canonical text).
uint64_t groups_hash(const std::vector<ServiceGroup>& groups);

}  // namespace baton::failover
