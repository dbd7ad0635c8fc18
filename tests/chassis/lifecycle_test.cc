// S11's clean exit on a real chassis (batond processes joined by memif):
// an application deletes its segment with baton_delete, an operator with
// `batonctl delete` (fencing the blade that kept it), and the next start
// anywhere is a fresh one.

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "../common/chassis.h"
#include "baton/baton.h"

namespace {

using baton::test::App;
using baton::test::Chassis;
using baton::test::eventually;
using baton::test::run;

// Whether blade `b`'s status lists `name` (owned or held).
bool listed_on(const Chassis& ch, int b, const std::string& name) {
  for (const auto& s : ch.status_json(b).value("segments", nlohmann::json::array()))
    if (s.value("name", "") == name) return true;
  return false;
}

// Whether any blade's status still lists `name`.
bool listed(const Chassis& ch, const std::string& name) {
  for (int b = 1; b <= ch.blades; ++b)
    if (listed_on(ch, b, name)) return true;
  return false;
}

// A blade keeps a segment whose application left, for its restart; once
// another blade has taken the name over, that copy is of a history the
// cluster moved past. With no application holding it, batond closes it
// (its memory goes back) rather than keep it until the name is opened
// there again, which may never come.
TEST(Lifecycle, ACopyTakenOverElsewhereIsDroppedOnceNoApplicationHoldsIt) {
  Chassis ch(3);
  ASSERT_TRUE(ch.up) << ch.out;
  uint64_t gen = 0;
  {
    App a(ch.socket(1));
    ASSERT_EQ(a.open("ledger"), 0) << baton_last_error();
    ASSERT_EQ(a.write(7, &gen), std::make_pair(0, 0)) << baton_last_error();
  }  // the application leaves: blade 1 keeps the segment
  ASSERT_TRUE(listed_on(ch, 1, "ledger")) << ch.status(1);
  int status = 0;
  const std::string out = run(ch.ctl + " load ledger --socket " + ch.socket(2), &status);
  ASSERT_EQ(status, 0) << out << ch.events(2);
  EXPECT_TRUE(eventually([&] { return !listed_on(ch, 1, "ledger"); })) << ch.status(1) << ch.events(1);
  EXPECT_GE(ch.status_json(1)["clients"].value("dropped_fenced", 0), 1) << ch.status(1);
  // The state is where it went.
  App b(ch.socket(2));
  int restored = -1;
  uint64_t got = 0;
  ASSERT_EQ(baton_open(b.b, "ledger", App::kSize, &b.seg, &restored, &got), 0) << baton_last_error();
  EXPECT_EQ(restored, 1);
  EXPECT_EQ(got, gen);
  EXPECT_EQ(b.mem()[0], 7);
}

// Periodic commits (S5) through the client library: only what the
// application wrote makes a generation (an open that only reads makes
// none), and once another blade has taken the segment over, the library
// stops committing it (one warning, not one per period) and the
// application's own commit says it is fenced. An open that asks for
// another size than the one committed is refused, naming both.
TEST(Lifecycle, PeriodicCommitsTakeOnlyWritesAndStopOnceFenced) {
  const std::string groups = "/tmp/baton-test-periodic-" + std::to_string(getpid()) + ".toml";
  std::ofstream(groups) << "[snapshots]\nmode = \"copy-on-write\"\ncommit_every_ms = 5\n";
  struct Removed {
    std::string path;
    ~Removed() { std::remove(path.c_str()); }
  } removed{groups};  // also when the chassis throws
  Chassis ch(3, "memif", 2, 1, "--groups " + groups);
  ASSERT_TRUE(ch.up) << ch.out;
  const auto generation = [&](int blade) -> uint64_t {
    for (const auto& seg : ch.status_json(blade).value("segments", nlohmann::json::array()))
      if (seg.value("name", "") == "ticks") return seg.value("generation", uint64_t{0});
    return 0;
  };
  App a(ch.socket(1));
  ASSERT_EQ(a.open("ticks"), 0) << baton_last_error();
  usleep(300'000);  // 60 periods, nothing written
  EXPECT_EQ(generation(1), 0u) << "a period with nothing written made a generation";
  a.mem()[100] = 7;
  ASSERT_TRUE(eventually([&] { return generation(1) >= 1; })) << ch.status(1);
  usleep(300'000);
  const uint64_t after_write = generation(1);
  usleep(300'000);
  EXPECT_EQ(generation(1), after_write) << "periods with nothing written since made generations";
  // Blade 2 takes it over; the application on blade 1 goes on writing.
  int status = 0;
  const std::string out = run(ch.ctl + " load ticks --socket " + ch.socket(2), &status);
  ASSERT_EQ(status, 0) << out << ch.events(2);
  char log[] = "/tmp/baton-test-periodic-log-XXXXXX";
  const int log_fd = mkstemp(log);
  ASSERT_GE(log_fd, 0);
  const int saved = dup(2);
  dup2(log_fd, 2);  // the library's warnings, counted below
  for (int i = 0; i < 60; ++i) {
    a.mem()[100 + 4096 * (i % 200)] = static_cast<unsigned char>(i);
    usleep(5'000);
  }
  uint64_t g = 0;
  const int rc = baton_commit(a.seg, &g);
  const std::string why = baton_last_error();
  dup2(saved, 2);
  close(saved);
  close(log_fd);
  std::ifstream in(log);
  const std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(log);
  EXPECT_EQ(rc, BATON_EFENCED) << why;
  EXPECT_NE(why.find("fenced"), std::string::npos) << why;
  size_t periodic = 0;
  for (size_t at = said.find("periodic commit"); at != std::string::npos; at = said.find("periodic commit", at + 1))
    ++periodic;
  EXPECT_EQ(periodic, 1u) << said;
  EXPECT_NE(said.find("periodic commits stop"), std::string::npos) << said;
  // Blade 2 holds it, free: an open of another size is refused there.
  App b(ch.socket(2));
  baton_segment_t* s = nullptr;
  EXPECT_EQ(baton_open(b.b, "ticks", 4096, &s, nullptr, nullptr), BATON_EINVAL);
  EXPECT_NE(std::string(baton_last_error()).find("committed with 1048576 bytes, not the 4096"), std::string::npos)
      << baton_last_error();
  int restored = -1;
  ASSERT_EQ(baton_open(b.b, "ticks", App::kSize, &s, &restored, nullptr), 0) << baton_last_error();
  EXPECT_EQ(restored, 1);
  EXPECT_EQ(static_cast<unsigned char*>(baton_segment_data(s))[100], 7);
}

TEST(Lifecycle, DeleteEverywhereThenStartFresh) {
  Chassis ch(4, "memif", 2);
  ASSERT_TRUE(ch.up) << ch.out;
  {
    App a(ch.socket(1));
    ASSERT_EQ(a.open("cart"), 0) << baton_last_error();
    uint64_t gen = 0;
    for (int i = 1; i <= 3; ++i) ASSERT_EQ(a.write(static_cast<unsigned char>(i), &gen), std::make_pair(0, 0));
    EXPECT_EQ(baton_delete(a.b, "cart"), BATON_EBUSY) << "held: unregister first";
    ASSERT_EQ(baton_unregister(a.seg), 0);
    a.seg = nullptr;
    ASSERT_EQ(baton_delete(a.b, "cart"), 0) << baton_last_error();
  }
  EXPECT_FALSE(listed(ch, "cart"));
  {
    App b(ch.socket(3));  // the application starts again elsewhere: fresh
    int restored = -1;
    uint64_t gen = 99;
    ASSERT_EQ(baton_open(b.b, "cart", App::kSize, &b.seg, &restored, &gen), 0) << baton_last_error();
    EXPECT_EQ(restored, 0);
    EXPECT_TRUE(std::all_of(b.mem(), b.mem() + App::kSize, [](unsigned char c) { return c == 0; }));
    ASSERT_EQ(b.write(7, &gen), std::make_pair(0, 0)) << baton_last_error();
    EXPECT_EQ(gen, 1u);
  }  // crashes: blade 3 keeps the segment for its restart
  // An operator deletes it from another blade: blade 3's kept copy is
  // fenced there (its application would get BATON_EFENCED), not restored.
  int status = 0;
  const std::string out = run(ch.ctl + " delete cart --socket " + ch.socket(2), &status);
  ASSERT_EQ(status, 0) << out << ch.events(2);
  EXPECT_TRUE(eventually([&] {
    for (const auto& s : ch.status_json(3).value("segments", nlohmann::json::array()))
      if (s.value("name", "") == "cart" && !s.value("fenced", false)) return false;
    return true;
  })) << ch.status(3);
  run(ch.ctl + " delete cart --socket " + ch.socket(2), &status);
  EXPECT_NE(status, 0) << "deleted already";
  App c(ch.socket(4));
  int restored = -1;
  ASSERT_EQ(baton_open(c.b, "cart", App::kSize, &c.seg, &restored, nullptr), 0) << baton_last_error();
  EXPECT_EQ(restored, 0);
}

}  // namespace
