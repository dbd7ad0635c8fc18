// Partitions on real Ethernet: a chassis over af_packet on veth pairs between
// network namespaces, with nftables drop rules on the veths (batonctl chassis
// fault). The minority makes no ownership or placement change and its owner
// never gets a durable acknowledgement; the majority takes over; after the
// heal the old owner is fenced and the new owner's state is what survives.
// A lossy (not cut) link loses nothing.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "../common/chassis.h"
#include "baton/baton.h"

namespace {

using namespace std::chrono_literals;
using baton::test::App;
using baton::test::Chassis;
using baton::test::eventually;
using baton::test::run;
constexpr uint64_t kSize = App::kSize;

bool namespaces_work() {
  int status = 0;
  const std::string probe = "baton-probe-" + std::to_string(getpid());
  run("ip netns add " + probe, &status);
  if (status != 0) return false;
  run("ip netns del " + probe, &status);
  int nft = 0;
  run("nft --version", &nft);
  return nft == 0;
}

TEST(Partition, MinorityMakesNoOwnershipChangeAndTheMajorityTakesOver) {
  if (!namespaces_work()) GTEST_SKIP() << "network namespaces or nftables are not available here";
  Chassis ch(3, "af_packet");
  ASSERT_TRUE(ch.up) << ch.out;
  App a(ch.socket(1));
  ASSERT_EQ(a.open("ledger"), 0) << baton_last_error();
  uint64_t gen = 0;
  ASSERT_EQ(a.write(1, &gen), std::make_pair(0, 0)) << baton_last_error();
  const std::string before = ch.status(1);

  // Blade 1 is cut off from both others.
  int status = 0;
  const std::string out = run(ch.ctl + " chassis fault --blade 1 --dir " + ch.dir, &status);
  ASSERT_EQ(status, 0) << out;
  ASSERT_TRUE(eventually([&] { return !ch.quorate(1); })) << ch.status(1);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(2, 1) && ch.sees_dead(3, 1); }));

  // The minority: its owner's commits are never durable, it moves no replica,
  // and nothing new can be created or taken over there.
  uint64_t stale = 0;
  std::memset(a.mem(), 3, kSize);
  ASSERT_EQ(baton_commit(a.seg, &stale), 0) << baton_last_error();
  EXPECT_EQ(baton_wait(a.seg, stale, BATON_DURABLE, 1000), BATON_ETIMEDOUT) << baton_last_error();
  App other(ch.socket(1));
  baton_segment_t* fresh = nullptr;
  EXPECT_EQ(baton_open(other.b, "made-in-minority", 4096, &fresh, nullptr, nullptr), BATON_EUNAVAIL);
  EXPECT_NE(std::string(baton_last_error()).find("no quorum"), std::string::npos) << baton_last_error();
  EXPECT_EQ(ch.events(1).find("re-replicating"), std::string::npos) << ch.events(1);

  // The majority takes the segment over and commits.
  App b(ch.socket(2));
  uint64_t loaded = 0;
  ASSERT_EQ(baton_load(b.b, "ledger", &b.seg, &loaded), 0) << baton_last_error();
  EXPECT_EQ(b.mem()[0], 1) << "the majority must load the last durable state";
  ASSERT_EQ(b.write(2, &gen), std::make_pair(0, 0)) << baton_last_error();

  // Heal: the old owner learns it is fenced; its stale generation is gone.
  ASSERT_EQ(run(ch.ctl + " chassis heal --dir " + ch.dir, &status), "");
  ASSERT_TRUE(eventually([&] { return ch.quorate(1); })) << ch.status(1);
  EXPECT_EQ(baton_wait(a.seg, stale, BATON_DURABLE, 10000), BATON_EFENCED) << baton_last_error();
  EXPECT_EQ(baton_commit(a.seg, &stale), BATON_EFENCED);

  ASSERT_EQ(::kill(ch.pid(2), SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(3, 2); }));
  App c(ch.socket(3));
  ASSERT_EQ(baton_load(c.b, "ledger", &c.seg, &loaded), 0) << baton_last_error();
  EXPECT_EQ(loaded, gen);
  std::vector<unsigned char> want(kSize, 2);
  EXPECT_EQ(std::memcmp(c.mem(), want.data(), kSize), 0) << "first byte " << int(c.mem()[0]);
}

