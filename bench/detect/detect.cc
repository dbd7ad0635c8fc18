// baton-detect: how long from SIGKILL of a blade's batond until another
// blade's failure detector declares it dead, on a simulated chassis.
//
//   baton-detect [--transport af_packet|memif] [--kills N] [--heartbeat-us N --timeout-us N]
//
// af_packet (the default here) is the interesting case: its link stays up
// when the peer dies, so only the heartbeat timeout decides; memif links go
// down at once. Prints each sample, then min / p50 / p99 / max, as JSON
// lines and a table. Uses each daemon's default detector settings
// (adaptive idle: 5 ms heartbeats, 150 ms timeout).

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
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

}  // namespace

int main(int argc, char** argv) {
  baton::ctl::ChassisConfig c;
  c.transport = "af_packet";
  c.blades = 3;
  c.replication_factor = 1;
  int kills = 10;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--transport" && i + 1 < argc) c.transport = argv[++i];
    else if (a == "--kills" && i + 1 < argc) kills = std::stoi(argv[++i]);
    else if (a == "--heartbeat-us" && i + 1 < argc) c.heartbeat_us = static_cast<uint32_t>(std::stoul(argv[++i]));
    else if (a == "--timeout-us" && i + 1 < argc) c.failure_timeout_us = static_cast<uint32_t>(std::stoul(argv[++i]));
    else {
      std::fprintf(stderr,
                   "usage: baton-detect [--transport af_packet|memif] [--kills N] [--heartbeat-us N --timeout-us N]\n");
      return 64;
    }
  }
  c.dir = "/tmp/baton-detect-" + std::to_string(getpid());
  c.batond = baton::ctl::sibling("batond");
  auto blades = baton::ctl::chassis_up(c);
  if (!blades) {
    std::fprintf(stderr, "baton-detect: %s\n", blades.error().message.c_str());
    return 1;
  }
  const std::string observer = (*blades)[0].socket;
  pid_t victim = (*blades)[2].pid;
  std::vector<double> ms;
  for (int k = 0; k < kills; ++k) {
    // Alive first (after a restart the detector must have seen it again).
    const auto wait_until = Clock::now() + std::chrono::seconds(10);
    while (!believes_alive(observer, 3) && Clock::now() < wait_until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto t0 = Clock::now();
    kill(victim, SIGKILL);
    while (believes_alive(observer, 3)) {
      if (Clock::now() - t0 > std::chrono::seconds(10)) {
        std::fprintf(stderr, "baton-detect: blade 3 never declared dead\n");
        (void)baton::ctl::chassis_down(c.dir);
        return 1;
      }
    }
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    std::printf("{\"metric\":\"detection\",\"transport\":\"%s\",\"kill\":%d,\"value\":%.3f,\"unit\":\"ms\"}\n",
                c.transport.c_str(), k, ms.back());
    waitpid(victim, nullptr, 0);
    auto pid = baton::ctl::chassis_restart_blade(c, 3);
    if (!pid) {
      std::fprintf(stderr, "baton-detect: %s\n", pid.error().message.c_str());
      break;
    }
    victim = *pid;
  }
  // False alarms: blade 2 was never killed; did blade 1 ever call it dead?
  int false_alarms = 0;
  if (auto cl = baton::ipc::Client::connect(observer)) {
    if (auto ev = (*cl)->events())
      for (const auto& e : *ev) false_alarms += e.text.find("node 2 down") != std::string::npos;
  }
  (void)baton::ctl::chassis_down(c.dir);
  if (ms.empty()) return 1;
  std::printf("{\"metric\":\"false_alarms\",\"transport\":\"%s\",\"value\":%d}\n", c.transport.c_str(), false_alarms);
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double p) { return ms[std::min(ms.size() - 1, static_cast<size_t>(p * ms.size()))]; };
  std::printf("\nSIGKILL -> declared dead, %s, %zu kills (ms): min %.1f  p50 %.1f  p99 %.1f  max %.1f; false alarms %d\n",
              c.transport.c_str(), ms.size(), ms.front(), pct(0.5), pct(0.99), ms.back(), false_alarms);
  return 0;
}
