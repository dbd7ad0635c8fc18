// Failover decisions (failover/coordinator.h).
//
// Thread: the failover manager's.

#include "failover/coordinator.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <tuple>

namespace baton::failover {

namespace {

std::string node_str(uint16_t n) { return "node " + std::to_string(n); }

const ServiceGroup* find_group(const std::vector<ServiceGroup>& groups, const std::string& name) {
  for (const auto& g : groups)
    if (g.name == name) return &g;
  return nullptr;
}

/// What works on node `r` now besides `g`: what it reports, and what this
/// pass gave it. False if it runs a group this node does not know.
bool running_on(const NodeReport& r, const ServiceGroup& g, const std::vector<ServiceGroup>& groups,
                const Given& taken, std::vector<const ServiceGroup*>& out) {
  for (const auto& run : r.runs)
    if (works(run.state) && run.group != g.name) {
      const ServiceGroup* o = find_group(groups, run.group);
      if (o == nullptr) return false;
      out.push_back(o);
    }
  if (auto t = taken.find(r.node); t != taken.end())
    for (const ServiceGroup* o : t->second)
      if (o->name != g.name && std::find(out.begin(), out.end(), o) == out.end()) out.push_back(o);
  return true;
}


}  // namespace

std::string Choice::to_string() const {
  std::string s;
  for (const auto& [n, why] : rejected) s += (s.empty() ? "" : "; ") + node_str(n) + ": " + why;
  return s.empty() ? "no candidates" : s;
}

Choice choose(const ServiceGroup& g, Why why, std::span<const uint16_t> members,
              const std::map<uint16_t, NodeReport>& reports, const std::vector<ServiceGroup>& groups, uint64_t hash,
              const std::set<uint16_t>& exclude, std::optional<uint16_t> current,
              const Given& taken, const std::set<uint16_t>& holders) {
  Choice c;
  const NodeReport* cur = nullptr;
  if (current) {
    auto it = reports.find(*current);
    if (it != reports.end()) cur = &it->second;
  }
  using Key = std::tuple<int, int64_t, int64_t, uint16_t>;  // (class, a, b, id): smallest wins
  std::optional<std::pair<Key, uint16_t>> best;
  for (uint16_t n : members) {
    auto reject = [&](std::string why_not) { c.rejected.emplace_back(n, std::move(why_not)); };
    if (current && n == *current) {
      reject("runs it now");
      continue;
    }
    auto it = reports.find(n);
    if (it == reports.end()) {
      reject("no report from it yet");
      continue;
    }
    const NodeReport& r = it->second;
    if (r.groups_hash != hash) {
      reject("its service groups differ from this node's");
      continue;
    }
    if (exclude.count(n) != 0) {
      reject("the group failed there, and has not run a start timeout long since");
      continue;
    }
    if (r.caps.cores < g.min_cores) {
      reject("has " + std::to_string(r.caps.cores) + " cores, needs " + std::to_string(g.min_cores));
      continue;
    }
    if (r.caps.memory_mib < g.min_memory_mib) {
      reject("has " + std::to_string(r.caps.memory_mib) + " MiB, needs " + std::to_string(g.min_memory_mib));
      continue;
    }
    if (auto missing = std::find_if(g.tags.begin(), g.tags.end(),
                                    [&](const std::string& t) {
                                      return std::find(r.caps.tags.begin(), r.caps.tags.end(), t) == r.caps.tags.end();
                                    });
        missing != g.tags.end()) {
      reject("lacks tag " + *missing);
      continue;
    }
    if (why == Why::kPerformance && cur != nullptr) {
      const bool better = r.caps.cores > cur->caps.cores ||
                          (r.caps.cores == cur->caps.cores && r.caps.memory_mib > cur->caps.memory_mib);
      if (!better) {
        reject("no better than node " + std::to_string(*current) + " (" + std::to_string(r.caps.cores) + " cores, " +
               std::to_string(r.caps.memory_mib) + " MiB)");
        continue;
      }
    }
    // Its work: what it reports, and what this pass gave it; what would
    // have to stop there for `g` to fit.
    std::vector<const ServiceGroup*> running;
    if (!running_on(r, g, groups, taken, running)) {
      reject("runs a group this node does not know");
      continue;
    }
    const auto stop = make_room(r.caps, g, running);
    if (!stop) {  // (the minimums were checked above)
      reject("cannot hold it");
      continue;
    }
    Key key;
    if (running.empty()) {
      const int64_t home = std::find(g.home.begin(), g.home.end(), n) - g.home.begin();
      switch (why) {
        case Why::kStart: key = {0, home, r.caps.spare ? 1 : 0, n}; break;
        case Why::kFailure: {  // a hot standby first (its state is ready), then the spare pool;
                               // within each, a node that holds a copy (no fetch)
          const bool standby = std::find(g.standby.begin(), g.standby.end(), n) != g.standby.end();
          key = {0, standby ? 0 : 1, (r.caps.spare ? 0 : 2) + (holders.count(n) != 0 ? 0 : 1), n};
          break;
        }
        case Why::kPerformance:
          key = {0, -int64_t{r.caps.cores}, -static_cast<int64_t>(r.caps.memory_mib), n};
          break;
      }
    } else if (stop->empty()) {
      key = {1, static_cast<int64_t>(running.size()), 0, n};  // room beside its work
    } else {
      const ServiceGroup* top = *std::max_element(
          stop->begin(), stop->end(), [](const ServiceGroup* a, const ServiceGroup* b) { return a->priority < b->priority; });
      if (top->priority >= g.priority) {
        reject("runs " + top->name + " (priority " + std::to_string(top->priority) + ", not below " +
               std::to_string(g.priority) + ")" + (stop->size() < running.size() ? ", and has no room beside it" : ""));
        continue;
      }
      key = {2, top->priority, static_cast<int64_t>(stop->size()), n};
    }
    if (!best || key < best->first) best = std::make_pair(key, n);
  }
  if (best) c.node = best->second;
  return c;
}

uint64_t ReportRound::start(uint64_t now, uint16_t self) {
  ask_ = ask_ + 1 + (now & 0xffff);  // grows: an answer to an earlier round never counts
  since_ = now;
  answered_ = {self};
  return ask_;
}

void ReportRound::answered(uint16_t node, uint64_t answer) {
  if (ask_ != 0 && answer == ask_) answered_.insert(node);
}

bool ReportRound::all(std::span<const uint16_t> members) const {
  return std::all_of(members.begin(), members.end(), [&](uint16_t n) { return answered_.count(n) != 0; });
}

bool ReportRound::ready(uint64_t now, std::span<const uint16_t> members, uint64_t settle_ns) const {
  return now - since_ >= settle_ns || all(members);
}

Coordinator::Coordinator(uint16_t self, std::vector<ServiceGroup> groups)
    : self_(self), groups_(std::move(groups)), hash_(groups_hash(groups_)) {
  std::stable_sort(groups_.begin(), groups_.end(),
                   [](const ServiceGroup& a, const ServiceGroup& b) { return a.priority > b.priority; });
  for (const auto& g : groups_) tracks_[g.name];
}

void Coordinator::heard(const Assignment& a) {
  auto it = tracks_.find(a.group);
  if (it == tracks_.end() || a.seq <= it->second.seq) return;
  it->second.seq = a.seq;
  it->second.node = a.node;
  it->second.reason = a.reason;
  it->second.assigned_ns = 0;
  it->second.running_ns = 0;
  it->second.heard = true;
}

std::vector<Assignment> Coordinator::current() const {
  std::vector<Assignment> out;
  for (const auto& [name, t] : tracks_)
    if (t.seq != 0 && t.node != 0) out.push_back(Assignment{name, t.node, t.seq, self_, t.reason});
  return out;
}

void Coordinator::step(uint64_t now, uint64_t floor, std::span<const uint16_t> members,
                       const std::map<uint16_t, NodeReport>& reports, Out& out) {
  floor_ = floor;
  auto member = [&](uint16_t n) { return std::binary_search(members.begin(), members.end(), n); };
  // The newest assignment of each group, as the members report it.
  for (uint16_t m : members) {
    auto it = reports.find(m);
    if (it == reports.end()) continue;
    for (const auto& run : it->second.runs) {
      auto t = tracks_.find(run.group);
      if (t == tracks_.end()) continue;
      if (run.seq > t->second.seq || (run.seq == t->second.seq && t->second.node == 0)) {
        t->second.seq = run.seq;
        t->second.node = m;
        t->second.reason.clear();
        t->second.assigned_ns = 0;
        t->second.running_ns = 0;
      }
    }
  }
  Given taken;
  for (const ServiceGroup& g : groups_) {
    Track& t = tracks_[g.name];
    if (t.heard) {  // an earlier coordinator's: give its node the start timeout from now
      t.heard = false;
      t.assigned_ns = now;
    }
    if (t.seq == 0) {
      if (t.unplaced_ns == 0) t.unplaced_ns = now;
      const bool home_here = std::any_of(g.home.begin(), g.home.end(), [&](uint16_t h) { return member(h); });
      if (!g.home.empty() && !home_here && now - t.unplaced_ns < uint64_t{g.start_timeout_ms} * 1'000'000)
        continue;  // its home may be coming up
      place(g, t, Why::kStart, home_here || g.home.empty() ? "first start" : "first start (no home node in the view)",
            now, members, reports, std::nullopt, taken, out);
      continue;
    }
    const GroupRun* run = nullptr;
    if (member(t.node))
      if (auto it = reports.find(t.node); it != reports.end())
        for (const auto& r : it->second.runs)
          if (r.group == g.name && r.seq == t.seq) run = &r;
    const uint64_t timeout = uint64_t{g.start_timeout_ms} * 1'000'000;
    const bool in_time = t.assigned_ns != 0 && now - t.assigned_ns < timeout;
    if (run == nullptr) {
      if (member(t.node) && (in_time || t.assigned_ns == 0)) {
        if (t.assigned_ns == 0) t.assigned_ns = now;  // learnt without a report: wait for one
        taken[t.node].push_back(&g);
        continue;
      }
      std::string reason;
      if (member(t.node)) {
        t.tried.insert(t.node);
        reason = node_str(t.node) + " did not take it up within " + std::to_string(g.start_timeout_ms) + " ms";
      } else {
        reason = node_str(t.node) + " left the view";
      }
      place(g, t, Why::kFailure, reason, now, members, reports, std::nullopt, taken, out);
      continue;
    }
    switch (run->state) {
      case RunState::kRunning:
        // A failover ends once the group has run a start timeout long: one
        // that dies at once keeps its failed nodes out of the next try.
        if (t.running_ns == 0) t.running_ns = now;
        if (now - t.running_ns >= timeout) t.tried.clear();
        t.stuck.clear();
        t.stuck_ns = 0;
        t.slow_said = false;
        taken[t.node].push_back(&g);
        break;
      case RunState::kStarting:
        if (t.assigned_ns == 0) t.assigned_ns = now;
        if (now - t.assigned_ns < timeout) {
          taken[t.node].push_back(&g);
          break;
        }
        t.tried.insert(t.node);
        place(g, t, Why::kFailure,
              node_str(t.node) + " did not start it within " + std::to_string(g.start_timeout_ms) + " ms", now,
              members, reports, std::nullopt, taken, out);
        break;
      case RunState::kSlow:
        taken[t.node].push_back(&g);
        if (on_performance(g)) {
          char above[32];
          std::snprintf(above, sizeof above, "%g", g.slow_above);
          place(g, t, Why::kPerformance,
                (g.metric.empty() ? "probe slower than " + std::to_string(g.slow_ms) + " ms"
                                  : g.metric + " above " + above) +
                    " for " + std::to_string(g.slow_for_ms) + " ms on " + node_str(t.node),
                now, members, reports, t.node, taken, out);
        }
        break;
      case RunState::kFailed:
        t.tried.insert(t.node);
        if (on_failure(g)) {
          place(g, t, Why::kFailure, "failed on " + node_str(t.node) + ": " + run->why, now, members, reports,
                std::nullopt, taken, out);
        } else {
          restart_here(g, t, run->why, now, members, reports, taken, out);
        }
        break;
      case RunState::kStopped:
        place(g, t, Why::kFailure, "stopped on " + node_str(t.node) + ": " + run->why, now, members, reports,
              std::nullopt, taken, out);
        break;
    }
  }
}

void Coordinator::restart_here(const ServiceGroup& g, Track& t, const std::string& why, uint64_t now,
                               std::span<const uint16_t> members, const std::map<uint16_t, NodeReport>& reports,
                               Given& taken, Out& out) {
  // Where it failed, unless that node took work of the same or higher
  // priority since that leaves no room for it: then it moves after all.
  bool busy = false;
  if (auto it = reports.find(t.node); it != reports.end()) {
    std::vector<const ServiceGroup*> running;
    const bool known = running_on(it->second, g, groups_, taken, running);
    const auto stop = make_room(it->second.caps, g, running);
    busy = !known || !stop ||
           std::any_of(stop->begin(), stop->end(), [&](const ServiceGroup* o) { return o->priority >= g.priority; });
  }
  if (busy) {
    place(g, t, Why::kFailure, "failed on " + node_str(t.node) + " (" + why + "), which runs other work now", now,
          members, reports, std::nullopt, taken, out);
    return;
  }
  taken[t.node].push_back(&g);
  // Not faster than once a start timeout: a node whose every start fails
  // is not hammered.
  if (t.assigned_ns != 0 && now - t.assigned_ns < uint64_t{g.start_timeout_ms} * 1'000'000) return;
  t.seq = std::max(t.seq + 1, floor_);
  t.assigned_ns = now;
  t.running_ns = 0;
  std::string text = "group " + g.name + " restarts on " + node_str(t.node) + " (assignment " + std::to_string(t.seq) +
                     "): it failed there (" + why + ") and fails over on performance only";
  t.reason = text;
  out.assign.push_back(Assignment{g.name, t.node, t.seq, self_, text});
  out.events.push_back(std::move(text));
}

void Coordinator::place(const ServiceGroup& g, Track& t, Why why, const std::string& reason, uint64_t now,
                        std::span<const uint16_t> members, const std::map<uint16_t, NodeReport>& reports,
                        std::optional<uint16_t> current, Given& taken, Out& out) {
  std::set<uint16_t> holders;
  if (why == Why::kFailure && holders_) holders = holders_(g);
  Choice c = choose(g, why, members, reports, groups_, hash_, t.tried, current, taken, holders);
  // At a dead end for a start timeout: the nodes that failed get another try (S21).
  if (!c.node && !t.tried.empty() && t.stuck_ns != 0 &&
      now - t.stuck_ns >= uint64_t{g.start_timeout_ms} * 1'000'000) {
    t.tried.clear();
    c = choose(g, why, members, reports, groups_, hash_, t.tried, current, taken, holders);
  }
  if (!c.node) {
    if (why == Why::kPerformance) {
      if (!t.slow_said)
        out.events.push_back("group " + g.name + " stays on " + node_str(*current) + " (" + reason +
                             "): no eligible node with better capabilities (" + c.to_string() + ")");
      t.slow_said = true;
      return;
    }
    if (t.stuck == reason) return;  // said already
    // The same assignment failing again in other words (its start timed
    // out, then its node reported why) is the same dead end, until the
    // failed nodes' next try.
    if (!t.stuck.empty() && t.stuck_seq == t.seq && now - t.stuck_ns < uint64_t{g.start_timeout_ms} * 1'000'000)
      return;
    t.stuck = reason;
    t.stuck_ns = now;
    t.stuck_seq = t.seq;
    out.events.push_back("group " + g.name + ": " + reason + "; no eligible node (" + c.to_string() + ")");
    if (why == Why::kFailure) out.alerts.push_back(Alert{g.name, reason + "; no eligible node"});
    return;
  }
  t.seq = std::max(t.seq + 1, floor_);
  t.node = *c.node;
  t.assigned_ns = now;
  t.running_ns = 0;
  t.why = why;
  t.stuck.clear();
  t.stuck_ns = 0;
  t.slow_said = false;
  taken[t.node].push_back(&g);
  const char* kind = why == Why::kStart ? "start" : why == Why::kFailure ? "failover" : "performance move";
  const bool standby = std::find(g.standby.begin(), g.standby.end(), t.node) != g.standby.end();
  const bool holds = !standby && holders.count(t.node) != 0;
  std::string text = "group " + g.name + " -> " + node_str(t.node) + (standby ? " (hot standby, " : " (") + kind +
                     (holds ? ", holds its state" : "") + ", assignment " + std::to_string(t.seq) + "): " + reason;
  if (!c.rejected.empty()) text += "; passed over: " + c.to_string();
  t.reason = text;
  out.assign.push_back(Assignment{g.name, t.node, t.seq, self_, text});
  out.events.push_back(std::move(text));
}

}  // namespace baton::failover
