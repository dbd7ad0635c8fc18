// baton-campaign: the random kill campaign on real processes (issue #8).
//
// A chassis of batond blades (batonctl chassis, memif or af_packet) and one
// application at a time, a separate process on the public C API. Each cycle
// the application starts on a blade with baton_open (S11): that is the
// restore under test, checked against what the previous writer was told was
// durable. Then it writes generations whose content derives from their
// number (by default each generation rewrites one 4 KiB stripe in 16, so
// commits copy only what changed; --writes full rewrites everything),
// commits, waits for BATON_DURABLE and publishes the durable
// generation in shared memory before going on. At a random moment one fault
// strikes: SIGKILL the owner blade's batond and the writer (sometimes
// 0-400 us into a commit), only the writer, a replica blade, or the writer
// with an agent moving the segment to another blade (baton_load); or no
// fault: the writer exits cleanly, deleting the segment (baton_delete), and
// the next start must be a fresh one; or the owner blade's batond stalls
// (SIGSTOP for 50-1000 ms, past its failure timeout, while the writer
// writes and commits), goes on, and then the writer is killed and starts
// again there; or (af_packet only: nftables rules on the veths) the owner
// blade is cut off from every other blade (or, with another blade beside
// it, from the rest), and either its writer goes on on its side until the
// partition heals and is then killed, or the next writer starts on the
// majority side (a takeover) while the old one still runs in the
// minority, and the partition heals after the new writer's restore: the
// old owner must be fenced, and nothing the old writer was told was
// durable may be missing from what the new one restored. Killed blades
// restart empty (a new incarnation). A restore that returns an older
// generation than the last durable one is LOST; bytes that are not that
// generation's content are TORN; no restore within the deadline is
// FAILED; a restore after a delete returned is RESURRECTED.
//
//   baton-campaign [--cycles 30] [--transport memif|af_packet|shm|mixed] [--blades 4]
//                  [--size BYTES] [--writes sparse|full] [--seed S] [--dir D]
//                  [--standby BLADE] [--snapshots stage-copy|copy-on-write|copy-on-write-ahead|copy-on-write-quiescent]
//                  [--workers N]
//                  [--faults owner,application,replica,move,delete,stall,partition]
//                  [--chunk-kib K | K1,K2,...] [--period-ms N]
//
// --faults: only these kinds of fault (default: all; partition only with
// af_packet).
//
// --snapshots copy-on-write: every blade snapshots the segment by
// copy-on-write (S14): the writer's client library freezes its mapping at
// each commit and goes on writing while its blade settles the snapshot, so
// kills land with pages pending and copied aside. copy-on-write-ahead:
// the same, with the library's protector protecting written pages again
// between commits ([snapshots] protect_ahead). copy-on-write-quiescent:
// the writer (one thread: it writes, then commits) makes the quiescent
// promise (BATON_QUIESCENT_COMMITS=1), so its library protects ahead and
// its commits copy the pages left to them and leave them writable.
//
// --workers N: every blade's engine runs N per-core shards (issue #11), a
// queue pair of every memif link (a region per shm link) each; the
// segment, "campaign", falls to shard 1 of 2.
//
// --chunk-kib: the blades' chunk size ([engine] chunk_kib), one for all or
// one per blade: blades that disagree send full copies where a delta's
// chunking does not match the base a replica holds.
//
// --period-ms N (with --snapshots copy-on-write*): batond asks for a
// commit every N ms as well (S5, [snapshots] commit_every_ms), which the
// writer's client library takes by itself, between and in the middle of
// the writer's own steps. A generation is then the memory at any point of
// the writer's run, not only after a step: the writer stores each step
// in order, a word at a time (volatile stores), and its words say which
// step wrote them, so a restore is checked to be the memory at some
// point of that run (a prefix of a step) at or after the last step
// acknowledged durable. The writer redoes a step a restore caught midway.
//
// --standby: that blade keeps a hot standby of the segment (S16), so the
// restores and agent loads there promote its ready copy; the campaign
// counts the promotions from the blades' events.
//
// A failed restore keeps its evidence: every blade's log and, where gdb is
// installed, every thread's stack of every live blade, in
// DIR-cycleN/ beside the chassis directory (which goes at the end).

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "baton/baton.h"
#include "ipc/client.h"
#include "chassis.h"

