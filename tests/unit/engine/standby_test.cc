// Hot standbys (issue #10 item 4, S16): a standby node holds a replica of
// the segment and keeps its newest generation ready as application memory;
// a load there takes that memory over (no fetch, no copy) and is exactly the
// newest committed generation. Placement puts the replicas on the standby
// nodes first, and moves one there when a standby comes up late.

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>
#include <random>
#include <vector>

#include "../../common/cluster.h"
#include "../../common/ok.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;

EngineConfig with_standbys(std::vector<EngineConfig::Standby> standbys, uint32_t replicas) {
  EngineConfig c = test::fast_detector();
  c.replication_factor = replicas;
  c.standbys = std::move(standbys);
  return c;
}

std::vector<uint16_t> replica_nodes(Engine& e, Segment* seg) {
  std::vector<uint16_t> out;
  for (const auto& [node, held] : test::must(e.status(seg)).replicas) out.push_back(node);
  std::sort(out.begin(), out.end());
  return out;
}

/// Scribbles over a few random ranges (a few chunks change: the next
/// generation travels as a delta).
void scribble(std::span<std::byte> mem, std::mt19937_64& rng) {
  for (int w = 1 + static_cast<int>(rng() % 3); w > 0; --w) {
    const uint64_t len = 1 + rng() % 30000, off = rng() % (mem.size() - len);
    for (uint64_t i = 0; i < len; i += 13) mem[off + i] = std::byte(static_cast<uint8_t>(rng()));
  }
}

/// Scribbles over segment "kv" on `node` and commits, `n` times, each
/// generation newer than the last and held by `k` replicas (kDurable: a
/// majority); with `replica`, each must equal that node's copy. `gen`:
/// the generation before (0: none) and, after, the last one.
void commit_scribbled(Cluster& cl, uint16_t node, Segment* seg, std::mt19937_64& rng, int n, uint32_t k,
                      uint64_t& gen, uint16_t replica = 0) {
  auto mem = cl.node(node).data(seg);
  for (int g = 0; g < n; ++g) {
    scribble(mem, rng);
    const uint64_t next = test::must(cl.node(node).commit(seg));
    EXPECT_GT(next, gen);
    gen = next;
    ASSERT_TRUE(test::ok(cl.node(node).wait_replicated(seg, gen, k, 20s))) << cl.events();
    if (replica == 0) continue;
    const auto rep = test::must(cl.node(replica).read_replica("kv", gen));
    EXPECT_TRUE(std::equal(mem.begin(), mem.end(), rep.begin())) << "generation " << gen;
  }
}

TEST(Standby, TakesOverTheNewestGenerationWithoutAFetchOrACopy) {
  Cluster cl(3, with_standbys({{"kv", {3}}}, 2));
  constexpr uint64_t kSize = 2 << 20;
  Segment* seg = test::must(cl.node(1).create("kv", kSize));
  auto mem = cl.node(1).data(seg);
  std::mt19937_64 rng(11);
  test::fill_pattern(mem, 3);
  uint64_t gen = 0;
  ASSERT_NO_FATAL_FAILURE(commit_scribbled(cl, 1, seg, rng, 40, 2, gen));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, kDurable, 20s))) << cl.events();
  const std::vector<std::byte> want(mem.begin(), mem.end());
  const auto st = test::must(cl.node(1).status(seg));
  EXPECT_EQ(st.standbys, std::vector<uint16_t>{3});
  EXPECT_NE(std::find(st.replicas.begin(), st.replicas.end(), std::make_pair(uint16_t{3}, gen)), st.replicas.end())
      << "the standby holds a replica" << cl.events();
  // Its ready copy catches up with the newest generation on its own.
  ASSERT_TRUE(test::eventually([&] {
    auto r = cl.node(3).replica_status("kv");
    return r && r->standby && r->standby_generation == gen && r->standby_behind_bytes == 0;
  })) << cl.events();
  EXPECT_FALSE(test::must(cl.node(2).replica_status("kv")).standby) << "node 2 is a plain replica";
  EXPECT_GT(cl.node(3).stats().deltas_published, 30u) << "the generations travelled as deltas";

  cl.kill(1);
  ASSERT_TRUE(test::eventually([&] { return !test::peer_alive(cl.node(3), 1); }));
  const OpenResult r = test::must(cl.node(3).load("kv"));
  EXPECT_EQ(r.outcome, OpenOutcome::kRestored);
  EXPECT_EQ(r.generation, gen);
  auto got = cl.node(3).data(r.segment);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin())) << "the promoted copy is the newest generation";
  EXPECT_EQ(cl.node(3).stats().standby_promotions, 1u);
  EXPECT_TRUE(test::has_event(cl.node(3), "hot standby copy")) << cl.events();
  // The new owner carries on: its next generation is durable.
  ASSERT_NO_FATAL_FAILURE(commit_scribbled(cl, 3, r.segment, rng, 1, kDurable, gen, 2));
}

