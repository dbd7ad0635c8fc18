// Failover decisions (failover/coordinator.h): eligibility, the choice of
// node (idle first, the spare pool for a failover, the lowest-priority work
// otherwise, better capabilities for a performance move), retries with the
// next node, dead ends (a performance move stays, a failure alerts), and
// the notes that carry reports and assignments (failover/codec.h).

#include <gtest/gtest.h>

#include "failover/codec.h"
#include "failover/coordinator.h"
#include "protocol/wire.h"

namespace baton::failover {
namespace {

constexpr uint64_t kMs = 1'000'000;

ServiceGroup group(std::string name, int32_t priority = 0) {
  ServiceGroup g;
  g.name = std::move(name);
  g.start = "true";
  g.priority = priority;
  g.start_timeout_ms = 1000;
  return g;
}

struct World {
  std::vector<ServiceGroup> groups;
  std::map<uint16_t, NodeReport> reports;
  std::vector<uint16_t> members;
  uint64_t hash = 0;

  explicit World(std::vector<ServiceGroup> g) : groups(std::move(g)), hash(groups_hash(groups)) {}
  NodeReport& node(uint16_t n, uint32_t cores = 2, uint64_t mib = 4096, bool spare = false,
                   std::vector<std::string> tags = {}) {
    NodeReport& r = reports[n];
    r.node = n;
    r.groups_hash = hash;
    r.caps = NodeCaps{cores, mib, std::move(tags), spare};
    members.push_back(n);
    std::sort(members.begin(), members.end());
    return r;
  }
  void runs(uint16_t n, const std::string& g, uint64_t seq, RunState s, std::string why = {}) {
    auto& runs = reports[n].runs;
    std::erase_if(runs, [&](const GroupRun& r) { return r.group == g; });
    runs.push_back(GroupRun{g, seq, s, std::move(why)});
  }
  void leave(uint16_t n) {
    std::erase(members, n);
    reports.erase(n);
  }
};

bool mentions(const std::vector<std::string>& events, const std::string& text) {
  return std::any_of(events.begin(), events.end(), [&](const std::string& e) { return e.find(text) != std::string::npos; });
}

TEST(Choose, EligibilityAndItsReasons) {
  ServiceGroup g = group("db", 5);
  g.min_cores = 4;
  g.min_memory_mib = 8192;
  g.tags = {"nic=fast"};
  World w({g});
  w.node(1, 2, 16384, false, {"nic=fast"});
  w.node(2, 8, 4096, false, {"nic=fast"});
  w.node(3, 8, 16384, false, {});
  w.node(4, 8, 16384, true, {"nic=fast", "ssd"});
  w.node(5, 8, 16384, false, {"nic=fast"}).groups_hash = 99;
  const Choice c = choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {}, std::nullopt, {});
  ASSERT_EQ(c.node, 4);
  const std::string why = c.to_string();
  EXPECT_NE(why.find("node 1: has 2 cores, needs 4"), std::string::npos) << why;
  EXPECT_NE(why.find("node 2: has 4096 MiB, needs 8192"), std::string::npos) << why;
  EXPECT_NE(why.find("node 3: lacks tag nic=fast"), std::string::npos) << why;
  EXPECT_NE(why.find("node 5: its service groups differ"), std::string::npos) << why;
  // Tried already: nothing left.
  EXPECT_FALSE(choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {4}, std::nullopt, {}).node);
}

TEST(Choose, IdleFirstThenTheLowestPriorityWork) {
  World w({group("gold", 10), group("silver", 5), group("bronze", 1)});
  w.node(1);
  w.node(2);
  w.node(3);
  w.runs(1, "silver", 1, RunState::kRunning);
  w.runs(2, "bronze", 1, RunState::kRunning);
  w.runs(3, "gold", 1, RunState::kFailed);  // failed work is no work: node 3 is idle
  const auto& gold = w.groups[0];
  EXPECT_EQ(choose(gold, Why::kFailure, w.members, w.reports, w.groups, w.hash, {3}, std::nullopt, {}).node, 2)
      << "without the idle node, the one running the lowest-priority work";
  EXPECT_EQ(choose(gold, Why::kFailure, w.members, w.reports, w.groups, w.hash, {}, std::nullopt, {}).node, 3);
  // Nothing lower than bronze's own priority to take.
  w.runs(3, "gold", 2, RunState::kRunning);
  const Choice c = choose(w.groups[2], Why::kFailure, w.members, w.reports, w.groups, w.hash, {2}, std::nullopt, {});
  EXPECT_FALSE(c.node);
  EXPECT_NE(c.to_string().find("node 1: runs silver (priority 5, not below 1)"), std::string::npos) << c.to_string();
}

