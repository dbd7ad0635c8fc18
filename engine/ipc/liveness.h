#pragma once
// An application's death, seen the moment it happens (S17).
//
// A pidfd turns readable only once the dead process's memory is torn down:
// on this project's machines 0.4 ms for `sleep`, 8 ms for a process with
// 64 MiB of private memory, 66 ms with 1 GiB (a probe, docs/performance.md,
// "Failover"). Robust mutexes are released earlier: as each thread of a
// dying process exits, the kernel walks its robust list, marks every lock
// word it holds FUTEX_OWNER_DIED and wakes a waiter, before the memory goes
// (0.1-0.25 ms in the same probe, whatever the process's size).
//
// So the failover runner gives each application it starts a page of shared
// memory (`BATON_LIVENESS_FD`) holding a robust, process-shared mutex, and
// the application's client library locks it from a thread of its own
// (`baton-alive`) that never unlocks it. A thread of batond waits on the
// lock word (failover/liveness_watch.h).

#include <pthread.h>

#include <atomic>
#include <cstdint>

namespace baton::ipc {

inline constexpr uint32_t kLivenessMagic = 0x564c5442;  // "BTLV"
inline constexpr const char* kLivenessEnv = "BATON_LIVENESS_FD";

/// The page's layout. Written by the runner before the application starts
/// (the mutex, `magic`) and right after (`pid`); the mutex is then the
/// application's to lock. Nothing in it is trusted by batond: a garbled
/// word can only cost the application its fast detection.
struct LivenessPage {
  pthread_mutex_t lock;  ///< robust, process-shared; locked by the application, never unlocked
  alignas(64) std::atomic<uint32_t> magic;
  std::atomic<int32_t> pid;  ///< the process that is to hold `lock` (the one the runner started)
  std::atomic<int32_t> daemon;  ///< the batond that started it: the application dies with it
};
static_assert(sizeof(LivenessPage) <= 4096);

/// The 32-bit word of `lock` that the kernel's robust-list walk updates
/// (glibc's `__lock`: the owner's thread id, FUTEX_WAITERS, FUTEX_OWNER_DIED).
inline uint32_t* liveness_word(LivenessPage& p) noexcept {
  return reinterpret_cast<uint32_t*>(&p.lock.__data.__lock);
}

/// Client side, called on every connection to batond; does anything only
/// once per process, and only in the process the runner started with
/// `BATON_LIVENESS_FD` (its children inherit the variable and are left
/// out). Starts the `baton-alive` thread, which locks the page's mutex and
/// waits, every signal blocked, for the batond that started the process
/// (its parent, `daemon`) to end, and then kills the process: without its
/// batond nothing it commits can become durable, and the failover starts
/// it elsewhere, so it must not serve on as a second active instance.
/// Never fails: a missing or foreign page only leaves the runner its pidfd
/// (and the process its life). Thread: any.
void hold_liveness() noexcept;

}  // namespace baton::ipc
