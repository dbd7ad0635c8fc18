// baton-shards: two segments committing at once, on an engine of one shard
// and on one of two (issue #11: per-core shards), over real DPDK ports
// (net_ring, one queue pair per shard) between two nodes in this process.
//
// Two application threads each commit their own segment and wait for its
// replica, `--iters` times per round. With one shard both segments share
// one poll token, one worker and one queue pair; with two, each has its
// own. Rounds alternate one shard / two shards / the baseline, so a noisy
// neighbour hits all three alike.
//
// Baseline (no engine): the same bytes moved by two threads at once, each
// on its own net_ring queue pair: the segment in frames of one chunk, and
// a 64-byte ack back once all arrived, the receiving side served by one
// thread polling both queues. That is what the two flows cost the driver and the
// cores alone; the engine's ratio to it is the figure to quote.
//
// Usage: baton-shards [--rounds N] [--iters N] [--kib N] [--spin]   (JSON lines and a table)
//   --spin: workers never sleep (dedicated cores: on a 2-core machine the
//           spinning workers of two nodes crowd out the applications)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../stats.h"
#include "baton/engine.h"
#include "baton/ethdev.h"
#include "common/log.h"
#include "runtime/futex.h"

namespace {

using baton::Engine;
using baton::EngineConfig;
using baton::Link;
using baton::bench::median;
using baton::bench::pct;

constexpr uint32_t kChunk = 16384;

struct Figures {
  double per_s = 0;          ///< commits (or exchanges) per second, both threads together
  std::vector<double> us;    ///< each one's latency
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "baton-shards: %s\n", what.c_str());
  std::exit(1);
}

