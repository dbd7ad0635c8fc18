#include "startup_watch.h"

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"

namespace baton::batond {
namespace {

/// SIGURG: ignored by default, used by nothing in batond or DPDK, so a
/// report that races the end of start-up harms nothing.
constexpr int kSignal = SIGURG;

/// Prints the interrupted thread's stack to stderr. backtrace() was called
/// once before (its first call loads libgcc, which is not async-signal
/// safe); backtrace_symbols_fd allocates nothing.
void on_signal(int) {
  const int saved = errno;
  void* frames[64];
  const int n = backtrace(frames, 64);
  static const char kHead[] = "batond: start-up stack:\n";
  [[maybe_unused]] ssize_t w = write(STDERR_FILENO, kHead, sizeof kHead - 1);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  errno = saved;
}

}  // namespace

StartupWatch::StartupWatch(std::chrono::milliseconds every, int max_reports) : target_(pthread_self()) {
  void* warm[1];
  backtrace(warm, 1);
  struct sigaction sa{};
  sa.sa_handler = &on_signal;
  sa.sa_flags = SA_RESTART;  // a blocking call the report interrupts carries on
  sigemptyset(&sa.sa_mask);
  if (sigaction(kSignal, &sa, &previous_) != 0) {
    BT_WARN("batond: no start-up watch (sigaction: %s)", std::strerror(errno));
    return;
  }
  thread_ = std::thread([this, every, max_reports] { watch(every, max_reports); });
}

void StartupWatch::serving() {
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (!thread_.joinable()) return;
  thread_.join();
  // A report sent just before lands either in the handler or, after this,
  // in SIGURG's default: ignored.
  sigaction(kSignal, &previous_, nullptr);
}

void StartupWatch::watch(std::chrono::milliseconds every, int max_reports) {
  std::unique_lock lock(mu_);
  for (int report = 1; report <= max_reports; ++report) {
    if (cv_.wait_for(lock, every, [this] { return done_; })) return;
    BT_WARN("batond: still starting after %lld ms; the main thread's stack follows on stderr",
            static_cast<long long>(every.count() * report));
    pthread_kill(target_, kSignal);
  }
}

}  // namespace baton::batond
