#pragma once
// Spawning and killing helper processes in chassis and fault tests.

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace baton::test {

/// Path of a helper binary meson passed in the environment (e.g. BATON_PEER).
inline std::string helper(const char* env) {
  const char* p = std::getenv(env);
  if (p == nullptr) throw std::runtime_error(std::string(env) + " is not set (run through meson test)");
  return p;
}

class Process {
 public:
  explicit Process(std::vector<std::string> args) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  }
  Process(const Process&) = delete;
  ~Process() {
    if (pid_ > 0) {
      kill(SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  void kill(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  /// Waits for exit; returns the exit status, or 128+signal.
  int wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace baton::test
