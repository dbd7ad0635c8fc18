// Same-host peer locks (runtime/peer_lock.h).

#include "runtime/peer_lock.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>

namespace baton {

namespace {

/// The process's holder: one thread that takes and releases every
/// PeerLock's mutex and otherwise sleeps. It is never stopped (a robust
/// mutex held by a thread that ended reads as its owner's death), and a
/// child made by fork() gets a holder of its own on first use: the
/// parent's thread was not copied into it.
class Holder {
 public:
  /// Throws std::system_error when the thread cannot be made. (A fork
  /// while another thread is inside leaves `mu` held in the child; batond's
  /// children exec.)
  static Holder& get() {
    static std::mutex mu;
    static Holder* holder = nullptr;
    static pid_t owner = 0;
    std::lock_guard lock(mu);
    if (holder == nullptr || owner != getpid()) {
      holder = new Holder;  // lives as long as the process; a forked child's copy of the parent's is left
      owner = getpid();
    }
    return *holder;
  }

  /// Runs pthread_mutex_trylock (take) or pthread_mutex_unlock (!take) of
  /// `m` on the holder's thread; its result.
  int run(pthread_mutex_t* m, bool take) {
    Request r{m, take};
    std::unique_lock lock(mu_);
    queue_.push_back(&r);
    cv_.notify_all();
    cv_.wait(lock, [&] { return r.done; });
    return r.result;
  }

 private:
  struct Request {
    pthread_mutex_t* m;
    bool take;
    int result = 0;
    bool done = false;
  };

  Holder() {
    // Born with every signal blocked: signals go to the process's own threads.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    std::thread([this] { serve(); }).detach();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  void serve() {
    pthread_setname_np(pthread_self(), "baton-peerlock");
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty(); });
      Request* r = queue_.front();
      queue_.pop_front();
      if (r->take) {
        r->result = pthread_mutex_trylock(r->m);
        // Its holder died: the mutex is this thread's now, and good again.
        if (r->result == EOWNERDEAD) r->result = pthread_mutex_consistent(r->m);
      } else {
        r->result = pthread_mutex_unlock(r->m);
      }
      r->done = true;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request*> queue_;
};

/// The futex word of a glibc mutex: the holder's thread id, and the
/// kernel's FUTEX_OWNER_DIED once that thread ended holding it (the robust
/// futex ABI; glibc keeps the word in __data.__lock).
uint32_t lock_word(pthread_mutex_t* m) noexcept {
  return static_cast<uint32_t>(std::atomic_ref<int>(m->__data.__lock).load(std::memory_order_acquire));
}

}  // namespace

Result<void> init_lock_pair(LockPair* pair) noexcept {
  pthread_mutexattr_t a;
  if (pthread_mutexattr_init(&a) != 0) return fail(Errc::kIo, "peer lock: mutexattr_init");
  int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (rc == 0) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  for (int side = 0; side < 2 && rc == 0; ++side) rc = pthread_mutex_init(&pair->side[side], &a);
  pthread_mutexattr_destroy(&a);
  if (rc != 0) return fail(Errc::kIo, "peer lock: ", std::strerror(rc));
  return {};
}

Result<PeerLock> PeerLock::hold(LockPair* pair, int side) {
  if (pair == nullptr || (side != 0 && side != 1)) return fail(Errc::kInvalidArgument, "peer lock: bad side");
  int rc;
  try {
    rc = Holder::get().run(&pair->side[side], true);
  } catch (const std::system_error& e) {  // no thread to hold it
    return fail(Errc::kIo, "peer lock: ", e.what());
  }
  if (rc == EBUSY) return fail(Errc::kInvalidArgument, "peer lock: side ", std::to_string(side), " is held");
  if (rc != 0) return fail(Errc::kIo, "peer lock: side ", std::to_string(side), ": ", std::strerror(rc));
  PeerLock l;
  l.pair_ = pair;
  l.side_ = side;
  return l;
}

PeerLock::~PeerLock() { release(); }

PeerLock::PeerLock(PeerLock&& o) noexcept
    : pair_(std::exchange(o.pair_, nullptr)), side_(o.side_), seen_held_(o.seen_held_.load()) {}

PeerLock& PeerLock::operator=(PeerLock&& o) noexcept {
  if (this != &o) {
    release();
    pair_ = std::exchange(o.pair_, nullptr);
    side_ = o.side_;
    seen_held_ = o.seen_held_.load();
  }
  return *this;
}

void PeerLock::release() noexcept {
  if (pair_ == nullptr) return;
  Holder::get().run(&pair_->side[side_], false);
  pair_ = nullptr;
}

