// A deterministic simulation of failover decisions (failover_sim.h).

#include "failover_sim.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <vector>

#include "failover/coordinator.h"

namespace baton::failover::sim {

namespace {

constexpr uint64_t kStepNs = 50'000'000;


struct Run {
  uint64_t seq = 0;
  RunState state = RunState::kStarting;
  uint64_t ready_step = 0;  ///< starting: when it runs (or fails, on a broken node)
};

struct Node {
  uint16_t id = 0;
  NodeCaps caps;
  bool alive = true;
  bool broken = false;  ///< its provision hook fails
  bool slow = false;    ///< groups that run here turn slow
  std::map<std::string, Run> runs;
  std::map<std::string, uint64_t> latest;
  std::map<std::string, std::set<uint16_t>> holders;  ///< what its records say of each group's state
  std::unique_ptr<Coordinator> coord;
};

class World {
 public:
  World(uint64_t seed, const Options& o) : rng_(seed), o_(o) {
    const int n = o.nodes > 0 ? o.nodes : 3 + static_cast<int>(rng_() % 4);
    const std::vector<std::string> tags = {"nic=fast", "gpu"};
    const int ngroups = 1 + static_cast<int>(rng_() % 3);
    for (int i = 0; i < ngroups; ++i) {
      ServiceGroup g;
      g.name = "g" + std::to_string(i + 1);
      g.start = "x";
      g.priority = static_cast<int32_t>(rng_() % 3) * 5;
      g.min_cores = static_cast<uint32_t>(rng_() % 3) * 2;
      // Those that declare minimums share a node by capacity; the others run alone.
      if (g.min_cores != 0 && rng_() % 2 == 0) g.min_memory_mib = 512u << (rng_() % 3);
      if (rng_() % 4 == 0) g.tags = {tags[rng_() % tags.size()]};
      if (rng_() % 3 == 0) g.home = {static_cast<uint16_t>(1 + rng_() % n)};
      if (rng_() % 3 == 0) g.standby = {static_cast<uint16_t>(1 + rng_() % n)};  // a hot standby: failovers go there first
      g.failover_on = static_cast<ServiceGroup::On>(rng_() % 3);
      g.probe = "p";
      g.slow_ms = rng_() % 2 == 0 ? 100 : 0;
      g.start_timeout_ms = 1000;
      groups_.push_back(g);
    }
    hash_ = groups_hash(groups_);
    for (int i = 1; i <= n; ++i) {
      Node& x = nodes_.emplace_back();
      x.id = static_cast<uint16_t>(i);
      x.caps.cores = 1u << (rng_() % 4);
      x.caps.memory_mib = 1024u << (rng_() % 3);
      for (const auto& t : tags)
        if (rng_() % 3 == 0) x.caps.tags.push_back(t);
      x.caps.spare = rng_() % 3 == 0;
      x.coord = std::make_unique<Coordinator>(x.id, groups_);
      give_holders(x);
    }
    log("world: " + std::to_string(n) + " nodes, " + std::to_string(ngroups) + " groups");
    for (const auto& g : groups_)
      log("  " + g.name + " priority " + std::to_string(g.priority) + " min_cores " + std::to_string(g.min_cores) +
          " min_mib " + std::to_string(g.min_memory_mib) +
          (g.tags.empty() ? "" : " tag " + g.tags[0]) + (g.home.empty() ? "" : " home " + std::to_string(g.home[0])) +
          (g.standby.empty() ? "" : " standby " + std::to_string(g.standby[0])) +
          " on " + std::to_string(int(g.failover_on)) + (g.slow_ms ? " perf" : ""));
    for (const auto& x : nodes_)
      log("  node " + std::to_string(x.id) + " cores " + std::to_string(x.caps.cores) + " mib " +
          std::to_string(x.caps.memory_mib) +
          (x.caps.spare ? " spare" : "") + (x.caps.tags.empty() ? "" : " tags " + x.caps.tags[0]));
  }

