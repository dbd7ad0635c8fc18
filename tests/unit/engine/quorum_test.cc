// Membership quorum and the two majority rules of fencing (S22, issue #4):
// a minority partition makes no ownership or placement change; a commit is
// durable only on a majority of the replica set under the current epoch;
// ownership moves only after a majority of the set accepted the new epoch.
// Partitions come from the loopback driver's injection.

#include <gtest/gtest.h>

#include <chrono>

#include "../../common/cluster.h"
#include "../../common/ok.h"
#include "ops.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;
using test::eventually;
using test::fast_detector;
using test::has_event;
using test::peer_alive;

void cut(Cluster& cl, int a, int b, bool on) { cl.wire(a, b).set_partitioned(on); }

bool sees_only(Engine& e, std::vector<uint16_t> members) { return e.view().members == members; }

// A load's decision once its claim is answered (ops.h: claim_basis,
// sets_to_grant, grants_of), on the answers of simulation seed 790287 with
// one change: the new set's members did not answer. Node 5 queried when
// only S0 = {1,4,5} (owner 2, epoch 1) was recorded; node 4 then claimed
// epoch 2 and recorded S1 = {1,3,2} at nodes 1, 3 and 4. Node 5 claims
// epoch 3: nodes 1 and 5 (of S0) grant with copies, node 1's promise
// names S1, nodes 2, 3 and 4 are silent. Going by the query alone, S0's
// two grants were enough, and node 4's next generation, durable through
// {2,3}, was lost; by the promises, S1 must grant, and one of three does.
TEST(Claim, APromiseNamingANewerSetMakesThatSetGrant) {
  const SetRecord s0{1, 1, wire::pack_nodes(std::vector<uint16_t>{1, 4, 5}), 2, false, "seg1"};
  const SetRecord s1{2, 1, wire::pack_nodes(std::vector<uint16_t>{1, 3, 2}), 4, false, "seg1"};
  QueryOp q;
  for (uint16_t n : {1, 2, 3, 5}) {
    QueryAnswer a{n, true};
    if (n == 1 || n == 5) a.record = s0;
    q.answers.push_back(a);
  }
  ClaimOp c;
  c.epoch = 3;
  for (uint16_t n : {1, 2, 3, 4, 5}) c.answers.push_back(ClaimAnswer{n});
  auto grant = [&](uint16_t n, const SetRecord& held) {
    ClaimAnswer& a = c.answers[n - 1];
    a.answered = a.promised = a.granted = true;
    a.record = held;
    a.data_epoch = 1;
    a.generation = 5;
    a.total_len = 4096;
    a.set = s0.set;
  };
  grant(1, s1);
  grant(5, s0);
  EXPECT_EQ(c.promised(), 2u);

  const ClaimBasis b = claim_basis(q, c, 0);
  EXPECT_EQ(b.record.epoch, 2u) << "the claim went by the set the query saw";
  EXPECT_EQ(b.record.owner, 4);
  EXPECT_EQ(b.deleted, 0u);
  const auto sets = sets_to_grant(b, s0.set);
  ASSERT_EQ(sets.size(), 1u);
  EXPECT_EQ(sets[0], s1.set);
  Grants g = grants_of(c, sets);
  EXPECT_FALSE(g.enough);
  EXPECT_EQ(g.set, (std::vector<uint16_t>{1, 3, 2}));
  EXPECT_EQ(g.granted, 1u);
  // The query's set would have been enough: that was the bug.
  EXPECT_TRUE(grants_of(c, {s0.set}).enough);
  // Node 3 answers too, granting: two of S1 are enough.
  grant(3, s1);
  EXPECT_TRUE(grants_of(c, sets_to_grant(claim_basis(q, c, 0), s0.set)).enough);
  // A member of S1 that promised the claim of another node refuses it.
  c.answers[1].answered = true;
  c.answers[1].refused_epoch = 4;
  g = grants_of(c, sets);
  EXPECT_FALSE(g.enough);
  EXPECT_EQ(g.refusing, 1u);
}

