#include "demo.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chassis.h"
#include "ipc/client.h"

namespace baton::ctl {
namespace {

volatile sig_atomic_t interrupted = 0;
void on_interrupt(int) { interrupted = 1; }

using Clock = std::chrono::steady_clock;

// An application process with its stdout on a pipe we read line by line.
struct App {
  pid_t pid = -1;
  int out = -1;
  std::string buffered;

  static App start(const std::vector<std::string>& args) {
    App a;
    int p[2];
    if (pipe(p) != 0) return a;
    a.pid = fork();
    if (a.pid == 0) {
      dup2(p[1], STDOUT_FILENO);
      close(p[0]);
      close(p[1]);
      std::vector<char*> argv;
      for (auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(p[1]);
    a.out = p[0];
    return a;
  }
  // The next line that starts with `prefix`; empty on EOF, timeout or interrupt.
  std::string wait_for(const std::string& prefix, int timeout_ms = 30000) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      for (size_t nl; (nl = buffered.find('\n')) != std::string::npos;) {
        std::string line = buffered.substr(0, nl);
        buffered.erase(0, nl + 1);
        if (line.rfind(prefix, 0) == 0) return line;
      }
      if (interrupted || Clock::now() > deadline) return {};
      pollfd pfd{out, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      char buf[4096];
      const ssize_t n = read(out, buf, sizeof buf);
      if (n <= 0) return {};
      buffered.append(buf, static_cast<size_t>(n));
    }
  }
  void kill_now() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
    if (out >= 0) close(out);
    out = -1;
  }
  int wait_exit() {
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  }
};

bool same_bytes(const std::string& a, const std::string& b, size_t* size) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(fa)), {}), sb((std::istreambuf_iterator<char>(fb)), {});
  *size = sa.size();
  return !sa.empty() && sa == sb;
}

}  // namespace

