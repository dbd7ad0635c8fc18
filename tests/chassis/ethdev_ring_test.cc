// Embedded replication over real DPDK ports (net_ring) inside one process:
// byte-exact at 4 KiB, 1 MiB and 64 MiB, and a load after the primary stopped.

#include <gtest/gtest.h>

#include <chrono>

#include "../common/cluster.h"
#include "baton/ethdev.h"

namespace baton {
namespace {

using namespace std::chrono_literals;

struct RingMesh {
  std::vector<std::unique_ptr<Engine>> nodes;
  explicit RingMesh(int n) {
    std::vector<std::vector<std::unique_ptr<Link>>> links(n);
    for (int a = 0; a < n; ++a)
      for (int b = a + 1; b < n; ++b) {
        auto p = ethdev::ring_pair(a + 1, b + 1);
        if (!p) throw std::runtime_error(p.error().to_string());
        links[a].push_back(std::move(p->first));
        links[b].push_back(std::move(p->second));
      }
    for (int i = 0; i < n; ++i) {
      EngineConfig c;
      c.node_id = static_cast<uint16_t>(i + 1);
      c.replication_factor = 2;
      auto e = Engine::start(c, std::move(links[i]));
      if (!e) throw std::runtime_error(e.error().to_string());
      nodes.push_back(std::move(*e));
    }
    // Formed before the test creates anything: a node that has not heard
    // every peer yet refuses to start a name afresh (fresh_start_wait_ms),
    // and a CI run once created 3 ms after the start.
    const bool formed = test::eventually([&] {
      for (auto& e : nodes)
        if (const View v = e->view(); v.members.size() != nodes.size() || !v.agreed) return false;
      return true;
    });
    if (!formed) throw std::runtime_error("the ring mesh did not form a view of every node in 10 s");
  }
};

class EthdevRing : public ::testing::TestWithParam<uint64_t> {};

TEST_P(EthdevRing, ReplicatesByteExactAndLoadsAfterPrimaryStops) {
  const uint64_t size = GetParam();
  RingMesh mesh(3);
  const std::string name = "ring-" + std::to_string(size);
  auto seg = mesh.nodes[0]->create(name, size);
  ASSERT_TRUE(seg) << seg.error().to_string();
  auto mem = mesh.nodes[0]->data(*seg);
  test::fill_pattern(mem, static_cast<uint32_t>(size));
  auto gen = mesh.nodes[0]->commit(*seg);
  ASSERT_TRUE(gen);
  ASSERT_TRUE(mesh.nodes[0]->wait_replicated(*seg, *gen, 2, 60s));
  std::vector<std::byte> want(mem.begin(), mem.end());
  for (int n : {1, 2}) {
    auto rep = mesh.nodes[n]->read_replica(name);
    ASSERT_TRUE(rep);
    ASSERT_EQ(rep->size(), size);
    EXPECT_TRUE(*rep == want) << "replica on node " << n + 1 << " differs";
  }
  mesh.nodes[0].reset();
  auto loaded = mesh.nodes[1]->load(name);
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  auto got = mesh.nodes[1]->data(loaded->segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end()));
}

INSTANTIATE_TEST_SUITE_P(Sizes, EthdevRing, ::testing::Values(4096, 1 << 20, 64 << 20));

// Per-core shards over real DPDK ports: each net_ring port has a queue pair
// per shard, and shard k of every node runs over queue k.
TEST(EthdevRingShards, EachShardReplicatesOverItsOwnQueuePair) {
  constexpr int kNodes = 3;
  std::vector<std::vector<std::vector<std::unique_ptr<Link>>>> links(kNodes);
  for (auto& node : links) node.resize(2);
  for (int a = 0; a < kNodes; ++a)
    for (int b = a + 1; b < kNodes; ++b) {
      auto p = ethdev::ring_pair_queues(a + 1, b + 1, 2);
      ASSERT_TRUE(p) << p.error().to_string();
      ASSERT_EQ(p->first.size(), 2u);
      for (size_t q = 0; q < 2; ++q) {
        links[a][q].push_back(std::move(p->first[q]));
        links[b][q].push_back(std::move(p->second[q]));
      }
    }
  std::vector<std::unique_ptr<Engine>> nodes;
  for (int i = 0; i < kNodes; ++i) {
    EngineConfig c;
    c.node_id = static_cast<uint16_t>(i + 1);
    c.replication_factor = 2;
    c.workers = {-1, -1};
    auto e = Engine::start_sharded(c, std::move(links[i]));
    ASSERT_TRUE(e) << e.error().to_string();
    nodes.push_back(std::move(*e));
  }
  // One segment per shard.
  std::vector<std::string> names;
  for (int i = 0; names.size() < 2 && i < 100; ++i) {
    std::string n = "ring-shard-" + std::to_string(i);
    if (nodes[0]->shard_of(n) == names.size()) names.push_back(n);
  }
  ASSERT_EQ(names.size(), 2u);
  std::vector<std::vector<std::byte>> want;
  for (size_t k = 0; k < names.size(); ++k) {
    auto seg = nodes[0]->create(names[k], 1 << 20);
    ASSERT_TRUE(seg) << seg.error().to_string();
    auto mem = nodes[0]->data(*seg);
    test::fill_pattern(mem, 77 + static_cast<uint32_t>(k));
    auto gen = nodes[0]->commit(*seg);
    ASSERT_TRUE(gen);
    ASSERT_TRUE(nodes[0]->wait_replicated(*seg, *gen, 2, 60s));
    want.emplace_back(mem.begin(), mem.end());
  }
  // Each queue pair carried its shard's megabyte to each peer.
  for (const auto& l : nodes[0]->link_status()) {
    EXPECT_TRUE(l.name.find(" q0 ") != std::string::npos || l.name.find(" q1 ") != std::string::npos) << l.name;
    EXPECT_GT(l.counters.tx_bytes, 1u << 20) << l.name;
  }
  nodes[0].reset();
  for (size_t k = 0; k < names.size(); ++k) {
    auto loaded = nodes[1]->load(names[k]);
    ASSERT_TRUE(loaded) << loaded.error().to_string();
    auto got = nodes[1]->data(loaded->segment);
    EXPECT_TRUE(std::equal(want[k].begin(), want[k].end(), got.begin(), got.end())) << names[k];
  }
}

TEST(EthdevRingShards, QueuesAreCheckedPerDevice) {
  EXPECT_EQ(ethdev::ring_pair_queues(1, 2, 0).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(ethdev::ring_pair_queues(1, 2, ethdev::kMaxQueues + 1).error().code, Errc::kInvalidArgument);
  ethdev::PortConfig c;
  c.device = "net_ring_nonexistent";
  c.peer = 2;
  c.queues = 2;
  EXPECT_EQ(ethdev::open_port(c).error().code, Errc::kInvalidArgument) << "open_port opens one queue pair";
}

TEST(Ethdev, RejectsBadPortConfig) {
  EXPECT_EQ(ethdev::open_port({}).error().code, Errc::kInvalidArgument);
  ethdev::PortConfig c;
  c.device = "no_such_port";  // not a vdev name: must already exist
  c.peer = 2;
  EXPECT_EQ(ethdev::open_port(c).error().code, Errc::kInvalidArgument);
  c.peer = 0;
  EXPECT_EQ(ethdev::open_port(c).error().code, Errc::kInvalidArgument);
  c.peer = 2;
  c.max_frame = 10;
  EXPECT_EQ(ethdev::open_port(c).error().code, Errc::kInvalidArgument);
  c.max_frame = 16384;
  c.device = "net_bogus0,x=1";  // a vdev no driver claims
  auto r = ethdev::open_port(c);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kIo);
  EXPECT_NE(r.error().message.find("net_bogus0"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace baton
