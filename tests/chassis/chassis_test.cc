// The chassis end to end with real processes: batonctl brings up batond
// blades linked by memif; an application on blade 1 commits N generations;
// blade 1's batond and the application are SIGKILLed; the application on
// blade 3 loads generation N byte-exact and resumes. (batonctl demo checks
// each step and exits non-zero on any failure.) Over memif, over af_packet
// on veth pairs between network namespaces, and over shm regions. Then
// chassis up/status/down.

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../common/process.h"

namespace {

std::string run(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf;
  while (p != nullptr && fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  const int rc = p != nullptr ? pclose(p) : -1;
  *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

// What every demo run must show: it succeeded, blade 3 restored all
// `batches` byte-exact and resumed with the next one.
void expect_failed_over(const std::string& out, int status, int batches) {
  const std::string n = std::to_string(batches), next = std::to_string(batches + 1);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("restored generation=" + n + " batches=" + n), std::string::npos) << out;
  EXPECT_NE(out.find("byte-exact"), std::string::npos) << out;
  EXPECT_NE(out.find("batch=" + next + " generation=" + next + " durable"), std::string::npos) << out;
  // Act 2: the service group fails over to the spare pool after a kill,
  // then moves to the better node when slow, each decision with its reason.
  // Blade 3 is kv's hot standby: the failover goes there, and its load
  // takes the ready copy over.
  EXPECT_NE(out.find("group kv -> node 3 (hot standby, failover"), std::string::npos) << out;
  EXPECT_NE(out.find("loaded from this node's hot standby copy (no fetch, no copy)"), std::string::npos) << out;
  // Seen as it died: by the lock its client library held, or, when the
  // lock's watcher thread had not run yet on a busy machine, by its pidfd.
  EXPECT_NE(out.find("failed on node 1: the application (pid "), std::string::npos) << out;
  EXPECT_TRUE(out.find(") ended: its liveness lock was released as it exited") != std::string::npos ||
              out.find(") was killed by signal 9") != std::string::npos)
      << out;
  EXPECT_NE(out.find("group kv -> node 4 (performance move"), std::string::npos) << out;
  EXPECT_NE(out.find("resume   blade 4 (8 cores): restored"), std::string::npos) << out;
  EXPECT_NE(out.find("demo: ok"), std::string::npos) << out;
}

// A path's unix socket address.
sockaddr_un unix_address(const std::string& path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.c_str(), std::min(path.size(), sizeof sun.sun_path - 1));
  return sun;
}

// A SOCK_SEQPACKET socket listening at `path` (as a memif server's), or -1.
int listen_at(const std::string& path, int backlog = 64) {
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  const sockaddr_un sun = unix_address(path);
  if (fd >= 0 && bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) == 0 && listen(fd, backlog) == 0)
    return fd;
  if (fd >= 0) close(fd);
  return -1;
}

// The pid in a chassis blade's pid file (0 if none).
pid_t blade_pid(const std::string& dir, int blade) {
  std::ifstream in(dir + "/blade" + std::to_string(blade) + ".pid");
  pid_t pid = 0;
  in >> pid;
  return pid;
}

TEST(Chassis, KilledBladeFailsOverByteExact) {
  int status = 0;
  const std::string out = run(baton::test::helper("BATONCTL") + " demo --blades 4 --batches 25", &status);
  expect_failed_over(out, status, 25);
}

TEST(Chassis, KilledBladeFailsOverByteExactOverAfPacket) {
  int status = 0;
  const std::string probe = "baton-probe-" + std::to_string(getpid());
  run("ip netns add " + probe, &status);
  if (status != 0) GTEST_SKIP() << "network namespaces cannot be created here (ip netns add failed)";
  run("ip netns del " + probe, &status);
  const std::string out =
      run(baton::test::helper("BATONCTL") + " demo --blades 3 --batches 20 --transport af_packet", &status);
  expect_failed_over(out, status, 20);
  EXPECT_NE(out.find("af_packet on veth pairs"), std::string::npos) << out;
  const std::string ns = run("ip netns list", &status);
  EXPECT_EQ(ns.find("-blade"), std::string::npos) << "namespaces left behind:\n" << ns;
}

