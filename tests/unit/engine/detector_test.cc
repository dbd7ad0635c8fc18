// The failure detector as the control thread runs it (control/detector.h):
// a pure component, given the time and what the data path saw, returning
// messages. No engine, no threads, no clock: each test is a schedule.

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "control/detector.h"

namespace baton {
namespace {

constexpr uint64_t kMs = 1'000'000;

// Node 1, with two links to node 2 (two backplanes) and one to node 3.
struct Fixture {
  std::vector<std::string> events;
  Detector d{DetectorConfig{1, 5 * kMs, 50 * kMs, 3},
             {{2, "a->2"}, {2, "b->2"}, {3, "a->3"}},
             [this](std::string e) { events.push_back(std::move(e)); }};
  std::vector<LinkObservation> obs{{0, true}, {0, true}, {0, true}};
  std::vector<ControlMsg> out;

  /// Forgets the messages of the last step (views are the receiver's to delete).
  void clear() {
    for (ControlMsg& m : out) delete m.view;
    out.clear();
  }
  void step(uint64_t now, uint64_t polled) {
    clear();
    d.step(now, polled, obs, out);
  }
  ~Fixture() { clear(); }
  int count(ControlMsg::Kind k) const {
    return static_cast<int>(std::count_if(out.begin(), out.end(), [k](const ControlMsg& m) { return m.kind == k; }));
  }
  const ControlMsg* peer(uint16_t node) const {
    for (const ControlMsg& m : out)
      if (m.kind == ControlMsg::Kind::kPeer && m.node == node) return &m;
    return nullptr;
  }
  bool has_event(const std::string& s) const {
    return std::any_of(events.begin(), events.end(), [&](const std::string& e) { return e.find(s) != e.npos; });
  }
};

TEST(Detector, SendsHeartbeatsOnEveryLinkWhenDue) {
  Fixture f;
  f.step(100 * kMs, 100 * kMs);
  EXPECT_EQ(f.count(ControlMsg::Kind::kHeartbeat), 3);
  f.step(102 * kMs, 102 * kMs);
  EXPECT_EQ(f.count(ControlMsg::Kind::kHeartbeat), 0) << "not due yet";
  EXPECT_EQ(f.d.next_due_ns(), 105 * kMs);
  f.step(105 * kMs, 105 * kMs);
  EXPECT_EQ(f.count(ControlMsg::Kind::kHeartbeat), 3);
}

TEST(Detector, APeerHeardIsAliveAndTheViewGrows) {
  Fixture f;
  f.step(100 * kMs, 100 * kMs);
  EXPECT_FALSE(f.d.view().quorate) << "1 of 3 votes";
  f.obs[0].heard_ns = 101 * kMs;
  f.step(101 * kMs, 101 * kMs);
  ASSERT_NE(f.peer(2), nullptr);
  EXPECT_TRUE(f.peer(2)->alive);
  EXPECT_EQ(f.peer(2)->link, 0);
  EXPECT_EQ(f.count(ControlMsg::Kind::kView), 1);
  EXPECT_TRUE(f.d.view().quorate);
  EXPECT_EQ(f.d.view().members, (std::vector<uint16_t>{1, 2}));
  EXPECT_TRUE(f.has_event("node 2 up"));
  f.step(102 * kMs, 102 * kMs);
  EXPECT_EQ(f.peer(2), nullptr) << "only changes are sent";
}

TEST(Detector, SilenceCountsOnlyWhileTheDataPathPolls) {
  Fixture f;
  f.obs[2].heard_ns = 100 * kMs;
  f.step(100 * kMs, 100 * kMs);
  ASSERT_TRUE(f.peer(3) && f.peer(3)->alive);
  // The data path stalled at 101 ms (a long copy, not scheduled): a second
  // later node 3 is still alive, because nobody read its link meanwhile.
  f.step(1100 * kMs, 101 * kMs);
  EXPECT_EQ(f.peer(3), nullptr);
  // It polls again and hears nothing for the timeout: dead.
  f.step(1149 * kMs, 149 * kMs);
  EXPECT_EQ(f.peer(3), nullptr);
  f.step(1150 * kMs, 150 * kMs);
  ASSERT_NE(f.peer(3), nullptr);
  EXPECT_FALSE(f.peer(3)->alive);
  EXPECT_TRUE(f.has_event("node 3 down (silent for 50 ms)"));
}

TEST(Detector, APeerIsDeadOnlyWhenEveryLinkToItIs) {
  Fixture f;
  f.obs[0].heard_ns = f.obs[1].heard_ns = 100 * kMs;
  f.step(100 * kMs, 100 * kMs);
  ASSERT_TRUE(f.peer(2) && f.peer(2)->alive && f.peer(2)->link == 0);
  // Backplane a goes down; b still hears node 2: frames move to b.
  f.obs[0].up = false;
  f.obs[1].heard_ns = 120 * kMs;
  f.step(120 * kMs, 120 * kMs);
  ASSERT_NE(f.peer(2), nullptr);
  EXPECT_TRUE(f.peer(2)->alive);
  EXPECT_EQ(f.peer(2)->link, 1);
  EXPECT_TRUE(f.has_event("still reachable over another link"));
  // b falls silent too: now node 2 is dead.
  f.step(170 * kMs, 170 * kMs);
  ASSERT_NE(f.peer(2), nullptr);
  EXPECT_FALSE(f.peer(2)->alive);
}

// A view is agreed once every member has heard every other's: each tells
// its peers the new view at once (its next step, at the same time), not at
// its next heartbeat, which was up to an interval after the change.
TEST(Detector, AViewChangeIsToldOnEveryLinkAtOnce) {
  Fixture f;
  f.obs[0].heard_ns = f.obs[1].heard_ns = f.obs[2].heard_ns = 100 * kMs;
  f.step(100 * kMs, 100 * kMs);  // the first view: {1,2,3}
  f.step(100 * kMs, 100 * kMs);
  EXPECT_EQ(f.count(ControlMsg::Kind::kHeartbeat), 3) << "told at once";
  f.step(101 * kMs, 101 * kMs);
  EXPECT_EQ(f.count(ControlMsg::Kind::kHeartbeat), 0) << "not due again yet";
  // Node 3's link goes down 1 ms after the last heartbeats: a new view.
  f.obs[2].up = false;
  f.obs[0].heard_ns = f.obs[1].heard_ns = 101 * kMs;
  f.step(101 * kMs, 101 * kMs);
  ASSERT_EQ(f.count(ControlMsg::Kind::kView), 1);
  EXPECT_EQ(f.d.view().members, (std::vector<uint16_t>{1, 2}));
  EXPECT_LE(f.d.next_due_ns(), 101 * kMs) << "heartbeats are due now, 4 ms early";
  f.step(101 * kMs, 101 * kMs);
  EXPECT_EQ(f.count(ControlMsg::Kind::kHeartbeat), 3);
  for (const ControlMsg& m : f.out) {
    if (m.kind == ControlMsg::Kind::kHeartbeat) {
      EXPECT_EQ(m.view_digest, f.d.view().digest());
    }
  }
  EXPECT_EQ(f.d.next_due_ns(), 106 * kMs) << "then every interval again";
}

TEST(Detector, AgreementNeedsEveryMembersReportAndSurvivesAPeerComingBack) {
  Fixture f;
  f.obs[0].heard_ns = f.obs[2].heard_ns = 100 * kMs;
  f.step(100 * kMs, 100 * kMs);
  const uint64_t digest = f.d.view().digest();
  EXPECT_FALSE(f.d.view().agreed);
  f.clear();
  f.d.on_heartbeat(HeartbeatSeen{0, false, digest}, f.out);
  EXPECT_FALSE(f.d.view().agreed) << "node 3 has not reported";
  f.d.on_heartbeat(HeartbeatSeen{2, false, digest}, f.out);
  EXPECT_TRUE(f.d.view().agreed);
  EXPECT_EQ(f.count(ControlMsg::Kind::kView), 1);
  // Node 3 falls silent and comes back reporting the same view as before
  // (the data path passes on only changed heartbeats, so no new report):
  // its last report still counts once it is a member again.
  f.obs[0].heard_ns = 150 * kMs;
  f.step(150 * kMs, 150 * kMs);
  EXPECT_EQ(f.d.view().members.size(), 2u);
  f.obs[0].heard_ns = f.obs[2].heard_ns = 160 * kMs;
  f.step(160 * kMs, 160 * kMs);
  EXPECT_EQ(f.d.view().members.size(), 3u);
  EXPECT_TRUE(f.d.view().agreed);
}

TEST(Detector, ARestartIsAnEvent) {
  Fixture f;
  f.clear();
  f.d.on_heartbeat(HeartbeatSeen{2, true, 0}, f.out);
  EXPECT_TRUE(f.has_event("node 3 restarted"));
  f.d.on_heartbeat(HeartbeatSeen{7, true, 0}, f.out);  // no such link: ignored
  EXPECT_EQ(f.events.size(), 1u);
}

// Whom a round may ask (control/rounds.cc): a peer alive; one never heard
// while a link to it is up (it may be starting); never one heard and then
// silent, nor one behind a link that is down, nor a stranger.
TEST(Detector, ReachableIsAliveOrNotHeardYetBehindALinkThatIsUp) {
  Fixture f;
  f.step(100 * kMs, 100 * kMs);
  EXPECT_TRUE(f.d.reachable(2)) << "never heard, links up: perhaps starting";
  f.obs[2].up = false;
  f.step(101 * kMs, 101 * kMs);
  EXPECT_FALSE(f.d.reachable(3)) << "never heard, its one link down";
  f.obs[2].up = true;
  f.obs[0].heard_ns = 102 * kMs;
  f.step(102 * kMs, 102 * kMs);
  EXPECT_TRUE(f.d.reachable(2));
  f.step(200 * kMs, 200 * kMs);  // silent past the failure timeout
  EXPECT_FALSE(f.d.reachable(2)) << "heard, then silent: dead";
  EXPECT_FALSE(f.d.reachable(7)) << "no such peer";
}

}  // namespace
}  // namespace baton