TEST(Choose, StartsAtHomeAndFailsOverToTheSparePool) {
  ServiceGroup g = group("kv");
  g.home = {3, 2};
  World w({g});
  w.node(1, 2, 4096, true);
  w.node(2);
  w.node(3);
  w.node(4, 2, 4096, true);
  EXPECT_EQ(choose(g, Why::kStart, w.members, w.reports, w.groups, w.hash, {}, std::nullopt, {}).node, 3);
  EXPECT_EQ(choose(g, Why::kStart, w.members, w.reports, w.groups, w.hash, {3}, std::nullopt, {}).node, 2);
  g.home.clear();
  EXPECT_EQ(choose(g, Why::kStart, w.members, w.reports, w.groups, w.hash, {}, std::nullopt, {}).node, 2)
      << "a first start prefers nodes outside the pool";
  EXPECT_EQ(choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {}, std::nullopt, {}).node, 1)
      << "a failover takes a spare first";
  // A hot standby (its state is ready) before the spare pool, spare or not;
  // busy, it is passed over like any node.
  g.standby = {3};
  World ws({g});
  ws.node(1, 2, 4096, true);
  ws.node(3);
  ws.node(4, 2, 4096, true);
  EXPECT_EQ(choose(g, Why::kFailure, ws.members, ws.reports, ws.groups, ws.hash, {}, std::nullopt, {}).node, 3);
  EXPECT_EQ(choose(g, Why::kFailure, ws.members, ws.reports, ws.groups, ws.hash, {3}, std::nullopt, {}).node, 1);
}

TEST(Choose, AFailoverPrefersASpareThatHoldsTheState) {
  ServiceGroup g = group("kv");
  World w({g});
  w.node(1);
  w.node(2);
  w.node(3, 2, 4096, true);
  w.node(4, 2, 4096, true);
  w.node(5, 2, 4096, true);
  EXPECT_EQ(choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {}, 1, {}).node, 3)
      << "nothing known: the lowest spare";
  EXPECT_EQ(choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {}, 1, {}, {2, 4}).node, 4)
      << "a spare that holds a copy before one that does not";
  EXPECT_EQ(choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {4}, 1, {}, {2, 4}).node, 3)
      << "the pool still before a node outside it that holds a copy";
  EXPECT_EQ(choose(g, Why::kFailure, w.members, w.reports, w.groups, w.hash, {3, 4, 5}, 1, {}, {2, 4}).node, 2)
      << "outside the pool, the holder before the lower id";
  World busy({g, group("other", 1)});
  for (uint16_t n : {1, 2, 3, 4}) busy.node(n, 2, 4096, n >= 3);
  busy.runs(4, "other", 1, RunState::kRunning);
  EXPECT_EQ(choose(g, Why::kFailure, busy.members, busy.reports, busy.groups, busy.hash, {}, 1, {}, {4}).node, 3)
      << "an idle node before a busy one that holds a copy";
  // A hot standby before a holder; a first start and a performance move do
  // not look at holders.
  g.standby = {5};
  World ws({g});
  for (uint16_t n : {1, 2, 3, 4, 5}) ws.node(n, 2, 4096, n >= 3);
  EXPECT_EQ(choose(g, Why::kFailure, ws.members, ws.reports, ws.groups, ws.hash, {}, 1, {}, {4}).node, 5);
  EXPECT_EQ(choose(g, Why::kStart, ws.members, ws.reports, ws.groups, ws.hash, {}, std::nullopt, {}, {4}).node, 1);
}

