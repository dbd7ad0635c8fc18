#pragma once
// This node's share of the service groups (S17, S20; issue #12): starts
// what the coordinator assigns here, watches it, stops what moved away.
//
// Starting a group is three steps, each a child process: the provision
// hook, `batonctl load` of each segment (the new owner epoch fences the old
// owner wherever it still runs; the newest durable generation comes from a
// replica), then the application, in a session of its own. Watching it:
// the application's exit, and its probe every probe_interval_ms, whose
// response time is measured; two failed or timed-out probes in a row are a
// failure, and responses slower than slow_ms for slow_for_ms make it slow
// (a performance failover, if the group asks for one). A node runs one
// group at a time: an assignment here stops any other group first.
//
// Children are spawned with posix_spawn (batond has many threads) and
// never waited on: step() reaps them. Commands get BATON_SOCKET,
// BATON_NODE, BATON_GROUP, BATON_SEGMENTS and BATON_ASSIGNMENT.
//
// Thread: the failover manager's.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "failover/service_group.h"

namespace baton::failover {

class Runner {
 public:
  struct Env {
    uint16_t node = 0;
    std::string socket;    ///< batond's, for the application and batonctl
    std::string batonctl;  ///< the batonctl binary that loads segments
    NodeCaps caps;         ///< this node's, for what may run beside what (make_room)
  };
  using Events = std::function<void(std::string)>;

  Runner(Env env, std::vector<ServiceGroup> groups, Events events);
  /// Stops every group it runs (SIGTERM, then SIGKILL).
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  /// An assignment heard from a coordinator: start the group here, or stop
  /// it here if it moved on. Older or repeated ones change nothing.
  void assigned(const Assignment& a, uint64_t now);
  /// A metric process `pid` reported (baton_report): it counts for the
  /// group whose application is that process or leads its process group,
  /// if the group judges slowness by that metric.
  void metric(pid_t pid, const std::string& name, double value, uint64_t now);
  /// Reaps children, advances starts, probes, stops. `now`: CLOCK_MONOTONIC ns.
  void step(uint64_t now);
  /// What this node says of each group it was assigned.
  std::vector<GroupRun> runs() const;
  /// Whether a start is under way (hook, load): the manager looks again soon.
  bool busy() const noexcept;
  /// pidfds of the applications running here: readable when one ends, so
  /// the manager notices at once rather than on its next tick.
  std::vector<int> watch_fds() const;
  /// The application's pid of a group running here, or -1.
  pid_t pid_of(const std::string& group) const;

 private:
  enum class Phase : uint8_t { kProvision, kLoad, kApp, kStopping, kDone };
  struct Local {
    const ServiceGroup* g = nullptr;
    uint64_t seq = 0;
    RunState state = RunState::kStarting;
    std::string why;
    Phase phase = Phase::kProvision;
    uint64_t phase_ns = 0;  ///< when the phase began
    uint64_t heard_ns = 0;       ///< when the assignment came
    uint64_t provisioned_ns = 0; ///< when the hook finished
    uint64_t loaded_ns = 0;      ///< when the last segment was loaded
    size_t loaded = 0;      ///< segments loaded so far
    int load_failures = 0;  ///< of the segment in hand: a transient one (no quorum yet) is tried again
    uint64_t retry_ns = 0;  ///< not before then
    pid_t step = -1;        ///< the hook or a load in flight
    pid_t app = -1;
    int app_fd = -1;  ///< pidfd of `app`
    pid_t probe = -1;
    uint64_t probe_ns = 0;  ///< when the probe in flight started
    uint64_t next_probe_ns = 0;
    int probe_failures = 0;
    uint64_t slow_since_ns = 0;  ///< first of the current run of slow responses (0: none)
    uint64_t kill_ns = 0;        ///< stopping: when SIGKILL follows
  };
  void advance(Local& l, uint64_t now);
  void watch(Local& l, uint64_t now);
  /// One observation for the slow window: `slow` or not, and what it was.
  void observe(Local& l, bool slow, const std::string& what, uint64_t now);
  void fail(Local& l, std::string why, uint64_t now);
  void stop(Local& l, RunState state, std::string why, uint64_t now);
  static void close_fd(Local& l);
  pid_t spawn(const Local& l, const std::vector<std::string>& argv, bool own_session);
  /// Exit status of `pid` if it ended (and reaps it), else -2.
  static int reap(pid_t pid);

  Env env_;
  std::vector<ServiceGroup> groups_;
  Events events_;
  std::map<std::string, Local> locals_;    ///< by group
  std::map<std::string, uint64_t> latest_; ///< newest assignment heard, by group
};

/// "exited with status 3" / "killed by signal 9", from a waitpid status.
std::string exit_text(int status);

/// Starts `argv` (argv[0] a path) with batond's environment, its BATON_*
/// variables replaced by `baton_env` ("BATON_X=..."), no signal blocked and
/// SIGTERM, SIGINT, SIGPIPE, SIGHUP at their defaults (batond blocks the
/// first two in every thread and ignores SIGPIPE); with `own_session`, in a
/// session and process group of its own. posix_spawn: batond has many
/// threads. Returns the pid, or -1 (logged).
pid_t spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& baton_env, bool own_session);

}  // namespace baton::failover
