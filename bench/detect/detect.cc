// baton-detect: how long from SIGKILL of a blade's batond until another
// blade's failure detector declares it dead, on a simulated chassis.
//
//   baton-detect [--transport af_packet|memif|shm|mixed] [--kills N] [--heartbeat-us N --timeout-us N]
//                [--blades N] [--spin]
//
// af_packet (the default here) is the interesting case: its link stays up
// when the peer dies, so only the heartbeat timeout decides. memif and shm
// links are between processes of one host: each end holds a robust lock
// the other reads, which shows the death as the killed batond's threads
// end (runtime/peer_lock.h), before its memory is gone. The last blade is killed (and restarted) N times; blade 1
// observes. The time is from just before the kill to the timestamp of
// blade 1's own "node K down" event (its control thread's clock reading
// when it decided), so the measuring does not load the observer. Prints
// each sample, then min / p50 / p99 / max, as JSON lines and a table.
// Each daemon's default detector unless given (adaptive idle: 5 ms
// heartbeats, 150 ms timeout; --spin: 100 us / 500 us).
//
// --spin: every worker spins, blade N's pinned to CPU N-1 (a CPU per
// blade): the nearest this project's 2-vCPU machines come to the
// dedicated cores that setting is for (`--blades 2`).

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <set>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../tools/batonctl/chassis.h"
#include "ipc/client.h"

namespace {

using Clock = std::chrono::steady_clock;

// Whether blade `observer` believes node `peer` alive, from its status report.
bool believes_alive(const std::string& socket, int peer) {
  auto c = baton::ipc::Client::connect(socket);
  if (!c) return true;
  auto s = (*c)->status();
  if (!s) return true;
  const auto j = nlohmann::json::parse(*s, nullptr, false);
  if (!j.is_object()) return true;
  for (const auto& l : j.value("links", nlohmann::json::array()))
    if (l.value("peer", 0) == peer) return l.value("alive", true);
  return true;
}

// The observer's events that declare node `peer` dead, as their timestamps (unix us).
std::vector<uint64_t> declared_dead(const std::string& socket, int peer) {
  std::vector<uint64_t> at;
  const std::string text = "node " + std::to_string(peer) + " down";
  if (auto c = baton::ipc::Client::connect(socket))
    if (auto ev = (*c)->events())
      for (const auto& e : *ev)
        if (e.text.rfind(text, 0) == 0) at.push_back(e.unix_us);
  return at;
}

uint64_t unix_us() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

}  // namespace

int main(int argc, char** argv) {
  baton::ctl::ChassisConfig c;
  c.transport = "af_packet";
  c.blades = 3;
  c.replication_factor = 1;
  int kills = 10;
  const char* usage =
      "usage: baton-detect [--transport af_packet|memif|shm|mixed] [--kills N] [--heartbeat-us N --timeout-us N] "
      "[--blades N] [--spin]\n";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--transport" && i + 1 < argc) c.transport = argv[++i];
    else if (a == "--kills" && i + 1 < argc) kills = std::stoi(argv[++i]);
    else if (a == "--heartbeat-us" && i + 1 < argc) c.heartbeat_us = static_cast<uint32_t>(std::stoul(argv[++i]));
    else if (a == "--timeout-us" && i + 1 < argc) c.failure_timeout_us = static_cast<uint32_t>(std::stoul(argv[++i]));
    else if (a == "--blades" && i + 1 < argc) c.blades = std::stoi(argv[++i]);
    else if (a == "--spin") c.spin = true;
    else {
      std::fputs(usage, stderr);
      return 64;
    }
  }
  if (kills < 1 || c.blades < 2) {
    std::fputs(usage, stderr);
    return 64;
  }
  c.dir = "/tmp/baton-detect-" + std::to_string(getpid());
  c.batond = baton::ctl::sibling("batond");
  auto blades = baton::ctl::chassis_up(c);
  if (!blades) {
    std::fprintf(stderr, "baton-detect: %s\n", blades.error().message.c_str());
    return 1;
  }
  const std::string observer = (*blades)[0].socket;
  const int victim_id = c.blades;
  pid_t victim = blades->back().pid;
  std::vector<double> ms;
  // Every "node K down" the observer logged, by timestamp (its log keeps
  // the last 256 events: gathered after each kill).
  std::set<uint64_t> downs;
  auto gather = [&] {
    for (uint64_t at : declared_dead(observer, victim_id)) downs.insert(at);
  };
  std::vector<uint64_t> kills_at;
  for (int k = 0; k < kills; ++k) {
    // Alive first (after a restart the detector must have seen it again).
    const auto wait_until = Clock::now() + std::chrono::seconds(10);
    while (!believes_alive(observer, victim_id) && Clock::now() < wait_until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    gather();
    const uint64_t t0 = unix_us();
    kill(victim, SIGKILL);
    kills_at.push_back(t0);
    uint64_t at = 0;
    for (;;) {  // poll gently: the observer's own timestamp is the measurement
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      gather();
      if (auto it = downs.lower_bound(t0); it != downs.end()) {
        at = *it;
        break;
      }
      if (unix_us() - t0 > 10'000'000) {
        std::fprintf(stderr, "baton-detect: blade %d never declared dead\n", victim_id);
        (void)baton::ctl::chassis_down(c.dir);
        return 1;
      }
    }
    ms.push_back(static_cast<double>(at - t0) / 1e3);
    std::printf("{\"metric\":\"detection\",\"transport\":\"%s\",\"spin\":%s,\"kill\":%d,\"value\":%.3f,\"unit\":\"ms\"}\n",
                c.transport.c_str(), c.spin ? "true" : "false", k, ms.back());
    waitpid(victim, nullptr, 0);
    auto pid = baton::ctl::chassis_restart_blade(c, victim_id);
    if (!pid) {
      std::fprintf(stderr, "baton-detect: %s\n", pid.error().message.c_str());
      break;
    }
    victim = *pid;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  gather();
  // False alarms: a blade declared dead that was never killed (blades
  // 2..N-1), or the victim declared dead when no kill of it came in the
  // second before (a flap while it ran).
  int false_alarms = 0;
  for (int peer = 2; peer < victim_id; ++peer) false_alarms += static_cast<int>(declared_dead(observer, peer).size());
  for (uint64_t at : downs) {
    auto k = std::upper_bound(kills_at.begin(), kills_at.end(), at);
    if (k == kills_at.begin() || at - *std::prev(k) > 1'000'000) ++false_alarms;
  }
  (void)baton::ctl::chassis_down(c.dir);
  if (ms.empty()) return 1;
  std::printf("{\"metric\":\"false_alarms\",\"transport\":\"%s\",\"value\":%d}\n", c.transport.c_str(), false_alarms);
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double p) { return ms[std::min(ms.size() - 1, static_cast<size_t>(p * ms.size()))]; };
  std::printf("\nSIGKILL -> declared dead, %s%s, %d blades, %zu kills (ms): min %.2f  p50 %.2f  p99 %.2f  max %.2f; "
              "false alarms %d\n",
              c.transport.c_str(), c.spin ? ", spinning workers" : "", c.blades, ms.size(), ms.front(), pct(0.5),
              pct(0.99), ms.back(), false_alarms);
  return 0;
}
