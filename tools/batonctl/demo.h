#pragma once
#include <string>

namespace baton::ctl {

struct DemoConfig {
  int blades = 4;
  int batches = 40;
  std::string transport = "memif";
  std::string dir;  ///< empty: a fresh directory under /tmp
};

/// The main job: a chassis comes up, an application on blade 1 commits,
/// blade 1 is killed, the application restarts on blade 3 from a replica;
/// prints a timeline and verifies the restored state byte-exact. Cleans up
/// every process and file, also when interrupted. Returns the exit status.
int run_demo(const DemoConfig& d);

}  // namespace baton::ctl
