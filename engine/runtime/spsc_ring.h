#pragma once
// A bounded single-producer, single-consumer ring of small values: how the
// control thread and the data path talk (engine/control/control_thread.cc).
// "Single" means one at a time: the data path's side may move between
// threads (the worker, a caller holding the poll token) as long as the
// hand-over itself orders them (the poll token's mutex does).

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace baton {

template <typename T, size_t N>
class SpscRing {
  static_assert((N & (N - 1)) == 0, "capacity must be a power of two");
  static_assert(std::is_trivially_copyable_v<T>, "a ring carries plain values");

 public:
  /// False if the ring is full. Thread: the producer.
  bool push(const T& v) noexcept {
    const uint64_t t = tail_.load(std::memory_order_relaxed);
    if (t - head_.load(std::memory_order_acquire) == N) return false;
    slots_[t & (N - 1)] = v;
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }
  /// False if the ring is empty. Thread: the consumer.
  bool pop(T& out) noexcept {
    const uint64_t h = head_.load(std::memory_order_relaxed);
    if (h == tail_.load(std::memory_order_acquire)) return false;
    out = slots_[h & (N - 1)];
    head_.store(h + 1, std::memory_order_release);
    return true;
  }
  /// Whether anything waits (a hint for the other side). Thread: any.
  bool empty() const noexcept {
    return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_acquire);
  }

 private:
  alignas(64) std::atomic<uint64_t> head_{0};
  alignas(64) std::atomic<uint64_t> tail_{0};
  alignas(64) std::array<T, N> slots_{};
};

}  // namespace baton
