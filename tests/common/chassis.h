#pragma once
// A simulated chassis of batond processes (batonctl chassis) and
// applications on its blades (libbaton-client), for fault tests.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "baton/baton.h"
#include "process.h"

namespace baton::test {

std::string run(const std::string& cmd, int* status = nullptr) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf;
  while (p != nullptr && fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  const int rc = p != nullptr ? pclose(p) : -1;
  if (status != nullptr) *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

/// A chassis brought up by batonctl for the test, and taken down after it.
struct Chassis {
  std::string dir = "/tmp/baton-test-chassis-" + std::to_string(getpid());
  std::string ctl = helper("BATONCTL");
  int blades;
  bool up = false;
  std::string out;  ///< what `chassis up` said
  /// `more`: further `chassis up` options (--groups FILE, --chunk-kib K, ...).
  explicit Chassis(int n, const std::string& transport = "memif", int replicas = 1, int backplanes = 1,
                   const std::string& more = "")
      : blades(n) {
    int status = 0;
    out = run(ctl + " chassis up --blades " + std::to_string(n) + " --replicas " + std::to_string(replicas) +
                  " --transport " + transport + " --backplanes " + std::to_string(backplanes) + " --dir " + dir +
                  " " + more,
              &status);
    up = status == 0;
  }
  ~Chassis() {
    for (int b = 1; b <= blades; ++b) ::kill(pid(b), SIGCONT);  // a stopped daemon cannot stop
    run(ctl + " chassis down --dir " + dir);
  }
  std::string socket(int blade) const { return dir + "/blade" + std::to_string(blade) + ".sock"; }
  pid_t pid(int blade) const {
    pid_t p = -1;
    std::ifstream(dir + "/blade" + std::to_string(blade) + ".pid") >> p;
    return p;
  }
  std::string status(int blade) const { return run(ctl + " status --json --socket " + socket(blade)); }
  std::string events(int blade) const { return run(ctl + " events --socket " + socket(blade)); }
  /// `batonctl status --json` parsed; an empty object if the blade did not answer.
  nlohmann::json status_json(int blade) const {
    auto j = nlohmann::json::parse(status(blade), nullptr, false);
    return j.is_object() ? j : nlohmann::json::object();
  }
  bool quorate(int blade) const {
    const auto j = status_json(blade);
    return j.contains("view") && j["view"].value("quorate", false);
  }
  /// True once `blade`'s failure detector holds `peer` dead.
  bool sees_dead(int blade, int peer) const {
    const auto j = status_json(blade);
    for (const auto& l : j.value("links", nlohmann::json::array()))
      if (l.value("peer", 0) == peer && !l.value("alive", true)) return true;
    return false;
  }
};

template <typename F>
bool eventually(F cond, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

/// An application process's view of Baton (libbaton-client) on one blade.
struct App {
  static constexpr uint64_t kSize = 1 << 20;
  baton_t* b = nullptr;
  baton_segment_t* seg = nullptr;
  explicit App(const std::string& socket) { EXPECT_EQ(baton_connect(socket.c_str(), &b), 0) << baton_last_error(); }
  /// Opens (or creates) `name`, waiting while the blade's view has no quorum yet.
  int open(const char* name) {
    int rc = BATON_EUNAVAIL;
    eventually([&] { return (rc = baton_open(b, name, kSize, &seg, nullptr, nullptr)) != BATON_EUNAVAIL; });
    return rc;
  }
  ~App() {
    if (b != nullptr) baton_stop(b);
  }
  unsigned char* mem() { return static_cast<unsigned char*>(baton_segment_data(seg)); }
  /// Fills the segment with `byte`, commits, and returns the commit's and the
  /// durable wait's results.
  std::pair<int, int> write(unsigned char byte, uint64_t* gen) {
    std::memset(mem(), byte, kSize);
    const int c = baton_commit(seg, gen);
    if (c != 0) return {c, c};
    return {0, baton_wait(seg, *gen, BATON_DURABLE, 5000)};
  }
};

}  // namespace baton::test
