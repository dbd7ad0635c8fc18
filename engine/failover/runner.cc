// This node's share of the service groups (failover/runner.h).
//
// Thread: the failover manager's.

#include "failover/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "common/log.h"
#include "ipc/client.h"
#include "ipc/liveness.h"
#include "runtime/futex.h"

extern char** environ;

namespace baton::failover {

namespace {

constexpr int kRunning = -2;               // reap(): not ended yet
constexpr uint64_t kStopGraceNs = 5'000'000'000;  // SIGTERM, then SIGKILL after this
constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kStandbyRetryNs = 1000 * kMs;  // a standby instance that ended: again after this,
constexpr uint32_t kStandbyRetryDoublings = 5;    // doubling while it keeps ending (at most 32 s)
constexpr uint64_t kStandbyHealthyNs = 60'000 * kMs;  // one that lived this long starts the count anew

/// Whether a load's outcome counts as loaded: done, or nothing to load (no
/// copy anywhere: the application starts fresh) or already here, as
/// `batonctl load`'s exit 3 and 4 do.
bool loaded(const std::optional<Error>& error) {
  return !error || error->code == Errc::kNotFound || error->code == Errc::kExists;
}

/// Whether a child reap() returned for exited with status 0.
bool succeeded(int status) { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

/// How a child reap() returned for ended: exit_text, or "vanished" (-1: not
/// ours any more).
std::string ended(int status) { return status < 0 ? "vanished" : exit_text(status); }

/// Signals the process group `pid` leads (it was spawned in a session of
/// its own), or the process alone if that fails.
void signal(pid_t pid, int sig) {
  if (kill(-pid, sig) != 0) kill(pid, sig);
}

}  // namespace

/// A segment load in flight. Its thread sets `error` (if it failed), then
/// `done`, then signals the runner's eventfd; it may outlive the run it
/// served (a load past the start timeout is abandoned, not interrupted:
/// batond bounds its rounds), hence shared.
struct Runner::Load {
  std::atomic<bool> done{false};
  uint64_t done_ns = 0;  ///< CLOCK_MONOTONIC when batond answered (before `done`), as the manager's clock
  std::optional<Error> error;
  /// The last load for a standby instance promotes it itself, the moment
  /// the segment is loaded in its name (no wait for the manager's thread
  /// to wake): a dup of its pipe, closed by whichever of the two comes
  /// first, the load or the manager abandoning it. Under `mu`.
  std::mutex mu;
  int promote_fd = -1;
  bool promoted = false;
  void abandon() {
    std::lock_guard lock(mu);
    if (promote_fd >= 0) ::close(promote_fd);
    promote_fd = -1;
  }
};

/// Connections to batond that loads are done over, kept between loads: a
/// new connection made batond accept it and start a session thread for
/// each load (0.2-1 ms of a failover on two busy vCPUs). One load uses one
/// at a time; a connection whose load failed is not kept.
struct Runner::Connections {
  std::mutex mu;
  std::vector<std::unique_ptr<ipc::Client>> idle;  ///< mu
  std::string socket;
  Result<std::unique_ptr<ipc::Client>> take() {
    {
      std::lock_guard lock(mu);
      if (!idle.empty()) {
        auto c = std::move(idle.back());
        idle.pop_back();
        return c;
      }
    }
    return ipc::Client::connect(socket);
  }
  void give_back(std::unique_ptr<ipc::Client> c) {
    std::lock_guard lock(mu);
    if (idle.size() < 4) idle.push_back(std::move(c));
  }
};

struct Runner::Wake {
  int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ~Wake() {
    if (fd >= 0) ::close(fd);
  }
};

std::string exit_text(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "ended (status " + std::to_string(status) + ")";
}

Runner::Runner(Env env, std::vector<ServiceGroup> groups, Events events)
    : env_(std::move(env)),
      groups_(std::move(groups)),
      events_(std::move(events)),
      wake_(std::make_shared<Wake>()),
      connections_(std::make_shared<Connections>()) {
  connections_->socket = env_.socket;
  if (wake_->fd < 0) BT_WARN("failover: no eventfd (%s): loads are noticed on the next tick", strerror(errno));
}

Runner::~Runner() {
  // Every process it started: SIGTERM (a waiting standby instance also sees
  // its pipe close), a short grace, then SIGKILL for whatever is left.
  std::vector<pid_t> left;
  for (auto& [name, l] : locals_) {
    for (pid_t p : {l.app, l.step, l.probe})
      if (p > 0) left.push_back(p);
    close_fd(l);
    if (l.load) l.load->abandon();
    if (l.promote_fd >= 0) ::close(l.promote_fd);
  }
  for (auto& [name, s] : standbys_) {
    for (pid_t p : {s.hook, s.app})
      if (p > 0) left.push_back(p);
    if (s.promote_fd >= 0) ::close(s.promote_fd);
    if (s.live) s.live->stop();
  }
  for (pid_t p : left) signal(p, SIGTERM);
  for (int i = 0; i < 50 && !left.empty(); ++i) {
    std::erase_if(left, [](pid_t p) { return reap(p) != kRunning; });
    if (!left.empty()) usleep(20'000);
  }
  for (pid_t p : left) {
    signal(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
  for (auto& [name, l] : locals_) let_go(l);  // once the applications are gone
}

int Runner::reap(pid_t pid) {
  int status = 0;
  const pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == 0) return kRunning;
  if (r < 0) return -1;  // not ours any more (reaped elsewhere): ended
  return status;
}

pid_t spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& baton_env, bool own_session,
                  int pass_fd, int live_fd) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view v(*e);
    if (v.rfind("BATON_", 0) == 0) continue;  // ours are set below
    env_strings.emplace_back(v);
  }
  env_strings.insert(env_strings.end(), baton_env.begin(), baton_env.end());
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> a = argv;
  for (auto& s : a) args.push_back(s.data());
  args.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGTERM, SIGINT, SIGPIPE, SIGHUP}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      (own_session ? POSIX_SPAWN_SETSID : 0));
  // The descriptors to pass become 3 and 4 in the child (dup2 clears their
  // close-on-exec there), and every other one above 2 is closed: DPDK opens
  // its sockets, memfds and eventfds without O_CLOEXEC, and an application
  // that inherited them could read the memif regions and DPDK's memory, or
  // hold a memif listening socket so that a restarted batond cannot bind it.
  // (Copied above 4 first, so that neither dup2 overwrites the other's source.)
  const int pass = pass_fd >= 0 ? ::fcntl(pass_fd, F_DUPFD_CLOEXEC, 5) : -1;
  const int live = live_fd >= 0 ? ::fcntl(live_fd, F_DUPFD_CLOEXEC, 5) : -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (pass >= 0) posix_spawn_file_actions_adddup2(&fa, pass, 3);
  else posix_spawn_file_actions_addclose(&fa, 3);
  if (live >= 0) posix_spawn_file_actions_adddup2(&fa, live, 4);
  else posix_spawn_file_actions_addclose(&fa, 4);
  posix_spawn_file_actions_addclosefrom_np(&fa, 5);
  pid_t pid = -1;
  const int rc = (pass_fd >= 0 && pass < 0) || (live_fd >= 0 && live < 0)
                     ? errno
                     : posix_spawn(&pid, args[0], &fa, &attr, args.data(), envp.data());
  if (pass >= 0) ::close(pass);
  if (live >= 0) ::close(live);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    BT_ERROR("failover: cannot start %s: %s", argv[0].c_str(), strerror(rc));
    return -1;
  }
  return pid;
}