TEST(MakeRoom, GroupsWithMinimumsShareANodeGroupsWithoutRunAlone) {
  ServiceGroup a = group("a", 1), b = group("b", 5), c = group("c", 3), alone = group("alone", 0);
  a.min_cores = 2;
  b.min_cores = 2;
  b.min_memory_mib = 2048;
  c.min_cores = 3;
  const NodeCaps four{4, 4096, {}, false};
  // Room beside a: nothing stops.
  auto stop = make_room(four, b, {&a});
  ASSERT_TRUE(stop);
  EXPECT_TRUE(stop->empty());
  // c needs 3 of 4 cores beside a and b: the lowest priority goes first,
  // then the next, until it fits.
  stop = make_room(four, c, {&b, &a});
  ASSERT_TRUE(stop);
  EXPECT_EQ(*stop, (std::vector<const ServiceGroup*>{&a, &b}));
  // A group without minimums runs alone, and nothing runs beside it.
  stop = make_room(four, alone, {&a});
  ASSERT_TRUE(stop);
  EXPECT_EQ(*stop, (std::vector<const ServiceGroup*>{&a}));
  stop = make_room(four, a, {&alone});
  ASSERT_TRUE(stop);
  EXPECT_EQ(*stop, (std::vector<const ServiceGroup*>{&alone}));
  // Too big for the node even alone.
  c.min_memory_mib = 8192;
  EXPECT_FALSE(make_room(four, c, {}));
}

TEST(Choose, AnIdleNodeFirstThenRoomBesideWorkThenLowerPriorityWorkStops) {
  ServiceGroup a = group("a", 0), b = group("b", 0), big = group("big", 10), top = group("top", 20);
  a.min_cores = b.min_cores = 2;
  big.min_cores = 4;
  top.min_cores = 2;
  World w({a, b, big, top});
  w.node(1, 4);
  w.node(2, 4);
  w.node(3, 4);
  w.runs(1, "a", 1, RunState::kRunning);
  const auto& gb = w.groups[1];
  // Node 2 and 3 are idle: b goes to one of them, not beside a.
  EXPECT_EQ(choose(gb, Why::kFailure, w.members, w.reports, w.groups, w.hash, {}, std::nullopt, {}).node, 2);
  // Without them, beside a on node 1 (two cores each, four there).
  EXPECT_EQ(choose(gb, Why::kFailure, w.members, w.reports, w.groups, w.hash, {2, 3}, std::nullopt, {}).node, 1);
  // What this pass gave a node counts: top given node 1 beside a leaves no
  // room for b, and a (b's own priority) would have to stop.
  Given given{{1, {&w.groups[3]}}};
  const Choice full = choose(gb, Why::kFailure, w.members, w.reports, w.groups, w.hash, {2, 3}, std::nullopt, given);
  EXPECT_FALSE(full.node);
  EXPECT_NE(full.to_string().find("node 1: runs a (priority 0, not below 0), and has no room beside it"),
            std::string::npos)
      << full.to_string();
  // big needs the whole node: a (priority 0) stops for it on node 1; with
  // two nodes busy, the one where less must stop.
  w.runs(2, "a", 2, RunState::kRunning);
  w.runs(2, "b", 1, RunState::kRunning);
  const auto& gbig = w.groups[2];
  EXPECT_EQ(choose(gbig, Why::kFailure, w.members, w.reports, w.groups, w.hash, {3}, std::nullopt, {}).node, 1);
}

TEST(Choose, APerformanceMoveNeedsBetterCapabilities) {
  World w({group("kv")});
  w.node(1, 4, 8192);
  w.node(2, 4, 8192);    // the same: no better
  w.node(3, 4, 16384);   // as many cores, more memory
  w.node(4, 8, 4096);    // more cores
  const auto& g = w.groups[0];
  EXPECT_EQ(choose(g, Why::kPerformance, w.members, w.reports, w.groups, w.hash, {}, 1, {}).node, 4);
  const Choice c = choose(g, Why::kPerformance, w.members, w.reports, w.groups, w.hash, {4, 3}, 1, {});
  EXPECT_FALSE(c.node);
  EXPECT_NE(c.to_string().find("node 2: no better than node 1"), std::string::npos) << c.to_string();
}

struct Coord : ::testing::Test {
  World w{{group("kv", 5)}};
  Coordinator c{1, w.groups};
  Coordinator::Out out;
  uint64_t now = 1'000 * kMs;
  void step() {
    out = {};
    c.step(now, 0, w.members, w.reports, out);
  }
};

