#include "ethdev/memif_guard.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace baton::ethdev {

std::atomic<int> MemifGuard::bursts{0};
std::atomic<int> MemifGuard::unmaps{0};

}  // namespace baton::ethdev

// Interposes libc's munmap for the whole process (the PMD is a shared object
// that calls munmap through the PLT). Cost for everyone else: two atomic ops.
// A worker that unmaps (dev_stop while reconnecting a memif client) does so
// between its bursts, so it never waits for itself.
extern "C" int munmap(void* addr, size_t len) noexcept {
  using baton::ethdev::MemifGuard;
  MemifGuard::unmaps.fetch_add(1);
  while (MemifGuard::bursts.load() > 0) _mm_pause();
  const long r = syscall(SYS_munmap, addr, len);
  MemifGuard::unmaps.fetch_sub(1);
  return static_cast<int>(r);
}
