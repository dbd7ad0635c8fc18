// batond's failover manager (failover/manager.h).
//
// Thread: `baton-failover`, but for status().

#include "failover/manager.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <set>

#include "common/log.h"
#include "failover/codec.h"
#include "runtime/futex.h"

namespace baton::failover {

namespace {

constexpr uint64_t kMs = 1'000'000;
/// An alert hook's longest run: a hung one is killed (session and all), so
/// that dead ends that recur do not pile hooks up.
constexpr uint64_t kAlertTimeoutNs = 60'000 * kMs;
constexpr uint64_t kTickNs = 20 * kMs;
constexpr uint64_t kBusyTickNs = 1 * kMs;  ///< while this node starts a group
constexpr uint64_t kReportEveryNs = 250 * kMs;
constexpr uint64_t kRepeatEveryNs = 1000 * kMs;  ///< assignments again, for late joiners and lost notes
/// A changed report and a new assignment go out this many times more, a
/// tick apart: notes are best effort (a link whose ring is full drops one),
/// and the periodic ones come 250 ms and 1 s later.
constexpr int kEchoes = 2;
constexpr uint64_t kReportStaleNs = 2000 * kMs;  ///< a report older than this no longer counts
constexpr uint64_t kSettleNs = 1000 * kMs;       ///< a new coordinator waits this long at most for every report
constexpr uint64_t kStallNs = 500 * kMs;         ///< a gap between ticks this long: the thread was stalled

}  // namespace

Manager::Manager(Engine& engine, ManagerConfig config)
    : engine_(engine),
      config_(std::move(config)),
      runner_(Runner::Env{config_.node, config_.socket, config_.caps, config_.local}, config_.groups,
              [this](std::string text) { engine_.add_event(std::move(text)); }),
      coordinator_(config_.node, config_.groups) {
  // A failover prefers, among equals, a node that holds the group's state:
  // the replica set of each of its segments as this node's records say
  // (every node stores every set record). A hint only: the load there
  // still claims and takes the newest generation wherever it is.
  coordinator_.set_holders([this](const ServiceGroup& g) {
    std::set<uint16_t> holders;
    for (size_t i = 0; i < g.segments.size(); ++i) {
      auto r = engine_.record(g.segments[i]);
      if (!r) return std::set<uint16_t>{};
      std::set<uint16_t> set(r->set.begin(), r->set.end());
      if (i == 0) {
        holders = std::move(set);
      } else {
        std::set<uint16_t> both;
        std::set_intersection(holders.begin(), holders.end(), set.begin(), set.end(),
                              std::inserter(both, both.begin()));
        holders = std::move(both);
      }
    }
    return holders;
  });
}

Result<std::unique_ptr<Manager>> Manager::start(Engine& engine, ManagerConfig config) {
  NodeReport probe{config.node, groups_hash(config.groups), config.caps, {}};
  for (const auto& g : config.groups) probe.runs.push_back(GroupRun{g.name, 1, RunState::kFailed, std::string(120, 'x')});
  if (auto r = encode_report(probe); !r) return tl::unexpected(r.error());
  std::unique_ptr<Manager> m(new Manager(engine, std::move(config)));
  m->thread_ = std::thread([p = m.get()] { p->run(); });
  return m;
}

Manager::~Manager() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  for (const auto& a : alerts_) {  // a hung hook must not hold batond's exit
    kill(-a.pid, SIGKILL);
    waitpid(a.pid, nullptr, 0);
  }
}

void Manager::run() noexcept {
  prctl(PR_SET_NAME, "baton-failover", 0, 0, 0);
  while (!stop_.load()) {
    tick(now_ns());
    // A start under way is stepped along at once, not a tick per step; an
    // application that ends wakes the thread (its pidfd turns readable), so
    // does a finished load (the runner's eventfd) and a note from another
    // node (an assignment is to be acted on now).
    std::vector<pollfd> fds{pollfd{engine_.notes_fd(), POLLIN, 0}, pollfd{runner_.wake_fd(), POLLIN, 0}};
    for (int fd : runner_.watch_fds()) fds.push_back(pollfd{fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), static_cast<int>((runner_.busy() ? kBusyTickNs : kTickNs) / kMs)) > 0)
      for (size_t i = 0; i < 2; ++i)
        if ((fds[i].revents & POLLIN) != 0) {
          uint64_t n;
          (void)!read(fds[i].fd, &n, sizeof n);
        }
  }
}