// A delete made between the query and the claim shows in the promises: its
// tombstone puts every copy and record at or below its epoch out of the
// load's reach, unless an owner of that very epoch recorded its set (the
// delete then failed: deleted_in()).
TEST(Claim, ATombstoneInThePromisesIsWhatWasDeleted) {
  const SetRecord s0{1, 1, wire::pack_nodes(std::vector<uint16_t>{1, 2}), 3, false, "gone"};
  const SetRecord tomb{2, 1, 0, 3, true, "gone"};
  QueryOp q;
  for (uint16_t n : {1, 2, 3}) {
    QueryAnswer a{n, true};
    a.record = s0;
    q.answers.push_back(a);
  }
  ClaimOp c;
  c.epoch = 2;
  for (uint16_t n : {1, 2, 3}) {
    ClaimAnswer a{n, true};
    a.promised = true;
    a.record = n == 3 ? tomb : s0;
    c.answers.push_back(a);
  }
  ClaimBasis b = claim_basis(q, c, 0);
  EXPECT_EQ(b.deleted, 2u);
  EXPECT_EQ(b.record.epoch, 0u) << "a record of the deleted history was gone by";
  // An owner of the tombstone's epoch recorded its set: only what is below it is deleted.
  c.answers[0].record = SetRecord{2, 1, wire::pack_nodes(std::vector<uint16_t>{2}), 1, false, "gone"};
  b = claim_basis(q, c, 0);
  EXPECT_EQ(b.deleted, 1u);
  EXPECT_EQ(b.record.epoch, 2u);
  EXPECT_EQ(b.record.owner, 1);
  // What the query alone said was deleted stands.
  EXPECT_EQ(claim_basis(q, c, 5).deleted, 5u);
}

TEST(Quorum, MinorityMakesNoOwnershipOrPlacementChange) {
  EngineConfig c = fast_detector();
  c.query_timeout_ms = 300 * test::kSanitizerPatience;
  Cluster cl(3, c);  // RF 1: one replica, one spare
  auto seg = test::must(cl.node(1).create("minority", 64 * 1024));
  auto mem = cl.node(1).data(seg);
  std::memset(mem.data(), 1, mem.size());
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  const uint16_t replica = test::must(cl.node(1).status(seg)).replicas.at(0).first;
  const int spare = replica == 2 ? 3 : 2;

  // Node 1 (the owner) is cut off: alone it is a minority.
  const uint64_t cut_at = test::unix_us_now();
  cl.isolate(1, true);
  ASSERT_TRUE(eventually([&] { return sees_only(cl.node(1), {1}); }));
  EXPECT_FALSE(cl.node(1).view().quorate);
  // Its replica is unreachable, yet it re-replicates nowhere...
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(test::must(cl.node(1).status(seg)).replicas.at(0).first, replica);
  EXPECT_FALSE(has_event(cl.node(1), "re-replicating", cut_at));
  // ...and it can neither create nor take over anything.
  auto created = cl.node(1).create("made-in-minority", 4096);
  ASSERT_FALSE(created);
  EXPECT_EQ(created.error().code, Errc::kUnavailable);
  EXPECT_NE(created.error().message.find("no quorum"), std::string::npos) << created.error().message;

  // The majority side takes over from the replica.
  ASSERT_TRUE(eventually([&] { return cl.node(spare).view().quorate && !peer_alive(cl.node(spare), 1); }));
  auto taken = cl.node(spare).load("minority");
  ASSERT_TRUE(taken) << taken.error().to_string();
  EXPECT_EQ(test::must(cl.node(spare).status(taken->segment)).epoch, 2u);
  EXPECT_TRUE(has_event(cl.node(replica), "accepted owner epoch 2 from node " + std::to_string(spare)));

  // The old owner's commits are never durable again; it learns it is fenced
  // once it can hear anyone.
  std::memset(mem.data(), 7, mem.size());
  auto stale = cl.node(1).commit(seg);
  ASSERT_TRUE(stale);
  cl.isolate(1, false);
  auto waited = cl.node(1).wait_replicated(seg, *stale, kDurable, 10s);
  ASSERT_FALSE(waited);
  EXPECT_EQ(waited.error().code, Errc::kFenced);
  auto rep = cl.node(replica).read_replica("minority");
  ASSERT_TRUE(rep);
  EXPECT_EQ((*rep)[0], std::byte{1}) << "the old owner overwrote the replica";
}

