#pragma once
// Allocates replica stores off the worker thread.
//
// A store's slots are (2 + retain) x the segment size of faulted-in memory:
// for a 1 GiB segment, seconds of page faults. Done in the poll loop, that
// stopped heartbeats and made peers declare this node dead. The worker
// instead submits the first frame's description here and drops the frame;
// the sender retransmits until the store exists, and the worker installs
// it when take() hands it back.
//
// It frees them too: unmapping gigabytes of faulted pages also takes long.
//
// Thread: submit(), take() and free() are the worker's (the poll-token holder);
// the allocation runs on this object's own thread, "baton-alloc".

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "baton/result.h"
#include "replication/replica_store.h"

namespace baton {

class SlotAllocator {
 public:
  struct Done {
    ReplicaStore::Origin origin;
    Result<std::unique_ptr<ReplicaStore>> store = fail(Errc::kInternal, "not allocated");
  };

  SlotAllocator(uint32_t retain, int numa_node);
  ~SlotAllocator();  ///< finishes the allocation in progress, drops the rest
  SlotAllocator(const SlotAllocator&) = delete;
  SlotAllocator& operator=(const SlotAllocator&) = delete;

  void submit(ReplicaStore::Origin origin);
  /// Frees `store` on this object's thread (munmap of its slots).
  void free(std::unique_ptr<ReplicaStore> store);
  /// A finished allocation, if any. Lock-free when there is none (the
  /// worker asks on every poll).
  bool take(Done& out);

 private:
  void run();

  const uint32_t retain_;
  const int numa_node_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ReplicaStore::Origin> todo_;  ///< mu_
  std::deque<Done> done_;                  ///< mu_
  std::deque<std::unique_ptr<ReplicaStore>> to_free_;  ///< mu_
  bool stop_ = false;                      ///< mu_
  std::atomic<uint32_t> ready_{0};         ///< done_.size(), read without mu_
  std::thread thread_;
};

}  // namespace baton
