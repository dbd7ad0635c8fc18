// batond and an application in separate processes. This test links only
// libbaton-client (no DPDK) and talks to a real batond process.

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <thread>
#include <poll.h>
#include <atomic>
#include <chrono>
#include <string>

#include "../common/batond.h"
#include "../common/chassis.h"
#include "../common/raw_request.h"
#include "../common/writer_gate.h"
#include "baton/baton.h"
#include "ipc/client.h"
#include "ipc/messages.h"

namespace {

using baton::test::Batond;
using baton::test::TempDir;

void fill(void* p, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(rng());
}

baton_t* connect_to(const Batond& d) {
  baton_t* b = nullptr;
  EXPECT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  return b;
}

/// A new application opens `name` and gets exactly generation `generation`
/// holding `want` (what the last one committed, restored).
void expect_restores(const Batond& d, const char* name, uint64_t generation, const std::vector<unsigned char>& want) {
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_segment_t* s = nullptr;
  uint64_t restored = 0;
  ASSERT_EQ(baton::test::open_when_free(b, name, want.size(), &s, nullptr, &restored), 0) << baton_last_error();
  EXPECT_EQ(restored, generation);
  EXPECT_EQ(std::memcmp(baton_segment_data(s), want.data(), want.size()), 0)
      << "generation " << restored << " is not the memory its commit saw";
  baton_stop(b);
}

TEST(Daemon, OpenCommitAndReopenAfterDisconnect) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* app = connect_to(d);
  ASSERT_NE(app, nullptr);
  baton_segment_t* seg = nullptr;
  int restored = -1;
  uint64_t gen = 99;
  ASSERT_EQ(baton_open(app, "kv", 1 << 20, &seg, &restored, &gen), 0) << baton_last_error();
  EXPECT_EQ(restored, 0);
  EXPECT_EQ(gen, 0u);
  ASSERT_EQ(baton_segment_size(seg), 1u << 20);
  fill(baton_segment_data(seg), 1 << 20, 7);
  std::vector<unsigned char> want(static_cast<unsigned char*>(baton_segment_data(seg)),
                                  static_cast<unsigned char*>(baton_segment_data(seg)) + (1 << 20));
  for (uint64_t i = 1; i <= 3; ++i) {
    ASSERT_EQ(baton_commit(seg, &gen), 0) << baton_last_error();
    EXPECT_EQ(gen, i);
  }
  // A second application cannot take the name while the first holds it.
  baton_t* other = connect_to(d);
  baton_segment_t* dup = nullptr;
  EXPECT_EQ(baton_open(other, "kv", 1 << 20, &dup, nullptr, nullptr), BATON_EEXIST);
  baton_stop(app);  // disconnect without unregistering: the segment stays (S3)
  int again_restored = 0;
  ASSERT_EQ(baton_open(other, "kv", 1 << 20, &dup, &again_restored, &gen), 0) << baton_last_error();
  EXPECT_EQ(again_restored, 1);
  EXPECT_EQ(gen, 3u);
  EXPECT_EQ(std::memcmp(baton_segment_data(dup), want.data(), want.size()), 0);
  baton_stop(other);
}

// S11's clean exit: an application deletes its segment, and its next start
// is a fresh one. A segment kept for a crashed application is deleted by
// name (batonctl delete); one an application holds is not.
TEST(Daemon, DeleteStartsFreshAndRefusesAHeldSegment) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* app = connect_to(d);
  ASSERT_NE(app, nullptr);
  baton_segment_t* seg = nullptr;
  ASSERT_EQ(baton_open(app, "session", 8192, &seg, nullptr, nullptr), 0) << baton_last_error();
  fill(baton_segment_data(seg), 8192, 3);
  ASSERT_EQ(baton_commit(seg, nullptr), 0) << baton_last_error();
  EXPECT_EQ(baton_delete(app, "session"), BATON_EBUSY) << "held by this application";
  baton_t* other = connect_to(d);
  EXPECT_EQ(baton_delete(other, "session"), BATON_EBUSY) << "held by another application";
  EXPECT_EQ(baton_delete(other, "no such"), BATON_EINVAL);
  EXPECT_EQ(baton_delete(other, "absent"), BATON_ENOENT);
  ASSERT_EQ(baton_unregister(seg), 0);
  // One blade, no replicas: unregistering dropped the only copy.
  ASSERT_EQ(baton_delete(app, "session"), BATON_ENOENT) << baton_last_error();
  int restored = -1;
  uint64_t gen = 99;
  ASSERT_EQ(baton_open(app, "session", 4096, &seg, &restored, &gen), 0) << baton_last_error();
  EXPECT_EQ(restored, 0);
  EXPECT_EQ(gen, 0u);
  const auto* bytes = static_cast<const unsigned char*>(baton_segment_data(seg));
  EXPECT_TRUE(std::all_of(bytes, bytes + 4096, [](unsigned char c) { return c == 0; }));
  ASSERT_EQ(baton_commit(seg, &gen), 0);
  baton_stop(app);  // crashes: batond keeps the segment for its restart
  const std::string ctl = baton::test::helper("BATONCTL") + " delete session --socket " + d.socket();
  ASSERT_EQ(std::system((ctl + " >/dev/null").c_str()), 0) << ctl;
  EXPECT_NE(std::system((ctl + " 2>/dev/null").c_str()), 0) << "deleted already";
  ASSERT_EQ(baton_open(other, "session", 4096, &seg, &restored, &gen), 0) << baton_last_error();
  EXPECT_EQ(restored, 0);
  baton_stop(other);
}

TEST(Daemon, ApplicationKilledLosesNothing) {
  TempDir dir;
  Batond d(1, dir.path);
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t child = fork();
  if (child == 0) {
    baton_t* b = nullptr;
    baton_segment_t* s = nullptr;
    if (baton_connect(d.socket().c_str(), &b) != 0 || baton_open(b, "crashy", 65536, &s, nullptr, nullptr) != 0)
      _exit(1);
    fill(baton_segment_data(s), 65536, 42);
    uint64_t g = 0;
    baton_commit(s, &g);
    fill(baton_segment_data(s), 65536, 43);  // written after the commit: not committed...
    (void)!write(pipefd[1], &g, sizeof g);
    pause();  // ... and then the application dies
    _exit(0);
  }
  uint64_t committed = 0;
  ASSERT_EQ(read(pipefd[0], &committed, sizeof committed), static_cast<ssize_t>(sizeof committed));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  baton_t* b = connect_to(d);
  baton_segment_t* s = nullptr;
  int restored = 0;
  uint64_t gen = 0;
  // The holder is released once the daemon sees the dead connection.
  ASSERT_EQ(baton::test::open_when_free(b, "crashy", 65536, &s, &restored, &gen, 100), 0) << baton_last_error();
  EXPECT_EQ(restored, 1);
  EXPECT_EQ(gen, committed);
  // The memory is the daemon's, but what the dead application wrote after
  // its last commit is no generation: the restart gets exactly generation
  // `committed`, as committed (issue #8, bug 2).
  std::vector<unsigned char> expect(65536);
  fill(expect.data(), expect.size(), 42);
  EXPECT_EQ(std::memcmp(baton_segment_data(s), expect.data(), expect.size()), 0);
  baton_stop(b);
}

int raw_connect(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

size_t fd_count(pid_t pid) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) (void)e, ++n;
  return n;
}

uint64_t rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  uint64_t v = 0;
  while (in >> key) {
    if (key == "VmRSS:") {
      in >> v;
      return v;
    }
    in.ignore(1024, '\n');
  }
  return 0;
}

