// baton-daemon-bench: the 4 KiB commit call of an application under batond
// (daemon mode: shared-memory commit channel, one doorbell when the daemon
// sleeps) next to the same call on an embedded engine, alone and beside a
// busy neighbour, with the baseline every daemon-mode call is bounded by:
// a cross-process wake-up (eventfd ping-pong) measured in the same run.
//
//   baton-daemon-bench [--rounds N] [--commits N] [--gap-us N]
//
// Each round runs every case once, interleaved (these machines are shared
// and noisy: compare within a round, report medians over rounds). A case
// commits a 4 KiB segment `commits` times, `gap-us` apart (the issue's
// load: one commit a millisecond). Cases:
//   embedded            Engine::commit in this process (single node)
//   daemon              baton_commit through a batond with idle = "adaptive":
//                       the commit is posted (the library copies the 4 KiB
//                       into a log slot and returns; batond takes it after)
//   daemon+neighbour    the same while another application commits 16 MiB
//                       and waits for durability (up to 20 ms) in a loop
//   waiting / waiting+neighbour   the same with BATON_POST_COMMITS=0: each
//                       call waits until batond has taken its snapshot
//   daemon+cow-neighbour   the same neighbour with its segment in
//                       copy-on-write mode ([[snapshots.segment]]): its
//                       commit protects what it wrote and returns; batond's
//                       worker copies the snapshot afterwards
//   spin / spin+neighbour   a batond with idle = "spin" (its commit thread
//                       never sleeps)
//   embedded+hog        the embedded commit beside a process that does the
//                       neighbour's CPU work without Baton (fill 16 MiB, copy
//                       it once, sleep 20 ms, in a loop): what two vCPUs
//                       shared with such a neighbour cost any program
//   wakeup              half an eventfd round trip between two processes
//                       that sleep in poll(): what a sleeping daemon costs
//   wakeup-spinning     the same with the sender spinning for the answer:
//                       the partner wakes on the other (idle) vCPU
//
//   baton-daemon-bench --pause [--sizes-mib 64,1024] [--dirty 1] [--rounds N] [--commits N]
//
// instead measures the application's pause per commit under batond when it
// wrote `dirty` percent of a large segment's pages (issue #10, S14): the
// baton_commit call with [snapshots] stage-copy (batond copies what the
// client library says was written while the application waits) and
// copy-on-write (the library protects what was written; batond's worker
// copies it afterwards), and copy-on-write with quiescent commits
// (BATON_QUIESCENT_COMMITS=1: the library protects ahead, and a commit
// copies what its protector has not reached), beside memcpy of the whole
// segment and of only the written pages, in the same run. Each round's
// JSON line also has how many pages per quiescent commit were left to the
// commit, protected or copied (batond's status).

#include <immintrin.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../../tests/common/process.h"
#include "baton/baton.h"
#include "baton/engine.h"
#include "runtime/futex.h"
#include "../stats.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string self_dir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

struct Stats {
  double p50 = 0, p99 = 0;
};

Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return {};
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)]};
}

using baton::bench::median;

void pace(Clock::time_point& next, int gap_us) {
  next += std::chrono::microseconds(gap_us);
  std::this_thread::sleep_until(next);
}

/// A batond in a scratch directory; stopped at the end of the scope.
/// `extra` is appended to its config.
class Daemon {
 public:
  Daemon(const std::string& idle, int id, const std::string& extra = "")
      : dir_("/tmp/baton-daemon-bench-" + std::to_string(getpid()) + "-" + std::to_string(id)) {
    std::filesystem::create_directories(dir_);
    socket_ = dir_ + "/d.sock";
    std::ofstream(dir_ + "/d.toml") << "[node]\nid = 1\n[engine]\nidle = \"" << idle << "\"\nmax_segment_mib = 4096\n"
                                    << "[client]\nsocket = \"" << socket_ << "\"\nmax_mib = 8192\n"
                                    << "[log]\nlevel = \"error\"\n" << extra;
    proc_ = std::make_unique<baton::test::Process>(
        std::vector<std::string>{self_dir() + "/../tools/batond", "--config", dir_ + "/d.toml"});
    struct stat st;
    for (int i = 0; i < 500 && stat(socket_.c_str(), &st) != 0; ++i) usleep(10000);
  }
  ~Daemon() {
    proc_.reset();
    std::filesystem::remove_all(dir_);
  }
  const std::string& socket() const { return socket_; }

