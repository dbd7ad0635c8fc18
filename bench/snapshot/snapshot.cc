// baton-snapshot: what a commit costs the application when it changed a
// small part of a large segment (issue #10). Two engines on loopback links
// (one replica); the application writes one word into `--dirty` percent of
// the segment's 4 KiB pages, chosen at random, then commits. Measured for
// each segment size, in one run:
//
//   memcpy whole   the stop-and-copy floor: memcpy of the whole segment
//   memcpy dirty   the floor of any copying snapshot: memcpy of only the
//                  pages written (into a second buffer, same offsets)
//   untracked      Engine::commit with track_writes = false (copies all)
//   tracked        Engine::commit with write tracking (copies written chunks)
//   cow            Engine::commit with copy-on-write snapshots (S14),
//                  written pages protected ahead of the commit
//                  (EngineConfig::cow_protect_ahead): the application's
//                  pause is the write-protection of what the protector has
//                  not reached; the worker copies the snapshot after the call
//   cow_at_commit  the same with the commit protecting every page written
//                  (cow_protect_ahead off, the default)
//   cow_quiescent  cow, each commit quiescent (CommitOptions::quiescent:
//                  this benchmark's one thread writes and commits): the
//                  pages the protector has not reached are copied into the
//                  snapshot by the commit instead of protected
//
// plus, for each engine, the application's own writes (tracked pays an
// asynchronous write-protect fault on a page's first write after a commit,
// about 1 us; cow a SIGBUS fault, about 4 us, plus a page copy if the
// worker had not copied it yet) and the time from the commit call until
// the replica holds the generation (tracked and cow: only the changed
// chunks travel). Beside that wall time, the CPU time each engine's worker
// spent in the same interval (primary_cpu, replica_cpu: from
// /proc/self/task/*/schedstat): on two shared vCPUs the wall time is mostly
// scheduling (a worker that waits for a frame naps, and so does the other),
// the CPU time is what the replication costs, and on dedicated cores the
// wall time comes down towards the larger of the two.
//
// Usage: baton-snapshot [--sizes-mib 64,256,1024] [--dirty 1] [--commits 20] [--contiguous] [--chunk-kib 16]
//                       [--modes untracked,tracked,cow,cow_at_commit,cow_quiescent]
// (--contiguous: the written pages are one run, not scattered; --chunk-kib:
// EngineConfig::chunk_size, the unit a commit copies, checksums and sends;
// --modes: which engines to run, all by default; each one's figures are
// keyed by its name: cow_commit_p50_us, tracked_replicated_p50_us, ...)
//        baton-snapshot --periodic-ms 10 [--sizes-mib 64,1024]
// (instead: a writer's stores per second with the engine committing the
// segment by itself every 10 ms, copy-on-write, against none; S5; the
// stores fall on a hot 1% of the pages, then on all of them; with and
// without protection ahead)
// Prints one JSON line per size.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "baton/engine.h"
#include "baton/loopback.h"
#include "runtime/futex.h"
#include "segment/dirty_tracker.h"
#include "segment/local_storage.h"
#include "../stats.h"

namespace {

using baton::now_ns;

using baton::bench::median;
using baton::bench::pct;
using baton::bench::thread_cpu_ns;

uint32_t g_chunk_bytes = 0;  ///< --chunk-kib (0: the engine's default)
uint32_t g_window = 0;       ///< --window: chunks in flight per transfer (0: the engine's default)

struct Pair {
  std::unique_ptr<baton::Engine> a, b;
};

/// kCowAtCommit: copy-on-write with every written page protected by the
/// commit itself (EngineConfig::cow_protect_ahead off). kCowQuiescent: as
/// kCow, each commit quiescent (CommitOptions::quiescent: the benchmark's
/// only writer commits), so the pages the protector has not reached are
/// copied by the commit, not protected.
enum class Mode { kUntracked, kTracked, kCow, kCowAtCommit, kCowQuiescent };

/// The mode's name in --modes and in the output's keys.
const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kUntracked: return "untracked";
    case Mode::kTracked: return "tracked";
    case Mode::kCow: return "cow";
    case Mode::kCowAtCommit: return "cow_at_commit";
    case Mode::kCowQuiescent: return "cow_quiescent";
  }
  return "?";
}