  std::optional<std::string> run(Stats* stats) {
    for (step_ = 1; step_ <= static_cast<uint64_t>(o_.steps); ++step_) {
      fault();
      if (auto f = tick()) return failure(*f);
    }
    // The quiet spell: everything healed, no faults.
    log("quiet: every node back, nothing broken or slow");
    for (auto& x : nodes_) {
      if (!x.alive) restart(x);
      x.broken = x.slow = false;
    }
    loss_ = 0;
    const uint64_t end = step_ + 300;
    for (; step_ <= end; ++step_)
      if (auto f = tick()) return failure(*f);
    if (auto f = settled()) return failure(*f);
    if (stats != nullptr) {
      stats->assignments += assignments_;
      stats->failovers += failovers_;
      stats->performance_moves += perf_;
      stats->alerts += alerts_;
      stats->kills += kills_;
      stats->crashes += crashes_;
      stats->packed += packed_;
    }
    return std::nullopt;
  }

 private:
  uint64_t r(uint64_t n) { return rng_() % n; }
  void log(std::string s) {
    if (o_.print) std::printf("%6llu %s\n", static_cast<unsigned long long>(step_), s.c_str());
    schedule_.push_back(std::to_string(step_) + " " + std::move(s));
    if (schedule_.size() > 400) schedule_.erase(schedule_.begin());
  }
  std::string failure(const std::string& what) {
    std::string s = "invariant failed at step " + std::to_string(step_) + ": " + what + "\nlast of the schedule:\n";
    for (const auto& l : schedule_) s += "  " + l + "\n";
    return s;
  }
  Node& node(uint16_t id) { return nodes_[id - 1]; }
  const ServiceGroup& group(const std::string& name) const {
    return *std::find_if(groups_.begin(), groups_.end(), [&](const ServiceGroup& g) { return g.name == name; });
  }

  void restart(Node& x) {
    x.alive = true;
    x.runs.clear();
    x.latest.clear();
    x.coord = std::make_unique<Coordinator>(x.id, groups_);  // a new incarnation knows nothing
    give_holders(x);
    log("node " + std::to_string(x.id) + " restarts");
  }

  void fault() {
    const uint64_t k = r(100);
    Node& x = nodes_[r(nodes_.size())];
    if (k < 3) {
      if (x.alive) {
        x.alive = false;
        x.runs.clear();
        ++kills_;
        log("node " + std::to_string(x.id) + " killed");
      } else {
        restart(x);
      }
    } else if (k < 7 && x.alive) {
      for (auto& [g, run] : x.runs)
        if (run.state == RunState::kRunning || run.state == RunState::kSlow) {
          run.state = RunState::kFailed;
          ++crashes_;
          log(g + " crashes on node " + std::to_string(x.id));
        }
    } else if (k < 9) {
      x.broken = !x.broken;
      log("node " + std::to_string(x.id) + (x.broken ? " breaks (hooks fail)" : " mended"));
    } else if (k < 11) {
      x.slow = !x.slow;
      log("node " + std::to_string(x.id) + (x.slow ? " turns slow" : " is fast again"));
    } else if (k < 12) {
      loss_ = r(4) == 0 ? 50 : 0;
      log(std::string("notes ") + (loss_ ? "lost half the time" : "arrive"));
    } else if (k < 15) {
      // Where a group's state is, as a node's records say (a hint to the
      // choice only: a stale or wrong one must not break an invariant).
      const ServiceGroup& g = groups_[r(groups_.size())];
      std::set<uint16_t> holders;
      for (const auto& y : nodes_)
        if (r(3) == 0) holders.insert(y.id);
      x.holders[g.name] = holders;
      std::string list;
      for (uint16_t n : holders) list += " " + std::to_string(n);
      log("node " + std::to_string(x.id) + " records " + g.name + " held by" + (list.empty() ? " none" : list));
    }
  }

  /// The coordinator at `x` asks `x`'s own idea of where each group's state is.
  void give_holders(Node& x) {
    x.holders.clear();
    x.coord->set_holders([this, id = x.id](const ServiceGroup& g) {
      const auto& held = node(id).holders;
      auto it = held.find(g.name);
      return it == held.end() ? std::set<uint16_t>{} : it->second;
    });
  }

