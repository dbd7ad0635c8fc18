// S22 with real processes: the owner's batond is SIGSTOPped (cut off, still
// alive) while another blade takes its segment over; after SIGCONT its
// commits are refused, its application is told it is fenced, and the new
// owner's state is never overwritten. A three-blade chassis over memif
// (batonctl chassis), applications through libbaton-client.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../common/chassis.h"
#include "baton/baton.h"

namespace {

using namespace std::chrono_literals;
using baton::test::App;
using baton::test::Chassis;
using baton::test::eventually;
constexpr uint64_t kSize = App::kSize;

TEST(Sigstop, CutOffOwnerIsFencedAndCannotOverwriteTheNewOwner) {
  Chassis ch(3);
  ASSERT_TRUE(ch.up) << ch.out;
  // Blade 1 owns the segment; its application commits durably.
  App a(ch.socket(1));
  ASSERT_EQ(a.open("ledger"), 0) << baton_last_error();
  uint64_t gen = 0;
  ASSERT_EQ(a.write(1, &gen), std::make_pair(0, 0)) << baton_last_error();

  // Blade 1 stops (a hung machine, a long GC pause): alive, silent.
  ASSERT_EQ(::kill(ch.pid(1), SIGSTOP), 0);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(2, 1); })) << ch.status(2);
  App b(ch.socket(2));
  uint64_t loaded = 0;
  ASSERT_EQ(baton_load(b.b, "ledger", &b.seg, &loaded), 0) << baton_last_error();
  EXPECT_EQ(loaded, gen);
  EXPECT_EQ(b.mem()[0], 1);
  ASSERT_EQ(b.write(2, &gen), std::make_pair(0, 0)) << baton_last_error();

  // Blade 1 resumes and its application carries on as if nothing happened.
  ASSERT_EQ(::kill(ch.pid(1), SIGCONT), 0);
  uint64_t stale = 0;
  auto [commit_rc, wait_rc] = a.write(3, &stale);
  EXPECT_EQ(wait_rc, BATON_EFENCED) << "commit " << commit_rc << ": " << baton_last_error();
  EXPECT_EQ(baton_commit(a.seg, &stale), BATON_EFENCED) << "a fenced owner must refuse commits";
  EXPECT_TRUE(eventually([&] { return ch.events(1).find("fenced") != std::string::npos; })) << ch.events(1);
  const auto st = ch.status_json(1);
  bool fenced = false;
  for (const auto& seg : st.value("segments", nlohmann::json::array())) fenced |= seg.value("fenced", false);
  EXPECT_TRUE(fenced) << st.dump();
  // And it says why its peers gave up on it: its polls stalled.
  ASSERT_TRUE(st.contains("node")) << st.dump();
  EXPECT_GE(st["node"].value("stalls", 0), 1) << st.dump();
  EXPECT_TRUE(st["node"]["last_stall_s_ago"].is_number()) << "how long ago, so that an old stall is not news";

  // The new owner's state is intact: it keeps committing durably, and after
  // it dies too, blade 3 loads exactly what it wrote last.
  ASSERT_EQ(b.write(4, &gen), std::make_pair(0, 0)) << baton_last_error();
  ASSERT_EQ(::kill(ch.pid(2), SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(3, 2); })) << ch.status(3);
  App c(ch.socket(3));
  ASSERT_EQ(baton_load(c.b, "ledger", &c.seg, &loaded), 0) << baton_last_error();
  EXPECT_EQ(loaded, gen);
  std::vector<unsigned char> want(kSize, 4);
  EXPECT_EQ(std::memcmp(c.mem(), want.data(), kSize), 0) << "first byte " << int(c.mem()[0]);
}

