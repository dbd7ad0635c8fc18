#pragma once
// Runs a batond process with a generated config, for chassis tests.

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "baton/baton.h"
#include "process.h"

namespace baton::test {

class Batond {
 public:
  /// `extra` is appended to the config (links, [client] user, ...).
  Batond(int node, const std::string& dir, const std::string& extra_client = "", const std::string& extra = "")
      : socket_(dir + "/node" + std::to_string(node) + ".sock"),
        config_(dir + "/node" + std::to_string(node) + ".toml") {
    std::ofstream(config_) << "[node]\nid = " << node << "\nname = \"blade" << node << "\"\n"
                           << "[client]\nsocket = \"" << socket_ << "\"\n" << extra_client
                           << "[log]\nlevel = \"warn\"\n" << extra;
    process_ = std::make_unique<Process>(std::vector<std::string>{helper("BATOND"), "--config", config_});
    struct stat st;
    for (int i = 0; i < 500 && stat(socket_.c_str(), &st) != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return process_->pid(); }
  Process& process() { return *process_; }

 private:
  std::string socket_, config_;
  std::unique_ptr<Process> process_;
};

/// baton_open, tried again every 10 ms (up to `tries` times) while the name
/// is still held: batond lets go of a dead or departed application's
/// segments a moment after it notices. Returns the last result.
inline int open_when_free(baton_t* b, const char* name, uint64_t size, baton_segment_t** s, int* restored,
                          uint64_t* generation, int tries = 200) {
  int rc = BATON_EEXIST;
  for (int i = 0; i < tries && rc == BATON_EEXIST; ++i)
    if ((rc = baton_open(b, name, size, s, restored, generation)) == BATON_EEXIST) usleep(10000);
  return rc;
}

/// A scratch directory removed at the end of the scope.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/baton-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf " + path).c_str()); }
};

}  // namespace baton::test