TEST(Daemon, SurvivesMalformedAndAbandonedRequestsWithoutLeaking) {
  TempDir dir;
  // Each application gets a session thread; bounding how many run at once
  // bounds the stacks a burst can touch, so "flat" means no leak rather
  // than "no burst reached a new peak" (one past the bound is refused).
  Batond d(1, dir.path, "max_clients = 16\n");
  auto attempt = [&](int i) {
    int fd = raw_connect(d.socket());
    ASSERT_GE(fd, 0);
    baton::ipc::Request r = baton::test::request(baton::ipc::Op::kOpen, "abandon" + std::to_string(i % 7), 4096);
    char junk[600];
    std::memset(junk, i, sizeof junk);
    switch (i % 6) {
      case 0: send(fd, junk, 3, 0); break;                         // too short
      case 1: send(fd, junk, sizeof junk, 0); break;               // oversize
      case 2: r.magic = 1; send(fd, &r, sizeof r, 0); break;       // wrong magic
      case 3: r.op = 99; send(fd, &r, sizeof r, 0); break;         // unknown op
      case 4: r.name_len = 200; send(fd, &r, sizeof r, 0); break;  // name length past the field
      case 5: send(fd, &r, sizeof r, 0); break;                    // register, then vanish mid-reply
    }
    close(fd);
  };
  // Warm-up as large as the measured run: segments and pools exist, and
  // the thread-stack cache and malloc arenas of as many concurrent sessions
  // as the burst makes have reached their size (a plateau, not a leak).
  for (int i = 0; i < 1000; ++i) attempt(i);
  // Every name exists before counting (a warm-up open may have failed on a
  // loaded machine, and creating it later would read as a leak).
  for (int k = 0; k < 7; ++k) {
    baton_t* b = connect_to(d);
    baton_segment_t* s = nullptr;
    const std::string name = "abandon" + std::to_string(k);
    int rc = -1;
    for (int tries = 0; tries < 500 && rc != 0; ++tries) {
      rc = baton_open(b, name.c_str(), 4096, &s, nullptr, nullptr);
      if (rc != 0) usleep(10000);  // held by an abandoned client whose hang-up is not in yet
    }
    ASSERT_EQ(rc, 0) << name << ": " << baton_last_error();
    baton_stop(b);
  }
  // The daemon serves requests one by one: wait until it took in the
  // warm-up (its descriptor count stops changing) before counting.
  size_t fds_before = fd_count(d.pid());
  for (int stable = 0, i = 0; stable < 5 && i < 200; ++i) {
    usleep(50000);
    const size_t now = fd_count(d.pid());
    stable = now == fds_before ? stable + 1 : 0;
    fds_before = now;
  }
  const uint64_t rss_before = rss_kib(d.pid());
  for (int i = 0; i < 1000; ++i) attempt(i);
  // Let the daemon take in the last hang-ups, then count (a reopen asks the
  // cluster first: on a loaded machine the backlog takes seconds).
  size_t fds_after = fd_count(d.pid());
  for (int i = 0; i < 500 && fds_after > fds_before; ++i) {
    usleep(20000);
    fds_after = fd_count(d.pid());
  }
  EXPECT_LE(fds_after, fds_before) << "file descriptors leak";
  EXPECT_LE(rss_kib(d.pid()), rss_before + 1024) << "memory grows";
  // And it still serves.
  baton_t* b = connect_to(d);
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "still-serving", 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  uint64_t g = 0;
  EXPECT_EQ(baton_commit(s, &g), 0);
  baton_stop(b);
}

TEST(Daemon, RefusesClientsItDoesNotAllow) {
  TempDir dir;
  chmod(dir.path.c_str(), 0755);  // reach the socket: the daemon's own check must refuse
  Batond d(1, dir.path, "mode = \"0666\"\n");
  const pid_t child = fork();
  if (child == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);  // nobody
    baton_t* b = nullptr;
    const int rc = baton_connect(d.socket().c_str(), &b);  // refused here, saying why
    _exit(rc == 0 ? 0 : rc == BATON_EPERM && b == nullptr ? 2 : 4);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2) << "an unprivileged client was served, or not told BATON_EPERM at connect";
}

TEST(Daemon, BadConfigIsRefusedNamingTheField) {
  TempDir dir;
  const std::string cfg = dir.path + "/bad.toml";
  std::ofstream(cfg) << "[node]\nid = 70000\n[client]\nsocket = \"/tmp/x.sock\"\n";
  const std::string out = dir.path + "/out.txt";
  const int rc = std::system((baton::test::helper("BATOND") + " --config " + cfg + " 2>" + out).c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 2);
  std::ifstream in(out);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(text.find("node.id: must be 1..65534 (got 70000)"), std::string::npos) << text;
}

// `--check` starts DPDK's EAL with `[eal] args` (in a child) and names
// what it refused: it said "ok" to any arguments, and the start then
// failed with the EAL's usage text (a session 49 hostile-input pass).
TEST(Daemon, CheckNamesTheEalArgumentsDpdkRefuses) {
  TempDir dir;
  auto check = [&](const std::string& args, std::string* out) {
    const std::string cfg = dir.path + "/eal.toml";
    std::ofstream(cfg) << "[node]\nid = 1\n[client]\nsocket = \"" << dir.path << "/b.sock\"\n"
                       << "[[link]]\npeer = 2\ndriver = \"ethdev\"\ndevice = \"net_memif0,role=server,socket=" << dir.path
                       << "/m.sock\"\n[eal]\nargs = " << args << "\n";
    const std::string path = dir.path + "/out.txt";
    const int rc = std::system((baton::test::helper("BATOND") + " --config " + cfg + " --check >" + path + " 2>&1").c_str());
    std::ifstream in(path);
    out->assign((std::istreambuf_iterator<char>(in)), {});
    return WEXITSTATUS(rc);
  };
  std::string out;
  EXPECT_EQ(check("[\"--bogus-eal-flag\"]", &out), 2) << out;
  EXPECT_NE(out.find("eal.args: DPDK's EAL does not start with them"), std::string::npos) << out;
  EXPECT_NE(out.find("--bogus-eal-flag"), std::string::npos) << out;
  EXPECT_EQ(check("[\"-l\", \"0\"]", &out), 2) << out;  // Baton gives the EAL its lcores itself
  EXPECT_NE(out.find("-l is ignored"), std::string::npos) << out;
  EXPECT_EQ(check("[\"--log-level=4\"]", &out), 0) << out;
  EXPECT_NE(out.find(": ok (node 1"), std::string::npos) << out;
}

TEST(Daemon, StopsCleanlyOnSigterm) {
  TempDir dir;
  Batond d(1, dir.path);
  d.process().kill(SIGTERM);
  EXPECT_EQ(d.process().wait(), 0);
  struct stat st;
  EXPECT_NE(stat(d.socket().c_str(), &st), 0) << "socket left behind";
}

/// One of a batond's counters (batonctl status --json), 0 if not found.
uint64_t counter(const std::string& socket, const std::string& name) {
  const char* ctl = std::getenv("BATONCTL");
  if (ctl == nullptr) return 0;
  FILE* p = popen((std::string(ctl) + " status --json --socket " + socket).c_str(), "r");
  if (p == nullptr) return 0;
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  const std::string key = "\"" + name + "\":";
  const auto at = out.find(key);
  return at == std::string::npos ? 0 : std::strtoull(out.c_str() + at + key.size(), nullptr, 10);
}
uint64_t counter(const Batond& d, const std::string& name) { return counter(d.socket(), name); }

/// batond's count of chunks commits left alone as unchanged.
uint64_t chunks_skipped(const Batond& d) { return counter(d, "chunks_skipped"); }

