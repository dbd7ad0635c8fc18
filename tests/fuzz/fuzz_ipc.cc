// libFuzzer target: batond's request handling (engine/ipc/server.cc). The
// input is one client request as it would arrive on the unix socket; it is
// answered by the real server over a real engine (one node, no links)
// through a socketpair, and every descriptor sent back is closed.
//
// Inputs whose first byte is even get a valid magic and version and one of
// four names, so that opens, waits and closes reach the engine; odd ones go
// in as they are.

#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "../common/recv_reply.h"
#include "baton/engine.h"
#include "common/log.h"
#include "ipc/messages.h"
#include "ipc/server.h"

namespace {

struct Harness {
  std::unique_ptr<baton::Engine> engine;
  std::unique_ptr<baton::ipc::Server> server;
  int fds[2] = {-1, -1};

  Harness() {
    baton::set_log_level(baton::LogLevel::kError);
    baton::EngineConfig c;
    c.node_id = 1;
    c.max_segment_size = 1 << 20;
    auto started = baton::Engine::start(c, {});
    if (!started) {
      std::fprintf(stderr, "fuzz_ipc: %s\n", started.error().to_string().c_str());
      std::abort();
    }
    engine = std::move(*started);
    baton::ipc::ServerConfig sc;
    sc.socket_path = "/tmp/baton-fuzz-ipc-" + std::to_string(getpid()) + ".sock";
    sc.max_wait_ms = 5;
    auto served = baton::ipc::Server::start(*engine, sc);
    if (!served) {
      std::fprintf(stderr, "fuzz_ipc: %s\n", served.error().to_string().c_str());
      std::abort();
    }
    server = std::move(*served);
    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds);
  }

  void drain() {
    std::vector<char> buf(baton::ipc::kMaxReply);
    std::vector<int> passed;
    while (baton::test::recv_with_fds(fds[1], buf, passed, MSG_DONTWAIT) >= 0) {
      for (int fd : passed) close(fd);
      passed.clear();
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Harness h;
  std::vector<char> req(data, data + size);
  if (size >= sizeof(baton::ipc::Request) && data[0] % 2 == 0) {
    baton::ipc::Request r;
    std::memcpy(&r, req.data(), sizeof r);
    r.magic = baton::ipc::kMagic;
    r.version = baton::ipc::kVersion;
    r.op = static_cast<uint16_t>(1 + r.op % 8);
    r.name_len = 2;
    r.name[0] = 'n';
    r.name[1] = static_cast<char>('0' + static_cast<uint8_t>(r.name[1]) % 4);
    r.size %= (2u << 20);  // up to twice the limit
    std::memcpy(req.data(), &r, sizeof r);
  }
  h.server->answer_once(h.fds[0], req.data(), req.size());
  h.drain();
  return 0;
}
