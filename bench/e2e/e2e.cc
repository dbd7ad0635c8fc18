// baton-e2e: end-to-end figures between two processes over memif, each next
// to a baseline measured in the same run, interleaved round by round (these
// machines are shared and noisy; only ratios travel).
//
//   latency     4 KiB replicated commit (commit + wait for 1 replica)
//               vs raw memif: 4 KiB frame out, 64 B ack back, same driver
//   throughput  64 MiB replicated commit vs raw memif one-way copy of 64 MiB
//               (distinct memory, frames of the same size), and vs memcpy
//   cache line  a core-to-core cache-line round trip between two threads
//               (each spins for the other's store): the floor of any
//               hand-off through shared memory, what the 4 KiB commit over
//               --shm is held against (issue #11)
//   delta       with --dirty PCT: a copy-on-write segment of --delta-mib
//               (1 GiB by default) that the application changes PCT% of,
//               one word in pages drawn at random, before each commit:
//               the time from the commit call until the replica holds the
//               generation (only the changed chunks travel), against the
//               time the lean program takes to move the whole segment at
//               its measured throughput (issue #10: at most 3% with 1%)
//   lean        both again against baton-lean-memif (bench/lean): two DPDK
//               processes calling rx/tx_burst themselves, no Baton code, run
//               first (rounds of their own, before any Baton process starts).
//               The "raw memif" lines above go through Baton's driver and
//               flatter Baton; the lean ratios are the ones to quote.
//
// Usage: baton-e2e [--rounds N] [--iters N] [--mib N] [--spin] [--shm] [--memif-copy]
//                  [--chunk-kib N]
//                  [--dirty PCT [--delta-mib N] [--deltas N] [--protect-ahead]]   (prints JSON lines and a table)
//   --chunk-kib: both engines' chunk size (EngineConfig::chunk_size)
//   --deltas: delta commits measured per round (5)
//   --protect-ahead: EngineConfig::cow_protect_ahead (the written pages
//           protected again while the application runs, not in the commit)
//   --spin: both engines' workers never sleep (dedicated cores)
//   --shm:  the engines' link is a shm region instead of memif (the
//           baselines stay memif's)
//   --memif-copy: the engines' memif link in copy mode at both ends (by
//           default the replica's end is a zero-copy client, as `batonctl
//           chassis up --memif-zero-copy` makes a chassis's client ends:
//           its server copies straight into its mbufs); the lean program
//           then runs in copy mode only

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../tests/common/process.h"
#include "../stats.h"
#include "baton/engine.h"
#include "baton/ethdev.h"
#include "baton/shm.h"
#include "runtime/futex.h"

