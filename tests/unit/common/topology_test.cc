#include <gtest/gtest.h>
#include <unistd.h>

#include "runtime/topology.h"

namespace baton {
namespace {

TEST(Topology, MatchesWhatTheKernelReports) {
  auto t = Topology::discover();
  ASSERT_TRUE(t) << t.error().to_string();
  EXPECT_GE(t->cores, 1);
  EXPECT_EQ(t->pus, sysconf(_SC_NPROCESSORS_ONLN));
  ASSERT_GE(t->numa_nodes.size(), 1u);
  size_t cpus = 0;
  for (const auto& n : t->numa_nodes) {
    cpus += n.cpus.size();
    EXPECT_GT(n.memory_bytes, 0u);
  }
  EXPECT_EQ(cpus, static_cast<size_t>(t->pus));
  EXPECT_GE(t->numa_node_of_this_thread(), 0);
  EXPECT_NE(t->summary().find("NUMA node"), std::string::npos);
}

}  // namespace
}  // namespace baton
