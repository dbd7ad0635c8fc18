#include "ethdev/memif_guard.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace baton::ethdev {

std::atomic<int> MemifGuard::bursts{0};
std::atomic<int> MemifGuard::unmaps{0};
thread_local bool MemifGuard::NoWaitConnect::active = false;
thread_local int MemifGuard::PortControl::depth = 0;

namespace {
constexpr int kKeptMax = 64;
std::atomic<int> kept[kKeptMax];  ///< 0: free (a kept descriptor is never 0)
}  // namespace

void MemifGuard::keep_open(int fd) noexcept {
  if (fd <= 0 || kept_open(fd)) return;
  for (auto& k : kept) {
    int free_slot = 0;
    if (k.compare_exchange_strong(free_slot, fd)) return;
  }
}

bool MemifGuard::kept_open(int fd) noexcept {
  if (fd <= 0) return false;
  for (const auto& k : kept) {
    const int v = k.load(std::memory_order_acquire);
    if (v == 0) return false;  // slots fill in order and are never freed
    if (v == fd) return true;
  }
  return false;
}

// Looked up once per thread by its name (DPDK 22.11's; "dpdk-intr"
// later): that thread is named when it is created, long before a handler
// of it sends anything.
bool MemifGuard::on_interrupt_thread() noexcept {
  thread_local const bool intr = [] {
    char name[16] = {};
    if (prctl(PR_GET_NAME, name) != 0) return false;
    return std::strcmp(name, "eal-intr-thread") == 0 || std::strcmp(name, "dpdk-intr") == 0;
  }();
  return intr;
}

namespace {

bool is_seqpacket(int fd) noexcept {
  int type = 0;
  socklen_t len = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET;
}

}  // namespace

}  // namespace baton::ethdev

// Interposes libc's munmap for the whole process (the PMD is a shared object
// that calls munmap through the PLT). An unmap by any other thread than
// those that can take a memif port's regions (MemifGuard::guards_unmaps)
// goes straight to the kernel. A thread that stops a port and also bursts
// (none does: stops run on the interrupt thread) would do so between its
// bursts, and never wait for itself.
extern "C" int munmap(void* addr, size_t len) noexcept {
  using baton::ethdev::MemifGuard;
  if (!MemifGuard::guards_unmaps()) return static_cast<int>(syscall(SYS_munmap, addr, len));
  MemifGuard::unmaps.fetch_add(1);
  while (MemifGuard::bursts.load() > 0) _mm_pause();
  const long r = syscall(SYS_munmap, addr, len);
  MemifGuard::unmaps.fetch_sub(1);
  return static_cast<int>(r);
}

namespace {
/// The close() this one stands in front of (libc's, or a sanitizer's,
/// which tracks descriptors: ThreadSanitizer took a descriptor that a
/// thread had closed behind its back and another reused for a race).
/// Looked up before main(); a close() before that goes to the kernel.
using CloseFn = int (*)(int);
using ConnectFn = int (*)(int, const struct sockaddr*, socklen_t);
CloseFn next_close = nullptr;
ConnectFn next_connect = nullptr;  ///< likewise, for connect()
__attribute__((constructor)) void find_next_close() {
  next_close = reinterpret_cast<CloseFn>(dlsym(RTLD_NEXT, "close"));
  next_connect = reinterpret_cast<ConnectFn>(dlsym(RTLD_NEXT, "connect"));
}
}  // namespace

// Interposes libc's close for the whole process: a kept descriptor
// (MemifGuard::keep_open) stays open; every other is closed.
extern "C" int close(int fd) {
  if (baton::ethdev::MemifGuard::kept_open(fd)) return 0;
  if (next_close != nullptr) return next_close(fd);
  return static_cast<int>(syscall(SYS_close, fd));
}

// Interposes libc's connect for the whole process: within a
// MemifGuard::NoWaitConnect, a blocking socket connects without waiting. A
// unix socket whose listener's backlog is full then fails at once with
// EAGAIN instead of waiting for an accept that may never come (the memif
// PMD takes any failure as "no server", and batond retries). Every other
// call is the next connect's (libc's or a sanitizer's).
extern "C" int connect(int fd, const struct sockaddr* addr, socklen_t len) {
  const auto forward = [&] {
    return next_connect != nullptr ? next_connect(fd, addr, len)
                                   : static_cast<int>(syscall(SYS_connect, fd, addr, len));
  };
  if (!baton::ethdev::MemifGuard::NoWaitConnect::active) return forward();
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || (flags & O_NONBLOCK) != 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return forward();
  const int r = forward();
  const int err = errno;
  fcntl(fd, F_SETFL, flags);
  errno = err;
  return r;
}

// Interposes libc's sendmsg for the whole process, to survive a peer that
// hangs up before the memif server greets it.
//
// The memif PMD's listener (DPDK 22.11 to this day) accepts a connection,
// registers the new socket with the EAL interrupt thread, then sends its
// hello; if that send fails, it closes the socket and frees the channel
// without unregistering it. The interrupt thread then rebuilds its epoll set
// with the closed descriptor and rte_panic()s ("Error adding fd N
// epoll_ctl, Bad file descriptor"), or, had the number been reused, calls
// the freed channel. A memif client killed while connecting, or any local
// process connecting to the (abstract, unpermissioned by default) socket and
// hanging up at once, took the server's batond down.
//
// So a send on the interrupt thread to a SOCK_SEQPACKET peer that has gone
// (EPIPE, ECONNRESET) reports success: the message was for a peer that no
// longer reads. The socket stays registered, turns readable at its end of
// file, and the PMD's own receive path unregisters and closes it. Sends on
// that thread also never raise SIGPIPE (the PMD passes no MSG_NOSIGNAL, and
// an application that embeds the engine may not ignore SIGPIPE as batond
// does). Every other call, and every other error, is libc's.
extern "C" ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  const bool intr = baton::ethdev::MemifGuard::on_interrupt_thread();
  const long r = syscall(SYS_sendmsg, fd, msg, intr ? flags | MSG_NOSIGNAL : flags);
  if (r >= 0) return r;
  const int err = errno;
  if (intr && (err == EPIPE || err == ECONNRESET) && baton::ethdev::is_seqpacket(fd)) {
    size_t len = 0;
    for (size_t i = 0; i < msg->msg_iovlen; ++i) len += msg->msg_iov[i].iov_len;
    return static_cast<ssize_t>(len);
  }
  errno = err;
  return -1;
}
