// baton-rerep: time to restore the replication factor (S12) after a replica's
// blade dies, on a simulated chassis, against a baseline from the same run.
//
//   baton-rerep [--transport memif|af_packet] [--mib N] [--kills N]
//
// Four blades, replication factor 2: blade 1 owns an N MiB segment (64 by
// default) written by an application through libbaton-client. Each round
// SIGKILLs one of its replicas' batond and polls blade 1's status until the
// dead replica is replaced (detection) and the replacement holds the latest
// generation (copy). Baseline: commit-to-durable of the same segment on the
// healthy chassis (64 MiB to both replicas), measured before each kill, and
// a memcpy of the same size in this process.
// Prints JSON lines per round and a summary table.

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../tools/batonctl/chassis.h"
#include "baton/baton.h"
#include "ipc/client.h"
#include "../stats.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct Replica {
  int node = 0;
  uint64_t generation = 0;
  bool alive = false;
};

// The replicas of `name` as blade 1's status reports them.
std::vector<Replica> replicas(const std::string& socket, const std::string& name) {
  std::vector<Replica> out;
  auto c = baton::ipc::Client::connect(socket);
  if (!c) return out;
  auto s = (*c)->status();
  if (!s) return out;
  const auto j = nlohmann::json::parse(*s, nullptr, false);
  if (!j.is_object()) return out;
  for (const auto& seg : j.value("segments", nlohmann::json::array())) {
    if (seg.value("name", "") != name) continue;
    for (const auto& rep : seg.value("replicas", nlohmann::json::array())) {
      Replica r;
      r.node = rep.value("node", 0);
      r.generation = rep.value("generation", uint64_t{0});
      r.alive = rep.value("alive", false);
      out.push_back(r);
    }
  }
  return out;
}

using baton::bench::median;

}  // namespace

int main(int argc, char** argv) {
  baton::ctl::ChassisConfig c;
  c.blades = 4;
  c.replication_factor = 2;
  uint64_t mib = 64;
  int kills = 5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--transport" && i + 1 < argc) c.transport = argv[++i];
    else if (a == "--mib" && i + 1 < argc) mib = std::stoull(argv[++i]);
    else if (a == "--kills" && i + 1 < argc) kills = std::stoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: baton-rerep [--transport memif|af_packet] [--mib N] [--kills N]\n");
      return 64;
    }
  }
  c.dir = "/tmp/baton-rerep-" + std::to_string(getpid());
  c.batond = baton::ctl::sibling("batond");
  auto blades = baton::ctl::chassis_up(c);
  if (!blades) {
    std::fprintf(stderr, "baton-rerep: %s\n", blades.error().message.c_str());
    return 1;
  }
  auto die = [&](const std::string& what) {
    std::fprintf(stderr, "baton-rerep: %s\n", what.c_str());
    (void)baton::ctl::chassis_down(c.dir);
    return 1;
  };
  const std::string owner = (*blades)[0].socket;
  baton_t* app = nullptr;
  if (baton_connect(owner.c_str(), &app) != 0) return die(baton_last_error());
  baton_segment_t* seg = nullptr;
  const uint64_t size = mib << 20;
  int rc = BATON_EUNAVAIL;
  for (int i = 0; i < 100 && rc == BATON_EUNAVAIL; ++i) rc = baton_open(app, "rerep", size, &seg, nullptr, nullptr);
  if (rc != 0) return die(std::string("open: ") + baton_last_error());
  auto* mem = static_cast<unsigned char*>(baton_segment_data(seg));

  std::vector<double> commit_ms, memcpy_ms, detect_ms, copy_ms, total_ms;
  std::vector<unsigned char> from(size, 1), to(size, 2);
  for (int k = 0; k < kills; ++k) {
    // Baseline on the healthy chassis: the whole segment to both replicas.
    for (uint64_t i = 0; i < size; i += 4096) mem[i] = static_cast<unsigned char>(k + i / 4096);
    uint64_t gen = 0;
    const auto tc = Clock::now();
    if (baton_commit(seg, &gen) != 0 || baton_wait(seg, gen, BATON_DURABLE, 60000) != 0)
      return die(std::string("commit: ") + baton_last_error());
    commit_ms.push_back(ms_since(tc));
    const auto tm = Clock::now();
    std::memcpy(to.data(), from.data(), size);
    memcpy_ms.push_back(ms_since(tm));
    from[k] = to[size - 1 - k];  // keep the copy observable

    const auto before = replicas(owner, "rerep");
    if (before.size() != 2) return die("expected two replicas");
    const int victim = before[k % 2].node;
    pid_t pid = -1;
    for (auto& b : baton::ctl::chassis_blades(c.dir))
      if (b.id == victim) pid = b.pid;
    const auto t0 = Clock::now();
    kill(pid, SIGKILL);
    double replaced = -1;
    for (;;) {
      if (ms_since(t0) > 60000) return die("replication factor not restored within 60 s");
      const auto now = replicas(owner, "rerep");
      const bool gone = std::none_of(now.begin(), now.end(), [&](auto& r) { return r.node == victim; });
      if (gone && replaced < 0) replaced = ms_since(t0);
      if (gone && std::all_of(now.begin(), now.end(), [&](auto& r) { return r.alive && r.generation >= gen; })) break;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    const double total = ms_since(t0);
    detect_ms.push_back(replaced);
    copy_ms.push_back(total - replaced);
    total_ms.push_back(total);
    std::printf(
        "{\"metric\":\"rf_restore\",\"transport\":\"%s\",\"mib\":%llu,\"kill\":%d,\"detect_ms\":%.1f,\"copy_ms\":%.1f,"
        "\"total_ms\":%.1f,\"baseline_commit_ms\":%.1f,\"baseline_memcpy_ms\":%.2f}\n",
        c.transport.c_str(), static_cast<unsigned long long>(mib), k, replaced, total - replaced, total,
        commit_ms.back(), memcpy_ms.back());
    std::fflush(stdout);
    waitpid(pid, nullptr, 0);
    auto back = baton::ctl::chassis_restart_blade(c, victim);  // a spare again
    if (!back) return die(back.error().message);
  }
  baton_stop(app);
  (void)baton::ctl::chassis_down(c.dir);
  std::printf("\nRF restore, %llu MiB, %s, %d kills (median ms): detect %.1f  copy %.1f  total %.1f;"
              " baselines: commit-to-durable %.1f, memcpy %.2f; copy / commit %.2fx, copy / memcpy %.1fx\n",
              static_cast<unsigned long long>(mib), c.transport.c_str(), kills, median(detect_ms), median(copy_ms),
              median(total_ms), median(commit_ms), median(memcpy_ms), median(copy_ms) / median(commit_ms),
              median(copy_ms) / median(memcpy_ms));
  return 0;
}
