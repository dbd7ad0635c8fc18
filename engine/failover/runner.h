#pragma once
// This node's share of the service groups (S17, S20; issue #12): starts
// what the coordinator assigns here, watches it, stops what moved away.
//
// Starting a group is three steps: the provision hook (a child process),
// the load of each segment (the request `batonctl load` makes, run from a
// thread inside this node's batond, or sent to its socket where the runner
// has no LocalLoads: the new owner epoch fences the old owner
// wherever it still runs; the newest durable generation comes from a
// replica or this node's ready copy), and the application, in a session of
// its own. Inside batond the application starts as soon as the node is
// provisioned, beside its loads: batond holds the group's names meanwhile
// (ipc::Server::hold), so its opens wait for the loads, retries included,
// and the loads are made in its name, so its opens take what they left
// with no round of their own. Over the socket it starts once they ended.
// A group with standby instances (ServiceGroup::standby_instances) has its
// application running ahead of time on each of its standby nodes
// that does not run it: provisioned, started with BATON_ROLE=standby, and
// waiting in baton_await_promotion() on a pipe (BATON_PROMOTE_FD). When the
// group comes to such a node, the loads run and the waiting instance is
// promoted (one byte down its pipe) instead of a process started. A
// standby instance that ends is started again, after 1 s doubling to 32 s
// while it keeps ending; where the group itself stopped, 1 s after (its
// failover elsewhere is under way). Watching the application:
// the application's exit, and its probe every probe_interval_ms, whose
// response time is measured; two failed or timed-out probes in a row are a
// failure, and responses slower than slow_ms for slow_for_ms make it slow
// (a performance failover, if the group asks for one). A node runs one
// group at a time: an assignment here stops any other group first.
//
// Children are spawned with posix_spawn (batond has many threads) and
// never waited on: step() reaps them. Commands get BATON_SOCKET,
// BATON_NODE, BATON_GROUP, BATON_SEGMENTS, BATON_ASSIGNMENT (0 for a
// standby instance) and BATON_ROLE (active or standby).
//
// Thread: the failover manager's.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "baton/result.h"

#include "failover/liveness_watch.h"
#include "failover/service_group.h"

namespace baton::failover {

/// Loads done inside batond (ipc::Server::load_here) instead of over its
/// socket: no connection, and no session thread to wake and be woken by,
/// a thread hand-off each way on a busy machine. Until a function is set,
/// and once it is taken away, the runner's loads go over the socket.
/// Thread: any; set() waits for the loads under way (so that the server
/// can go once set(nullptr) returned).
class LocalLoads {
 public:
  /// A load of `name` in the name of process `instance` (0: a take-over),
  /// which only it and its descendants may take if `exclusive`.
  using Fn = std::function<Result<void>(const std::string& name, pid_t instance, bool exclusive)>;
  /// Holds a name (`on`) for at most `for_ns`, or lets go of one hold
  /// (ipc::Server::hold).
  using Hold = std::function<void(const std::string& name, bool on, uint64_t for_ns)>;
  /// `load` does a load; `after` what the server does once a load's result
  /// has been acted on (the next open's channel, made ahead).
  void set(Fn load, std::function<void()> after, Hold hold) {
    std::unique_lock lock(mu_);
    load_ = std::move(load);
    after_ = std::move(after);
    hold_ = std::move(hold);
  }
  /// The load's result, or nullopt when no function is set.
  std::optional<Result<void>> run(const std::string& name, pid_t instance, bool exclusive) {
    std::shared_lock lock(mu_);
    if (!load_) return std::nullopt;
    return load_(name, instance, exclusive);
  }
  void after() {
    std::shared_lock lock(mu_);
    if (after_) after_();
  }
  /// Holds `name` (`on`) for at most `for_ns`, or lets go of a hold;
  /// false when no function is set (no server: a hold made before it went
  /// went with it).
  bool hold(const std::string& name, bool on, uint64_t for_ns = 0) {
    std::shared_lock lock(mu_);
    if (!hold_) return false;
    hold_(name, on, for_ns);
    return true;
  }

 private:
  std::shared_mutex mu_;
  Fn load_;                     ///< mu_
  std::function<void()> after_;  ///< mu_
  Hold hold_;                    ///< mu_
};

class Runner {
 public:
  struct Env {
    uint16_t node = 0;
    std::string socket;    ///< batond's, for the application and the loads
    NodeCaps caps;         ///< this node's, for what may run beside what (make_room)
    /// The loads in batond's own process, where set (else over `socket`).
    std::shared_ptr<LocalLoads> local;
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
  /// An eventfd that turns readable when a load finishes: the manager
  /// polls it and drains it (one 8-byte read) before step().
  int wake_fd() const noexcept;
  /// This node's standby instances, by group: "ready (pid N)",
  /// "provisioning for K ms" (its hook is killed past the group's start
  /// timeout), or "down: why; again in K ms".
  std::map<std::string, std::string> standbys(uint64_t now) const;
  /// The application's pid of a group running here, or -1.
  pid_t pid_of(const std::string& group) const;

