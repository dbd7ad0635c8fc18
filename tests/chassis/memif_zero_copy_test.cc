// memif zero-copy clients (operations, "memif zero-copy"): a process of
// its own, because the test leaves a hole in DPDK's memory.
//
// The PMD shares the client's first DPDK memory list with its server,
// sized as the sum of its pages: with a hole below the pool, the server
// would map too little and die reading buffers past it. Such a client must
// not start.

#include <gtest/gtest.h>
#include <rte_malloc.h>
#include <rte_memory.h>
#include <unistd.h>

#include <string>

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