TEST(Quorum, ALoadInAMinorityIsRefusedAndLeavesEpochsAlone) {
  EngineConfig c = fast_detector();
  c.query_timeout_ms = 300 * test::kSanitizerPatience;
  c.replication_factor = 2;
  Cluster cl(3, c);
  auto seg = test::must(cl.node(1).create("stay", 4096));
  auto g = test::must(cl.node(1).commit(seg));
  // Both replicas hold it (durable alone may be a majority of a set that was
  // recorded while node 3 was briefly suspected).
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 2, 10s)));
  cl.isolate(3, true);  // a replica alone
  ASSERT_TRUE(eventually([&] { return sees_only(cl.node(3), {3}); }));
  auto r = cl.node(3).load("stay");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kUnavailable);
  EXPECT_EQ(test::must(cl.node(3).replica_status("stay")).epoch, 1u)
      << "a refused load must not raise the epoch" << cl.events();
  cl.isolate(3, false);
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 3 && cl.node(1).view().agreed; }));
  auto g2 = test::must(cl.node(1).commit(seg));
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, kDurable, 10s))) << "the owner was disturbed";
}

TEST(Quorum, DurableNeedsAMajorityOfTheReplicaSet) {
  EngineConfig c = fast_detector();
  c.replication_factor = 3;
  c.expected_votes = 4;
  Cluster cl(4, c);
  auto seg = test::must(cl.node(1).create("majority", 16 * 1024));
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  EXPECT_GE(test::must(cl.node(1).status(seg)).durable, g);
  // Two of the three replicas stop hearing the owner (the owner's view loses
  // quorum too, so nothing is re-replicated meanwhile).
  cut(cl, 1, 3, true);
  cut(cl, 1, 4, true);
  auto g2 = test::must(cl.node(1).commit(seg));
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, 1, 10s)));
  auto durable = cl.node(1).wait_replicated(seg, g2, kDurable, 300ms);
  ASSERT_FALSE(durable);
  EXPECT_EQ(durable.error().code, Errc::kTimeout);
  EXPECT_LT(test::must(cl.node(1).status(seg)).durable, g2);
  cut(cl, 1, 3, false);
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, kDurable, 10s))) << "two of three hold it now";
}

// Seven nodes, so the loader's view is quorate while the segment's replica
// set is mostly out of its reach: the set's own majority decides.
TEST(Quorum, OwnershipMovesOnlyWithAMajorityOfTheReplicaSet) {
  EngineConfig c = fast_detector();
  c.query_timeout_ms = 300 * test::kSanitizerPatience;
  c.replication_factor = 3;
  Cluster cl(7, c);
  auto seg = test::must(cl.node(1).create("set", 128 * 1024));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 77);
  const std::vector<std::byte> want(mem.begin(), mem.end());
  auto g = test::must(cl.node(1).commit(seg));
  // Every replica holds it (durable needs two): the one left in reach must.
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 3, 10s)));
  std::vector<uint16_t> set;
  const auto status = cl.node(1).status(seg);
  for (auto& [n, held] : status->replicas) set.push_back(n);
  int loader = 2;
  while (std::find(set.begin(), set.end(), loader) != set.end()) ++loader;

  cl.kill(1);
  // The loader reaches only one of the three replicas.
  cut(cl, loader, set[1], true);
  cut(cl, loader, set[2], true);
  ASSERT_TRUE(eventually([&] {
    auto v = cl.node(loader).view();
    return v.quorate && v.members.size() == 4;  // 7 nodes, minus node 1 and the two cut off
  }));
  auto refused = cl.node(loader).load("set");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kUnavailable);
  EXPECT_NE(refused.error().message.find("2 must, and none refuse"), std::string::npos) << refused.error().message;

  // One more replica in reach: two of three accept, and ownership moves.
  cut(cl, loader, set[1], false);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(loader), set[1]); }));
  auto taken = cl.node(loader).load("set");
  ASSERT_TRUE(taken) << taken.error().to_string();
  EXPECT_EQ(taken->generation, g);
  auto got = cl.node(loader).data(taken->segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end()));
  // The failed claim left epoch 2 on one replica: the successful one is at
  // least there (the same claimant may claim its own epoch again).
  EXPECT_GE(test::must(cl.node(loader).status(taken->segment)).epoch, 2u) << cl.events();
  EXPECT_TRUE(has_event(cl.node(loader), "ownership taken at epoch"));
}

