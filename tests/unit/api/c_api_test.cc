// C API input validation: every public function refuses bad input with a
// clear error and keeps working afterwards. Engines here have no links.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "baton/baton.h"
#include "baton/baton.hpp"

namespace {

class CApi : public ::testing::Test {
 protected:
  void SetUp() override {
    baton_config_t c;
    baton_config_init(&c);
    c.node_id = 7;
    ASSERT_EQ(baton_start(&c, nullptr, 0, &b), 0) << baton_last_error();
  }
  void TearDown() override { baton_stop(b); }
  baton_t* b = nullptr;
};

TEST_F(CApi, StartRejectsBadConfigAndLinks) {
  baton_t* out = reinterpret_cast<baton_t*>(0x1);
  baton_config_t c;
  baton_config_init(&c);
  EXPECT_EQ(baton_start(nullptr, nullptr, 0, &out), BATON_EINVAL);
  EXPECT_EQ(baton_start(&c, nullptr, 0, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_start(&c, nullptr, 1, &out), BATON_EINVAL);
  c.node_id = 0;
  EXPECT_EQ(baton_start(&c, nullptr, 0, &out), BATON_EINVAL);
  EXPECT_EQ(out, nullptr);
  EXPECT_NE(std::string(baton_last_error()).find("node_id"), std::string::npos) << baton_last_error();
  baton_config_init(&c);
  for (const char* bad : {"", "ethdev:x", "0=ethdev:x", "70000=ethdev:x", "2=carrier-pigeon:x", "x=ethdev:y",
                          "2ethdev:x"}) {
    const char* links[] = {bad};
    EXPECT_EQ(baton_start(&c, links, 1, &out), BATON_EINVAL) << bad;
  }
  const char* null_link[] = {nullptr};
  EXPECT_EQ(baton_start(&c, null_link, 1, &out), BATON_EINVAL);
  // Issue #9: retain was unbounded (two slots plus `retain` per replica store).
  baton_config_init(&c);
  c.retain = 1u << 30;
  EXPECT_EQ(baton_start(&c, nullptr, 0, &out), BATON_EINVAL);
  EXPECT_NE(std::string(baton_last_error()).find("retain"), std::string::npos) << baton_last_error();
}

TEST_F(CApi, NamesAreValidated) {
  baton_segment_t* s = nullptr;
  EXPECT_EQ(baton_register(b, nullptr, 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "", 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, std::string(64, 'a').c_str(), 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "with space", 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "ctl\x01", 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "\xc3\xa9t\xc3\xa9", 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_open(b, "", 64, &s, nullptr, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_load(b, nullptr, &s, nullptr), BATON_EINVAL);
  EXPECT_EQ(s, nullptr);
  EXPECT_EQ(baton_register(b, std::string(63, 'a').c_str(), 64, &s), 0) << baton_last_error();
  baton_segment_t* const held = s;
  EXPECT_NE(baton_open(b, std::string(63, 'a').c_str(), 64, &s, nullptr, nullptr), 0) << "open here already";
  EXPECT_NE(baton_register(b, "", 64, &s), 0);
  EXPECT_EQ(s, held) << "a failed call leaves the caller's handle alone";
  EXPECT_EQ(baton_unregister(s), 0);
}

TEST_F(CApi, SizesAreValidated) {
  baton_segment_t* s = nullptr;
  EXPECT_EQ(baton_register(b, "sz", 0, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "sz", (1ull << 30) + 1, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "sz", ~0ull, &s), BATON_EINVAL);
  EXPECT_EQ(baton_open(b, "sz", 0, &s, nullptr, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "sz", 1, &s), 0);
  EXPECT_EQ(baton_segment_size(s), 1u);
  EXPECT_EQ(baton_unregister(s), 0);
}

TEST_F(CApi, HandlesAreValidated) {
  baton_segment_t* s = nullptr;
  auto* bogus_b = reinterpret_cast<baton_t*>(0x1000);
  auto* bogus_s = reinterpret_cast<baton_segment_t*>(0x2000);
  EXPECT_EQ(baton_register(nullptr, "x", 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(bogus_b, "x", 64, &s), BATON_EINVAL);
  EXPECT_EQ(baton_register(b, "x", 64, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_open(bogus_b, "x", 64, &s, nullptr, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_open(b, "x", 64, nullptr, nullptr, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_load(bogus_b, "x", &s, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_load(b, "x", nullptr, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_commit(nullptr, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_commit(bogus_s, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_wait(bogus_s, 1, 1, 10), BATON_EINVAL);
  EXPECT_EQ(baton_unregister(nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_unregister(bogus_s), BATON_EINVAL);
  EXPECT_EQ(baton_segment_data(bogus_s), nullptr);
  EXPECT_EQ(baton_segment_size(nullptr), 0u);
  baton_stop(nullptr);   // ignored
  baton_stop(bogus_b);   // ignored
  // A handle is dead once unregistered.
  ASSERT_EQ(baton_register(b, "once", 64, &s), 0);
  ASSERT_EQ(baton_unregister(s), 0);
  EXPECT_EQ(baton_commit(s, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_unregister(s), BATON_EINVAL);
}

TEST_F(CApi, LocalLifecycleAndErrors) {
  baton_segment_t* s = nullptr;
  int restored = -1;
  uint64_t gen = 99;
  ASSERT_EQ(baton_open(b, "app", 4096, &s, &restored, &gen), 0) << baton_last_error();
  EXPECT_EQ(restored, 0);
  EXPECT_EQ(gen, 0u);
  std::memset(baton_segment_data(s), 0xAB, 4096);
  EXPECT_EQ(baton_commit(s, &gen), 0);
  EXPECT_EQ(gen, 1u);
  EXPECT_EQ(baton_wait(s, 1, 0, 10), 0);            // k = 0: nothing to wait for
  EXPECT_EQ(baton_wait(s, 1, 1, 10), BATON_EINVAL);  // no peers, so no replica
  EXPECT_EQ(baton_wait(s, 5, 0, 10), BATON_EINVAL);  // generation not committed
  baton_segment_t* dup = nullptr;
  EXPECT_EQ(baton_register(b, "app", 4096, &dup), BATON_EEXIST);  // one holder per name
  EXPECT_EQ(baton_load(b, "nowhere", &dup, nullptr), BATON_ENOENT);
  EXPECT_EQ(baton_delete(b, "app"), BATON_EBUSY);  // unregister first
  EXPECT_EQ(baton_unregister(s), 0);
  // A clean exit: delete, and the next open starts fresh.
  EXPECT_EQ(baton_delete(nullptr, "app"), BATON_EINVAL);
  EXPECT_EQ(baton_delete(b, nullptr), BATON_EINVAL);
  EXPECT_EQ(baton_delete(b, "bad name"), BATON_EINVAL);
  // A node without peers keeps no copy once the segment is unregistered:
  // there is nothing left to delete.
  EXPECT_EQ(baton_delete(b, "app"), BATON_ENOENT) << baton_last_error();
  ASSERT_EQ(baton_open(b, "app", 4096, &s, &restored, &gen), 0) << baton_last_error();
  EXPECT_EQ(restored, 0);
  EXPECT_EQ(static_cast<unsigned char*>(baton_segment_data(s))[0], 0);
  EXPECT_EQ(baton_unregister(s), 0);
  // Metrics go to a batond: an embedded engine refuses them, clearly.
  EXPECT_EQ(baton_report(b, "latency_ms", 1.5), BATON_EINVAL);
  EXPECT_NE(std::string(baton_last_error()).find("batond"), std::string::npos) << baton_last_error();
  EXPECT_EQ(baton_report(nullptr, "latency_ms", 1.5), BATON_EINVAL);
  EXPECT_EQ(baton_report(b, nullptr, 1.5), BATON_EINVAL);
}

/// The application's store. ThreadSanitizer records a store before the
/// instruction runs, so it cannot see that the fault the store takes
/// orders it after the worker's copy of the page (the handler waits for
/// it): as in cow_test.cc, the application's stores are not instrumented.
__attribute__((no_sanitize("thread"))) void app_store(unsigned char* p, unsigned char v) { *p = v; }

// copy_on_write = 1: commits write-protect what was written and return;
// the application writes on at once (its first write to each page after a
// commit faults into the engine's handler) and commits again.
TEST(CApiCopyOnWrite, CommitsAndWritesOn) {
  baton_config_t c;
  baton_config_init(&c);
  EXPECT_EQ(c.copy_on_write, 0u) << "the stage copy is the default";
  c.node_id = 8;
  c.copy_on_write = 1;
  baton_t* b = nullptr;
  ASSERT_EQ(baton_start(&c, nullptr, 0, &b), 0) << baton_last_error();
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "cow", 1 << 20, &s, nullptr, nullptr), 0) << baton_last_error();
  auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
  uint64_t gen = 0;
  for (int g = 1; g <= 5; ++g) {
    for (size_t i = 0; i < (1 << 20); i += 4096 * g) app_store(mem + i, static_cast<unsigned char>(g));
    ASSERT_EQ(baton_commit(s, &gen), 0) << baton_last_error();
    EXPECT_EQ(gen, static_cast<uint64_t>(g));
    EXPECT_EQ(mem[0], g) << "the memory is the application's, as it wrote it";
  }
  EXPECT_EQ(baton_unregister(s), 0);
  baton_stop(b);
}

// BATON_COW_PROTECT_AHEAD and BATON_COW_QUIESCENT: the same commits, and
// the process gains the thread that protects written pages again between
// them; any other value past them is refused.
void protector_started_by(uint32_t copy_on_write) {
  baton_config_t c;
  baton_config_init(&c);
  c.node_id = 9;
  c.copy_on_write = copy_on_write;
  baton_t* b = nullptr;
  ASSERT_EQ(baton_start(&c, nullptr, 0, &b), 0) << baton_last_error();
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "cow-ahead", 1 << 20, &s, nullptr, nullptr), 0) << baton_last_error();
  auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
  uint64_t gen = 0;
  for (int g = 1; g <= 5; ++g) {
    for (size_t i = 0; i < (1 << 20); i += 4096) app_store(mem + i, static_cast<unsigned char>(g));
    ASSERT_EQ(baton_commit(s, &gen), 0) << baton_last_error();
    EXPECT_EQ(gen, static_cast<uint64_t>(g));
    EXPECT_EQ(mem[4096 * 100], g);
  }
  auto protector_runs = [] {
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
      std::ifstream comm(task.path() / "comm");
      std::string name;
      if (std::getline(comm, name) && name == "baton-protect") return true;
    }
    return false;
  };
  // The thread names itself once it runs, which on a loaded machine may
  // be a moment after the commits.
  bool runs = protector_runs();
  for (int i = 0; i < 500 && !runs; ++i) {
    usleep(10'000);
    runs = protector_runs();
  }
  EXPECT_TRUE(runs) << "no baton-protect thread: the switch did not reach the engine";
  EXPECT_EQ(baton_unregister(s), 0);
  baton_stop(b);
}

TEST(CApiCopyOnWrite, ProtectAheadAndQuiescentCommitsStartTheProtectorAndOtherValuesAreRefused) {
  baton_config_t c;
  baton_config_init(&c);
  c.node_id = 9;
  c.copy_on_write = BATON_COW_QUIESCENT + 1;
  baton_t* b = nullptr;
  EXPECT_EQ(baton_start(&c, nullptr, 0, &b), BATON_EINVAL);
  EXPECT_NE(std::string(baton_last_error()).find("copy_on_write"), std::string::npos) << baton_last_error();
  EXPECT_EQ(b, nullptr);
  protector_started_by(BATON_COW_PROTECT_AHEAD);
  protector_started_by(BATON_COW_QUIESCENT);
}

TEST(CApiStrings, StrerrorCoversEveryCode) {
  for (int e = BATON_OK; e >= BATON_EPERM; --e) EXPECT_STRNE(baton_strerror(e), "unknown error") << e;
  EXPECT_STREQ(baton_strerror(1), "unknown error");
  EXPECT_STREQ(baton_strerror(-100), "unknown error");
  EXPECT_STREQ(baton_strerror(BATON_ENOENT), "not found");
}

TEST(CppWrapper, RaiiAndResults) {
  baton_config_t c;
  baton_config_init(&c);
  auto node = baton::c::Node::start(c, {});
  ASSERT_TRUE(node) << node.error().to_string();
  auto seg = node->create("wrapped", 128);
  ASSERT_TRUE(seg);
  seg->data()[0] = std::byte{1};
  EXPECT_EQ(*seg->commit(), 1u);
  auto dup = node->create("wrapped", 128);
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, baton::Errc::kExists);
  auto bad = baton::c::Node::start(c, {"nonsense"});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, baton::Errc::kInvalidArgument);
}

}  // namespace

// A standby instance waits on the pipe batond hands it (BATON_PROMOTE_FD):
// one byte promotes it; the pipe closing retires it. One test, in order:
// a promotion is once per process.
TEST(CApiStandby, AwaitPromotion) {
  unsetenv("BATON_PROMOTE_FD");
  EXPECT_EQ(baton_await_promotion(0), 0) << "not a standby instance: at once";

  setenv("BATON_PROMOTE_FD", "x3", 1);
  EXPECT_EQ(baton_await_promotion(0), BATON_EINVAL);
  EXPECT_NE(std::string(baton_last_error()).find("BATON_PROMOTE_FD=x3"), std::string::npos) << baton_last_error();
  setenv("BATON_PROMOTE_FD", "1000000", 1);
  EXPECT_EQ(baton_await_promotion(0), BATON_EINVAL) << "not an open descriptor";

  int retired[2];
  ASSERT_EQ(pipe(retired), 0);
  setenv("BATON_PROMOTE_FD", std::to_string(retired[0]).c_str(), 1);
  EXPECT_EQ(baton_await_promotion(30), BATON_ETIMEDOUT) << "nothing said yet";
  close(retired[1]);
  EXPECT_EQ(baton_await_promotion(-1), BATON_EUNAVAIL) << "batond closed its end: retired";
  close(retired[0]);

  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  setenv("BATON_PROMOTE_FD", std::to_string(fds[0]).c_str(), 1);
  std::thread promoter([w = fds[1]] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_EQ(write(w, "P", 1), 1);
  });
  EXPECT_EQ(baton_await_promotion(-1), 0);
  promoter.join();
  EXPECT_EQ(getenv("BATON_PROMOTE_FD"), nullptr) << "what it starts does not wait";
  EXPECT_EQ(fcntl(fds[0], F_GETFD), -1) << "its end of the pipe is closed";
  EXPECT_EQ(baton_await_promotion(0), 0) << "promoted once: at once after";
  close(fds[1]);
}