/// Mappings of this process whose name holds `what` (/proc/self/maps).
int mappings_named(const std::string& what) {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find(what) != std::string::npos;
  return n;
}

/// No standby: node 3 is a plain replica keeping `retain` older
/// generations. A load there maps the slot that holds the newest
/// generation in place as the application's memory and takes a free slot
/// for the first stage (with the checksums it came with); with a retained
/// generation the store has a third slot, taken as the second stage
/// instead of allocating one. The state is exactly the newest generation,
/// and the new owner's next one is durable and equal on the other replica.
void load_in_place(uint32_t retain) {
  EngineConfig c = with_standbys({}, 2);
  c.retain = retain;
  Cluster cl(3, c);
  constexpr uint64_t kSize = (2 << 20) + 12345;  // a short last chunk
  Segment* seg = test::must(cl.node(1).create("kv", kSize));
  auto mem = cl.node(1).data(seg);
  std::mt19937_64 rng(17);
  test::fill_pattern(mem, 9);
  uint64_t gen = 0;
  ASSERT_NO_FATAL_FAILURE(commit_scribbled(cl, 1, seg, rng, 20, 2, gen));
  const std::vector<std::byte> want(mem.begin(), mem.end());
  EXPECT_FALSE(test::must(cl.node(3).replica_status("kv")).standby);
  cl.kill(1);
  ASSERT_TRUE(test::eventually([&] { return !test::peer_alive(cl.node(3), 1); }));
  const int stages = mappings_named("kv@stage");
  const OpenResult r = test::must(cl.node(3).load("kv"));
  EXPECT_EQ(r.outcome, OpenOutcome::kRestored);
  EXPECT_EQ(r.generation, gen);
  auto got = cl.node(3).data(r.segment);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin())) << "the load is the newest generation";
  EXPECT_EQ(cl.node(3).stats().replica_promotions, 1u);
  EXPECT_EQ(cl.node(3).stats().replica_promotions_chained, 1u)
      << "generations that travel as deltas leave a slot the stage needs (nearly) nothing copied into";
  EXPECT_EQ(cl.node(3).stats().standby_promotions, 0u);
  EXPECT_TRUE(test::has_event(cl.node(3), "this node's replica, mapped in place")) << cl.events();
  EXPECT_EQ(mappings_named("kv@stage") - stages, retain == 0 ? 1 : 0)
      << (retain == 0 ? "the second stage allocated" : "no stage allocated: both are the store's slots");
  // The promoted stage is what node 2 gets under the new epoch, and the
  // generations after it (in both stages) build on it.
  ASSERT_NO_FATAL_FAILURE(commit_scribbled(cl, 3, r.segment, rng, 3, kDurable, gen, 2));
}

TEST(Standby, APlainReplicaHandsItsSlotsToALoadThere) { load_in_place(0); }

TEST(Standby, AReplicaThatKeepsASpareSlotHandsItOverAsTheSecondStage) { load_in_place(1); }