// 30% of the frames on blade 1's links are dropped by nftables (numgen
// random); the af_packet PMD sends a refused frame again on its next
// transmit, so loss shows as delay and reordering. Every durable generation
// survives the owner's death byte-exact.
TEST(Partition, LossyLinksLoseNoDurableGeneration) {
  if (!namespaces_work()) GTEST_SKIP() << "network namespaces or nftables are not available here";
  Chassis ch(3, "af_packet", 2);
  ASSERT_TRUE(ch.up) << ch.out;
  int status = 0;
  const std::string out = run(ch.ctl + " chassis fault --blade 1 --loss 30 --dir " + ch.dir, &status);
  ASSERT_EQ(status, 0) << out;
  App a(ch.socket(1));
  ASSERT_EQ(a.open("lossy"), 0) << baton_last_error();
  uint64_t gen = 0;
  for (unsigned char v = 1; v <= 20; ++v) {
    for (uint64_t i = 0; i < kSize; ++i) a.mem()[i] = static_cast<unsigned char>(v + i * 7);
    ASSERT_EQ(baton_commit(a.seg, &gen), 0) << baton_last_error();
    ASSERT_EQ(baton_wait(a.seg, gen, BATON_DURABLE, 20000), 0) << "generation " << gen << ": " << baton_last_error();
  }
  std::vector<unsigned char> want(a.mem(), a.mem() + kSize);
  ASSERT_EQ(::kill(ch.pid(1), SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(2, 1); }));
  App b(ch.socket(2));
  uint64_t loaded = 0;
  ASSERT_EQ(baton_load(b.b, "lossy", &b.seg, &loaded), 0) << baton_last_error();
  EXPECT_EQ(loaded, gen);
  EXPECT_EQ(std::memcmp(b.mem(), want.data(), kSize), 0);
}

// S17 on real Ethernet: two backplanes (two veth pairs, two af_packet links
// per pair of blades). One failing is a link failure, not a node failure:
// nothing fails over and commits stay durable; both failing is.
TEST(Partition, OneBackplaneDownIsNotANodeFailure) {
  if (!namespaces_work()) GTEST_SKIP() << "network namespaces or nftables are not available here";
  Chassis ch(3, "af_packet", 1, 2);
  ASSERT_TRUE(ch.up) << ch.out;
  App a(ch.socket(1));
  ASSERT_EQ(a.open("planes"), 0) << baton_last_error();
  uint64_t gen = 0;
  ASSERT_EQ(a.write(1, &gen), std::make_pair(0, 0)) << baton_last_error();

  int status = 0;
  std::string out = run(ch.ctl + " chassis fault --blade 1 --backplane 1 --dir " + ch.dir, &status);
  ASSERT_EQ(status, 0) << out;
  ASSERT_TRUE(eventually([&] { return ch.events(2).find("node 1 still reachable") != std::string::npos; }))
      << ch.events(2);
  EXPECT_FALSE(ch.sees_dead(2, 1)) << ch.status(2);
  EXPECT_FALSE(ch.sees_dead(3, 1)) << ch.status(3);
  for (unsigned char v = 2; v <= 5; ++v) ASSERT_EQ(a.write(v, &gen), std::make_pair(0, 0)) << baton_last_error();

  out = run(ch.ctl + " chassis fault --blade 1 --backplane 2 --dir " + ch.dir, &status);
  ASSERT_EQ(status, 0) << out;
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(2, 1) && ch.sees_dead(3, 1); }));
  // Now the others take over, and get the last durable state.
  App b(ch.socket(2));
  uint64_t loaded = 0;
  ASSERT_EQ(baton_load(b.b, "planes", &b.seg, &loaded), 0) << baton_last_error();
  EXPECT_EQ(loaded, gen);
  std::vector<unsigned char> want(kSize, 5);
  EXPECT_EQ(std::memcmp(b.mem(), want.data(), kSize), 0);
}

}  // namespace
