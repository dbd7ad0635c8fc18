// The munmap() guard of the memif driver (drivers/ethdev/memif_guard.h):
// which unmaps wait for the bursts in flight, and which do not.

#include "ethdev/memif_guard.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace baton::ethdev {
namespace {

using namespace std::chrono_literals;

void* map_page() {
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  return p;
}

/// A burst is in flight (entered, not exited) on this thread while `fn`
/// runs on another; returns whether `fn` finished within `wait`, and lets
/// the burst go either way (so that a waiting unmap ends).
template <typename Fn>
bool finishes_during_a_burst(Fn fn, std::chrono::milliseconds wait) {
  EXPECT_TRUE(MemifGuard::enter());
  auto done = std::async(std::launch::async, fn);
  const bool in_time = done.wait_for(wait) == std::future_status::ready;
  MemifGuard::exit();
  done.get();
  return in_time;
}

// A segment's memory, a client's channel: unmapped by a thread that cannot
// take a memif port's regions. Guarded, it had every burst of the process
// skip while it ran (a lost control frame each), and itself wait for the
// bursts in flight.
TEST(MemifGuard, AnUnmapOutsideThePortsControlNeitherWaitsForBurstsNorStopsThem) {
  void* page = map_page();
  EXPECT_TRUE(finishes_during_a_burst([page] { EXPECT_EQ(munmap(page, 4096), 0); }, 2000ms));
  EXPECT_EQ(MemifGuard::unmaps.load(), 0);
  EXPECT_TRUE(MemifGuard::enter());  // a burst after it starts
  MemifGuard::exit();
}

// A thread that stops, closes or starts a port may unmap the regions a
// burst reads: its unmap waits until no burst is in flight.
TEST(MemifGuard, AnUnmapInAPortControlScopeWaitsForTheBurstInFlight) {
  void* page = map_page();
  std::atomic<bool> unmapped{false};
  EXPECT_FALSE(finishes_during_a_burst(
      [page, &unmapped] {
        MemifGuard::PortControl control;
        EXPECT_EQ(munmap(page, 4096), 0);
        unmapped = true;
      },
      100ms));
  EXPECT_TRUE(unmapped.load());  // once the burst was over
  EXPECT_EQ(MemifGuard::unmaps.load(), 0);
  EXPECT_EQ(MemifGuard::PortControl::depth, 0);
}

// While such an unmap is pending, a burst does not start.
TEST(MemifGuard, NoBurstStartsWhileAGuardedUnmapIsPending) {
  void* page = map_page();
  ASSERT_TRUE(MemifGuard::enter());  // the burst the unmap waits for
  std::atomic<bool> unmapped{false};
  std::thread t([page, &unmapped] {
    MemifGuard::PortControl control;
    EXPECT_EQ(munmap(page, 4096), 0);
    unmapped = true;
  });
  while (MemifGuard::unmaps.load() == 0) std::this_thread::yield();
  EXPECT_FALSE(MemifGuard::enter());  // skipped
  EXPECT_FALSE(unmapped.load());
  MemifGuard::exit();
  t.join();
  EXPECT_TRUE(unmapped.load());
  EXPECT_TRUE(MemifGuard::enter());
  MemifGuard::exit();
}

}  // namespace
}  // namespace baton::ethdev