TEST_F(Coord, StartsThenFailsOverAndRetriesTheNextNode) {
  w.node(1);
  w.node(2, 2, 4096, true);
  w.node(3, 2, 4096, true);
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 1u);
  EXPECT_EQ(out.assign[0].seq, 1u);
  EXPECT_TRUE(mentions(out.events, "group kv -> node 1 (start, assignment 1): first start")) << out.events[0];
  step();
  EXPECT_TRUE(out.assign.empty()) << "it waits for node 1 to report";
  w.runs(1, "kv", 1, RunState::kRunning);
  now += 10 * kMs;
  step();
  EXPECT_TRUE(out.assign.empty());

  // The application fails on node 1: the spare pool, lowest id first.
  w.runs(1, "kv", 1, RunState::kFailed, "the application exited with status 1");
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 2u);
  EXPECT_EQ(out.assign[0].seq, 2u);
  EXPECT_TRUE(mentions(out.events, "failed on node 1: the application exited with status 1"));
  // Node 2's provision hook fails: the next one, never node 1 again in this failover.
  w.runs(2, "kv", 2, RunState::kFailed, "the provision hook exited with status 7");
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 3u);
  // Node 3 never reports: after the start timeout, nobody is left.
  now += 1001 * kMs;
  step();
  EXPECT_TRUE(out.assign.empty());
  ASSERT_EQ(out.alerts.size(), 1u);
  EXPECT_EQ(out.alerts[0].group, "kv");
  EXPECT_NE(out.alerts[0].reason.find("node 3 did not take it up within 1000 ms"), std::string::npos)
      << out.alerts[0].reason;
  step();
  EXPECT_TRUE(out.alerts.empty()) << "a dead end alerts once";
  // Node 3 then says why (its provision hook ran out of time): the same
  // dead end in other words, not a second one.
  w.runs(3, "kv", 3, RunState::kFailed, "the provision hook took longer than 1000 ms");
  step();
  EXPECT_TRUE(out.alerts.empty()) << "one failure, one dead end";
  // A new node joins: it goes there.
  w.node(4);
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 4u);
}

TEST_F(Coord, AFailoverToAHolderSaysSo) {
  w.node(1);
  w.node(2, 2, 4096, true);
  w.node(3, 2, 4096, true);
  std::vector<std::string> asked;
  c.set_holders([&](const ServiceGroup& g) {
    asked.push_back(g.name);
    return std::set<uint16_t>{3};
  });
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 1u);
  EXPECT_TRUE(asked.empty()) << "a first start does not ask where the state is";
  w.runs(1, "kv", 1, RunState::kFailed, "the application exited with status 1");
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 3u) << "the spare that holds the state, not the lowest";
  EXPECT_EQ(asked, std::vector<std::string>{"kv"});
  EXPECT_TRUE(mentions(out.events, "group kv -> node 3 (failover, holds its state, assignment 2)")) << out.events[0];
}

TEST_F(Coord, AFirstStartWaitsAWhileForItsHome) {
  w.groups[0].home = {3};
  c = Coordinator(1, w.groups);
  w.hash = c.hash();
  w.node(1);
  w.node(2);
  step();
  EXPECT_TRUE(out.assign.empty()) << "node 3, its home, may be coming up";
  now += 500 * kMs;
  w.node(3);
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 3u);
}

TEST_F(Coord, AFirstStartWithoutItsHomeGoesElsewhereAfterTheStartTimeout) {
  w.groups[0].home = {3};
  c = Coordinator(1, w.groups);
  w.hash = c.hash();
  w.node(1);
  w.node(2);
  step();
  EXPECT_TRUE(out.assign.empty());
  now += 1001 * kMs;
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 1u);
  EXPECT_TRUE(mentions(out.events, "no home node in the view"));
}

TEST_F(Coord, ANodeThatLeavesTheViewIsReplaced) {
  w.node(1);
  w.node(2);
  step();
  w.runs(1, "kv", 1, RunState::kRunning);
  w.leave(1);
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 2u);
  EXPECT_TRUE(mentions(out.events, "node 1 left the view"));
}

TEST_F(Coord, APerformanceMoveOrStayingPut) {
  w.groups[0].slow_ms = 100;
  w.groups[0].probe = "true";
  c = Coordinator(1, w.groups);
  w.hash = c.hash();
  w.node(1, 2);
  w.node(2, 2);
  step();  // start on 1
  w.runs(1, "kv", 1, RunState::kSlow, "probe took 300 ms");
  step();
  EXPECT_TRUE(out.assign.empty());
  EXPECT_TRUE(mentions(out.events, "stays on node 1")) << (out.events.empty() ? "" : out.events[0]);
  EXPECT_TRUE(out.alerts.empty()) << "a performance dead end alerts nobody";
  step();
  EXPECT_TRUE(out.events.empty()) << "said once per slow spell";
  w.node(3, 8);
  w.reports[3].groups_hash = c.hash();
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 3u);
  EXPECT_TRUE(mentions(out.events, "performance move"));
}

