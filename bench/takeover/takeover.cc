// baton-takeover: how long an ownership move takes inside one process, on
// loopback links (no device, no wire time): three engines, one 4 KiB
// segment with two replicas, and `load` alternating between two nodes, so
// every load is a query round, a claim round and a copy. What it measures is
// the engine's own overhead per move (thread hand-offs, rounds, wake-ups);
// beside it, the same run measures a futex ping-pong between two threads,
// the floor of any design that hands work to another thread and back.
//
// Usage: baton-takeover [--moves N]   (prints a JSON line)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "baton/engine.h"
#include "baton/loopback.h"
#include "runtime/futex.h"
#include "../stats.h"

namespace {

using baton::bench::median;
using baton::bench::pct;

// One round trip between two threads through a futex each way, in us.
std::vector<double> ping_pong(int n) {
  std::atomic<uint32_t> ping{0}, pong{0};
  std::thread t([&] {
    for (uint32_t i = 1; i <= static_cast<uint32_t>(n); ++i) {
      while (ping.load() < i) baton::futex_wait(ping, i - 1, 1'000'000);
      pong.store(i);
      baton::futex_wake_all(pong);
    }
  });
  std::vector<double> us;
  for (uint32_t i = 1; i <= static_cast<uint32_t>(n); ++i) {
    const uint64_t t0 = baton::now_ns();
    ping.store(i);
    baton::futex_wake_all(ping);
    while (pong.load() < i) baton::futex_wait(pong, i - 1, 1'000'000);
    us.push_back((baton::now_ns() - t0) / 1e3);
  }
  t.join();
  return us;
}

}  // namespace

int main(int argc, char** argv) {
  int moves = 200;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--moves" && i + 1 < argc) moves = std::atoi(argv[++i]);
  constexpr int kNodes = 3;
  std::vector<std::vector<std::unique_ptr<baton::Link>>> links(kNodes);
  for (int a = 0; a < kNodes; ++a)
    for (int b = a + 1; b < kNodes; ++b) {
      auto p = baton::loopback::make_pair(a + 1, b + 1);
      links[a].push_back(std::move(p.a));
      links[b].push_back(std::move(p.b));
    }
  std::vector<std::unique_ptr<baton::Engine>> engines;
  for (int i = 0; i < kNodes; ++i) {
    baton::EngineConfig c;
    c.node_id = static_cast<uint16_t>(i + 1);
    c.replication_factor = 2;
    auto e = baton::Engine::start(c, std::move(links[i]));
    if (!e) {
      std::fprintf(stderr, "baton-takeover: %s\n", e.error().to_string().c_str());
      return 1;
    }
    engines.push_back(std::move(*e));
  }
  for (int tries = 0; engines[0]->view().members.size() < kNodes || !engines[0]->view().agreed; ++tries) {
    if (tries > 1000) return std::fprintf(stderr, "baton-takeover: no view\n"), 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto seg = engines[0]->create("moving", 4096);
  if (!seg) return std::fprintf(stderr, "baton-takeover: %s\n", seg.error().to_string().c_str()), 1;
  std::memset(engines[0]->data(*seg).data(), 7, 4096);
  auto g = engines[0]->commit(*seg);
  if (!g || !engines[0]->wait_replicated(*seg, *g, baton::kDurable, std::chrono::seconds(10)))
    return std::fprintf(stderr, "baton-takeover: not durable\n"), 1;
  baton::Segment* held = *seg;
  int owner = 0;
  std::vector<double> move_us, pp_us;
  for (int i = 0; i < moves; ++i) {
    // The next owner: another node (a replica, so the copy is local or one hop).
    const int next = (owner + 1 + i % 2) % kNodes;
    const uint64_t t0 = baton::now_ns();
    auto r = engines[next]->load("moving");
    const uint64_t t1 = baton::now_ns();
    if (!r) return std::fprintf(stderr, "baton-takeover: move %d: %s\n", i, r.error().to_string().c_str()), 1;
    (void)engines[owner]->close(held);  // fenced: closing frees it
    held = r->segment;
    owner = next;
    move_us.push_back((t1 - t0) / 1e3);
    // Commit once on the new owner, so the next move copies a fresh generation.
    auto c = engines[owner]->commit(held);
    if (!c || !engines[owner]->wait_replicated(held, *c, baton::kDurable, std::chrono::seconds(10)))
      return std::fprintf(stderr, "baton-takeover: commit after move %d failed\n", i), 1;
    auto pp = ping_pong(20);
    pp_us.insert(pp_us.end(), pp.begin(), pp.end());
  }
  std::printf("{\"moves\": %d, \"move_p50_us\": %.1f, \"move_p99_us\": %.1f, \"futex_pingpong_p50_us\": %.1f, "
              "\"ratio_p50\": %.1f}\n",
              moves, median(move_us), pct(move_us, 0.99), median(pp_us), median(move_us) / median(pp_us));
  return 0;
}