pid_t Runner::spawn(const ServiceGroup& g, uint64_t seq, const std::vector<std::string>& argv, int pass_fd,
                    LivenessWatch* live) {
  std::string segments;
  for (const auto& s : g.segments) segments += (segments.empty() ? "" : " ") + s;
  std::vector<std::string> env{"BATON_SOCKET=" + env_.socket, "BATON_NODE=" + std::to_string(env_.node),
                               "BATON_GROUP=" + g.name, "BATON_SEGMENTS=" + segments,
                               "BATON_ASSIGNMENT=" + std::to_string(seq),
                               std::string("BATON_ROLE=") + (seq == 0 ? "standby" : "active")};
  if (pass_fd >= 0) env.push_back("BATON_PROMOTE_FD=3");
  if (live != nullptr) env.push_back(std::string(ipc::kLivenessEnv) + "=4");
  const pid_t pid = spawn_child(argv, env, true, pass_fd, live != nullptr ? live->fd() : -1);
  if (pid > 0 && live != nullptr) live->start(pid, wake_->fd);
  return pid;
}

std::shared_ptr<LivenessWatch> Runner::liveness() {
  // BATON_LIVENESS=0 in batond's environment: pidfds alone (an application
  // that execs itself after connecting would be taken for dead).
  if (const char* v = std::getenv("BATON_LIVENESS"); v != nullptr && std::string_view(v) == "0") return nullptr;
  auto w = LivenessWatch::create();
  if (!w) {
    BT_WARN("failover: %s: the application's pidfd alone says when it ends", w.error().message.c_str());
    return nullptr;
  }
  return std::move(*w);
}

