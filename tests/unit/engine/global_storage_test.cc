// Global storage (S7): every published generation also lands in a directory;
// a load falls back to it when no replica is alive; a write killed half-way
// or a corrupt file never hides the previous generation.

#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "../../common/cluster.h"
#include "../../common/scratch_dir.h"
#include "../../common/ok.h"
#include "storage/global_store.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using test::Cluster;
using test::eventually;

using test::ScratchDir;

EngineConfig with_global(const std::string& dir) {
  EngineConfig c = test::fast_detector();
  c.global_dir = dir;
  c.global_keep = 2;
  return c;
}

size_t files_of(const std::string& dir, const std::string& name, const std::string& suffix) {
  size_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir + "/" + name, ec))
    n += e.path().string().size() >= suffix.size() &&
         e.path().string().compare(e.path().string().size() - suffix.size(), suffix.size(), suffix) == 0;
  return n;
}

// Writes are asynchronous (their own thread): wait until `n` files exist.
bool eventually_files(const std::string& dir, const std::string& name, size_t n) {
  for (int i = 0; i < 500; ++i) {
    if (files_of(dir, name, ".seg") >= n) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// The file system answers a write hung in a FIFO's open: reads what the
// writer writes until nothing came for half a second. False if the FIFO
// cannot be opened.
bool answer_fifo(const std::string& fifo) {
  signal(SIGPIPE, SIG_IGN);
  const int rd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (rd < 0) return false;
  char buf[65536];
  for (int quiet = 0; quiet < 50;) {
    quiet = ::read(rd, buf, sizeof buf) > 0 ? 0 : quiet + 1;
    std::this_thread::sleep_for(10ms);
  }
  ::close(rd);
  return true;
}

TEST(GlobalStorage, LoadsWhenEveryReplicaIsGone) {
  ScratchDir dir;
  EngineConfig c = with_global(dir.path);
  c.replication_factor = 2;
  // A patient detector: a false suspicion on a slow (sanitizer) run would
  // re-replicate and leave a stale copy outside the recorded set, and a
  // load then rightly refuses to take ownership from it.
  c.heartbeat_interval_us = 5000;
  c.failure_timeout_us = 2'000'000;
  // Seven nodes: with the owner and both replicas dead, the four left are
  // still a quorum (a minority would refuse to take ownership at all).
  Cluster cl(7, c);
  auto seg = test::must(cl.node(1).create("precious", 300 * 1024));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 5);
  std::vector<std::byte> want(mem.begin(), mem.end());
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 2, 10s)));
  const auto replicas = test::must(cl.node(1).status(seg)).replicas;
  ASSERT_TRUE(eventually_files(dir.path, "precious", 2)) << "each replica writes its copy";
  uint16_t survivor = 2;
  while (survivor == replicas[0].first || survivor == replicas[1].first) ++survivor;
  cl.kill(1);
  cl.kill(replicas[0].first);
  cl.kill(replicas[1].first);
  auto loaded = cl.node(survivor).load("precious");
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  EXPECT_EQ(loaded->generation, g);
  auto got = cl.node(survivor).data(loaded->segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end()));
  // The event says where the state came from, and how old the copy is
  // (storage is behind the replicas by design).
  bool event = false;
  for (const auto& e : cl.node(survivor).events())
    event |= e.text.find("from global storage") != std::string::npos && e.text.find(" s ago") != std::string::npos;
  EXPECT_TRUE(event) << cl.events();
}