namespace {

using namespace std::chrono_literals;
using baton::Link;
using baton::RxFrame;
using baton::TxFrame;

volatile sig_atomic_t stop_flag = 0;
void on_term(int) { stop_flag = 1; }

constexpr size_t kAckBytes = 64;

// What the host takes from a spinning thread: over `seconds` of reading the
// clock in a loop, the gaps longer than 10 us (nothing of this process runs
// then: another thread of the guest, an interrupt, or the hypervisor giving
// the vCPU to someone else). Returns {gaps per second, mean gap in us}.
std::pair<double, double> spin_gaps(double seconds) {
  const uint64_t t0 = baton::now_ns(), end = t0 + static_cast<uint64_t>(seconds * 1e9);
  uint64_t prev = t0, n = 0, lost = 0;
  for (uint64_t t = t0; t < end; t = baton::now_ns()) {
    if (t - prev > 10'000) {
      ++n;
      lost += t - prev;
    }
    prev = t;
  }
  return {n / seconds, n == 0 ? 0.0 : lost / 1e3 / static_cast<double>(n)};
}

// One cache line bouncing between two threads, `n` round trips, in us each.
std::vector<double> cacheline_round_trips(int n) {
  struct alignas(64) Line {
    std::atomic<uint64_t> v{0};
  };
  static Line line;
  line.v.store(0);
  std::thread echo([n] {
    for (uint64_t i = 1; i <= static_cast<uint64_t>(n); ++i) {
      while (line.v.load(std::memory_order_acquire) != 2 * i - 1) _mm_pause();
      line.v.store(2 * i, std::memory_order_release);
    }
  });
  std::vector<double> us;
  us.reserve(static_cast<size_t>(n));
  for (uint64_t i = 1; i <= static_cast<uint64_t>(n); ++i) {
    const uint64_t t0 = baton::now_ns();
    line.v.store(2 * i - 1, std::memory_order_release);
    while (line.v.load(std::memory_order_acquire) != 2 * i) _mm_pause();
    us.push_back((baton::now_ns() - t0) / 1e3);
  }
  echo.join();
  return us;
}
constexpr uint32_t kFrame = 16384;  // raw throughput frame payload, like a Baton chunk

std::unique_ptr<Link> open_link(const std::string& dev, uint16_t peer) {
  baton::ethdev::PortConfig pc;
  pc.device = dev;
  pc.peer = peer;
  auto l = baton::ethdev::open_port(pc);
  if (!l) {
    std::fprintf(stderr, "baton-e2e: %s\n", l.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*l);
}

// This process's engine: node `node` with one memif link (role as given) to the other.
bool use_shm = false;
bool memif_zero_copy = true;  // the replica's end of the engines' memif link is a zero-copy client
constexpr const char* kCowSegment = "e2e-throughput-cow";
constexpr const char* kDeltaSegment = "e2e-delta";
uint32_t chunk_bytes = 0;  ///< --chunk-kib (0: the engine's default)
bool protect_ahead = false;  ///< --protect-ahead: EngineConfig::cow_protect_ahead

// The engines' shm region: in /dev/shm (memory), named after their socket.
std::string shm_path(const std::string& sock) { return "/dev/shm/" + sock.substr(sock.rfind('/') + 1) + ".shm"; }

std::unique_ptr<baton::Engine> start_engine(uint16_t node, const std::string& role, const std::string& sock,
                                            bool spin) {
  std::vector<std::unique_ptr<Link>> links;
  if (use_shm) {
    auto l = baton::shm::open(baton::shm::Config{shm_path(sock), node == 1 ? 0 : 1, static_cast<uint16_t>(node == 1 ? 2 : 1)});
    if (!l) {
      std::fprintf(stderr, "baton-e2e: %s\n", l.error().to_string().c_str());
      std::exit(1);
    }
    links.push_back(std::move(*l));
  } else {
    links.push_back(open_link("net_memif1,role=" + role + ",socket=" + sock +
                                  (memif_zero_copy && role == "client" ? ",zero-copy=yes" : ""),
                              node == 1 ? 2 : 1));
  }
  baton::EngineConfig c;
  c.node_id = node;
  if (spin) c.idle = baton::IdlePolicy::kSpin;
  // The copy-on-write twin of the throughput segment (S14): the commit
  // protects the pages, and the worker copies them out while it sends.
  c.snapshot_modes.push_back({kCowSegment, baton::EngineConfig::SnapshotMode::kCopyOnWrite, std::nullopt});
  c.snapshot_modes.push_back({kDeltaSegment, baton::EngineConfig::SnapshotMode::kCopyOnWrite, std::nullopt});
  if (chunk_bytes != 0) c.chunk_size = chunk_bytes;
  c.cow_protect_ahead = protect_ahead;
  auto engine = baton::Engine::start(c, std::move(links));
  if (!engine) {
    std::fprintf(stderr, "baton-e2e: %s\n", engine.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*engine);
}

void send_all(Link& l, const std::byte* p, size_t len) {
  TxFrame f{{p, len}, {}};
  while (l.tx_burst(&f, 1) != 1) l.service(baton::now_ns());
}

// --- peer process ---------------------------------------------------------

int run_peer(const std::string& raw_sock, const std::string& eng_sock, bool spin) {
  signal(SIGTERM, on_term);
  auto raw = open_link("net_memif0,role=client,socket=" + raw_sock, 1);
  auto engine = start_engine(2, "client", eng_sock, spin);
  // Raw echo: 'L' frames get a 64 B ack; 'T' frames are counted; 'F' gets
  // an ack carrying the count. Sleeps when idle, longer the longer it idles
  // (up to 20 ms), so it does not steal the CPU from the engine during Baton
  // rounds: a 50 us sleep woke it 6 000 times a second, each wake-up
  // preempting the replica's worker on its vCPU, and the Baton rounds paid
  // for the harness (the lean program has no third thread). The driver
  // warms the link up before each raw measurement.
  std::byte ack[kAckBytes] = {};
  uint64_t counted = 0;
  uint32_t idle = 0;
  auto nap = 50us;
  while (!stop_flag) {
    RxFrame rx[32];
    uint16_t n = raw->rx_burst(rx, 32);
    raw->service(baton::now_ns());
    for (uint16_t i = 0; i < n; ++i) {
      const char kind = static_cast<char>(rx[i].bytes[0]);
      if (kind == 'T') {
        counted += rx[i].bytes.size();
      } else if (kind == 'L' || kind == 'F') {
        ack[0] = std::byte{'A'};
        std::memcpy(ack + 8, &counted, 8);
        send_all(*raw, ack, sizeof ack);
        if (kind == 'F') counted = 0;
      }
    }
    if (n > 0) raw->release_rx(rx, n);
    if (n > 0) {
      idle = 0;
      nap = 50us;
    } else if (++idle > 2048) {
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, std::chrono::microseconds(20000));
    }
  }
  return 0;
}

// --- driver ---------------------------------------------------------------

struct Stats {
  std::vector<double> v;
  double pct(double p) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
  }
  double median() { return pct(0.5); }
};

struct Lean {
  double p50 = 0, p99 = 0, gbps = 0;
};

// One round of baton-lean-memif (next to this binary), or nothing if it failed.
std::optional<Lean> run_lean(const std::string& dir, int iters, uint64_t mib, bool zero_copy) {
  const std::string cmd = dir + "/baton-lean-memif --rounds 1 --iters " + std::to_string(iters) + " --mib " +
                          std::to_string(mib) + (zero_copy ? " --zero-copy" : "") + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return std::nullopt;
  Lean l;
  char line[512];
  int got = 0;
  while (std::fgets(line, sizeof line, p) != nullptr) {
    double v = 0;
    const char* at = std::strstr(line, "\"value\":");
    if (at == nullptr || std::sscanf(at + 8, "%lf", &v) != 1) continue;
    if (std::strstr(line, "\"latency_p50\"")) l.p50 = v, ++got;
    else if (std::strstr(line, "\"latency_p99\"")) l.p99 = v, ++got;
    else if (std::strstr(line, "\"throughput\"")) l.gbps = v, ++got;
  }
  if (pclose(p) != 0 || got != 3) return std::nullopt;
  return l;
}

// The lean program's rounds in one mode, a Stats per figure.
struct LeanRounds {
  Stats p50, p99, tput;
  void run(const std::string& dir, int iters, uint64_t mib, bool zero_copy, int round) {
    auto lean = run_lean(dir, iters, mib, zero_copy);
    if (!lean) {
      std::fprintf(stderr, "baton-e2e: baton-lean-memif%s failed (round %d)\n", zero_copy ? " --zero-copy" : "", round);
      return;
    }
    p50.v.push_back(lean->p50);
    p99.v.push_back(lean->p99);
    tput.v.push_back(lean->gbps);
  }
};

// The count an ack carries, or nothing by the deadline.
std::optional<uint64_t> wait_ack(Link& l, uint64_t deadline_ns = UINT64_MAX) {
  while (baton::now_ns() < deadline_ns) {
    RxFrame rx[32];
    uint16_t n = l.rx_burst(rx, 32);
    l.service(baton::now_ns());
    std::optional<uint64_t> count;
    for (uint16_t i = 0; i < n && !count; ++i) {
      if (static_cast<char>(rx[i].bytes[0]) == 'A') {
        uint64_t c;
        std::memcpy(&c, rx[i].bytes.data() + 8, 8);
        count = c;
      }
    }
    if (n) l.release_rx(rx, n);
    if (count) return count;
  }
  return std::nullopt;
}

void print_json(const char* metric, const char* subject, double value, const char* unit) {
  std::printf("{\"metric\":\"%s\",\"subject\":\"%s\",\"value\":%.3f,\"unit\":\"%s\"}\n", metric, subject, value, unit);
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, iters = 2000;
  uint64_t mib = 64, delta_mib = 1024;
  double dirty = 0;  // --dirty: percent of the delta segment's pages written before each delta (0: no deltas)
  int deltas = 5;
  std::string raw_sock, eng_sock;
  bool peer = false, spin = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--iters") iters = std::stoi(next());
    else if (a == "--mib") mib = std::stoull(next());
    else if (a == "--peer") peer = true;
    else if (a == "--spin") spin = true;
    else if (a == "--shm") use_shm = true;
    else if (a == "--memif-copy") memif_zero_copy = false;
    else if (a == "--chunk-kib") chunk_bytes = static_cast<uint32_t>(std::stoul(next())) * 1024;
    else if (a == "--dirty") dirty = std::stod(next());
    else if (a == "--protect-ahead") protect_ahead = true;
    else if (a == "--delta-mib") delta_mib = std::stoull(next());
    else if (a == "--deltas") deltas = std::stoi(next());
    else if (a == "--raw-sock") raw_sock = next();
    else if (a == "--eng-sock") eng_sock = next();
    else {
      std::fprintf(stderr,
                   "usage: baton-e2e [--rounds N] [--iters N] [--mib N] [--spin] [--shm] [--memif-copy] [--chunk-kib N]\n"
                   "                 [--dirty PCT [--delta-mib N] [--deltas N] [--protect-ahead]]\n");
      return 64;
    }
  }
  if (peer) return run_peer(raw_sock, eng_sock, spin);
  if (rounds < 1 || iters < 1 || mib < 1 || mib > 1024 || dirty < 0 || dirty > 100 || delta_mib < 1 ||
      delta_mib > 4096 || deltas < 2) {
    std::fprintf(stderr, "baton-e2e: rounds, iters >= 1; mib in 1..1024; dirty in 0..100; delta-mib in 1..4096; "
                         "deltas >= 2\n");
    return 64;
  }

