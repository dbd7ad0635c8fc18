// The runner's side of assignments (failover/runner.h), with real child
// processes: what a node does with a decision that names it.

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <time.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <memory>
#include <utility>
#include <string>
#include <thread>
#include <vector>

#include "failover/runner.h"

namespace baton::failover {
namespace {

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(ts.tv_nsec);
}

ServiceGroup sleeper() {
  ServiceGroup g;
  g.name = "app";
  g.start = "exec sleep 60";  // no segments: no batond needed
  return g;
}

// Steps the runner until `done` or 5 s.
template <class F>
bool step_until(Runner& r, F done) {
  for (int i = 0; i < 500; ++i) {
    r.step(now_ns());
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

RunState state_of(const Runner& r) {
  for (const auto& run : r.runs())
    if (run.group == "app") return run.state;
  return RunState::kStopped;
}

// A campaign (session 30) saw a restarted coordinator decide from queued,
// seconds-old reports: it failed a group over to the very node that ran it
// since, and that node killed its healthy instance to start another. A
// newer assignment for a group working here keeps the instance.
TEST(Runner, ANewAssignmentForAGroupRunningHereKeepsItsInstance) {
  std::vector<std::string> events;
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}}, {sleeper()},
           [&](std::string e) { events.push_back(std::move(e)); });
  r.assigned(Assignment{"app", 1, 100, 2, "first start"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kRunning; }));
  const pid_t pid = r.pid_of("app");
  ASSERT_GT(pid, 0);
  r.assigned(Assignment{"app", 1, 200, 3, "failed on node 2: a report from before"}, now_ns());
  for (int i = 0; i < 20; ++i) {
    r.step(now_ns());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(r.pid_of("app"), pid) << "the running instance was replaced";
  EXPECT_EQ(kill(pid, 0), 0) << "the running instance was stopped";
  ASSERT_EQ(r.runs().size(), 1u);
  EXPECT_EQ(r.runs()[0].seq, 200u);  // reported under the new number
  EXPECT_EQ(r.runs()[0].state, RunState::kRunning);
  bool said = false;
  for (const auto& e : events) said |= e.find("runs already") != std::string::npos;
  EXPECT_TRUE(said);
  // An older or repeated one changes nothing; one naming another node stops it.
  r.assigned(Assignment{"app", 1, 150, 2, ""}, now_ns());
  EXPECT_EQ(r.runs()[0].seq, 200u);
  r.assigned(Assignment{"app", 2, 300, 3, "moved"}, now_ns());
  EXPECT_TRUE(step_until(r, [&] { return kill(pid, 0) != 0 || state_of(r) != RunState::kRunning; }));
}

// A group that failed here and is restarted here (it fails over on
// performance only: Coordinator::restart_here) does start again.
TEST(Runner, ARestartWhereItFailedStartsItAgain) {
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}}, {sleeper()}, [](std::string) {});
  r.assigned(Assignment{"app", 1, 100, 2, ""}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kRunning; }));
  const pid_t first = r.pid_of("app");
  kill(first, SIGKILL);
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed; }));
  r.assigned(Assignment{"app", 1, 200, 2, "restarts here"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kRunning && r.pid_of("app") > 0; }));
  EXPECT_NE(r.pid_of("app"), first);
}

// A start command that puts the application in the background and exits
// (a daemonizing script) has ended as far as the runner can tell: the
// group fails here, and what it left in its session is killed with it,
// not left running on every node the group is tried on (a new-user trial,
// session 35: 52 strays).
TEST(Runner, WhatAnEndedApplicationLeftInItsSessionIsKilled) {
  ServiceGroup g = sleeper();
  char marker[] = "/tmp/baton-test-stray-XXXXXX";
  const int fd = mkstemp(marker);
  ASSERT_GE(fd, 0);
  close(fd);
  // The stray writes its pid where the test can find it.
  g.start = std::string("sh -c 'echo $$ > ") + marker + "; exec sleep 60' & sleep 0.2; exit 0";
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}}, {g}, [](std::string) {});
  r.assigned(Assignment{"app", 1, 100, 2, ""}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed; }));
  pid_t stray = 0;
  FILE* f = std::fopen(marker, "r");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fscanf(f, "%d", &stray), 1);
  std::fclose(f);
  std::remove(marker);
  ASSERT_GT(stray, 0);
  // Killed (and, its parent gone, reaped by init): gone within a moment.
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = kill(stray, 0) != 0;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone) << "pid " << stray << " outlived the application that started it";
  if (!gone) kill(stray, SIGKILL);
}