TEST(GlobalStorage, AHalfWrittenOrCorruptCopyNeverHidesThePreviousGeneration) {
  ScratchDir dir;
  Cluster cl(2, with_global(dir.path));
  auto seg = test::must(cl.node(1).create("careful", 8192));
  auto mem = cl.node(1).data(seg);
  std::memset(mem.data(), 1, mem.size());
  auto g1 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g1, 1, 10s)));
  ASSERT_TRUE(eventually_files(dir.path, "careful", 1));
  const std::string sdir = dir.path + "/careful/";
  // A newer write killed half-way: only its temp file exists.
  std::ofstream(sdir + "e1-g2-n2.seg.tmp") << "half a header";
  // A newer file that is complete in size but corrupt.
  fs::copy_file(sdir + "e1-g1-n2.seg", sdir + "e1-g3-n2.seg");
  {
    std::fstream f(sdir + "e1-g3-n2.seg", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-10, std::ios::end);
    f.put('\x7f');
  }
  auto copy = GlobalStore::newest(dir.path, "careful", 1 << 20);
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->generation, g1);
  std::vector<std::byte> bytes(copy->size);
  ASSERT_TRUE(GlobalStore::read(*copy, bytes));
  EXPECT_EQ(bytes[100], std::byte{1});
  GlobalCopy bad{sdir + "e1-g3-n2.seg", 1, 3, copy->size};
  auto r = GlobalStore::read(bad, bytes);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kCorrupt);
}

// A directory that stops taking writes is shown, not only logged once per
// generation: the replica's storage status says it is failing, since when
// and why, and that it works again once the directory does.
TEST(GlobalStorage, AFailingDirectoryIsShownUntilItWorksAgain) {
  ScratchDir dir;
  Cluster cl(2, with_global(dir.path));
  auto seg = test::must(cl.node(1).create("watched", 8192));
  auto mem = cl.node(1).data(seg);
  auto commit = [&](int v) {
    std::memset(mem.data(), v, mem.size());
    auto g = test::must(cl.node(1).commit(seg));
    EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s)));
    return g;
  };
  EXPECT_FALSE(cl.node(1).storage()->failing);
  commit(1);
  ASSERT_TRUE(eventually_files(dir.path, "watched", 1));
  // Counted once the file is renamed into place, pruned around, and noted
  // (an ASan run once looked between the rename and the count).
  std::optional<StorageStatus> healthy;
  ASSERT_TRUE(eventually([&] {
    healthy = cl.node(2).storage();
    return healthy && healthy->written >= 1 && healthy->last_write_age_ms != UINT64_MAX;
  }));
  EXPECT_EQ(healthy->dir, dir.path);
  EXPECT_GE(healthy->written, 1u);
  EXPECT_FALSE(healthy->failing);
  EXPECT_EQ(healthy->failed, 0u);
  EXPECT_TRUE(healthy->last_error.empty());
  EXPECT_LT(healthy->last_write_age_ms, 10'000u);

  // The segment's directory becomes a file: every write fails.
  fs::remove_all(dir.path + "/watched");
  std::ofstream(dir.path + "/watched") << "not a directory";
  commit(2);
  // Counted, then noted (failing, why): wait for both (an ASan run looked
  // between the two).
  std::optional<StorageStatus> failing;
  ASSERT_TRUE(eventually([&] {
    failing = cl.node(2).storage();
    return failing && failing->failed >= 1 && failing->failing;
  }));
  EXPECT_TRUE(failing->failing);
  EXPECT_NE(failing->last_error.find(dir.path + "/watched"), std::string::npos) << failing->last_error;
  EXPECT_GE(failing->last_error_age_ms, 1u);
  commit(3);
  ASSERT_TRUE(eventually([&] { return cl.node(2).storage()->failed >= 2; }));
  EXPECT_TRUE(cl.node(2).storage()->failing);

  // Fixed: the newest generation is written without another commit (the
  // failed write is tried again), and the failure is history.
  fs::remove(dir.path + "/watched");
  ASSERT_TRUE(test::eventually([&] { return !cl.node(2).storage()->failing; }, 40s));
  auto again = cl.node(2).storage();
  EXPECT_EQ(again->failing_for_ms, 0u);
  EXPECT_FALSE(again->last_error.empty()) << "the last failure stays visible";
  auto copy = GlobalStore::newest(dir.path, "watched", 1 << 20);
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->generation, 3u) << "the newest committed generation, tried again";
  EXPECT_EQ(cl.node(1).storage()->failed, 0u) << "the owner writes nothing: its replicas do";
}

