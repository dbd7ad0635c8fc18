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

void SlotAllocator::free(std::unique_ptr<ReplicaStore> store) {
  {
    std::lock_guard lock(mu_);
    to_free_.push_back(std::move(store));
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
    cv_.wait(lock, [this] { return stop_ || !todo_.empty() || !to_free_.empty(); });
    if (stop_) return;
    if (!to_free_.empty()) {
      std::unique_ptr<ReplicaStore> dead = std::move(to_free_.front());
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