void Runner::assigned(const Assignment& a, uint64_t now) {
  auto g = std::find_if(groups_.begin(), groups_.end(), [&](const ServiceGroup& x) { return x.name == a.group; });
  if (g == groups_.end()) return;
  uint64_t& latest = latest_[a.group];
  if (a.seq <= latest) return;  // heard already, or superseded
  latest = a.seq;
  auto it = locals_.find(a.group);
  if (a.node != env_.node) {
    // It moved on: stop it here (its owner epoch is fenced there anyway).
    if (it != locals_.end() && works(it->second.state))
      stop(it->second, RunState::kStopped,
           "moved to node " + std::to_string(a.node) + " (assignment " + std::to_string(a.seq) + ")", now);
    return;
  }
  // Working here already: a coordinator that decided from reports older
  // than this run (a stall, or a restart that read queued notes) chose the
  // node it runs on. It goes on under the new number; starting it again
  // would only stop a healthy instance. (A restart where it failed names a
  // failed run, not a working one: Coordinator::restart_here.)
  if (it != locals_.end() && works(it->second.state)) {
    Local& l = it->second;
    events_("group " + a.group + ": assignment " + std::to_string(a.seq) + " from node " +
            std::to_string(a.coordinator) + " names this node, where it " +
            (l.state == RunState::kStarting ? "is starting" : "runs") + " already (assignment " +
            std::to_string(l.seq) + (l.app > 0 ? ", pid " + std::to_string(l.app) : std::string()) +
            "): it goes on under the new number" + (a.reason.empty() ? "" : "; the decision: " + a.reason));
    l.seq = a.seq;
    return;
  }
  // What must make room for it (make_room: the coordinator chose by the
  // same rule, so this is what it meant to stop).
  std::vector<const ServiceGroup*> running;
  for (auto& [name, l] : locals_)
    if (name != a.group && works(l.state)) running.push_back(l.g);
  const auto room = make_room(env_.caps, *g, running);
  for (auto& [name, l] : locals_)
    if (name != a.group && works(l.state) &&
        (!room || std::find(room->begin(), room->end(), l.g) != room->end()))
      stop(l, RunState::kStopped, "node " + std::to_string(env_.node) + " taken for group " + a.group, now);
  if (it != locals_.end()) {  // an earlier instance here is superseded: gone at once
    for (pid_t p : {it->second.app, it->second.step, it->second.probe})
      if (p > 0) {
        signal(p, SIGKILL);
        waitpid(p, nullptr, 0);
      }
    close_fd(it->second);
    let_go(it->second);
    if (it->second.load) it->second.load->abandon();
    if (it->second.promote_fd >= 0) ::close(it->second.promote_fd);
  }
  Local& l = locals_[a.group];
  l = Local{};
  l.g = &*g;
  l.seq = a.seq;
  l.phase = Phase::kProvision;
  l.phase_ns = now;
  l.heard_ns = now;
  // A standby instance waiting here takes the group: it was provisioned
  // when it started; the loads run, then it is promoted. One still being
  // provisioned, or gone, makes way for an ordinary start.
  std::string standby;
  if (auto s = standbys_.find(a.group); s != standbys_.end()) {
    if (s->second.app > 0 && reap(s->second.app) == kRunning) {
      l.app = s->second.app;
      l.app_fd = static_cast<int>(syscall(SYS_pidfd_open, l.app, 0));
      l.promote_fd = s->second.promote_fd;
      l.live = std::move(s->second.live);
      l.phase = Phase::kLoad;
      l.provisioned_ns = now;
      standby = "; its standby instance (pid " + std::to_string(l.app) + ") takes it";
    } else {
      if (s->second.app > 0) s->second.app = -1;  // reaped above
      drop(s->second);
    }
    standbys_.erase(s);
  }
  // The coordinator's reasons, so this node's events say why it was chosen.
  events_("group " + a.group + ": starting here (assignment " + std::to_string(a.seq) + " from node " +
          std::to_string(a.coordinator) + ")" + standby + (a.reason.empty() ? "" : "; the decision: " + a.reason));
  advance(l, now);
}

