// This node's share of the service groups (failover/runner.h).
//
// Thread: the failover manager's.

#include "failover/runner.h"

#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"

extern char** environ;

namespace baton::failover {

namespace {

constexpr int kRunning = -2;               // reap(): not ended yet
constexpr uint64_t kStopGraceNs = 5'000'000'000;  // SIGTERM, then SIGKILL after this
constexpr uint64_t kMs = 1'000'000;


/// Signals the process group `pid` leads (it was spawned in a session of
/// its own), or the process alone if that fails.
void signal(pid_t pid, int sig) {
  if (kill(-pid, sig) != 0) kill(pid, sig);
}

}  // namespace

std::string exit_text(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "ended (status " + std::to_string(status) + ")";
}

Runner::Runner(Env env, std::vector<ServiceGroup> groups, Events events)
    : env_(std::move(env)), groups_(std::move(groups)), events_(std::move(events)) {}

Runner::~Runner() {
  for (auto& [name, l] : locals_)
    for (pid_t p : {l.app, l.step, l.probe})
      if (p > 0) signal(p, SIGTERM);
  // A short grace, then whatever is left goes.
  for (int i = 0; i < 50; ++i) {
    bool any = false;
    for (auto& [name, l] : locals_)
      for (pid_t* p : {&l.app, &l.step, &l.probe})
        if (*p > 0 && reap(*p) == kRunning) any = true;
        else *p = -1;
    if (!any) return;
    usleep(20'000);
  }
  for (auto& [name, l] : locals_) {
    for (pid_t p : {l.app, l.step, l.probe})
      if (p > 0) {
        signal(p, SIGKILL);
        waitpid(p, nullptr, 0);
      }
    close_fd(l);
  }
}

int Runner::reap(pid_t pid) {
  int status = 0;
  const pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == 0) return kRunning;
  if (r < 0) return -1;  // not ours any more (reaped elsewhere): ended
  return status;
}

pid_t spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& baton_env, bool own_session) {
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
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], nullptr, &attr, args.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    BT_ERROR("failover: cannot start %s: %s", argv[0].c_str(), strerror(rc));
    return -1;
  }
  return pid;
}

pid_t Runner::spawn(const Local& l, const std::vector<std::string>& argv, bool own_session) {
  std::string segments;
  for (const auto& s : l.g->segments) segments += (segments.empty() ? "" : " ") + s;
  return spawn_child(argv,
                     {"BATON_SOCKET=" + env_.socket, "BATON_NODE=" + std::to_string(env_.node),
                      "BATON_GROUP=" + l.g->name, "BATON_SEGMENTS=" + segments,
                      "BATON_ASSIGNMENT=" + std::to_string(l.seq)},
                     own_session);
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
  }
  Local& l = locals_[a.group];
  l = Local{};
  l.g = &*g;
  l.seq = a.seq;
  l.phase = Phase::kProvision;
  l.phase_ns = now;
  l.heard_ns = now;
  // The coordinator's reasons, so this node's events say why it was chosen.
  events_("group " + a.group + ": starting here (assignment " + std::to_string(a.seq) + " from node " +
          std::to_string(a.coordinator) + ")" + (a.reason.empty() ? "" : "; the decision: " + a.reason));
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
  for (pid_t p : {l.app, l.step, l.probe})
    if (p > 0) signal(p, SIGTERM);
}

