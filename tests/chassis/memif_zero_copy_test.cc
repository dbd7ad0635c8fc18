// memif zero-copy clients (operations, "memif zero-copy"): a process of
// its own, because the test leaves a hole in DPDK's memory.
//
// The PMD shares the client's first DPDK memory list with its server,
// sized as the sum of its pages: with a hole below the pool, the server
// would map too little and die reading buffers past it. Such a client must
// not start.
//
// And on its server's hello (a handler on the EAL interrupt thread) the
// client walks DPDK's memory lists under their read lock and allocates
// inside the walk: a port opened meanwhile on another thread, whose pool
// grows DPDK's heap, deadlocked with it. A port holds that thread while it
// opens.

#include <gtest/gtest.h>
#include <rte_alarm.h>
#include <rte_malloc.h>
#include <rte_memory.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "baton/ethdev.h"

namespace baton {
namespace {

// Whether the first memory list in use has a page free below its last one in use.
bool first_list_has_hole() {
  bool hole = false;
  rte_memseg_list_walk(
      [](const rte_memseg_list* msl, void* arg) {
        if (msl->memseg_arr.count == 0 || msl->external) return 0;
        auto* arr = const_cast<rte_fbarray*>(&msl->memseg_arr);
        const int last = rte_fbarray_find_prev_used(arr, arr->len - 1);
        *static_cast<bool*>(arg) = last + 1 != static_cast<int>(arr->count);
        return 1;
      },
      &hole);
  return hole;
}

// What the zero-copy client's region setup does on the interrupt thread
// (memif_region_init_zc): a walk of the memory lists that allocates inside
// it, here held open 300 ms, so that a port opened meanwhile meets it.
std::atomic<int> in_walk{0};
void walk_and_allocate(void*) {
  rte_memseg_walk(
      [](const rte_memseg_list*, const rte_memseg*, void*) {
        in_walk = 1;
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        rte_free(rte_zmalloc("walk", 64, 0));
        return 1;
      },
      nullptr);
}

// In a child process of its own (a death test, re-executed): EAL starts
// there, and a deadlock ends in SIGALRM, not in a hung test.
[[noreturn]] void open_a_port_beside_a_walk() {
  alarm(20);
  if (!ethdev::init_eal()) std::_Exit(2);
  if (!ethdev::eal_uses_huge_pages()) {
    // Without huge pages DPDK's memory is all reserved at start: no
    // allocation grows the heap, and nothing can deadlock.
    std::fprintf(stderr, "no huge pages: nothing to show\n");
    std::_Exit(0);
  }
  if (rte_eal_alarm_set(1, &walk_and_allocate, nullptr) != 0) std::_Exit(3);
  while (in_walk.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::string sock = "/tmp/baton-test-" + std::to_string(getpid()) + "-none.sock";
  ethdev::PortConfig pc;
  pc.device = "net_memif0,role=client,socket=" + sock + ",zero-copy=yes";
  pc.peer = 2;
  auto link = ethdev::open_port(pc);  // no server: it opens, and retries to connect later
  unlink((sock + ".alive").c_str());  // the client end's lock file: _Exit leaves it
  std::_Exit(link ? 0 : 4);
}

TEST(MemifZeroCopyDeathTest, APortOpensWhileTheInterruptThreadAllocatesInAMemoryWalk) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(open_a_port_beside_a_walk(), ::testing::ExitedWithCode(0), "");
}

TEST(MemifZeroCopy, AClientWhoseMemoryHasAHoleDoesNotStart) {
  ASSERT_TRUE(ethdev::init_eal());
  if (!ethdev::eal_uses_huge_pages())
    GTEST_SKIP() << "DPDK runs without huge pages here: its memory is reserved at start and never freed, so no hole";
  ASSERT_FALSE(first_list_has_hole());
  // Two blocks of whole huge pages; the first freed goes back to the
  // kernel below the second.
  void* below = rte_malloc("below", 32u << 20, 0);
  void* above = rte_malloc("above", 32u << 20, 0);
  ASSERT_NE(below, nullptr);
  ASSERT_NE(above, nullptr);
  rte_free(below);
  if (!first_list_has_hole()) GTEST_SKIP() << "DPDK kept the freed pages: no hole to test with";
  const std::string sock = "/tmp/baton-test-" + std::to_string(getpid()) + "-zc.sock";
  ethdev::PortConfig pc;
  pc.device = "net_memif0,role=client,socket=" + sock + ",zero-copy=yes";
  pc.peer = 2;
  auto link = ethdev::open_port(pc);
  ASSERT_FALSE(link);
  EXPECT_NE(link.error().message.find("hole"), std::string::npos) << link.error().message;
  rte_free(above);
}

}  // namespace
}  // namespace baton