// A storage write that hangs (an NFS server gone, simulated by a FIFO
// where the writer makes its temp file: its open blocks until someone
// reads) holds no replica slot: durability is the replicas' and goes on.
// Once the write ends, the newest generation is written. Before, each
// queued write pinned its slot, and with two slots per replica the third
// generation found none: no generation was durable again until the file
// system answered (a session 37 storage trial).
TEST(GlobalStorage, AHungWriteNeverStopsDurability) {
  ScratchDir dir;
  Cluster cl(2, with_global(dir.path));
  auto seg = test::must(cl.node(1).create("patient", 64 * 1024));
  auto mem = cl.node(1).data(seg);
  std::memset(mem.data(), 1, mem.size());
  const uint64_t g1 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g1, 1, 10s)));
  // Written, and pruned (counted after its prune, which removes this
  // node's temp files: it would take a FIFO made before).
  ASSERT_TRUE(eventually([&] { return cl.node(2).storage()->written == 1; }));
  // A FIFO at every generation's temp name to come: whichever the writer
  // takes (a newer copy may replace a waiting one), it hangs in its open.
  std::vector<std::string> fifos;
  for (uint64_t g = g1 + 1; g <= g1 + 39; ++g) {
    fifos.push_back(dir.path + "/patient/e1-g" + std::to_string(g) + "-n2.seg.tmp");
    ASSERT_EQ(mkfifo(fifos.back().c_str(), 0600), 0);
  }
  // The file system answers again (at the latest when the test ends, so
  // that the engine can stop): a reader takes what the stuck writes
  // wrote. Opened read-write, the FIFOs never block it nor leave a writer
  // without a reader; it stops once nothing came for 3 s.
  signal(SIGPIPE, SIG_IGN);
  struct Drain {
    std::vector<std::string> paths;
    std::thread reader;
    void start() {
      if (reader.joinable()) return;
      reader = std::thread([ps = paths] {
        std::vector<pollfd> fds;
        for (const auto& p : ps)
          if (const int fd = ::open(p.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK); fd >= 0) fds.push_back({fd, POLLIN, 0});
        char buf[65536];
        while (!fds.empty() && ::poll(fds.data(), fds.size(), 3000) > 0)
          for (auto& f : fds)
            if (f.revents & POLLIN) (void)::read(f.fd, buf, sizeof buf);
        for (auto& f : fds) ::close(f.fd);
      });
    }
    ~Drain() {
      start();
      reader.join();
    }
  } drain{fifos, {}};
  uint64_t last = 0;
  for (int i = 2; i <= 40; ++i) {
    std::memset(mem.data(), i, mem.size());
    last = test::must(cl.node(1).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, last, 1, 10s))) << "generation " << last;
  }
  EXPECT_EQ(cl.node(2).storage()->written, 1u) << "the writer is stuck in a FIFO's open";
  // The stuck write ends (it fails: a FIFO cannot be synced, and goes),
  // and the newest generation follows (its FIFO gone with its first try).
  drain.start();
  ASSERT_TRUE(test::eventually([&] {
    auto copy = GlobalStore::newest(dir.path, "patient", 1 << 20);
    return copy && copy->generation == last;
  }, 30s));
  std::vector<std::byte> bytes(mem.size());
  auto copy = GlobalStore::newest(dir.path, "patient", 1 << 20);
  ASSERT_TRUE(GlobalStore::read(*copy, bytes));
  EXPECT_EQ(bytes[0], std::byte{40});
}