void Runner::fail(Local& l, std::string why, uint64_t now) {
  events_("group " + l.g->name + " failed here: " + why);
  stop(l, RunState::kFailed, std::move(why), now);
}

void Runner::stop(Local& l, RunState state, std::string why, uint64_t now) {
  if (state == RunState::kStopped) events_("group " + l.g->name + " stops here: " + why);
  l.state = state;
  l.why = std::move(why);
  l.phase = Phase::kStopping;
  l.phase_ns = now;
  l.kill_ns = now + kStopGraceNs;
  if (l.load) l.load->abandon();
  l.load.reset();  // abandoned: its thread ends when batond answers
  // The names stay held until the application is gone (step(), kDone):
  // in its grace, an open it was waiting in must not go on, on a node
  // the group is leaving.
  if (l.app <= 0) let_go(l);
  if (l.promote_fd >= 0) ::close(l.promote_fd);  // a standby instance not yet promoted: retired
  l.promote_fd = -1;
  for (pid_t p : {l.app, l.step, l.probe})
    if (p > 0) signal(p, SIGTERM);
}

void Runner::advance(Local& l, uint64_t now) {
  const uint64_t timeout = uint64_t{l.g->start_timeout_ms} * kMs;
  if (l.phase == Phase::kProvision && l.step > 0) {
    const int st = reap(l.step);
    if (st == kRunning) {
      if (now - l.phase_ns > timeout) {
        signal(l.step, SIGKILL);
        waitpid(l.step, nullptr, 0);
        l.step = -1;
        fail(l, "the provision hook took longer than " + std::to_string(l.g->start_timeout_ms) + " ms", now);
      }
      return;
    }
    l.step = -1;
    if (!succeeded(st)) {
      fail(l, "the provision hook " + ended(st), now);
      return;
    }
    l.phase = Phase::kLoad;
  }
  // The application started with its loads (below) may end meanwhile (it
  // crashed, or an open of a name not held failed): the run fails now, not
  // at the start timeout.
  if (l.phase == Phase::kLoad && l.spawned_ns != 0 && app_ended(l, now, " while its segments were loaded")) return;
  if (l.phase == Phase::kLoad && l.load) {
    if (!l.load->done.load(std::memory_order_acquire)) {
      if (now - l.phase_ns > timeout) {
        l.load->abandon();
        l.load.reset();  // abandoned: its thread ends when batond answers
        fail(l, "a segment load took longer than " + std::to_string(l.g->start_timeout_ms) + " ms", now);
      }
      return;
    }
    const std::optional<Error> error = l.load->error;
    l.promoted |= l.load->promoted;
    l.load_done_ns = l.load->done_ns;
    l.load.reset();
    if (!loaded(error)) {
      // Twice more, 100 ms apart, within the start timeout: a view still
      // settling or a round without enough answers passes.
      if (++l.load_failures < 3 && now - l.phase_ns + 100 * kMs < timeout) {
        l.retry_ns = now + 100 * kMs;
        return;
      }
      fail(l, "loading segment " + l.g->segments[l.loaded] + ": " + error->message +
                  (l.load_failures > 1 ? " (" + std::to_string(l.load_failures) + " tries)" : ""),
           now);
      return;
    }
    ++l.loaded;
    l.load_failures = 0;
  }
  if (l.phase == Phase::kProvision) {
    if (!l.g->provision.empty()) {
      l.step = spawn(*l.g, l.seq, {"/bin/sh", "-c", l.g->provision});
      if (l.step < 0) fail(l, "cannot run the provision hook", now);
      return;
    }
    l.phase = Phase::kLoad;
  }
  if (l.provisioned_ns == 0) l.provisioned_ns = now;
  // Provisioned, and no standby instance waits: the application starts
  // now, beside its loads (its start, a shell and the program, took 15-20
  // ms on these two vCPUs after a load of 11-24 ms).
  if (l.phase == Phase::kLoad && l.app <= 0 && !l.g->segments.empty() && l.loaded == 0 && !l.load &&
      l.load_failures == 0) {
    start_with_loads(l, now);  // false where batond cannot hold the names: it starts after them
    if (l.phase != Phase::kLoad) return;  // it could not be started: the run failed
  }
  if (l.phase == Phase::kLoad) {
    if (now < l.retry_ns) return;
    if (l.loaded < l.g->segments.size()) {
      start_load(l);
      if (!l.load) fail(l, "cannot start a thread to load segment " + l.g->segments[l.loaded], now);
      return;
    }
    l.phase = Phase::kApp;
    let_go(l);  // the loads ended: the application's opens take what they left
    // When batond answered the last load, not when this thread woke to
    // see it (the instance may be promoted already: Load::promote_fd).
    l.loaded_ns = l.load_done_ns != 0 && l.load_done_ns <= now && l.load_done_ns >= l.provisioned_ns ? l.load_done_ns
                                                                                                       : now;
  }
  if (l.phase == Phase::kApp && !l.started) {
    std::string how;
    if (l.promote_fd >= 0) {
      // The standby instance waiting here takes over: one byte down its
      // pipe (unless the last load wrote it already).
      const char promote = 'P';
      const bool told = l.promoted || ::write(l.promote_fd, &promote, 1) == 1;
      ::close(l.promote_fd);
      l.promote_fd = -1;
      if (!told) {
        fail(l, std::string("cannot promote the standby instance: ") + strerror(errno), now);
        return;
      }
      how = "the standby instance promoted";
    } else if (l.spawned_ns != 0) {
      how = "started with its loads, in its name; running";
    } else {
      if (!start_app(l, now)) return;
      how = "started";
    }
    l.started = true;
    l.state = RunState::kRunning;
    l.phase_ns = now;
    l.next_probe_ns = now + uint64_t{l.g->probe_interval_ms} * kMs;
    auto ms = [](uint64_t from, uint64_t to) { return std::to_string((to - from) / 1000) + " us"; };
    events_("group " + l.g->name + " runs here (pid " + std::to_string(l.app) + ", assignment " +
            std::to_string(l.seq) + "): provisioned in " + ms(l.heard_ns, l.provisioned_ns) + ", segments loaded in " +
            ms(l.provisioned_ns, l.loaded_ns) + ", " + how + " " + ms(l.heard_ns, now) + " after the assignment came");
  }
}

