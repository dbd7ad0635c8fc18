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