/// `batonctl status --json` of `d` (as a person reads it: `json` false).
std::string status_of(const Batond& d, bool json = true) {
  const char* ctl = std::getenv("BATONCTL");
  if (ctl == nullptr) return "";
  FILE* p = popen((std::string(ctl) + " status " + (json ? "--json " : "") + "--socket " + d.socket()).c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

// An application whose library does not take copy-on-write (here
// BATON_TRACK_WRITES=0) commits by copying: batond's status says
// stage-copy for its segment, not the configured mode, and its commits
// are byte-exact all the same.
TEST(Daemon, AnApplicationThatDeclinesCopyOnWriteIsShownCopying) {
  TempDir dir;
  Batond d(1, dir.path, "", "[snapshots]\nmode = \"copy-on-write\"\ncommit_every_ms = 5\n");
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  baton_segment_t* s = nullptr;
  setenv("BATON_TRACK_WRITES", "0", 1);
  const int rc = baton_open(b, "declined", 1 << 20, &s, nullptr, nullptr);
  unsetenv("BATON_TRACK_WRITES");
  ASSERT_EQ(rc, 0) << baton_last_error();
  EXPECT_NE(status_of(d).find("\"snapshots\":\"stage-copy\""), std::string::npos) << status_of(d);
  std::memset(baton_segment_data(s), 3, 1 << 20);
  uint64_t g = 0;
  ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  EXPECT_EQ(g, 1u) << "the library took no periodic commit of it";
  baton_stop(b);  // gone without unregistering: batond keeps the segment for the next (S3)
  // The next application takes copy-on-write: shown so again.
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  ASSERT_EQ(baton::test::open_when_free(b, "declined", 1 << 20, &s, nullptr, nullptr), 0) << baton_last_error();
  EXPECT_NE(status_of(d).find("\"snapshots\":\"copy-on-write\""), std::string::npos) << status_of(d);
  EXPECT_EQ(static_cast<unsigned char*>(baton_segment_data(s))[12345], 3);
  baton_stop(b);
}

// The client library tracks the application's writes (batond cannot see
// them) and batond copies only their chunks. Every committed generation
// comes back byte-exact: across reconnects (batond puts the memory back
// itself, through a mapping no tracker watches, so the next commit copies
// everything) and after a refused range.
TEST(Daemon, CommitsCopyOnlyWhatTheApplicationWrote) {
  TempDir dir;
  Batond d(1, dir.path);
  constexpr size_t kSize = 4 << 20;
  std::mt19937_64 rng(11);
  std::vector<unsigned char> want;
  uint64_t gen = 0;
  for (int session = 0; session < 3; ++session) {
    baton_t* app = connect_to(d);
    ASSERT_NE(app, nullptr);
    baton_segment_t* seg = nullptr;
    int restored = -1;
    uint64_t at_open = 0;
    ASSERT_EQ(baton_open(app, "sparse", kSize, &seg, &restored, &at_open), 0) << baton_last_error();
    auto* mem = static_cast<unsigned char*>(baton_segment_data(seg));
    if (session == 0) {
      fill(mem, kSize, 3);
    } else {
      EXPECT_EQ(restored, 1);
      EXPECT_EQ(at_open, gen);
      ASSERT_EQ(std::memcmp(mem, want.data(), kSize), 0) << "session " << session << " restored other bytes";
    }
    for (int round = 0; round < 25; ++round) {
      const int writes = 1 + static_cast<int>(rng() % 5);
      for (int w = 0; w < writes; ++w) {
        const size_t off = rng() % (kSize - 100), len = 1 + rng() % 100;
        for (size_t i = 0; i < len; ++i) mem[off + i] = static_cast<unsigned char>(rng());
      }
      if (round == 12) {  // refused before anything is consumed: nothing is lost by it
        const baton_range_t bad{kSize - 1, 2};
        EXPECT_EQ(baton_commit_ranges(seg, &bad, 1, nullptr), BATON_EINVAL);
        EXPECT_EQ(baton_commit_ranges(seg, nullptr, 1, nullptr), BATON_EINVAL);
        EXPECT_EQ(baton_commit_ranges(seg, &bad, SIZE_MAX, nullptr), BATON_EINVAL);
        EXPECT_NE(std::string(baton_last_error()).find("too many ranges"), std::string::npos) << baton_last_error();
      }
      ASSERT_EQ(baton_commit(seg, &gen), 0) << baton_last_error();
    }
    want.assign(mem, mem + kSize);
    std::memset(mem + 1000, 0xee, 5000);  // written after the last commit: not a generation
    baton_stop(app);  // disconnect without unregistering: batond keeps the segment (S3)
  }
  EXPECT_GT(chunks_skipped(d), 0u) << "the client library did not tell batond what was written";
}

// BATON_TRACK_WRITES=0: something else writes the segment (DMA), so the
// client library says "everything" and batond copies it whole.
TEST(Daemon, WriteTrackingCanBeTurnedOff) {
  TempDir dir;
  Batond d(1, dir.path);
  setenv("BATON_TRACK_WRITES", "0", 1);
  baton_t* app = connect_to(d);
  ASSERT_NE(app, nullptr);
  baton_segment_t* seg = nullptr;
  const int opened = baton_open(app, "dma", 1 << 20, &seg, nullptr, nullptr);  // reads it
  unsetenv("BATON_TRACK_WRITES");
  ASSERT_EQ(opened, 0) << baton_last_error();
  auto* mem = static_cast<unsigned char*>(baton_segment_data(seg));
  for (int i = 0; i < 5; ++i) {
    mem[i * 4096 + 7] = static_cast<unsigned char>(i + 1);
    ASSERT_EQ(baton_commit(seg, nullptr), 0) << baton_last_error();
  }
  EXPECT_EQ(chunks_skipped(d), 0u) << "untracked commits copy everything";
  baton_stop(app);
}

// Copy-on-write in daemon mode (issue #10, S14): the client library
// freezes its own mapping at each commit and batond's worker settles the
// snapshot while the application writes on. A writer thread hammers the
// segment all the time but for the instant of each commit, when the
// application takes a stop-the-world reference of it and tells the test
// its hash; the test SIGKILLs the application at a random moment (often
// with pages still pending in batond), and the next session must restore
// exactly the last generation a commit returned (or the one in flight).
// `protect_ahead`: the library's protector races the writer and the
// commits too ([snapshots] protect_ahead). `quiescent`: the application
// promises its commits come while nothing else writes (its writer is
// paused: BATON_QUIESCENT_COMMITS=1), so the library copies the pages its
// protector had not reached aside instead of protecting them, and leaves
// them writable: the writer's next writes to them fault nowhere.
void copy_on_write_sessions(bool protect_ahead, bool quiescent = false) {
  TempDir dir;
  Batond d(1, dir.path, "",
           std::string("[snapshots]\nmode = \"copy-on-write\"\nprotect_ahead = ") + (protect_ahead ? "true" : "false") +
               "\n");
  constexpr size_t kSize = (4 << 20) + 1000;
  auto hash = [](const unsigned char* p, size_t n) {
    return std::hash<std::string_view>()(std::string_view(reinterpret_cast<const char*>(p), n));
  };
  struct Note {
    uint64_t generation;
    uint64_t hash;
    uint32_t kind;  // 0 restored, 1 about to commit, 2 committed
  };
  std::map<uint64_t, uint64_t> hash_of;  // generation -> its bytes' hash
  uint64_t committed = 0, in_flight = 0;
  std::mt19937_64 rng(5);
  for (int session = 0; session < 5; ++session) {
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    const pid_t child = fork();
    if (child == 0) {
      close(pipefd[0]);
      auto note = [&](uint64_t g, uint64_t h, uint32_t kind) {
        const Note n{g, h, kind};
        if (write(pipefd[1], &n, sizeof n) != static_cast<ssize_t>(sizeof n)) _exit(3);
      };
      baton_t* b = nullptr;
      baton_segment_t* s = nullptr;
      uint64_t gen = 0;
      if (quiescent) setenv("BATON_QUIESCENT_COMMITS", "1", 1);
      if (baton_connect(d.socket().c_str(), &b) != 0) _exit(1);
      // The previous session's holder goes once batond sees it dead.
      if (baton::test::open_when_free(b, "cow", kSize, &s, nullptr, &gen) != 0) _exit(2);
      auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
      note(gen, hash(mem, kSize), 0);
      baton::test::WriterGate gate;
      std::thread writer([&] {
        std::mt19937_64 wrng(static_cast<uint64_t>(getpid()));
        for (uint64_t n = 0;; ++n) {
          gate.checkpoint();
          const size_t off = wrng() % (kSize - 300), len = 1 + wrng() % 300;
          for (size_t i = 0; i < len; ++i) mem[off + i] = static_cast<unsigned char>(n + i);
        }
      });
      std::vector<unsigned char> reference(kSize);
      for (;;) {
        gate.pause();
        note(gen + 1, hash(mem, kSize), 1);  // what the commit must hold
        if (baton_commit(s, &gen) != 0) _exit(4);
        gate.resume();
        note(gen, 0, 2);
        usleep(300);  // the writer runs into pages batond has not settled yet
      }
    }
    close(pipefd[1]);
    // Let it run a while, then kill it wherever it is.
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(150 + rng() % 400);
    Note n{};
    bool restored_seen = false;
    while (std::chrono::steady_clock::now() < until) {
      pollfd pf{pipefd[0], POLLIN, 0};
      if (poll(&pf, 1, 10) != 1) continue;
      if (read(pipefd[0], &n, sizeof n) != static_cast<ssize_t>(sizeof n)) break;
      if (n.kind == 0) {
        restored_seen = true;
        EXPECT_TRUE(n.generation == committed || (in_flight != 0 && n.generation == in_flight))
            << "session " << session << " restored generation " << n.generation << "; committed " << committed;
        if (n.generation != 0) {
          ASSERT_TRUE(hash_of.count(n.generation)) << "restored generation " << n.generation << " never committed";
          EXPECT_EQ(n.hash, hash_of[n.generation])
              << "session " << session << ": generation " << n.generation << " restored torn";
        }
        committed = n.generation;
        in_flight = 0;
      } else if (n.kind == 1) {
        hash_of[n.generation] = n.hash;
        in_flight = n.generation;
      } else {
        committed = n.generation;
        in_flight = 0;
      }
    }
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the application exited by itself: " << WEXITSTATUS(status);
    // Notes written before the kill.
    while (read(pipefd[0], &n, sizeof n) == static_cast<ssize_t>(sizeof n)) {
      if (n.kind == 1) hash_of[n.generation] = n.hash, in_flight = n.generation;
      else if (n.kind == 2) committed = n.generation, in_flight = 0;
    }
    close(pipefd[0]);
    EXPECT_TRUE(restored_seen);
    EXPECT_GT(committed, 0u);
  }
  const char* ctl = std::getenv("BATONCTL");
  if (ctl != nullptr) {
    FILE* p = popen((std::string(ctl) + " status --json --socket " + d.socket()).c_str(), "r");
    std::string out;
    char buf[4096];
    for (size_t k; (k = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, k);
    pclose(p);
    EXPECT_NE(out.find("\"snapshots\":\"copy-on-write\""), std::string::npos) << out;
    // The first count of that name in the status (none: not shown).
    auto count = [&out](const char* name) -> std::optional<uint64_t> {
      const std::string key = std::string("\"") + name + "\":";
      const auto at = out.find(key);
      if (at == std::string::npos) return std::nullopt;
      return std::strtoull(out.c_str() + at + key.size(), nullptr, 10);
    };
    const auto snapshots = count("cow_snapshots");
    ASSERT_TRUE(snapshots) << out;
    EXPECT_GT(*snapshots, 10u) << "commits did not use copy-on-write";
    const auto ahead = count("cow_protected_ahead");
    ASSERT_TRUE(ahead) << out;
    const uint64_t pages = *ahead;
    if (protect_ahead || quiescent) EXPECT_GT(pages, 0u) << "the library protected nothing ahead";
    else EXPECT_EQ(pages, 0u);
    const auto copied = count("cow_copied_at_commit");
    ASSERT_TRUE(copied) << out;
    const uint64_t copied_pages = *copied;
    if (quiescent) EXPECT_GT(copied_pages, 0u) << "no commit copied the pages left to it";
    else EXPECT_EQ(copied_pages, 0u);
    // batond's own count of the waits it gave up (an honest, if descheduled,
    // application: any number; shown beside the client's counts).
    EXPECT_TRUE(count("cow_settler_gave_up")) << out;
    // Commits the library pended itself and posted, once batond said the
    // last snapshot was settled (most of them, 300 us apart); none refused.
    const auto posted = count("posted_cow_commits");
    ASSERT_TRUE(posted) << out;
    EXPECT_GT(*posted, 0u) << "no commit was posted";
    EXPECT_EQ(count("refused_cow_posts"), std::optional<uint64_t>(0)) << out;
  }
}

TEST(Daemon, CopyOnWriteCommitsAreExactWhileTheApplicationWrites) { copy_on_write_sessions(false); }

TEST(Daemon, CopyOnWriteCommitsAreExactWhileTheLibraryProtectsAhead) { copy_on_write_sessions(true); }

TEST(Daemon, QuiescentCopyOnWriteCommitsAreExactWithThePagesLeftToThemCopied) {
  copy_on_write_sessions(false, true);  // the promise turns the library's protector on by itself
}

// Periodic commits in daemon mode (S5): batond gives the segment a period
// and the client library commits it by itself while the application only
// writes. The application stamps a counter into 64 places, in an order
// the protection runs into; it never commits and is SIGKILLed. Each
// restore must be one instant of its run: every stamp equal, or one step
// between two rounds. The restored generation is one the library took.
TEST(Daemon, PeriodicCommitsAreInstantsOfTheApplicationsRun) {
  TempDir dir;
  Batond d(1, dir.path, "", "[snapshots]\nmode = \"copy-on-write\"\ncommit_every_ms = 5\n");
  constexpr size_t kSize = 2 << 20;
  constexpr int kStamps = 64;
  uint64_t last_restored = 0, last_stamp = 0;
  for (int session = 0; session < 3; ++session) {
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    const pid_t child = fork();
    if (child == 0) {
      close(pipefd[0]);
      baton_t* b = nullptr;
      baton_segment_t* s = nullptr;
      uint64_t gen = 0;
      if (baton_connect(d.socket().c_str(), &b) != 0) _exit(1);
      if (baton::test::open_when_free(b, "ticker", kSize, &s, nullptr, &gen) != 0) _exit(2);
      auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
      std::vector<uint64_t> k(kStamps);
      for (int i = 0; i < kStamps; ++i) std::memcpy(&k[i], mem + (kSize / kStamps) * i + 40, 8);
      (void)!write(pipefd[1], &gen, sizeof gen);
      (void)!write(pipefd[1], k.data(), k.size() * 8);
      for (uint64_t n = k[0] + 1;; ++n)  // on from where the restore left off
        for (int i = kStamps - 1; i >= 0; --i) {
          std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(mem + (kSize / kStamps) * i + 40))
              .store(n, std::memory_order_relaxed);
        }
    }
    close(pipefd[1]);
    uint64_t gen = 0;
    std::vector<uint64_t> k(kStamps);
    ASSERT_EQ(read(pipefd[0], &gen, sizeof gen), static_cast<ssize_t>(sizeof gen));
    ASSERT_EQ(read(pipefd[0], k.data(), k.size() * 8), static_cast<ssize_t>(k.size() * 8));
    close(pipefd[0]);
    if (session > 0) {
      EXPECT_GT(gen, last_restored) << "session " << session << ": the library committed nothing by itself";
      EXPECT_GT(k[0], last_stamp);
    }
    int steps = 0;
    for (int i = 1; i < kStamps; ++i) {
      EXPECT_TRUE(k[i] == k[i - 1] || k[i] == k[i - 1] + 1)
          << "session " << session << ", generation " << gen << ": stamp " << i << " is " << k[i] << " after "
          << k[i - 1];
      steps += k[i] != k[i - 1];
    }
    EXPECT_LE(steps, 1) << "session " << session << ", generation " << gen;
    last_restored = gen;
    last_stamp = k[0];
    usleep(200'000);  // the application writes; the library commits every 5 ms
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
  }
}

// A commit batond never took (it was stopped) is withdrawn when the
// library stops waiting, and never becomes a generation later, when
// batond resumes and finds the request: the next commit is the next
// generation, and a restore gets exactly what that one held. Both
// snapshot modes.
/// Waits until every thread of `pid` is stopped (state T), up to 5 s.
bool stopped(pid_t pid) {
  for (int i = 0; i < 500; ++i) {
    bool all = true;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
      std::ifstream stat(t.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const auto paren = line.rfind(')');
      all &= paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'T';
    }
    if (all) return true;
    usleep(10000);
  }
  return false;
}

TEST(Daemon, ACommitBatondNeverTookIsWithdrawnAndNeverBecomesAGeneration) {
  for (const char* mode : {"stage-copy", "copy-on-write"}) {
    SCOPED_TRACE(mode);
    TempDir dir;
    Batond d(1, dir.path, "", std::string("[snapshots]\nmode = \"") + mode + "\"\n");
    setenv("BATON_COMMIT_TIMEOUT_MS", "300", 1);
    baton_t* b = connect_to(d);
    unsetenv("BATON_COMMIT_TIMEOUT_MS");
    ASSERT_NE(b, nullptr);
    constexpr size_t kSize = 256 * 1024;
    baton_segment_t* s = nullptr;
    ASSERT_EQ(baton_open(b, "withdrawn", kSize, &s, nullptr, nullptr), 0) << baton_last_error();
    auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
    uint64_t g = 0;
    fill(mem, kSize, 1);
    ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
    ASSERT_EQ(g, 1u);
    ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
    // kill() returns before every thread of batond has stopped; its commit
    // thread (spinning after the first commit) could still take the next.
    ASSERT_TRUE(stopped(d.pid()));
    fill(mem, kSize, 2);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(baton_commit(s, &g), BATON_EUNAVAIL);
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(took, std::chrono::milliseconds(300));
    EXPECT_LT(took, std::chrono::seconds(5));
    EXPECT_NE(std::string(baton_last_error()).find("withdrawn"), std::string::npos) << baton_last_error();
    ASSERT_EQ(kill(d.pid(), SIGCONT), 0);
    usleep(200'000);  // batond finds the withdrawn request
    fill(mem, kSize, 3);
    ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
    EXPECT_EQ(g, 2u) << "the withdrawn commit became a generation";
    baton_stop(b);
    std::vector<unsigned char> want(kSize);
    fill(want.data(), kSize, 3);
    expect_restores(d, "withdrawn", 2, want);
  }
}

// A wait whose batond is stopped ends at its timeout (plus a second's
// slack) instead of hanging; batond's late answer to it is dropped, so the
// next call gets its own answer.
TEST(Daemon, AWaitOnAStoppedBatondEndsAtItsTimeout) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "stalled", 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  uint64_t g = 0;
  ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  ASSERT_EQ(baton_wait(s, g, 0, 1000), 0) << baton_last_error();
  ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
  ASSERT_TRUE(stopped(d.pid()));
  const auto t0 = std::chrono::steady_clock::now();
  // A generation never committed: batond answers "not committed yet" when it
  // goes on, which the next wait must not take for its own answer.
  EXPECT_EQ(baton_wait(s, 99, 0, 200), BATON_ETIMEDOUT);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, std::chrono::milliseconds(1200));
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_NE(std::string(baton_last_error()).find("did not answer"), std::string::npos) << baton_last_error();
  ASSERT_EQ(kill(d.pid(), SIGCONT), 0);
  EXPECT_EQ(baton_wait(s, g, 0, 1000), 0) << "got the stalled wait's answer: " << baton_last_error();
  fill(static_cast<unsigned char*>(baton_segment_data(s)), 4096, 7);
  ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  EXPECT_EQ(g, 2u);
  EXPECT_EQ(baton_wait(s, g, 0, 1000), 0) << baton_last_error();
  baton_stop(b);
}

// A commit waits for batond's answer. A batond that went away answers
// nothing: the commit ends then, with a clear error, not at its timeout
// (an independent campaign saw each such commit take the whole 30 s), and
// posted commits stop being posted once batond is half the log behind.
TEST(Daemon, ACommitEndsWhenItsBatondDies) {
  TempDir dir;
  Batond d(1, dir.path);
  setenv("BATON_COMMIT_TIMEOUT_MS", "20000", 1);
  baton_t* b = connect_to(d);
  unsetenv("BATON_COMMIT_TIMEOUT_MS");
  ASSERT_NE(b, nullptr);
  constexpr size_t kBig = 1 << 20;  // more than a log slot: its commits wait
  baton_segment_t* big = nullptr;
  baton_segment_t* small = nullptr;
  ASSERT_EQ(baton_open(b, "big", kBig, &big, nullptr, nullptr), 0) << baton_last_error();
  ASSERT_EQ(baton_open(b, "small", 4096, &small, nullptr, nullptr), 0) << baton_last_error();
  uint64_t g = 0;
  fill(static_cast<unsigned char*>(baton_segment_data(big)), kBig, 1);
  ASSERT_EQ(baton_commit(big, &g), 0) << baton_last_error();
  ASSERT_EQ(baton_commit(small, &g), 0) << baton_last_error();
  ASSERT_EQ(baton_wait(small, g, 0, 5000), 0) << baton_last_error();
  ASSERT_EQ(kill(d.pid(), SIGKILL), 0);
  fill(static_cast<unsigned char*>(baton_segment_data(big)), kBig, 2);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(baton_commit(big, &g), BATON_EUNAVAIL);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << "the commit waited out its timeout";
  EXPECT_NE(std::string(baton_last_error()).find("went away"), std::string::npos) << baton_last_error();
  int posted = 0, rc = 0;
  for (int i = 0; i < 16 && (rc = baton_commit(small, &g)) == 0; ++i) ++posted;
  EXPECT_EQ(rc, BATON_EUNAVAIL) << "every commit was posted to a batond that is gone";
  EXPECT_LE(posted, 9);
  EXPECT_NE(std::string(baton_last_error()).find("went away"), std::string::npos) << baton_last_error();
  baton_stop(b);
}

// A small segment's commit is posted (ipc/messages.h, CommitLog): the
// library copies what was written into a log slot, numbers the generation
// and returns without waiting for batond. Each generation is exactly the
// memory at its commit, however the application scribbles right after;
// they come in order; with batond stopped the log's 16 slots take 16
// commits and the 17th says it was not posted; after it resumes every
// posted commit is a generation and the last one is what a restart gets.
TEST(Daemon, PostedCommitsAreTheMemoryAtTheirCommitInOrder) {
  TempDir dir;
  Batond d(1, dir.path);
  setenv("BATON_COMMIT_TIMEOUT_MS", "300", 1);
  baton_t* b = connect_to(d);
  unsetenv("BATON_COMMIT_TIMEOUT_MS");
  ASSERT_NE(b, nullptr);
  constexpr size_t kSize = 4096;
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "posted", kSize, &s, nullptr, nullptr), 0) << baton_last_error();
  auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
  uint64_t g = 0;
  const uint64_t before = counter(d, "posted_commits");
  for (uint32_t i = 1; i <= 300; ++i) {
    fill(mem, kSize, i);
    ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
    ASSERT_EQ(g, i);
    std::memset(mem, 0xEE, kSize);  // at once: no part of generation i
  }
  ASSERT_EQ(baton_wait(s, g, 0, 5000), 0) << baton_last_error();
  if (std::getenv("BATONCTL") != nullptr) {
    EXPECT_GE(counter(d, "posted_commits") - before, 300u);
  }

  ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
  ASSERT_TRUE(stopped(d.pid()));
  for (uint32_t i = 301; i <= 316; ++i) {
    fill(mem, kSize, i);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(100)) << "a post waited for batond";
    ASSERT_EQ(g, i);
    std::memset(mem, 0xEE, kSize);
  }
  fill(mem, kSize, 317);
  EXPECT_EQ(baton_commit(s, &g), BATON_EUNAVAIL) << "the log is full";
  EXPECT_NE(std::string(baton_last_error()).find("not posted"), std::string::npos) << baton_last_error();
  EXPECT_EQ(g, 316u);
  ASSERT_EQ(kill(d.pid(), SIGCONT), 0);
  ASSERT_EQ(baton_wait(s, 316, 0, 5000), 0) << baton_last_error();
  fill(mem, kSize, 317);
  ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  EXPECT_EQ(g, 317u) << "the commit that was not posted took a generation";
  std::memset(mem, 0xEE, kSize);
  baton_stop(b);  // closing waits until batond took what was posted

  std::vector<unsigned char> want(kSize);
  fill(want.data(), kSize, 317);
  expect_restores(d, "posted", 317, want);
}