 private:
  enum class Phase : uint8_t { kProvision, kLoad, kApp, kStopping, kDone };
  struct Load;  ///< a segment load in flight, shared with its thread
  struct Wake;  ///< the eventfd loads signal, shared with their threads
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
    pid_t step = -1;        ///< the hook in flight
    std::shared_ptr<Load> load;  ///< the load in flight
    pid_t app = -1;
    int app_fd = -1;  ///< pidfd of `app`
    std::shared_ptr<LivenessWatch> live;  ///< `app`'s liveness lock, watched (none: the pidfd alone)
    bool started = false;   ///< running: `app` spawned and its segments loaded, or the standby instance promoted
    uint64_t spawned_ns = 0;  ///< when `app` was started with its loads (0: a standby instance, or not yet)
    std::vector<std::string> held;  ///< names held in batond (LocalLoads::hold) while `app`'s loads run
    int promote_fd = -1;    ///< a standby instance taken over: its pipe, written once the loads are done
    bool promoted = false;  ///< the last load wrote it already (Load::promote_fd)
    uint64_t load_done_ns = 0;  ///< when batond answered the last load (manager's clock)
    pid_t probe = -1;
    uint64_t probe_ns = 0;  ///< when the probe in flight started
    uint64_t next_probe_ns = 0;
    int probe_failures = 0;
    uint64_t slow_since_ns = 0;  ///< first of the current run of slow responses (0: none)
    uint64_t kill_ns = 0;        ///< stopping: when SIGKILL follows
  };
  /// A standby instance: its hook, then the application waiting to be promoted.
  struct Standby {
    pid_t hook = -1;
    pid_t app = -1;
    int promote_fd = -1;      ///< write end of the pipe `app` waits on
    std::shared_ptr<LivenessWatch> live;  ///< `app`'s liveness lock, watched once it is promoted
    uint64_t since_ns = 0;    ///< when the hook or `app` started
    uint32_t failures = 0;    ///< ended in a row: the wait before the next start doubles
    uint64_t retry_ns = 0;    ///< not started again before then
    std::string why;          ///< the last end
  };
  void advance(Local& l, uint64_t now);
  void start_load(Local& l);
  /// Starts, watches and restarts the standby instances this node keeps.
  void keep_standbys(uint64_t now);
  void standby_ended(const ServiceGroup& g, Standby& s, std::string why, uint64_t now);
  /// Ends a standby instance at once (SIGKILL): its group starts here anew.
  static void drop(Standby& s);
  void watch(Local& l, uint64_t now);
  /// Holds the group's names in batond and starts its application, whose
  /// loads then run in its name. False where batond cannot hold them (its
  /// loads go over the socket): the application starts after its loads.
  bool start_with_loads(Local& l, uint64_t now);
  /// Starts the group's application (its start command, watched by its
  /// liveness lock and pidfd). False, the run failed, if it could not be.
  bool start_app(Local& l, uint64_t now);
  /// Lets go of the names `l` holds in batond.
  void let_go(Local& l);
  /// Whether the run's application ended; if so, the run failed (`doing`
  /// says what it was in the middle of).
  bool app_ended(Local& l, uint64_t now, const char* doing);
  /// One observation for the slow window: `slow` or not, and what it was.
  void observe(Local& l, bool slow, const std::string& what, uint64_t now);
  void fail(Local& l, std::string why, uint64_t now);
  void stop(Local& l, RunState state, std::string why, uint64_t now);
  static void close_fd(Local& l);
  /// Starts a command of group `g` (assignment `seq`; 0: a standby
  /// instance, which gets `pass_fd` as its descriptor 3). With `live`, the
  /// application itself: it gets the liveness page as its descriptor 4
  /// (BATON_LIVENESS_FD), and the watch starts on its pid.
  pid_t spawn(const ServiceGroup& g, uint64_t seq, const std::vector<std::string>& argv, int pass_fd = -1,
              LivenessWatch* live = nullptr);
  /// A liveness page for an application about to start (none if it cannot
  /// be made: logged, and the pidfd alone watches it).
  static std::shared_ptr<LivenessWatch> liveness();
  /// Exit status of `pid` if it ended (and reaps it), else -2.
  static int reap(pid_t pid);

  Env env_;
  std::vector<ServiceGroup> groups_;
  Events events_;
  std::map<std::string, Local> locals_;    ///< by group
  std::map<std::string, uint64_t> latest_; ///< newest assignment heard, by group
  std::map<std::string, Standby> standbys_; ///< this node's standby instances, by group
  std::shared_ptr<Wake> wake_;
  struct Connections;  ///< to batond, for the loads, shared with their threads
  std::shared_ptr<Connections> connections_;
};

/// "exited with status 3" / "killed by signal 9", from a waitpid status.
std::string exit_text(int status);

/// Starts `argv` (argv[0] a path) with batond's environment, its BATON_*
/// variables replaced by `baton_env` ("BATON_X=..."), no signal blocked and
/// SIGTERM, SIGINT, SIGPIPE, SIGHUP at their defaults (batond blocks the
/// first two in every thread and ignores SIGPIPE); with `own_session`, in a
/// session and process group of its own; `pass_fd` (>= 0) becomes the
/// child's descriptor 3, `live_fd` its descriptor 4, and no other
/// descriptor above 2 is inherited. posix_spawn: batond has many threads.
/// Returns the pid, or -1 (logged).
pid_t spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& baton_env, bool own_session,
                  int pass_fd = -1, int live_fd = -1);

}  // namespace baton::failover