// The same over shm: blades linked by regions in /dev/shm (no DPDK at all);
// nothing of them is left afterwards.
TEST(Chassis, KilledBladeFailsOverByteExactOverShm) {
  int status = 0;
  const std::string out =
      run(baton::test::helper("BATONCTL") + " demo --blades 4 --batches 20 --transport shm", &status);
  expect_failed_over(out, status, 20);
  EXPECT_NE(out.find("shared-memory regions"), std::string::npos) << out;
  // Its regions are named after its directory (batonctl's prefix_for).
  const size_t at = out.find("serving in ");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string dir = out.substr(at + 11, out.find('\n', at) - at - 11);
  char prefix[16];
  std::snprintf(prefix, sizeof prefix, "bt%04x", static_cast<unsigned>(std::hash<std::string>{}(dir) & 0xFFFF));
  const std::string left = run("ls /dev/shm", &status);
  EXPECT_EQ(left.find(std::string("baton-") + prefix + "-"), std::string::npos) << "regions left behind:\n" << left;
}

// Mixed links (issue #11 item 5): blades two by two are the NUMA nodes of
// one server, linked by shm; servers are linked by memif. The engine takes
// each peer's link as it comes; the demo fails over across both.
TEST(Chassis, ShardsRunOverAQueuePairOfEveryMemifLink) {
  const std::string dir = "/tmp/baton-chassis-shards-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 3 --workers 2 --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  out = run(ctl + " status --json --socket " + dir + "/blade1.sock", &status);
  EXPECT_EQ(status, 0) << out;
  auto doc = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << out;
  EXPECT_EQ(doc["node"]["shards"].size(), 2u) << out;
  ASSERT_TRUE(doc["replication"].is_object()) << out;
  EXPECT_TRUE(doc["replication"]["wholes_sent"].is_number()) << out;
  // Heartbeats flow both ways, and nothing on a healthy chassis is refused.
  ASSERT_TRUE(doc["frames"].is_object()) << out;
  EXPECT_GT(doc["frames"]["rx"].get<uint64_t>(), 0u) << out;
  EXPECT_GT(doc["frames"]["tx"].get<uint64_t>(), 0u) << out;
  for (const char* refused : {"decode_errors", "misdirected", "bad_input", "notes_dropped"})
    EXPECT_EQ(doc["frames"][refused].get<uint64_t>(), 0u) << refused << ": " << out;
  // Two peers, a queue pair of each memif port per shard.
  std::map<int, std::set<int>> peers_of_shard;
  for (const auto& l : doc["links"]) {
    EXPECT_NE(l["name"].get<std::string>().find("net_memif"), std::string::npos) << l.dump();
    peers_of_shard[l["shard"].get<int>()].insert(l["peer"].get<int>());
    EXPECT_TRUE(l["up"].get<bool>()) << l.dump();
  }
  EXPECT_EQ(peers_of_shard, (std::map<int, std::set<int>>{{0, {2, 3}}, {1, {2, 3}}})) << out;
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_FALSE(std::filesystem::exists(dir)) << "files left in " << dir;

  // The failover demo, its segment in the second shard of every blade.
  out = run(ctl + " demo --blades 4 --batches 20 --workers 2", &status);
  expect_failed_over(out, status, 20);
  EXPECT_NE(out.find("2 per-core shards"), std::string::npos) << out;
  EXPECT_NE(out.find("shard 1: segment orderbook"), std::string::npos) << out;
  // And over shm, a region per shard.
  out = run(ctl + " demo --blades 3 --batches 10 --workers 2 --transport shm", &status);
  expect_failed_over(out, status, 10);
}