// A posted commit is a commit: an application that exits (or dies) right
// after it, before batond took it, still leaves that generation behind
// (the session's release takes what its commit thread has not). The child
// opens with batond running, posts while batond is stopped and exits; on
// SIGCONT batond's session and commit threads race for the posts.
TEST(Daemon, APostedCommitOutlivesItsApplication) {
  TempDir dir;
  Batond d(1, dir.path);
  constexpr size_t kSize = 4096;
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE(round);
    int go[2], ready[2];
    ASSERT_EQ(pipe(go), 0);
    ASSERT_EQ(pipe(ready), 0);
    const std::string name = "leaver" + std::to_string(round);
    const pid_t child = fork();
    if (child == 0) {
      baton_t* b = nullptr;
      baton_segment_t* s = nullptr;
      if (baton_connect(d.socket().c_str(), &b) != 0 || baton_open(b, name.c_str(), kSize, &s, nullptr, nullptr) != 0)
        _exit(2);
      char c = 0;
      if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1) _exit(4);
      uint64_t g = 0;
      for (uint32_t i = 1; i <= 5; ++i) {
        fill(baton_segment_data(s), kSize, 100 + i);
        if (baton_commit(s, &g) != 0 || g != i) _exit(3);
      }
      _exit(0);  // no wait, no close
    }
    char c = 0;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
    ASSERT_TRUE(stopped(d.pid()));
    ASSERT_EQ(write(go[1], &c, 1), 1);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_EQ(kill(d.pid(), SIGCONT), 0);
    for (int fd : {go[0], go[1], ready[0], ready[1]}) close(fd);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    std::vector<unsigned char> want(kSize);
    fill(want.data(), kSize, 105);
    expect_restores(d, name.c_str(), 5, want);
  }
}