TEST(Standby, AStandbyThatIsNotCurrentIsNotPromoted) {
  // Node 3 is the standby, but the segment's newest generation was written
  // after node 3 was cut off: node 2 loads it the usual way, and a load on
  // node 3 (once it is back) must not hand over its older copy.
  Cluster cl(3, with_standbys({{"kv", {3}}}, 2));
  constexpr uint64_t kSize = 1 << 20;
  Segment* seg = test::must(cl.node(1).create("kv", kSize));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 5);
  const uint64_t g1 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g1, kDurable, 20s))) << cl.events();
  ASSERT_TRUE(test::eventually([&] {
    auto r = cl.node(3).replica_status("kv");
    return r && r->standby_generation == g1;
  }));
  cl.isolate(3, true);
  ASSERT_TRUE(test::eventually([&] { return !test::peer_alive(cl.node(1), 3); }));
  std::mt19937_64 rng(2);
  scribble(mem, rng);
  const uint64_t g2 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, 1, 20s)));
  const std::vector<std::byte> want(mem.begin(), mem.end());
  cl.kill(1);
  cl.isolate(3, false);
  ASSERT_TRUE(test::eventually([&] { return test::peer_alive(cl.node(3), 2) && test::peer_alive(cl.node(2), 3); }));
  ASSERT_TRUE(test::eventually([&] { return cl.node(3).view().quorate && cl.node(3).view().agreed; }));
  const OpenResult r = test::must(cl.node(3).load("kv"));
  EXPECT_EQ(r.generation, g2) << "the newest generation, from node 2, not the standby's older copy";
  auto got = cl.node(3).data(r.segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin()));
  EXPECT_EQ(cl.node(3).stats().standby_promotions, 0u);
}

TEST(Standby, ReplicasGoToTheStandbysFirstAndMoveToALateOne) {
  Cluster cl(4, with_standbys({{"late", {4}}, {"early", {2}}}, 1));
  // A standby that is up takes the only replica whatever the rank says.
  Segment* early = test::must(cl.node(1).create("early", 64 << 10));
  EXPECT_EQ(replica_nodes(cl.node(1), early), std::vector<uint16_t>{2}) << cl.events();
  // One that is down when the segment is placed gets the replica moved to it
  // once it is back, with its ready copy current.
  cl.kill(4);
  ASSERT_TRUE(test::eventually([&] { return !test::peer_alive(cl.node(1), 4); }));
  Segment* late = test::must(cl.node(1).create("late", 256 << 10));
  auto mem = cl.node(1).data(late);
  test::fill_pattern(mem, 9);
  const uint64_t gen = test::must(cl.node(1).commit(late));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(late, gen, kDurable, 20s))) << cl.events();
  const auto before = replica_nodes(cl.node(1), late);
  ASSERT_EQ(before.size(), 1u);
  EXPECT_NE(before[0], 4);
  cl.restart(4);
  ASSERT_TRUE(test::eventually([&] { return replica_nodes(cl.node(1), late) == std::vector<uint16_t>{4}; }))
      << cl.events();
  EXPECT_TRUE(test::has_event(cl.node(1), "(its hot standby)")) << cl.events();
  ASSERT_TRUE(test::eventually([&] {
    auto r = cl.node(4).replica_status("late");
    return r && r->standby && r->standby_generation == gen && r->standby_behind_bytes == 0;
  })) << cl.events();
  // It stays there: a move for failure domains never takes a standby's place.
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(replica_nodes(cl.node(1), late), std::vector<uint16_t>{4});
}

TEST(Standby, BadStandbyConfigsAreRefused) {
  auto refused = [](std::vector<EngineConfig::Standby> s) {
    EngineConfig c;
    c.standbys = std::move(s);
    return !Engine::start(c, {}).has_value();
  };
  EXPECT_TRUE(refused({{"", {2}}})) << "no name";
  EXPECT_TRUE(refused({{"kv", {}}})) << "no nodes";
  EXPECT_TRUE(refused({{"kv", {0}}})) << "node 0";
  EXPECT_TRUE(refused({{"kv", {65535}}})) << "the broadcast id";
  EXPECT_TRUE(refused({{"has space", {2}}}));
  EngineConfig ok;
  ok.standbys = {{"kv", {2, 3}}};
  EXPECT_TRUE(Engine::start(ok, {}).has_value());
}

}  // namespace
}  // namespace baton
