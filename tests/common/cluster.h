#pragma once
// N engines in one process, fully meshed by loopback links: the fake
// backplane for engine tests (real engines, real worker threads).

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
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

inline std::vector<std::byte> copy_of(std::span<std::byte> s) { return {s.begin(), s.end()}; }

/// The test suites share two cores with each other (and CI with whatever
/// else runs): a 50 ms silence is then a scheduling hiccup, not a death, and
/// sanitizer builds run several times slower still. These tests are about
/// *what* the detector and the engine decide, not how fast (bench/ measures
/// that), so every detector here waits at least this long.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr uint32_t kMinFailureTimeoutUs = 400'000;
/// How much longer a test waits for network rounds (query_timeout_ms) in
/// a sanitizer build, where seven engines on two cores stall for a second.
inline constexpr uint32_t kSanitizerPatience = 4;
#else
inline constexpr uint32_t kMinFailureTimeoutUs = 200'000;
inline constexpr uint32_t kSanitizerPatience = 1;
#endif

struct Cluster {
  std::vector<std::unique_ptr<Engine>> engines;          // engines[i] is node i+1
  std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>> wires;
  std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>> second_wires;  ///< with two links per pair
  /// With several shards (base.workers): shard_wires[k - 1] joins the
  /// pairs' shard k (a queue pair of its own); `wires` is shard 0's.
  std::vector<std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>>> shard_wires;

