// Service groups (failover/service_group.h).

#include "failover/service_group.h"

#include <algorithm>

namespace baton::failover {

const char* run_state_name(RunState s) noexcept {
  switch (s) {
    case RunState::kStarting: return "starting";
    case RunState::kRunning: return "running";
    case RunState::kSlow: return "slow";
    case RunState::kFailed: return "failed";
    case RunState::kStopped: return "stopped";
  }
  return "unknown";
}

uint64_t groups_hash(const std::vector<ServiceGroup>& groups) {
  std::string text;
  auto add = [&text](const std::string& s) {
    text += std::to_string(s.size());
    text += ':';
    text += s;
  };
  for (const auto& g : groups) {
    add(g.name);
    for (const auto& s : g.segments) add(s);
    add(g.start);
    add(g.probe);
    add(g.provision);
    add(g.alert);
    add(g.metric);
    add(std::to_string(g.slow_above));
    for (uint64_t v : {uint64_t{g.probe_interval_ms}, uint64_t{g.probe_timeout_ms}, uint64_t{g.slow_ms},
                       uint64_t{g.slow_for_ms}, uint64_t(g.failover_on), uint64_t(uint32_t(g.priority)),
                       uint64_t{g.min_cores}, g.min_memory_mib, uint64_t{g.start_timeout_ms}})
      add(std::to_string(v));
    for (const auto& t : g.tags) add(t);
    for (uint16_t h : g.home) add(std::to_string(h));
    add("standby");
    for (uint16_t n : g.standby) add(std::to_string(n));
    if (g.standby_instances) add("standby_instances");
    text += ';';
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::optional<std::vector<const ServiceGroup*>> make_room(const NodeCaps& caps, const ServiceGroup& g,
                                                          std::vector<const ServiceGroup*> running) {
  if (caps.cores < g.min_cores || caps.memory_mib < g.min_memory_mib) return std::nullopt;
  std::sort(running.begin(), running.end(), [](const ServiceGroup* a, const ServiceGroup* b) {
    return a->priority != b->priority ? a->priority < b->priority : a->name < b->name;
  });
  std::vector<const ServiceGroup*> stop;
  // Who has to run alone, or beside whom `g` cannot run, goes first.
  std::erase_if(running, [&](const ServiceGroup* r) {
    if (!runs_alone(g) && !runs_alone(*r)) return false;
    stop.push_back(r);
    return true;
  });
  uint64_t cores = g.min_cores, memory = g.min_memory_mib;
  for (const ServiceGroup* r : running) cores += r->min_cores, memory += r->min_memory_mib;
  for (const ServiceGroup* r : running) {
    if (cores <= caps.cores && memory <= caps.memory_mib) break;
    stop.push_back(r);
    cores -= r->min_cores;
    memory -= r->min_memory_mib;
  }
  return stop;
}

}  // namespace baton::failover
