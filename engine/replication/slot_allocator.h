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
// It frees them too, and the segments this node stops owning: unmapping
// gigabytes of faulted pages also takes long (a fenced 64 MiB segment took
// 23-26 ms, on the critical path of the failover that loaded it again).
//
// Thread: submit() and take() are the worker's (the poll-token holder);
// free() any thread's; the allocation and the freeing run on this object's
// own thread, "baton-alloc".

#include <atomic>
#include <chrono>
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
  /// Destroys `doomed` (a replica store, a removed segment) on this
  /// object's thread: the munmap of its memory. `after` holds it back that
  /// long first (in order: every call passes the same or none). Whatever
  /// is still queued when the allocator stops is destroyed by its
  /// destructor.
  void free(std::shared_ptr<void> doomed, std::chrono::milliseconds after = {});
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
  std::deque<std::shared_ptr<void>> to_free_;  ///< mu_
  /// Held back until their time (steady clock), oldest first. mu_
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::shared_ptr<void>>> later_;
  bool stop_ = false;                      ///< mu_
  std::atomic<uint32_t> ready_{0};         ///< done_.size(), read without mu_
  std::thread thread_;
};

}  // namespace baton
