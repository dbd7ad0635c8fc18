// The demo's second act (demo.h, run_groups_demo): a service group that
// batond places and moves itself (issue #12).

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "chassis.h"
#include "demo.h"
#include "ipc/client.h"

namespace baton::ctl {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

/// Batches in an instance's last durable dump (the first u64 of kv's state).
uint64_t durable_batches(const std::string& dump_dir) {
  const std::string s = read_file(dump_dir + "/committed.bin");
  uint64_t b = 0;
  if (s.size() >= sizeof b) std::memcpy(&b, s.data(), sizeof b);
  return b;
}

/// The newest log of the group's instance on `blade` (kv-<blade>-<assignment>.log).
std::string newest_log(const std::string& dir, int blade) {
  std::string best;
  fs::file_time_type when{};
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename();
    if (name.rfind("kv-" + std::to_string(blade) + "-", 0) != 0) continue;
    if (best.empty() || e.last_write_time() > when) {
      best = e.path();
      when = e.last_write_time();
    }
  }
  return best;
}

/// Waits until `pred` holds (checked every 20 ms) or `ms` pass.
template <typename F>
bool wait_until(F pred, int ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < deadline && !demo_interrupted()) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return !demo_interrupted() && pred();
}

/// Prints, once each, the coordinator's failover decisions so far.
void show_decisions(const std::vector<Blade>& blades, std::set<std::string>& shown, const Timeline& tl) {
  for (const auto& b : blades) {
    auto c = ipc::Client::connect(b.socket);
    if (!c) continue;
    auto ev = (*c)->events();
    if (!ev) continue;
    for (const auto& [unix_us, text] : *ev) {
      // Decisions, and where each new owner got the state from (a hot
      // standby's ready copy, or a replica).
      const bool decision = text.rfind("group kv -> ", 0) == 0 || text.find("group kv stays") != std::string::npos;
      const bool load = text.rfind("segment kv: ownership taken", 0) == 0;
      // A standby instance taking the group over (its runner's event).
      const auto standby = text.rfind("group kv: starting here", 0) == 0 ? text.find("its standby instance (pid ")
                                                                        : std::string::npos;
      if (!decision && !load && standby == std::string::npos) continue;
      if (!shown.insert(text).second) continue;
      // Printed when it happened, by the daemon's own clock.
      if (standby != std::string::npos)
        tl.at_unix(unix_us, "promote",
                   "blade " + std::to_string(b.id) + ": " +
                       text.substr(standby, text.find(')', standby) + 1 - standby) +
                       ", waiting since the chassis came up, takes group kv over: no process starts");
      else
        tl.at_unix(unix_us, decision ? "decide" : "load",
                   "blade " + std::to_string(b.id) + (decision ? " (coordinator): " : ": ") + text);
    }
  }
}

}  // namespace