/// Two nodes of `shards` shards joined by one net_ring port pair with a
/// queue pair per shard; two threads commit a segment each.
Figures engines(int shards, uint64_t bytes, int iters, bool spin) {
  auto ports = baton::ethdev::ring_pair_queues(1, 2, static_cast<uint16_t>(shards));
  if (!ports) die(ports.error().to_string());
  std::vector<std::unique_ptr<Engine>> nodes;
  for (uint16_t n : {1, 2}) {
    EngineConfig c;
    c.node_id = n;
    c.replication_factor = 1;
    c.idle = spin ? baton::IdlePolicy::kSpin : baton::IdlePolicy::kAdaptive;
    c.track_writes = false;  // the threads rewrite everything: no scan
    c.workers.assign(static_cast<size_t>(shards), -1);
    std::vector<std::vector<std::unique_ptr<Link>>> links(static_cast<size_t>(shards));
    auto& mine = n == 1 ? ports->first : ports->second;
    for (int k = 0; k < shards; ++k) links[static_cast<size_t>(k)].push_back(std::move(mine[static_cast<size_t>(k)]));
    auto e = Engine::start_sharded(c, std::move(links));
    if (!e) die(e.error().to_string());
    nodes.push_back(std::move(*e));
  }
  while (nodes[0]->view().members.size() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // Segment t in shard t (or both in the one shard).
  std::vector<std::string> names;
  for (int i = 0; names.size() < 2; ++i) {
    std::string name = "shards-bench-" + std::to_string(i);
    if (nodes[0]->shard_of(name) == (shards == 1 ? 0 : names.size())) names.push_back(name);
  }
  std::vector<baton::Segment*> segs;
  for (const auto& name : names) {
    auto s = nodes[0]->create(name, bytes);
    if (!s) die(s.error().to_string());
    segs.push_back(*s);
  }
  std::vector<std::vector<double>> us(2);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  auto app = [&](int t) {
    Engine& e = *nodes[0];
    auto mem = e.data(segs[static_cast<size_t>(t)]);
    ++ready;
    while (!go.load()) std::this_thread::yield();
    for (int i = 0; i < iters; ++i) {
      std::memset(mem.data(), i + t, mem.size());
      const uint64_t t0 = baton::now_ns();
      auto g = e.commit(segs[static_cast<size_t>(t)]);
      if (!g || !e.wait_replicated(segs[static_cast<size_t>(t)], *g, 1, std::chrono::seconds(30)))
        die("a commit failed");
      us[static_cast<size_t>(t)].push_back((baton::now_ns() - t0) / 1e3);
    }
  };
  std::thread a(app, 0), b(app, 1);
  while (ready.load() < 2) std::this_thread::yield();
  const uint64_t t0 = baton::now_ns();
  go = true;
  a.join();
  b.join();
  const double s = (baton::now_ns() - t0) / 1e9;
  Figures f;
  f.per_s = 2.0 * iters / s;
  f.us = us[0];
  f.us.insert(f.us.end(), us[1].begin(), us[1].end());
  return f;
}

/// The baseline: two threads, each on its own queue pair, send `bytes` in
/// chunk frames and wait for a 64-byte ack; a thread per queue on the other
/// port receives and acks.
Figures raw(uint64_t bytes, int iters) {
  auto ports = baton::ethdev::ring_pair_queues(1, 2, 2);
  if (!ports) die(ports.error().to_string());
  const uint32_t frames = static_cast<uint32_t>((bytes + kChunk - 1) / kChunk);
  std::atomic<bool> stop{false};
  // One receiving thread serves both queues, as the other node's one
  // worker would (a thread per queue would be four spinning threads on
  // two cores).
  auto receiver = [&](Link& l0, Link& l1) {
    std::byte ack[64] = {};
    uint32_t got[2] = {0, 0};
    Link* ls[2] = {&l0, &l1};
    while (!stop.load(std::memory_order_relaxed))
      for (int q = 0; q < 2; ++q) {
        baton::RxFrame rx[32];
        const uint16_t n = ls[q]->rx_burst(rx, 32);
        ls[q]->release_rx(rx, n);
        got[q] += n;
        if (got[q] >= frames) {
          got[q] -= frames;
          baton::TxFrame tx{{ack, sizeof ack}, {}};
          while (ls[q]->tx_burst(&tx, 1) != 1) {
          }
        }
      }
  };
  std::vector<std::vector<double>> us(2);
  auto sender = [&](Link& l, int t) {
    std::vector<std::byte> src(bytes, std::byte{1}), head(80);
    for (int i = 0; i < iters; ++i) {
      const uint64_t t0 = baton::now_ns();
      for (uint32_t sent = 0; sent < frames;) {
        baton::TxFrame tx[32];
        uint16_t n = 0;
        for (; n < 32 && sent + n < frames; ++n) {
          const uint64_t off = uint64_t{sent + n} * kChunk;
          tx[n] = {{head.data(), head.size()}, {src.data() + off, std::min<uint64_t>(kChunk, bytes - off)}};
        }
        sent += l.tx_burst(tx, n);
      }
      for (bool acked = false; !acked;) {
        baton::RxFrame rx[4];
        const uint16_t n = l.rx_burst(rx, 4);
        l.release_rx(rx, n);
        acked = n > 0;
      }
      us[static_cast<size_t>(t)].push_back((baton::now_ns() - t0) / 1e3);
    }
  };
  std::thread r(receiver, std::ref(*ports->second[0]), std::ref(*ports->second[1]));
  const uint64_t t0 = baton::now_ns();
  std::thread s0(sender, std::ref(*ports->first[0]), 0), s1(sender, std::ref(*ports->first[1]), 1);
  s0.join();
  s1.join();
  const double s = (baton::now_ns() - t0) / 1e9;
  stop = true;
  r.join();
  Figures f;
  f.per_s = 2.0 * iters / s;
  f.us = us[0];
  f.us.insert(f.us.end(), us[1].begin(), us[1].end());
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, iters = 400;
  uint64_t kib = 64;
  bool spin = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string("0"); };
    if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--iters") iters = std::stoi(next());
    else if (a == "--kib") kib = std::stoull(next());
    else if (a == "--spin") spin = true;
    else {
      std::fprintf(stderr, "usage: baton-shards [--rounds N] [--iters N] [--kib N] [--spin]\n");
      return 2;
    }
  }
  if (rounds < 1 || iters < 1 || kib < 1 || kib > 65536) die("--rounds, --iters >= 1; --kib 1..65536");
  baton::set_log_level(baton::LogLevel::kWarn);
  if (auto ok = baton::ethdev::init_eal(); !ok) die(ok.error().to_string());
  const uint64_t bytes = kib * 1024;
  std::vector<double> one_rate, two_rate, raw_rate, one_us, two_us, raw_us;
  for (int r = 0; r < rounds; ++r) {
    const Figures one = engines(1, bytes, iters, spin);
    const Figures two = engines(2, bytes, iters, spin);
    const Figures base = raw(bytes, iters);
    std::printf(
        "{\"round\":%d,\"kib\":%llu,\"spin\":%s,\"one_shard_per_s\":%.0f,\"two_shards_per_s\":%.0f,"
        "\"raw_per_s\":%.0f,\"one_shard_p50_us\":%.1f,\"two_shards_p50_us\":%.1f,\"raw_p50_us\":%.1f,"
        "\"one_shard_p99_us\":%.1f,\"two_shards_p99_us\":%.1f,\"raw_p99_us\":%.1f}\n",
        r, static_cast<unsigned long long>(kib), spin ? "true" : "false", one.per_s, two.per_s, base.per_s,
        median(one.us), median(two.us), median(base.us), pct(one.us, 0.99), pct(two.us, 0.99), pct(base.us, 0.99));
    std::fflush(stdout);
    one_rate.push_back(one.per_s);
    two_rate.push_back(two.per_s);
    raw_rate.push_back(base.per_s);
    one_us.push_back(median(one.us));
    two_us.push_back(median(two.us));
    raw_us.push_back(median(base.us));
  }
  const double o = median(one_rate), t = median(two_rate), b = median(raw_rate);
  std::printf("\ntwo segments of %llu KiB committing at once, two threads (medians of %d rounds, %s workers)\n",
              static_cast<unsigned long long>(kib), rounds, spin ? "spinning" : "adaptive");
  std::printf("  %-34s %12s %10s %12s\n", "", "commits/s", "p50 us", "vs raw rate");
  std::printf("  %-34s %12.0f %10.1f %11.2fx\n", "one shard (shared token, queue)", o, median(one_us), o / b);
  std::printf("  %-34s %12.0f %10.1f %11.2fx\n", "two shards (a token, queue each)", t, median(two_us), t / b);
  std::printf("  %-34s %12.0f %10.1f %11s\n", "raw: two queue pairs, no engine", b, median(raw_us), "1.00x");
  std::printf("  two shards / one shard: %.2fx\n", t / o);
  return 0;
}