namespace {

using Clock = std::chrono::steady_clock;

// SIGINT / SIGTERM: finish the cycle, then take the chassis down (its
// network namespaces and processes would otherwise outlive the campaign).
volatile sig_atomic_t stop_requested = 0;
void on_stop(int) { stop_requested = 1; }

/// What the writer process tells the campaign, in shared memory.
struct Shared {
  std::atomic<int> state;               ///< 0 starting, 1 restored, 2 writing, 3 gave up
  std::atomic<uint64_t> restored;       ///< generation the open returned (0: fresh)
  std::atomic<int> restored_ok;         ///< 1: its bytes are that generation's content
  std::atomic<uint64_t> restore_us;     ///< how long the open took
  std::atomic<uint64_t> durable;        ///< newest generation acknowledged durable
  std::atomic<uint64_t> durable_step;   ///< --period-ms: the step that generation completed
  std::atomic<uint64_t> restored_step;  ///< --period-ms: the step the restore was in, or had completed
  std::atomic<uint64_t> periodic;       ///< --period-ms: generations the library took between the writer's
  std::atomic<int> midway;              ///< --period-ms: the restore caught a step midway
  std::atomic<int> committing;          ///< inside baton_commit
  std::atomic<uint64_t> commits;
  std::atomic<int> deleted;             ///< after a clean exit: 1 deleted, -1 the delete failed
  char error[256];
};

// SIGUSR1 to the writer: exit cleanly (unregister, delete, exit).
volatile sig_atomic_t exit_requested = 0;
void on_exit_request(int) { exit_requested = 1; }

uint64_t word(uint64_t gen, uint64_t i) {
  uint64_t x = gen * 0x9E3779B97F4A7C15ull ^ (i + 1) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}
// Sparse writes: generation g rewrites stripe g % kStripes (stripes of 4 KiB,
// round robin over the segment), so a generation's content is, word by
// word, that of the newest generation that wrote the word's stripe.
bool g_sparse = true;
constexpr uint64_t kStripeWords = 512, kStripes = 16;
uint64_t stripe_of(uint64_t i) { return (i / kStripeWords) % kStripes; }
/// The newest generation <= gen that wrote word i (0: none, a zero).
uint64_t last_write(uint64_t gen, uint64_t i) {
  if (!g_sparse) return gen;
  const uint64_t back = (gen + kStripes - stripe_of(i)) % kStripes;
  return gen > back ? gen - back : 0;
}
/// Turns generation gen - 1's content into gen's.
void fill(void* p, uint64_t size, uint64_t gen) {
  auto* w = static_cast<uint64_t*>(p);
  for (uint64_t i = 0; i < size / 8; ++i)
    if (!g_sparse || stripe_of(i) == gen % kStripes) w[i] = word(gen, i);
}
bool holds(const void* p, uint64_t size, uint64_t gen) {
  const auto* w = static_cast<const uint64_t*>(p);
  for (uint64_t i = 0; i < size / 8; ++i) {
    const uint64_t g = last_write(gen, i);
    if (w[i] != (g == 0 ? 0 : word(g, i))) return false;
  }
  return true;
}

// --period-ms: step j's word i is (j << 32 | tag(i)), stored in order of i,
// so any point of the writer's run can be told from the memory.
bool g_periodic = false;
/// --snapshots copy-on-write-quiescent: the writer promises quiescent commits.
bool g_quiescent = false;
uint64_t tag(uint64_t i) { return ((i + 1) * 0xBF58476D1CE4E5B9ull) >> 32; }
bool in_step(uint64_t step, uint64_t i) { return !g_sparse || stripe_of(i) == step % kStripes; }
/// Step `step` (of the run), in order, a word at a time.
void store_step(void* p, uint64_t size, uint64_t step) {
  auto* w = static_cast<volatile uint64_t*>(p);
  for (uint64_t i = 0; i < size / 8; ++i)
    if (in_step(step, i)) w[i] = step << 32 | tag(i);
}
/// Where in the writer's run memory `p` is: the newest step it holds
/// (`*complete`: the whole of it), or false if it is no point of the run
/// (a word no step wrote, or not a prefix of the newest step over what
/// the steps before it left).
bool point_of_run(const void* p, uint64_t size, uint64_t* step, bool* complete) {
  const auto* w = static_cast<const uint64_t*>(p);
  uint64_t k = 0;
  for (uint64_t i = 0; i < size / 8; ++i) {
    if (w[i] != 0 && (w[i] & 0xffffffffull) != tag(i)) return false;
    k = std::max(k, w[i] >> 32);
  }
  *step = k;
  *complete = true;
  if (k == 0) return std::all_of(w, w + size / 8, [](uint64_t x) { return x == 0; });
  bool prefix = true;  // still in the part of step k already stored
  for (uint64_t i = 0; i < size / 8; ++i) {
    const uint64_t before = last_write(k - 1, i);
    const uint64_t old = before == 0 ? 0 : before << 32 | tag(i);
    const uint64_t now = k << 32 | tag(i);
    if (!in_step(k, i)) {
      if (w[i] != old) return false;
    } else if (w[i] == now) {
      if (!prefix) return false;  // step k's words are stored in order
    } else {
      if (w[i] != old) return false;
      prefix = false;
      *complete = false;
    }
  }
  return true;
}

/// A blade's counts (batonctl status): chunks commits left alone as
/// unchanged, commits taken by copy-on-write, commits posted, loads that
/// read a peer's lent slot directly (shm links), loads that took the
/// blade's own replica over in place (and of those, from a slot the
/// replica kept close to the generation), and the times a dense
/// writer's library lifted its protection whole and the pages its
/// quiescent commits copied (as its segments' shares count them now: a
/// writer's next open starts a share of its own, so lower bounds).
struct Counts {
  uint64_t skipped = 0, cow = 0, posted = 0, direct = 0, in_place = 0, chained = 0, lifted = 0, copied = 0,
           posted_cow = 0;
  Counts& operator+=(const Counts& o) {
    skipped += o.skipped;
    cow += o.cow;
    posted += o.posted;
    posted_cow += o.posted_cow;
    direct += o.direct;
    in_place += o.in_place;
    chained += o.chained;
    lifted += o.lifted;
    copied += o.copied;
    return *this;
  }
};

/// `last` if the blade cannot be asked.
Counts blade_counts(const std::string& socket, Counts last) {
  auto c = baton::ipc::Client::connect(socket);
  if (!c) return last;
  auto text = (*c)->status();
  if (!text) return last;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.contains("clients")) return last;
  const auto& rep = j.contains("replication") ? j["replication"] : nlohmann::json::object();
  uint64_t lifted = 0, copied = 0;
  if (j.contains("segments") && j["segments"].is_array())
    for (const auto& seg : j["segments"]) {
      lifted += seg.value("cow_lifted_whole", uint64_t{0});
      copied += seg.value("cow_copied_at_commit", uint64_t{0});
    }
  return Counts{j["clients"].value("chunks_skipped", last.skipped), j["clients"].value("cow_snapshots", last.cow),
                j["clients"].value("posted_commits", last.posted), rep.value("direct_reads", last.direct),
                rep.value("replica_promotions", last.in_place), rep.value("replica_promotions_chained", last.chained),
                std::max(lifted, last.lifted), std::max(copied, last.copied),
                j["clients"].value("posted_cow_commits", last.posted_cow)};
}

