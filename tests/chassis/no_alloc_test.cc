// The data path does not allocate: after warm-up, commits and waits over real
// DPDK ports make no heap allocation in any thread of the process.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>

#include "../common/cluster.h"
#include "baton/ethdev.h"

namespace {
std::atomic<uint64_t> allocations{0};
}  // namespace

void* operator new(size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace baton {
namespace {

using namespace std::chrono_literals;

TEST(NoAllocation, CommitAndWaitAfterWarmUp) {
  auto pair = ethdev::ring_pair(1, 2);
  ASSERT_TRUE(pair);
  std::vector<std::unique_ptr<Link>> l1, l2;
  l1.push_back(std::move(pair->first));
  l2.push_back(std::move(pair->second));
  EngineConfig c;
  c.node_id = 1;
  auto a = Engine::start(c, std::move(l1));
  c.node_id = 2;
  auto b = Engine::start(c, std::move(l2));
  ASSERT_TRUE(a && b);
  // Membership settles first: its events (view changes, agreement) allocate
  // their text, off the data path but in this process.
  ASSERT_TRUE(test::eventually([&] {
    return (*a)->view().agreed && (*b)->view().agreed && (*a)->view().members.size() == 2 &&
           (*b)->view().members.size() == 2;
  }));
  for (uint64_t size : {uint64_t{4096}, uint64_t{1} << 20}) {
    auto seg = (*a)->create("alloc-" + std::to_string(size), size);
    ASSERT_TRUE(seg);
    auto mem = (*a)->data(*seg);
    // Warm-up: the replica store is created on first sight, vectors grow.
    for (int i = 0; i < 5; ++i) {
      mem[0] = std::byte(i);
      auto g = (*a)->commit(*seg);
      ASSERT_TRUE(g && (*a)->wait_replicated(*seg, *g, 1, 10s));
    }
    const uint64_t before = allocations.load();
    for (int i = 0; i < 100; ++i) {
      mem[1] = std::byte(i);
      auto g = (*a)->commit(*seg);
      ASSERT_TRUE(g);
      ASSERT_TRUE((*a)->wait_replicated(*seg, *g, 1, 10s));
    }
    EXPECT_EQ(allocations.load() - before, 0u) << "size " << size;
  }
}

}  // namespace
}  // namespace baton