// A segment too large for one slot's 64 KiB posts what fits (a few
// written pages) and waits for batond when all of it changed; both
// kinds interleave, and every restore is exactly the last commit.
TEST(Daemon, PostedAndWaitingCommitsInterleaveExactly) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  constexpr size_t kSize = 512 * 1024;
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "mixed", kSize, &s, nullptr, nullptr), 0) << baton_last_error();
  auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
  std::vector<unsigned char> want(kSize);
  std::mt19937 rng(11);
  uint64_t g = 0;
  const uint64_t posted0 = counter(d, "posted_commits");
  for (uint32_t i = 1; i <= 120; ++i) {
    if (i % 30 == 0) {
      fill(want.data(), kSize, i);  // everything: a waiting commit
      std::memcpy(mem, want.data(), kSize);
    } else {
      for (int k = 0; k < 3; ++k) {  // a few pages: posted
        const size_t off = rng() % (kSize - 100);
        for (size_t j = 0; j < 100; ++j) mem[off + j] = want[off + j] = static_cast<unsigned char>(rng());
      }
    }
    ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
    ASSERT_EQ(g, i);
  }
  if (std::getenv("BATONCTL") != nullptr) {
    const uint64_t posted = counter(d, "posted_commits") - posted0;
    // (After a whole rewrite the write tracker rests for 8 commits, which
    // then count as "everything": WriteWatch::kRest.)
    EXPECT_GE(posted, 60u) << "the small commits were not posted";
    EXPECT_LT(posted, 120u) << "the whole-segment commits cannot fit a slot";
  }
  baton_stop(b);
  expect_restores(d, "mixed", 120, want);
}

/// batond's answer to one raw request (no descriptors expected), or a
/// reply with status 1 if none came.
baton::ipc::Reply raw_call(const std::string& socket, baton::ipc::Op op, const std::string& name, uint64_t size) {
  const baton::ipc::Request r = baton::test::request(op, name, size);
  baton::ipc::Reply rep{};
  rep.status = 1;
  const int fd = raw_connect(socket);
  if (fd < 0) return rep;
  std::vector<char> buf(baton::ipc::kMaxReply);
  if (send(fd, &r, sizeof r, MSG_NOSIGNAL) == sizeof r &&
      recv(fd, buf.data(), buf.size(), 0) >= static_cast<ssize_t>(sizeof rep))
    std::memcpy(&rep, buf.data(), sizeof rep);
  close(fd);
  return rep;
}
baton::ipc::Reply raw_call(const Batond& d, baton::ipc::Op op, const std::string& name, uint64_t size) {
  return raw_call(d.socket(), op, name, size);
}

