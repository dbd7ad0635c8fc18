// batond's own loads inside its server (ipc::Server::load_here, the
// failover manager's path): bad input is refused with a clear error, as
// the same request over the socket would be.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "baton/baton.h"
#include "baton/engine.h"
#include "common/log.h"
#include "ipc/server.h"

namespace baton::ipc {
namespace {

struct ServerHere {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Server> server;
  std::string socket;
  std::atomic<bool> stop{false};
  std::thread serving;
  ServerHere() {
    set_log_level(LogLevel::kError);
    EngineConfig c;
    c.node_id = 1;
    c.max_segment_size = 1 << 20;
    auto started = Engine::start(c, {});
    EXPECT_TRUE(started) << started.error().to_string();
    if (!started) return;
    engine = std::move(*started);
    ServerConfig sc;
    sc.socket_path = socket = "/tmp/baton-test-" + std::to_string(getpid()) + "-load-here.sock";
    auto served = Server::start(*engine, sc);
    EXPECT_TRUE(served) << served.error().to_string();
    if (served) server = std::move(*served);
  }
  /// Serves clients on a thread of its own until destroyed.
  void serve() {
    serving = std::thread([this] { server->serve(stop); });
  }
  ~ServerHere() {
    stop = true;
    if (serving.joinable()) serving.join();
  }
};

/// What an application's open of `name` got: its status, the generation
/// and whether the memory is `want`.
struct Opened {
  int rc = -1;
  uint64_t generation = 0;
  bool same = false;
  std::string error;
};

Opened open_as_application(const std::string& socket, const std::string& name, const std::vector<unsigned char>& want) {
  Opened o;
  baton_t* b = nullptr;
  if ((o.rc = baton_connect(socket.c_str(), &b)) != 0) return o;
  baton_segment_t* s = nullptr;
  o.rc = baton_open(b, name.c_str(), want.size(), &s, nullptr, &o.generation);
  if (o.rc == 0) o.same = std::memcmp(baton_segment_data(s), want.data(), want.size()) == 0;
  else o.error = baton_last_error();
  baton_stop(b);
  return o;
}

TEST(LoadHere, RefusesBadInputSayingWhy) {
  ServerHere h;
  ASSERT_NE(h.server, nullptr);
  auto too_long = h.server->load_here(std::string(kMaxName + 1, 'a'), 0);
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().code, Errc::kInvalidArgument);
  EXPECT_NE(too_long.error().message.find("too long"), std::string::npos) << too_long.error().message;

  auto no_pid = h.server->load_here("kv", -1);
  ASSERT_FALSE(no_pid);
  EXPECT_EQ(no_pid.error().code, Errc::kInvalidArgument);
  EXPECT_NE(no_pid.error().message.find("not a process id"), std::string::npos) << no_pid.error().message;

  // Refused where a socket's request is (its reply's error, carried over).
  for (pid_t instance : {0, 1}) {
    auto bad_name = h.server->load_here("not a name\n", instance);
    ASSERT_FALSE(bad_name);
    EXPECT_EQ(bad_name.error().code, Errc::kInvalidArgument);
    EXPECT_NE(bad_name.error().message.find("bad segment name"), std::string::npos) << bad_name.error().message;
  }
}

// The failover manager holds a group's names while their loads run
// (Server::hold), so that the application it started beside them waits
// through the loads and their retries instead of opening on its own; then
// takes the load made in its name, or, being no descendant of the process
// it was made for (a container runtime started it), opens afresh, unless
// the load was exclusive (a standby instance's).
TEST(LoadHere, AnOpenWaitsWhileTheNameIsHeldThenTakesTheLoad) {
  ServerHere h;
  ASSERT_NE(h.server, nullptr);
  h.serve();
  std::vector<unsigned char> want(64 * 1024);
  for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<unsigned char>(i * 7 + 3);
  uint64_t committed = 0;
  {
    baton_t* b = nullptr;
    ASSERT_EQ(baton_connect(h.socket.c_str(), &b), 0) << baton_last_error();
    baton_segment_t* s = nullptr;
    ASSERT_EQ(baton_open(b, "kv", want.size(), &s, nullptr, nullptr), 0) << baton_last_error();
    std::memcpy(baton_segment_data(s), want.data(), want.size());
    ASSERT_EQ(baton_commit(s, &committed), 0) << baton_last_error();
    baton_stop(b);
  }
  // Loaded in this process's name while held: the open waits for the
  // hold, then takes the load as it stands (handed over).
  auto took = [&](pid_t pledged_to, bool exclusive) {
    h.server->hold("kv", true, 60'000'000'000);
    auto opened = std::async(std::launch::async, [&] { return open_as_application(h.socket, "kv", want); });
    EXPECT_EQ(opened.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
        << "an open of a held name did not wait";
    Result<void> loaded = fail(Errc::kInternal, "");
    for (int i = 0; i < 200; ++i) {  // the last holder's session may still be winding down
      loaded = h.server->load_here("kv", pledged_to, exclusive);
      if (loaded || loaded.error().code != Errc::kExists) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(loaded) << loaded.error().to_string();
    h.server->hold("kv", false);
    return opened.get();
  };
  const uint64_t handed = h.server->counters().handed_over;
  Opened mine = took(getpid(), false);
  EXPECT_EQ(mine.rc, 0) << mine.error;
  EXPECT_EQ(mine.generation, committed);
  EXPECT_TRUE(mine.same);
  EXPECT_EQ(h.server->counters().handed_over, handed + 1) << "the load made in its name was not handed over";
  // Made for another process (pid 1, of which nothing here descends), not
  // exclusively: let go of, and opened afresh, the same generation.
  Opened other = took(1, false);
  EXPECT_EQ(other.rc, 0) << other.error;
  EXPECT_EQ(other.generation, committed);
  EXPECT_TRUE(other.same);
  EXPECT_EQ(h.server->counters().handed_over, handed + 1);
  // A hold nobody lets go of ends by itself, when it said it would.
  h.server->hold("kv", true, 300'000'000);
  const auto t0 = std::chrono::steady_clock::now();
  Opened late = open_as_application(h.socket, "kv", want);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(250));
  EXPECT_EQ(late.rc, 0) << late.error;
  EXPECT_EQ(late.generation, committed);
  h.server->hold("kv", false);
  // Exclusively (a standby instance's): not this application's to take.
  Opened refused = took(1, true);
  EXPECT_EQ(refused.rc, BATON_EEXIST) << refused.error;
}

}  // namespace
}  // namespace baton::ipc