bool PeerLock::peer_gone() noexcept {
  if (pair_ == nullptr) return false;
  const uint32_t word = lock_word(&pair_->side[1 - side_]);
  if ((word & FUTEX_OWNER_DIED) != 0) return true;  // its holder died holding it (and no successor yet)
  if ((word & FUTEX_TID_MASK) != 0) {
    // Written once: the links of a port's queues (several workers) read
    // this every poll, and a store each time would bounce its cache line.
    if (!seen_held_.load(std::memory_order_relaxed)) seen_held_.store(true, std::memory_order_relaxed);
    return false;
  }
  return seen_held_.load(std::memory_order_relaxed);  // free: let go, or never held yet
}

namespace {

constexpr uint64_t kFileMagic = 0x62746f6e616c7631ull;  // "btonalv1"
constexpr size_t kFileBytes = 4096;

struct LockFile {
  std::atomic<uint64_t> magic;
  LockPair pair;
};
static_assert(sizeof(LockFile) <= kFileBytes);

/// `path` opened (made if missing and `create`) and flocked within
/// `patience_ms`, or -1 with errno. The file
/// the path names when the flock is had: an end that let go last unlinks
/// the file under the flock, and one that opened it meanwhile must not go
/// on with a file nobody else will find.
int open_locked(const std::string& path, bool create, uint64_t patience_ms) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0), 0600);
    if (fd < 0) return -1;
    // The other end holds the flock for microseconds; one that holds it
    // for long (stopped, or not an end at all) does not hold this one up.
    int rc;
    for (uint64_t waited = 0; (rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EWOULDBLOCK && waited < patience_ms;
         ++waited)
      usleep(1000);
    struct stat by_fd{}, by_path{};
    if (rc != 0 || fstat(fd, &by_fd) != 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      return -1;
    }
    if (stat(path.c_str(), &by_path) == 0 && by_path.st_ino == by_fd.st_ino && by_path.st_dev == by_fd.st_dev)
      return fd;
    ::close(fd);  // unlinked (or replaced) meanwhile: open what the path names now
  }
  errno = EAGAIN;
  return -1;
}

}  // namespace

Result<std::unique_ptr<PeerLockFile>> PeerLockFile::open(const std::string& path, int side) {
  if (side != 0 && side != 1) return fail(Errc::kInvalidArgument, "peer lock file: bad side");
  // One end sets the file up at a time; the other waits for the flock.
  const int fd = open_locked(path, true, 1000);
  if (fd < 0) return fail(Errc::kIo, "peer lock file ", path, ": ", std::strerror(errno));
  std::unique_ptr<PeerLockFile> out(new PeerLockFile);
  out->path_ = path;
  auto set_up = [&]() -> Result<void> {
    struct stat st{};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return fail(Errc::kIo, "peer lock file ", path, ": not a file");
    // Made by another user (a directory others may write to): whoever owns
    // it could say this end's peer is gone, or alive. Not used.
    if (st.st_uid != geteuid())
      return fail(Errc::kIo, "peer lock file ", path, ": owned by uid ", std::to_string(st.st_uid), ", not this user");
    if (static_cast<size_t>(st.st_size) != kFileBytes && ftruncate(fd, kFileBytes) != 0)
      return fail(Errc::kIo, "peer lock file ", path, ": size: ", std::strerror(errno));
    void* m = mmap(nullptr, kFileBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return fail(Errc::kIo, "peer lock file ", path, ": map: ", std::strerror(errno));
    out->map_ = m;
    out->inode_ = st.st_ino;
    auto* f = static_cast<LockFile*>(m);
    // Another format (or a file cut short and grown again): set up afresh.
    // No end of this build holds a lock in a file without the magic.
    if (f->magic.load(std::memory_order_acquire) != kFileMagic) {
      std::memset(m, 0, kFileBytes);
      if (auto ok = init_lock_pair(&f->pair); !ok) return ok;
      f->magic.store(kFileMagic, std::memory_order_release);
    }
    auto l = PeerLock::hold(&f->pair, side);
    if (!l) return tl::unexpected(l.error());
    out->lock_ = std::move(*l);
    return {};
  };
  auto ok = set_up();
  flock(fd, LOCK_UN);
  ::close(fd);  // the mapping stays
  if (!ok) return tl::unexpected(ok.error());
  return out;
}

PeerLockFile::~PeerLockFile() {
  // The last end to let go removes the file, under the flock (an end
  // opening it meanwhile sees it unlinked and makes a new one). A side
  // whose holder died is held by nobody: a successor that took it over
  // would hold it.
  const int fd = map_ == nullptr ? -1 : open_locked(path_, false, 50);
  lock_.release();  // in the mapping
  struct stat st{};
  if (fd >= 0 && fstat(fd, &st) == 0 && st.st_ino == inode_) {
    auto* f = static_cast<LockFile*>(map_);
    if ((lock_word(&f->pair.side[0]) & FUTEX_TID_MASK) == 0 && (lock_word(&f->pair.side[1]) & FUTEX_TID_MASK) == 0)
      ::unlink(path_.c_str());
  }
  if (fd >= 0) {
    flock(fd, LOCK_UN);
    ::close(fd);
  }
  if (map_ != nullptr) munmap(map_, kFileBytes);
}

}  // namespace baton
