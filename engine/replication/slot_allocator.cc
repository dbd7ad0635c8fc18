#include "replication/slot_allocator.h"

#include <sys/prctl.h>

namespace baton {

SlotAllocator::SlotAllocator(uint32_t retain, int numa_node)
    : retain_(retain), numa_node_(numa_node), thread_([this] { run(); }) {}

SlotAllocator::~SlotAllocator() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void SlotAllocator::submit(ReplicaStore::Origin origin) {
  {
    std::lock_guard lock(mu_);
    todo_.push_back(std::move(origin));
  }
  cv_.notify_one();
}

void SlotAllocator::free(std::shared_ptr<void> doomed, std::chrono::milliseconds after) {
  if (doomed == nullptr) return;
  {
    std::lock_guard lock(mu_);
    if (after.count() > 0)
      later_.emplace_back(std::chrono::steady_clock::now() + after, std::move(doomed));
    else
      to_free_.push_back(std::move(doomed));
  }
  cv_.notify_one();
}

bool SlotAllocator::take(Done& out) {
  if (ready_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard lock(mu_);
  if (done_.empty()) return false;
  out = std::move(done_.front());
  done_.pop_front();
  ready_.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void SlotAllocator::run() {
  prctl(PR_SET_NAME, "baton-alloc", 0, 0, 0);
  std::unique_lock lock(mu_);
  for (;;) {
    auto due = [this] { return !later_.empty() && later_.front().first <= std::chrono::steady_clock::now(); };
    auto work = [this] { return stop_ || !todo_.empty() || !to_free_.empty(); };
    // Nothing held back: sleep until there is anything (a first one held
    // back too, to wait for its time). Else sleep until its time.
    if (later_.empty())
      cv_.wait(lock, [&] { return work() || !later_.empty(); });
    else
      cv_.wait_until(lock, later_.front().first, [&] { return work() || due(); });
    if (stop_) return;
    while (due()) {
      to_free_.push_back(std::move(later_.front().second));
      later_.pop_front();
    }
    if (todo_.empty() && to_free_.empty()) continue;
    if (!to_free_.empty()) {
      std::shared_ptr<void> dead = std::move(to_free_.front());
      to_free_.pop_front();
      lock.unlock();
      dead.reset();
      lock.lock();
      continue;
    }
    ReplicaStore::Origin origin = std::move(todo_.front());
    todo_.pop_front();
    lock.unlock();
    Done d;
    d.store = ReplicaStore::create(origin, retain_, numa_node_);
    d.origin = std::move(origin);
    lock.lock();
    done_.push_back(std::move(d));
    ready_.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace baton
