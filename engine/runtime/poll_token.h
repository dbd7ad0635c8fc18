#pragma once
// The poll token: whoever holds it runs the engine's poll loop and owns the
// data path's state (links, replica stores, senders, pending loads).
// Normally that is the worker. A thread that has to wait for the engine (a
// commit, wait_replicated, a load) takes the token and polls itself while
// the worker parks, so a commit and its wait cost one spinning thread, not
// two plus a cross-vCPU wake-up (~70 us on these machines).
//
// Callers announce themselves in `wanting()` before they take the token; a
// polling worker sees that and lets go within one iteration, then parks on
// that word until nobody wants the token any more.
//
// Thread: any; the holder is recorded so debug builds can assert it.

#include <immintrin.h>
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>

namespace baton {

class PollToken {
 public:
  /// Takes the token for a caller that is not the worker, spinning (the
  /// worker lets go within one iteration; sleeping would cost a wake-up).
  /// Should the worker have been preempted holding it on this very vCPU,
  /// yields after a while rather than spin out the timeslice it needs.
  void acquire() noexcept {
    wanting_.fetch_add(1);
    for (int spins = 0; !mu_.try_lock(); ++spins) {
      if (spins < 4096) _mm_pause();
      else sched_yield();
    }
    holder_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  }
  /// Takes the token only if nobody holds it; release() it after.
  bool try_acquire() noexcept {
    if (!mu_.try_lock()) return false;
    wanting_.fetch_add(1);
    holder_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    return true;
  }
  /// Gives back a token taken by acquire() or try_acquire(). Returns true
  /// if no other caller wants it now: then the worker may have to be woken.
  bool release() noexcept {
    holder_.store(std::thread::id(), std::memory_order_relaxed);
    mu_.unlock();
    return wanting_.fetch_sub(1) == 1;
  }

  /// The worker's side: it holds the token whenever it is not asleep or
  /// parked, and does not count in wanting().
  void worker_take() noexcept {
    mu_.lock();
    holder_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  }
  void worker_drop() noexcept {
    holder_.store(std::thread::id(), std::memory_order_relaxed);
    mu_.unlock();
  }

  /// Callers that want or hold the token (the worker not counted); also the
  /// futex word a parked worker sleeps on.
  std::atomic<uint32_t>& wanting() noexcept { return wanting_; }
  uint32_t wanting_now() const noexcept { return wanting_.load(); }
  /// Whether the calling thread holds the token.
  bool held_here() const noexcept { return holder_.load(std::memory_order_relaxed) == std::this_thread::get_id(); }

 private:
  std::mutex mu_;
  std::atomic<std::thread::id> holder_{};  ///< default id: nobody
  std::atomic<uint32_t> wanting_{0};
};

}  // namespace baton