TEST_F(Coord, ANewCoordinatorPicksUpFromTheReports) {
  w.node(1);
  w.node(2);
  w.runs(2, "kv", 7, RunState::kRunning);  // an earlier coordinator's assignment 7
  step();
  EXPECT_TRUE(out.assign.empty()) << "it runs: nothing to decide";
  w.runs(2, "kv", 7, RunState::kFailed, "gone");
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].seq, 8u) << "numbered above what it found";
  EXPECT_EQ(out.assign[0].node, 1u);
}

TEST_F(Coord, TheHighestPriorityIsPlacedFirst) {
  World two({group("gold", 10), group("bronze", 1)});
  Coordinator k(1, two.groups);
  two.node(1);
  Coordinator::Out o;
  k.step(now, 0, two.members, two.reports, o);
  ASSERT_EQ(o.assign.size(), 1u) << "one node, one group: gold first";
  EXPECT_EQ(o.assign[0].group, "gold");
  EXPECT_TRUE(mentions(o.events, "group bronze: first start; no eligible node"));
  EXPECT_TRUE(o.alerts.empty()) << "a start with nowhere to go is not a failure";
}

TEST_F(Coord, AHigherPriorityFailoverTakesTheNodeOfLowerPriorityWork) {
  World two({group("gold", 10), group("bronze", 1)});
  Coordinator k(1, two.groups);
  two.node(1);
  two.node(2);
  two.runs(1, "gold", 1, RunState::kRunning);
  two.runs(2, "bronze", 1, RunState::kRunning);
  Coordinator::Out o;
  k.step(now, 0, two.members, two.reports, o);
  EXPECT_TRUE(o.assign.empty());
  two.runs(1, "gold", 1, RunState::kFailed, "gone");
  o = {};
  k.step(now, 0, two.members, two.reports, o);
  ASSERT_EQ(o.assign.size(), 1u);
  EXPECT_EQ(o.assign[0].group, "gold");
  EXPECT_EQ(o.assign[0].node, 2u) << "bronze's node";
  // Node 2 stops bronze for gold: bronze fails over in turn, to node 1 (idle now).
  two.runs(2, "bronze", 1, RunState::kStopped, "node 2 taken for group gold");
  two.runs(2, "gold", 2, RunState::kStarting);
  o = {};
  k.step(now, 0, two.members, two.reports, o);
  ASSERT_EQ(o.assign.size(), 1u);
  EXPECT_EQ(o.assign[0].group, "bronze");
  EXPECT_EQ(o.assign[0].node, 1u) << "gold failed on node 1, but that was gold's failover, not bronze's";
  EXPECT_TRUE(mentions(o.events, "stopped on node 2: node 2 taken for group gold"));
}

TEST_F(Coord, ARunThatDiesAtOnceKeepsItsFailedNodesOut) {
  w.node(1);
  w.node(2);
  w.node(3);
  step();  // on 1
  w.runs(1, "kv", 1, RunState::kFailed, "x");
  step();  // on 2
  ASSERT_EQ(out.assign.at(0).node, 2u);
  w.runs(2, "kv", 2, RunState::kRunning);
  now += 10 * kMs;
  step();
  w.runs(2, "kv", 2, RunState::kFailed, "died at once");
  step();
  ASSERT_EQ(out.assign.size(), 1u);
  EXPECT_EQ(out.assign[0].node, 3u) << "node 1 failed in this failover: still out";
}