  /// `tweak(node, config)` adjusts one node's config (placement tags, ...).
  /// `links_per_pair` 2: every pair is joined by two links (two backplanes).
  explicit Cluster(int n, EngineConfig base = {}, uint32_t max_frame = 16384,
                   const std::function<void(int, EngineConfig&)>& tweak = {}, int links_per_pair = 1) {
    const size_t shards = std::max<size_t>(1, base.workers.size());
    shard_wires.resize(shards - 1);
    std::vector<std::vector<std::vector<std::unique_ptr<Link>>>> links(n);
    for (auto& l : links) l.resize(shards);
    for (int a = 0; a < n; ++a)
      for (int b = a + 1; b < n; ++b) {
        for (size_t k = 0; k < shards; ++k) {
          auto p = loopback::make_pair(a + 1, b + 1, max_frame, 1024, 1000 + a * 31 + b + 7919 * k);
          links[a][k].push_back(std::move(p.a));
          links[b][k].push_back(std::move(p.b));
          (k == 0 ? wires : shard_wires[k - 1])[{a + 1, b + 1}] = p.wire;
        }
        if (links_per_pair > 1) {
          auto q = loopback::make_pair(a + 1, b + 1, max_frame, 1024, 5000 + a * 31 + b);
          links[a][0].push_back(std::move(q.a));
          links[b][0].push_back(std::move(q.b));
          second_wires[{a + 1, b + 1}] = q.wire;
        }
      }
    base.idle = IdlePolicy::kAdaptive;
    base.failure_timeout_us = std::max(base.failure_timeout_us, kMinFailureTimeoutUs);
    for (int i = 0; i < n; ++i) {
      EngineConfig c = base;
      c.node_id = static_cast<uint16_t>(i + 1);
      if (tweak) tweak(i + 1, c);
      configs.push_back(c);
      auto e = Engine::start_sharded(c, std::move(links[i]));
      if (!e) throw std::runtime_error(e.error().to_string());
      engines.push_back(std::move(*e));
    }
    // Every test starts from a formed chassis: each node sees all n, they
    // agree, and each has every peer's set records (a loaded machine may
    // take a while to exchange heartbeats). Without the records a node
    // refuses new names for fresh_start_wait_ms when a test cuts a peer off
    // right away: a CI run under ASan did, in AJoiningNodeFillsAnEmptySlot.
    const auto formed = [&] {
      for (auto& e : engines) {
        const View v = e->view();
        if (v.members.size() != engines.size() || !v.agreed) return false;
        for (const PeerStatus& p : e->peers())
          if (!p.records_had) return false;
      }
      return true;
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!formed()) {
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("the cluster did not form in 10 s: node 1 sees " + engines[0]->view().to_string());
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  Engine& node(int id) { return *engines.at(id - 1); }
  /// Every live node's events, for a failing assertion's message.
  std::string events() {
    std::string s;
    for (size_t i = 0; i < engines.size(); ++i)
      if (engines[i])
        for (const auto& e : engines[i]->events()) s += "\n  node " + std::to_string(i + 1) + ": " + e.text;
    return s;
  }
  loopback::Wire& wire(int a, int b) { return *wires.at({std::min(a, b), std::max(a, b)}); }
  loopback::Wire& second_wire(int a, int b) { return *second_wires.at({std::min(a, b), std::max(a, b)}); }
  void set_all_faults(const loopback::Faults& f) {
    for (auto& [k, w] : wires) w->set_faults(f);
    for (auto& ws : shard_wires)
      for (auto& [k, w] : ws) w->set_faults(f);
  }
  /// Cuts node `id` off from every other node.
  void isolate(int id, bool cut) {
    for (auto* ws : all_wires())
      for (auto& [k, w] : *ws)
        if (k.first == id || k.second == id) w->set_partitioned(cut);
  }
  std::vector<std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>>*> all_wires() {
    std::vector<std::map<std::pair<int, int>, std::shared_ptr<loopback::Wire>>*> all{&wires, &second_wires};
    for (auto& ws : shard_wires) all.push_back(&ws);
    return all;
  }
  /// Stops node `id`'s engine (its memory and replicas are gone).
  void kill(int id) { engines.at(id - 1).reset(); }
  /// Starts node `id` again after kill(): a new incarnation on the same
  /// wires, holding nothing. Returns at once; the peers notice it by its
  /// heartbeats.
  Engine& restart(int id) {
    std::vector<std::vector<std::unique_ptr<Link>>> links(1 + shard_wires.size());
    for (auto* ws : {&wires, &second_wires})
      for (auto& [k, w] : *ws)
        if (k.first == id || k.second == id) links[0].push_back(w->reconnect(static_cast<uint16_t>(id)));
    for (size_t s = 0; s < shard_wires.size(); ++s)
      for (auto& [k, w] : shard_wires[s])
        if (k.first == id || k.second == id) links[s + 1].push_back(w->reconnect(static_cast<uint16_t>(id)));
    auto e = Engine::start_sharded(configs.at(id - 1), std::move(links));
    if (!e) throw std::runtime_error(e.error().to_string());
    engines.at(id - 1) = std::move(*e);
    return node(id);
  }
  std::vector<EngineConfig> configs;  ///< configs[i] is node i+1's
};

/// Heartbeats every millisecond, a short failure timeout (raised to
/// kMinFailureTimeoutUs by Cluster); a query that waited for the dead would
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

inline uint64_t unix_us_now() {
  using namespace std::chrono;
  return static_cast<uint64_t>(duration_cast<microseconds>(system_clock::now().time_since_epoch()).count());
}

/// Whether `e` recorded an event containing `text` (at or after `since`, in
/// the events' own clock: unix microseconds).
inline bool has_event(Engine& e, const std::string& text, uint64_t since_unix_us = 0) {
  for (const auto& ev : e.events())
    if (ev.unix_us >= since_unix_us && ev.text.find(text) != std::string::npos) return true;
  return false;
}

/// The /proc/self/fd paths of this process's memfds labelled exactly
/// `label` (LocalStorage names them "baton:LABEL": a segment NAME, its
/// stages NAME@stage, a replica's slots NAME@replica).
inline std::vector<std::string> memfds_labelled(const std::string& label) {
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target == "/memfd:baton:" + label + " (deleted)") found.push_back(e.path().string());
  }
  return found;
}

/// Polls `cond` for up to 10 s (the detector decides within its timeout; the
/// slack is for a loaded two-core machine, not a speed claim).
template <typename F>
bool eventually(F cond, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  do {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  } while (std::chrono::steady_clock::now() < end);
  return false;
}

}  // namespace baton::test
