// S22 with real processes: the owner's batond is SIGSTOPped (cut off, still
// alive) while another blade takes its segment over; after SIGCONT its
// commits are refused, its application is told it is fenced, and the new
// owner's state is never overwritten. A three-blade chassis over memif
// (batonctl chassis), applications through libbaton-client.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../common/process.h"
#include "baton/baton.h"

namespace {

using namespace std::chrono_literals;

std::string run(const std::string& cmd, int* status = nullptr) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf;
  while (p != nullptr && fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  const int rc = p != nullptr ? pclose(p) : -1;
  if (status != nullptr) *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

struct Chassis {
  std::string dir = "/tmp/baton-sigstop-" + std::to_string(getpid());
  std::string ctl = baton::test::helper("BATONCTL");
  bool up = false;
  Chassis() {
    int status = 0;
    const std::string out = run(ctl + " chassis up --blades 3 --replicas 1 --dir " + dir, &status);
    up = status == 0;
    if (!up) std::fprintf(stderr, "%s", out.c_str());
  }
  ~Chassis() {
    for (int b = 1; b <= 3; ++b) ::kill(pid(b), SIGCONT);  // a stopped daemon cannot stop
    run(ctl + " chassis down --dir " + dir);
  }
  std::string socket(int blade) const { return dir + "/blade" + std::to_string(blade) + ".sock"; }
  pid_t pid(int blade) const {
    pid_t p = -1;
    std::ifstream(dir + "/blade" + std::to_string(blade) + ".pid") >> p;
    return p;
  }
  std::string status(int blade) const { return run(ctl + " status --json --socket " + socket(blade)); }
  std::string events(int blade) const { return run(ctl + " events --socket " + socket(blade)); }
  /// True once `blade`'s failure detector holds `peer` dead.
  bool sees_dead(int blade, int peer) const {
    const std::string s = status(blade);
    return s.find("\"peer\":" + std::to_string(peer) + ",\"node\":\"dead\"") != std::string::npos ||
           s.find("\"node\":\"dead\",\"peer\":" + std::to_string(peer)) != std::string::npos;
  }
};

template <typename F>
bool eventually(F cond, std::chrono::milliseconds limit = 20s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

constexpr uint64_t kSize = 1 << 20;

struct App {
  baton_t* b = nullptr;
  baton_segment_t* seg = nullptr;
  explicit App(const std::string& socket) { EXPECT_EQ(baton_connect(socket.c_str(), &b), 0) << baton_last_error(); }
  ~App() {
    if (b != nullptr) baton_stop(b);
  }
  unsigned char* mem() { return static_cast<unsigned char*>(baton_segment_data(seg)); }
  /// Fills the segment with `byte`, commits, and returns the commit's and the
  /// durable wait's results.
  std::pair<int, int> write(unsigned char byte, uint64_t* gen) {
    std::memset(mem(), byte, kSize);
    const int c = baton_commit(seg, gen);
    if (c != 0) return {c, c};
    return {0, baton_wait(seg, *gen, BATON_DURABLE, 5000)};
  }
};

TEST(Sigstop, CutOffOwnerIsFencedAndCannotOverwriteTheNewOwner) {
  Chassis ch;
  ASSERT_TRUE(ch.up);
  // Blade 1 owns the segment; its application commits durably.
  App a(ch.socket(1));
  int rc = BATON_EUNAVAIL;
  ASSERT_TRUE(eventually([&] { return (rc = baton_open(a.b, "ledger", kSize, &a.seg, nullptr, nullptr)) != BATON_EUNAVAIL; }));
  ASSERT_EQ(rc, 0) << baton_last_error();
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
  EXPECT_NE(ch.status(1).find("\"fenced\":\"yes\""), std::string::npos) << ch.status(1);

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

}  // namespace