// A stop writes what waits for global storage while the writes get
// somewhere, but a write that hangs (a FIFO at its temp name) is given up
// after global_stop_wait_ms: before, the stop joined the writer and never
// returned, so batond could not be stopped while its file system hung.
// Once the file system answers, the writer left behind ends and frees
// what it had (a leak the sanitizer builds would show).
TEST(GlobalStorage, AStopDoesNotWaitForAHungWrite) {
  ScratchDir dir;
  EngineConfig c = with_global(dir.path);
  c.global_stop_wait_ms = 300;
  Cluster cl(2, c);
  auto seg = test::must(cl.node(1).create("stuck", 64 * 1024));
  auto mem = cl.node(1).data(seg);
  std::memset(mem.data(), 1, mem.size());
  const uint64_t g1 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g1, 1, 10s)));
  ASSERT_TRUE(eventually([&] { return cl.node(2).storage()->written == 1; }));
  const std::string fifo = dir.path + "/stuck/e1-g" + std::to_string(g1 + 1) + "-n2.seg.tmp";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::memset(mem.data(), 2, mem.size());
  const uint64_t g2 = test::must(cl.node(1).commit(seg));
  ASSERT_EQ(g2, g1 + 1);
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, 1, 10s)));
  // The writer is in the FIFO's open once the copy left the queue; a
  // moment more and it is surely blocked there.
  std::this_thread::sleep_for(200ms);
  ASSERT_EQ(cl.node(2).storage()->written, 1u);
  auto stopped = std::async(std::launch::async, [&] { cl.kill(2); });
  EXPECT_EQ(stopped.wait_for(5s), std::future_status::ready) << "the stop waits for the hung write";
  // The file system answers: the writer left behind gets a reader, fails
  // its sync on the FIFO, and ends (and so does a stop that waited for it).
  ASSERT_TRUE(answer_fifo(fifo));
  stopped.wait();
  // The other node, and everything it holds, goes on.
  std::memset(mem.data(), 3, mem.size());
  EXPECT_TRUE(cl.node(1).commit(seg));
}

// A generation global storage had no room for (its writer stuck, the
// copies waiting at their budget) is offered again once there is room:
// before, it waited for the segment's next commit, and with none it was
// never stored, so a whole-cluster restart restored an older generation.
TEST(GlobalStorage, AGenerationSkippedForWantOfRoomIsStoredLater) {
  ScratchDir dir;
  EngineConfig c = with_global(dir.path);
  c.global_buffer_mib = 1;  // two 512 KiB copies: the one stuck and one more
  Cluster cl(2, c);
  constexpr uint64_t kSize = 512 * 1024;
  std::vector<Segment*> segs;
  for (const char* name : {"a", "b", "c"}) segs.push_back(test::must(cl.node(1).create(name, kSize)));
  const std::string fifo = dir.path + "/a/e1-g1-n2.seg.tmp";
  fs::create_directories(dir.path + "/a");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::vector<uint64_t> gens;
  for (size_t i = 0; i < segs.size(); ++i) {
    std::memset(cl.node(1).data(segs[i]).data(), static_cast<int>(i + 1), kSize);
    gens.push_back(test::must(cl.node(1).commit(segs[i])));
    ASSERT_EQ(gens.back(), 1u);
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(segs[i], gens.back(), 1, 10s)));
    if (i == 0) std::this_thread::sleep_for(100ms);  // the writer takes a's copy, and hangs in its open
  }
  ASSERT_TRUE(eventually([&] { return cl.node(2).storage()->skipped >= 1; })) << "c's copy had no room";
  // The file system answers: a's write fails on the FIFO (tried again
  // later), b's goes, and c is offered again, with no commit to bring it.
  ASSERT_TRUE(answer_fifo(fifo));
  for (const char* name : {"a", "b", "c"}) {
    std::optional<GlobalCopy> copy;
    EXPECT_TRUE(eventually([&] { return (copy = GlobalStore::newest(dir.path, name, 1 << 20)).has_value(); }, 15s))
        << name << " was never stored";
  }
}