  // The lean program first, with no Baton process running: its two
  // processes spin, and anything else awake on two vCPUs (the peer's raw
  // loop, idle engines' ticks) would be measured as its cost.
  LeanRounds lean;
  LeanRounds lean_zc;  // the lean program's receiving end a zero-copy client too
  {
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return 1;
    exe[n] = 0;
    const std::string dir = std::string(exe).substr(0, std::string(exe).rfind('/'));
    for (int r = 0; r < rounds; ++r) {
      lean.run(dir, iters, mib, false, r);
      if (memif_zero_copy && !use_shm) lean_zc.run(dir, iters, mib, true, r);
    }
  }

  const std::string base = "/tmp/baton-e2e-" + std::to_string(getpid());
  raw_sock = base + "-raw.sock";
  eng_sock = base + "-eng.sock";
  unlink(raw_sock.c_str());
  unlink(eng_sock.c_str());
  unlink(shm_path(eng_sock).c_str());
  auto raw = open_link("net_memif0,role=server,socket=" + raw_sock, 2);
  auto engine_owner = start_engine(1, "server", eng_sock, spin);
  baton::Engine& engine = *engine_owner;
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return 1;
  self[len] = 0;
  std::vector<std::string> peer_args = {self, "--peer", "--raw-sock", raw_sock, "--eng-sock", eng_sock};
  if (spin) peer_args.push_back("--spin");
  if (use_shm) peer_args.push_back("--shm");
  if (!memif_zero_copy) peer_args.push_back("--memif-copy");
  if (chunk_bytes != 0) peer_args.insert(peer_args.end(), {"--chunk-kib", std::to_string(chunk_bytes / 1024)});
  baton::test::Process peer_proc(peer_args);