TEST(Quorum, TwoClaimantsOfOneEpochCannotBothWin) {
  EngineConfig c = fast_detector();
  c.query_timeout_ms = 300 * test::kSanitizerPatience;
  c.replication_factor = 3;
  Cluster cl(5, c);
  auto seg = test::must(cl.node(1).create("race", 8192));
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  std::vector<uint16_t> set;
  const auto status = cl.node(1).status(seg);
  for (auto& [n, held] : status->replicas) set.push_back(n);
  std::vector<int> others;
  for (int n = 2; n <= 5; ++n)
    if (std::find(set.begin(), set.end(), n) == set.end()) others.push_back(n);
  ASSERT_EQ(others.size(), 1u);
  cl.kill(1);
  // Two nodes load at once: a replica and the non-replica.
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(set[0]), 1) && !peer_alive(cl.node(others[0]), 1); }));
  Result<OpenResult> a = tl::unexpected(Error{}), b = tl::unexpected(Error{});
  std::thread ta([&] { a = cl.node(set[0]).load("race"); });
  std::thread tb([&] { b = cl.node(others[0]).load("race"); });
  ta.join();
  tb.join();
  // At most one of them may still own the segment once the dust settles:
  // if both got through, the first one's epoch was superseded and it is fenced.
  int owners = 0;
  for (auto* r : {&a, &b}) {
    if (!*r) continue;
    Engine& e = r == &a ? cl.node(set[0]) : cl.node(others[0]);
    auto gen = e.commit((*r)->segment);
    if (!gen) {  // superseded already, and told so
      EXPECT_EQ(gen.error().code, Errc::kFenced) << gen.error().to_string();
      continue;
    }
    if (e.wait_replicated((*r)->segment, *gen, kDurable, 5s)) ++owners;
  }
  EXPECT_LE(owners, 1);
  EXPECT_TRUE(a || b) << "neither load succeeded: " << a.error().to_string() << " / " << b.error().to_string();
}

// S1: two nodes create the same new name at the same instant. Neither sees
// the other in its query, but a name is created only once its replica set
// is recorded at a quorum of nodes, and each node records one owner per
// epoch: exactly one create succeeds, the other says the name exists.
TEST(Quorum, ConcurrentCreatesOfOneNameHaveOneOwner) {
  EngineConfig c = fast_detector();
  c.query_timeout_ms = 300 * test::kSanitizerPatience;
  c.replication_factor = 2;
  Cluster cl(5, c);
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 5 && cl.node(5).view().members.size() == 5; }));
  for (int round = 0; round < 5; ++round) {
    const std::string name = "twin-" + std::to_string(round);
    Result<Segment*> a = tl::unexpected(Error{}), b = tl::unexpected(Error{});
    std::thread ta([&] { a = cl.node(1).create(name, 4096); });
    std::thread tb([&] { b = cl.node(5).create(name, 4096); });
    ta.join();
    tb.join();
    ASSERT_EQ(int(a.has_value()) + int(b.has_value()), 1)
        << (a ? std::string("ok") : a.error().to_string()) << " / " << (b ? std::string("ok") : b.error().to_string());
    const int winner = a ? 1 : 5;
    const auto& lost = a ? b : a;
    EXPECT_EQ(lost.error().code, Errc::kExists) << lost.error().to_string();
    Segment* seg = a ? *a : *b;
    auto g = cl.node(winner).commit(seg);
    ASSERT_TRUE(g);
    auto w = cl.node(winner).wait_replicated(seg, *g, kDurable, 5s);
    EXPECT_TRUE(w) << w.error().to_string();
  }
}

}  // namespace
}  // namespace baton