bool Runner::start_with_loads(Local& l, uint64_t now) {
  if (!env_.local) return false;
  // For as long as the loads may run (they are abandoned at the start
  // timeout, and the names let go of), and a second more.
  const uint64_t for_ns = (uint64_t{l.g->start_timeout_ms} + 1000) * kMs;
  for (const auto& name : l.g->segments) {
    if (!env_.local->hold(name, true, for_ns)) {
      let_go(l);  // no server (batond stopping): the application starts after its loads
      return false;
    }
    l.held.push_back(name);
  }
  if (!start_app(l, now)) return false;
  l.spawned_ns = now;
  return true;
}

bool Runner::start_app(Local& l, uint64_t now) {
  l.live = liveness();
  l.app = spawn(*l.g, l.seq, {"/bin/sh", "-c", l.g->start}, -1, l.live.get());
  if (l.app < 0) {
    fail(l, "cannot start the application", now);
    return false;
  }
  l.app_fd = static_cast<int>(syscall(SYS_pidfd_open, l.app, 0));  // -1 on an old kernel: the tick notices
  return true;
}

void Runner::let_go(Local& l) {
  for (const auto& name : l.held) env_.local->hold(name, false);
  l.held.clear();
}

bool Runner::app_ended(Local& l, uint64_t now, const char* doing) {
  if (l.live && l.live->died()) {
    // Seen going down the moment it did; its pidfd turns readable only once
    // its memory is torn down. It is reaped while the group stops here;
    // what it left running in its session goes now.
    l.live->stop();
    l.live.reset();
    if (l.app > 0) kill(-l.app, SIGKILL);
    fail(l, "the application (pid " + std::to_string(l.app) + ") ended" + doing +
                ": its liveness lock was released as it exited",
         now);
    return true;
  }
  if (const int st = reap(l.app); st != kRunning) {
    // Its pidfd (or a wait) told first: the lock's watcher had not run yet.
    // What it left running in its session (a start command that put the
    // application in the background and exited) goes with it.
    if (l.app > 0) kill(-l.app, SIGKILL);
    const std::string pid = std::to_string(l.app);
    l.app = -1;
    close_fd(l);
    const bool signaled = st >= 0 && WIFSIGNALED(st);
    fail(l, "the application (pid " + pid + ") " + (signaled ? "was " : "") + ended(st) + doing, now);
    return true;
  }
  return false;
}