// Global storage is behind the replicas by design. A node that restarted
// (here with the owner's other replica: a quorum of three that knows
// nothing) restores nothing from it while a peer it has not heard yet may
// hold a newer generation: that peer would drop its copy for the epoch
// the restore takes (a session 37 review of the fresh-start wait).
TEST(GlobalStorage, ARestartedNodeRestoresFromStorageOnlyOnceItHeardEveryPeer) {
  ScratchDir dir;
  EngineConfig c = with_global(dir.path);
  c.replication_factor = 2;
  c.fresh_start_wait_ms = 6000;
  // A peer never heard whose link is up may be starting: a query waits for
  // it up to the soft deadline. fast_detector's is 20 s (so that a test
  // waiting for the dead shows); the isolated keeper is such a peer.
  c.query_timeout_ms = 300;
  Cluster cl(3, c);
  auto seg = test::must(cl.node(1).create("behind", 8192));
  uint64_t g = 0;
  for (int i = 1; i <= 3; ++i) {
    std::memset(cl.node(1).data(seg).data(), i, 8192);
    g = test::must(cl.node(1).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  }
  ASSERT_TRUE(eventually([&] { return GlobalStore::newest(dir.path, "behind", 1 << 20).has_value(); }));
  const auto replicas = test::must(cl.node(1).status(seg)).replicas;
  ASSERT_EQ(replicas.size(), 2u);
  const int lost = replicas[0].first, keeper = replicas[1].first;
  cl.isolate(keeper, true);
  cl.kill(1);
  cl.kill(lost);
  cl.restart(1);
  cl.restart(lost);
  ASSERT_TRUE(eventually([&] { return test::peer_alive(cl.node(1), static_cast<uint16_t>(lost)); }));
  auto early = cl.node(1).open("behind", 8192);
  ASSERT_FALSE(early) << "restored from storage while node " << keeper << " was unheard" << cl.events();
  EXPECT_EQ(early.error().code, Errc::kUnavailable) << early.error().to_string();
  auto load = cl.node(lost).load("behind");
  ASSERT_FALSE(load);
  EXPECT_EQ(load.error().code, Errc::kUnavailable) << load.error().to_string();
  cl.isolate(keeper, false);
  Result<OpenResult> r = tl::unexpected(Error{});
  ASSERT_TRUE(eventually([&] { return (r = cl.node(1).open("behind", 8192)).has_value(); }, 20s))
      << r.error().to_string();
  EXPECT_EQ(r->generation, g);
  EXPECT_EQ(cl.node(1).data(r->segment)[0], std::byte{3});
}

// Names are not paths. "victim/.", "./victim" and "../escape" were once
// taken as they stand: the first wrote into (and pruned, and deleted)
// segment victim's directory, the second read it, the third wrote outside
// the storage directory. Each name now has a directory of its own, and a
// copy whose header names another segment is not read as this one.
TEST(GlobalStorage, EveryNameHasADirectoryOfItsOwnAndNoneEscapes) {
  ScratchDir root;
  const std::string dir = root.path + "/store";
  fs::create_directories(dir);
  Cluster cl(2, with_global(dir));
  const std::vector<std::string> names{"victim", "victim/.", "./victim", "../escape", "%2Fx", "/x", ".", ".."};
  std::vector<uint64_t> gens;
  for (size_t i = 0; i < names.size(); ++i) {
    auto seg = test::must(cl.node(1).create(names[i], 4096));
    std::memset(cl.node(1).data(seg).data(), static_cast<int>(i + 1), 4096);
    gens.push_back(test::must(cl.node(1).commit(seg)));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gens.back(), 1, 10s)));
  }
  std::vector<std::byte> bytes(4096);
  for (size_t i = 0; i < names.size(); ++i) {
    std::optional<GlobalCopy> copy;
    ASSERT_TRUE(eventually([&] { return (copy = GlobalStore::newest(dir, names[i], 1 << 20)).has_value(); }))
        << names[i];
    ASSERT_TRUE(GlobalStore::read(*copy, bytes)) << names[i];
    EXPECT_EQ(bytes[0], std::byte(i + 1)) << names[i] << " read another segment's copy";
  }
  // Deleting one name leaves every other's copies: "%2Fx" once named the
  // directory that "/x" has now.
  {
    auto gone = GlobalStore::newest(dir, "%2Fx", 1 << 20);
    ASSERT_TRUE(gone);
    ASSERT_TRUE(GlobalStore::remove(dir, "%2Fx", gone->epoch));
    EXPECT_FALSE(GlobalStore::newest(dir, "%2Fx", 1 << 20));
    for (const std::string& other : names)
      if (other != "%2Fx") {
        EXPECT_TRUE(GlobalStore::newest(dir, other, 1 << 20)) << other << " went with %2Fx";
      }
  }
  // Nothing but the store's own directories, one per name, all inside it.
  std::set<std::string> inside;
  for (const auto& e : fs::directory_iterator(dir)) inside.insert(e.path().filename().string());
  EXPECT_EQ(inside.size(), names.size());
  for (const auto& e : fs::directory_iterator(root.path))
    EXPECT_EQ(e.path().filename().string(), "store") << "written outside the store: " << e.path();
  // A file moved under another name's directory is refused by its header.
  std::string victim_file;
  for (const auto& e : fs::directory_iterator(dir + "/victim")) victim_file = e.path().filename().string();
  std::string other_dir;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != "victim") other_dir = e.path().string();
  unsigned long epoch = 0, generation = 0;
  ASSERT_EQ(std::sscanf(victim_file.c_str(), "e%lu-g%lu", &epoch, &generation), 2) << victim_file;
  fs::copy_file(dir + "/victim/" + victim_file, other_dir + "/" + victim_file, fs::copy_options::overwrite_existing);
  GlobalCopy moved{other_dir + "/" + victim_file, epoch, generation, 4096, "somebody-else"};
  auto r = GlobalStore::read(moved, bytes);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kCorrupt);
}