void Runner::advance(Local& l, uint64_t now) {
  const uint64_t timeout = uint64_t{l.g->start_timeout_ms} * kMs;
  if (l.step > 0) {
    const int st = reap(l.step);
    if (st == kRunning) {
      if (now - l.phase_ns > timeout) {
        signal(l.step, SIGKILL);
        waitpid(l.step, nullptr, 0);
        l.step = -1;
        fail(l, std::string(l.phase == Phase::kProvision ? "the provision hook" : "a segment load") +
                    " took longer than " + std::to_string(l.g->start_timeout_ms) + " ms",
             now);
      }
      return;
    }
    l.step = -1;
    if (l.phase == Phase::kProvision) {
      if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fail(l, "the provision hook " + (st < 0 ? std::string("vanished") : exit_text(st)), now);
        return;
      }
      l.phase = Phase::kLoad;
    } else {
      // batonctl load: 0 loaded, 3 no copy anywhere (the application
      // starts fresh), 4 already here.
      const int code = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      if (code != 0 && code != 3 && code != 4) {
        // Twice more, 100 ms apart, within the start timeout: a view still
        // settling or a round without enough answers passes.
        if (++l.load_failures < 3 && now - l.phase_ns + 100 * kMs < timeout) {
          l.retry_ns = now + 100 * kMs;
          return;
        }
        fail(l, "loading segment " + l.g->segments[l.loaded] + " " + (st < 0 ? "vanished" : exit_text(st)) +
                    (l.load_failures > 1 ? " (" + std::to_string(l.load_failures) + " tries)" : ""),
             now);
        return;
      }
      ++l.loaded;
      l.load_failures = 0;
    }
  }
  if (l.phase == Phase::kProvision) {
    if (!l.g->provision.empty()) {
      l.step = spawn(l, {"/bin/sh", "-c", l.g->provision}, true);
      if (l.step < 0) fail(l, "cannot run the provision hook", now);
      return;
    }
    l.phase = Phase::kLoad;
  }
  if (l.provisioned_ns == 0) l.provisioned_ns = now;
  if (l.phase == Phase::kLoad) {
    if (now < l.retry_ns) return;
    if (l.loaded < l.g->segments.size()) {
      l.step = spawn(l, {env_.batonctl, "load", "--socket", env_.socket, l.g->segments[l.loaded]}, true);
      if (l.step < 0) fail(l, "cannot run " + env_.batonctl, now);
      return;
    }
    l.phase = Phase::kApp;
    l.loaded_ns = now;
  }
  if (l.phase == Phase::kApp && l.app < 0) {
    l.app = spawn(l, {"/bin/sh", "-c", l.g->start}, true);
    if (l.app < 0) {
      fail(l, "cannot start the application", now);
      return;
    }
    l.app_fd = static_cast<int>(syscall(SYS_pidfd_open, l.app, 0));  // -1 on an old kernel: the tick notices
    l.state = RunState::kRunning;
    l.phase_ns = now;
    l.next_probe_ns = now + uint64_t{l.g->probe_interval_ms} * kMs;
    auto ms = [](uint64_t from, uint64_t to) { return std::to_string((to - from) / 1000) + " us"; };
    events_("group " + l.g->name + " runs here (pid " + std::to_string(l.app) + ", assignment " +
            std::to_string(l.seq) + "): provisioned in " + ms(l.heard_ns, l.provisioned_ns) + ", segments loaded in " +
            ms(l.provisioned_ns, l.loaded_ns) + ", started " + ms(l.heard_ns, now) + " after the assignment came");
  }
}

void Runner::watch(Local& l, uint64_t now) {
  if (const int st = reap(l.app); st != kRunning) {
    l.app = -1;
    close_fd(l);
    fail(l, "the application " + (st < 0 ? std::string("vanished") : exit_text(st)), now);
    return;
  }
  if (l.g->probe.empty()) return;
  if (l.probe < 0) {
    if (now >= l.next_probe_ns) {
      l.probe = spawn(l, {"/bin/sh", "-c", l.g->probe}, true);
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
  } else if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    failed = st < 0 ? "vanished" : exit_text(st);
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
        if (l.app < 0) advance(l, now);
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
        if (!left) l.phase = Phase::kDone;
        else if (now >= l.kill_ns)
          for (pid_t p : {l.app, l.step, l.probe})
            if (p > 0) signal(p, SIGKILL);
        break;
      }
      case Phase::kDone: break;
    }
  }
}

void Runner::close_fd(Local& l) {
  if (l.app_fd >= 0) close(l.app_fd);
  l.app_fd = -1;
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
           (e.second.phase == Phase::kApp && e.second.app < 0);
  });
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
