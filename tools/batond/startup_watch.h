#pragma once

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace baton::batond {

/// Says where batond's start-up hangs. Until serving() (or destruction), a
/// thread of its own wakes every `every` and logs a warning with the stack
/// of the thread that made the watch: which link, which DPDK call, which
/// wait. A daemon that never serves is otherwise silent after its last
/// line (docs/operations.md, "A batond that does not start").
///
/// Thread: made, and serving() called, on one thread (the main thread,
/// whose stack it prints); its own thread only waits and signals.
class StartupWatch {
 public:
  explicit StartupWatch(std::chrono::milliseconds every, int max_reports = 6);
  ~StartupWatch() { serving(); }
  StartupWatch(const StartupWatch&) = delete;
  StartupWatch& operator=(const StartupWatch&) = delete;

  /// Start-up is over: no more reports.
  void serving();

 private:
  void watch(std::chrono::milliseconds every, int max_reports);

  pthread_t target_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  ///< guarded by mu_
  std::thread thread_;
  struct sigaction previous_{};  ///< the signal's disposition before the watch
};

}  // namespace baton::batond
