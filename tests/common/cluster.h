#pragma once
// N engines in one process, fully meshed by loopback links: the fake
// backplane for engine tests (real engines, real worker threads).

#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "baton/engine.h"
#include "baton/loopback.h"

namespace baton::test {

inline void fill_pattern(std::span<std::byte> s, uint32_t seed) {
  std::mt19937 rng(seed);
  for (size_t i = 0; i + 4 <= s.size(); i += 4) {
    uint32_t v = rng();
    std::memcpy(s.data() + i, &v, 4);
  }
  for (size_t i = s.size() & ~size_t{3}; i < s.size(); ++i) s[i] = std::byte(static_cast<uint8_t>(rng()));
}

struct Cluster {
  std::vector<std::unique_ptr<Engine>> engines;          // engines[i] is node i+1
  std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>> wires;
  std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>> second_wires;  ///< with two links per pair

  /// `tweak(node, config)` adjusts one node's config (placement tags, ...).
  /// `links_per_pair` 2: every pair is joined by two links (two backplanes).
  explicit Cluster(int n, EngineConfig base = {}, uint32_t max_frame = 16384,
                   const std::function<void(int, EngineConfig&)>& tweak = {}, int links_per_pair = 1) {
    std::vector<std::vector<std::unique_ptr<Link>>> links(n);
    for (int a = 0; a < n; ++a)
      for (int b = a + 1; b < n; ++b) {
        auto p = loopback::make_pair(a + 1, b + 1, max_frame, 1024, 1000 + a * 31 + b);
        links[a].push_back(std::move(p.a));
        links[b].push_back(std::move(p.b));
        wires[{a + 1, b + 1}] = p.wire;
        if (links_per_pair > 1) {
          auto q = loopback::make_pair(a + 1, b + 1, max_frame, 1024, 5000 + a * 31 + b);
          links[a].push_back(std::move(q.a));
          links[b].push_back(std::move(q.b));
          second_wires[{a + 1, b + 1}] = q.wire;
        }
      }
    base.idle = IdlePolicy::kAdaptive;
    for (int i = 0; i < n; ++i) {
      EngineConfig c = base;
      c.node_id = static_cast<uint16_t>(i + 1);
      if (tweak) tweak(i + 1, c);
      auto e = Engine::start(c, std::move(links[i]));
      if (!e) throw std::runtime_error(e.error().to_string());
      engines.push_back(std::move(*e));
    }
  }
  Engine& node(int id) { return *engines.at(id - 1); }
  loopback::Wire& wire(int a, int b) { return *wires.at({std::min(a, b), std::max(a, b)}); }
  loopback::Wire& second_wire(int a, int b) { return *second_wires.at({std::min(a, b), std::max(a, b)}); }
  void set_all_faults(const loopback::Faults& f) {
    for (auto& [k, w] : wires) w->set_faults(f);
  }
  /// Cuts node `id` off from every other node.
  void isolate(int id, bool cut) {
    for (auto* ws : {&wires, &second_wires})
      for (auto& [k, w] : *ws)
        if (k.first == id || k.second == id) w->set_partitioned(cut);
  }
  /// Stops node `id`'s engine (its memory and replicas are gone).
  void kill(int id) { engines.at(id - 1).reset(); }
};

/// Detects a silent peer in 50 ms; a query that waited for the dead would
/// take 20 s, so a test notices.
inline EngineConfig fast_detector() {
  EngineConfig c;
  c.heartbeat_interval_us = 1000;
  c.failure_timeout_us = 50'000;
  c.query_timeout_ms = 20'000;
  return c;
}

inline bool peer_alive(Engine& e, uint16_t node) {
  for (const auto& p : e.peers())
    if (p.node == node) return p.alive;
  return false;
}

inline bool has_event(Engine& e, const std::string& text) {
  for (const auto& ev : e.events())
    if (ev.text.find(text) != std::string::npos) return true;
  return false;
}

/// Polls `cond` for up to 10 s (the detector decides within its timeout; the
/// slack is for a loaded two-core machine, not a speed claim).
template <typename F>
bool eventually(F cond) {
  for (int i = 0; i < 1000; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace baton::test