int run_groups_demo(const DemoConfig& d, const Timeline& tl) {
  ChassisConfig c;
  c.dir = (d.dir.empty() ? "/tmp/baton-demo-" + std::to_string(getpid()) : d.dir) + "-groups";
  c.blades = std::max(4, d.blades);
  c.replication_factor = 2;
  c.transport = d.transport;
  c.batond = sibling("batond");
  c.spares = {3, 4};
  c.cores.assign(static_cast<size_t>(c.blades), 2);
  c.cores[3] = 8;
  const std::string work = c.dir + ".work";
  std::error_code ec;
  fs::create_directories(work, ec);
  c.groups_file = work + "/groups.toml";
  std::ofstream(c.groups_file)
      << "[[group]]\nname = \"kv\"\nsegments = [\"kv\"]\n"
      << "start = \"exec " << sibling("baton-kv") << " --socket $BATON_SOCKET --name kv --batches 1000000 --every-ms 20"
      << " --dump " << work << "/n$BATON_NODE >" << work << "/kv-$BATON_NODE-$BATON_ASSIGNMENT.log 2>&1\"\n"
      << "provision = \"mkdir -p " << work << "/n$BATON_NODE\"\n"
      << "probe = \"test ! -f " << work << "/slow-$BATON_NODE || sleep 0.3\"\n"
      << "home = [1]\nstandby = [3]\nstandby_instances = true\npriority = 5\nmin_cores = 2\nprobe_interval_ms = 100\nslow_ms = 200\n"
      << "slow_for_ms = 1000\n";
  auto cleanup = [&] {
    (void)chassis_down(c.dir);
    fs::remove_all(work, ec);
    fs::remove(c.dir, ec);
  };
  int rc = 1;
  std::set<std::string> shown;
  do {
    auto blades = chassis_up(c);
    if (!blades) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: %s\n", blades.error().message.c_str());
      break;
    }
    tl.at("up", std::to_string(c.blades) +
                    " blades; blades 3 and 4 are the spare pool, blade 3 keeps a hot standby of kv, blade 4 has 8 "
                    "cores, the others 2; group kv's home is blade 1, and its application waits on blade 3 as a "
                    "standby instance");
    auto runs_on = [&](int blade, uint64_t past) {
      return wait_until([&] { return durable_batches(work + "/n" + std::to_string(blade)) > past; }, 20000);
    };
    // What went wrong, if something does: every blade's group events.
    auto explain = [&] {
      for (const auto& b : *blades)
        if (auto cl = ipc::Client::connect(b.socket))
          if (auto ev = (*cl)->events())
            for (const auto& e : *ev)
              if (e.text.find("group kv") != std::string::npos)
                std::fprintf(stderr, "  blade %d: %s\n", b.id, e.text.c_str());
    };
    if (!runs_on(1, 20)) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: the group did not start on blade 1\n");
      if (!demo_interrupted()) explain();
      break;
    }
    show_decisions(*blades, shown, tl);
    tl.at("commit", "blade 1: kv commits a durable batch every 20 ms (batch " +
                        std::to_string(durable_batches(work + "/n1")) + ")");

    // A failure: the application dies.
    const uint64_t before_kill = durable_batches(work + "/n1");
    const auto killed_at = Clock::now();
    (void)!system(("pkill -KILL -f 'baton-kv --socket " + (*blades)[0].socket + "'").c_str());
    tl.at(killed_at, "kill", "SIGKILL the application on blade 1 (batch " + std::to_string(before_kill) + " durable, or a later one)");
    auto resumed = [&](int blade) -> std::string {
      std::string line;
      wait_until(
          [&] {
            const std::string log = newest_log(work, blade);
            if (log.empty()) return false;
            const std::string text = read_file(log);
            const auto at = text.find("restored ");
            if (at == std::string::npos) return false;
            line = text.substr(at, text.find('\n', at) - at);
            return true;
          },
          20000);
      return line;
    };
    std::string r3 = resumed(3);
    show_decisions(*blades, shown, tl);
    if (r3.empty()) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: the group did not resume on the spare (blade 3)\n");
      if (!demo_interrupted()) explain();
      break;
    }
    tl.at("resume", "blade 3 (spare, hot standby, standby instance): " + r3);
    const uint64_t got3 = std::stoull(r3.substr(r3.find("batches=") + 8));
    if (got3 < before_kill) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: resumed at batch %llu, but batch %llu was durable\n",
                   static_cast<unsigned long long>(got3), static_cast<unsigned long long>(before_kill));
      break;
    }
    if (got3 == before_kill) {
      if (read_file(work + "/n1/committed.bin") != read_file(work + "/n3/restored.bin")) {
        if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: the restored state differs from the last durable commit\n");
        break;
      }
      tl.at("verify", "byte-exact: the state equals blade 1's last durable commit");
    }
    if (!runs_on(3, got3)) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: the group does not commit on blade 3\n");
      if (!demo_interrupted()) explain();
      break;
    }

    // Slowness: blade 3's probe answers in 300 ms against a 200 ms threshold.
    std::ofstream(work + "/slow-3") << "slow\n";
    tl.at("slow", "blade 3's probe now takes 300 ms (threshold 200 ms, window 1 s)");
    std::string r4 = resumed(4);
    show_decisions(*blades, shown, tl);
    if (r4.empty()) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: the group did not move to blade 4\n");
      if (!demo_interrupted()) explain();
      break;
    }
    tl.at("resume", "blade 4 (8 cores): " + r4);
    const uint64_t got4 = std::stoull(r4.substr(r4.find("batches=") + 8));
    const uint64_t before_move = durable_batches(work + "/n3");
    if (got4 < before_move) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: resumed at batch %llu, but batch %llu was durable\n",
                   static_cast<unsigned long long>(got4), static_cast<unsigned long long>(before_move));
      break;
    }
    if (!runs_on(4, got4)) {
      if (!demo_interrupted()) std::fprintf(stderr, "batonctl demo: the group does not commit on blade 4\n");
      if (!demo_interrupted()) explain();
      break;
    }
    tl.at("commit", "blade 4: batch " + std::to_string(durable_batches(work + "/n4")) + " durable");
    rc = 0;
  } while (false);
  cleanup();
  tl.at("down", "every process stopped, every file removed");
  return rc;
}

}  // namespace baton::ctl
