// The failure detector (S17): heartbeats over the same links as the data,
// a peer declared dead when silent, events for every change, and loads that
// do not wait for the dead.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "../../common/cluster.h"
#include "../../common/ok.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;
using test::eventually;
using test::fast_detector;
using test::has_event;
using test::peer_alive;

TEST(FailureDetector, PeersComeUpGoDownWhenCutOffAndComeBack) {
  Cluster cl(3, fast_detector());
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(2), 1) && peer_alive(cl.node(3), 1); }));
  EXPECT_TRUE(has_event(cl.node(2), "node 1 up"));

  cl.isolate(1, true);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(2), 1) && !peer_alive(cl.node(3), 1); }));
  EXPECT_TRUE(peer_alive(cl.node(2), 3)) << "a partition of node 1 must not take node 3 with it";
  EXPECT_TRUE(has_event(cl.node(2), "node 1 down (silent for"));
  auto p = cl.node(2).peers();
  for (const auto& s : p) {
    if (s.node == 1) {
      EXPECT_GE(s.silent_us, 50'000u);
    }
  }

  // The views: the majority side agrees on {2,3} and is quorate; node 1
  // alone is not.
  ASSERT_TRUE(eventually([&] {
    auto v = cl.node(2).view();
    return v.members == std::vector<uint16_t>{2, 3} && v.agreed;
  }));
  EXPECT_TRUE(cl.node(2).view().quorate);
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members == std::vector<uint16_t>{1}; }));
  EXPECT_FALSE(cl.node(1).view().quorate);
  EXPECT_TRUE(has_event(cl.node(1), "NO QUORUM"));

  const size_t before = cl.node(2).events().size();
  cl.isolate(1, false);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(2), 1); }));
  const auto events = cl.node(2).events();
  ASSERT_GT(events.size(), before);
  bool up_again = false;
  for (size_t i = before; i < events.size(); ++i) up_again |= events[i].text.find("node 1 up") != std::string::npos;
  EXPECT_TRUE(up_again);
  EXPECT_LE(events.front().unix_us, events.back().unix_us);
  ASSERT_TRUE(eventually([&] {
    auto v = cl.node(1).view();
    return v.members == std::vector<uint16_t>{1, 2, 3} && v.quorate && v.agreed;
  }));
}

TEST(FailureDetector, LoadDoesNotWaitForADeadPeer) {
  EngineConfig c = fast_detector();
  c.replication_factor = 2;
  Cluster cl(3, c);
  auto seg = test::must(cl.node(1).create("quick", 4096));
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 2, 10s)));
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(3), 1); }));
  cl.isolate(1, true);  // node 1 is cut off: it will never answer the query
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(3), 1); }));
  const auto t0 = std::chrono::steady_clock::now();
  auto loaded = cl.node(3).load("quick");
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  // Waiting for node 1 would have taken the whole 20 s query timeout.
  EXPECT_LT(took, 10s);
}

// S12: a replica's node dies; the owner re-selects a live peer and copies the
// latest generation there, so the replication factor holds again.
TEST(ReReplication, RestoresTheReplicationFactorByteExact) {
  EngineConfig c = fast_detector();
  c.replication_factor = 2;
  Cluster cl(4, c);
  auto seg = test::must(cl.node(1).create("rerep", 256 * 1024));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 31);
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 2, 10s)));
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 2) && peer_alive(cl.node(1), 3) && peer_alive(cl.node(1), 4); }));
  const auto before = test::must(cl.node(1).status(seg)).replicas;
  const uint16_t lost = before[0].first, kept = before[1].first;
  uint16_t spare = 2;
  while (spare == lost || spare == kept) ++spare;

  cl.kill(lost);  // silence: the failure detector declares it dead
  ASSERT_TRUE(eventually([&] {
    auto now = test::must(cl.node(1).status(seg)).replicas;
    return (now[0].first == spare || now[1].first == spare) && now[0].first != lost && now[1].first != lost;
  })) << "no replacement for node " << lost;
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 2, 10s))) << "replication factor not restored";
  auto copy = cl.node(spare).read_replica("rerep");
  ASSERT_TRUE(copy);
  EXPECT_TRUE(std::equal(mem.begin(), mem.end(), copy->begin()));
  EXPECT_TRUE(has_event(cl.node(1), "re-replicating to node " + std::to_string(spare)));
  // New commits go to the new set, and are durable on it: the new set was
  // recorded, although the old one has no majority left.
  mem[0] = std::byte{0x5A};
  auto g2 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, 2, 10s)));
  auto durable = cl.node(1).wait_replicated(seg, g2, kDurable, 10s);
  EXPECT_TRUE(durable) << durable.error().to_string();
  EXPECT_TRUE(has_event(cl.node(1), "replica set"));
}