// A name that is escaped now kept its copies under the name as a path
// before: they are still read (their header says whose they are), and a
// delete marks that directory too.
TEST(GlobalStorage, CopiesStoredBeforeTheEscapingAreStillFoundAndDeleted) {
  ScratchDir root;
  const std::string dir = root.path + "/store";
  fs::create_directories(dir);
  {
    Cluster cl(2, with_global(dir));
    auto seg = test::must(cl.node(1).create("orders/eu", 4096));
    std::memset(cl.node(1).data(seg).data(), 7, 4096);
    const uint64_t g = test::must(cl.node(1).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s)));
    ASSERT_TRUE(eventually([&] { return GlobalStore::newest(dir, "orders/eu", 1 << 20).has_value(); }));
  }
  // Where the version before the escaping put it.
  fs::create_directories(dir + "/orders/eu");
  for (const auto& e : fs::directory_iterator(dir + "/orders%2Feu"))
    fs::copy_file(e.path(), dir + "/orders/eu/" + e.path().filename().string());
  fs::remove_all(dir + "/orders%2Feu");
  auto copy = GlobalStore::newest(dir, "orders/eu", 1 << 20);
  ASSERT_TRUE(copy) << "a copy stored before the escaping was lost";
  std::vector<std::byte> bytes(4096);
  ASSERT_TRUE(GlobalStore::read(*copy, bytes));
  EXPECT_EQ(bytes[0], std::byte{7});
  EXPECT_FALSE(GlobalStore::newest(dir, "orders", 1 << 20)) << "segment orders read a copy of orders/eu";
  ASSERT_TRUE(GlobalStore::remove(dir, "orders/eu", copy->epoch));
  EXPECT_FALSE(GlobalStore::newest(dir, "orders/eu", 1 << 20)) << "a deleted copy came back";
  EXPECT_GE(GlobalStore::deleted_epoch(dir, "orders/eu"), copy->epoch);
  size_t marks = 0;
  for (const auto& e : fs::directory_iterator(dir + "/orders/eu"))
    marks += e.path().filename().string().rfind("deleted-e", 0) == 0;
  EXPECT_EQ(marks, 1u) << "the old directory was not marked";
}

TEST(GlobalStorage, KeepsTheNewestNAndOpenRestoresFromIt) {
  ScratchDir dir;
  Cluster cl(2, with_global(dir.path));
  auto seg = test::must(cl.node(1).create("rolling", 4096));
  auto mem = cl.node(1).data(seg);
  uint64_t g = 0;
  for (uint8_t i = 1; i <= 5; ++i) {
    std::memset(mem.data(), i, mem.size());
    g = test::must(cl.node(1).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s)));
    ASSERT_TRUE(eventually_files(dir.path, "rolling", std::min<size_t>(i, 2)));
  }
  // Writes and prunes run on their own thread: wait for the last of each.
  auto settled = [&] {
    auto newest = GlobalStore::newest(dir.path, "rolling", 1 << 20);
    return newest && newest->generation == g && files_of(dir.path, "rolling", ".seg") == 2;
  };
  ASSERT_TRUE(eventually(settled)) << files_of(dir.path, "rolling", ".seg") << " files, keep = 2";
  std::this_thread::sleep_for(50ms);  // nothing more is pruned
  EXPECT_EQ(files_of(dir.path, "rolling", ".seg"), 2u) << "keep = 2";
  // Every node gone: a new engine on the same storage restores, not creates.
  cl.kill(1);
  cl.kill(2);
  EngineConfig c = with_global(dir.path);
  c.node_id = 9;
  auto fresh = Engine::start(c, {});
  ASSERT_TRUE(fresh);
  auto opened = (*fresh)->open("rolling", 4096);
  ASSERT_TRUE(opened) << opened.error().to_string();
  EXPECT_EQ(opened->outcome, OpenOutcome::kRestored);
  EXPECT_EQ(opened->generation, g);
  EXPECT_EQ((*fresh)->data(opened->segment)[0], std::byte{5});
}