  const uint64_t big = mib << 20;
  // Creating a name needs the peer in the view (two nodes: both members).
  for (int i = 0; i < 3000 && engine.view().members.size() < 2; ++i) std::this_thread::sleep_for(10ms);
  auto lat = engine.create("e2e-latency", 4096);
  auto bulk = engine.create("e2e-throughput", big);
  auto cow = engine.create(kCowSegment, big);
  if (!lat || !bulk || !cow) {
    std::fprintf(stderr, "baton-e2e: create: %s\n",
                 (!lat ? lat : !bulk ? bulk : cow).error().to_string().c_str());
    return 1;
  }
  auto lat_seg = *lat;
  auto big_seg = *bulk;
  auto cow_seg = *cow;
  std::memset(engine.data(lat_seg).data(), 1, 4096);
  std::memset(engine.data(big_seg).data(), 2, big);
  std::memset(engine.data(cow_seg).data(), 2, big);
  // The raw baseline moves 64 MiB of distinct memory, as Baton must, not one
  // cache-hot buffer over and over.
  std::vector<std::byte> raw_src(big + kFrame, std::byte{'T'});
  std::vector<std::byte> ping(4096, std::byte{'L'});
  std::vector<std::byte> copy_dst(big), copy_src(big, std::byte{3});

  // Warm up: both links connected, both segments replicated once.
  do send_all(*raw, ping.data(), ping.size());
  while (!wait_ack(*raw, baton::now_ns() + 100'000'000));  // frames sent before connect are lost
  for (auto s : {lat_seg, big_seg, cow_seg}) {
    auto g = engine.commit(s);
    if (!g || !engine.wait_replicated(s, *g, 1, 60s)) {
      std::fprintf(stderr, "baton-e2e: warm-up replication failed\n");
      return 1;
    }
  }