// One replica (RF 1): its loss leaves no majority of the old set at all;
// durability resumes on the replacement once its set is recorded.
TEST(ReReplication, SingleReplicaLossResumesDurability) {
  EngineConfig c = fast_detector();
  Cluster cl(3, c);
  auto seg = test::must(cl.node(1).create("single", 64 * 1024));
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  const uint16_t lost = test::must(cl.node(1).status(seg)).replicas.at(0).first;
  const uint16_t spare = lost == 2 ? 3 : 2;
  cl.kill(lost);
  ASSERT_TRUE(eventually([&] { return test::must(cl.node(1).status(seg)).replicas.at(0).first == spare; }));
  auto g2 = test::must(cl.node(1).commit(seg));
  auto durable = cl.node(1).wait_replicated(seg, g2, kDurable, 10s);
  ASSERT_TRUE(durable) << durable.error().to_string();
  EXPECT_GE(test::must(cl.node(1).status(seg)).durable, g2);
}

// With no live peer to take a dead replica's slot, the slot is emptied and
// the smaller set recorded: durability goes on with a majority of what is
// left (a blade lost from a three-blade chassis: the one left holds it),
// as the user guide says. It used to keep the dead node in the set, and no
// generation became durable until the node came back (found by an
// independent campaign written from the docs, session 48).
TEST(ReReplication, WithNoPeerLeftTheSetShrinksAndDurabilityGoesOn) {
  EngineConfig c = fast_detector();
  c.replication_factor = 2;
  Cluster cl(3, c);  // both peers are replicas: nobody to move to
  // Both peers up first: a create that sees only one leaves a slot empty and
  // fills it later, which is re-replication too, just not the kind under test.
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 2) && peer_alive(cl.node(1), 3); }));
  auto seg = test::must(cl.node(1).create("stuck", 4096));
  auto mem = cl.node(1).data(seg);
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  const uint64_t killed_at = test::unix_us_now();
  cl.kill(2);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(1), 2); }));
  ASSERT_TRUE(eventually([&] {
    for (const auto& [node, held] : test::must(cl.node(1).status(seg)).replicas)
      if (node == 2) return false;
    return true;
  })) << "the dead replica's slot was not emptied";
  EXPECT_FALSE(has_event(cl.node(1), "re-replicating to node", killed_at)) << "nobody to move to: " << cl.events();
  test::fill_pattern(mem, 9);
  auto g2 = test::must(cl.node(1).commit(seg));
  auto durable = cl.node(1).wait_replicated(seg, g2, kDurable, 10s);
  ASSERT_TRUE(durable) << durable.error().to_string();
  auto copy = cl.node(3).read_replica("stuck");
  ASSERT_TRUE(copy);
  EXPECT_TRUE(std::equal(mem.begin(), mem.end(), copy->begin())) << "the one left holds it";
  EXPECT_TRUE(has_event(cl.node(1), "replica set"));
}

TEST(FailureDetector, RejectsATimeoutShorterThanTwoHeartbeats) {
  EngineConfig c;
  c.heartbeat_interval_us = 1000;
  c.failure_timeout_us = 1500;
  auto e = Engine::start(c, {});
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, Errc::kInvalidArgument);
}

// S17: a link failure is not a node failure. Two links join every pair;
// cutting one leaves every node alive and replication flowing over the
// other; cutting both makes the node dead.
TEST(FailureDetector, ANodeIsDeadOnlyWhenEveryLinkToItIsSilent) {
  EngineConfig c = fast_detector();
  c.replication_factor = 2;
  Cluster cl(3, c, 16384, {}, 2);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 2) && peer_alive(cl.node(1), 3); }));
  auto seg = test::must(cl.node(1).create("two-links", 256 * 1024));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 3);
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));

  const uint64_t cut_at = test::unix_us_now();
  cl.wire(1, 2).set_partitioned(true);  // the first backplane fails between 1 and 2
  ASSERT_TRUE(eventually([&] { return has_event(cl.node(1), "node 2 still reachable over another link"); }));
  EXPECT_TRUE(peer_alive(cl.node(1), 2));
  EXPECT_FALSE(has_event(cl.node(1), "node 2 down (silent for", cut_at)) << cl.events();
  test::fill_pattern(mem, 4);
  auto g2 = test::must(cl.node(1).commit(seg));
  auto w = cl.node(1).wait_replicated(seg, g2, kDurable, 10s);
  ASSERT_TRUE(w) << w.error().to_string();
  auto copy = cl.node(2).read_replica("two-links");
  ASSERT_TRUE(copy);
  EXPECT_TRUE(std::equal(mem.begin(), mem.end(), copy->begin())) << "replication did not move to the other link";

  cl.second_wire(1, 2).set_partitioned(true);  // and the second: node 2 is gone for node 1
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(1), 2); }));
  bool down = false;
  for (const auto& e : cl.node(1).events()) down |= e.text.rfind("node 2 down (silent", 0) == 0;
  EXPECT_TRUE(down);
  cl.wire(1, 2).set_partitioned(false);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 2); }));
}

