#pragma once
// A directory under /tmp for one test, removed with everything in it.

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>

namespace baton::test {

struct ScratchDir {
  std::string path = "/tmp/baton-global-" + std::to_string(getpid()) + "-" +
                     std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  ~ScratchDir() { std::filesystem::remove_all(path); }
};

}  // namespace baton::test