// The same with posted commits (a 4 KiB segment): the stale owner's
// application goes on posting after SIGCONT, while its blade learns it was
// superseded. Every answer it gets is success (posted before the news) or
// EFENCED, never another error, and once EFENCED, every later commit and
// wait is EFENCED too. The new owner's bytes are what a restore gets.
/// A stale owner's commits after SIGCONT, posted without waiting for
/// batond: a small segment's through the log (`cow` false), or a
/// copy-on-write segment's, pended by its library. Each refusal reaches
/// the application at its next call, as fenced, and never overwrites the
/// new owner's generation.
void stale_owners_posts_are_refused(bool cow) {
  std::string more;
  const std::string groups = "/tmp/baton-sigstop-" + std::to_string(getpid()) + ".toml";
  if (cow) {
    std::ofstream(groups) << "[snapshots]\nmode = \"copy-on-write\"\n";
    more = "--groups " + groups;
  }
  Chassis ch(3, "memif", 1, 1, more);
  if (cow) std::remove(groups.c_str());
  ASSERT_TRUE(ch.up) << ch.out;
  const uint64_t kSmall = cow ? 64 << 10 : 4096;
  App a(ch.socket(1));
  ASSERT_TRUE(eventually([&] {
    return baton_open(a.b, "ticker", kSmall, &a.seg, nullptr, nullptr) != BATON_EUNAVAIL;
  }));
  ASSERT_NE(a.seg, nullptr) << baton_last_error();
  uint64_t gen = 0;
  std::memset(a.mem(), 1, kSmall);
  ASSERT_EQ(baton_commit(a.seg, &gen), 0) << baton_last_error();
  ASSERT_EQ(baton_wait(a.seg, gen, BATON_DURABLE, 5000), 0) << baton_last_error();
  if (cow) {  // a commit after the whole first one: batond is then ready for posts
    a.mem()[0] = 1;
    ASSERT_EQ(baton_commit(a.seg, &gen), 0) << baton_last_error();
    ASSERT_EQ(baton_wait(a.seg, gen, BATON_DURABLE, 5000), 0) << baton_last_error();
    std::this_thread::sleep_for(100ms);  // its free stage catches up
  }
  const uint64_t durable_before = gen;

  ASSERT_EQ(::kill(ch.pid(1), SIGSTOP), 0);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(2, 1); })) << ch.status(2);
  App b(ch.socket(2));
  uint64_t loaded = 0;
  ASSERT_EQ(baton_load(b.b, "ticker", &b.seg, &loaded), 0) << baton_last_error();
  std::memset(b.mem(), 2, kSmall);
  uint64_t newer = 0;
  ASSERT_EQ(baton_commit(b.seg, &newer), 0) << baton_last_error();
  ASSERT_EQ(baton_wait(b.seg, newer, BATON_DURABLE, 5000), 0) << baton_last_error();

  ASSERT_EQ(::kill(ch.pid(1), SIGCONT), 0);
  if (cow) {
    // Once the stale owner's batond knows, the library's next commit is
    // still posted (batond said it was ready before it was stopped): it
    // must be refused, and the application told at its next call.
    ASSERT_TRUE(eventually([&] {
      for (const auto& seg : ch.status_json(1).value("segments", nlohmann::json::array()))
        if (seg.value("name", "") == "ticker" && seg.value("fenced", false)) return true;
      return false;
    })) << ch.status(1);
    a.mem()[1] ^= 1;
    ASSERT_EQ(baton_commit(a.seg, &gen), 0) << baton_last_error();  // posted: no answer awaited
    EXPECT_EQ(gen, durable_before + 1);
    a.mem()[2] ^= 1;
    uint64_t next = 0;
    EXPECT_EQ(baton_commit(a.seg, &next), BATON_EFENCED) << baton_last_error();
    EXPECT_NE(std::string(baton_last_error()).find("the posted commit of generation " + std::to_string(gen)),
              std::string::npos)
        << "the refusal reported is not the posted commit's: " << baton_last_error();
  }
  int rc = 0;
  const auto until = std::chrono::steady_clock::now() + 10s;
  for (unsigned i = 0; rc != BATON_EFENCED && std::chrono::steady_clock::now() < until; ++i) {
    a.mem()[i % kSmall] = static_cast<unsigned char>(i);
    rc = baton_commit(a.seg, &gen);
    ASSERT_TRUE(rc == 0 || rc == BATON_EFENCED) << rc << ": " << baton_last_error();
    if (i % 8 == 7 && rc == 0) {
      rc = baton_wait(a.seg, gen, BATON_DURABLE, 1000);
      ASSERT_TRUE(rc == BATON_EFENCED || rc == BATON_ETIMEDOUT) << rc << ": " << baton_last_error();
    }
    std::this_thread::sleep_for(200us);
  }
  ASSERT_EQ(rc, BATON_EFENCED) << "the stale owner was never told";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(baton_commit(a.seg, &gen), BATON_EFENCED) << baton_last_error();
  // A generation made durable before the stop stays so; any later one is
  // the fenced owner's, and never will be.
  const int waited = baton_wait(a.seg, gen, BATON_DURABLE, 1000);
  if (gen > durable_before) EXPECT_EQ(waited, BATON_EFENCED) << baton_last_error();
  else EXPECT_TRUE(waited == 0 || waited == BATON_EFENCED) << waited << ": " << baton_last_error();

  App c(ch.socket(3));
  uint64_t restored = 0;
  ASSERT_EQ(baton_load(c.b, "ticker", &c.seg, &restored), 0) << baton_last_error();
  EXPECT_EQ(restored, newer);
  EXPECT_EQ(std::count(c.mem(), c.mem() + kSmall, 2), static_cast<long>(kSmall)) << "the stale owner's bytes won";
  if (cow) {
    // The stale owner's library posted (batond had said it was ready
    // before it was stopped), and batond refused a posted one as fenced.
    const auto clients = ch.status_json(1).value("clients", nlohmann::json::object());
    EXPECT_GT(clients.value("posted_cow_commits", 0), 0) << ch.status(1);
    EXPECT_GT(clients.value("refused_cow_posts", 0), 0) << ch.status(1);
  }
}

TEST(Sigstop, AStaleOwnersPostedCommitsAreAllRefusedAsFenced) { stale_owners_posts_are_refused(false); }

TEST(Sigstop, AStaleOwnersPostedCopyOnWriteCommitsAreAllRefusedAsFenced) { stale_owners_posts_are_refused(true); }

}  // namespace
