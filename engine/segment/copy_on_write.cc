#include "segment/copy_on_write.h"

#include <fcntl.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "segment/uffd.h"

namespace baton {
namespace {

using uffd::errno_text;

/// A spin that gives its core away after a while: on shared cores the
/// thread it waits for may need this very core (sched_yield is
/// async-signal-safe).
inline void backoff(uint32_t& spins) noexcept {
  if (++spins < 128) _mm_pause();
  else sched_yield();
}

#ifdef MADV_POPULATE_WRITE
constexpr int kMadvPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kMadvPopulateWrite = 23;  // Linux 5.14
#endif

/// The pages this thread's fault handler lifted last, oldest first
/// (on_fault: it protects one again as it lifts another). Initial-exec TLS:
/// no allocation at a thread's first use, so safe in a signal handler.
struct Trail {
  static constexpr uint32_t kPages = CopyOnWrite::kTrailPages;
  const void* region[kPages];
  uint32_t page[kPages];
  uint32_t next;  ///< the slot to take (the oldest) and fill; an empty one's region is null
};
__attribute__((tls_model("initial-exec"))) thread_local Trail trail{};

uint64_t monotonic_ns() noexcept {  // clock_gettime is async-signal-safe
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

/// The process-wide part: which regions exist, the SIGBUS handler that
/// finds them, and what SIGBUS did before it (chained to for any other
/// address). A slot is read by handlers with `users` held (Dekker-style,
/// sequentially consistent), so a region leaves only once no handler
/// looks at it.
struct CopyOnWrite::Handler {
  struct Slot {
    std::atomic<CopyOnWrite*> cow{nullptr};
    std::atomic<uint32_t> users{0};
  };
  /// A region that just left: a fault raised before its protection was
  /// lifted may reach the handler after; retrying the write is right for
  /// a short while (then the address may be someone else's).
  struct Gone {
    std::atomic<uintptr_t> begin{0}, end{0};
    std::atomic<uint64_t> at_ns{0};
  };
  static constexpr uint64_t kGoneRetryNs = 1'000'000'000;
  static constexpr uint32_t kGone = 16;

  static Slot slots[kMaxRegions];
  static std::atomic<uint32_t> high;  ///< slots [0, high) may be in use
  static Gone gone[kGone];
  static std::atomic<uint32_t> gone_next;
  static std::mutex mu;  ///< attach and detach (never taken by the handler)
  static bool installed;
  static struct sigaction previous;
  /// The protector: the process it runs in (a forked child starts its
  /// own), a futex word it sleeps on, and whether it does (a handler that
  /// finds it asleep with work piling up wakes it: one syscall per wake).
  static pid_t protector_pid;
  static std::atomic<uint32_t> wake_word;
  static std::atomic<uint32_t> sleeping;

  /// From a handler (signal context: atomics and futex(2) only).
  static void nudge() noexcept {
    if (sleeping.load(std::memory_order_relaxed) == 0 || sleeping.exchange(0) == 0) return;
    wake_word.fetch_add(1);
    syscall(SYS_futex, &wake_word, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }

  /// Calls fn(region) for each region process `self` attached (a forked
  /// child's copies of its parent's are not its own), with the slot held
  /// as a handler holds it (so the region cannot go meanwhile).
  template <typename Fn>
  static void each_region(pid_t self, Fn&& fn) {
    const uint32_t n = high.load(std::memory_order_acquire);
    for (uint32_t i = 0; i < n; ++i) {
      Slot& s = slots[i];
      if (s.cow.load(std::memory_order_relaxed) == nullptr) continue;
      s.users.fetch_add(1);
      if (CopyOnWrite* c = s.cow.load(); c != nullptr && c->ahead_on_ && c->owner_ == self) fn(*c);
      s.users.fetch_sub(1);
    }
  }

  static void protector_main() {
    prctl(PR_SET_NAME, "baton-protect", 0, 0, 0);
    // The writing threads protect their own pages ahead as they fault
    // (on_fault's trail); this thread takes what they leave: the last few
    // pages of a thread that stopped writing, and the pages a quiescent
    // commit left writable (a handler wakes it for those, once
    // kAheadAfter are waiting). It wakes by itself too (2 ms, doubling to
    // 128 ms while there is nothing to do), passes over the regions every
    // 50 us while there is work (a page is protected on the pass after the
    // one that saw it lifted), lingers a while after, then sleeps. Awake,
    // it takes every page, however few.
    constexpr uint32_t kLingerRounds = 20;
    constexpr uint32_t kFirstNapMs = 2, kMaxNapMs = 128;
    const pid_t self = getpid();
    uint32_t idle = kLingerRounds;
    uint32_t nap_ms = kFirstNapMs;
    for (;;) {
      const uint32_t seen = wake_word.load();
      bool worked = false;
      each_region(self, [&](CopyOnWrite& c) {
        if (c.seen_any_ || c.backlog_.load(std::memory_order_relaxed) != 0) worked |= c.protect_ahead();
      });
      if (worked) idle = 0, nap_ms = kFirstNapMs;
      if (worked || ++idle < kLingerRounds) {
        timespec nap{0, 50'000};
        nanosleep(&nap, nullptr);
        continue;
      }
      sleeping.store(1);
      // A handler that counted before it could see `sleeping` did not
      // wake us: look once more (Dekker, sequentially consistent).
      bool backlog = false;
      each_region(self, [&](CopyOnWrite& c) { backlog |= c.backlog_.load() >= kAheadAfter; });
      // Asleep at most `nap`: a quiescent commit leaves pages writable
      // without waking us (copy_left), and they are to be protected even
      // if no write faults after it. 2 ms, doubling while there is nothing
      // to do, up to 128 ms (a look costs a pass over the backlogs).
      if (!backlog) {
        const timespec timeout{static_cast<time_t>(nap_ms / 1000), static_cast<long>(nap_ms % 1000) * 1'000'000};
        syscall(SYS_futex, &wake_word, FUTEX_WAIT_PRIVATE, seen, &timeout, nullptr, 0);
      }
      sleeping.store(0);
      idle = kLingerRounds;  // lingers only once it finds work
      nap_ms = std::min<uint32_t>(nap_ms * 2, kMaxNapMs);
    }
  }

  /// Under mu.
  static bool start_protector(std::string& why) {
    if (protector_pid == getpid()) return true;
    try {
      std::thread(protector_main).detach();
    } catch (const std::system_error& e) {
      why = std::string("no protector thread: ") + e.what();
      return false;
    }
    protector_pid = getpid();
    return true;
  }

  static void on_signal(int sig, siginfo_t* info, void* uc) {
    const int saved = errno;
    const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
    const uint32_t n = high.load(std::memory_order_acquire);
    for (uint32_t i = 0; i < n; ++i) {
      Slot& s = slots[i];
      if (s.cow.load(std::memory_order_relaxed) == nullptr) continue;
      s.users.fetch_add(1);
      CopyOnWrite* c = s.cow.load();
      const bool mine = c != nullptr && addr >= reinterpret_cast<uintptr_t>(c->base_) &&
                        addr < reinterpret_cast<uintptr_t>(c->base_) + c->len_;
      const bool ok = mine && c->on_fault(addr);
      s.users.fetch_sub(1);
      if (ok) {
        errno = saved;
        return;  // the write runs again, on a writable page
      }
      if (mine) {
        static const char msg[] = "baton: copy-on-write could not lift a page's write protection\n";
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
        break;
      }
    }
    const uint64_t now = monotonic_ns();
    for (auto& g : gone)
      if (addr >= g.begin.load() && addr < g.end.load() && now < g.at_ns.load() + kGoneRetryNs) {
        errno = saved;
        return;
      }
    errno = saved;
    chain(sig, info, uc);
  }

  static void chain(int sig, siginfo_t* info, void* uc) {
    if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction != nullptr) {
      previous.sa_sigaction(sig, info, uc);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
      previous.sa_handler(sig);
    } else {
      signal(sig, SIG_DFL);  // the faulting access runs again and takes the default action
    }
  }

  static int add(CopyOnWrite* cow, std::string& why) {
    std::lock_guard lock(mu);
    if (!installed) {
      struct sigaction sa{};
      sa.sa_sigaction = &on_signal;
      sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
      sigemptyset(&sa.sa_mask);
      if (sigaction(SIGBUS, &sa, &previous) != 0) {
        why = errno_text("sigaction(SIGBUS)");
        return -1;
      }
      installed = true;
    }
    if (cow->ahead_on_ && !start_protector(why)) cow->ahead_on_ = false;  // the commits protect all
    for (uint32_t i = 0; i < kMaxRegions; ++i) {
      if (slots[i].cow.load() != nullptr) continue;
      slots[i].cow.store(cow);
      if (i >= high.load()) high.store(i + 1, std::memory_order_release);
      return static_cast<int>(i);
    }
    why = "more than " + std::to_string(kMaxRegions) + " copy-on-write segments in one process";
    return -1;
  }

  static void remove(int slot, uintptr_t begin, uintptr_t end) {
    std::lock_guard lock(mu);
    Gone& g = gone[gone_next.fetch_add(1) % kGone];
    g.at_ns.store(monotonic_ns());
    g.begin.store(begin);
    g.end.store(end);
    slots[slot].cow.store(nullptr);
    while (slots[slot].users.load() != 0) _mm_pause();
  }
};

CopyOnWrite::Handler::Slot CopyOnWrite::Handler::slots[kMaxRegions];
std::atomic<uint32_t> CopyOnWrite::Handler::high{0};
CopyOnWrite::Handler::Gone CopyOnWrite::Handler::gone[kGone];
std::atomic<uint32_t> CopyOnWrite::Handler::gone_next{0};
std::mutex CopyOnWrite::Handler::mu;
bool CopyOnWrite::Handler::installed = false;
struct sigaction CopyOnWrite::Handler::previous{};
pid_t CopyOnWrite::Handler::protector_pid = 0;
std::atomic<uint32_t> CopyOnWrite::Handler::wake_word{0};
std::atomic<uint32_t> CopyOnWrite::Handler::sleeping{0};

const std::string& CopyOnWrite::unavailable_reason() {
  static const std::string reason = [] {
    if (sysconf(_SC_PAGESIZE) != static_cast<long>(kPage)) return std::string("the page size is not 4 KiB");
    constexpr uint64_t kLen = 4 * kPage;
    const int fd = memfd_create("baton-cow-probe", MFD_CLOEXEC);
    if (fd < 0) return errno_text("memfd_create");
    std::string why;
    void* p = MAP_FAILED;
    if (ftruncate(fd, kLen) != 0) why = errno_text("ftruncate");
    else p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return why.empty() ? errno_text("mmap") : why;
    std::vector<std::byte> aside(kLen);
    struct OnePage {  // the pages to pend: page 1 of 4
      uint32_t count() const { return 4; }
      uint32_t next_set(uint32_t from) const { return from <= 1 ? 1 : 4; }
    };
    {
      auto* mem = static_cast<std::byte*>(p);
      mem[kPage] = std::byte{7};
      auto cow = attach(mem, kLen, false);
      if (!cow) {
        why = cow.error().message;
      } else {
        {
          Freeze fz(**cow);
          fz.take_written([](uint64_t, uint64_t) {});
          fz.pend(aside.data(), OnePage{});
          if (auto ok = fz.protect(); !ok) why = ok.error().message;
        }
        if (why.empty()) {
          mem[kPage] = std::byte{9};  // faults: the handler copies the page aside first
          if ((*cow)->faults() != 1 || aside[kPage] != std::byte{7} || mem[kPage] != std::byte{9})
            why = "a write to a write-protected page did not reach the SIGBUS handler";
        }
      }
    }
    munmap(p, kLen);
    return why;
  }();
  return reason;
}

// --- the shared memory of daemon mode ---------------------------------------

uint64_t CowShare::size_for(uint64_t len) noexcept {
  const uint64_t pages = len / CopyOnWrite::kPage;
  const uint64_t aside = (kStatesOffset + pages + CopyOnWrite::kPage - 1) / CopyOnWrite::kPage * CopyOnWrite::kPage;
  return aside + len;
}

Result<CowShare> CowShare::create(uint64_t len) {
  if (len == 0 || len % CopyOnWrite::kPage != 0) return fail(Errc::kInvalidArgument, "a share needs whole pages");
  CowShare s;
  s.size_ = size_for(len);
  s.aside_offset_ = s.size_ - len;
  s.fd_ = memfd_create("baton-cow-share", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (s.fd_ < 0) return fail(Errc::kNoMemory, errno_text("memfd_create"));
  // Sealed like the segment's memory: a client that could shrink it would
  // make batond fault on its mapping.
  if (ftruncate(s.fd_, static_cast<off_t>(s.size_)) != 0 ||
      fcntl(s.fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return fail(Errc::kNoMemory, errno_text("sizing the copy-on-write share"));
  void* p = mmap(nullptr, s.size_, PROT_READ | PROT_WRITE, MAP_SHARED, s.fd_, 0);
  if (p == MAP_FAILED) return fail(Errc::kNoMemory, errno_text("mmap (copy-on-write share)"));
  s.base_ = static_cast<std::byte*>(p);
  s.header().magic = kMagic;
  s.header().pages = static_cast<uint32_t>(len / CopyOnWrite::kPage);
  return s;
}

Result<CowShare> CowShare::map(int fd, uint64_t len) {
  CowShare s;
  s.fd_ = fd;
  if (len == 0 || len % CopyOnWrite::kPage != 0) return fail(Errc::kInvalidArgument, "a share needs whole pages");
  s.size_ = size_for(len);
  s.aside_offset_ = s.size_ - len;
  struct stat st{};
  const int seals = fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != s.size_ || seals < 0 ||
      (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
    return fail(Errc::kInvalidArgument, "not a sealed copy-on-write share for ", std::to_string(len), " bytes");
  void* p = mmap(nullptr, s.size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail(Errc::kIo, errno_text("mmap (copy-on-write share)"));
  s.base_ = static_cast<std::byte*>(p);
  if (s.header().magic != kMagic || s.header().pages != len / CopyOnWrite::kPage)
    return fail(Errc::kInvalidArgument, "the copy-on-write share is for other memory");
  return s;
}

CowShare& CowShare::operator=(CowShare&& o) noexcept {
  if (this != &o) {
    this->~CowShare();
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
    aside_offset_ = std::exchange(o.aside_offset_, 0);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

CowShare::~CowShare() {
  if (base_ != nullptr) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
  base_ = nullptr;
  fd_ = -1;
}

// --- attaching ----------------------------------------------------------------

Result<std::unique_ptr<CopyOnWrite>> CopyOnWrite::make(Role role, std::byte* base, uint64_t len,
                                                       std::unique_ptr<CowShare> share, bool ahead) {
  if (len == 0 || len % kPage != 0 || reinterpret_cast<uintptr_t>(base) % kPage != 0)
    return fail(Errc::kInvalidArgument, "copy-on-write needs a page-aligned range");
  if (len / kPage > UINT32_MAX) return fail(Errc::kInvalidArgument, "copy-on-write of more than 16 TiB");
  std::unique_ptr<CopyOnWrite> c(new CopyOnWrite);
  c->role_ = role;
  c->base_ = base;
  c->len_ = len;
  c->pages_ = static_cast<uint32_t>(len / kPage);
  if (share != nullptr) {
    if (share->header().pages != c->pages_)
      return fail(Errc::kInvalidArgument, "the copy-on-write share is for other memory");
    c->state_ = share->states();
    c->faults_ = &share->header().faults;
    c->copied_aside_ = &share->header().copied_aside;
    c->protected_ahead_ = &share->header().protected_ahead;
    c->protected_at_commit_ = &share->header().protected_at_commit;
    c->lifted_whole_ = &share->header().lifted_whole;
    c->copied_at_commit_ = &share->header().copied_at_commit;
    if (role == Role::kClient) c->aside_.store(share->aside());
    c->share_ = std::move(share);
  } else {
    c->own_state_ = std::make_unique<std::atomic<uint8_t>[]>(c->pages_);
    c->state_ = c->own_state_.get();
  }
  for (uint32_t i = 0; i < c->pages_; ++i) c->state_[i].store(kIdle, std::memory_order_relaxed);
  if (role == Role::kSettler) return c;  // nothing protected in this process
  const uint32_t words = (c->pages_ + 63) / 64;
  c->written_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  c->unprotected_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  c->ahead_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  c->hot_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  c->again_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  c->seen_ = std::make_unique<uint64_t[]>(words);  // zeroed
  for (uint32_t w = 0; w < words; ++w) {
    c->ahead_[w].store(0, std::memory_order_relaxed);
    c->hot_[w].store(0, std::memory_order_relaxed);
    c->again_[w].store(0, std::memory_order_relaxed);
  }
  c->mark_all_written();
  // (Three entries of room past the last page: take() stores three per word.)
  c->taken_pages_ = std::make_unique<uint32_t[]>(c->pages_ + 3);
  c->taken_words_ = std::make_unique<std::pair<uint32_t, uint64_t>[]>(words);
  c->ahead_on_ = ahead;
  c->owner_ = getpid();
  auto fd = uffd::open_write_protect(base, len,
                                     UFFD_FEATURE_SIGBUS | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | uffd::kWpUnpopulated,
                                     "SIGBUS | WP_HUGETLBFS_SHMEM | WP_UNPOPULATED");
  if (!fd) return tl::unexpected(fd.error());
  c->uffd_ = *fd;
  std::string why;
  c->slot_ = Handler::add(c.get(), why);
  if (c->slot_ < 0) return fail(Errc::kUnavailable, why);
  return c;
}

Result<void> CopyOnWrite::protect_all() {
  if (role_ == Role::kSettler) return {};
  lock_writer();
  const bool ok = protect_range(0, len_, true);
  if (ok) {
    for (uint32_t w = 0; w < (pages_ + 63) / 64; ++w) {
      written_[w].store(0, std::memory_order_relaxed);
      unprotected_[w].store(0, std::memory_order_relaxed);
      ahead_[w].store(0, std::memory_order_relaxed);  // (none written: none protected ahead, see take())
      again_[w].store(0, std::memory_order_relaxed);
    }
    wholesale_.store(false, std::memory_order_relaxed);
  }
  unlock_writer();
  if (!ok) return fail(Errc::kIo, errno_text("UFFDIO_WRITEPROTECT"));  // every page still counts as written
  return {};
}

Result<std::unique_ptr<CopyOnWrite>> CopyOnWrite::attach(std::byte* base, uint64_t len, bool ahead) {
  return make(Role::kLocal, base, len, nullptr, ahead);
}

Result<std::unique_ptr<CopyOnWrite>> CopyOnWrite::attach_client(std::byte* base, uint64_t len, CowShare share,
                                                                bool ahead) {
  if (const auto& why = unavailable_reason(); !why.empty()) return fail(Errc::kUnavailable, why);
  return make(Role::kClient, base, len, std::make_unique<CowShare>(std::move(share)), ahead);
}

Result<std::unique_ptr<CopyOnWrite>> CopyOnWrite::settler(std::byte* base, uint64_t len, CowShare share) {
  return make(Role::kSettler, base, len, std::make_unique<CowShare>(std::move(share)), false);
}

CopyOnWrite::~CopyOnWrite() {
  if (slot_ >= 0) {
    lock_writer();
    going_ = true;                  // the protector leaves it from here on
    protect_range(0, len_, false);  // no new faults from here on
    unlock_writer();
    Handler::remove(slot_, reinterpret_cast<uintptr_t>(base_), reinterpret_cast<uintptr_t>(base_) + len_);
  }
  if (uffd_ >= 0) close(uffd_);  // unregisters the range
}

void CopyOnWrite::lock_writer() noexcept {
  uint32_t spins = 0;
  for (;;) {
    uint32_t v = gate_.load(std::memory_order_relaxed);
    if ((v & kWriter) == 0 && gate_.compare_exchange_weak(v, v | kWriter, std::memory_order_acquire)) break;
    backoff(spins);
  }
  while (gate_.load(std::memory_order_acquire) != kWriter) backoff(spins);  // handlers in flight finish
}

void CopyOnWrite::unlock_writer() noexcept { gate_.fetch_and(~kWriter, std::memory_order_release); }

bool CopyOnWrite::try_read() noexcept {
  uint32_t v = gate_.load(std::memory_order_relaxed);
  do {
    if ((v & kWriter) != 0) return false;
  } while (!gate_.compare_exchange_weak(v, v + 1, std::memory_order_acquire));
  if (going_ || dense_ || wholesale_.load(std::memory_order_relaxed)) {
    gate_.fetch_sub(1, std::memory_order_release);
    return false;
  }
  return true;
}

bool CopyOnWrite::protect_ahead() noexcept {
  // One run per hold of the gate, at most kRun pages: a freeze that comes
  // meanwhile waits for one call, then protects whatever is left itself.
  // A page's bit is cleared before its protection, inside the hold, so a
  // freeze sees either the bit or the page protected; a handler sets it
  // only after it lifted the protection, so a bit seen here is a page
  // that is writable (or was made so and protected again: harmless).
  constexpr unsigned kRun = 16;
  backlog_.store(0, std::memory_order_relaxed);
  // Out of the gate whenever a freeze waits (it protects all there is),
  // or the region goes, or is to be rewritten whole: nothing to come back
  // for until the next backlog.
  bool any = false;
  auto give_up = [&] {
    seen_any_ = false;
    return any;
  };
  if (!try_read()) return give_up();
  gate_.fetch_sub(1, std::memory_order_release);
  const uint32_t words = (pages_ + 63) / 64;
  // The other bitmaps only where a page is writable: a pass reads the
  // lines of unprotected_ alone, most of the time, not those of three
  // bitmaps more that the freeze clears whole (lines this thread's reads
  // had shared with its core made that clearing ~30 us of the 1 GiB pause,
  // against ~10 us).
  auto candidates = [&](uint32_t w) -> uint64_t {
    const uint64_t writable = unprotected_[w].load(std::memory_order_acquire);
    if (writable == 0) return 0;
    return writable & ~hot_[w].load(std::memory_order_relaxed) &
           ~(ahead_[w].load(std::memory_order_relaxed) & ~again_[w].load(std::memory_order_relaxed));
  };
  seen_any_ = false;
  for (uint32_t w = 0; w < words; ++w) {
    const uint64_t now = candidates(w);
    const uint64_t aged = now & seen_[w];  // seen on the last pass too
    seen_[w] = now & ~aged;
    seen_any_ |= seen_[w] != 0;
    any |= seen_[w] != 0;
    while ((candidates(w) & aged) != 0) {
      if (!try_read()) return give_up();
      const uint64_t cand = candidates(w) & aged;  // again, inside the hold
      if (cand == 0) {
        gate_.fetch_sub(1, std::memory_order_release);
        break;
      }
      const auto b = static_cast<unsigned>(__builtin_ctzll(cand));
      const uint64_t from_b = cand >> b;
      const unsigned len = std::min<unsigned>(kRun, ~from_b == 0 ? 64 - b : static_cast<unsigned>(__builtin_ctzll(~from_b)));
      const bool ok = protect_again(w, b, len);
      gate_.fetch_sub(1, std::memory_order_release);
      if (!ok) return give_up();  // the freeze tries again, and reports
      any = true;
    }
  }
  return any;
}

bool CopyOnWrite::protect_again(uint32_t w, unsigned b, unsigned len) noexcept {
  // The bits are cleared before the protection, inside the caller's hold
  // of the gate, so a freeze sees either the bit or the page protected.
  const uint64_t mask = (len == 64 ? ~uint64_t{0} : (uint64_t{1} << len) - 1) << b;
  const uint64_t took = unprotected_[w].fetch_and(~mask, std::memory_order_acq_rel) & mask;
  if (took == 0) return true;  // another reader protected them meanwhile
  ahead_[w].fetch_or(mask, std::memory_order_relaxed);
  if (!protect_range((uint64_t{w} * 64 + b) * kPage, uint64_t{len} * kPage, true)) {
    unprotected_[w].fetch_or(took, std::memory_order_relaxed);  // the freeze tries, and reports
    return false;
  }
  protected_ahead_->fetch_add(static_cast<uint64_t>(__builtin_popcountll(took)), std::memory_order_relaxed);
  return true;
}

void CopyOnWrite::protect_trailing(uint32_t page) noexcept {
  // (A handler: inside its hold of the gate, as the protector's calls are.)
  if (page >= pages_) return;
  const uint32_t w = page / 64;
  const uint64_t bit = uint64_t{1} << (page % 64);
  if ((hot_[w].load(std::memory_order_relaxed) & bit) != 0) return;
  if ((ahead_[w].load(std::memory_order_relaxed) & ~again_[w].load(std::memory_order_relaxed) & bit) != 0) return;
  (void)protect_again(w, page % 64, 1);
}

bool CopyOnWrite::protect_range(uint64_t off, uint64_t len, bool on) noexcept {
  // At most kProtectStep per call: the kernel holds the process's mmap
  // lock for the whole walk (~40 ms for 1 GiB), and every page fault and
  // mmap in the process (the engine's other threads: its links, its
  // replica slots) queues behind it. One more ioctl per 1 MiB costs ~1%.
  constexpr uint64_t kProtectStep = 1u << 20;
  for (uint64_t at = off; at < off + len; at += kProtectStep) {
    uffdio_writeprotect wp{};
    wp.range.start = reinterpret_cast<uintptr_t>(base_) + at;
    wp.range.len = std::min(kProtectStep, off + len - at);
    wp.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
    if (ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) != 0) return false;
  }
  return true;
}

bool CopyOnWrite::claim(uint32_t page) noexcept {
  // kLocal (the handler or the settler) and kClient (the handler): a
  // pending page is copied to aside_; kClient leaves it kAside for batond.
  std::atomic<uint8_t>& s = state_[page];
  uint32_t spins = 0;
  for (;;) {
    uint8_t v = s.load(std::memory_order_acquire);
    if (v == kCopying) {  // another thread of this process is copying it: 4 KiB, soon done
      backoff(spins);
      continue;
    }
    if (!is_pending(v)) return false;  // kIdle, kAside, a tag of later writes (or a client's garbage, in batond's share)
    if (s.compare_exchange_weak(v, kCopying, std::memory_order_acquire)) {
      const uint64_t off = uint64_t{page} * kPage;
      std::memcpy(aside_.load(std::memory_order_relaxed) + off, base_ + off, kPage);
      // kClient: batond may have given up waiting, copied the page from
      // the segment (still protected: still as at the commit) and made it
      // idle; then its copy stands and this one is not needed.
      uint8_t copying = kCopying;
      s.compare_exchange_strong(copying, role_ == Role::kClient ? kAside : kIdle, std::memory_order_acq_rel);
      return true;
    }
  }
}

void CopyOnWrite::settle_shared(uint32_t page) noexcept {
  // batond's side. It never makes the client wait: it copies the page from
  // its mapping of the segment, then claims it (-> kIdle) in one
  // compare-and-swap from the state it saw. The page stays protected in
  // the client's mapping until the client's handler has moved its state
  // on (pending -> copying -> aside), so a copy the swap confirms is the
  // page as at the commit; if the swap fails, the client's handler got
  // there first, and its aside copy is taken. The client can write every
  // state byte: whatever it writes, this waits at most patience_ns_ per
  // snapshot and copies a few pages (only that client's snapshot can
  // suffer).
  std::atomic<uint8_t>& s = state_[page];
  const uint64_t off = uint64_t{page} * kPage;
  std::byte* const stage = aside_.load(std::memory_order_relaxed);
  uint64_t waiting_since = 0;
  uint32_t spins = 0;
  int failed_swaps = 0;  // not the waits: only a swap that failed counts against the client
  for (;;) {
    uint8_t v = s.load(std::memory_order_acquire);
    if (v == kIdle) return;  // settled (by this side: a client never makes a page idle)
    if (v == kAside) {       // the client's handler copied it before the application wrote it
      std::memcpy(stage + off, share_->aside() + off, kPage);
      s.compare_exchange_strong(v, kIdle, std::memory_order_acq_rel);
      return;
    }
    if (v == kCopying && patience_ns_ > 0) {  // a handler is copying it aside
      const uint64_t now = monotonic_ns();
      if (waiting_since == 0) waiting_since = now;
      if (now - waiting_since < patience_ns_) {
        backoff(spins);
        continue;
      }
      patience_ns_ = 0;  // no more waiting for this snapshot
      gave_up_.fetch_add(1, std::memory_order_relaxed);
    }
    // Pending (or a handler that takes too long, or garbage).
    std::memcpy(stage + off, base_ + off, kPage);
    if (s.compare_exchange_strong(v, kIdle, std::memory_order_acq_rel)) return;
    // The client's handler moved the page on while this copied it: it may
    // have lifted the protection, and the application written the page
    // during the copy, so the copy is not trusted; the state is read again
    // (kAside: the handler's copy is taken). An honest client moves a page
    // on at most twice (pending -> copying -> aside); one that keeps
    // rewriting it spoils only its own snapshot. (The waits above once
    // counted here too: after 2 ms of patience this gave up on the first
    // failed swap, kept a copy torn by the application's next write, and
    // dropped the handler's good one; a kill campaign restored such a
    // generation once, session 48.)
    if (++failed_swaps >= 4) {
      gave_up_.fetch_add(1, std::memory_order_relaxed);
      s.store(kIdle, std::memory_order_release);
      return;
    }
  }
}

bool CopyOnWrite::on_fault(uintptr_t addr) noexcept {
  const auto page = static_cast<uint32_t>((addr - reinterpret_cast<uintptr_t>(base_)) / kPage);
  uint32_t spins = 0;
  for (;;) {  // a reader of the gate: no freeze is half done while we look
    uint32_t v = gate_.load(std::memory_order_relaxed);
    if ((v & kWriter) == 0 && gate_.compare_exchange_weak(v, v + 1, std::memory_order_acquire)) break;
    backoff(spins);
  }
  const uint32_t w = page / 64;
  const uint64_t bit = uint64_t{1} << (page % 64);
  const bool wholesale = wholesale_.load(std::memory_order_relaxed);
  if (dense_ && !wholesale && page < settled_below()) {
    uint64_t off = 0, len = 0;
    const bool ok = lift_settled(page, off, len);
    last_fault_ns_.store(monotonic_ns(), std::memory_order_relaxed);
    gate_.fetch_sub(1, std::memory_order_release);
    // Lifted, an entry is still read-only: each page's first write would
    // take a minor fault to make it writable, 13 us here (this VM's
    // shadow paging: 217 ms for 64 MiB, against 0.5 ms for writes to
    // writable pages). Populating the range for writing makes them all
    // writable in one call (5.6 ms for 64 MiB); the writes after it cost
    // ~2-4 us a page under shadow paging (the hypervisor refreshes its
    // copy of each entry), nothing on hardware paging. Out of the gate, so
    // a commit does not wait for it: a page a freeze protects meanwhile
    // makes it stop with EFAULT, having written nothing. A kernel without
    // it (before 5.14) says EINVAL: the writes fault then, as without.
    if (ok && len != 0) {
      madvise(base_ + off, len, kMadvPopulateWrite);
      last_fault_ns_.store(monotonic_ns(), std::memory_order_relaxed);  // the write lands after this
    }
    return ok;
  }
  written_[w].fetch_or(bit, std::memory_order_relaxed);
  // Written again after it was protected ahead: the first time in
  // kHotFreezes freezes, it is protected ahead once more (a page written
  // twice at random, ~13 a cycle at 1% of 1 GiB, is no hot page: left to
  // the commit, each cost its pause a kernel call); the second, it is hot.
  if (!wholesale && (ahead_[w].load(std::memory_order_relaxed) & bit) != 0 &&
      (again_[w].fetch_or(bit, std::memory_order_relaxed) & bit) != 0)
    hot_[w].fetch_or(bit, std::memory_order_relaxed);
  const bool hot = (hot_[w].load(std::memory_order_relaxed) & bit) != 0;  // the commit protects it: no nudge
  if (claim(page)) copied_aside_->fetch_add(1, std::memory_order_relaxed);
  tag_written(page);  // (its line is in the cache: the claim read it); the next freeze need not store it
  faults_->fetch_add(1, std::memory_order_relaxed);
  const bool ok = protect_range(uint64_t{page} * kPage, kPage, false);
  unprotected_[w].fetch_or(bit, std::memory_order_release);  // after the lift: see protect_ahead()
  // A dense region's pages are lifted whole soon: nothing to protect ahead.
  if (ahead_on_ && !hot && !dense_ && !wholesale) {
    // The page this thread lifted kTrailPages faults ago is protected
    // again now: its write has landed (this thread has run on to another
    // fault since), so it faults again only if written again. The call
    // runs on this thread's own core, where the pages' entries are; the
    // protector's calls run while the writer runs elsewhere and interrupt
    // it with a TLB shootdown (4-15 us each here, against ~1.3 us). The
    // protector is left the last few pages of a thread that stopped
    // writing (its next timed look), and the commit what neither reached.
    Trail& t = trail;
    const uint32_t slot = t.next;
    if (t.region[slot] == this && t.page[slot] != page) protect_trailing(t.page[slot]);
    t.region[slot] = this;
    t.page[slot] = page;
    t.next = (slot + 1) % Trail::kPages;
    // The protector looks at a region with a backlog when it wakes by
    // itself; it is woken only for pages a quiescent commit left writable
    // (copy_left adds them), which no thread's trail holds.
    const uint32_t backlog = backlog_.load(std::memory_order_relaxed);
    if (backlog == 0) backlog_.store(1, std::memory_order_relaxed);
    else if (backlog >= kAheadAfter) Handler::nudge();
  }
  last_fault_ns_.store(monotonic_ns(), std::memory_order_relaxed);
  gate_.fetch_sub(1, std::memory_order_release);
  return ok;
}

uint32_t CopyOnWrite::settled_below() noexcept {
  // Pages only become pending at a freeze (which zeroes the mark), and
  // leave it for good once copied: the mark only rises until then, and
  // the scans of one snapshot cover each page about once in all.
  uint32_t from = settled_below_.load(std::memory_order_relaxed);
  uint32_t p = from;
  while (p < pages_) {
    const uint8_t v = state_[p].load(std::memory_order_acquire);
    if (is_pending(v) || v == kCopying) break;  // (kClient: kAside is copied; anything else is batond's)
    ++p;
  }
  while (p > from && !settled_below_.compare_exchange_weak(from, p, std::memory_order_relaxed)) {
  }
  return std::max(p, from);
}

bool CopyOnWrite::lift_settled(uint32_t page, uint64_t& off, uint64_t& len) noexcept {
  // The pages below the mark count as written from here on, so the next
  // freeze protects them again and its snapshot takes them: nothing a
  // write does after the lift goes unseen. Another handler may lift the
  // same pages meanwhile, or its own page: both harmless. A handler whose
  // page another one is lifting (its call still under way) lifts that
  // page itself, rather than return to fault again until that call ends.
  // Once every page is lifted the region is wholesale, which the
  // protector leaves alone.
  untagged_.store(true, std::memory_order_relaxed);  // written in bulk: the next freeze pends them all
  const uint32_t to = settled_below_.load(std::memory_order_relaxed);
  uint32_t from = lifted_below_.load(std::memory_order_relaxed);
  while (from < to && !lifted_below_.compare_exchange_weak(from, to, std::memory_order_relaxed)) {
  }
  bool ok = true;
  if (from < to) {
    for (uint32_t p = from; p < to;) {  // the bits, a word (or what of it is in range) at a time
      const uint32_t w = p / 64, b = p % 64, n = std::min(64 - b, to - p);
      const uint64_t mask = (n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1) << b;
      written_[w].fetch_or(mask, std::memory_order_relaxed);
      unprotected_[w].fetch_or(mask, std::memory_order_relaxed);
      p += n;
    }
    off = uint64_t{from} * kPage;
    len = uint64_t{to - from} * kPage;
    ok = protect_range(off, len, false);
  }
  if (page < from || page >= to) {
    written_[page / 64].fetch_or(uint64_t{1} << (page % 64), std::memory_order_relaxed);
    unprotected_[page / 64].fetch_or(uint64_t{1} << (page % 64), std::memory_order_relaxed);
    ok &= protect_range(uint64_t{page} * kPage, kPage, false);
  }
  if (to >= pages_ && from < to) {
    wholesale_.store(true, std::memory_order_relaxed);
    lifted_whole_->fetch_add(1, std::memory_order_relaxed);
  }
  faults_->fetch_add(1, std::memory_order_relaxed);
  return ok;
}

void CopyOnWrite::decide_dense(uint64_t written_pages) noexcept {
  // A cycle counts only if nothing was lifted in bulk: lifted pages count
  // as written whether they were or not (a freeze that came before the
  // rest was lifted, too).
  const bool counted =
      !wholesale_.load(std::memory_order_relaxed) && lifted_below_.load(std::memory_order_relaxed) == 0;
  if (counted) {  // the faults counted this cycle's pages
    if (written_pages * 2 > pages_) {
      dense_period_ = dense_period_ == 0 ? kDenseFreezes : std::min(dense_period_ * 2, kDenseMaxFreezes);
      dense_left_ = dense_period_;
    } else {
      dense_period_ = dense_left_ = 0;
    }
  } else if (dense_left_ > 0) {
    --dense_left_;
  }
  dense_ = dense_left_ > 0;
  settled_below_.store(0, std::memory_order_relaxed);
  lifted_below_.store(0, std::memory_order_relaxed);
}

bool CopyOnWrite::write_in_flight() const noexcept {
  if ((gate_.load(std::memory_order_relaxed) & ~kWriter) != 0) return true;  // a handler (or the protector)
  return monotonic_ns() - last_fault_ns_.load(std::memory_order_relaxed) < kWriteLandsNs;
}

bool CopyOnWrite::let_write_land() noexcept {
  waited_for_landing_ = !waited_for_landing_ && write_in_flight();
  return waited_for_landing_;
}

void CopyOnWrite::settle(uint32_t page) noexcept {
  if (role_ == Role::kSettler) settle_shared(page);
  else claim(page);
}

bool CopyOnWrite::pending(uint32_t page) const noexcept {
  const uint8_t v = state_[page].load(std::memory_order_acquire);
  if ((v == kTagA || v == kTagB) && write_tag_.load(std::memory_order_relaxed) != 0) return v == pending_tag_.load();
  return v != kIdle;  // pending, being copied, aside (or, in batond's share, a client's garbage)
}

void CopyOnWrite::mark_all_written() noexcept {
  const uint32_t words = (pages_ + 63) / 64;
  for (uint32_t w = 0; w < words; ++w) {
    const uint64_t all = w + 1 == words && pages_ % 64 != 0 ? (uint64_t{1} << (pages_ % 64)) - 1 : ~uint64_t{0};
    written_[w].store(all, std::memory_order_relaxed);
    unprotected_[w].store(all, std::memory_order_relaxed);  // protecting one twice is harmless
  }
  untagged_.store(true, std::memory_order_relaxed);
  wholesale_.store(true, std::memory_order_relaxed);
}

bool CopyOnWrite::any_written() const noexcept {
  if (written_ == nullptr) return false;  // kSettler: the client knows
  for (uint32_t w = 0; w < (pages_ + 63) / 64; ++w)
    if (written_[w].load(std::memory_order_relaxed) != 0) return true;
  return false;
}

namespace {
/// Joins runs (sorted, apart) whose gap is at most `gap` bytes into one,
/// in place.
void join_runs(std::vector<std::pair<uint64_t, uint64_t>>& runs, uint64_t gap) {
  size_t out = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (out != 0 && runs[i].first - (runs[out - 1].first + runs[out - 1].second) <= gap) {
      runs[out - 1].second = runs[i].first + runs[i].second - runs[out - 1].first;
      continue;
    }
    runs[out++] = runs[i];
  }
  runs.resize(out);
}

/// The word indices 0..n-1, for for_each_run over every word (no
/// std::views::iota: clang with this libstdc++, the fuzz and sanitizer
/// builds' compiler, does not compile its ranges).
struct WordIndices {
  uint32_t n;
  struct It {
    uint32_t i;
    uint32_t operator*() const noexcept { return i; }
    It& operator++() noexcept {
      ++i;
      return *this;
    }
    bool operator!=(const It& o) const noexcept { return i != o.i; }
  };
  It begin() const noexcept { return {0}; }
  It end() const noexcept { return {n}; }
};
}  // namespace

void CopyOnWrite::take() {
  // Under the gate (a Freeze): no handler or protector is in. Only the
  // words with pages written are touched (at 1% of 1 GiB, half of them),
  // and a page protected ahead is one written since the last freeze
  // (ahead_ is set only from unprotected_, which a handler sets after
  // written_, and both are taken here), so the protector's marks are
  // cleared in those words alone.
  // Nothing else writes the bits while the gate is held (the handlers and
  // the protector are its readers): a load and a store each, not an
  // exchange, whose lock would keep the misses of the scan from
  // overlapping (~20 us of the 1 GiB pause). The lists keep their room
  // from one freeze to the next: no allocation once warm.
  const uint32_t words = (pages_ + 63) / 64;
  if (taken_tag_ != 0 && !pended_)  // the last freeze's tags, never made pending: gone
    for (const uint32_t p : taken()) untag(p);
  // Branch-free: every word's bits are cleared and decoded, three page
  // indices stored whatever its count (the pointer moves on by the count;
  // more than three are rare at the densities where it matters). A loop
  // that skipped empty words and left each word's bits in a loop of its
  // own mispredicted its exits about once a word: 25 us at 1% of 1 GiB,
  // against 9-13 us (a microbenchmark of both, cold bitmaps).
  uint32_t* const pages = taken_pages_.get();
  uint32_t* out = pages;
  uint32_t listed_words = 0;
  for (uint32_t w = 0; w < words; ++w) {
    const uint64_t bits = written_[w].load(std::memory_order_relaxed);
    written_[w].store(0, std::memory_order_relaxed);
    ahead_[w].store(0, std::memory_order_relaxed);
    taken_words_[listed_words] = {w, bits};
    listed_words += bits != 0;
    const uint32_t count = static_cast<uint32_t>(__builtin_popcountll(bits)), base = w * 64;
    // (The top bit ORed in: ctz of 0 is undefined; past the last set bit
    // an index is stored past the end, and not counted.)
    constexpr uint64_t kTop = uint64_t{1} << 63;
    uint64_t b = bits;
    out[0] = base + static_cast<uint32_t>(__builtin_ctzll(b | kTop));
    b &= b - 1;
    out[1] = base + static_cast<uint32_t>(__builtin_ctzll(b | kTop));
    b &= b - 1;
    out[2] = base + static_cast<uint32_t>(__builtin_ctzll(b | kTop));
    b &= b - 1;
    if (count > 3) [[unlikely]] {
      for (uint32_t* o = out + 3; b != 0; b &= b - 1) *o++ = base + static_cast<uint32_t>(__builtin_ctzll(b));
    }
    out += count;
  }
  taken_words_count_ = listed_words;
  taken_pages_count_ = static_cast<uint32_t>(out - pages);
  const uint64_t written_pages = taken_pages_count_;
  // Tags: the pages written since the last freeze wear write_tag_; it is
  // retired now (its pages pending once pend_tagged says so), and the
  // handlers from here on tag with the other one, which pending_tag_
  // named until now: no page wears it any more (the last snapshot's
  // pages are all settled: tag_writes), and no tag is pending until this
  // freeze pends.
  took_untagged_ = untagged_.exchange(false, std::memory_order_relaxed);
  pending_tag_.store(kPending, std::memory_order_relaxed);
  if (const uint8_t tag = write_tag_.load(std::memory_order_relaxed); tag != 0) {
    taken_tag_ = tag;
    write_tag_.store(tag == kTagA ? kTagB : kTagA, std::memory_order_relaxed);
    pended_ = false;
  }
  protect_runs_.clear();
  for_each_run(
      WordIndices{words},
      [&](uint32_t w) {
        const uint64_t bits = unprotected_[w].load(std::memory_order_relaxed);
        if (bits != 0) unprotected_[w].store(0, std::memory_order_relaxed);
        return bits;
      },
      [&](uint64_t off, uint64_t len) { protect_runs_.emplace_back(off, len); });
  protect_pages_ = 0;
  for (const auto& run : protect_runs_) protect_pages_ += run.second / kPage;
  left_runs_ = protect_runs_;  // (capacity kept: no allocation once it has seen its largest commit)
  // Each call of UFFDIO_WRITEPROTECT costs a walk and a TLB flush: 1.6
  // us alone here, ~17 us inside an engine whose other threads run on the
  // other vCPU (the flush waits for its IPI). Pages written at random
  // leave short gaps between the runs: 10 352 pages of 64 MiB written at
  // random are ~3 800 runs, 60-68 ms to protect run by run in
  // baton-snapshot. A page in a gap is protected already (every writable
  // page has its bit: a handler sets it after lifting the protection,
  // and no handler is in while the gate is held; and a page protected
  // once more only faults once more), so protecting it again changes no
  // entry; it costs the walk over it. Runs at most kJoinGap apart go in
  // one call: that protect took 7.6 ms. Wider gaps buy nothing more
  // there, and where writes are sparse (1% of 1 GiB at random) joining
  // across 16 pages made the engine's protect 5-15% slower; across 4 it
  // is unchanged (docs/performance.md, "Dense scattered writes").
  constexpr uint64_t kJoinGap = uint64_t{4} * kPage;
  join_runs(protect_runs_, kJoinGap);
  if (++freezes_ % kHotFreezes == 0) {
    for (uint32_t w = 0; w < words; ++w) {
      if (hot_[w].load(std::memory_order_relaxed) != 0) hot_[w].store(0, std::memory_order_relaxed);
      if (again_[w].load(std::memory_order_relaxed) != 0) again_[w].store(0, std::memory_order_relaxed);
    }
  }
  backlog_.store(0, std::memory_order_relaxed);
  // The pages a quiescent commit left writable count as written whether or
  // not anything wrote them: not the writer's faults.
  decide_dense(written_pages - std::min(written_pages, std::exchange(left_pages_, 0)));
  took_wholesale_ = wholesale_.load(std::memory_order_relaxed);
  wholesale_.store(false, std::memory_order_relaxed);
}

Result<void> CopyOnWrite::release_all() {
  if (role_ == Role::kSettler) return {};
  lock_writer();
  mark_all_written();
  const bool ok = protect_range(0, len_, false);
  unlock_writer();
  if (!ok) return fail(Errc::kIo, errno_text("UFFDIO_WRITEPROTECT (lift)"));
  return {};
}

CopyOnWrite::Freeze::Freeze(CopyOnWrite& cow) : cow_(cow) { cow_.lock_writer(); }
CopyOnWrite::Freeze::~Freeze() { cow_.unlock_writer(); }

namespace {
/// A moving average of a cost per page, in ns: `avg` takes a quarter of
/// each new sample (the first sample whole).
void note_cost(uint64_t& avg, uint64_t ns, uint64_t pages) noexcept {
  if (pages == 0) return;
  const uint64_t sample = std::max<uint64_t>(1, ns / pages);
  avg = avg == 0 ? sample : (avg * 3 + sample) / 4;
}
}  // namespace

Result<void> CopyOnWrite::Freeze::protect() {
  const uint64_t t0 = monotonic_ns();
  for (const auto& [off, len] : cow_.protect_runs_)
    if (!cow_.protect_range(off, len, true)) return fail(Errc::kIo, errno_text("UFFDIO_WRITEPROTECT"));
  cow_.protected_at_commit_->fetch_add(cow_.protect_pages_, std::memory_order_relaxed);
  // (A whole region goes in runs of a MiB, far cheaper a page than the
  // scattered pages a quiescent commit would copy: not a sample of those.)
  if (!cow_.took_wholesale_) note_cost(cow_.protect_ns_per_page_, monotonic_ns() - t0, cow_.protect_pages_);
  return {};
}

uint32_t CopyOnWrite::Freeze::to_protect() const noexcept { return static_cast<uint32_t>(cow_.protect_pages_); }

void CopyOnWrite::pend_tagged(std::byte* stage, uint32_t limit) noexcept {
  aside_.store(stage, std::memory_order_relaxed);  // published by the gate's release
  patience_ns_ = kClientPatienceNs;
  // Pages past the stage (the memory runs on past the segment) are not
  // the snapshot's: their tags go.
  const auto pages = taken();
  for (auto it = std::lower_bound(pages.begin(), pages.end(), limit); it != pages.end(); ++it) untag(*it);
  pending_tag_.store(taken_tag_, std::memory_order_relaxed);
  pended_ = true;
}

bool CopyOnWrite::Freeze::copy_left_pays() noexcept {
  if (!cow_.ahead_on_ || cow_.took_wholesale_ || cow_.role_ == Role::kSettler || cow_.protect_pages_ == 0 ||
      cow_.protect_pages_ > kCopyLeftMax)
    return false;
  if (cow_.protect_ns_per_page_ == 0) return false;  // learn what a protection costs first
  if (cow_.copy_ns_per_page_ == 0) return true;      // then a copy
  const bool cheaper = cow_.copy_ns_per_page_ < cow_.protect_ns_per_page_;
  return ++cow_.quiescent_freezes_ % kRetryEvery == 0 ? !cheaper : cheaper;
}

void CopyOnWrite::Freeze::copy_left() noexcept {
  // Under the gate: no handler and no protector is in, and the caller
  // promised no other write. Each page goes into the snapshot as it is
  // (claim: kLocal into the stage, kClient aside for batond; a page batond
  // settled already is not pending, and its copy stands), then counts as
  // written and writable again, for the next freeze and the protector.
  const uint64_t t0 = monotonic_ns();
  uint64_t copied = 0;
  for (const auto& [off, len] : cow_.left_runs_) {
    for (uint64_t at = off; at < off + len; at += kPage) {
      const auto page = static_cast<uint32_t>(at / kPage);
      copied += cow_.claim(page) ? 1 : 0;
      cow_.tag_written(page);
      const uint64_t bit = uint64_t{1} << (page % 64);
      cow_.written_[page / 64].fetch_or(bit, std::memory_order_relaxed);
      cow_.unprotected_[page / 64].fetch_or(bit, std::memory_order_relaxed);
    }
  }
  const uint64_t left = cow_.protect_pages_;  // the pages of left_runs_
  cow_.copied_at_commit_->fetch_add(copied, std::memory_order_relaxed);
  note_cost(cow_.copy_ns_per_page_, monotonic_ns() - t0, copied);
  cow_.left_pages_ = left;
  // The protector visits a region with a backlog: it protects these pages
  // (but hot ones) on its next passes, once awake. Not woken from here:
  // a wake-up would cost the commit what it saved (the next fault's nudge
  // does it, or its own rounds).
  cow_.backlog_.fetch_add(static_cast<uint32_t>(left), std::memory_order_relaxed);
}

}  // namespace baton