// A standby instance whose provision hook hangs: shown provisioning with
// how long it has been at it, and killed at the group's start timeout,
// then tried again later (a session 35 trial read "provisioning", for
// ever as far as it could tell).
TEST(Runner, AHungStandbyProvisionHookIsShownAndKilledAtTheStartTimeout) {
  ServiceGroup g = sleeper();
  g.standby = {1};
  g.standby_instances = true;
  g.provision = "exec sleep 60";
  g.start_timeout_ms = 300;
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}}, {g}, [](std::string) {});
  const uint64_t t0 = now_ns();
  ASSERT_TRUE(step_until(r, [&] { return r.standbys(now_ns()).count("app") != 0; }));
  const std::string first = r.standbys(now_ns())["app"];
  EXPECT_EQ(first.rfind("provisioning for ", 0), 0u) << first;
  EXPECT_NE(first.find(" ms"), std::string::npos) << first;
  ASSERT_TRUE(step_until(r, [&] { return r.standbys(now_ns())["app"].rfind("down: ", 0) == 0; }));
  EXPECT_GE(now_ns() - t0, 300'000'000u);
  const std::string down = r.standbys(now_ns())["app"];
  EXPECT_NE(down.find("its provision hook took longer than 300 ms"), std::string::npos) << down;
  EXPECT_NE(down.find("again in"), std::string::npos) << down;
}

// Inside batond the runner's loads call the server directly (LocalLoads,
// set by batond once its server is up): the segment's name and no
// instance for a fresh start, the server's `after` once the load's result
// was acted on, and a failed load fails the start with its reason.
TEST(Runner, LoadsGoThroughLocalLoadsWhereSet) {
  ServiceGroup g = sleeper();
  g.segments = {"kv-state"};
  auto local = std::make_shared<LocalLoads>();
  std::vector<std::pair<std::string, pid_t>> loads;
  std::atomic<int> afters{0};
  std::atomic<bool> refuse{false};
  local->set(
      [&](const std::string& name, pid_t instance, bool) -> Result<void> {
        loads.emplace_back(name, instance);
        if (refuse) return fail(Errc::kUnavailable, "no quorum here");
        return {};
      },
      [&] { ++afters; }, nullptr);
  std::vector<std::string> events;
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}, local}, {g},
           [&](std::string e) { events.push_back(std::move(e)); });
  r.assigned(Assignment{"app", 1, 100, 2, ""}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kRunning; }));
  ASSERT_EQ(loads.size(), 1u);
  EXPECT_EQ(loads[0].first, "kv-state");
  EXPECT_EQ(loads[0].second, 0);
  EXPECT_TRUE(step_until(r, [&] { return afters.load() == 1; }));
  // Moved away, then back with the loads refused: tried three times, the
  // start fails, saying why.
  r.assigned(Assignment{"app", 2, 200, 2, "moved"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) != RunState::kRunning && r.pid_of("app") <= 0; }));
  refuse = true;
  r.assigned(Assignment{"app", 1, 300, 2, "back"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed; }));
  bool said = false;
  for (const auto& e : events) said |= e.find("no quorum here") != std::string::npos;
  EXPECT_TRUE(said);
  ASSERT_EQ(loads.size(), 4u);
  EXPECT_EQ(afters.load(), 4) << "after() runs once each load inside batond ended, failed or not";
  // Taken away (batond stopping), loads go to the socket, which is not there.
  local->set(nullptr, nullptr, nullptr);
  refuse = false;
  r.assigned(Assignment{"app", 1, 400, 2, "again"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed && r.runs()[0].seq == 400; }));
  EXPECT_EQ(loads.size(), 4u);
}