// S12, a node joining: a segment created while too few peers were up has an
// empty replica slot, which the first peer to come up fills.
TEST(ReReplication, AJoiningNodeFillsAnEmptySlot) {
  EngineConfig c = fast_detector();
  c.replication_factor = 2;
  Cluster cl(3, c);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 3); }));
  cl.isolate(3, true);
  ASSERT_TRUE(eventually([&] {
    return !peer_alive(cl.node(1), 3) && cl.node(1).view().members.size() == 2 && cl.node(1).view().agreed;
  }));
  auto seg = test::must(cl.node(1).create("joined", 32 * 1024));
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s)));
  auto before = test::must(cl.node(1).status(seg)).replicas;
  ASSERT_EQ(before.size(), 2u);
  EXPECT_TRUE(before[0].first == 0 || before[1].first == 0) << "no empty slot: " << before[0].first << "," << before[1].first;
  cl.isolate(3, false);
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 2, 10s))) << "node 3 never got a copy";
  auto durable = cl.node(1).wait_replicated(seg, g, kDurable, 10s);
  EXPECT_TRUE(durable) << durable.error().to_string();
  EXPECT_TRUE(has_event(cl.node(1), "replica missing; re-replicating to node 3"));
}

// S12 placement: replicas go to another power domain first (tags from the
// heartbeats), whatever the rendezvous rank says; a replacement too.
TEST(Placement, ReplicasAvoidTheOwnersPowerDomain) {
  EngineConfig c = fast_detector();
  Cluster cl(4, c, 16384, [](int node, EngineConfig& cfg) { cfg.power_domain = node <= 2 ? 1 : 2; });
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 4 && cl.node(1).view().agreed; }));
  std::vector<Segment*> segs;
  for (int i = 0; i < 8; ++i) {
    auto seg = cl.node(1).create("placed-" + std::to_string(i), 4096);
    ASSERT_TRUE(seg) << seg.error().to_string();
    const uint16_t replica = test::must(cl.node(1).status(*seg)).replicas.at(0).first;
    EXPECT_TRUE(replica == 3 || replica == 4) << "segment " << i << " placed on node " << replica
                                              << ", in the owner's power domain";
    segs.push_back(*seg);
  }
  // Node 3 dies: its segments move to node 4 (power domain 2), not node 2.
  cl.kill(3);
  for (Segment* seg : segs)
    ASSERT_TRUE(eventually([&] { return test::must(cl.node(1).status(seg)).replicas.at(0).first == 4; }))
        << "replica left on node " << test::must(cl.node(1).status(seg)).replicas.at(0).first;
}

// A failover's spare pool (Engine::prefer_replicas_on): among peers that
// spread the replicas as well, the preferred ones first, whatever the
// rendezvous rank says; failure domains still come before it.
TEST(Placement, PreferredPeersTakeReplicasAmongEquals) {
  EngineConfig c = fast_detector();
  c.replication_factor = 1;
  Cluster cl(4, c, 16384, [](int node, EngineConfig& cfg) { cfg.power_domain = node <= 2 ? 1 : 2; });
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 4 && cl.node(1).view().agreed; }));
  std::map<uint16_t, int> before;
  for (int i = 0; i < 16; ++i) {
    auto seg = test::must(cl.node(1).create("ranked-" + std::to_string(i), 4096));
    ++before[test::must(cl.node(1).status(seg)).replicas.at(0).first];
  }
  ASSERT_GT(before[3], 0) << "the rank alone puts some on node 3 (else this proves nothing)";
  ASSERT_GT(before[4], 0) << "the rank alone puts some on node 4 (else this proves nothing)";
  cl.node(1).prefer_replicas_on({4});
  for (int i = 0; i < 16; ++i) {
    auto seg = test::must(cl.node(1).create("preferred-" + std::to_string(i), 4096));
    EXPECT_EQ(test::must(cl.node(1).status(seg)).replicas.at(0).first, 4) << "segment " << i;
  }
  // A preferred peer in the owner's power domain does not beat the other domain.
  cl.node(1).prefer_replicas_on({2});
  for (int i = 0; i < 8; ++i) {
    auto seg = test::must(cl.node(1).create("domain-" + std::to_string(i), 4096));
    const uint16_t replica = test::must(cl.node(1).status(seg)).replicas.at(0).first;
    EXPECT_TRUE(replica == 3 || replica == 4) << "segment " << i << " placed on node " << replica;
  }
}

