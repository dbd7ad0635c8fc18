// baton-peer: one embedded node over one DPDK port, for multi-process tests.
//
//   baton-peer --node N --peer P --device DEVARGS [--load NAME --out FILE]
//
// Without --load it serves as a replica until SIGTERM/SIGKILL. With --load it
// loads NAME from its peer, writes the bytes to FILE and exits 0 (2 if the
// peer holds no such segment). Prints "ready" once the engine runs.

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "baton/engine.h"
#include "baton/ethdev.h"

namespace {
volatile sig_atomic_t stop = 0;
void on_signal(int) { stop = 1; }
// A crash of the helper is a finding: leave its stack in the test log.
void on_crash(int sig) {
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
}
}  // namespace

int main(int argc, char** argv) {
  uint16_t node = 0, peer = 0;
  std::string device, load, out;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--node") node = static_cast<uint16_t>(std::stoi(v));
    else if (k == "--peer") peer = static_cast<uint16_t>(std::stoi(v));
    else if (k == "--device") device = v;
    else if (k == "--load") load = v;
    else if (k == "--out") out = v;
    else {
      std::fprintf(stderr, "baton-peer: unknown option %s\n", k.c_str());
      return 64;
    }
  }
  // A restarted memif server must not trip over the socket its predecessor left.
  if (auto pos = device.find("socket="); pos != std::string::npos && device.find("role=client") == std::string::npos)
    unlink(device.substr(pos + 7, device.find(',', pos) - pos - 7).c_str());
  signal(SIGSEGV, on_crash);
  signal(SIGBUS, on_crash);
  baton::ethdev::PortConfig pc;
  pc.device = device;
  pc.peer = peer;
  auto link = baton::ethdev::open_port(pc);
  if (!link) {
    std::fprintf(stderr, "baton-peer: %s\n", link.error().to_string().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<baton::Link>> links;
  links.push_back(std::move(*link));
  baton::EngineConfig c;
  c.node_id = node;
  auto engine = baton::Engine::start(c, std::move(links));
  if (!engine) {
    std::fprintf(stderr, "baton-peer: %s\n", engine.error().to_string().c_str());
    return 1;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  std::printf("ready\n");
  std::fflush(stdout);
  if (!load.empty()) {
    // The link may still be connecting: a not-found answer only counts once
    // the peer could have answered.
    for (int attempt = 0;; ++attempt) {
      auto r = (*engine)->load(load);
      if (r) {
        auto data = (*engine)->data(r->segment);
        std::ofstream f(out, std::ios::binary);
        f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
        return f ? 0 : 1;
      }
      if (attempt >= 50) {
        std::fprintf(stderr, "baton-peer: load: %s\n", r.error().to_string().c_str());
        return r.error().code == baton::Errc::kNotFound ? 2 : 1;
      }
    }
  }
  while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return 0;
}
