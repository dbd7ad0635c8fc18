// Failover decisions under random schedules (failover_sim.h): 2 000 seeds
// in CI; baton-failover-sim runs more.

#include <gtest/gtest.h>

#include "failover_sim.h"

namespace baton::failover::sim {
namespace {

TEST(FailoverSimulation, TwoThousandSeeds) {
  Stats stats;
  for (uint64_t seed = 1; seed <= 2000; ++seed) {
    auto f = run(seed, Options{}, &stats);
    ASSERT_FALSE(f) << "seed " << seed << " (replay: baton-failover-sim --seed " << seed << " --print)\n" << *f;
  }
  EXPECT_GT(stats.failovers, 1000u);
  EXPECT_GT(stats.kills, 1000u);
  EXPECT_GT(stats.packed, 100u) << "groups with minimums share nodes by capacity";
  std::printf("assignments %llu, failovers %llu, alerts %llu, kills %llu, crashes %llu\n",
              static_cast<unsigned long long>(stats.assignments), static_cast<unsigned long long>(stats.failovers),
              static_cast<unsigned long long>(stats.alerts), static_cast<unsigned long long>(stats.kills),
              static_cast<unsigned long long>(stats.crashes));
}

TEST(FailoverSimulation, ASeedReplaysExactly) {
  Options o;
  Stats a, b;
  EXPECT_FALSE(run(77, o, &a));
  EXPECT_FALSE(run(77, o, &b));
  EXPECT_EQ(a.assignments, b.assignments);
  EXPECT_EQ(a.crashes, b.crashes);
}

}  // namespace
}  // namespace baton::failover::sim