  // The delta segment (--dirty): filled and replicated whole once, then
  // ten deltas unmeasured. A whole generation's first delta makes the
  // replica copy the base into its shadow first (nothing chains to a
  // whole one), and a commit that found most pages written leaves the
  // region dense for the next few (architecture, "Dense writers"): the
  // warm-up takes both out of the figures, as a long-running application
  // that changes a little between commits never sees them.
  const uint64_t delta_bytes = delta_mib << 20;
  baton::Segment* delta_seg = nullptr;
  std::mt19937_64 rng(1);
  std::vector<uint64_t> delta_pages;  // this delta's page offsets
  auto pick_pages = [&] {
    const uint64_t pages = delta_bytes / 4096;
    const uint64_t n = std::max<uint64_t>(1, static_cast<uint64_t>(static_cast<double>(pages) * dirty / 100));
    delta_pages.clear();
    for (uint64_t i = 0; i < n; ++i) delta_pages.push_back(rng() % pages * 4096);
  };
  // Writes this delta's pages (untimed), then times its commit until the replica holds it (ms).
  uint64_t went_as_delta = 0, went_whole = 0, resent = 0;  // how the measured ones travelled (EngineStats)
  Stats delta_call_ms;  // --dirty: each delta's commit call (the application's pause)
  // The floor of any snapshot that copies what changed, in the same run:
  // memcpy of the delta's pages between two buffers of the segment's size
  // (written whole once, at the start, as the stages were).
  Stats written_memcpy_ms;
  std::vector<std::byte> written_src, written_dst;
  Stats delta_primary_cpu_ms, delta_replica_cpu_ms;  // each worker's CPU time over the same interval
  auto worker_cpu_ns = [&](pid_t pid) {
    const auto v = baton::bench::thread_cpu_ns("baton-worker", pid);
    return v.size() == 1 ? v[0] : 0;  // one shard: one worker
  };
  uint64_t settled_pages = 0, chunks_copied = 0;
  auto delta_once = [&](uint8_t stamp) -> std::optional<double> {
    pick_pages();
    auto mem = engine.data(delta_seg);
    for (uint64_t off : delta_pages) mem[off + 8] = std::byte{stamp};
    const auto before = engine.stats();
    const uint64_t cpu_a = worker_cpu_ns(0), cpu_b = worker_cpu_ns(peer_proc.pid());
    const uint64_t t0 = baton::now_ns();
    auto g = engine.commit(delta_seg);
    const uint64_t t1 = baton::now_ns();
    if (!g || !engine.wait_replicated(delta_seg, *g, 1, 60s)) return std::nullopt;
    const double ms = (baton::now_ns() - t0) / 1e6;
    delta_call_ms.v.push_back((t1 - t0) / 1e6);
    delta_primary_cpu_ms.v.push_back((worker_cpu_ns(0) - cpu_a) / 1e6);
    delta_replica_cpu_ms.v.push_back((worker_cpu_ns(peer_proc.pid()) - cpu_b) / 1e6);
    if (!written_src.empty()) {
      const uint64_t m0 = baton::now_ns();
      for (uint64_t off : delta_pages) std::memcpy(written_dst.data() + off, written_src.data() + off, 4096);
      written_memcpy_ms.v.push_back((baton::now_ns() - m0) / 1e6);
    }
    const auto after = engine.stats();
    went_as_delta += after.deltas_sent - before.deltas_sent;
    went_whole += after.wholes_sent - before.wholes_sent;
    resent += after.retransmits - before.retransmits;
    settled_pages += after.cow_pages_settled - before.cow_pages_settled;  // the previous one was settled before it was held
    chunks_copied += after.snapshot_chunks_copied - before.snapshot_chunks_copied;
    return ms;
  };
  if (dirty > 0) {
    auto d = engine.create(kDeltaSegment, delta_bytes);
    if (!d) {
      std::fprintf(stderr, "baton-e2e: create: %s\n", d.error().to_string().c_str());
      return 1;
    }
    delta_seg = *d;
    written_src.assign(delta_bytes, std::byte{4});
    written_dst.assign(delta_bytes, std::byte{5});
    auto mem = engine.data(delta_seg);
    for (uint64_t off = 0; off < delta_bytes; off += 4096) mem[off] = std::byte(static_cast<uint8_t>(rng()));
    auto g = engine.commit(delta_seg);
    if (!g || !engine.wait_replicated(delta_seg, *g, 1, 120s)) {
      std::fprintf(stderr, "baton-e2e: the delta segment's first replication failed\n");
      return 1;
    }
    for (int i = 0; i < 10; ++i)
      if (!delta_once(static_cast<uint8_t>(i + 1))) {
        std::fprintf(stderr, "baton-e2e: a warm-up delta failed\n");
        return 1;
      }
  }
  went_as_delta = went_whole = resent = settled_pages = chunks_copied = 0;
  delta_call_ms.v.clear();
  written_memcpy_ms.v.clear();
  delta_primary_cpu_ms.v.clear();
  delta_replica_cpu_ms.v.clear();