void Manager::broadcast(const std::string& note) {
  // Best effort: a note that does not go out now is repeated soon.
  (void)engine_.send_note(0, std::as_bytes(std::span(note)));
}

void Manager::take_notes(uint64_t now) {
  for (const Note& n : engine_.take_notes()) {
    auto m = decode_note(std::string_view(reinterpret_cast<const char*>(n.bytes.data()), n.bytes.size()));
    if (!m) {
      BT_WARN("failover: a note from node %u refused: %s", n.from, m.error().message.c_str());
      continue;
    }
    if (auto* r = std::get_if<NodeReport>(&*m)) {
      if (r->node != n.from) continue;  // a node speaks for itself only
      // A coordinator asks for a report now: the answer goes to it alone,
      // behind whatever waited in the link before.
      if (r->ask != 0) {
        NodeReport mine = own_report();
        mine.answer = r->ask;
        if (auto note = encode_report(mine)) (void)engine_.send_note(n.from, std::as_bytes(std::span(*note)));
      }
      if (r->answer != 0) round_.answered(r->node, r->answer);
      std::lock_guard lock(mu_);
      reports_[r->node] = std::move(*r);
      heard_ns_[n.from] = now;
    } else if (auto* a = std::get_if<Assignment>(&*m)) {
      // From its coordinator itself, a member of this node's view: a node
      // cut off from it, or one that only claims to be it, is not obeyed.
      if (a->coordinator != n.from) continue;
      const View v = engine_.view();
      if (!std::binary_search(v.members.begin(), v.members.end(), a->coordinator)) continue;
      {
        std::lock_guard lock(mu_);
        auto& mine = assignments_[a->group];
        if (a->seq > mine.seq) mine = *a;
      }
      coordinator_.heard(*a);
      runner_.assigned(*a, now);
    }
  }
}

NodeReport Manager::own_report() const {
  return NodeReport{config_.node, coordinator_.hash(), config_.caps, runner_.runs()};
}

void Manager::decided(std::string text) {
  engine_.add_event(text);
  std::lock_guard lock(mu_);
  decisions_.push_back(std::move(text));
  if (decisions_.size() > 32) decisions_.pop_front();
}

void Manager::alert(const Coordinator::Alert& a) {
  BT_ERROR("failover: group %s: %s; the administrator must act", a.group.c_str(), a.reason.c_str());
  auto g = std::find_if(config_.groups.begin(), config_.groups.end(),
                        [&](const ServiceGroup& x) { return x.name == a.group; });
  if (g == config_.groups.end() || g->alert.empty()) return;
  const pid_t pid = spawn_child({"/bin/sh", "-c", g->alert},
                                {"BATON_GROUP=" + a.group, "BATON_REASON=" + a.reason,
                                 "BATON_NODE=" + std::to_string(config_.node)},
                                true);
  if (pid > 0) alerts_.push_back(RunningAlert{pid, now_ns(), a.group});
  else BT_ERROR("failover: group %s: the alert hook did not start", a.group.c_str());
}

void Manager::metric(pid_t pid, const std::string& name, double value) {
  std::lock_guard lock(mu_);
  if (metrics_.size() < 1024) metrics_.push_back(Metric{pid, name, value});  // a flood is cut, not queued
}