/// A standby instance of an application (a process of its own): connected
/// to batond, it waits for a byte on a pipe, then opens `name` and reports
/// what it got, and stays until killed.
struct Instance {
  struct Got {
    int rc = -1;
    int restored = -1;
    uint64_t generation = 0;
    int same = 0;  ///< the memory is `want`, byte for byte
  };
  pid_t pid = -1;
  int go = -1, result = -1;
  Instance(const Batond& d, const char* name, const std::vector<unsigned char>& want)
      : Instance(d.socket(), name, want) {}
  Instance(const std::string& socket, const char* name, const std::vector<unsigned char>& want) {
    int g[2], r[2];
    if (pipe(g) != 0 || pipe(r) != 0) return;
    pid = fork();
    if (pid == 0) {
      close(g[1]);
      close(r[0]);
      baton_t* b = nullptr;
      Got got;
      if (baton_connect(socket.c_str(), &b) == 0) {
        char c;
        if (read(g[0], &c, 1) == 1) {
          baton_segment_t* s = nullptr;
          got.rc = baton_open(b, name, want.size(), &s, &got.restored, &got.generation);
          got.same = got.rc == 0 && std::memcmp(baton_segment_data(s), want.data(), want.size()) == 0;
        }
      }
      (void)!write(r[1], &got, sizeof got);
      pause();
      _exit(0);
    }
    close(g[0]);
    close(r[1]);
    go = g[1];
    result = r[0];
  }
  /// Promotes it; returns what its open got.
  Got promote() {
    Got got;
    if (write(go, "P", 1) != 1 || read(result, &got, sizeof got) != static_cast<ssize_t>(sizeof got)) got.rc = -2;
    return got;
  }
  void end() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);  // reaped: no zombie keeps the pid
      pid = -1;
    }
  }
  ~Instance() {
    end();
    close(go);
    close(result);
  }
};