int run_demo(const DemoConfig& d) {
  signal(SIGINT, on_interrupt);
  signal(SIGTERM, on_interrupt);
  ChassisConfig c;
  c.dir = d.dir.empty() ? "/tmp/baton-demo-" + std::to_string(getpid()) : d.dir;
  c.blades = d.blades;
  c.replication_factor = 2;
  c.transport = d.transport;
  c.workers = d.workers;
  c.batond = sibling("batond");
  // Copy-on-write snapshots (S14): the application's commit call only
  // write-protects what it wrote; its blade copies the snapshot after.
  c.groups_file = c.dir + ".snapshots.toml";
  std::ofstream(c.groups_file) << "[snapshots]\nmode = \"copy-on-write\"\n";
  const std::string kv = sibling("baton-kv");
  const std::string dump1 = c.dir + "/app-blade1", dump3 = c.dir + "/app-blade3";
  App first, second;
  int rc = 1;
  auto cleanup = [&] {
    first.kill_now();
    second.kill_now();
    (void)chassis_down(c.dir);
    std::error_code ec;
    std::filesystem::remove_all(dump1, ec);
    std::filesystem::remove_all(dump3, ec);
    std::filesystem::remove(c.dir, ec);
    std::filesystem::remove(c.groups_file, ec);
  };

  std::printf("Baton chassis demo: %d blades (batond processes) linked by %s, replication factor 2\n", c.blades,
              c.transport == "af_packet" ? "af_packet on veth pairs between network namespaces"
              : c.transport == "shm"     ? "shared-memory regions in /dev/shm"
              : c.transport == "mixed"   ? "shm inside each two-blade server and memif between servers"
                                         : "memif");
  if (c.workers > 1)
    std::printf("Each blade's engine runs %d per-core shards (a queue pair or region each)\n", c.workers);
  Timeline tl;
  auto blades = chassis_up(c);
  if (!blades) {
    std::fprintf(stderr, "batonctl demo: %s\n", blades.error().message.c_str());
    cleanup();
    return 1;
  }
  tl.at("up", std::to_string(c.blades) + " blades serving in " + c.dir);
  std::filesystem::create_directories(dump1);
  std::filesystem::create_directories(dump3);

  do {
    first = App::start({kv, "--socket", (*blades)[0].socket, "--name", "orderbook", "--batches",
                        std::to_string(d.batches), "--dump", dump1, "--hold"});
    if (first.wait_for("fresh start").empty()) {
      std::fprintf(stderr, "batonctl demo: the application did not start on blade 1\n");
      break;
    }
    tl.at("start", "application on blade 1: no copy anywhere, fresh state");
    std::string last;
    for (std::string line; !(line = first.wait_for("batch=")).empty();) {
      last = line;
      if (line.find("batch=" + std::to_string(d.batches) + " ") == 0) break;
    }
    if (last.empty()) break;
    tl.at("commit", "blade 1: " + std::to_string(d.batches) + " batches, each durable on a majority of its replicas (" +
                        last + ")");
    // The commit did not stop the application: what its call cost, and
    // what blade 1 did after each call returned.
    const std::string served = first.wait_for("served");
    const std::string call = served.empty() ? std::string("?") : served.substr(served.find(';') + 2);
    std::string snapshot = "stage-copy commits (copy-on-write is unavailable here: blade 1's log says why), " + call;
    if (auto cl = ipc::Client::connect((*blades)[0].socket))
      if (auto text = (*cl)->status()) {
        auto j = nlohmann::json::parse(*text, nullptr, false);
        if (!j.is_discarded() && j.contains("segments"))
          for (const auto& seg : j["segments"])
            if (seg.value("name", "") == "orderbook" && seg.value("snapshots", "") == "copy-on-write" &&
                j["clients"].value("cow_snapshots", 0) > 0)
              snapshot = "copy-on-write commits, " + call + " (the call write-protects what the batch wrote; blade 1 copied the " +
                         std::to_string(j["clients"].value("cow_snapshots", 0)) +
                         " snapshots after the calls returned, while the application wrote on: " +
                         std::to_string(seg.value("cow_faults", 0)) + " first writes to a page faulted once)";
      }
    tl.at("snapshot", "blade 1: " + snapshot);

    const auto killed_at = std::chrono::steady_clock::now();
    kill((*blades)[0].pid, SIGKILL);
    first.kill_now();
    waitpid((*blades)[0].pid, nullptr, 0);
    tl.at(killed_at, "kill", "SIGKILL blade 1's batond and the application");

    second = App::start({kv, "--socket", (*blades)[2].socket, "--name", "orderbook", "--batches", "5", "--dump",
                         dump3});
    const std::string restored = second.wait_for("restored ");
    if (restored.empty()) {
      std::fprintf(stderr, "batonctl demo: the application on blade 3 did not restore its state\n");
      break;
    }
    tl.at("load", "blade 3: " + restored);
    // What blade 3's control thread did: the claim and the new replica set.
    if (auto c = ipc::Client::connect((*blades)[2].socket)) {
      if (auto ev = (*c)->events())
        for (const auto& e : *ev)
          if (e.text.find("orderbook: ownership taken") != std::string::npos) tl.at("epoch", "blade 3: " + e.text);
    }
    size_t bytes = 0;
    if (!same_bytes(dump1 + "/committed.bin", dump3 + "/restored.bin", &bytes)) {
      std::fprintf(stderr, "batonctl demo: restored state differs from the last durable commit\n");
      break;
    }
    tl.at("verify", "byte-exact: " + std::to_string(bytes) + " bytes equal the last durable commit on blade 1");
    const std::string resumed = second.wait_for("batch=");
    if (resumed.empty()) break;
    tl.at("resume", "blade 3: " + resumed);
    if (second.wait_exit() != 0) break;
    rc = 0;
  } while (false);
  if (interrupted) std::fprintf(stderr, "batonctl demo: interrupted\n");
  cleanup();
  tl.at("down", "every process stopped, every file removed");
  if (rc == 0 && !interrupted) {
    std::printf("\nAct 2: the same application as a service group that batond places and moves itself\n");
    rc = run_groups_demo(d, tl);
  }
  if (interrupted) {
    std::printf("demo: interrupted\n");
    return 130;
  }
  std::printf(rc == 0 ? "demo: ok\n" : "demo: FAILED\n");
  return rc;
}

bool demo_interrupted() noexcept { return interrupted != 0; }

}  // namespace baton::ctl
