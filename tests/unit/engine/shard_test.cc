// Per-core shards (issue #11, S8/S9): an engine of several workers, each a
// whole data path over its own queue pair to every peer, owning the
// segments whose id falls to it. Real engines and worker threads on
// loopback links; one loopback pair per shard and node pair stands for a
// queue pair of a port.

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../../common/cluster.h"
#include "../../common/ok.h"
#include "baton/engine.h"
#include "baton/loopback.h"

namespace baton::test {
namespace {

EngineConfig two_shards() {
  EngineConfig c = fast_detector();
  c.replication_factor = 2;
  c.workers = {-1, -1};  // two shards, floating: the tests share two cores
  return c;
}

/// Names until each of `shards` shards owns at least `per_shard` of them.
std::vector<std::string> names_on_every_shard(Engine& e, size_t per_shard) {
  std::vector<std::string> out;
  std::vector<size_t> count(e.shards());
  for (int i = 0; i < 10'000 && std::any_of(count.begin(), count.end(), [&](size_t c) { return c < per_shard; });
       ++i) {
    std::string name = "shard-seg-" + std::to_string(i);
    if (count[e.shard_of(name)] >= per_shard) continue;
    ++count[e.shard_of(name)];
    out.push_back(name);
  }
  return out;
}

TEST(Shards, EverySegmentReplicatesOnItsShardsOwnLinks) {
  Cluster cl(3, two_shards());
  Engine& e1 = cl.node(1);
  ASSERT_EQ(e1.shards(), 2u);
  const auto names = names_on_every_shard(e1, 3);
  ASSERT_EQ(names.size(), 6u) << "names hash to every shard";
  std::vector<Segment*> segs;
  for (size_t i = 0; i < names.size(); ++i) {
    Segment* s = must(e1.create(names[i], 64 * 1024));
    fill_pattern(e1.data(s), 100 + static_cast<uint32_t>(i));
    segs.push_back(s);
  }
  for (Segment* s : segs) {
    const uint64_t g = must(e1.commit(s));
    ASSERT_TRUE(ok(e1.wait_replicated(s, g, kDurable, std::chrono::seconds(10)))) << cl.events();
  }
  // Every replica is byte-exact, and held in the same shard on its node.
  for (size_t i = 0; i < names.size(); ++i) {
    const auto status = must(e1.status(segs[i]));
    ASSERT_EQ(status.replicas.size(), 2u);
    for (const auto& [node, held] : status.replicas) {
      EXPECT_EQ(held, 1u);
      Engine& r = cl.node(node);
      EXPECT_EQ(r.shard_of(names[i]), e1.shard_of(names[i])) << "the shard of a name is the same on every node";
      const auto copy = must(r.read_replica(names[i]));
      const auto mine = e1.data(segs[i]);
      ASSERT_TRUE(std::equal(copy.begin(), copy.end(), mine.begin(), mine.end())) << names[i] << " on node " << node;
    }
  }
  // Both shards' queue pairs carried data: each shard moved its own.
  const auto links = e1.link_status();
  ASSERT_EQ(links.size(), 4u) << "two peers, two shards";
  // (Each carried three segments of four 16 KiB chunks, heartbeats aside.)
  for (const auto& l : links) EXPECT_GE(l.counters.tx_frames, 12u) << l.name;
  // The replicas list every shard's copies.
  size_t held_on_2 = must(cl.node(2).replicas()).size() + must(cl.node(3).replicas()).size();
  EXPECT_EQ(held_on_2, 2 * names.size());
}

TEST(Shards, ATakeoverAfterAKillRestoresEveryShardsSegmentsByteExact) {
  Cluster cl(3, two_shards());
  Engine& e1 = cl.node(1);
  const auto names = names_on_every_shard(e1, 2);
  std::vector<std::vector<std::byte>> committed;
  for (size_t i = 0; i < names.size(); ++i) {
    Segment* s = must(e1.create(names[i], 96 * 1024 + 123));
    for (uint32_t round = 0; round < 3; ++round) {
      fill_pattern(e1.data(s), 1000 * static_cast<uint32_t>(i) + round);
      const uint64_t g = must(e1.commit(s));
      ASSERT_TRUE(ok(e1.wait_replicated(s, g, kDurable, std::chrono::seconds(10)))) << cl.events();
    }
    const auto d = e1.data(s);
    committed.emplace_back(d.begin(), d.end());
    fill_pattern(e1.data(s), 999);  // written after the last commit: never seen again
  }
  cl.kill(1);
  Engine& e2 = cl.node(2);
  ASSERT_TRUE(eventually([&] { return !peer_alive(e2, 1); }));
  for (size_t i = 0; i < names.size(); ++i) {
    // Each shard's own detector must see node 1 gone before its load can
    // take over: the load waits for its shard's quorum.
    auto loaded = e2.load(names[i]);
    ASSERT_TRUE(ok(loaded)) << names[i] << cl.events();
    EXPECT_EQ(loaded->outcome, OpenOutcome::kRestored);
    EXPECT_EQ(loaded->generation, 3u);
    const auto d = e2.data(loaded->segment);
    ASSERT_TRUE(std::equal(d.begin(), d.end(), committed[i].begin(), committed[i].end())) << names[i];
    // And it goes on replicating from its new owner, in its shard.
    const uint64_t g = must(e2.commit(loaded->segment));
    EXPECT_TRUE(ok(e2.wait_replicated(loaded->segment, g, 1, std::chrono::seconds(10)))) << cl.events();
  }
  // Each shard saw the death through its own queue pairs.
  EXPECT_TRUE(has_event(e2, "shard 1: ")) << cl.events();
}

TEST(Shards, TwoShardsCommitAtOnceFromTwoThreads) {
  Cluster cl(2, [] {
    EngineConfig c = two_shards();
    c.replication_factor = 1;
    return c;
  }());
  Engine& e1 = cl.node(1);
  const auto names = names_on_every_shard(e1, 1);
  ASSERT_EQ(names.size(), 2u);
  ASSERT_NE(e1.shard_of(names[0]), e1.shard_of(names[1]));
  std::vector<Segment*> segs;
  for (const auto& n : names) segs.push_back(must(e1.create(n, 256 * 1024)));
  std::vector<std::thread> threads;
  std::vector<int> failures(2);
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (uint32_t i = 0; i < 50; ++i) {
        fill_pattern(e1.data(segs[t]), i * 2 + static_cast<uint32_t>(t));
        auto g = e1.commit(segs[t]);
        if (!g || !e1.wait_replicated(segs[t], *g, kDurable, std::chrono::seconds(10))) ++failures[t];
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, (std::vector<int>{0, 0})) << cl.events();
  for (int t = 0; t < 2; ++t) {
    const auto copy = must(cl.node(2).read_replica(names[t]));
    const auto mine = e1.data(segs[t]);
    EXPECT_TRUE(std::equal(copy.begin(), copy.end(), mine.begin(), mine.end())) << names[t];
    EXPECT_EQ(must(e1.status(segs[t])).generation, 50u);
  }
}

TEST(Shards, EachShardsMemoryFollowsItsWorkersNumaNode) {
  EngineConfig c;
  c.topology = "synthetic:package:2 numa:1 core:4 pu:1";
  c.workers = {1, 6};  // package 0 (NUMA node 0), package 1 (NUMA node 1)
  std::vector<std::vector<std::unique_ptr<Link>>> links(2);
  auto e = Engine::start_sharded(c, std::move(links));
  ASSERT_TRUE(ok(e));
  EXPECT_EQ((*e)->place(0).numa_node, 0);
  EXPECT_EQ((*e)->place(0).package, 0);
  EXPECT_EQ((*e)->place(1).numa_node, 1);
  EXPECT_EQ((*e)->place(1).package, 1);
  EXPECT_EQ((*e)->place().numa_node, 0) << "the node's place is its first shard's";
  // A configured numa_node binds every shard.
  e->reset();
  c.numa_node = 1;
  e = Engine::start_sharded(c, std::vector<std::vector<std::unique_ptr<Link>>>(2));
  ASSERT_TRUE(ok(e));
  EXPECT_EQ((*e)->place(0).numa_node, 1);
  EXPECT_EQ((*e)->place(1).numa_node, 1);
}

TEST(Shards, StartRefusesShardsThatDoNotFit) {
  EngineConfig c;
  c.workers = {-1, -1};
  // Several workers through the one-shard entry point.
  auto one = Engine::start(c, {});
  ASSERT_FALSE(one);
  EXPECT_EQ(one.error().code, Errc::kInvalidArgument);
  EXPECT_NE(one.error().message.find("start_sharded"), std::string::npos) << one.error().message;
  // Links for one shard, two workers.
  auto fewer = Engine::start_sharded(c, std::vector<std::vector<std::unique_ptr<Link>>>(1));
  ASSERT_FALSE(fewer);
  EXPECT_EQ(fewer.error().code, Errc::kInvalidArgument);
  // Shard 1 reaches node 3, shard 0 does not.
  {
    std::vector<std::vector<std::unique_ptr<Link>>> links(2);
    auto p = loopback::make_pair(1, 2);
    auto q = loopback::make_pair(1, 3);
    links[0].push_back(std::move(p.a));
    links[1].push_back(std::move(q.a));
    auto e = Engine::start_sharded(c, std::move(links));
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, Errc::kInvalidArgument);
    EXPECT_NE(e.error().message.find("shard 1"), std::string::npos) << e.error().message;
  }
  // A worker CPU that does not exist.
  c.workers = {0, 100000};
  auto bad_cpu = Engine::start_sharded(c, std::vector<std::vector<std::unique_ptr<Link>>>(2));
  ASSERT_FALSE(bad_cpu);
  EXPECT_EQ(bad_cpu.error().code, Errc::kInvalidArgument);
  // Corosync membership is one CPG member per node.
  c.workers = {-1, -1};
  c.membership = MembershipKind::kCorosync;
  auto coro = Engine::start_sharded(c, std::vector<std::vector<std::unique_ptr<Link>>>(2));
  ASSERT_FALSE(coro);
  EXPECT_EQ(coro.error().code, Errc::kInvalidArgument);
  // Too many.
  c.membership = MembershipKind::kBackplane;
  c.workers.assign(65, -1);
  auto many = Engine::start_sharded(c, std::vector<std::vector<std::unique_ptr<Link>>>(65));
  ASSERT_FALSE(many);
  EXPECT_EQ(many.error().code, Errc::kInvalidArgument);
}

TEST(Shards, AHandleIsFoundInWhicheverShardHoldsIt) {
  Cluster cl(2, two_shards());
  Engine& e1 = cl.node(1);
  const auto names = names_on_every_shard(e1, 1);
  for (const auto& n : names) {
    Segment* s = must(e1.create(n, 4096));
    EXPECT_EQ(e1.size(s), 4096u);
    EXPECT_TRUE(ok(e1.commit(s)));
    EXPECT_TRUE(ok(e1.close(s)));
    // Closed: no shard knows it any more.
    EXPECT_EQ(e1.size(s), 0u);
    auto again = e1.commit(s);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, Errc::kInvalidArgument);
  }
  int not_a_segment = 0;
  auto bogus = e1.status(reinterpret_cast<Segment*>(&not_a_segment));
  ASSERT_FALSE(bogus);
  EXPECT_EQ(bogus.error().code, Errc::kInvalidArgument);
}

}  // namespace
}  // namespace baton::test
