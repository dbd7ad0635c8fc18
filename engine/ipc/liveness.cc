// The application's side of liveness (ipc/liveness.h): hold the runner's
// robust mutex from a thread that lives as long as the process.

#include "ipc/liveness.h"

#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace baton::ipc {

namespace {

void hold(LivenessPage* page) {
  prctl(PR_SET_NAME, "baton-alive", 0, 0, 0);
  const int r = pthread_mutex_trylock(&page->lock);
  if (r != 0) {
    // Held by another process of the application (it was first), or its
    // holder died and the runner knows: not this process's to hold.
    if (r == EOWNERDEAD) pthread_mutex_unlock(&page->lock);
    return;
  }
  // The runner's watcher may be waiting for the lock to be taken.
  syscall(SYS_futex, liveness_word(*page), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  // Then follow the batond that started this process. Its pid is safe to
  // open while it is this process's parent (a pid is not reused while its
  // process lives); a parent that is already another one means it died.
  // (No pidfd while it is still the parent, on a kernel without them:
  // then the process follows nobody.)
  const pid_t daemon = page->daemon.load();
  bool parent = daemon > 0 && getppid() == daemon;
  int pidfd = parent ? static_cast<int>(syscall(SYS_pidfd_open, daemon, 0)) : -1;
  if (pidfd >= 0 && getppid() != daemon) {
    // It ended between the two looks, and its pid may be another's by now:
    // still the parent after the open means the pidfd is batond's.
    close(pidfd);
    pidfd = -1;
    parent = false;
  }
  if (daemon > 0 && (pidfd >= 0 || !parent)) {
    pollfd p{pidfd, POLLIN, 0};
    while (pidfd >= 0 && poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    static constexpr char kSaid[] =
        "baton: the batond that started this application ended; the application ends with it "
        "(nothing it commits could become durable, and the failover starts it elsewhere)\n";
    (void)!write(STDERR_FILENO, kSaid, sizeof kSaid - 1);
    kill(getpid(), SIGKILL);
  }
  for (;;) pause();  // every signal blocked: only the process's end ends this
}

}  // namespace

void hold_liveness() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* v = std::getenv(kLivenessEnv);
    if (v == nullptr || *v == '\0') return;
    char* end = nullptr;
    const long fd = std::strtol(v, &end, 10);
    struct stat st{};
    if (*end != '\0' || fd < 0 || fd > INT_MAX || fstat(static_cast<int>(fd), &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size < static_cast<off_t>(sizeof(LivenessPage)))
      return;
    void* p = mmap(nullptr, sizeof(LivenessPage), PROT_READ | PROT_WRITE, MAP_SHARED, static_cast<int>(fd), 0);
    if (p == MAP_FAILED) return;
    auto* page = static_cast<LivenessPage*>(p);
    // The runner writes the pid the moment it has it, which is before this
    // process can have done much; wait for it a little.
    for (int i = 0; i < 1000 && page->magic.load() == kLivenessMagic && page->pid.load() == 0; ++i) usleep(100);
    if (page->magic.load() != kLivenessMagic || page->pid.load() != getpid()) {
      munmap(p, sizeof(LivenessPage));
      return;
    }
    // The thread is born with every signal blocked: the application's
    // signals go to its own threads.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    try {
      std::thread(hold, page).detach();
    } catch (...) {
      munmap(p, sizeof(LivenessPage));
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  });
}

}  // namespace baton::ipc
