#pragma once
// batond's side of an application's liveness (ipc/liveness.h): the page the
// runner hands the application it starts, and a thread that waits on its
// lock word and says when the process holding it has ended.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "baton/result.h"

namespace baton::ipc {
struct LivenessPage;
}

namespace baton::failover {

class LivenessWatch : public std::enable_shared_from_this<LivenessWatch> {
 public:
  /// A sealed memfd page (it cannot shrink under batond's mapping) with the
  /// robust mutex made. Errors: kIo.
  static Result<std::shared_ptr<LivenessWatch>> create();
  ~LivenessWatch();
  LivenessWatch(const LivenessWatch&) = delete;
  LivenessWatch& operator=(const LivenessWatch&) = delete;

  /// The memfd, to pass to the application (close-on-exec: the spawn dup2s it).
  int fd() const noexcept { return fd_; }
  /// `pid` was started with the page: it is the one to hold the lock. The
  /// watcher thread starts; `wake_fd` (an eventfd, or -1) is written when
  /// it decides. Once per watch. Thread: the runner's.
  void start(pid_t pid, int wake_fd);
  /// The process ended: its holder released the lock as it exited and the
  /// process was seen going down. Thread: any.
  bool died() const noexcept { return died_.load(std::memory_order_acquire); }
  /// The lock was released, or marked released, without the process going
  /// down (an exec, or the application wrote the word): no longer watched;
  /// the runner's pidfd still is. Thread: any.
  bool lost() const noexcept { return lost_.load(std::memory_order_acquire); }
  /// The watcher thread ends (the application stopped, or moved away).
  /// Thread: any.
  void stop() noexcept;

  /// Whether `pid` is going down: gone, a zombie, exiting (PF_EXITING), or
  /// with SIGKILL pending (a group exit in progress). From /proc.
  static bool going_down(pid_t pid) noexcept;

 private:
  LivenessWatch() = default;
  void run(pid_t pid) noexcept;

  int fd_ = -1;
  ipc::LivenessPage* page_ = nullptr;  ///< mapped; written only before start(), then watched
  std::atomic<bool> stop_{false};
  /// The runner's eventfd, written once a decision is made; -1 once
  /// stopped (the runner may close it then). wake_mu_.
  std::mutex wake_mu_;
  int wake_fd_ = -1;
  std::atomic<bool> died_{false};
  std::atomic<bool> lost_{false};
  bool started_ = false;  ///< runner's thread
};

}  // namespace baton::failover
