// The munmap() guard of the memif driver (drivers/ethdev/memif_guard.h):
// which unmaps wait for the bursts in flight, and which do not.

#include "ethdev/memif_guard.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <optional>
#include <thread>

namespace baton::ethdev {
namespace {

using namespace std::chrono_literals;

void* map_page() {
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  return p;
}

/// Whether `pred` turned true within two seconds.
bool soon(const std::function<bool()>& pred) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (!pred())
    if (std::chrono::steady_clock::now() > until) return false;
    else std::this_thread::yield();
  return true;
}

/// Unmaps a page on a thread of its own, named `name` (empty: as it is),
/// inside a PortControl scope if `control`, while a burst is in flight on
/// this thread. Returns whether the unmap waited for the burst: it had
/// started (announced an unmap pending) and was not done 100 ms later; it
/// must be done once the burst is over either way.
bool unmap_waits_for_a_burst(const char* name, bool control) {
  void* page = map_page();
  if (!MemifGuard::enter()) {
    ADD_FAILURE() << "a burst did not start with no unmap pending";
    return false;
  }
  std::atomic<bool> started{false}, unmapped{false};
  std::thread t([&] {
    if (*name != '\0') prctl(PR_SET_NAME, name, 0, 0, 0);
    {
      std::optional<MemifGuard::PortControl> scope;
      if (control) scope.emplace();
      started = true;
      EXPECT_EQ(munmap(page, 4096), 0);
    }
    EXPECT_EQ(MemifGuard::PortControl::depth, 0);  // this thread's, after the scope
    unmapped = true;
  });
  EXPECT_TRUE(soon([&] { return started.load(); }));
  const bool pending = soon([&] { return MemifGuard::unmaps.load() != 0 || unmapped.load(); }) &&
                       MemifGuard::unmaps.load() != 0;
  std::this_thread::sleep_for(100ms);
  const bool waited = pending && !unmapped.load();
  MemifGuard::exit();
  t.join();
  EXPECT_TRUE(unmapped.load());
  EXPECT_EQ(MemifGuard::unmaps.load(), 0);
  EXPECT_EQ(MemifGuard::bursts.load(), 0);
  return waited;
}

// A segment's memory, a client's channel: unmapped by a thread that cannot
// take a memif port's regions. Guarded, it had every burst of the process
// skip while it ran (a lost control frame each), and itself wait for the
// bursts in flight.
TEST(MemifGuard, AnUnmapOutsideThePortsControlNeitherWaitsForBurstsNorStopsThem) {
  void* page = map_page();
  ASSERT_TRUE(MemifGuard::enter());
  auto done = std::async(std::launch::async, [page] { return munmap(page, 4096); });
  const bool in_time = done.wait_for(2s) == std::future_status::ready;
  EXPECT_EQ(MemifGuard::unmaps.load(), 0);
  MemifGuard::exit();
  EXPECT_EQ(done.get(), 0);
  EXPECT_TRUE(in_time) << "the unmap waited for the burst";
  EXPECT_FALSE(unmap_waits_for_a_burst("", false));
  EXPECT_FALSE(unmap_waits_for_a_burst("baton-alloc", false));
}

// The EAL interrupt thread runs memif's handlers, which unmap a port's
// regions when its peer goes: its unmaps wait for the bursts in flight.
TEST(MemifGuard, AnUnmapOnTheInterruptThreadWaitsForTheBurstInFlight) {
  EXPECT_TRUE(unmap_waits_for_a_burst("eal-intr-thread", false));  // DPDK 22.11's name
  EXPECT_TRUE(unmap_waits_for_a_burst("dpdk-intr", false));        // later DPDKs'
}

// A port's stop where the alarm did not run: its unmaps wait too.
TEST(MemifGuard, AnUnmapInAPortControlScopeWaitsForTheBurstInFlight) {
  EXPECT_TRUE(unmap_waits_for_a_burst("", true));
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
  if (soon([] { return MemifGuard::unmaps.load() != 0; })) {
    const bool started = MemifGuard::enter();
    if (started) MemifGuard::exit();
    EXPECT_FALSE(started) << "a burst started while an unmap was pending";
    EXPECT_FALSE(unmapped.load());
  } else {
    ADD_FAILURE() << "the unmap never announced itself";
  }
  MemifGuard::exit();
  t.join();
  EXPECT_TRUE(unmapped.load());
  ASSERT_TRUE(MemifGuard::enter());
  MemifGuard::exit();
}

}  // namespace
}  // namespace baton::ethdev
