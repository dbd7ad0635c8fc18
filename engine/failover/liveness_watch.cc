// Waiting on an application's liveness lock (failover/liveness_watch.h).
//
// Thread: the watcher thread of each watch (`baton-live`), which alone
// reads the lock word after start(); the runner's thread makes the page
// and asks died() / lost().

#include "failover/liveness_watch.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "common/log.h"
#include "ipc/liveness.h"
#include "runtime/futex.h"
#include "runtime/proc_stat.h"

namespace baton::failover {

namespace {

constexpr uint32_t kOwnerDied = FUTEX_OWNER_DIED;
constexpr uint32_t kWaiters = FUTEX_WAITERS;
constexpr uint32_t kTidMask = FUTEX_TID_MASK;
constexpr uint64_t kConfirmNs = 20'000'000;  // an ended holder, the process not seen going down: an exec

uint32_t load(const uint32_t* word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }

}  // namespace

Result<std::shared_ptr<LivenessWatch>> LivenessWatch::create() {
  std::shared_ptr<LivenessWatch> w(new LivenessWatch());
  w->fd_ = static_cast<int>(syscall(SYS_memfd_create, "baton-liveness", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (w->fd_ < 0) return fail(Errc::kIo, "memfd_create: ", std::strerror(errno));
  // Sealed at its size: an application that truncated it would otherwise
  // make batond's reads of the word fault (SIGBUS).
  if (ftruncate(w->fd_, 4096) != 0 || fcntl(w->fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return fail(Errc::kIo, "liveness page: ", std::strerror(errno));
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, w->fd_, 0);
  if (p == MAP_FAILED) return fail(Errc::kIo, "liveness page: mmap: ", std::strerror(errno));
  w->page_ = static_cast<ipc::LivenessPage*>(p);
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  const int r = pthread_mutex_init(&w->page_->lock, &a);
  pthread_mutexattr_destroy(&a);
  if (r != 0) return fail(Errc::kIo, "liveness page: pthread_mutex_init: ", std::strerror(r));
  w->page_->pid.store(0);
  w->page_->daemon.store(getpid());
  w->page_->magic.store(ipc::kLivenessMagic);
  return w;
}

LivenessWatch::~LivenessWatch() {
  // The mutex is never destroyed: the application's mapping outlives this one.
  if (page_ != nullptr) munmap(page_, 4096);
  if (fd_ >= 0) ::close(fd_);
}

void LivenessWatch::start(pid_t pid, int wake_fd) {
  if (started_ || pid <= 0) return;
  started_ = true;
  page_->pid.store(pid);
  {
    std::lock_guard lock(wake_mu_);
    wake_fd_ = wake_fd;
  }
  try {
    // The thread keeps the page mapped until it ends (it holds a reference).
    std::thread([self = std::shared_ptr<LivenessWatch>(shared_from_this()), pid] { self->run(pid); }).detach();
  } catch (const std::system_error& e) {
    BT_WARN("failover: no liveness thread for pid %d (%s): its pidfd alone says when it ends", pid, e.what());
  }
}

void LivenessWatch::stop() noexcept {
  {
    std::lock_guard lock(wake_mu_);  // no write to the runner's eventfd after this returns
    wake_fd_ = -1;
  }
  stop_.store(true, std::memory_order_release);
  if (page_ != nullptr) syscall(SYS_futex, ipc::liveness_word(*page_), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

namespace {

// One task of a process (a thread): whether it is going down. 1: yes
// (gone, a zombie, exiting, or with SIGKILL pending); 0: no; -1: unreadable.
int task_going_down(const std::string& dir) {
  const auto st = read_proc_stat(dir);
  if (!st) return errno == ENOENT || errno == ESRCH ? 1 : -1;
  constexpr unsigned long kPfExiting = 0x4;
  if (st->state == 'Z' || st->state == 'X' || st->state == 'x' || (st->flags & kPfExiting) != 0) return 1;
  // A group exit (SIGKILL, a crash, exit()) queues SIGKILL to every thread
  // before any of them runs its exit.
  FILE* f = std::fopen((dir + "/status").c_str(), "re");
  if (f == nullptr) return errno == ENOENT || errno == ESRCH ? 1 : -1;
  int down = 0;
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long long mask = 0;
    if (std::sscanf(line, "SigPnd: %llx", &mask) == 1 && (mask & (1ull << (SIGKILL - 1))) != 0) down = 1;
  }
  std::fclose(f);
  return down;
}

}  // namespace

bool LivenessWatch::going_down(pid_t pid) noexcept {
  // Every task of it. An exec from any thread kills the others (the
  // leader too, if another thread execs: it shows SIGKILL pending, then
  // exits) while the thread that execs runs on; only a process whose every
  // task is going down is.
  const std::string proc = "/proc/" + std::to_string(pid);
  DIR* d = opendir((proc + "/task").c_str());
  if (d == nullptr) return errno == ENOENT || errno == ESRCH;
  bool all = true, any = false;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    any = true;
    if (task_going_down(proc + "/task/" + e->d_name) != 1) {
      all = false;
      break;
    }
  }
  closedir(d);
  return all && (any || ::access(proc.c_str(), F_OK) != 0);
}

void LivenessWatch::run(pid_t pid) noexcept {
  prctl(PR_SET_NAME, "baton-live", 0, 0, 0);
  uint32_t* word = ipc::liveness_word(*page_);
  uint32_t changes = 0;
  auto decide = [&](bool died) {
    (died ? died_ : lost_).store(true, std::memory_order_release);
    std::lock_guard lock(wake_mu_);
    if (wake_fd_ >= 0) {
      const uint64_t one = 1;
      (void)!::write(wake_fd_, &one, sizeof one);
    }
  };
  while (!stop_.load(std::memory_order_acquire)) {
    uint32_t v = load(word);
    if ((v & kOwnerDied) != 0) {
      // Its holder ended. A process going down shows it within moments
      // (SIGKILL queued to every thread before any exits); an exec ends
      // the holder too, and the process runs on.
      // Down twice in a row: /proc is read a task at a time, and an exec
      // from a thread other than the leader, caught mid-way, looked like a
      // whole process going down once in 40-100 such execs here. A
      // process that is going down stays so.
      const uint64_t until = now_ns() + kConfirmNs;
      bool down = going_down(pid) && going_down(pid);
      while (!down && now_ns() < until) {
        usleep(100);
        down = going_down(pid) && going_down(pid);
      }
      if (!down)
        BT_WARN("failover: pid %d released its liveness lock but is not going down (an exec?): watching its pidfd only",
                pid);
      decide(down);
      return;
    }
    if ((v & kTidMask) == 0) {
      // Not taken yet (the application has not connected), or let go: the
      // client library wakes this wait once it holds the lock.
      futex_wait_shared(word, v, 100'000'000);
    } else if ((v & kWaiters) == 0) {
      // The kernel wakes a waiter of a dead holder's lock only if the word
      // says there is one.
      uint32_t expected = v;
      if (!__atomic_compare_exchange_n(word, &expected, v | kWaiters, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
          ++changes > 64)
        usleep(1000);
      continue;
    } else {
      futex_wait_shared(word, v, 100'000'000);
    }
    // A word that keeps changing (an application writing it) is looked at
    // at most a thousand times a second.
    if (load(word) != v && ++changes > 64) usleep(1000);
  }
}

}  // namespace baton::failover