void Manager::tick(uint64_t now) {
  take_notes(now);
  std::vector<Metric> metrics;
  {
    std::lock_guard lock(mu_);
    metrics.swap(metrics_);
  }
  for (const auto& m : metrics) runner_.metric(m.pid, m.name, m.value, now);
  runner_.step(now);
  {
    auto standbys = runner_.standbys(now);
    std::lock_guard lock(mu_);
    standbys_ = std::move(standbys);
  }
  std::erase_if(alerts_, [now](const RunningAlert& a) {
    int status = 0;
    const pid_t got = waitpid(a.pid, &status, WNOHANG);
    if (got == 0 && now - a.started_ns < kAlertTimeoutNs) return false;
    if (got == 0) {  // hung: the next dead end starts another; this one goes, with what it started
      kill(-a.pid, SIGKILL);
      waitpid(a.pid, nullptr, 0);
      BT_ERROR("failover: group %s: the alert hook ran %llu s and was killed", a.group.c_str(),
               static_cast<unsigned long long>(kAlertTimeoutNs / 1'000'000'000));
    } else if (got > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      BT_ERROR("failover: group %s: the alert hook failed (%s)", a.group.c_str(), exit_text(status).c_str());
    }
    return true;
  });

  // The coordinator: the lowest id of a quorate view every member agrees on.
  const View v = engine_.view();
  const bool coordinating = v.quorate && v.agreed && !v.members.empty() && v.members.front() == config_.node;
  {
    std::lock_guard lock(mu_);
    coordinator_id_ = v.quorate && v.agreed && !v.members.empty() ? v.members.front() : 0;
  }
  // A new coordinator, or one whose thread stood still (SIGSTOP, a starved
  // machine), asks every member for its report and decides on the answers
  // (or waits a second): its first decisions see the whole pool as it is
  // now. What it read before may have waited in a link: a coordinator
  // restarted on shm once read its predecessor's queued reports, seconds
  // old, and failed a group over to the node already running it.
  const bool stalled = last_tick_ns_ != 0 && now - last_tick_ns_ >= kStallNs;
  last_tick_ns_ = now;
  uint64_t ask = 0;
  if (coordinating && (!coordinating_ || stalled)) {
    ask = round_.start(now, config_.node);
    round_said_ = false;
  }
  coordinating_ = coordinating;

  NodeReport mine = own_report();
  std::vector<uint16_t> spares;
  {
    std::lock_guard lock(mu_);
    reports_[config_.node] = mine;
    heard_ns_[config_.node] = now;
    for (const auto& [node, r] : reports_)
      if (r.caps.spare) spares.push_back(node);
  }
  // Replicas go to the spare pool first (among peers as good for failure
  // domains): a failover to a spare then takes its own replica over.
  if (spares != spares_) {
    spares_ = spares;
    engine_.prefer_replicas_on(std::move(spares));
  }
  mine.ask = ask;
  auto note = encode_report(mine);
  // Every few hundred ms, and at once when this node's share changed (a
  // failure here is the coordinator's to act on) or it asks for reports;
  // a change goes out again on the next ticks (kEchoes).
  const bool changed = note && *note != last_note_;
  const bool echo = note && report_echoes_ > 0 && now - last_report_ns_ >= kTickNs;
  if (note && (ask != 0 || changed || echo || now - last_report_ns_ >= kReportEveryNs)) {
    broadcast(*note);
    report_echoes_ = changed ? kEchoes : echo ? report_echoes_ - 1 : report_echoes_;
    last_report_ns_ = now;
    last_note_ = *note;
  }
  if (!coordinating) {
    assign_echoes_.clear();
    return;
  }
  std::map<uint16_t, NodeReport> fresh;
  {
    std::lock_guard lock(mu_);
    for (const auto& [node, r] : reports_)
      if (now - heard_ns_[node] < kReportStaleNs) fresh.emplace(node, r);
  }
  if (!round_.ready(now, v.members, kSettleNs)) return;
  if (!round_said_) {
    round_said_ = true;
    if (round_.all(v.members))
      BT_INFO("failover: coordinating %s; every member's report answered in %lu ms", v.to_string().c_str(),
              static_cast<unsigned long>((now - round_.since()) / kMs));
    else
      BT_WARN("failover: coordinating %s; not every member answered within %lu ms: deciding on the reports at hand",
              v.to_string().c_str(), static_cast<unsigned long>(kSettleNs / kMs));
  }
  Coordinator::Out out;
  timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  coordinator_.step(now, static_cast<uint64_t>(wall.tv_sec) * 1000 + static_cast<uint64_t>(wall.tv_nsec) / 1'000'000,
                    v.members, fresh, out);
  for (auto& text : out.events) decided(std::move(text));
  for (const auto& a : out.alerts) alert(a);
  for (const auto& a : out.assign) {
    {
      std::lock_guard lock(mu_);
      assignments_[a.group] = a;
    }
    broadcast(encode_assignment(a));
    std::erase_if(assign_echoes_, [&a](const Echo& e) { return e.assignment.group == a.group; });
    assign_echoes_.push_back(Echo{a, kEchoes, now});
    runner_.assigned(a, now);
  }
  for (auto& e : assign_echoes_)
    if (now - e.sent_ns >= kTickNs) {
      broadcast(encode_assignment(e.assignment));
      --e.left;
      e.sent_ns = now;
    }
  std::erase_if(assign_echoes_, [](const Echo& e) { return e.left <= 0; });
  if (now - last_repeat_ns_ >= kRepeatEveryNs) {
    for (const auto& a : coordinator_.current()) broadcast(encode_assignment(a));
    last_repeat_ns_ = now;
  }
}

nlohmann::json Manager::status() const {
  using nlohmann::json;
  std::lock_guard lock(mu_);
  json out;
  out["node"] = config_.node;
  out["coordinator"] = coordinator_id_;
  out["groups"] = json::array();
  for (const auto& g : config_.groups) {
    json j = {{"name", g.name}, {"priority", g.priority}, {"segments", g.segments}};
    auto a = assignments_.find(g.name);
    uint64_t seq = a != assignments_.end() ? a->second.seq : 0;
    uint16_t node = a != assignments_.end() ? a->second.node : 0;
    // What the nodes say: the newest assignment any of them runs.
    std::string state = seq == 0 ? "unplaced" : "assigned", why;
    for (const auto& [n, r] : reports_)
      for (const auto& run : r.runs)
        if (run.group == g.name && run.seq >= seq) {
          seq = run.seq;
          node = n;
          state = run_state_name(run.state);
          why = run.why;
        }
    // Never placed: this node's last decision about it says why (on the
    // coordinator; "no eligible node (...)" with each node's reason).
    if (seq == 0 && why.empty())
      for (auto d = decisions_.rbegin(); d != decisions_.rend() && why.empty(); ++d)
        if (d->find("group " + g.name + " ") != std::string::npos || d->find("group " + g.name + ":") != std::string::npos)
          why = *d;
    j["node"] = node;
    j["assignment"] = seq;
    j["state"] = state;
    if (!why.empty()) j["why"] = why;
    out["groups"].push_back(j);
  }
  out["pool"] = json::array();
  const View view = engine_.view();
  for (const auto& [n, r] : reports_) {
    const auto heard = heard_ns_.find(n);
    // A node out of this node's view: its last report, not its state now.
    const bool up = std::find(view.members.begin(), view.members.end(), n) != view.members.end();
    json runs = json::array();
    for (const auto& run : r.runs)
      if (works(run.state)) runs.push_back(run.group);
    out["pool"].push_back({{"node", n},
                           {"spare", r.caps.spare},
                           {"cores", r.caps.cores},
                           {"memory_mib", r.caps.memory_mib},
                           {"tags", r.caps.tags},
                           {"runs", runs},
                           {"up", up},
                           {"same_groups", r.groups_hash == coordinator_.hash()},
                           {"heard_ms_ago", heard == heard_ns_.end() ? -1 : static_cast<int64_t>((now_ns() - heard->second) / kMs)}});
  }
  out["decisions"] = decisions_;
  // This node's standby instances (the runner's; under mu_, as it is copied
  // there on the manager's thread).
  out["standby_instances"] = standbys_;
  return out;
}

}  // namespace baton::failover