void Runner::start_load(Local& l) {
  auto load = std::make_shared<Load>();
  try {
    // The application (a standby instance about to be promoted, or one
    // started with its loads) gets the segment opened in its name: its
    // open then takes it as it stands. A standby instance's alone: it
    // waits for it; another process may start the other (a container
    // runtime that is not its parent), and its open then opens afresh.
    const pid_t instance = l.app > 0 ? l.app : 0;
    const bool exclusive = l.promote_fd >= 0;
    if (l.promote_fd >= 0 && l.loaded + 1 == l.g->segments.size()) {
      load->promote_fd = ::fcntl(l.promote_fd, F_DUPFD_CLOEXEC, 0);  // -1: the manager promotes it
    }
    std::thread([load, wake = wake_, connections = connections_, local = env_.local, name = l.g->segments[l.loaded],
                 instance, exclusive] {
      // What `batonctl load` asks: ownership moves here, batond keeps the
      // segment for the application, nothing is mapped into this thread.
      // Inside batond where it can, else through its socket.
      bool inside = false;
      if (auto here = local ? local->run(name, instance, exclusive) : std::nullopt) {
        inside = true;
        if (!*here) load->error = here->error();
      } else if (auto c = connections->take(); !c) {
        load->error = c.error();
      } else {
        auto got = instance > 0 ? (*c)->load_for(name, instance) : (*c)->take_over(name);
        if (!got) load->error = got.error();
        else connections->give_back(std::move(*c));
      }
      {
        // Loaded (or nothing to load, as the manager counts it): promote.
        std::lock_guard lock(load->mu);
        const char promote = 'P';
        if (load->promote_fd >= 0 && loaded(load->error)) load->promoted = ::write(load->promote_fd, &promote, 1) == 1;
        if (load->promote_fd >= 0) ::close(load->promote_fd);
        load->promote_fd = -1;
      }
      load->done_ns = now_ns();
      load->done.store(true, std::memory_order_release);
      const uint64_t one = 1;
      (void)!::write(wake->fd, &one, sizeof one);
      if (inside) local->after();
    }).detach();
  } catch (const std::system_error& e) {
    BT_ERROR("failover: no thread for a load: %s", e.what());
    return;
  }
  l.load = std::move(load);
}

void Runner::watch(Local& l, uint64_t now) {
  if (app_ended(l, now, "")) return;
  if (l.g->probe.empty()) return;
  if (l.probe < 0) {
    if (now >= l.next_probe_ns) {
      l.probe = spawn(*l.g, l.seq, {"/bin/sh", "-c", l.g->probe});
      l.probe_ns = now;
    }
    return;
  }
  const uint64_t took = now - l.probe_ns;
  const int st = reap(l.probe);
  if (st == kRunning && took <= uint64_t{l.g->probe_timeout_ms} * kMs) return;
  std::string failed;
  if (st == kRunning) {
    signal(l.probe, SIGKILL);
    waitpid(l.probe, nullptr, 0);
    failed = "timed out after " + std::to_string(l.g->probe_timeout_ms) + " ms";
  } else if (!succeeded(st)) {
    failed = ended(st);
  }
  l.probe = -1;
  l.next_probe_ns = now + uint64_t{l.g->probe_interval_ms} * kMs;
  if (!failed.empty()) {
    if (++l.probe_failures >= 2) fail(l, "its probe failed twice in a row (" + failed + ")", now);
    return;
  }
  l.probe_failures = 0;
  // The performance window, from the probe's response time (unless a
  // reported metric judges it).
  if (l.g->slow_ms == 0 || !l.g->metric.empty()) return;
  observe(l, took > uint64_t{l.g->slow_ms} * kMs, "probe took " + std::to_string(took / kMs) + " ms", now);
}

