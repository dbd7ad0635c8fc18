#include <gtest/gtest.h>
#include <hwloc.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "runtime/topology.h"

namespace baton {
namespace {

TEST(Topology, MatchesWhatTheKernelReports) {
  auto t = Topology::discover();
  ASSERT_TRUE(t) << t.error().to_string();
  EXPECT_FALSE(t->described);
  EXPECT_GE(t->cores, 1);
  EXPECT_EQ(t->pus, sysconf(_SC_NPROCESSORS_ONLN));
  ASSERT_GE(t->numa_nodes.size(), 1u);
  size_t cpus = 0;
  for (const auto& n : t->numa_nodes) {
    cpus += n.cpus.size();
    EXPECT_GT(n.memory_bytes, 0u);
    for (int c : n.cpus) EXPECT_EQ(t->numa_node_of_cpu(c), n.os_index);
  }
  EXPECT_EQ(cpus, static_cast<size_t>(t->pus));
  EXPECT_GE(t->numa_node_of_this_thread(), 0);
  EXPECT_EQ(t->numa_node_of_cpu(100000), -1);
  EXPECT_NE(t->summary().find("NUMA node"), std::string::npos);
}

// The two-socket server the placement tests stand in: 2 packages x 2 NUMA
// nodes x 4 cores.
void expect_two_sockets(const Topology& t) {
  EXPECT_TRUE(t.described);
  EXPECT_EQ(t.packages, 2);
  EXPECT_EQ(t.cores, 16);
  EXPECT_EQ(t.pus, 16);
  ASSERT_EQ(t.numa_nodes.size(), 4u);
  for (int node = 0; node < 4; ++node) {
    EXPECT_TRUE(t.has_numa_node(node));
    EXPECT_EQ(t.package_of(node), node / 2) << node;
  }
  for (int cpu = 0; cpu < 16; ++cpu) EXPECT_EQ(t.numa_node_of_cpu(cpu), cpu / 4) << cpu;
  EXPECT_FALSE(t.has_cpu(16));
  EXPECT_FALSE(t.has_numa_node(4));
  EXPECT_EQ(t.package_of(4), -1);
  // Not this machine: no thread of ours runs on it.
  EXPECT_EQ(t.numa_node_of_this_thread(), -1);
  EXPECT_NE(t.summary().find("node 3 in package 1"), std::string::npos) << t.summary();
}

TEST(Topology, ASyntheticDescriptionStandsInForATwoSocketServer) {
  auto t = Topology::load("synthetic:package:2 numa:2 core:4 pu:1");
  ASSERT_TRUE(t) << t.error().to_string();
  expect_two_sockets(*t);
}

TEST(Topology, AnXmlExportLoadsAsWhatItDescribes) {
  hwloc_topology_t raw = nullptr;
  ASSERT_EQ(hwloc_topology_init(&raw), 0);
  ASSERT_EQ(hwloc_topology_set_synthetic(raw, "package:2 numa:2 core:4 pu:1"), 0);
  ASSERT_EQ(hwloc_topology_load(raw), 0);
  char path[] = "/tmp/baton-topology-XXXXXX.xml";
  const int fd = mkstemps(path, 4);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(hwloc_topology_export_xml(raw, path, 0), 0);
  hwloc_topology_destroy(raw);
  auto t = Topology::load(path);
  std::remove(path);
  ASSERT_TRUE(t) << t.error().to_string();
  expect_two_sockets(*t);
}

TEST(Topology, ABadDescriptionIsRefusedWithTheReason) {
  for (const char* bad : {"synthetic:", "synthetic:package:two", "synthetic:core:0", "/nonexistent/topology.xml"}) {
    auto t = Topology::load(bad);
    ASSERT_FALSE(t) << bad;
    EXPECT_EQ(t.error().code, Errc::kInvalidArgument) << bad;
    EXPECT_FALSE(t.error().message.empty());
  }
}

}  // namespace
}  // namespace baton