/// Events on `socket` since `since_us` (unix microseconds) whose text
/// contains `what`; `*latest` becomes the newest event's time seen.
int count_events(const std::string& socket, uint64_t since_us, const std::string& what, uint64_t* latest) {
  auto c = baton::ipc::Client::connect(socket);
  if (!c) return 0;
  auto events = (*c)->events();
  if (!events) return 0;
  int n = 0;
  for (const auto& e : *events) {
    if (e.unix_us <= since_us) continue;
    *latest = std::max(*latest, e.unix_us);
    n += e.text.find(what) != std::string::npos;
  }
  return n;
}

/// The application: opens the segment on `socket` (retrying while the
/// cluster settles), reports the restore, then writes until killed.
[[noreturn]] void writer(Shared* sh, const std::string& socket, const char* name, uint64_t size) {
  baton_t* b = nullptr;
  baton_segment_t* seg = nullptr;
  int restored = 0;
  uint64_t gen = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  const auto t0 = Clock::now();
  int rc = -1;
  if (g_quiescent) setenv("BATON_QUIESCENT_COMMITS", "1", 1);  // before the open: the library reads it there
  while (Clock::now() < deadline) {
    if (b == nullptr && baton_connect(socket.c_str(), &b) != 0) b = nullptr;
    if (b != nullptr && (rc = baton_open(b, name, size, &seg, &restored, &gen)) == 0) break;
    if (b != nullptr && rc != BATON_EUNAVAIL && rc != BATON_EEXIST && rc != BATON_ETIMEDOUT && rc != BATON_ENOENT) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (rc != 0) {
    std::snprintf(sh->error, sizeof sh->error, "open on %s: %s", socket.c_str(),
                  b != nullptr ? baton_last_error() : "cannot connect");
    sh->state = 3;
    _exit(1);
  }
  sh->restore_us = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
  sh->restored = restored ? gen : 0;
  uint64_t step = 0;  // --period-ms: the next step to store
  if (g_periodic) {
    bool complete = false;
    uint64_t k = 0;
    sh->restored_ok = point_of_run(baton_segment_data(seg), size, &k, &complete) && (restored || k == 0) ? 1 : 0;
    sh->restored_step = complete ? k : k - 1;
    sh->midway = complete ? 0 : 1;
    step = complete ? k + 1 : k;  // a step caught midway is stored again, whole
  } else {
    sh->restored_ok = holds(baton_segment_data(seg), size, restored ? gen : 0) ? 1 : 0;
  }
  sh->state = 1;
  for (uint64_t g = restored ? gen : 0;;) {
    if (exit_requested) {  // a clean exit: "start fresh next time" (S11)
      baton_unregister(seg);
      const int d = baton_delete(b, name);
      if (d != 0) std::snprintf(sh->error, sizeof sh->error, "delete: %s", baton_last_error());
      sh->deleted = d == 0 ? 1 : -1;
      _exit(0);
    }
    if (g_periodic) store_step(baton_segment_data(seg), size, step);
    else fill(baton_segment_data(seg), size, g + 1);
    const uint64_t was = g;
    sh->committing = 1;
    rc = baton_commit(seg, &g);
    sh->committing = 0;
    if (rc != 0) break;
    sh->commits.fetch_add(1);
    if (g > was + 1) sh->periodic.fetch_add(g - was - 1);  // taken by the library meanwhile
    sh->state = 2;
    rc = baton_wait(seg, g, BATON_DURABLE, 5000);
    if (rc == 0) {
      sh->durable_step = step;  // (before the generation: the campaign reads them the other way round)
      sh->durable = g;
    } else if (rc != BATON_ETIMEDOUT) {
      break;
    }
    ++step;
  }
  std::snprintf(sh->error, sizeof sh->error, "writer stopped: %s", baton_last_error());
  pause();
  _exit(0);
}

/// Keeps what a failed cycle leaves: each blade's log, and the stacks of
/// every thread of each live blade (gdb, if installed), in `into`.
void keep_evidence(const std::string& dir, const std::string& into) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(into, ec);
  const bool gdb = fs::exists("/usr/bin/gdb", ec);
  for (const auto& b : baton::ctl::chassis_blades(dir)) {
    const std::string stem = into + "/blade" + std::to_string(b.id);
    fs::copy_file(b.log, stem + ".log", fs::copy_options::overwrite_existing, ec);
    if (!gdb || !b.alive) continue;
    const std::string cmd = "/usr/bin/gdb -p " + std::to_string(b.pid) +
                            " -batch -nx -ex 'thread apply all bt' > " + stem + ".stacks 2>&1";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "gdb on blade %d failed\n", b.id);
  }
  std::fprintf(stderr, "evidence kept in %s\n", into.c_str());
}