// A write still queued or in flight when its name is deleted never leaves a
// file behind; a newer history's write does.
TEST(GlobalStorage, AWriteUnderADeleteMarkerLeavesNoFile) {
  ScratchDir dir;
  auto store = GlobalStore::open(dir.path, 2, 4);
  ASSERT_TRUE(store) << store.error().to_string();
  ASSERT_TRUE(GlobalStore::remove(dir.path, "late", 5));
  EXPECT_EQ(GlobalStore::deleted_epoch(dir.path, "late"), 5u);
  std::vector<std::byte> bytes(4096, std::byte{3});
  auto write = [&](uint64_t epoch, uint64_t gen) {
    std::atomic<uint32_t> pin{1};
    GlobalStore::Job job;
    ASSERT_TRUE(job.set_name("late"));
    job.epoch = epoch;
    job.generation = gen;
    job.size = bytes.size();
    job.data = bytes.data();
    job.pin = &pin;
    ASSERT_TRUE((*store)->submit(job, 1));
    ASSERT_TRUE(eventually([&] { return pin.load() == 0; })) << "the slot is let go once copied";
  };
  write(5, 1);  // the deleted history's last generation
  EXPECT_TRUE(eventually([&] { return (*store)->dropped() == 1; }));
  EXPECT_EQ(files_of(dir.path, "late", ".seg"), 0u);
  EXPECT_FALSE(GlobalStore::newest(dir.path, "late", 1 << 20));
  write(6, 1);  // the name's next history
  EXPECT_TRUE(eventually([&] { return (*store)->written() == 1; }));
  auto copy = GlobalStore::newest(dir.path, "late", 1 << 20);
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->epoch, 6u);
  // A later delete replaces the marker and removes the copy; an older one
  // changes nothing.
  ASSERT_TRUE(GlobalStore::remove(dir.path, "late", 6));
  ASSERT_TRUE(GlobalStore::remove(dir.path, "late", 2));
  EXPECT_EQ(GlobalStore::deleted_epoch(dir.path, "late"), 6u);
  EXPECT_EQ(files_of(dir.path, "late", ".seg"), 0u);
  EXPECT_EQ(files_of(dir.path, "late", ""), 1u) << "one marker, nothing else";
  EXPECT_EQ(GlobalStore::remove(dir.path, "bad name", 3).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(GlobalStore::remove(dir.path, "late", 0).error().code, Errc::kInvalidArgument);
}

TEST(GlobalStorage, RejectsBadSettings) {
  EXPECT_EQ(GlobalStore::open("", 2, 1).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(GlobalStore::open("/tmp/baton-global-bad", 0, 1).error().code, Errc::kInvalidArgument);
  auto unwritable = GlobalStore::open("/proc/baton-cannot-be-here", 2, 1);
  ASSERT_FALSE(unwritable);
  EXPECT_EQ(unwritable.error().code, Errc::kIo);
  EngineConfig c;
  c.global_dir = "/proc/baton-cannot-be-here";
  auto e = Engine::start(c, {});
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, Errc::kIo);
  EXPECT_FALSE(GlobalStore::newest("/tmp", "bad name", 1 << 20)) << "names are validated";
  EXPECT_FALSE(GlobalStore::newest("", "x", 1 << 20));
}

}  // namespace
}  // namespace baton