void Runner::observe(Local& l, bool slow, const std::string& what, uint64_t now) {
  if (slow) {
    if (l.slow_since_ns == 0) l.slow_since_ns = now;
    if (l.state == RunState::kRunning && now - l.slow_since_ns >= uint64_t{l.g->slow_for_ms} * kMs) {
      l.state = RunState::kSlow;
      l.why = what;
      events_("group " + l.g->name + " is slow here: " +
              (l.g->metric.empty() ? "every probe slower than " + std::to_string(l.g->slow_ms) + " ms"
                                   : "every " + l.g->metric + " report above " + std::to_string(l.g->slow_above)) +
              " for " + std::to_string(l.g->slow_for_ms) + " ms (last: " + what + ")");
    }
  } else {
    l.slow_since_ns = 0;
    if (l.state == RunState::kSlow) {
      l.state = RunState::kRunning;
      l.why.clear();
      events_("group " + l.g->name + " is fast again here (" + what + ")");
    }
  }
}

void Runner::metric(pid_t pid, const std::string& name, double value, uint64_t now) {
  for (auto& [group, l] : locals_) {
    if (l.app <= 0 || l.phase != Phase::kApp || l.g->metric != name) continue;
    if (pid != l.app && getpgid(pid) != l.app) continue;  // the application, or a process it started
    char text[96];
    std::snprintf(text, sizeof text, "%s %.3g", name.c_str(), value);
    observe(l, value > l.g->slow_above, text, now);
  }
}

void Runner::step(uint64_t now) {
  for (auto& [name, l] : locals_) {
    switch (l.phase) {
      case Phase::kProvision:
      case Phase::kLoad: advance(l, now); break;
      case Phase::kApp:
        if (!l.started) advance(l, now);
        else watch(l, now);
        break;
      case Phase::kStopping: {
        bool left = false;
        for (pid_t* p : {&l.app, &l.step, &l.probe}) {
          if (*p <= 0) continue;
          if (reap(*p) != kRunning) *p = -1;
          else left = true;
        }
        if (l.app < 0) close_fd(l);
        if (!left) {
          l.phase = Phase::kDone;
          let_go(l);
        }
        else if (now >= l.kill_ns)
          for (pid_t p : {l.app, l.step, l.probe})
            if (p > 0) signal(p, SIGKILL);
        break;
      }
      case Phase::kDone: break;
    }
  }
  keep_standbys(now);
}

void Runner::keep_standbys(uint64_t now) {
  for (const auto& g : groups_) {
    if (!g.standby_instances || std::find(g.standby.begin(), g.standby.end(), env_.node) == g.standby.end()) continue;
    // Not while the group itself runs here (or is being stopped here), nor
    // in the first second after it stopped: its failover to another node is
    // under way then, and a standby's start here (hook, process) would take
    // the CPUs from that node's load (on two shared vCPUs its load took
    // 8-22 ms instead of 3-6).
    if (auto it = locals_.find(g.name);
        it != locals_.end() && (it->second.phase != Phase::kDone || now - it->second.phase_ns < kStandbyRetryNs))
      continue;
    Standby& s = standbys_[g.name];
    if (s.hook > 0) {
      const int st = reap(s.hook);
      if (st == kRunning) {
        if (now - s.since_ns > uint64_t{g.start_timeout_ms} * kMs) {
          signal(s.hook, SIGKILL);
          waitpid(s.hook, nullptr, 0);
          s.hook = -1;
          standby_ended(g, s, "its provision hook took longer than " + std::to_string(g.start_timeout_ms) + " ms", now);
        }
        continue;
      }
      s.hook = -1;
      if (!succeeded(st)) {
        standby_ended(g, s, "its provision hook " + ended(st), now);
        continue;
      }
    } else if (s.app > 0) {
      if (const int st = reap(s.app); st != kRunning) {
        s.app = -1;
        if (s.live) s.live->stop();
        s.live.reset();
        ::close(s.promote_fd);
        s.promote_fd = -1;
        standby_ended(g, s, std::string(st >= 0 && WIFSIGNALED(st) ? "it was " : "it ") + ended(st), now);
      }
      continue;
    } else {
      if (now < s.retry_ns) continue;
      s.since_ns = now;
      if (!g.provision.empty()) {
        s.hook = spawn(g, 0, {"/bin/sh", "-c", g.provision});
        if (s.hook < 0) standby_ended(g, s, "its provision hook could not run", now);
        continue;
      }
    }
    // Provisioned: the instance, with the read end of its pipe as fd 3.
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) != 0) {
      standby_ended(g, s, std::string("no pipe: ") + strerror(errno), now);
      continue;
    }
    s.live = liveness();
    s.app = spawn(g, 0, {"/bin/sh", "-c", g.start}, ends[0], s.live.get());
    ::close(ends[0]);
    if (s.app < 0) {
      ::close(ends[1]);
      standby_ended(g, s, "it could not be started", now);
      continue;
    }
    s.promote_fd = ends[1];
    s.since_ns = now;
    events_("group " + g.name + ": a standby instance waits here (pid " + std::to_string(s.app) + ")");
  }
}