  Stats gap_rate, gap_mean;  // spin_gaps(), once a round
  Stats line_lat, raw_lat, baton_lat, raw_tput, baton_tput, memcpy_tput, cold_tput, snapshot_ms, cow_tput, cow_ms;
  Stats delta_ms;  // --dirty: each delta, commit call to the replica holding it
  using clk = std::chrono::steady_clock;
  auto us = [](clk::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  // Each latency loop first plays 200 ms unmeasured, as the lean program
  // does: until the scheduler has spread the two spinning threads over the
  // two vCPUs (and the echo has woken from its naps), a round trip is a
  // time slice. Without it the first few hundred Baton samples of a round
  // measured that settling (a p99 of 25 us instead of 5).
  auto warm = [&](auto&& once) {
    for (auto until = clk::now() + 200ms; clk::now() < until;) once();
  };
  auto ping_once = [&] {
    send_all(*raw, ping.data(), ping.size());
    wait_ack(*raw);
  };
  auto commit_once = [&] {
    auto g = engine.commit(lat_seg);
    return g && engine.wait_replicated(lat_seg, *g, 1, 10s);
  };
  // One 64 MiB commit and its wait for the replica, after writing every
  // page (untimed): every chunk travels each round. Unwritten, the write
  // tracker re-arms after eight whole commits and the next ones copy and
  // send nothing; on the copy-on-write segment the writes fault on
  // protected pages. Records the commit call (ms) and the whole (GB/s).
  auto replicate_whole = [&](baton::Segment* s, int r, Stats& call_ms, Stats& gbps) {
    for (uint64_t off = 0; off < big; off += 4096) engine.data(s)[off] = std::byte(r + 1);
    const auto t0 = clk::now();
    auto g = engine.commit(s);
    call_ms.v.push_back(us(clk::now() - t0) / 1000);
    if (!g || !engine.wait_replicated(s, *g, 1, 60s)) return false;
    gbps.v.push_back(static_cast<double>(big) / (us(clk::now() - t0) / 1e6) / 1e9);
    return true;
  };
  for (int r = 0; r < rounds; ++r) {
    warm(ping_once);
    for (int i = 0; i < iters; ++i) {
      auto t0 = clk::now();
      ping_once();
      raw_lat.v.push_back(us(clk::now() - t0));
    }
    warm(commit_once);
    for (int i = 0; i < iters; ++i) {
      auto t0 = clk::now();
      if (!commit_once()) return 1;
      baton_lat.v.push_back(us(clk::now() - t0));
    }
    warm(ping_once);
    {
      auto t0 = clk::now();
      const uint64_t frames = (big + kFrame - 1) / kFrame;
      for (uint64_t f = 0; f < frames; ++f) send_all(*raw, raw_src.data() + f * kFrame, kFrame);
      std::byte fin[kAckBytes] = {std::byte{'F'}};
      send_all(*raw, fin, sizeof fin);
      uint64_t counted = *wait_ack(*raw);
      double secs = us(clk::now() - t0) / 1e6;
      if (counted != frames * kFrame) std::fprintf(stderr, "raw memif lost frames (%lu of %lu bytes)\n",
                                                   (unsigned long)counted, (unsigned long)(frames * kFrame));
      raw_tput.v.push_back(static_cast<double>(frames * kFrame) / secs / 1e9);
    }
    if (!replicate_whole(big_seg, r, snapshot_ms, baton_tput) || !replicate_whole(cow_seg, r, cow_ms, cow_tput))
      return 1;
    for (int i = 0; delta_seg != nullptr && i < deltas; ++i) {
      auto ms = delta_once(static_cast<uint8_t>(r * deltas + i + 11));
      if (!ms) {
        std::fprintf(stderr, "baton-e2e: a delta failed\n");
        return 1;
      }
      delta_ms.v.push_back(*ms);
    }
    {
      auto t0 = clk::now();
      std::memcpy(copy_dst.data(), copy_src.data(), big);
      memcpy_tput.v.push_back(static_cast<double>(big) / (us(clk::now() - t0) / 1e6) / 1e9);
    }
    {
      // Last in the round: two threads spinning on one line just before the
      // commits were measured left their p99 in the milliseconds in 3 of 5 runs.
      auto line = cacheline_round_trips(iters + 20000);  // the first 20 000 settle the two threads
      line_lat.v.insert(line_lat.v.end(), line.begin() + 20000, line.end());
      auto [rate, mean] = spin_gaps(0.5);
      gap_rate.v.push_back(rate);
      gap_mean.v.push_back(mean);
    }
    {
      // Cold: into memory never touched (each page faulted in by the copy),
      // as a replica's first copy of a generation lands, and as issue #11
      // asks the shm replication against.
      void* fresh = mmap(nullptr, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (fresh == MAP_FAILED) return 1;
      auto t0 = clk::now();
      std::memcpy(fresh, copy_src.data(), big);
      cold_tput.v.push_back(static_cast<double>(big) / (us(clk::now() - t0) / 1e6) / 1e9);
      munmap(fresh, big);
    }
  }
  peer_proc.kill(SIGTERM);
  peer_proc.wait();
  unlink(raw_sock.c_str());
  unlink(eng_sock.c_str());
  unlink(shm_path(eng_sock).c_str());

  const double rl50 = raw_lat.pct(0.5), rl99 = raw_lat.pct(0.99), rl999 = raw_lat.pct(0.999);
  const double bl50 = baton_lat.pct(0.5), bl99 = baton_lat.pct(0.99), bl999 = baton_lat.pct(0.999);
  const double rt = raw_tput.median(), bt = baton_tput.median(), mt = memcpy_tput.median();
  print_json("latency_p50", "raw_memif_4k_ack", rl50, "us");
  print_json("latency_p99", "raw_memif_4k_ack", rl99, "us");
  print_json("latency_p999", "raw_memif_4k_ack", rl999, "us");
  print_json("latency_p50", "baton_commit_4k", bl50, "us");
  print_json("latency_p99", "baton_commit_4k", bl99, "us");
  print_json("latency_p999", "baton_commit_4k", bl999, "us");
  print_json("throughput", "raw_memif", rt, "GB/s");
  print_json("throughput", "baton_commit", bt, "GB/s");
  print_json("throughput", "memcpy", mt, "GB/s");
  const double cmt = cold_tput.median();
  print_json("throughput", "memcpy_cold", cmt, "GB/s");
  const double snap = snapshot_ms.median(), ct = cow_tput.median(), cow_snap = cow_ms.median();
  print_json("snapshot_time", "baton_commit", snap, "ms");
  print_json("throughput", "baton_commit_cow", ct, "GB/s");
  print_json("snapshot_time", "baton_commit_cow", cow_snap, "ms");
  std::printf("\n%-34s %10s %10s %10s\n", "4 KiB commit, 1 replica (us)", "p50", "p99", "p99.9");
  std::printf("%-34s %10.1f %10.1f %10.1f\n", "raw memif 4 KiB + 64 B ack", rl50, rl99, rl999);
  std::printf("%-34s %10.1f %10.1f %10.1f\n", "Baton replicated commit", bl50, bl99, bl999);
  std::printf("%-34s %9.2fx %9.2fx %9.2fx\n", "ratio Baton / raw", bl50 / rl50, bl99 / rl99, bl999 / rl999);
  const double ll50 = line_lat.pct(0.5), ll99 = line_lat.pct(0.99), ll999 = line_lat.pct(0.999);
  print_json("latency_p50", "cacheline_round_trip", ll50, "us");
  print_json("latency_p99", "cacheline_round_trip", ll99, "us");
  std::printf("%-34s %10.2f %10.2f %10.2f\n", "cache line core to core and back", ll50, ll99, ll999);
  std::printf("%-34s %9.0fx %9.0fx %9.0fx\n", "ratio Baton / cache line", bl50 / ll50, bl99 / ll99, bl999 / ll999);
  // A round trip through two spinning threads is held up when either loses
  // its vCPU meanwhile: at a rate r per thread, about 2 r T of round trips
  // of length T. Past 1%, the p99 is such a gap, not the round trip.
  const double gr = gap_rate.median(), gm = gap_mean.median();
  auto held_up_pct = [gr](double round_trip_us) { return 2 * gr * round_trip_us / 1e6 * 100; };
  print_json("rate", "spin_gaps_over_10us", gr, "per_s");
  std::printf("%-34s %7.0f/s, mean %.0f us: %.2f%% of round trips as long as Baton's p50\n",
              "a spinning thread loses the CPU", gr, gm, held_up_pct(bl50));
  const std::string big_label = std::to_string(mib) + " MiB, median of rounds";
  std::printf("\n%-34s %10s %10s\n", big_label.c_str(), "GB/s", "ratio");
  std::printf("%-34s %10.2f %10s\n", "memcpy", mt, "");
  std::printf("%-34s %10.2f %10s\n", "memcpy into untouched memory", cmt, "");
  std::printf("%-34s %10.2f %10s\n", "raw memif one-way", rt, "1.00x");
  std::printf("%-34s %10.2f %9.2fx\n", "Baton replicated commit", bt, bt / rt);
  std::printf("%-34s %10s %9.2fx\n", "  its time / a cold memcpy's", "", cmt / bt);
  std::printf("%-34s %10.1f ms of %.1f ms\n", "  of which snapshot (commit call)", snap,
              static_cast<double>(big) / bt / 1e6);
  std::printf("%-34s %10.2f %9.2fx\n", "Baton, copy-on-write", ct, ct / rt);
  std::printf("%-34s %10.1f ms of %.1f ms\n", "  of which the commit call", cow_snap,
              static_cast<double>(big) / ct / 1e6);
  if (!lean.p50.v.empty()) {
    // Per round, the lean program's percentiles; their medians over rounds.
    const double l50 = lean.p50.median(), l99 = lean.p99.median(), lt = lean.tput.median();
    print_json("latency_p50", "lean_memif_4k_ack", l50, "us");
    print_json("latency_p99", "lean_memif_4k_ack", l99, "us");
    print_json("throughput", "lean_memif", lt, "GB/s");
    std::printf("\n%-34s %10s %10s %10s\n", "against the lean program", "p50 us", "p99 us", "GB/s");
    std::printf("%-34s %10.1f %10.1f %10.2f\n", "lean memif (no Baton code)", l50, l99, lt);
    std::printf("%-34s %10.1f %10.1f %10.2f\n", "Baton replicated commit", bl50, bl99, bt);
    std::printf("%-34s %9.2fx %9.2fx %9.2fx\n", "ratio Baton / lean", bl50 / l50, bl99 / l99, bt / lt);
    print_json("ratio", "baton_commit_cow_over_lean", ct / lt, "x");
    std::printf("%-34s %10s %10s %9.2fx\n", "  copy-on-write / lean", "", "", ct / lt);
    std::printf("%-34s %.2f%% of the lean program's round trips, %.2f%% of Baton's\n",
                "  held up by a lost CPU (see above)", held_up_pct(l50), held_up_pct(bl50));
  }
  if (!lean_zc.p50.v.empty()) {
    // The same program with its receiver a zero-copy client, as Baton's
    // replica is here: its receive copies nothing, and it does not read
    // the 4 KiB it is sent either (a replica must keep them).
    const double z50 = lean_zc.p50.median(), z99 = lean_zc.p99.median(), zt = lean_zc.tput.median();
    print_json("latency_p50", "lean_memif_zero_copy_4k_ack", z50, "us");
    print_json("latency_p99", "lean_memif_zero_copy_4k_ack", z99, "us");
    print_json("throughput", "lean_memif_zero_copy", zt, "GB/s");
    std::printf("%-34s %10.1f %10.1f %10.2f\n", "lean memif, zero-copy receiver", z50, z99, zt);
    std::printf("%-34s %9.2fx %9.2fx %9.2fx\n", "ratio Baton / lean zero-copy", bl50 / z50, bl99 / z99, bt / zt);
  }
  if (delta_seg != nullptr) {
    // The delta against moving the whole segment: at the lean program's
    // throughput (the baseline to quote; --mib's transfer, which runs at
    // the same rate whatever the size) and at Baton's own whole commit's.
    const double d50 = delta_ms.median(), d90 = delta_ms.pct(0.9);
    const double lean_gbps = lean.tput.v.empty() ? 0 : lean.tput.median();
    const double lean_whole_ms = lean_gbps > 0 ? static_cast<double>(delta_bytes) / lean_gbps / 1e6 : 0;
    const double baton_whole_ms = static_cast<double>(delta_bytes) / bt / 1e6;
    print_json("latency_p50", "baton_delta", d50, "ms");
    print_json("latency_p90", "baton_delta", d90, "ms");
    if (lean_whole_ms > 0) print_json("ratio", "baton_delta_over_lean_whole", d50 / lean_whole_ms, "x");
    print_json("ratio", "baton_delta_over_baton_whole", d50 / baton_whole_ms, "x");
    const double wm = written_memcpy_ms.median(), call = delta_call_ms.median();
    const double pc = delta_primary_cpu_ms.median(), rc = delta_replica_cpu_ms.median();
    print_json("latency_p50", "memcpy_written_pages", wm, "ms");
    print_json("latency_p50", "baton_delta_commit_call", call, "ms");
    print_json("cpu_p50", "baton_delta_primary_worker", pc, "ms");
    print_json("cpu_p50", "baton_delta_replica_worker", rc, "ms");
    auto of_lean = [&](double ms) { return lean_whole_ms > 0 ? ms / lean_whole_ms : 0.0; };
    const std::string label = std::to_string(delta_mib) + " MiB, " + std::to_string(delta_pages.size()) +
                              " pages written (" + std::to_string(dirty).substr(0, 4) + "%)";
    std::printf("\n%-34s %10s %10s\n", label.c_str(), "ms", "of lean");
    if (lean_whole_ms > 0) std::printf("%-34s %10.1f %9.3fx\n", "lean memif, the whole segment", lean_whole_ms, 1.0);
    std::printf("%-34s %10.1f %9.3fx   (--mib's rate)\n", "Baton, the whole (stage copy)", baton_whole_ms,
                of_lean(baton_whole_ms));
    std::printf("%-34s %10.2f %9.3fx\n", "memcpy of the written pages", wm, of_lean(wm));
    std::printf("%-34s %10.2f %9.3fx   (p90 %.2f ms; %.1fx the memcpy)\n", "Baton, copy-on-write delta", d50,
                of_lean(d50), d90, d50 / wm);
    std::printf("%-34s %10.2f %9.3fx   %s\n", "  of which the commit call", call, of_lean(call),
                protect_ahead ? "(pages protected ahead)" : "(it protects the written pages; --protect-ahead)");
    std::printf("%-34s %10.2f %9.3fx\n", "  the owner's worker, CPU", pc, of_lean(pc));
    std::printf("%-34s %10.2f %9.3fx\n", "  the replica's worker, CPU", rc, of_lean(rc));
    std::printf("  %lu of %lu sent as deltas, %lu whole; %lu frames resent; per delta %.0f pages settled, "
                "%.0f chunks checksummed\n  each (ms):",
                static_cast<unsigned long>(went_as_delta), static_cast<unsigned long>(delta_ms.v.size()),
                static_cast<unsigned long>(went_whole), static_cast<unsigned long>(resent),
                static_cast<double>(settled_pages) / delta_ms.v.size(),
                static_cast<double>(chunks_copied) / delta_ms.v.size());
    for (double v : delta_ms.v) std::printf(" %.1f", v);
    std::printf("\n");
  }
  std::printf("\n(%d rounds x %d latency samples; %lu MiB)\n", rounds, iters, (unsigned long)mib);
  return 0;
}