  /// One node hears an assignment (Runner::assigned, modelled).
  void hear(Node& x, const Assignment& a) {
    if (!x.alive) return;
    x.coord->heard(a);
    uint64_t& latest = x.latest[a.group];
    if (a.seq <= latest) return;
    latest = a.seq;
    if (a.node != x.id) {
      auto it = x.runs.find(a.group);
      if (it != x.runs.end() && works(it->second.state)) it->second.state = RunState::kStopped;
      return;
    }
    // Room for it (Runner::assigned): what make_room names stops.
    std::vector<const ServiceGroup*> running;
    for (auto& [g, run] : x.runs)
      if (g != a.group && works(run.state)) running.push_back(&group(g));
    const auto room = make_room(x.caps, group(a.group), running);
    for (auto& [g, run] : x.runs)
      if (g != a.group && works(run.state) &&
          (!room || std::find(room->begin(), room->end(), &group(g)) != room->end()))
        run.state = RunState::kStopped;
    // Some starts take longer than the start timeout (20 steps).
    x.runs[a.group] = Run{a.seq, RunState::kStarting, step_ + 1 + r(r(8) == 0 ? 40 : 6)};
  }

  std::optional<std::string> tick() {
    // Runners: starts finish or fail; slow nodes make groups slow.
    for (auto& x : nodes_) {
      if (!x.alive) continue;
      for (auto& [g, run] : x.runs) {
        if (run.state == RunState::kStarting && step_ >= run.ready_step)
          run.state = x.broken ? RunState::kFailed : RunState::kRunning;
        if (run.state == RunState::kRunning && x.slow && group(g).slow_ms > 0) run.state = RunState::kSlow;
        if (run.state == RunState::kSlow && !x.slow) run.state = RunState::kRunning;
      }
    }
    // Reports, as the coordinator sees them (some a step stale under loss).
    std::vector<uint16_t> members;
    std::map<uint16_t, NodeReport> reports;
    for (auto& x : nodes_) {
      if (!x.alive) continue;
      members.push_back(x.id);
      NodeReport rep{x.id, hash_, x.caps, {}};
      for (const auto& [g, run] : x.runs) rep.runs.push_back(GroupRun{g, run.seq, run.state, "modelled"});
      if (loss_ && r(100) < loss_ && last_reports_.count(x.id)) reports[x.id] = last_reports_[x.id];
      else reports[x.id] = rep;
    }
    last_reports_ = reports;
    if (members.size() * 2 <= nodes_.size()) return check();  // no quorum: nobody decides
    Node& c = node(members.front());
    Coordinator::Out out;
    c.coord->step(step_ * kStepNs, step_ * (kStepNs / 1'000'000), members, reports, out);
    for (const auto& e : out.events) {
      log("coordinator " + std::to_string(c.id) + ": " + e);
      if (e.find("(performance move") != std::string::npos) ++perf_;
    }
    alerts_ += out.alerts.size();
    for (const Assignment& a : out.assign) {
      if (auto f = assigned(a, members, reports)) return f;
      for (auto& x : nodes_)
        if (x.id == c.id || !loss_ || r(100) >= loss_) hear(x, a);
    }
    if (step_ % 20 == 0)  // the coordinator repeats its assignments every second
      for (const Assignment& a : c.coord->current())
        for (auto& x : nodes_)
          if (!loss_ || r(100) >= loss_) hear(x, a);
    return check();
  }

  std::optional<std::string> assigned(const Assignment& a, const std::vector<uint16_t>& members,
                                      const std::map<uint16_t, NodeReport>& reports) {
    ++assignments_;
    auto [it, fresh] = numbered_.emplace(std::make_pair(a.group, a.seq), a.node);
    if (!fresh && it->second != a.node)
      return "F1: " + a.group + " assignment " + std::to_string(a.seq) + " named node " +
             std::to_string(it->second) + " and now node " + std::to_string(a.node);
    const ServiceGroup& g = group(a.group);
    if (!std::binary_search(members.begin(), members.end(), a.node))
      return "F2: " + a.group + " assigned to node " + std::to_string(a.node) + ", which is not in the view";
    const NodeReport& rep = reports.at(a.node);
    if (rep.caps.cores < g.min_cores || rep.caps.memory_mib < g.min_memory_mib ||
        std::any_of(g.tags.begin(), g.tags.end(), [&](const std::string& t) {
          return std::find(rep.caps.tags.begin(), rep.caps.tags.end(), t) == rep.caps.tags.end();
        }))
      return "F2: " + a.group + " assigned to node " + std::to_string(a.node) + ", which does not qualify";
    // What it reported working must make room only by stopping lower-priority work.
    std::vector<const ServiceGroup*> running;
    for (const auto& run : rep.runs)
      if (run.group != a.group && works(run.state)) running.push_back(&group(run.group));
    if (const auto stop = make_room(rep.caps, g, running)) {
      for (const ServiceGroup* o : *stop)
        if (o->priority >= g.priority)
          return "F2: " + a.group + " assigned to node " + std::to_string(a.node) + ", which would stop " + o->name +
                 " of priority " + std::to_string(o->priority) + " for it";
      if (stop->size() < running.size()) ++packed_;
    }
    if (!placed_.insert(a.group).second) ++failovers_;
    log("assign " + a.group + " #" + std::to_string(a.seq) + " -> node " + std::to_string(a.node));
    return std::nullopt;
  }