// A failover to a node where a standby instance waits loads the segment
// in the instance's name (Op::kLoadFor, what batond's failover manager
// asks), so that the instance's open, once it is promoted, takes the
// segment as the load left it instead of confirming ownership with a
// round of its own: the same generation, byte for byte. Opened too late
// (the load's claim is no longer fresh), it opens as any open does, with
// the same result; and until then no other application may take it.
TEST(Daemon, AStandbyInstanceTakesWhatWasLoadedForIt) {
  if (std::getenv("BATONCTL") == nullptr) GTEST_SKIP() << "needs BATONCTL for batond's counters";
  TempDir dir;
  Batond d(1, dir.path);
  using baton::ipc::Op;
  std::vector<unsigned char> want(65536);
  fill(want.data(), want.size(), 5);
  uint64_t committed = 0;
  {
    baton_t* b = connect_to(d);
    baton_segment_t* s = nullptr;
    ASSERT_EQ(baton_open(b, "ledger", want.size(), &s, nullptr, nullptr), 0) << baton_last_error();
    std::memcpy(baton_segment_data(s), want.data(), want.size());
    ASSERT_EQ(baton_commit(s, &committed), 0) << baton_last_error();
    baton_stop(b);
  }
  // batond loads "ledger" for the instance, as its failover manager does
  // (the previous holder's session may still be winding down: EEXIST).
  auto load_for = [&](const Instance& inst) {
    baton::ipc::Reply rep{};
    for (int i = 0; i < 200; ++i) {
      rep = raw_call(d, Op::kLoadFor, "ledger", static_cast<uint64_t>(inst.pid));
      if (rep.status != BATON_EEXIST) break;
      usleep(10000);
    }
    return rep;
  };
  // Handed over: the load's result, at once.
  {
    Instance inst(d, "ledger", want);
    ASSERT_GT(inst.pid, 0);
    const baton::ipc::Reply rep = load_for(inst);
    ASSERT_EQ(rep.status, 0) << rep.message;
    EXPECT_EQ(rep.generation, committed);
    const Instance::Got got = inst.promote();
    EXPECT_EQ(got.rc, 0);
    EXPECT_EQ(got.restored, 1);
    EXPECT_EQ(got.generation, committed);
    EXPECT_TRUE(got.same) << "the instance's memory is not the committed generation";
    EXPECT_EQ(counter(d, "handed_over"), 1u);
  }
  // Opened too late: opened afresh (a round first), the same state.
  {
    Instance inst(d, "ledger", want);
    ASSERT_GT(inst.pid, 0);
    const baton::ipc::Reply rep = load_for(inst);
    ASSERT_EQ(rep.status, 0) << rep.message;
    // Held for the instance: another application's open waits its turn.
    baton_t* other = connect_to(d);
    baton_segment_t* s = nullptr;
    EXPECT_EQ(baton_open(other, "ledger", want.size(), &s, nullptr, nullptr), BATON_EEXIST);
    baton_stop(other);
    usleep(300'000);  // past kPledgeFreshNs, within kPledgeKeepNs
    const Instance::Got got = inst.promote();
    EXPECT_EQ(got.rc, 0);
    EXPECT_EQ(got.generation, committed);
    EXPECT_TRUE(got.same);
    EXPECT_EQ(counter(d, "handed_over"), 1u) << "a stale load was handed over as it stood";
  }
  // The instance dies before it opens: the segment is free again soon.
  {
    Instance inst(d, "ledger", want);
    ASSERT_GT(inst.pid, 0);
    const baton::ipc::Reply rep = load_for(inst);
    ASSERT_EQ(rep.status, 0) << rep.message;
    inst.end();
    // Let go of within a tick of batond's accept loop (100 ms), not at
    // kPledgeKeepNs (2 s).
    baton_t* b = connect_to(d);
    baton_segment_t* s = nullptr;
    uint64_t generation = 0;
    ASSERT_EQ(baton::test::open_when_free(b, "ledger", want.size(), &s, nullptr, &generation, 100), 0)
        << baton_last_error();
    EXPECT_EQ(generation, committed);
    EXPECT_EQ(std::memcmp(baton_segment_data(s), want.data(), want.size()), 0);
    baton_stop(b);
  }
  EXPECT_EQ(counter(d, "handed_over"), 1u);
}

// A take-over (`batonctl load`, or batond's failover manager's load)
// leaves the segment free for the application to come; an open that comes
// while it is still fetching waits for it and opens what it left, the
// committed generation. Before, a name held by a take-over answered
// EEXIST ("held by another application"). The application here is no
// child of batond (as under a container runtime), and the take-over comes
// over the socket, as batonctl's does.
TEST(Daemon, AnOpenDuringATakeOverWaitsForIt) {
  baton::test::Chassis ch(3, "memif", 1);
  ASSERT_TRUE(ch.up) << ch.out;
  using baton::ipc::Op;
  constexpr size_t kSize = 64u << 20;  // a fetch of some tens of milliseconds over memif
  std::vector<unsigned char> want(kSize);
  fill(want.data(), want.size(), 9);
  uint64_t committed = 0;
  baton_t* owner = nullptr;
  ASSERT_EQ(baton_connect(ch.socket(1).c_str(), &owner), 0) << baton_last_error();
  baton_segment_t* seg = nullptr;
  ASSERT_EQ(baton_open(owner, "bulky", kSize, &seg, nullptr, nullptr), 0) << baton_last_error();
  std::memcpy(baton_segment_data(seg), want.data(), kSize);
  ASSERT_EQ(baton_commit(seg, &committed), 0) << baton_last_error();
  ASSERT_EQ(baton_wait(seg, committed, BATON_DURABLE, 20000), 0) << baton_last_error();
  // The blade without the one replica: its load fetches.
  int target = 0;
  for (int b : {2, 3})
    if (ch.status_json(b).value("copies", nlohmann::json::array()).empty()) target = b;
  ASSERT_NE(target, 0) << ch.status(2) << ch.status(3);
  Instance app(ch.socket(target), "bulky", want);
  ASSERT_GT(app.pid, 0);
  baton::ipc::Reply rep{};
  std::thread loader([&] { rep = raw_call(ch.socket(target), Op::kTakeOver, "bulky", 0); });
  std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the load holds the name, and fetches
  const Instance::Got got = app.promote();
  loader.join();
  ASSERT_EQ(rep.status, 0) << rep.message;
  EXPECT_EQ(got.rc, 0) << "the open during the load failed";
  EXPECT_EQ(got.restored, 1);
  EXPECT_EQ(got.generation, committed);
  EXPECT_TRUE(got.same) << "the application's memory is not the committed generation";
  baton_stop(owner);
}

// Loading for another process is for batond's failover manager and its
// administrators; bad requests get a clear error.
TEST(Daemon, ALoadForAnotherApplicationIsRefusedToApplicationsAndBadRequests) {
  TempDir dir;
  chmod(dir.path.c_str(), 0755);
  Batond d(1, dir.path, "mode = \"0666\"\nuser = \"nobody\"\n");
  using baton::ipc::Op;
  EXPECT_EQ(raw_call(d, Op::kLoadFor, "ledger", 0).status, BATON_EINVAL) << "pid 0";
  EXPECT_EQ(raw_call(d, Op::kLoadFor, "ledger", uint64_t{1} << 40).status, BATON_EINVAL) << "not a pid";
  EXPECT_EQ(raw_call(d, Op::kLoadFor, "two words", getpid()).status, BATON_EINVAL) << "bad name";
  EXPECT_EQ(raw_call(d, Op::kLoadFor, "nowhere", getpid()).status, BATON_ENOENT);
  const pid_t child = fork();
  if (child == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);  // nobody: an allowed application
    const baton::ipc::Reply rep = raw_call(d, Op::kLoadFor, "ledger", getpid());
    _exit(rep.status == BATON_EPERM ? 0 : rep.status == 1 ? 4 : 2);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "an application loaded for another process";
}

// batond says where a start-up hangs: a shm link whose region file another
// process holds locked (as a peer does while it sets the region up) keeps
// the start waiting; after 5 s its log names the wait, and once the lock
// goes, it serves.
TEST(Daemon, AStartThatHangsSaysWhere) {
  TempDir dir;
  const std::string region = dir.path + "/region", config = dir.path + "/node1.toml",
                    log = dir.path + "/node1.log", socket = dir.path + "/node1.sock";
  const int fd = open(region.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX), 0);
  std::ofstream(config) << "[node]\nid = 1\nname = \"blade1\"\n[client]\nsocket = \"" << socket
                        << "\"\n[log]\nlevel = \"warn\"\n[[link]]\npeer = 2\ndriver = \"shm\"\ndevice = \"" << region
                        << "\"\n";
  const std::string command = "exec " + baton::test::helper("BATOND") + " --config " + config + " 2>" + log;
  baton::test::Process batond({"/bin/sh", "-c", command});
  auto read_log = [&] {
    std::ifstream in(log);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::string text;
  for (int i = 0; i < 150 && text.find("start-up stack:") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    text = read_log();
  }
  struct stat st{};
  EXPECT_NE(stat(socket.c_str(), &st), 0) << "batond served while its region was locked";
  ASSERT_NE(text.find("still starting after 5000 ms"), std::string::npos) << text;
  // Wait for the stack's last frame (its caller, main) to be written.
  for (int i = 0; i < 20 && text.find("(main+", text.find("start-up stack:")) == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    text = read_log();
  }
  const std::string stack = text.substr(text.find("start-up stack:"));
  EXPECT_NE(stack.find("(flock+"), std::string::npos) << stack;
  EXPECT_NE(stack.find("shm4open"), std::string::npos) << "the frame of baton::shm::open: " << stack;
  flock(fd, LOCK_UN);
  close(fd);
  for (int i = 0; i < 100 && stat(socket.c_str(), &st) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(stat(socket.c_str(), &st), 0) << "batond did not serve once the lock was gone: " << read_log();
}

// "Calls on one baton_t may come from any thread" (baton.h). A session 36
// new-user trial found two threads on one connection got each other's
// answers: a durability wait that must time out returned 0 (the answer to
// the other thread's unregister), an open's answer went to a wait and the
// open's caller got a timeout while batond made the segment. Each call now
// gets its own answer, and the queued one's patience starts at its turn.
TEST(Daemon, CallsFromTwoThreadsOnOneConnectionGetTheirOwnAnswers) {
  TempDir dir;
  Batond d(1, dir.path);  // no peers: a durability wait times out
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  for (int round = 0; round < 3; ++round) {
    const std::string a_name = "thread-a" + std::to_string(round), b_name = "thread-b" + std::to_string(round);
    baton_segment_t* sa = nullptr;
    baton_segment_t* sb = nullptr;
    ASSERT_EQ(baton_open(b, a_name.c_str(), 4096, &sa, nullptr, nullptr), 0) << baton_last_error();
    ASSERT_EQ(baton_open(b, b_name.c_str(), 4096, &sb, nullptr, nullptr), 0) << baton_last_error();
    uint64_t ga = 0;
    ASSERT_EQ(baton_commit(sa, &ga), 0) << baton_last_error();
    std::atomic<int> waited{1};
    std::string wait_error;
    std::thread waiter([&] {
      waited = baton_wait(sa, ga, BATON_DURABLE, 600);
      wait_error = baton_last_error();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(150));  // the wait is with batond
    EXPECT_EQ(baton_unregister(sb), 0) << baton_last_error();
    baton_segment_t* sc = nullptr;
    const std::string c_name = "thread-c" + std::to_string(round);
    EXPECT_EQ(baton_open(b, c_name.c_str(), 4096, &sc, nullptr, nullptr), 0) << baton_last_error();
    EXPECT_EQ(baton_delete(b, "no-such-segment"), BATON_ENOENT) << baton_last_error();
    waiter.join();
    EXPECT_EQ(waited.load(), BATON_ETIMEDOUT) << "the wait got another call's answer: " << wait_error;
    EXPECT_NE(wait_error.find("not durable"), std::string::npos) << wait_error;
    if (sc != nullptr) {
      EXPECT_EQ(baton_unregister(sc), 0) << baton_last_error();
    }
    EXPECT_EQ(baton_unregister(sa), 0) << baton_last_error();
  }
  baton_stop(b);
}

// baton_stop while other threads are inside calls on the same baton_t: the
// calls end (refused, or "went away"), and nothing is used after it was
// freed (a session 36 trial crashed here in 2 runs of 3; ASan CI runs it).
TEST(Daemon, StoppingAConnectionEndsTheCallsOtherThreadsAreIn) {
  TempDir dir;
  Batond d(1, dir.path);
  for (int round = 0; round < 4; ++round) {
    baton_t* b = connect_to(d);
    ASSERT_NE(b, nullptr);
    baton_segment_t* small = nullptr;
    baton_segment_t* big = nullptr;
    const std::string small_name = "stop-small" + std::to_string(round), big_name = "stop-big" + std::to_string(round);
    ASSERT_EQ(baton_open(b, small_name.c_str(), 4096, &small, nullptr, nullptr), 0) << baton_last_error();
    ASSERT_EQ(baton_open(b, big_name.c_str(), 4 << 20, &big, nullptr, nullptr), 0) << baton_last_error();
    uint64_t g0 = 0;
    ASSERT_EQ(baton_commit(small, &g0), 0) << baton_last_error();
    std::atomic<int> ended{0};
    std::vector<std::thread> threads;
    std::vector<int> last(3, 0);
    threads.emplace_back([&] {  // posted commits
      uint64_t g = 0;
      while ((last[0] = baton_commit(small, &g)) == 0) {
      }
      ++ended;
    });
    threads.emplace_back([&] {  // waiting commits
      uint64_t g = 0;
      while ((last[1] = baton_commit(big, &g)) == 0) {
      }
      ++ended;
    });
    threads.emplace_back([&] {  // a wait that would take seconds
      last[2] = baton_wait(small, g0, BATON_DURABLE, 5000);
      ++ended;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + 50 * round));
    const auto t0 = std::chrono::steady_clock::now();
    baton_stop(b);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3)) << "the stop waited out the wait";
    for (auto& t : threads) t.join();
    EXPECT_EQ(ended.load(), 3);
    for (int rc : last) EXPECT_TRUE(rc == BATON_EINVAL || rc == BATON_EUNAVAIL) << rc;
  }
  // batond is unharmed: another application is served.
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_segment_t* s = nullptr;
  EXPECT_EQ(baton::test::open_when_free(b, "stop-small0", 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  baton_stop(b);
}

// Every call on a stopped or made-up baton_t is refused; baton_delete and
// baton_report used to dereference it (SIGSEGV; a session 36 trial).
TEST(Daemon, CallsOnAStoppedOrMadeUpConnectionAreRefused) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_stop(b);
  alignas(64) unsigned char junk[256];
  std::memset(junk, 0x41, sizeof junk);
  for (baton_t* bad : {b, reinterpret_cast<baton_t*>(junk), reinterpret_cast<baton_t*>(uintptr_t{0x1234}),
                       static_cast<baton_t*>(nullptr)}) {
    EXPECT_EQ(baton_delete(bad, "x"), BATON_EINVAL);
    EXPECT_NE(std::string(baton_last_error()).find("unknown baton handle"), std::string::npos) << baton_last_error();
    EXPECT_EQ(baton_report(bad, "latency", 1.0), BATON_EINVAL);
    baton_segment_t* s = nullptr;
    EXPECT_EQ(baton_open(bad, "x", 4096, &s, nullptr, nullptr), BATON_EINVAL);
  }
}

// A fork's child gets the parent's baton_t and segment handles in its
// copy of memory, but not the connection's state: its calls on them are
// refused, so the parent's go on unharmed (a session 36 trial saw the
// parent's commit hang for good once the child had used the handle).
TEST(Daemon, AForkedChildCannotUseItsParentsHandles) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "forked", 4 << 20, &s, nullptr, nullptr), 0) << baton_last_error();
  uint64_t g = 0;
  ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    uint64_t cg = 0;
    int code = 0;
    if (baton_commit(s, &cg) != BATON_EINVAL || std::strstr(baton_last_error(), "forked") == nullptr) code |= 1;
    if (baton_wait(s, g, 0, 100) != BATON_EINVAL) code |= 2;
    if (baton_unregister(s) != BATON_EINVAL) code |= 4;
    if (baton_delete(b, "forked") != BATON_EINVAL) code |= 8;
    baton_t* own = nullptr;  // its own connection works
    if (baton_connect(d.socket().c_str(), &own) != 0) code |= 16;
    baton_stop(own);
    baton_stop(b);  // leaves the parent's connection alone (a shutdown would end it)
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "bits: 1 commit, 2 wait, 4 unregister, 8 delete, 16 own connect";
  for (int i = 0; i < 20; ++i) {
    static_cast<unsigned char*>(baton_segment_data(s))[i] = static_cast<unsigned char>(i + 1);
    ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  }
  EXPECT_EQ(baton_wait(s, g, 0, 5000), 0) << baton_last_error();
  baton_stop(b);
}