struct Result {
  int cycles = 0, lost = 0, torn = 0, failed = 0, resurrected = 0, deletes = 0, failed_deletes = 0, stalls = 0;
  int partitions = 0, splits = 0, unfenced = 0;
  std::vector<double> restore_ms;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  int cycles = 30, blades = 4, standby = 0, period_ms = 0;
  std::string snapshots = "stage-copy";
  std::string faults_arg;  // empty: every kind the transport allows
  uint64_t size = 1 << 20, seed = static_cast<uint64_t>(time(nullptr));
  baton::ctl::ChassisConfig cc;
  cc.dir = "/tmp/baton-campaign-" + std::to_string(getpid());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (v == nullptr) {
      std::fprintf(stderr, "baton-campaign: %s needs a value\n", a.c_str());
      return 2;
    }
    ++i;
    if (a == "--cycles") cycles = std::atoi(v);
    else if (a == "--blades") blades = std::atoi(v);
    else if (a == "--size") size = std::strtoull(v, nullptr, 10);
    else if (a == "--seed") seed = std::strtoull(v, nullptr, 10);
    else if (a == "--transport") cc.transport = v;
    else if (a == "--dir") cc.dir = v;
    else if (a == "--standby") standby = std::atoi(v);
    else if (a == "--workers") cc.workers = std::atoi(v);
    else if (a == "--memif-zero-copy" && (std::string(v) == "yes" || std::string(v) == "no"))
      cc.memif_zero_copy = std::string(v) == "yes";
    else if (a == "--faults") faults_arg = v;
    else if (a == "--period-ms") period_ms = std::atoi(v);
    else if (a == "--chunk-kib") {
      cc.chunk_kib.clear();
      for (const char* p = v; *p != '\0';) {
        char* end = nullptr;
        cc.chunk_kib.push_back(static_cast<uint32_t>(std::strtoul(p, &end, 10)));
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p != '\0') break;  // not a number: chassis up refuses what came before
      }
    }
    else if (a == "--snapshots" &&
             (std::string(v) == "stage-copy" || std::string(v) == "copy-on-write" ||
              std::string(v) == "copy-on-write-ahead" || std::string(v) == "copy-on-write-quiescent"))
      snapshots = v;
    else if (a == "--writes" && (std::string(v) == "sparse" || std::string(v) == "full")) g_sparse = std::string(v) == "sparse";
    else {
      std::fprintf(stderr, "usage: baton-campaign [--cycles N] [--transport memif|af_packet|shm|mixed] [--blades N] "
                           "[--size BYTES] [--writes sparse|full] [--seed S] [--dir D] [--standby BLADE] "
                           "[--snapshots stage-copy|copy-on-write|copy-on-write-ahead|copy-on-write-quiescent] "
                           "[--workers N] "
                           "[--memif-zero-copy yes|no] "
                           "[--faults owner,application,replica,"
                           "move,delete,stall,partition] [--chunk-kib K[,K...]] [--period-ms N]\n");
      return 2;
    }
  }
  if (cycles < 1 || blades < 3 || blades > 8 || size < 4096 || size % 8 != 0 || size > (1ull << 30) ||
      standby < 0 || standby > blades) {
    std::fprintf(stderr, "baton-campaign: --cycles >= 1, --blades 3..8, --size 4096..1 GiB, a multiple of 8, "
                         "--standby a blade\n");
    return 2;
  }
  if (period_ms < 0 || period_ms > 60'000 || (period_ms != 0 && snapshots == "stage-copy")) {
    std::fprintf(stderr, "baton-campaign: --period-ms 1..60000, with --snapshots copy-on-write or "
                         "copy-on-write-ahead (periodic commits need copy-on-write)\n");
    return 2;
  }
  g_periodic = period_ms != 0;
  g_quiescent = snapshots == "copy-on-write-quiescent";
  // The kinds of fault, by number (the branches below). Partitions need
  // nftables on veths: af_packet chassis only. By default the other
  // transports draw from the first six, as before partitions were added,
  // so their seeds replay the same campaigns.
  static constexpr const char* kFaultNames[] = {"owner", "application", "replica", "move",
                                                "delete", "stall", "partition"};
  std::vector<int> kinds;
  if (faults_arg.empty()) {
    for (int k = 0; k < (cc.transport == "af_packet" ? 7 : 6); ++k) kinds.push_back(k);
  } else {
    for (size_t at = 0; at <= faults_arg.size();) {
      const size_t comma = std::min(faults_arg.find(',', at), faults_arg.size());
      const std::string f = faults_arg.substr(at, comma - at);
      const auto* it = std::find(std::begin(kFaultNames), std::end(kFaultNames), f);
      if (it == std::end(kFaultNames)) {
        std::fprintf(stderr, "baton-campaign: no fault '%s' (owner, application, replica, move, delete, stall, "
                             "partition)\n", f.c_str());
        return 2;
      }
      kinds.push_back(static_cast<int>(it - std::begin(kFaultNames)));
      at = comma + 1;
    }
    if (std::count(kinds.begin(), kinds.end(), 6) != 0 && cc.transport != "af_packet") {
      std::fprintf(stderr, "baton-campaign: partitions need --transport af_packet (nftables rules on veths)\n");
      return 2;
    }
  }
  const char* name = "campaign";
  std::string extra;  // appended to every blade's config
  if (standby != 0) extra += "[[standby]]\nsegment = \"" + std::string(name) + "\"\nnodes = [" + std::to_string(standby) + "]\n";
  if (snapshots == "copy-on-write" || snapshots == "copy-on-write-quiescent")
    extra += "[snapshots]\nmode = \"copy-on-write\"\n";
  if (snapshots == "copy-on-write-ahead") extra += "[snapshots]\nmode = \"copy-on-write\"\nprotect_ahead = true\n";
  if (period_ms != 0) extra += "commit_every_ms = " + std::to_string(period_ms) + "\n";
  if (!extra.empty()) {
    cc.groups_file = cc.dir + ".extra.toml";
    std::FILE* f = std::fopen(cc.groups_file.c_str(), "w");
    if (f == nullptr) {
      std::perror(cc.groups_file.c_str());
      return 1;
    }
    std::fputs(extra.c_str(), f);
    std::fclose(f);
  }
  cc.blades = blades;
  cc.replication_factor = 2;
  cc.batond = baton::ctl::sibling("batond");
  std::mt19937_64 rng(seed);
  std::string kinds_text;
  for (int k : kinds) kinds_text += (kinds_text.empty() ? "" : ",") + std::string(kFaultNames[k]);
  std::string chunks_text = "default";
  for (size_t i = 0; i < cc.chunk_kib.size(); ++i)
    chunks_text = (i == 0 ? "" : chunks_text + ",") + std::to_string(cc.chunk_kib[i]);
  const std::string period_text = period_ms != 0 ? " (and every " + std::to_string(period_ms) + " ms)" : "";
  std::printf("campaign: %d cycles, %d blades over %s, RF 2, %llu-byte segment, %s snapshots%s, %d shard%s, %s KiB "
              "chunks, seed %llu, faults %s\n",
              cycles, blades, cc.transport.c_str(), static_cast<unsigned long long>(size), snapshots.c_str(),
              period_text.c_str(),
              cc.workers, cc.workers == 1 ? "" : "s", chunks_text.c_str(), static_cast<unsigned long long>(seed),
              kinds_text.c_str());
  auto up = baton::ctl::chassis_up(cc);
  if (!up) {
    std::fprintf(stderr, "baton-campaign: chassis up: %s (a campaign killed earlier may have left its chassis: "
                         "batonctl chassis down --dir %s)\n", up.error().message.c_str(), cc.dir.c_str());
    (void)baton::ctl::chassis_down(cc.dir);
    if (!cc.groups_file.empty()) std::remove(cc.groups_file.c_str());
    return 1;
  }
  // One per writer alive at once: a writer left running in a minority
  // keeps its own while the next cycle's writer starts.
  auto* shared = static_cast<Shared*>(
      mmap(nullptr, 2 * sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (shared == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  /// The writer left running in a cut-off blade while the next one takes
  /// over on the majority side (0: none).
  struct Minority {
    pid_t writer = 0;
    Shared* sh = nullptr;
    int blade = 0;
  } minority;
  int promotions = 0;
  uint64_t events_seen_us = 0;  // promotions are counted from events after this
  auto pid_of = [&](int blade) {
    for (const auto& b : baton::ctl::chassis_blades(cc.dir))
      if (b.id == blade) return b.alive ? b.pid : -1;
    return -1;
  };
  auto socket_of = [&](int blade) { return cc.dir + "/blade" + std::to_string(blade) + ".sock"; };
  // Chunks the blades' commits left alone (the writer's sparse writes at
  // work), per blade incarnation: banked when a blade is killed.
  std::vector<Counts> counts_now(blades + 1);
  Counts banked;
  Result r;
  uint64_t durable = 0;  // what the application was told, across cycles
  uint64_t durable_step = 0;  // --period-ms: the step that generation completed
  uint64_t periodic = 0;  // --period-ms: generations the writers' libraries took by themselves
  int midway = 0;  // --period-ms: restores of a generation taken in the middle of a step
  bool expect_fresh = false;  // the last cycle ended in a delete that returned
  int blade = 1;
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  for (int cycle = 1; cycle <= cycles && !stop_requested; ++cycle) {
    Shared* sh = &shared[cycle % 2];
    new (sh) Shared{};
    const pid_t w = fork();
    if (w == 0) {
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGUSR1, on_exit_request);
      writer(sh, socket_of(blade), name, size);
    }
    // Until it reports; a writer killed from outside (a SIGTERM to every
    // process of the campaign's name, say) never does.
    while (sh->state == 0) {
      if (waitpid(w, nullptr, WNOHANG) == w && sh->state == 0) {
        std::snprintf(sh->error, sizeof sh->error, "the writer died before its open ended");
        sh->state = 3;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ++r.cycles;
    const char* verdict = "ok";
    if (sh->state == 3) {
      ++r.failed;
      verdict = "FAILED";
      keep_evidence(cc.dir, cc.dir + "-cycle" + std::to_string(cycle));
    } else {
      r.restore_ms.push_back(sh->restore_us / 1000.0);
      if (expect_fresh && sh->restored != 0) {
        ++r.resurrected;
        verdict = "RESURRECTED";
      } else if (sh->restored < durable || (g_periodic && sh->restored_ok && sh->restored_step < durable_step)) {
        ++r.lost;
        verdict = "LOST";
      } else if (!sh->restored_ok) {
        ++r.torn;
        verdict = "TORN";
      }
    }
    char steps[64] = "";
    if (g_periodic)
      std::snprintf(steps, sizeof steps, ", step %llu (%llu)", static_cast<unsigned long long>(sh->restored_step),
                    static_cast<unsigned long long>(durable_step));
    std::printf("cycle %3d  blade %d  restored %6llu (durable was %6llu%s) in %7.2f ms  %s%s%s\n", cycle, blade,
                static_cast<unsigned long long>(sh->restored), static_cast<unsigned long long>(durable), steps,
                sh->restore_us / 1000.0, verdict, sh->state == 3 ? ": " : "", sh->state == 3 ? sh->error : "");
    std::fflush(stdout);
    if (minority.writer != 0) {
      // The new writer restored on the majority side while the old one
      // ran cut off. Heal; the old owner must learn it was superseded.
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 500));
      if (auto ok = baton::ctl::chassis_heal(cc.dir); !ok)
        std::fprintf(stderr, "heal: %s\n", ok.error().message.c_str());
      const auto until = Clock::now() + std::chrono::seconds(15);
      while (minority.sh->error[0] == 0 && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      kill(minority.writer, SIGKILL);
      waitpid(minority.writer, nullptr, 0);
      const uint64_t told = minority.sh->durable.load();
      const bool fenced = std::strstr(minority.sh->error, "fenced") != nullptr ||
                          std::strstr(minority.sh->error, "newer owner") != nullptr;
      // (Unless the takeover failed: then the old owner may still own it.)
      if (!fenced && sh->state != 3) ++r.unfenced;
      std::printf("           blade %d's writer, cut off: %s\n", minority.blade,
                  minority.sh->error[0] != 0 ? minority.sh->error : "still running 15 s after the heal");
      // Its last durable acknowledgement came before the cut (the majority
      // detects a blade's death only after its links are gone), so this
      // cycle's restore, checked above, already covers it.
      if (sh->state != 3 &&
          (told > sh->restored || (g_periodic && minority.sh->durable_step.load() > sh->restored_step.load()))) {
        ++r.lost;
        std::printf("           LOST: blade %d's writer was told generation %llu was durable; the majority restored "
                    "%llu\n", minority.blade, static_cast<unsigned long long>(told),
                    static_cast<unsigned long long>(sh->restored.load()));
      }
      minority = {};
    }
    if (sh->state == 3) {  // carry on from wherever the state is
      waitpid(w, nullptr, 0);
      blade = 1 + static_cast<int>(rng() % blades);
      continue;
    }
    // The loads since the last look (this restore, an agent's before it)
    // that took the standby's ready copy over.
    if (standby != 0) {
      uint64_t latest = events_seen_us;
      for (int k = 1; k <= blades; ++k)
        promotions += count_events(socket_of(k), events_seen_us, "hot standby copy", &latest);
      events_seen_us = latest;
    }
    // Let it write for a while, then strike.
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 400));
    for (int k = 1; k <= blades; ++k) counts_now[k] = blade_counts(socket_of(k), counts_now[k]);
    expect_fresh = false;
    const int fault = kinds[rng() % kinds.size()];
    int next = blade;
    std::vector<int> killed;
    if (fault == 0) {  // the owner blade and its application
      if (rng() % 2 == 0) {  // 0-400 us into a commit
        const auto until = Clock::now() + std::chrono::seconds(2);
        while (sh->committing == 0 && Clock::now() < until) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 400));
      }
      kill(w, SIGKILL);
      if (pid_t p = pid_of(blade); p > 0) kill(p, SIGKILL);
      killed.push_back(blade);
      next = 1 + static_cast<int>(rng() % (blades - 1));
      if (next >= blade) ++next;
    } else if (fault == 1) {  // only the application: it restarts on its blade
      kill(w, SIGKILL);
    } else if (fault == 2) {  // a replica blade (or any other), then the application
      int victim = 1 + static_cast<int>(rng() % (blades - 1));
      if (victim >= blade) ++victim;
      if (pid_t p = pid_of(victim); p > 0) kill(p, SIGKILL);
      killed.push_back(victim);
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 300));
      kill(w, SIGKILL);
    } else if (fault == 5) {  // the owner blade stalls, then goes on; then the application dies
      if (pid_t p = pid_of(blade); p > 0 && kill(p, SIGSTOP) == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 950));
        kill(p, SIGCONT);
        ++r.stalls;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 300));
      kill(w, SIGKILL);
    } else if (fault == 6) {  // the owner blade is cut off from every other blade
      ++r.partitions;
      const int how = static_cast<int>(rng() % 3);
      std::vector<int> others;  // the blades across the cut
      int partner = 0;  // how == 2: a second blade on the owner's side (of four: no quorum on either)
      if (how == 2) {
        partner = 1 + static_cast<int>(rng() % (blades - 1));
        if (partner >= blade) ++partner;
      }
      for (int k = 1; k <= blades; ++k)
        if (k != blade && k != partner) others.push_back(k);
      for (int side : {blade, partner})
        if (side != 0)
          if (auto ok = baton::ctl::chassis_fault(cc.dir, side, others, 100); !ok)
            std::fprintf(stderr, "partition blade %d: %s\n", side, ok.error().message.c_str());
      if (how != 1) {  // the writer goes on on its side, then the partition heals
        std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 1300));
        if (auto ok = baton::ctl::chassis_heal(cc.dir); !ok)
          std::fprintf(stderr, "heal: %s\n", ok.error().message.c_str());
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 300));
        kill(w, SIGKILL);
      } else {  // the next writer takes over on the majority side while this one runs on
        ++r.splits;
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
        minority = Minority{w, sh, blade};
        next = 1 + static_cast<int>(rng() % (blades - 1));
        if (next >= blade) ++next;
      }
    } else if (fault == 4) {  // no fault: the application exits cleanly and deletes its segment
      kill(w, SIGUSR1);
      waitpid(w, nullptr, 0);
      if (sh->deleted == 1) {
        ++r.deletes;
        expect_fresh = true;
      } else {
        ++r.failed_deletes;
        std::printf("           clean exit: %s\n", sh->deleted == -1 ? sh->error : "the writer did not get to delete");
      }
      // Deleted (or perhaps deleted: a failed delete may have reached some
      // nodes): nothing before it need be restored.
      durable = 0;
      sh->durable = 0;
      durable_step = 0;
      sh->durable_step = 0;
    } else {  // the application dies; an agent moves the segment elsewhere
      kill(w, SIGKILL);
      next = 1 + static_cast<int>(rng() % (blades - 1));
      if (next >= blade) ++next;
      baton_t* agent = nullptr;
      baton_segment_t* moved = nullptr;
      uint64_t gen = 0;
      // The writer's connection must be seen gone before the name is free.
      for (int i = 0; i < 200; ++i) {
        if (agent == nullptr && baton_connect(socket_of(next).c_str(), &agent) != 0) agent = nullptr;
        if (agent != nullptr && baton_load(agent, name, &moved, &gen) == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (agent != nullptr) baton_stop(agent);
    }
    if (fault != 4 && minority.writer != w) waitpid(w, nullptr, 0);
    durable = std::max(durable, sh->durable.load());
    durable_step = std::max(durable_step, sh->durable_step.load());
    periodic += sh->periodic.load();
    midway += sh->midway.load();
    for (int k : killed) banked += std::exchange(counts_now[k], Counts{});  // its counters die with it
    for (int k : killed) {  // a new, empty incarnation
      for (int i = 0; i < 200 && pid_of(k) > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      if (auto p = baton::ctl::chassis_restart_blade(cc, k); !p)
        std::fprintf(stderr, "restart blade %d: %s\n", k, p.error().message.c_str());
    }
    blade = next;
  }
  if (minority.writer != 0) {  // stopped before the next writer started
    kill(minority.writer, SIGKILL);
    waitpid(minority.writer, nullptr, 0);
  }
  for (int k = 1; k <= blades; ++k) banked += blade_counts(socket_of(k), counts_now[k]);
  (void)baton::ctl::chassis_down(cc.dir);
  if (!cc.groups_file.empty()) std::remove(cc.groups_file.c_str());
  if (standby != 0) {
    std::printf("campaign: blade %d kept a hot standby; %d loads took its ready copy over\n", standby, promotions);
  }
  std::printf("campaign: %d cycles over %s: %d lost, %d torn, %d failed restores, %d resurrected after a delete "
              "(%d deletes, %d failed; %d owner stalls; %d owner partitions, %d with a takeover beside a live "
              "owner, %d of those not fenced after the heal); restore p50 %.2f ms, p99 %.2f ms; %llu chunks left "
              "alone by commits (unchanged); %llu commits by copy-on-write (a dense writer's protection lifted "
              "whole at least %llu times), %llu posted (%llu of them copy-on-write); %llu loads read a lent slot "
              "directly; %llu took their own replica over in place (%llu from a slot kept close)\n",
              r.cycles, cc.transport.c_str(), r.lost, r.torn, r.failed, r.resurrected, r.deletes, r.failed_deletes,
              r.stalls, r.partitions, r.splits, r.unfenced,
              pct(r.restore_ms, 0.5), pct(r.restore_ms, 0.99), static_cast<unsigned long long>(banked.skipped),
              static_cast<unsigned long long>(banked.cow), static_cast<unsigned long long>(banked.lifted),
              static_cast<unsigned long long>(banked.posted) + static_cast<unsigned long long>(banked.posted_cow),
              static_cast<unsigned long long>(banked.posted_cow), static_cast<unsigned long long>(banked.direct),
              static_cast<unsigned long long>(banked.in_place),
              static_cast<unsigned long long>(banked.chained));
  if (g_periodic) {
    std::printf("campaign: %llu generations taken by the writers' periodic commits (every %d ms) between their "
                "own; %d restores caught a step midway\n", static_cast<unsigned long long>(periodic), period_ms,
                midway);
    if (periodic == 0) {
      std::fprintf(stderr, "baton-campaign: no periodic commit took a generation\n");
      return 1;
    }
  }
  if (snapshots != "stage-copy" && banked.cow == 0) {
    std::fprintf(stderr, "baton-campaign: no commit took its snapshot by copy-on-write\n");
    return 1;
  }
  // The writers' libraries post most copy-on-write commits (each writes a
  // sixteenth of the segment, and batond is ready again between them):
  // kills must land on posted ones too.
  if (snapshots != "stage-copy" && r.cycles >= 5 && banked.posted_cow == 0) {
    std::fprintf(stderr, "baton-campaign: no copy-on-write commit was posted\n");
    return 1;
  }
  if (g_quiescent) {
    std::printf("campaign: the writers' quiescent commits copied at least %llu pages left to them\n",
                static_cast<unsigned long long>(banked.copied));
    if (banked.copied == 0) {
      std::fprintf(stderr, "baton-campaign: no quiescent commit copied a page\n");
      return 1;
    }
  }
  return r.lost + r.torn + r.failed + r.resurrected + r.unfenced == 0 ? 0 : 1;
}