// #11 item 4, S12 on a CC-NUMA server: four nodes of one blade on a
// two-socket machine (described: 2 packages x 2 NUMA nodes x 4 cores), one
// per NUMA node. Replicas go to the other package first, then to another
// NUMA node; tags travel in the heartbeats.
TEST(Placement, OnATwoSocketServerReplicasGoToTheOtherPackageFirst) {
  EngineConfig c = fast_detector();
  c.topology = "synthetic:package:2 numa:2 core:4 pu:1";
  c.blade = 7;  // one server
  // node 1: CPU 0 (package 0, node 0); 2: CPU 4 (0, 1); 3: CPU 8 (1, 2); 4: CPU 12 (1, 3)
  Cluster cl(4, c, 16384, [](int node, EngineConfig& cfg) { cfg.worker_cpu = (node - 1) * 4; });
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 4 && cl.node(1).view().agreed; }));
  for (int n = 1; n <= 4; ++n) {
    EXPECT_EQ(cl.node(n).place().package, (n - 1) / 2) << n;
    EXPECT_EQ(cl.node(n).place().numa_node, n - 1) << n;
  }
  // The tags reach the peers.
  ASSERT_TRUE(eventually([&] {
    for (const auto& p : cl.node(1).peers())
      if (p.package != (p.node - 1) / 2 || p.numa_node != p.node - 1) return false;
    return true;
  }));
  std::vector<Segment*> segs;
  for (int i = 0; i < 8; ++i) {
    auto seg = cl.node(1).create("socket-" + std::to_string(i), 4096);
    ASSERT_TRUE(seg) << seg.error().to_string();
    const uint16_t replica = test::must(cl.node(1).status(*seg)).replicas.at(0).first;
    EXPECT_TRUE(replica == 3 || replica == 4) << "segment " << i << " placed on node " << replica
                                              << ", in the owner's package";
    segs.push_back(*seg);
  }
  // Node 3 dies: its segments go to node 4 (the other package), not node 2.
  cl.kill(3);
  for (Segment* seg : segs)
    ASSERT_TRUE(eventually([&] { return test::must(cl.node(1).status(seg)).replicas.at(0).first == 4; }))
        << "replica left on node " << test::must(cl.node(1).status(seg)).replicas.at(0).first;
  // (Node 4 dying too would leave 2 of 4 votes: no quorum, no moves.)
}

// S12, a node joining: a segment placed in its owner's power domain (the
// other domain was down) moves its replica there once a node of it joins.
TEST(Placement, AJoiningNodeInAnotherPowerDomainTakesTheReplica) {
  EngineConfig c = fast_detector();
  Cluster cl(5, c, 16384, [](int node, EngineConfig& cfg) { cfg.power_domain = node <= 3 ? 1 : 2; });
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 5; }));
  cl.isolate(4, true);
  cl.isolate(5, true);
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 3 && cl.node(1).view().agreed; }));
  auto seg = test::must(cl.node(1).create("moving", 64 * 1024));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 8);
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  const uint16_t first = test::must(cl.node(1).status(seg)).replicas.at(0).first;
  EXPECT_TRUE(first == 2 || first == 3) << first;

  cl.isolate(4, false);
  cl.isolate(5, false);
  ASSERT_TRUE(eventually([&] {
    const uint16_t now = test::must(cl.node(1).status(seg)).replicas.at(0).first;
    return now == 4 || now == 5;
  })) << "the replica stayed on node " << test::must(cl.node(1).status(seg)).replicas.at(0).first;
  const uint16_t moved = test::must(cl.node(1).status(seg)).replicas.at(0).first;
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s)));
  test::fill_pattern(mem, 9);
  auto g2 = test::must(cl.node(1).commit(seg));
  auto durable = cl.node(1).wait_replicated(seg, g2, kDurable, 10s);
  ASSERT_TRUE(durable) << durable.error().to_string();
  auto copy = cl.node(moved).read_replica("moving");
  ASSERT_TRUE(copy);
  EXPECT_TRUE(std::equal(mem.begin(), mem.end(), copy->begin()));
  EXPECT_TRUE(has_event(cl.node(1), "(more failure domains)"));
  // And it stays there: no further moves.
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(test::must(cl.node(1).status(seg)).replicas.at(0).first, moved) << cl.events();
}

}  // namespace
}  // namespace baton