// A posted commit (a small segment: the library copies it into the log
// and returns) to a batond that went away seconds ago fails at once; it
// returned success until the log was half full (a session 36 trial).
TEST(Daemon, APostedCommitToABatondGoneAwayFails) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "posted-gone", 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  uint64_t g = 0;
  ASSERT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  ASSERT_EQ(kill(d.pid(), SIGKILL), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(baton_commit(s, &g), BATON_EUNAVAIL);
  EXPECT_NE(std::string(baton_last_error()).find("went away"), std::string::npos) << baton_last_error();
  baton_stop(b);
}

// batond gone (killed): the library's periodic commits stop, with one
// warning, instead of trying again every period for as long as the
// application lives (a session 36 trial).
TEST(Daemon, PeriodicCommitsStopOnceBatondIsGone) {
  TempDir dir;
  Batond d(1, dir.path, "", "[snapshots]\nmode = \"copy-on-write\"\ncommit_every_ms = 5\n");
  const std::string log = dir.path + "/app.stderr";
  const int saved = dup(2);
  const int to = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(to, 0);
  ASSERT_EQ(dup2(to, 2), 2);
  close(to);
  baton_t* b = connect_to(d);
  baton_segment_t* s = nullptr;
  bool opened = b != nullptr && baton_open(b, "periodic-gone", 1 << 20, &s, nullptr, nullptr) == 0;
  if (opened) {
    auto* mem = static_cast<unsigned char*>(baton_segment_data(s));
    mem[0] = 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a periodic generation or two
    kill(d.pid(), SIGKILL);
    for (int i = 0; i < 150; ++i) {  // writes on: every period has something to commit
      mem[4096 * (i % 200)] = static_cast<unsigned char>(i);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  dup2(saved, 2);
  close(saved);
  ASSERT_TRUE(opened);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  size_t stops = 0;
  for (size_t at = text.find("periodic commits stop"); at != std::string::npos;
       at = text.find("periodic commits stop", at + 1))
    ++stops;
  EXPECT_EQ(stops, 1u) << text;
  EXPECT_EQ(text.find("periodic commit failed"), std::string::npos) << text;
  baton_stop(b);
}

// SIGHUP (a closed terminal, an operator's "reload") is logged and
// ignored: its default action ended batond unlogged, its socket left
// behind (a session 36 operator trial).
TEST(Daemon, SighupDoesNotStopIt) {
  TempDir dir;
  Batond d(1, dir.path);
  ASSERT_EQ(kill(d.pid(), SIGHUP), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int status = 0;
  EXPECT_EQ(waitpid(d.pid(), &status, WNOHANG), 0) << "batond ended on SIGHUP";
  baton_t* b = connect_to(d);
  ASSERT_NE(b, nullptr);
  baton_stop(b);
}

// A second batond on a socket a live one serves is refused before it
// starts anything, and the first keeps its clients and its socket (the
// second took the socket over, and unlinked it when it stopped: the first
// ran on unreachable; a session 36 operator trial).
TEST(Daemon, ASecondBatondOnALiveSocketIsRefused) {
  TempDir dir;
  Batond d(1, dir.path);
  const std::string other = dir.path + "/other.toml";
  std::ofstream(other) << "[node]\nid = 3\nname = \"intruder\"\n[client]\nsocket = \"" << d.socket()
                       << "\"\n[log]\nlevel = \"warn\"\n";
  for (const char* check : {"--check", ""}) {
    std::vector<std::string> args{baton::test::helper("BATOND"), "--config", other};
    if (*check != '\0') args.push_back(check);
    baton::test::Process second(args);
    EXPECT_EQ(second.wait(), 2) << (*check != '\0' ? "--check" : "a start");
  }
  auto c = baton::ipc::Client::connect(d.socket());
  ASSERT_TRUE(c) << c.error().message;
  auto text = (*c)->status();
  ASSERT_TRUE(text) << text.error().message;
  EXPECT_NE(text->find("\"name\":\"blade1\""), std::string::npos) << *text;
  // A stale socket (its batond killed) is taken over as before.
  ASSERT_EQ(kill(d.pid(), SIGKILL), 0);
  waitpid(d.pid(), nullptr, 0);
  baton::test::Process third({baton::test::helper("BATOND"), "--config", other});
  bool up = false;
  for (int i = 0; i < 300 && !up; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto probe = baton::ipc::Client::connect(d.socket());
    up = probe && (*probe)->status().has_value();
  }
  EXPECT_TRUE(up) << "a batond did not take over a stale socket";
}

// `batonctl status` (and events, groups: an OCF monitor's) against a
// batond that does not answer (stopped, SIGSTOP) ends with an error
// after BATON_STATUS_TIMEOUT_MS (10 s by default); it waited for as long
// as the stop lasted.
TEST(Daemon, StatusOfABatondThatDoesNotAnswerTimesOut) {
  TempDir dir;
  Batond d(1, dir.path);
  ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
  setenv("BATON_STATUS_TIMEOUT_MS", "500", 1);
  const auto t0 = std::chrono::steady_clock::now();
  auto c = baton::ipc::Client::connect(d.socket());  // its hello waits 500 ms, then goes ahead
  std::string why;
  if (c) {
    auto text = (*c)->status();
    EXPECT_FALSE(text);
    if (!text) why = text.error().message;
  } else {
    why = c.error().message;
  }
  unsetenv("BATON_STATUS_TIMEOUT_MS");
  const auto took = std::chrono::steady_clock::now() - t0;
  kill(d.pid(), SIGCONT);
  // The timeout bounds the whole command, the greeting included (it once
  // waited 2 s for the greeting and then the timeout again).
  EXPECT_GE(took, std::chrono::milliseconds(450));
  EXPECT_LT(took, std::chrono::milliseconds(1500));
  EXPECT_NE(why.find("it may be stopped or overloaded"), std::string::npos) << why;
}

}  // namespace

namespace {

// Global storage is in `batonctl status` (a session 37 storage trial: a
// failing directory was only a log line per generation): a line of its
// own, `storage` in the JSON, null when it is off. (Its counts and the
// failing WARNING are the engine's: GlobalStorage.AFailingDirectoryIsShownUntilItWorksAgain.)
TEST(Daemon, StatusShowsGlobalStorage) {
  if (std::getenv("BATONCTL") == nullptr) GTEST_SKIP() << "needs BATONCTL";
  TempDir dir;
  {
    Batond d(1, dir.path);
    EXPECT_NE(status_of(d).find("\"storage\":null"), std::string::npos) << status_of(d);
    EXPECT_EQ(status_of(d, false).find("global storage"), std::string::npos) << status_of(d, false);
  }
  const std::string store = dir.path + "/store";
  Batond d(2, dir.path, "", "[storage]\ndir = \"" + store + "\"\n");  // its own socket: the first left a stale one
  const std::string text = status_of(d, false);
  EXPECT_NE(text.find("global storage " + store + ": 0 generations written, 0 failed, 0 skipped"), std::string::npos)
      << text;
  EXPECT_EQ(text.find("WARNING"), std::string::npos) << text;
  EXPECT_NE(status_of(d).find("\"failing\":false"), std::string::npos) << status_of(d);
}

}  // namespace