// A coordinator that starts or resumes decides on reports asked for then:
// answers to this round, from every member, or whatever it has once the
// settle time passed.
TEST(ReportRound, DecidesOnAnswersToThisRoundOrAfterTheSettleTime) {
  ReportRound round;
  const std::vector<uint16_t> members{1, 2, 3};
  const uint64_t first = round.start(1'000, 1);
  EXPECT_NE(first, 0u);
  EXPECT_FALSE(round.ready(1'000, members, 500));
  round.answered(2, first);
  EXPECT_FALSE(round.ready(1'100, members, 500));
  round.answered(3, first + 1);  // not this round's
  EXPECT_FALSE(round.ready(1'100, members, 500));
  round.answered(3, first);
  EXPECT_TRUE(round.ready(1'100, members, 500));
  // Resumed after a stall: a new round, and the old answers count for nothing.
  const uint64_t second = round.start(5'000, 1);
  EXPECT_GT(second, first);
  round.answered(2, first);
  round.answered(3, first);
  EXPECT_FALSE(round.ready(5'100, members, 500));
  EXPECT_TRUE(round.ready(5'500, members, 500)) << "an answer lost: it decides once the settle time passed";
}

TEST(Codec, ReportsAndAssignmentsRoundTripAndBadNotesAreRefused) {
  NodeReport r{3, 0xabcdef, NodeCaps{4, 8192, {"nic=fast"}, true},
               {GroupRun{"kv", 2, RunState::kSlow, "probe took 300 ms"}}};
  auto text = encode_report(r);
  ASSERT_TRUE(text) << text.error().message;
  auto back = decode_note(*text);
  ASSERT_TRUE(back) << back.error().message;
  const auto& got = std::get<NodeReport>(*back);
  EXPECT_EQ(got.node, 3u);
  EXPECT_EQ(got.groups_hash, 0xabcdefu);
  EXPECT_EQ(got.caps.tags, std::vector<std::string>{"nic=fast"});
  EXPECT_TRUE(got.caps.spare);
  ASSERT_EQ(got.runs.size(), 1u);
  EXPECT_EQ(got.runs[0].state, RunState::kSlow);
  EXPECT_EQ(got.runs[0].why, "probe took 300 ms");
  EXPECT_EQ(got.ask, 0u);
  EXPECT_EQ(got.answer, 0u);
  // A coordinator's request for reports, and an answer to one.
  r.ask = 77;
  r.answer = 1ull << 60;
  back = decode_note(*encode_report(r));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(std::get<NodeReport>(*back).ask, 77u);
  EXPECT_EQ(std::get<NodeReport>(*back).answer, 1ull << 60);
  r.ask = r.answer = 0;

  auto a = decode_note(encode_assignment(Assignment{"kv", 2, 9, 1}));
  ASSERT_TRUE(a);
  EXPECT_EQ(std::get<Assignment>(*a).seq, 9u);
  EXPECT_EQ(std::get<Assignment>(*a).reason, "");
  // The decision's reasons travel with it (cut to fit a note), so the chosen
  // node's events say why.
  a = decode_note(encode_assignment(Assignment{"kv", 2, 10, 1, "group kv -> node 2 (failover): failed on node 1"}));
  ASSERT_TRUE(a);
  EXPECT_EQ(std::get<Assignment>(*a).reason, "group kv -> node 2 (failover): failed on node 1");
  const std::string long_reason(5000, 'x'), quoted(1000, '"');
  for (const std::string& why : {long_reason, quoted}) {
    const std::string note = encode_assignment(Assignment{"kv", 2, 11, 1, why});
    EXPECT_LE(note.size(), wire::kMaxNote);
    a = decode_note(note);
    ASSERT_TRUE(a) << a.error().message;
    EXPECT_EQ(std::get<Assignment>(*a).seq, 11u);
    EXPECT_LE(std::get<Assignment>(*a).reason.size(), 640u);
  }
  EXPECT_FALSE(decode_note(R"({"t":"a","g":"kv","n":2,"q":1,"c":1,"r":7})")) << "a reason is text";

  for (const char* bad : {"", "[]", "{", R"({"t":"x"})", R"({"t":"a","g":"kv","n":0,"q":1,"c":1})",
                          R"({"t":"a","g":"kv","n":2,"q":0,"c":1})", R"({"t":"a","g":"","n":2,"q":1,"c":1})",
                          R"({"t":"r","n":2,"h":1,"c":1,"m":1,"s":false,"tg":[],"g":[["kv",1,9,""]]})",
                          R"({"t":"r","n":2,"h":1,"c":1,"m":1,"s":"no","tg":[],"g":[]})",
                          R"({"t":"r","n":70000,"h":1,"c":1,"m":1,"s":false,"tg":[],"g":[]})",
                          R"({"t":"r","n":2,"h":1,"c":1,"m":1,"s":false,"tg":[],"g":[],"a":-1})",
                          R"({"t":"r","n":2,"h":1,"c":1,"m":1,"s":false,"tg":[],"g":[],"k":"x"})"})
    EXPECT_FALSE(decode_note(bad)) << bad;
  // A report that would not fit in a note is refused when made.
  r.caps.tags.assign(40, std::string(60, 't'));
  EXPECT_FALSE(encode_report(r));
}

}  // namespace
}  // namespace baton::failover