  std::optional<std::string> check() {
    std::map<std::string, uint64_t> newest;
    for (const auto& [key, n] : numbered_) newest[key.first] = std::max(newest[key.first], key.second);
    for (const auto& x : nodes_) {
      if (!x.alive) continue;
      // What works on a node fits it: summed minimums within its
      // capabilities, and a group without minimums alone.
      int working = 0, alone = 0;
      uint64_t cores = 0, mib = 0;
      for (const auto& [g, run] : x.runs)
        if (works(run.state)) {
          ++working;
          alone += runs_alone(group(g)) ? 1 : 0;
          cores += group(g).min_cores;
          mib += group(g).min_memory_mib;
        }
      if ((alone > 0 && working > 1) || cores > x.caps.cores || mib > x.caps.memory_mib)
        return "F3: node " + std::to_string(x.id) + " (" + std::to_string(x.caps.cores) + " cores, " +
               std::to_string(x.caps.memory_mib) + " MiB) works " + std::to_string(working) + " groups (" +
               std::to_string(alone) + " that run alone) needing " + std::to_string(cores) + " cores, " +
               std::to_string(mib) + " MiB";
    }
    for (const auto& g : groups_) {
      int at_newest = 0;
      for (const auto& x : nodes_) {
        if (!x.alive) continue;
        auto it = x.runs.find(g.name);
        if (it != x.runs.end() && works(it->second.state) && it->second.seq == newest[g.name]) ++at_newest;
      }
      if (at_newest > 1) return "F3: " + std::to_string(at_newest) + " nodes work " + g.name + " at its newest assignment";
    }
    return std::nullopt;
  }

  std::optional<std::string> settled() {
    // Which node runs what now.
    std::map<uint16_t, std::vector<const ServiceGroup*>> runs_on;
    std::set<std::string> running;
    for (const auto& x : nodes_)
      for (const auto& [g, run] : x.runs)
        if (run.state == RunState::kRunning) {
          runs_on[x.id].push_back(&group(g));
          running.insert(g);
        }
    for (const auto& g : groups_) {
      if (running.count(g.name)) continue;
      for (const auto& x : nodes_) {
        const bool tagged = std::all_of(g.tags.begin(), g.tags.end(), [&](const std::string& t) {
          return std::find(x.caps.tags.begin(), x.caps.tags.end(), t) != x.caps.tags.end();
        });
        const auto stop = make_room(x.caps, g, runs_on[x.id]);
        if (!tagged || !stop) continue;
        if (std::all_of(stop->begin(), stop->end(), [&](const ServiceGroup* o) { return o->priority < g.priority; }))
          return "F4: " + g.name + " does not run, though node " + std::to_string(x.id) + " qualifies and " +
                 (runs_on[x.id].empty() ? std::string("is idle")
                  : stop->empty()       ? "has room beside what it runs"
                                        : "runs lower-priority " + stop->front()->name);
      }
    }
    return std::nullopt;
  }

  std::mt19937_64 rng_;
  Options o_;
  std::vector<ServiceGroup> groups_;
  uint64_t hash_ = 0;
  std::vector<Node> nodes_;
  std::map<std::pair<std::string, uint64_t>, uint16_t> numbered_;
  std::set<std::string> placed_;  ///< groups assigned at least once
  std::map<uint16_t, NodeReport> last_reports_;
  std::vector<std::string> schedule_;
  uint64_t step_ = 0;
  uint64_t loss_ = 0;  // percent of notes lost
  uint64_t assignments_ = 0, failovers_ = 0, perf_ = 0, alerts_ = 0, kills_ = 0, crashes_ = 0, packed_ = 0;
};

}  // namespace

std::optional<std::string> run(uint64_t seed, const Options& o, Stats* stats) {
  World w(seed, o);
  return w.run(stats);
}

}  // namespace baton::failover::sim