void Runner::standby_ended(const ServiceGroup& g, Standby& s, std::string why, uint64_t now) {
  if (now - s.since_ns >= kStandbyHealthyNs) s.failures = 0;
  const uint64_t wait = kStandbyRetryNs << std::min(s.failures, kStandbyRetryDoublings);
  ++s.failures;
  s.retry_ns = now + wait;
  s.why = std::move(why);
  events_("group " + g.name + ": its standby instance here ended: " + s.why + "; again in " +
          std::to_string(wait / kMs) + " ms");
}

void Runner::drop(Standby& s) {
  for (pid_t* p : {&s.hook, &s.app})
    if (*p > 0) {
      signal(*p, SIGKILL);
      waitpid(*p, nullptr, 0);
      *p = -1;
    }
  if (s.promote_fd >= 0) ::close(s.promote_fd);
  s.promote_fd = -1;
  if (s.live) s.live->stop();
  s.live.reset();
}

std::map<std::string, std::string> Runner::standbys(uint64_t now) const {
  std::map<std::string, std::string> out;
  for (const auto& [name, s] : standbys_) {
    if (s.app > 0) out[name] = "ready (pid " + std::to_string(s.app) + ")";
    else if (s.hook > 0)
      out[name] = "provisioning for " + std::to_string(now > s.since_ns ? (now - s.since_ns) / kMs : 0) + " ms";
    else if (!s.why.empty())
      out[name] = "down: " + s.why + "; again in " + std::to_string(s.retry_ns > now ? (s.retry_ns - now) / kMs : 0) + " ms";
  }
  return out;
}

int Runner::wake_fd() const noexcept { return wake_->fd; }

void Runner::close_fd(Local& l) {
  if (l.app_fd >= 0) close(l.app_fd);
  l.app_fd = -1;
  if (l.live) l.live->stop();
  l.live.reset();
}

std::vector<int> Runner::watch_fds() const {
  std::vector<int> fds;
  for (const auto& [name, l] : locals_)
    if (l.app_fd >= 0) fds.push_back(l.app_fd);
  return fds;
}

bool Runner::busy() const noexcept {
  return std::any_of(locals_.begin(), locals_.end(), [](const auto& e) {
    return e.second.phase == Phase::kProvision || e.second.phase == Phase::kLoad ||
           (e.second.phase == Phase::kApp && !e.second.started);
  }) || std::any_of(standbys_.begin(), standbys_.end(), [](const auto& e) { return e.second.hook > 0; });
}

std::vector<GroupRun> Runner::runs() const {
  std::vector<GroupRun> out;
  for (const auto& [name, l] : locals_) out.push_back(GroupRun{name, l.seq, l.state, l.why});
  return out;
}

pid_t Runner::pid_of(const std::string& group) const {
  auto it = locals_.find(group);
  return it != locals_.end() && it->second.state != RunState::kFailed && it->second.state != RunState::kStopped
             ? it->second.app
             : -1;
}

}  // namespace baton::failover
