#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace baton::ctl {

/// The demo's timeline: milliseconds since it began, what, and detail.
struct Timeline {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::chrono::system_clock::time_point wall0 = std::chrono::system_clock::now();
  void at(const char* what, const std::string& detail) const { at(std::chrono::steady_clock::now(), what, detail); }
  /// Something that happened at `when` (taken before the act, such as a
  /// kill, whose consequences the daemons' events then show after it).
  void at(std::chrono::steady_clock::time_point when, const char* what, const std::string& detail) const {
    print(std::chrono::duration<double, std::milli>(when - t0).count(), what, detail);
  }
  /// Something that happened at `unix_us` (a daemon's event), on the same scale.
  void at_unix(uint64_t unix_us, const char* what, const std::string& detail) const {
    const auto wall0_us =
        std::chrono::duration_cast<std::chrono::microseconds>(wall0.time_since_epoch()).count();
    print((static_cast<double>(unix_us) - static_cast<double>(wall0_us)) / 1000.0, what, detail);
  }
  void print(double ms, const char* what, const std::string& detail) const {
    std::printf("  %10.3f ms  %-8s %s\n", ms, what, detail.c_str());
    std::fflush(stdout);
  }
};

struct DemoConfig {
  int blades = 4;
  int batches = 40;
  std::string transport = "memif";
  int workers = 1;  ///< per-core shards per blade (ChassisConfig::workers)
  std::string dir;  ///< empty: a fresh directory under /tmp
};

/// The main job: a chassis comes up, an application on blade 1 commits,
/// blade 1 is killed, the application restarts on blade 3 from a replica;
/// prints a timeline and verifies the restored state byte-exact. Cleans up
/// every process and file, also when interrupted. Returns the exit status.
int run_demo(const DemoConfig& d);

/// The demo's second act (issue #12): the same application as a service
/// group that batond itself places and moves. A fresh chassis of
/// max(4, blades) blades, blades 3 and 4 the spare pool, blade 4 with more
/// cores. The application starts on its home (blade 1), is SIGKILLed and
/// fails over to the spare pool, then its probe turns slow and it moves to
/// the node with better capabilities; each decision's reasons appear in the
/// timeline, and each resumption is checked against the last durable
/// batch (byte-exact when it is that batch). Returns the exit status.
int run_groups_demo(const DemoConfig& d, const Timeline& tl);
/// Whether the demo was interrupted (SIGINT, SIGTERM): it stops at the next
/// wait, cleans up and says so.
bool demo_interrupted() noexcept;

}  // namespace baton::ctl