// --spin: each blade's one worker spins on a CPU of its own (blade N on CPU
// N-1); a chassis that cannot give every blade one, or asks for shards too,
// is refused before anything starts.
TEST(Chassis, SpinningBladesArePinnedOnePerCpu) {
  const std::string dir = "/tmp/baton-chassis-spin-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 2 --replicas 1 --spin --workers 2 --dir " + dir, &status);
  EXPECT_NE(status, 0) << out;
  EXPECT_NE(out.find("--spin pins one worker per blade"), std::string::npos) << out;
  const unsigned cpus = std::thread::hardware_concurrency();
  out = run(ctl + " chassis up --blades " + std::to_string(cpus + 1) + " --replicas 1 --spin --dir " + dir, &status);
  EXPECT_NE(status, 0) << out;
  EXPECT_NE(out.find("needs a CPU per blade"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/blade1.pid")) << "a refused chassis started blades";
  if (cpus < 2) GTEST_SKIP() << "one CPU: no two blades can spin apart";
  out = run(ctl + " chassis up --blades 2 --replicas 1 --spin --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  for (int id = 1; id <= 2; ++id) {
    std::ifstream in(dir + "/blade" + std::to_string(id) + ".toml");
    const std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(config.find("idle = \"spin\""), std::string::npos) << config;
    EXPECT_NE(config.find("worker_cpu = " + std::to_string(id - 1) + "\n"), std::string::npos) << config;
  }
  out = run(ctl + " status --json --socket " + dir + "/blade2.sock", &status);
  EXPECT_EQ(status, 0) << out;
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
}

// With too few huge pages free (or BATON_NO_HUGE_PAGES=1), DPDK runs on
// plain memory. It once could not start at all then (--no-huge beside
// --in-memory, which DPDK refuses): a machine whose huge pages other
// programs had taken could run no daemon with a link.
TEST(Chassis, BladesStartAndLinkWithoutHugePages) {
  const std::string dir = "/tmp/baton-chassis-nohuge-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run("BATON_NO_HUGE_PAGES=1 " + ctl + " chassis up --blades 3 --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  for (int id = 1; id <= 3; ++id) {
    std::ifstream in(dir + "/blade" + std::to_string(id) + ".log");
    const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(log.find("EAL started (no huge pages)"), std::string::npos) << log;
  }
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
}

TEST(Chassis, MixedLinksShmInsideAServerMemifBetween) {
  const std::string dir = "/tmp/baton-chassis-mixed-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 4 --transport mixed --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  out = run(ctl + " status --json --socket " + dir + "/blade2.sock", &status);
  EXPECT_EQ(status, 0) << out;
  auto doc = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << out;
  // Blade 2 is its server's second NUMA node, in the second package.
  EXPECT_EQ(doc["node"]["numa_node"], 1) << out;
  EXPECT_EQ(doc["node"]["package"], 1) << out;
  std::map<int, std::string> link_to;
  for (const auto& l : doc["links"]) {
    link_to[l["peer"].get<int>()] = l["name"].get<std::string>();
    EXPECT_TRUE(l["up"].get<bool>()) << l.dump();
    EXPECT_TRUE(l["alive"].get<bool>()) << l.dump();
  }
  ASSERT_EQ(link_to.size(), 3u) << out;
  EXPECT_NE(link_to[1].find("/dev/shm/"), std::string::npos) << link_to[1];
  EXPECT_NE(link_to[3].find("net_memif"), std::string::npos) << link_to[3];
  EXPECT_NE(link_to[4].find("net_memif"), std::string::npos) << link_to[4];
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_FALSE(std::filesystem::exists(dir)) << "files left in " << dir;

  out = run(ctl + " demo --blades 4 --batches 20 --transport mixed", &status);
  expect_failed_over(out, status, 20);
  EXPECT_NE(out.find("shm inside each two-blade server and memif between servers"), std::string::npos) << out;
}

TEST(Chassis, UpStatusDownLeavesNothing) {
  const std::string dir = "/tmp/baton-chassis-test-" + std::to_string(getpid());
  const std::string ctl = std::filesystem::absolute(baton::test::helper("BATONCTL")).string();
  int status = 0;
  // Up with a directory relative to where batonctl runs: the blades' files
  // are named by absolute path all the same.
  std::string out = run("cd /tmp && " + ctl + " chassis up --blades 3 --dir ./" + dir.substr(5), &status);
  ASSERT_EQ(status, 0) << out;
  out = run(ctl + " chassis status --json --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("\"blade\":3"), std::string::npos) << out;
  EXPECT_EQ(out.find("\"alive\":false"), std::string::npos) << out;
  out = run(ctl + " status --socket " + dir + "/blade2.sock", &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("node 2"), std::string::npos) << out;
  EXPECT_NE(out.find("net_memif1"), std::string::npos) << out;
  EXPECT_EQ(out.find(" down "), std::string::npos) << out;  // every link connected
  out = run(ctl + " events --socket " + dir + "/blade2.sock", &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("node 1 up"), std::string::npos) << out;
  EXPECT_NE(out.find("node 3 up"), std::string::npos) << out;
  out = run(ctl + " chassis up --blades 3 --dir " + dir, &status);
  EXPECT_NE(status, 0) << "a second chassis in the same directory";
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_FALSE(std::filesystem::exists(dir)) << "files left in " << dir;
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << "a second down: " << out;
  EXPECT_NE(out.find("nothing to stop"), std::string::npos) << out;
  out = run(ctl + " status --socket " + dir + "/blade2.sock", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(out.find("batonctl: "), std::string::npos) << out;
}

// A --groups file batond refuses: the error names that file and its own
// line, not the generated blade config (removed with the chassis). A
// session 35 new-user trial found it named the removed file.
TEST(Chassis, AGroupsFileErrorNamesTheFileAndItsLine) {
  const std::string dir = "/tmp/baton-chassis-groups-" + std::to_string(getpid());
  const std::string groups = dir + ".groups.toml";
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  struct Case {
    std::string text, says;
  };
  for (const Case& k : {Case{"[[group]]\nname = \"a\"\nstart = = \"sleep 9\"\n", groups + ":3:"},
                        Case{"[[group]]\nname = \"a\"\nsegments = [\"x\"\n", groups + ", at its end"},
                        Case{"[[group]]\nname = \"a\"\nstartt = \"sleep 9\"\n",
                             "(generated from the chassis options and --groups " + groups + "): group[0].startt"}}) {
    std::ofstream(groups) << k.text;
    const std::string out = run(ctl + " chassis up --blades 2 --dir " + dir + " --groups " + groups, &status);
    EXPECT_NE(status, 0) << out;
    EXPECT_NE(out.find(k.says), std::string::npos) << k.text << out;
    EXPECT_FALSE(std::filesystem::exists(dir)) << "files left in " << dir;
  }
  std::filesystem::remove(groups);
}

// Whether the link `device` (net_memifN) of the blade serving `socket`
// shows up within 10 s; `out`: the last status seen.
bool link_comes_up(const std::string& ctl, const std::string& socket, const std::string& device,
                   std::string* out) {
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    *out = run(ctl + " status --socket " + socket, &status);
    const size_t row = out->find("\n" + device + " ");
    if (status == 0 && row != std::string::npos &&
        out->substr(row, out->find('\n', row + 1) - row).find(" up ") != std::string::npos)
      return true;
  }
  return false;
}

