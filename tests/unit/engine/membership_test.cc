// Membership from Corosync, decided (control/corosync_membership.h): which
// Baton node each CPG process is, and the view that follows from the group,
// votequorum's verdict and the heartbeats. Fed by hand here; the adaptor
// against a real corosync is tests/chassis/corosync_test.sh.

#include <gtest/gtest.h>

#include <array>

#include "control/corosync_membership.h"

namespace baton {
namespace {

using Members = std::vector<uint16_t>;

// Node 1 is this one; its process is (corosync node 7, pid 100).
constexpr CpgMember kMe{7, 100};
constexpr CpgMember kTwo{7, 200};    // node 2's batond, same host
constexpr CpgMember kThree{8, 300};  // node 3's batond, another host

struct Cpg : ::testing::Test {
  CpgMembership m{1, 3};
  void group(std::vector<CpgMember> members) { m.on_members(members); }
};

TEST_F(Cpg, AloneAndWithoutQuorumUntilCorosyncSaysOtherwise) {
  EXPECT_EQ(m.view().members, Members{1});
  EXPECT_FALSE(m.view().quorate);
  m.update(std::array<uint16_t, 2>{2, 3});  // the heartbeats alone decide nothing
  EXPECT_EQ(m.view().members, Members{1});
  EXPECT_FALSE(m.view().quorate);
  EXPECT_EQ(m.view().quorum, 2u);  // rounds still need a majority of Baton's nodes
}

TEST_F(Cpg, MembersAreAnnouncedProcessesInTheGroupThatTheHeartbeatsHear) {
  m.on_connected(kMe);
  group({kMe, kTwo, kThree});
  m.on_announce(kMe, 1);
  m.on_announce(kTwo, 2);
  m.on_announce(kThree, 3);
  m.on_quorum(true);
  EXPECT_EQ(m.view().members, Members{1});  // nobody heard on the backplane yet
  EXPECT_TRUE(m.view().quorate);
  const uint64_t id = m.view().id;
  EXPECT_TRUE(m.update(std::array<uint16_t, 2>{2, 3}));
  EXPECT_EQ(m.view().members, (Members{1, 2, 3}));
  EXPECT_GT(m.view().id, id);
  EXPECT_EQ(m.group_nodes(), (Members{1, 2, 3}));

  // The backplane loses node 3 first: out at once, Corosync still lists it.
  EXPECT_TRUE(m.update(std::array<uint16_t, 1>{2}));
  EXPECT_EQ(m.view().members, (Members{1, 2}));
  // Node 2's process leaves the group (batond stopped): out, though heard.
  group({kMe, kThree});
  EXPECT_EQ(m.view().members, Members{1});
  EXPECT_EQ(m.group_nodes(), (Members{1, 3}));
  // Back with a new process: counted again once it announced itself.
  const CpgMember two_again{7, 201};
  group({kMe, two_again, kThree});
  EXPECT_EQ(m.view().members, Members{1});
  m.on_announce(two_again, 2);
  EXPECT_EQ(m.view().members, (Members{1, 2}));
}

TEST_F(Cpg, QuorumIsVotequorumsAndNeedsThisProcessInTheGroup) {
  m.on_connected(kMe);
  m.on_quorum(true);
  EXPECT_FALSE(m.view().quorate);  // connected, not yet in the group
  group({kMe});
  EXPECT_TRUE(m.view().quorate);
  EXPECT_TRUE(m.on_quorum(false));
  EXPECT_FALSE(m.view().quorate);
  m.on_quorum(true);
  // Corosync goes away: alone, no quorum, every announcement forgotten.
  group({kMe, kTwo});
  m.on_announce(kTwo, 2);
  m.update(std::array<uint16_t, 1>{2});
  EXPECT_EQ(m.view().members, (Members{1, 2}));
  EXPECT_TRUE(m.on_disconnected());
  EXPECT_EQ(m.view().members, Members{1});
  EXPECT_FALSE(m.view().quorate);
  EXPECT_FALSE(m.connected());
  EXPECT_TRUE(m.group_nodes().empty());
}

TEST_F(Cpg, AgreementIsEveryMembersReportOfTheSameMembers) {
  m.on_connected(kMe);
  group({kMe, kTwo});
  m.on_announce(kTwo, 2);
  m.on_quorum(true);
  m.update(std::array<uint16_t, 1>{2});
  ASSERT_EQ(m.view().members, (Members{1, 2}));
  EXPECT_FALSE(m.view().agreed);
  EXPECT_TRUE(m.reported(2, m.view().digest()));
  EXPECT_TRUE(m.view().agreed);
  EXPECT_FALSE(m.reported(2, m.view().digest()));  // nothing new
  EXPECT_TRUE(m.reported(2, 12345));
  EXPECT_FALSE(m.view().agreed);
}

TEST_F(Cpg, AnnouncementsFromOutsideTheGroupOrMalformedAreIgnored) {
  m.on_connected(kMe);
  group({kMe});
  EXPECT_FALSE(m.on_announce(kThree, 3));  // not a member
  EXPECT_TRUE(m.group_nodes().empty());

  const auto a = CpgMembership::announcement(513);
  EXPECT_EQ(CpgMembership::parse_announcement(a), 513);
  EXPECT_FALSE(CpgMembership::parse_announcement(std::span(a).first(7)));  // short
  auto bad = a;
  bad[0] = std::byte{'X'};
  EXPECT_FALSE(CpgMembership::parse_announcement(bad));  // not ours
  bad = a;
  bad[7] = std::byte{1};
  EXPECT_FALSE(CpgMembership::parse_announcement(bad));  // reserved bytes set
  EXPECT_FALSE(CpgMembership::parse_announcement(CpgMembership::announcement(0)));
  EXPECT_FALSE(CpgMembership::parse_announcement(CpgMembership::announcement(0xffff)));
  std::array<std::byte, 9> longer{};
  std::copy(a.begin(), a.end(), longer.begin());
  EXPECT_FALSE(CpgMembership::parse_announcement(longer));
}

}  // namespace
}  // namespace baton