std::optional<Mode> mode_named(std::string_view name) {
  for (const Mode m : {Mode::kUntracked, Mode::kTracked, Mode::kCow, Mode::kCowAtCommit, Mode::kCowQuiescent})
    if (name == mode_name(m)) return m;
  return std::nullopt;
}

/// Two engines on a loopback link; `commit_every_ms`: periodic commits (S5).
Pair start_pair(Mode mode, uint32_t commit_every_ms = 0) {
  auto l = baton::loopback::make_pair(1, 2);
  Pair p;
  for (int n = 1; n <= 2; ++n) {
    baton::EngineConfig c;
    c.node_id = static_cast<uint16_t>(n);
    c.track_writes = mode != Mode::kUntracked;
    if (mode == Mode::kCow || mode == Mode::kCowAtCommit || mode == Mode::kCowQuiescent)
      c.snapshot_mode = baton::EngineConfig::SnapshotMode::kCopyOnWrite;
    c.cow_protect_ahead = mode != Mode::kCowAtCommit;
    c.commit_every_ms = commit_every_ms;
    c.max_segment_size = uint64_t{4} << 30;
    if (g_chunk_bytes != 0) c.chunk_size = g_chunk_bytes;
    if (g_window != 0) c.window = g_window;
    std::vector<std::unique_ptr<baton::Link>> links;
    links.push_back(n == 1 ? std::move(l.a) : std::move(l.b));
    auto e = baton::Engine::start(c, std::move(links));
    if (!e) {
      std::fprintf(stderr, "baton-snapshot: %s\n", e.error().to_string().c_str());
      std::exit(1);
    }
    (n == 1 ? p.a : p.b) = std::move(*e);
  }
  for (int tries = 0; p.a->view().members.size() < 2 || !p.a->view().agreed; ++tries) {
    if (tries > 1000) std::fprintf(stderr, "baton-snapshot: no view\n"), std::exit(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return p;
}

/// Whether the written pages lie together (one run at a random place)
/// rather than scattered at random (--contiguous).
bool g_contiguous = false;

/// Page offsets to write before each commit: `dirty` percent, at random.
std::vector<uint64_t> pick_pages(uint64_t size, double dirty, std::mt19937_64& rng) {
  const uint64_t pages = size / 4096;
  const uint64_t n = std::max<uint64_t>(1, static_cast<uint64_t>(pages * dirty / 100));
  std::vector<uint64_t> v;
  v.reserve(n);
  const uint64_t first = rng() % (pages - n + 1);
  for (uint64_t i = 0; i < n; ++i) v.push_back((g_contiguous ? first + i : rng() % pages) * 4096);
  return v;
}

struct EngineRun {
  std::vector<double> write_us, commit_us, replicated_us, cycle_us;
  /// Per commit, from the call until the replica holds it: the CPU time of
  /// the primary's worker and of the replica's.
  std::vector<double> primary_cpu_us, replica_cpu_us;
  uint64_t copied = 0, skipped = 0;
  /// Pages per measured commit (copy-on-write).
  double protected_at_commit = 0, protected_ahead = 0, copied_at_commit = 0;
  /// The share of the measured commits whose pages were pending by their
  /// faults' tags (EngineStats::cow_pended_by_tags).
  double pended_by_tags = 0;
};

EngineRun run_engine(Mode mode, uint64_t size, double dirty, int commits) {
  Pair p = start_pair(mode);
  const baton::CommitOptions options{.quiescent = mode == Mode::kCowQuiescent};
  EngineRun r;
  auto seg = p.a->create("snap", size);
  if (!seg) std::fprintf(stderr, "baton-snapshot: %s\n", seg.error().to_string().c_str()), std::exit(1);
  auto mem = p.a->data(*seg);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < mem.size(); i += 4096) mem[i] = std::byte(static_cast<uint8_t>(rng()));
  auto g = p.a->commit(*seg);  // the first commit copies everything
  if (!g || !p.a->wait_replicated(*seg, *g, 1, std::chrono::seconds(60)))
    std::fprintf(stderr, "baton-snapshot: first commit failed\n"), std::exit(1);
  // Warm-up: after a commit that found most of the segment written (the
  // fill above) the tracker rests for a few commits (EngineConfig::track_writes).
  for (int c = 0; c < 10; ++c) {
    for (uint64_t off : pick_pages(size, dirty, rng)) mem[off + 8] = std::byte{1};
    g = p.a->commit(*seg, options);
    if (!g || !p.a->wait_replicated(*seg, *g, 1, std::chrono::seconds(60)))
      std::fprintf(stderr, "baton-snapshot: warm-up commit failed\n"), std::exit(1);
  }
  const auto before = p.a->stats();
  const auto cow_before = p.a->status(*seg);
  for (int c = 0; c < commits; ++c) {
    const auto pages = pick_pages(size, dirty, rng);
    const uint64_t t0 = now_ns();
    for (uint64_t off : pages) mem[off + 8] = std::byte(static_cast<uint8_t>(c + 1));
    const std::vector<uint64_t> cpu0 = thread_cpu_ns("baton-worker");
    const uint64_t t1 = now_ns();
    g = p.a->commit(*seg, options);
    const uint64_t t2 = now_ns();
    if (!g || !p.a->wait_replicated(*seg, *g, 1, std::chrono::seconds(60)))
      std::fprintf(stderr, "baton-snapshot: commit failed\n"), std::exit(1);
    const uint64_t t3 = now_ns();
    const std::vector<uint64_t> cpu1 = thread_cpu_ns("baton-worker");
    if (cpu0.size() == 2 && cpu1.size() == 2) {  // engine a's worker started first
      r.primary_cpu_us.push_back((cpu1[0] - cpu0[0]) / 1e3);
      r.replica_cpu_us.push_back((cpu1[1] - cpu0[1]) / 1e3);
    }
    r.write_us.push_back((t1 - t0) / 1e3);
    r.commit_us.push_back((t2 - t1) / 1e3);
    r.replicated_us.push_back((t3 - t1) / 1e3);
    r.cycle_us.push_back((t2 - t0) / 1e3);
  }
  const auto after = p.a->stats();
  if (const auto cow_after = p.a->status(*seg); cow_before && cow_after) {
    r.protected_at_commit = double(cow_after->cow_protected_at_commit - cow_before->cow_protected_at_commit) / commits;
    r.protected_ahead = double(cow_after->cow_protected_ahead - cow_before->cow_protected_ahead) / commits;
    r.copied_at_commit = double(cow_after->cow_copied_at_commit - cow_before->cow_copied_at_commit) / commits;
  }
  r.pended_by_tags = double(after.cow_pended_by_tags - before.cow_pended_by_tags) / commits;
  r.copied = after.snapshot_chunks_copied - before.snapshot_chunks_copied;
  r.skipped = after.snapshot_chunks_skipped - before.snapshot_chunks_skipped;
  return r;
}

/// Application slowdown under periodic commits (S5): a writer stores one
/// word at a random page for `seconds`, in a segment that the engine
/// commits by itself every `every_ms` (copy-on-write), against the same
/// loop with no commits. Returns writes per second of both, and the
/// commits taken.
struct PeriodicRun {
  double quiet_wps = 0, periodic_wps = 0;
  uint64_t commits = 0;
};

double write_for(std::span<std::byte> mem, double seconds, uint64_t seed, double hot_pct) {
  std::mt19937_64 rng(seed);
  // The writes fall on the first hot_pct percent of the pages (a hot set).
  const uint64_t pages = std::max<uint64_t>(1, static_cast<uint64_t>(mem.size() / 4096 * hot_pct / 100));
  uint64_t n = 0;
  const uint64_t end = now_ns() + static_cast<uint64_t>(seconds * 1e9);
  while (true) {
    for (int i = 0; i < 1024; ++i) mem[(rng() % pages) * 4096 + 8] = std::byte(static_cast<uint8_t>(n + i));
    n += 1024;
    if (now_ns() >= end) break;
  }
  return n / seconds;
}

PeriodicRun run_periodic(uint64_t size, uint32_t every_ms, double seconds, double hot_pct, Mode mode) {
  PeriodicRun r;
  for (const uint32_t period : {uint32_t{0}, every_ms}) {  // 0: nothing commits while it writes
    Pair p = start_pair(mode, period);
    auto seg = p.a->create("periodic", size);
    if (!seg) std::fprintf(stderr, "baton-snapshot: %s\n", seg.error().to_string().c_str()), std::exit(1);
    (period == 0 ? r.quiet_wps : r.periodic_wps) = write_for(p.a->data(*seg), seconds, 3, hot_pct);
    if (period != 0) r.commits = p.a->stats().periodic_commits;
  }
  return r;
}

/// The lean baselines on two buffers the way the engine allocates them.
void run_memcpy(uint64_t size, double dirty, int commits, std::vector<double>& whole, std::vector<double>& part) {
  auto src = baton::LocalStorage::create("bench-src", size, -1, baton::LocalStorage::Pages::kSmall);
  auto dst = baton::LocalStorage::create("bench-dst", size, -1);
  if (!src || !dst) std::fprintf(stderr, "baton-snapshot: no memory\n"), std::exit(1);
  std::mt19937_64 rng(1);
  for (int c = 0; c < commits; ++c) {
    const uint64_t t0 = now_ns();
    std::memcpy(dst->data(), src->data(), size);
    whole.push_back((now_ns() - t0) / 1e3);
    const auto pages = pick_pages(size, dirty, rng);
    const uint64_t t1 = now_ns();
    for (uint64_t off : pages) std::memcpy(dst->data() + off, src->data() + off, 4096);
    part.push_back((now_ns() - t1) / 1e3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<uint64_t> sizes_mib = {64, 256, 1024};
  double dirty = 1;
  int commits = 20;
  uint32_t periodic_ms = 0;
  std::vector<Mode> modes = {Mode::kUntracked, Mode::kTracked, Mode::kCow, Mode::kCowAtCommit, Mode::kCowQuiescent};
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--contiguous") {
      g_contiguous = true;
      --i;
    } else if (i + 1 >= argc) {
      std::fprintf(stderr, "baton-snapshot: %s needs a value\n", a.c_str());
      return 2;
    } else if (a == "--sizes-mib") {
      sizes_mib.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string t; std::getline(ss, t, ',');) sizes_mib.push_back(std::stoull(t));
    } else if (a == "--dirty") {
      dirty = std::atof(argv[i + 1]);
    } else if (a == "--periodic-ms") {
      periodic_ms = static_cast<uint32_t>(std::atoi(argv[i + 1]));
    } else if (a == "--commits") {
      commits = std::atoi(argv[i + 1]);
    } else if (a == "--chunk-kib") {
      g_chunk_bytes = static_cast<uint32_t>(std::atoi(argv[i + 1])) * 1024;
    } else if (a == "--window") {
      g_window = static_cast<uint32_t>(std::atoi(argv[i + 1]));
    } else if (a == "--modes") {
      modes.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string t; std::getline(ss, t, ',');) {
        const auto m = mode_named(t);
        if (!m) {
          std::fprintf(stderr, "baton-snapshot: no mode %s (untracked, tracked, cow, cow_at_commit, cow_quiescent)\n",
                       t.c_str());
          return 2;
        }
        modes.push_back(*m);
      }
    } else {
      std::fprintf(stderr,
                   "usage: baton-snapshot [--sizes-mib 64,256,1024] [--dirty PCT] [--commits N] [--contiguous]"
                   " [--chunk-kib K] [--window CHUNKS] [--modes untracked,tracked,cow,cow_at_commit,cow_quiescent]"
                   " [--periodic-ms MS]\n");
      return 2;
    }
  }
  if (!baton::DirtyTracker::unavailable_reason().empty())
    std::fprintf(stderr, "baton-snapshot: writes cannot be tracked here (%s): tracked = untracked\n",
                 baton::DirtyTracker::unavailable_reason().c_str());
  if (periodic_ms != 0) {
    for (uint64_t mib : sizes_mib)
      for (double hot : {1.0, 100.0})
        for (const Mode mode : {Mode::kCow, Mode::kCowAtCommit}) {
          const PeriodicRun r = run_periodic(mib << 20, periodic_ms, 2.0, hot, mode);
          std::printf("{\"size_mib\": %llu, \"hot_pct\": %.0f, \"protect_ahead\": %s, \"commit_every_ms\": %u, "
                      "\"seconds\": 2, \"periodic_commits\": %llu, \"quiet_writes_per_s\": %.0f, "
                      "\"periodic_writes_per_s\": %.0f, \"slowdown\": %.3f}\n",
                      static_cast<unsigned long long>(mib), hot, mode == Mode::kCow ? "true" : "false", periodic_ms,
                      static_cast<unsigned long long>(r.commits), r.quiet_wps, r.periodic_wps,
                      r.quiet_wps / r.periodic_wps);
          std::fflush(stdout);
        }
    return 0;
  }
  for (uint64_t mib : sizes_mib) {
    const uint64_t size = mib << 20;
    std::vector<double> whole, part;
    run_memcpy(size, dirty, commits, whole, part);
    std::string line;
    auto field = [&line](const char* key, double v, const char* format = "%.0f") {
      char buf[96];
      std::snprintf(buf, sizeof buf, format, v);
      line += std::string(line.empty() ? "{" : ", ") + "\"" + key + "\": " + buf;
    };
    field("size_mib", static_cast<double>(mib));
    field("dirty_pct", dirty, "%.2f");
    line += std::string(", \"contiguous\": ") + (g_contiguous ? "true" : "false");
    field("commits", commits);
    field("chunk_kib", g_chunk_bytes / 1024.0);
    field("memcpy_whole_p50_us", median(whole));
    field("memcpy_dirty_p50_us", median(part));
    for (const Mode mode : modes) {
      const EngineRun r = run_engine(mode, size, dirty, commits);
      const std::string m = mode_name(mode);
      auto key = [&m](const char* what) { return m + "_" + what; };
      field(key("commit_p50_us").c_str(), median(r.commit_us));
      field(key("commit_p99_us").c_str(), pct(r.commit_us, 0.99));
      field(key("write_p50_us").c_str(), median(r.write_us));
      field(key("replicated_p50_us").c_str(), median(r.replicated_us));
      if (!r.primary_cpu_us.empty()) {
        field(key("primary_cpu_p50_us").c_str(), median(r.primary_cpu_us));
        field(key("replica_cpu_p50_us").c_str(), median(r.replica_cpu_us));
      }
      field(key("cycle_p50_us").c_str(), median(r.cycle_us));
      field(key("commit_over_memcpy_whole").c_str(), median(r.commit_us) / median(whole), "%.4f");
      field(key("commit_over_memcpy_dirty").c_str(), median(r.commit_us) / median(part), "%.2f");
      if (mode == Mode::kTracked) {
        field("tracked_chunks_copied", static_cast<double>(r.copied));
        field("tracked_chunks_skipped", static_cast<double>(r.skipped));
      }
      if (mode == Mode::kCow || mode == Mode::kCowAtCommit || mode == Mode::kCowQuiescent) {
        field(key("pages_protected_ahead").c_str(), r.protected_ahead, "%.1f");
        field(key("pages_protected_at_commit").c_str(), r.protected_at_commit, "%.1f");
        field(key("pages_copied_at_commit").c_str(), r.copied_at_commit, "%.1f");
        field(key("pended_by_tags").c_str(), r.pended_by_tags, "%.2f");
      }
    }
    std::printf("%s}\n", line.c_str());
    std::fflush(stdout);
  }
  return 0;
}
