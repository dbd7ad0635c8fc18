// batond's own loads inside its server (ipc::Server::load_here, the
// failover manager's path): bad input is refused with a clear error, as
// the same request over the socket would be.

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "baton/engine.h"
#include "common/log.h"
#include "ipc/server.h"

namespace baton::ipc {
namespace {

struct ServerHere {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Server> server;
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
    sc.socket_path = "/tmp/baton-test-" + std::to_string(getpid()) + "-load-here.sock";
    auto served = Server::start(*engine, sc);
    EXPECT_TRUE(served) << served.error().to_string();
    if (served) server = std::move(*served);
  }
};

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

}  // namespace
}  // namespace baton::ipc