// Where batond can hold the group's names (LocalLoads::hold), the
// application starts once the node is provisioned, beside its loads: the
// names are held before it starts and through a load's retries, the loads
// are made in its name (not exclusively: a container runtime may start
// it), and the holds go once the loads end, or once the run fails.
TEST(Runner, TheApplicationStartsWithItsLoadsWhileBatondHoldsItsNames) {
  ServiceGroup g = sleeper();
  g.segments = {"kv-a", "kv-b"};
  auto local = std::make_shared<LocalLoads>();
  std::mutex mu;  // the loads run on their own threads
  std::map<std::string, int> holds;
  struct Seen {
    std::string name;
    pid_t instance;
    bool exclusive;
    bool held;
  };
  std::vector<Seen> loads;
  std::atomic<int> refusals{0};
  std::atomic<bool> refuse_all{false};
  local->set(
      [&](const std::string& name, pid_t instance, bool exclusive) -> Result<void> {
        std::lock_guard lock(mu);
        loads.push_back(Seen{name, instance, exclusive, holds[name] > 0});
        if (refuse_all || (name == "kv-b" && refusals.fetch_add(1) == 0))
          return fail(Errc::kUnavailable, "has not heard from node 3 yet");
        return {};
      },
      [] {},
      [&](const std::string& name, bool on, uint64_t for_ns) {
        std::lock_guard lock(mu);
        holds[name] += on ? 1 : -1;
        if (on) EXPECT_GE(for_ns, uint64_t{15'000'000'000}) << "held for less than the start timeout";
      });
  auto held = [&] {
    std::lock_guard lock(mu);
    int n = 0;
    for (const auto& [name, count] : holds) n += count;
    return n;
  };
  std::vector<std::string> events;
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}, local}, {g},
           [&](std::string e) { events.push_back(std::move(e)); });
  r.assigned(Assignment{"app", 1, 100, 2, ""}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kRunning; }));
  const pid_t app = r.pid_of("app");
  ASSERT_GT(app, 0);
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(loads.size(), 3u) << "kv-a, kv-b refused once, kv-b again";
    for (const auto& l : loads) {
      EXPECT_EQ(l.instance, app) << l.name << " was not loaded in the application's name";
      EXPECT_FALSE(l.exclusive) << l.name;
      EXPECT_TRUE(l.held) << l.name << " was loaded while its name was not held";
    }
    EXPECT_EQ(loads[2].name, "kv-b");
  }
  EXPECT_EQ(held(), 0) << "the names are still held once the loads ended";
  bool said = false;
  for (const auto& e : events) said |= e.find("started with its loads") != std::string::npos;
  EXPECT_TRUE(said);
  // Moved away, then back with every load refused: the run fails, its
  // application is stopped and the names are let go of.
  r.assigned(Assignment{"app", 2, 200, 2, "moved"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return r.pid_of("app") <= 0; }));
  refuse_all = true;
  r.assigned(Assignment{"app", 1, 300, 2, "back"}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed; }));
  EXPECT_TRUE(step_until(r, [&] { return held() == 0; })) << "a failed run left its names held";
  EXPECT_EQ(r.pid_of("app"), -1);
  // The application ends while its names are held (its load does not
  // answer): the run fails at once, saying so, and lets go of them.
  refuse_all = false;
  auto release = std::make_shared<std::atomic<bool>>(false);  // the load's thread outlives the runner's run
  local->set(
      [release](const std::string&, pid_t, bool) -> Result<void> {
        while (!*release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return {};
      },
      [] {},
      [&](const std::string& name, bool on, uint64_t for_ns) {
        std::lock_guard lock(mu);
        holds[name] += on ? 1 : -1;
        if (on) EXPECT_GE(for_ns, uint64_t{15'000'000'000}) << "held for less than the start timeout";
      });
  r.assigned(Assignment{"app", 1, 400, 2, "again"}, now_ns());
  pid_t started = -1;
  ASSERT_TRUE(step_until(r, [&] {
    for (const auto& run : r.runs())
      if (run.seq == 400) started = r.pid_of("app");
    return started > 0;
  }));
  EXPECT_EQ(held(), 2);
  kill(started, SIGKILL);
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed && r.runs()[0].seq == 400; }));
  EXPECT_TRUE(step_until(r, [&] { return held() == 0; }));
  said = false;
  for (const auto& e : events) said |= e.find("while its segments were loaded") != std::string::npos;
  EXPECT_TRUE(said);
  *release = true;
  local->set(nullptr, nullptr, nullptr);  // waits for that load to end
}

// A run that fails while its application is still alive (it ignores
// SIGTERM, and has 5 s before SIGKILL) keeps its names held until the
// application is gone: an open it waits in must not go on, on a node the
// group is leaving.
TEST(Runner, NamesStayHeldUntilTheApplicationOfAFailedStartIsGone) {
  ServiceGroup g = sleeper();
  g.start = "trap '' TERM; exec sleep 60";
  g.segments = {"kv"};
  auto local = std::make_shared<LocalLoads>();
  std::atomic<int> holds{0};
  local->set([](const std::string&, pid_t, bool) -> Result<void> { return fail(Errc::kUnavailable, "no quorum"); },
             [] {}, [&](const std::string&, bool on, uint64_t) { holds += on ? 1 : -1; });
  Runner r(Runner::Env{1, "/nonexistent.sock", NodeCaps{}, local}, {g}, [](std::string) {});
  r.assigned(Assignment{"app", 1, 100, 2, ""}, now_ns());
  ASSERT_TRUE(step_until(r, [&] { return state_of(r) == RunState::kFailed; }));
  const uint64_t failed = now_ns();
  bool gone = false;
  while (now_ns() - failed < 8'000'000'000 && !gone) {
    r.step(now_ns());
    gone = holds.load() == 0;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone) << "the names were never let go of";
  EXPECT_GE(now_ns() - failed, uint64_t{4'000'000'000}) << "let go of while the application still ran";
  local->set(nullptr, nullptr, nullptr);
}

}  // namespace
}  // namespace baton::failover