 private:
  std::string dir_, socket_;
  std::unique_ptr<baton::test::Process> proc_;
};

/// The busy neighbour: its own process, 16 MiB commits and durable waits.
int neighbour(const std::string& socket) {
  baton_t* b = nullptr;
  baton_segment_t* s = nullptr;
  if (baton_connect(socket.c_str(), &b) != 0 || baton_open(b, "neighbour", 16 << 20, &s, nullptr, nullptr) != 0) {
    std::fprintf(stderr, "neighbour: %s\n", baton_last_error());
    return 1;
  }
  for (unsigned i = 0;; ++i) {
    std::memset(baton_segment_data(s), static_cast<int>(i), 16 << 20);
    uint64_t g = 0;
    if (baton_commit(s, &g) != 0) return 1;
    (void)baton_wait(s, g, BATON_DURABLE, 20);  // a single node: it times out, holding its session 20 ms
  }
}

/// The neighbour's CPU work without Baton: what it costs the machine.
int hog() {
  std::vector<unsigned char> a(16 << 20), b(16 << 20);
  for (unsigned i = 0;; ++i) {
    std::memset(a.data(), static_cast<int>(i), a.size());
    std::memcpy(b.data(), a.data(), a.size());  // the daemon's snapshot copy
    usleep(20'000);                              // its durable wait
  }
}

std::vector<double> daemon_case(const std::string& socket, int commits, int gap_us, bool with_neighbour) {
  std::unique_ptr<baton::test::Process> n;
  if (with_neighbour) {
    n = std::make_unique<baton::test::Process>(
        std::vector<std::string>{self_dir() + "/baton-daemon-bench", "--neighbour", socket});
    usleep(100'000);  // let it get going
  }
  std::vector<double> us;
  baton_t* b = nullptr;
  baton_segment_t* s = nullptr;
  if (baton_connect(socket.c_str(), &b) != 0 || baton_open(b, "app", 4096, &s, nullptr, nullptr) != 0) {
    std::fprintf(stderr, "baton-daemon-bench: %s\n", baton_last_error());
    return us;
  }
  auto next = Clock::now();
  for (int i = 0; i < commits; ++i) {
    std::memset(baton_segment_data(s), i, 4096);
    uint64_t g = 0;
    const auto t0 = Clock::now();
    if (baton_commit(s, &g) != 0) break;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    pace(next, gap_us);
  }
  baton_stop(b);
  return us;
}

std::vector<double> embedded_case(baton::Engine& e, baton::Segment* seg, int commits, int gap_us) {
  std::vector<double> us;
  auto data = e.data(seg);
  auto next = Clock::now();
  for (int i = 0; i < commits; ++i) {
    std::memset(data.data(), i, data.size());
    const auto t0 = Clock::now();
    if (!e.commit(seg)) break;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    pace(next, gap_us);
  }
  return us;
}

/// Half the round trip of an eventfd ping-pong between two processes that
/// each sleep in poll() until woken: one cross-process wake-up. `spin`: the
/// sender spins for the answer instead of sleeping, so the partner must
/// wake on the other vCPU (what a caller that busy-waits pays).
std::vector<double> wakeup_case(int n, int gap_us, bool spin) {
  const int ping = eventfd(0, 0), pong = eventfd(0, 0);
  const pid_t child = fork();
  if (child == 0) {
    for (;;) {
      pollfd p{ping, POLLIN, 0};
      poll(&p, 1, -1);
      uint64_t v;
      if (read(ping, &v, sizeof v) != sizeof v) _exit(0);
      if (v > 1) _exit(0);  // the stop signal
      (void)!write(pong, &v, sizeof v);
    }
  }
  std::vector<double> us;
  auto next = Clock::now();
  for (int i = 0; i < n; ++i) {
    const uint64_t one = 1;
    const auto t0 = Clock::now();
    (void)!write(ping, &one, sizeof one);
    pollfd p{pong, POLLIN, 0};
    while (poll(&p, 1, spin ? 0 : -1) != 1) _mm_pause();
    uint64_t v;
    (void)!read(pong, &v, sizeof v);
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / 2);
    pace(next, gap_us);
  }
  const uint64_t stop = 2;
  (void)!write(ping, &stop, sizeof stop);
  waitpid(child, nullptr, 0);
  close(ping);
  close(pong);
  return us;
}

// --- --pause ------------------------------------------------------------------

/// `dirty` percent of a segment's pages, at random, sorted.
std::vector<uint64_t> pick_pages(uint64_t size, double dirty, std::mt19937_64& rng) {
  const uint64_t pages = size / 4096, n = std::max<uint64_t>(1, static_cast<uint64_t>(pages * dirty / 100));
  std::vector<uint64_t> all(pages);
  for (uint64_t i = 0; i < pages; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  std::sort(all.begin(), all.end());
  return all;
}

/// How a copy-on-write segment's commits took the pages the library's
/// protector had not protected again: batond's status, summed over the
/// segment's commits.
struct LeftPages {
  double protected_at_commit = 0, copied_at_commit = 0;
  /// Of the commits, the share the library posted without waiting for
  /// batond (batond's count for all its segments).
  double posted = 0;
};

/// `name`'s counts from `batonctl status --json` (zero if it has none).
LeftPages left_pages(const std::string& socket, const char* name) {
  LeftPages out;
  const std::string cmd = self_dir() + "/../tools/batonctl status --json --socket " + socket;
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  std::string text;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  pclose(f);
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.contains("segments")) return out;
  if (j.contains("clients")) out.posted = j["clients"].value("posted_cow_commits", 0.0);
  for (const auto& seg : j["segments"])
    if (seg.value("name", "") == name) {
      out.protected_at_commit = seg.value("cow_protected_at_commit", 0.0);
      out.copied_at_commit = seg.value("cow_copied_at_commit", 0.0);
    }
  return out;
}

/// The baton_commit call's time (us) after writing one word into each of
/// `pages`, `commits` times (new pages each time). `left`, if given: the
/// pages per commit protected and copied at the commit (left_pages).
std::vector<double> pause_case(const std::string& socket, const char* name, uint64_t size, double dirty,
                               int commits, std::mt19937_64& rng, LeftPages* left = nullptr) {
  std::vector<double> us;
  baton_t* b = nullptr;
  baton_segment_t* s = nullptr;
  if (baton_connect(socket.c_str(), &b) != 0 || baton_open(b, name, size, &s, nullptr, nullptr) != 0) {
    std::fprintf(stderr, "baton-daemon-bench: %s\n", baton_last_error());
    return us;
  }
  auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
  std::memset(mem, 1, size);
  uint64_t g = 0;
  (void)baton_commit(s, &g);  // the first commit takes everything
  usleep(200'000);            // and batond settles it
  const LeftPages before = left != nullptr ? left_pages(socket, name) : LeftPages{};
  for (int i = 0; i < commits; ++i) {
    for (uint64_t p : pick_pages(size, dirty, rng)) mem[p * 4096 + 8] = static_cast<unsigned char>(i);
    const auto t0 = Clock::now();
    if (baton_commit(s, &g) != 0) break;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    usleep(20'000);  // batond settles (copy-on-write) before the next
  }
  if (left != nullptr && !us.empty()) {
    *left = left_pages(socket, name);
    left->protected_at_commit = (left->protected_at_commit - before.protected_at_commit) / static_cast<double>(us.size());
    left->copied_at_commit = (left->copied_at_commit - before.copied_at_commit) / static_cast<double>(us.size());
    left->posted = (left->posted - before.posted) / static_cast<double>(us.size());
  }
  baton_stop(b);
  return us;
}

int pause_main(const std::vector<uint64_t>& sizes_mib, double dirty, int rounds, int commits) {
  std::mt19937_64 rng(1);
  const std::string extra =
      "[[snapshots.segment]]\nname = \"cow\"\nmode = \"copy-on-write\"\n"
      "[[snapshots.segment]]\nname = \"cowq\"\nmode = \"copy-on-write\"\n";
  std::printf("application's pause per commit under batond, %.2f%% of the pages written at random, "
              "median of %d rounds (p50 of %d commits each)\n", dirty, rounds, commits);
  std::printf("%8s %14s %14s %14s %14s %14s %10s\n", "MiB", "memcpy whole", "memcpy dirty", "stage copy",
              "copy-on-write", "cow quiescent", "cowq/dirty");
  for (uint64_t mib : sizes_mib) {
    const uint64_t size = mib << 20;
    std::vector<double> whole, part, stage, cow, cowq;
    std::vector<unsigned char> a(size, 1), b(size, 2);
    for (int r = 0; r < rounds; ++r) {
      {
        auto t0 = Clock::now();
        std::memcpy(b.data(), a.data(), size);
        whole.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        const auto pages = pick_pages(size, dirty, rng);
        t0 = Clock::now();
        for (uint64_t p : pages) std::memcpy(b.data() + p * 4096, a.data() + p * 4096, 4096);
        part.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      Daemon d("adaptive", 100 + r, extra);
      stage.push_back(stats(pause_case(d.socket(), "stage", size, dirty, commits, rng)).p50);
      LeftPages plain;
      cow.push_back(stats(pause_case(d.socket(), "cow", size, dirty, commits, rng, &plain)).p50);
      // The application's promise (its only thread writes and commits): the
      // library protects ahead and its commits copy what is left.
      setenv("BATON_QUIESCENT_COMMITS", "1", 1);
      LeftPages left;
      cowq.push_back(stats(pause_case(d.socket(), "cowq", size, dirty, commits, rng, &left)).p50);
      unsetenv("BATON_QUIESCENT_COMMITS");
      std::printf("{\"round\":%d,\"mib\":%llu,\"memcpy_whole_us\":%.1f,\"memcpy_dirty_us\":%.1f,"
                  "\"stage_copy_us\":%.1f,\"cow_us\":%.1f,\"cow_quiescent_us\":%.1f,"
                  "\"cow_quiescent_pages_protected_at_commit\":%.1f,\"cow_quiescent_pages_copied_at_commit\":%.1f,"
                  "\"cow_posted\":%.2f,\"cow_quiescent_posted\":%.2f}\n",
                  r, static_cast<unsigned long long>(mib), whole.back(), part.back(), stage.back(), cow.back(),
                  cowq.back(), left.protected_at_commit, left.copied_at_commit, plain.posted, left.posted);
      std::fflush(stdout);
    }
    std::printf("%8llu %14.1f %14.1f %14.1f %14.1f %14.1f %10.2f\n", static_cast<unsigned long long>(mib),
                median(whole), median(part), median(stage), median(cow), median(cowq), median(cowq) / median(part));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, commits = 400, gap_us = 1000;
  bool pause = false;
  double dirty = 1;
  std::vector<uint64_t> sizes_mib = {64, 1024};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--neighbour" && i + 1 < argc) return neighbour(argv[i + 1]);
    if (a == "--hog") return hog();
    if (a == "--rounds" && i + 1 < argc) rounds = std::stoi(argv[++i]);
    else if (a == "--commits" && i + 1 < argc) commits = std::stoi(argv[++i]);
    else if (a == "--gap-us" && i + 1 < argc) gap_us = std::stoi(argv[++i]);
    else if (a == "--pause") pause = true;
    else if (a == "--dirty" && i + 1 < argc) dirty = std::stod(argv[++i]);
    else if (a == "--sizes-mib" && i + 1 < argc) {
      sizes_mib.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) sizes_mib.push_back(std::stoull(t));
    } else {
      std::fprintf(stderr, "usage: baton-daemon-bench [--rounds N] [--commits N] [--gap-us N]\n"
                           "       baton-daemon-bench --pause [--sizes-mib 64,1024] [--dirty 1] [--rounds N] [--commits N]\n");
      return 64;
    }
  }
  if (pause) {
    for (uint64_t m : sizes_mib)
      if (m == 0 || m > 4096 || dirty <= 0 || dirty > 100 || rounds < 1 || commits < 1) {
        std::fprintf(stderr, "baton-daemon-bench: --sizes-mib 1..4096, --dirty (0, 100]\n");
        return 64;
      }
    return pause_main(sizes_mib, dirty, rounds, std::min(commits, 50));
  }
  signal(SIGPIPE, SIG_IGN);
  baton::EngineConfig c;
  c.node_id = 1;
  auto engine = baton::Engine::start(c, {});
  if (!engine) {
    std::fprintf(stderr, "baton-daemon-bench: %s\n", engine.error().to_string().c_str());
    return 1;
  }
  auto seg = (*engine)->create("app", 4096);
  if (!seg) {
    std::fprintf(stderr, "baton-daemon-bench: %s\n", seg.error().to_string().c_str());
    return 1;
  }
  const char* names[] = {"embedded", "embedded+hog", "wakeup", "wakeup-spinning", "daemon", "daemon+neighbour",
                         "daemon+cow-neighbour", "waiting", "waiting+neighbour", "spin", "spin+neighbour"};
  std::map<std::string, std::vector<double>> p50s, p99s;
  for (int r = 0; r < rounds; ++r) {
    std::map<std::string, std::vector<double>> samples;
    samples["embedded"] = embedded_case(**engine, *seg, commits, gap_us);
    {
      baton::test::Process h(std::vector<std::string>{self_dir() + "/baton-daemon-bench", "--hog"});
      usleep(100'000);
      samples["embedded+hog"] = embedded_case(**engine, *seg, commits, gap_us);
    }
    samples["wakeup"] = wakeup_case(commits, gap_us, false);
    samples["wakeup-spinning"] = wakeup_case(commits, gap_us, true);
    {
      Daemon d("adaptive", 2 * r);
      samples["daemon"] = daemon_case(d.socket(), commits, gap_us, false);
      samples["daemon+neighbour"] = daemon_case(d.socket(), commits, gap_us, true);
    }
    {
      Daemon d("adaptive", 2 * rounds + r, "[[snapshots.segment]]\nname = \"neighbour\"\nmode = \"copy-on-write\"\n");
      samples["daemon+cow-neighbour"] = daemon_case(d.socket(), commits, gap_us, true);
    }
    {
      Daemon d("adaptive", 4 * rounds + r);
      setenv("BATON_POST_COMMITS", "0", 1);  // read by the open in this process (the neighbour posts nothing anyway)
      samples["waiting"] = daemon_case(d.socket(), commits, gap_us, false);
      samples["waiting+neighbour"] = daemon_case(d.socket(), commits, gap_us, true);
      unsetenv("BATON_POST_COMMITS");
    }
    {
      Daemon d("spin", 2 * r + 1);
      samples["spin"] = daemon_case(d.socket(), commits, gap_us, false);
      samples["spin+neighbour"] = daemon_case(d.socket(), commits, gap_us, true);
    }
    for (const char* n : names) {
      const Stats s = stats(samples[n]);
      p50s[n].push_back(s.p50);
      p99s[n].push_back(s.p99);
      std::printf("{\"round\":%d,\"case\":\"%s\",\"p50_us\":%.2f,\"p99_us\":%.2f,\"n\":%zu}\n", r, n, s.p50, s.p99,
                  samples[n].size());
    }
    std::fflush(stdout);
  }
  std::printf("\n4 KiB commit call, %d commits %d us apart, median of %d rounds\n", commits, gap_us, rounds);
  std::printf("%-22s %10s %10s\n", "case", "p50 us", "p99 us");
  for (const char* n : names) std::printf("%-22s %10.2f %10.2f\n", n, median(p50s[n]), median(p99s[n]));
  const double emb = median(p50s["embedded"]);
  std::printf("\ndaemon p50 / embedded p50: adaptive %.2fx, spin %.2fx; one wake-up is %.2f us (%.2f us to the other vCPU)\n",
              median(p50s["daemon"]) / emb, median(p50s["spin"]) / emb, median(p50s["wakeup"]),
              median(p50s["wakeup-spinning"]));
  std::printf("neighbour raises p99: adaptive %.2fx (copy-on-write neighbour %.2fx, waiting commits %.2fx), spin %.2fx; "
              "the same CPU work raises the embedded call's %.2fx\n",
              median(p99s["daemon+neighbour"]) / median(p99s["daemon"]),
              median(p99s["daemon+cow-neighbour"]) / median(p99s["daemon"]),
              median(p99s["waiting+neighbour"]) / median(p99s["waiting"]),
              median(p99s["spin+neighbour"]) / median(p99s["spin"]),
              median(p99s["embedded+hog"]) / median(p99s["embedded"]));
  return 0;
}