// DPDK's memif listener, when its hello to a new connection fails, closes
// the socket without unregistering it, and the EAL interrupt thread then
// panics on the closed descriptor: a peer that connected and hung up at once
// (a blade killed while connecting, or any local process) took the server's
// batond down. batond now survives it, its sockets are files only those who
// may write them can connect to, and a server killed and restarted binds
// again over the file it left behind.
TEST(Chassis, AMemifServerOutlivesPeersThatHangUpAtOnce) {
  const std::string dir = "/tmp/baton-hangup-test-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 2 --replicas 2 --dir " + dir, &status);
  EXPECT_NE(status, 0) << "two blades cannot hold two replicas: " << out;
  EXPECT_NE(out.find("--replicas must be 1..blades-1"), std::string::npos) << out;
  // Without --replicas, two blades take one (the default of 2 needs three).
  out = run(ctl + " chassis up --blades 2 --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  const std::string link = dir + "/link-1-2.sock";
  struct stat st{};
  ASSERT_EQ(lstat(link.c_str(), &st), 0) << "the memif socket is no file: " << link;
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & S_IWOTH, 0u) << "anyone may connect to " << link;

  const sockaddr_un sun = unix_address(link);
  int connected = 0;
  for (int i = 0; i < 300; ++i) {
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    ASSERT_GE(fd, 0);
    connected += connect(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) == 0;
    close(fd);
  }
  EXPECT_GT(connected, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  out = run(ctl + " chassis status --json --dir " + dir, &status);
  EXPECT_EQ(out.find("\"alive\":false"), std::string::npos) << out << run("tail -20 " + dir + "/blade1.log", &status);

  // Killed, the server leaves its socket file; restarted, it binds again.
  const std::string first_log = run("cat " + dir + "/blade1.log", &status);
  ASSERT_FALSE(first_log.empty());
  const pid_t pid = blade_pid(dir, 1);
  ASSERT_GT(pid, 0);
  kill(pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  out = run(ctl + " chassis restart --blade 1 --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_TRUE(link_comes_up(ctl, dir + "/blade1.sock", "net_memif2", &out))
      << out << run("tail -20 " + dir + "/blade1.log", &status);
  // The restarted blade's log goes on below its predecessor's.
  const std::string log = run("cat " + dir + "/blade1.log", &status);
  EXPECT_EQ(log.substr(0, first_log.size()), first_log);
  EXPECT_NE(log.find("chassis restart: a new incarnation", first_log.size() > 0 ? first_log.size() - 1 : 0),
            std::string::npos) << log;
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
}

// A memif client whose handshake does not finish restarts its port, which
// cuts the handshake; on a starved machine one can take longer than the
// first 100 ms, so each restart after a connect that got nowhere waits
// twice as long (up to 1.6 s). A server that accepts and never greets
// stands for one too slow to finish.
TEST(Chassis, AMemifClientGivesASlowHandshakeLongerEachTime) {
  const std::string dir = "/tmp/baton-handshake-test-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/silent.sock";
  const int listener = listen_at(path);
  ASSERT_GE(listener, 0) << path;
  std::atomic<bool> stop{false};
  std::atomic<int> accepted{0};
  std::thread server([&] {
    std::vector<int> held;  // accepted and never answered
    while (!stop.load()) {
      pollfd p{listener, POLLIN, 0};
      if (poll(&p, 1, 50) != 1) continue;
      const int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) held.push_back(fd), ++accepted;
    }
    for (int fd : held) close(fd);
  });
  const std::string socket_path = dir + "/node1.sock", config = dir + "/node1.toml";
  std::ofstream(config) << "[node]\nid = 1\nname = \"blade1\"\n[client]\nsocket = \"" << socket_path
                        << "\"\n[log]\nlevel = \"warn\"\n[[link]]\npeer = 2\ndevice = \"net_memif2,role=client,socket="
                        << path << ",socket-abstract=no\"\n";
  const auto started = std::chrono::steady_clock::now();
  std::string out;
  int status = 0;
  {
    baton::test::Process batond({baton::test::helper("BATOND"), "--config", config});
    std::this_thread::sleep_until(started + std::chrono::milliseconds(3500));
    out = run(baton::test::helper("BATONCTL") + " status --json --socket " + socket_path, &status);
  }
  stop = true;
  server.join();
  close(listener);
  std::filesystem::remove_all(dir);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out.substr(out.find('{')), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  uint64_t reconnects = 0;
  for (const auto& l : j.value("links", nlohmann::json::array())) reconnects += l.value("reconnects", 0ull);
  // Restarts at about 0.1, 0.3, 0.7, 1.5 and 3.1 s; every 100 ms would be ~34.
  EXPECT_GE(accepted.load(), 2) << "the client kept trying";
  EXPECT_LE(accepted.load(), 9) << "the client restarted the port every 100 ms (reconnects " << reconnects << ")";
  EXPECT_LE(reconnects, 8u) << out;
}

// A blade whose start fails on a later link (here: something else listens
// on its memif server's socket) exits with that error, not a crash. Its
// memif client ports, handshaking with live peers, were closed from the
// main thread while the EAL interrupt thread handled their messages: 7
// SIGSEGVs in 40 starts. They are closed on the interrupt thread now.
TEST(Chassis, AStartThatFailsOnALaterLinkExitsCleanly) {
  const std::string dir = "/tmp/baton-failstart-test-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 4 --replicas 1 --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  const pid_t pid = blade_pid(dir, 3);
  ASSERT_GT(pid, 0);
  kill(pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // Blade 3 is the memif server of its link to blade 4: hold that socket.
  const std::string path = dir + "/link-3-4.sock";
  unlink(path.c_str());
  const int listener = listen_at(path);
  ASSERT_GE(listener, 0) << path;
  for (int i = 0; i < 12; ++i) {
    out = run(ctl + " chassis restart --blade 3 --dir " + dir, &status);
    EXPECT_NE(status, 0) << out;
    EXPECT_NE(out.find("exited with status 1"), std::string::npos) << "restart " << i << ": " << out;
  }
  close(listener);
  unlink(path.c_str());
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
}

// A memif client's start connects to its server's socket. DPDK's server
// listens with a backlog of one and accepts on its EAL interrupt thread; a
// server that does not accept (here: stopped) leaves the backlog full, and
// a blocking connect waited there: the restarted blade never served, and a
// port restarting on the interrupt thread froze every memif channel of its
// batond. The connect no longer waits; the link comes up once the server
// accepts again.
TEST(Chassis, AMemifClientStartsWhileItsServerDoesNotAccept) {
  const std::string dir = "/tmp/baton-backlog-test-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 2 --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  const pid_t server = blade_pid(dir, 1), client = blade_pid(dir, 2);
  ASSERT_GT(server, 0);
  ASSERT_GT(client, 0);
  kill(client, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  kill(server, SIGSTOP);
  // Fill the stopped server's backlog.
  const sockaddr_un sun = unix_address(dir + "/link-1-2.sock");
  std::vector<int> queued;
  for (int i = 0; i < 16; ++i) {
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun);
    const int err = errno;
    if (rc != 0) {
      close(fd);
      ASSERT_EQ(err, EAGAIN) << std::strerror(err);
      break;
    }
    queued.push_back(fd);
  }
  out = run(ctl + " chassis restart --blade 2 --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  kill(server, SIGCONT);
  for (int fd : queued) close(fd);
  EXPECT_TRUE(link_comes_up(ctl, dir + "/blade2.sock", "net_memif1", &out))
      << out << run("tail -20 " + dir + "/blade2.log", &status);
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
}

// The same connect, made by a client port restarting on the EAL interrupt
// thread, froze that thread, and with it the batond's memif servers: blade
// 2 (client of 1, server of 3) restarts its link to a "blade 1" that never
// accepts; blade 3, restarted, must still link to blade 2.
TEST(Chassis, AMemifClientRestartingTowardsADeafServerStillServesItsOwnClients) {
  const std::string dir = "/tmp/baton-deaf-test-" + std::to_string(getpid());
  const std::string ctl = baton::test::helper("BATONCTL");
  int status = 0;
  std::string out = run(ctl + " chassis up --blades 3 --replicas 1 --dir " + dir, &status);
  ASSERT_EQ(status, 0) << out;
  const pid_t one = blade_pid(dir, 1), three = blade_pid(dir, 3);
  ASSERT_GT(one, 0);
  ASSERT_GT(three, 0);
  kill(one, SIGKILL);
  kill(three, SIGKILL);
  // Blade 1's socket: a listener whose backlog is full and that never accepts.
  const std::string path = dir + "/link-1-2.sock";
  unlink(path.c_str());
  const int listener = listen_at(path, 0);
  ASSERT_GE(listener, 0) << path;
  const sockaddr_un sun = unix_address(path);
  const int queued = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
  ASSERT_EQ(connect(queued, reinterpret_cast<const sockaddr*>(&sun), sizeof sun), 0) << std::strerror(errno);
  // Blade 2 sees blade 1 gone and restarts its port towards it, again and again.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  out = run(ctl + " chassis restart --blade 3 --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_TRUE(link_comes_up(ctl, dir + "/blade3.sock", "net_memif2", &out))
      << out << run("tail -20 " + dir + "/blade2.log", &status);
  close(queued);
  close(listener);
  unlink(path.c_str());
  out = run(ctl + " chassis down --dir " + dir, &status);
  EXPECT_EQ(status, 0) << out;
}

}  // namespace
