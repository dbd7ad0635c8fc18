// Service groups (failover/service_group.h).

#include "failover/service_group.h"

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
    text += ';';
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

}  // namespace baton::failover
