// An application's liveness lock (ipc/liveness.h, failover/liveness_watch.h):
// real processes, forked here, hold the lock as the client library would;
// the watch must call a SIGKILLed holder dead, and neither an exec, nor a
// word the application garbles, nor a process that was not started with
// the page.

#include <gtest/gtest.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "failover/liveness_watch.h"
#include "ipc/liveness.h"

namespace {

using baton::failover::LivenessWatch;
using baton::ipc::LivenessPage;
using namespace std::chrono_literals;

template <typename Pred>
bool eventually(Pred p, std::chrono::milliseconds within = 5000ms) {
  const auto until = std::chrono::steady_clock::now() + within;
  while (!p()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

struct Fixture {
  std::shared_ptr<LivenessWatch> watch;
  LivenessPage* page = nullptr;  ///< the test's own mapping of the page
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  Fixture() {
    auto w = LivenessWatch::create();
    if (!w) ADD_FAILURE() << w.error().message;
    watch = std::move(*w);
    page = static_cast<LivenessPage*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, watch->fd(), 0));
  }
  ~Fixture() {
    // A test that failed midway leaves no holder behind (it would keep the
    // test's output open: meson waited out its timeout).
    for (pid_t p : children)
      if (waitpid(p, nullptr, WNOHANG) == 0) {  // still ours and running (not reaped by the test)
        kill(p, SIGKILL);
        waitpid(p, nullptr, 0);
      }
    watch->stop();
    munmap(page, 4096);
    close(wake);
  }
  uint32_t word() const { return __atomic_load_n(baton::ipc::liveness_word(*page), __ATOMIC_ACQUIRE); }
  bool woken() const {
    pollfd p{wake, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
  }
  /// A child that takes the lock as the client library does (the page as
  /// BATON_LIVENESS_FD), then runs `then`. `start`: the watch is started
  /// on it (the page names it) before it looks, as the runner does before
  /// the application can connect; the library waits only 100 ms for the
  /// page to name it, which a loaded machine (ASan CI, session 36) missed.
  template <typename Then>
  pid_t holder(Then then, bool start = true) {
    int go[2];
    if (pipe(go) != 0) return -1;
    const std::string fd = std::to_string(watch->fd());
    const pid_t pid = fork();
    if (pid == 0) {
      close(go[1]);
      char byte;
      (void)!read(go[0], &byte, 1);
      setenv(baton::ipc::kLivenessEnv, fd.c_str(), 1);
      baton::ipc::hold_liveness();
      then();
      for (;;) pause();
    }
    close(go[0]);
    if (pid > 0) {
      children.push_back(pid);
      if (start) watch->start(pid, wake);
    }
    (void)!write(go[1], "g", 1);
    close(go[1]);
    return pid;
  }
  std::vector<pid_t> children;
};

TEST(Liveness, AKilledHolderIsSeenDeadAtOnce) {
  Fixture f;
  const pid_t child = f.holder([] {});
  ASSERT_GT(child, 0);
  ASSERT_TRUE(eventually([&] { return (f.word() & FUTEX_TID_MASK) != 0; })) << "the child never took the lock";
  // The kernel wakes a waiter of a dead holder's lock only if the word says
  // there is one.
  ASSERT_TRUE(eventually([&] { return (f.word() & FUTEX_WAITERS) != 0; })) << "the watch does not wait on the lock";
  EXPECT_FALSE(f.watch->died());
  kill(child, SIGKILL);
  ASSERT_TRUE(eventually([&] { return f.watch->died(); })) << "word " << std::hex << f.word();
  EXPECT_FALSE(f.watch->lost());
  // (The flag is set before the eventfd is written, so that a runner
  // woken by it finds the decision: the write may come a moment later.)
  EXPECT_TRUE(eventually([&] { return f.woken(); })) << "the runner's eventfd was not written";
  EXPECT_NE(f.word() & FUTEX_OWNER_DIED, 0u);
  waitpid(child, nullptr, 0);
}

TEST(Liveness, AnExecReleasesTheLockButIsNoDeath) {
  Fixture f;
  const pid_t child = f.holder([&] {
    // Once the lock is held (by the library's thread), the process turns
    // into another program: that thread ends, the process runs on.
    while ((f.word() & FUTEX_TID_MASK) == 0) usleep(100);
    execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    _exit(127);
  });
  ASSERT_GT(child, 0);
  ASSERT_TRUE(eventually([&] { return f.watch->lost() || f.watch->died(); }));
  EXPECT_TRUE(f.watch->lost());
  EXPECT_FALSE(f.watch->died()) << "an exec was taken for a death";
  EXPECT_FALSE(LivenessWatch::going_down(child));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_TRUE(LivenessWatch::going_down(child)) << "a reaped process is gone";
}

// The same from a thread other than the main one: the exec kills the
// main thread too (it shows SIGKILL pending, then a zombie) while the
// process runs on in the thread that exec'd.
TEST(Liveness, AnExecFromAnotherThreadIsNoDeathEither) {
  Fixture f;
  const pid_t child = f.holder([&] {
    while ((f.word() & FUTEX_TID_MASK) == 0) usleep(100);
    std::thread([] {
      execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
      _exit(127);
    }).join();
  });
  ASSERT_GT(child, 0);
  ASSERT_TRUE(eventually([&] { return f.watch->lost() || f.watch->died(); }));
  EXPECT_TRUE(f.watch->lost());
  EXPECT_FALSE(f.watch->died()) << "an exec from a thread was taken for a death";
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

TEST(Liveness, AGarbledWordIsNoDeath) {
  Fixture f;
  const pid_t child = f.holder([] {});
  ASSERT_GT(child, 0);
  ASSERT_TRUE(eventually([&] { return (f.word() & FUTEX_TID_MASK) != 0; }));
  // What a hostile application could write: "my holder died".
  __atomic_store_n(baton::ipc::liveness_word(*f.page), FUTEX_OWNER_DIED, __ATOMIC_RELEASE);
  syscall(SYS_futex, baton::ipc::liveness_word(*f.page), FUTEX_WAKE, 1, nullptr, nullptr, 0);
  ASSERT_TRUE(eventually([&] { return f.watch->lost() || f.watch->died(); }));
  EXPECT_FALSE(f.watch->died());
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

TEST(Liveness, OnlyTheProcessStartedWithThePageHoldsIt) {
  Fixture f;
  // The page names another process (a child that never holds anything):
  // a process that merely inherited the variable leaves the lock alone.
  const pid_t started = fork();
  if (started == 0) {
    for (;;) pause();
  }
  f.watch->start(started, f.wake);
  const pid_t inheritor = f.holder([] {}, false);
  ASSERT_GT(inheritor, 0);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(f.word(), 0u) << "a process that was not started with the page took its lock";
  for (pid_t p : {started, inheritor}) {
    kill(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
  EXPECT_FALSE(f.watch->died()) << "the lock was never taken";
}

// Session 27's campaign saw an application outlive its SIGKILLed batond
// by seconds, serving as a second active instance while the failover
// started it elsewhere. The process the runner started follows its batond
// and ends with it; while batond lives, it runs on.
TEST(Liveness, AnApplicationEndsWithTheBatondThatStartedIt) {
#if defined(__SANITIZE_THREAD__)
  // The application here is a child of a child of this (multi-threaded)
  // process, and its baton-alive thread is such a child's new thread:
  // ThreadSanitizer kills it ("starting new threads after multi-threaded
  // fork is not supported"), and the test would wait for its lock forever.
  GTEST_SKIP() << "ThreadSanitizer does not let a child of a multi-threaded process start threads";
#endif
  int pids[2];
  ASSERT_EQ(pipe(pids), 0);
  const pid_t daemon = fork();
  if (daemon == 0) {  // batond's part: the page, and an application started with it
    auto w = LivenessWatch::create();
    if (!w) _exit(1);
    const pid_t app = fork();
    if (app == 0) {
      setenv(baton::ipc::kLivenessEnv, std::to_string((*w)->fd()).c_str(), 1);
      baton::ipc::hold_liveness();
      for (;;) pause();
    }
    auto* page = static_cast<LivenessPage*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, (*w)->fd(), 0));
    page->pid.store(app);
    while ((__atomic_load_n(baton::ipc::liveness_word(*page), __ATOMIC_ACQUIRE) & FUTEX_TID_MASK) == 0) usleep(100);
    (void)!write(pids[1], &app, sizeof app);
    for (;;) pause();
  }
  ASSERT_GT(daemon, 0);
  close(pids[1]);
  pid_t app = 0;
  ASSERT_EQ(read(pids[0], &app, sizeof app), static_cast<ssize_t>(sizeof app)) << "the application never held its lock";
  close(pids[0]);
  const int app_fd = static_cast<int>(syscall(SYS_pidfd_open, app, 0));
  ASSERT_GE(app_fd, 0);
  auto ended = [&](int ms) {
    pollfd p{app_fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
  };
  EXPECT_FALSE(ended(300)) << "the application ended while its batond lived";
  kill(daemon, SIGKILL);
  waitpid(daemon, nullptr, 0);
  EXPECT_TRUE(ended(10'000)) << "the application outlived its batond";
  if (!ended(0)) kill(app, SIGKILL);
  close(app_fd);
}

}  // namespace
