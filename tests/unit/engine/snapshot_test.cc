// Incremental snapshots (issue #10, S15): a commit copies only the chunks
// written since the stage's previous snapshot, found by the kernel's write
// tracking (DirtyTracker), named by the application (CommitOptions::written)
// or, failing both, all of them. Every replicated generation must still be
// byte-exact whatever wrote the memory and however the writes fell.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "../../common/cluster.h"
#include "../../common/mapping.h"
#include "../../common/ok.h"
#include "segment/copy_on_write.h"
#include "segment/dirty_tracker.h"
#include "segment/local_storage.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;

const long kPage = sysconf(_SC_PAGESIZE);

#define SKIP_WITHOUT_TRACKING()                                                   \
  if (!DirtyTracker::unavailable_reason().empty())                                \
  GTEST_SKIP() << "this kernel cannot track writes: " << DirtyTracker::unavailable_reason()

/// A fresh shared memfd mapping, never touched (no page populated yet).
using Mapping = test::SharedMapping;

std::vector<std::pair<uint64_t, uint64_t>> collect(DirtyTracker& t) {
  std::vector<std::pair<uint64_t, uint64_t>> got;
  auto ok = t.collect([&](uint64_t off, uint64_t len) { got.emplace_back(off, len); });
  EXPECT_TRUE(test::ok(ok));
  return got;
}

TEST(DirtyTracker, ReportsExactlyThePagesWrittenSinceTheLastCollect) {
  SKIP_WITHOUT_TRACKING();
  Mapping m(256 * kPage);
  std::memset(m.p, 1, 128 * kPage);  // half populated, half never touched
  auto t = test::must(DirtyTracker::attach(m.p, m.len));
  EXPECT_TRUE(collect(*t).empty()) << "nothing written since attach";

  m.p[0] = std::byte{2};
  m.p[5 * kPage + 17] = std::byte{2};
  m.p[6 * kPage] = std::byte{2};       // merges with page 5
  m.p[200 * kPage + 9] = std::byte{2};  // a page never populated before
  using R = std::pair<uint64_t, uint64_t>;
  const uint64_t pg = static_cast<uint64_t>(kPage);
  EXPECT_EQ(collect(*t), (std::vector<R>{{0, pg}, {5 * pg, 2 * pg}, {200 * pg, pg}}));
  EXPECT_TRUE(collect(*t).empty()) << "collect write-protects again";

  // A write by the kernel into the mapping (read(2) from a pipe) counts too.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(write(fds[1], "kernel", 6), 6);
  ASSERT_EQ(read(fds[0], m.p + 77 * kPage, 6), 6);
  close(fds[0]);
  close(fds[1]);
  EXPECT_EQ(collect(*t), (std::vector<R>{{77 * pg, pg}}));

  // Disarmed, writes are not reported; armed again, they are.
  t->disarm();
  EXPECT_FALSE(test::ok(t->collect([](uint64_t, uint64_t) {})));
  m.p[3 * kPage] = std::byte{3};
  ASSERT_TRUE(test::ok(t->arm()));
  EXPECT_TRUE(collect(*t).empty());
  m.p[4 * kPage] = std::byte{3};
  EXPECT_EQ(collect(*t), (std::vector<R>{{4 * pg, pg}}));
}

TEST(DirtyTracker, WritesThroughAnotherMappingAreNotSeen) {
  // Why the engine stops tracking a segment whose memfd it handed out.
  SKIP_WITHOUT_TRACKING();
  Mapping m(16 * kPage);
  std::memset(m.p, 1, m.len);
  auto t = test::must(DirtyTracker::attach(m.p, m.len));
  ASSERT_EQ(pwrite(m.fd, "x", 1, 3 * kPage), 1);
  EXPECT_TRUE(collect(*t).empty());
}

struct Mode {
  const char* name;
  bool track;         // EngineConfig::track_writes
  bool pass_ranges;   // the test names what it wrote (CommitOptions::written)
  bool cow = false;   // EngineConfig::SnapshotMode::kCopyOnWrite (cow_test.cc has more)
};

class SnapshotModes : public ::testing::TestWithParam<Mode> {};

// Random writes between commits: a few bytes, a few pages, across chunk
// boundaries, now and then most of the segment (the tracker rests, then is
// armed again). Every generation on the replica equals the memory at its
// commit.
TEST_P(SnapshotModes, EveryGenerationIsByteExact) {
  const Mode mode = GetParam();
  EngineConfig c;
  c.track_writes = mode.track;
  if (mode.cow) c.snapshot_mode = EngineConfig::SnapshotMode::kCopyOnWrite;
  Cluster cl(2, c);
  constexpr uint64_t kSize = 1 << 20;  // 64+ chunks; small enough for ThreadSanitizer
  auto seg = test::must(cl.node(1).create("incremental", kSize));
  auto mem = cl.node(1).data(seg);
  const bool tracked = mode.cow ? CopyOnWrite::unavailable_reason().empty()
                                : mode.track && DirtyTracker::unavailable_reason().empty();
  EXPECT_EQ(test::must(cl.node(1).status(seg)).writes_tracked, tracked);
  std::mt19937_64 rng(7);
  const auto before = cl.node(1).stats();
  for (int g = 1; g <= 80; ++g) {
    std::vector<std::pair<uint64_t, uint64_t>> wrote;
    const bool most = g % 29 == 0;
    const int writes = most ? 1 : 1 + static_cast<int>(rng() % 6);
    for (int w = 0; w < writes; ++w) {
      uint64_t len = most ? kSize * 3 / 4 : 1 + rng() % (3 * kPage);
      uint64_t off = rng() % (kSize - len + 1);
      if (most)
        std::memset(mem.data() + off, g, len);
      else
        for (uint64_t i = 0; i < len; ++i) mem[off + i] = std::byte(static_cast<uint8_t>(rng()));
      wrote.emplace_back(off, len);
    }
    CommitOptions o;
    if (mode.pass_ranges) o.written = wrote;
    const auto want = std::vector<std::byte>(mem.begin(), mem.end());
    const uint64_t gen = test::must(cl.node(1).commit(seg, o));
    ASSERT_EQ(gen, static_cast<uint64_t>(g));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, 1, 10s)));
    auto rep = test::must(cl.node(2).read_replica("incremental", gen));
    ASSERT_TRUE(rep == want) << "generation " << g << " differs on the replica";
  }
  const auto after = cl.node(1).stats();
  const uint64_t copied = after.snapshot_chunks_copied - before.snapshot_chunks_copied;
  const uint64_t skipped = after.snapshot_chunks_skipped - before.snapshot_chunks_skipped;
  if (tracked || mode.pass_ranges) {
    EXPECT_GT(skipped, copied) << "sparse writes: most chunks are unchanged";
    EXPECT_GT(after.deltas_sent - before.deltas_sent, 40u) << "and only they travel";
    EXPECT_GT(cl.node(2).stats().deltas_published, 40u);
  } else {
    EXPECT_EQ(skipped, 0u) << "untracked: every chunk is copied";
    EXPECT_EQ(after.deltas_sent, 0u) << "untracked: every generation travels whole";
  }
}

// Deltas across many generations while the replica set changes under them:
// a replica restarts (its copy is gone: it asks for the next generation
// whole), another is killed and a new node takes its slot (whole, then
// deltas), and with older generations retained (a delta's shadow is then
// several deltas behind). Every generation on every replica is the exact
// memory at its commit.
TEST(Snapshot, DeltasStayExactAcrossRestartsAndReplacements) {
  EngineConfig c;
  c.replication_factor = 2;
  c.retain = 2;
  Cluster cl(4, c);
  constexpr uint64_t kSize = 1 << 20;
  auto seg = test::must(cl.node(1).create("deltas", kSize));
  auto mem = cl.node(1).data(seg);
  std::mt19937_64 rng(5);
  for (size_t i = 0; i < kSize; i += 8) mem[i] = std::byte(static_cast<uint8_t>(rng()));
  std::vector<int> dead;
  for (int g = 1; g <= 240; ++g) {
    const int writes = 1 + static_cast<int>(rng() % 4);
    for (int w = 0; w < writes; ++w) {
      const uint64_t len = 1 + rng() % 20000, off = rng() % (kSize - len);
      for (uint64_t i = 0; i < len; i += 61) mem[off + i] = std::byte(static_cast<uint8_t>(rng()));
    }
    const auto want = std::vector<std::byte>(mem.begin(), mem.end());
    const uint64_t gen = test::must(cl.node(1).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, 2, 20s))) << "generation " << g;
    for (const auto& [node, held] : test::must(cl.node(1).status(seg)).replicas) {
      auto rep = test::must(cl.node(node).read_replica("deltas", gen));
      ASSERT_TRUE(rep == want) << "generation " << g << " differs on node " << node;
    }
    const auto replicas = test::must(cl.node(1).status(seg)).replicas;
    if (g == 60) cl.restart(replicas.at(0).first);  // it comes back empty
    if (g == 120) {  // killed for good: the fourth node takes the slot
      cl.kill(replicas.at(1).first);
      dead.push_back(replicas.at(1).first);
    }
  }
  const auto st = cl.node(1).stats();
  EXPECT_GT(st.deltas_sent, 300u);
  EXPECT_GE(st.wholes_sent, 4u) << "the first generation, and one per replica that lost or never had its base";
}

// Nodes that chunk differently (EngineConfig::chunk_size; batond's
// `chunk_kib` changed one daemon at a time): node 2 cuts 12 KiB chunks,
// the others 4 KiB. A replica whose base is chunked otherwise than a delta
// cannot apply it and takes the generation whole; every generation on
// every replica is still the memory at its commit, through a takeover by
// node 2 and a new replica that chunks like the first owner.
TEST(Snapshot, NodesThatChunkDifferentlyStayExact) {
  EngineConfig c;
  c.replication_factor = 2;
  c.chunk_size = 4096;
  Cluster cl(3, c, 32768, [](int node, EngineConfig& n) {
    if (node == 2) n.chunk_size = 12288;
  });
  constexpr uint64_t kSize = 1 << 20;
  std::mt19937_64 rng(11);
  const auto write_some = [&rng](std::span<std::byte> mem) {
    for (int w = 0; w < 3; ++w) {
      const uint64_t len = 1 + rng() % 9000, off = rng() % (mem.size() - len);
      for (uint64_t i = 0; i < len; i += 37) mem[off + i] = std::byte(static_cast<uint8_t>(rng()));
    }
  };
  uint32_t replicas = 2;
  const auto commit_and_check = [&cl, &replicas](int owner, Segment* seg, const char* name, int round) {
    auto mem = cl.node(owner).data(seg);
    const auto want = std::vector<std::byte>(mem.begin(), mem.end());
    const uint64_t gen = test::must(cl.node(owner).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(owner).wait_replicated(seg, gen, replicas, 20s))) << "round " << round << cl.events();
    for (const auto& [node, held] : test::must(cl.node(owner).status(seg)).replicas) {
      if (held != gen || cl.engines.at(node - 1) == nullptr) continue;  // a killed replica, not yet out of the set
      auto rep = test::must(cl.node(node).read_replica(name, gen));
      ASSERT_TRUE(rep == want) << "round " << round << ": generation " << gen << " differs on node " << node;
    }
  };
  auto seg = test::must(cl.node(1).create("rechunk", kSize));
  for (int r = 0; r < 20; ++r) {
    write_some(cl.node(1).data(seg));
    ASSERT_NO_FATAL_FAILURE(commit_and_check(1, seg, "rechunk", r));
  }
  EXPECT_GT(cl.node(1).stats().deltas_sent, 20u) << "node 1 sends deltas to both replicas";
  const auto before = std::vector<std::byte>(cl.node(1).data(seg).begin(), cl.node(1).data(seg).end());
  cl.kill(1);
  auto moved = test::must(cl.node(2).load("rechunk"));
  auto mem = cl.node(2).data(moved.segment);
  ASSERT_TRUE(std::vector<std::byte>(mem.begin(), mem.end()) == before) << "the load is the last generation";
  cl.restart(1);  // back empty, 4 KiB chunks: the second replica
  for (int r = 20; r < 60; ++r) {
    write_some(cl.node(2).data(moved.segment));
    ASSERT_NO_FATAL_FAILURE(commit_and_check(2, moved.segment, "rechunk", r));
    if (r == 40) {  // node 1 is the one replica left
      cl.kill(3);
      replicas = 1;
    }
  }
  const auto st = cl.node(2).stats();
  EXPECT_GE(st.wholes_sent, 2u) << "node 3's base and node 1's are chunked otherwise, or absent";
  EXPECT_GT(st.deltas_sent, 20u) << "after a whole copy, deltas in node 2's own chunking";
}

INSTANTIATE_TEST_SUITE_P(Snapshot, SnapshotModes,
                         ::testing::Values(Mode{"tracked", true, false}, Mode{"untracked", false, false},
                                           Mode{"ranges", false, true}, Mode{"tracked_and_ranges", true, true},
                                           Mode{"copy_on_write", true, false, true},
                                           Mode{"copy_on_write_and_ranges", true, true, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Snapshot, HandingOutTheMemfdStopsTracking) {
  Cluster cl(2);
  auto seg = test::must(cl.node(1).create("shared-out", 1 << 20));
  auto mem = cl.node(1).data(seg);
  mem[0] = std::byte{1};
  auto g1 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g1, 1, 10s)));
  // Another mapping of the same memory, as batond's client has: the
  // engine's tracker cannot see writes through it.
  const int fd = cl.node(1).memory_fd(seg);
  ASSERT_GE(fd, 0);
  auto* other = static_cast<std::byte*>(mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(other, MAP_FAILED);
  other[500'000] = std::byte{0x5a};
  auto g2 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, 1, 10s)));
  auto rep = test::must(cl.node(2).read_replica("shared-out", g2));
  EXPECT_EQ(rep[500'000], std::byte{0x5a});
  EXPECT_FALSE(test::must(cl.node(1).status(seg)).writes_tracked);
  munmap(other, 1 << 20);
}

TEST(Snapshot, ReopenPutsBackTheCommittedGenerationAndTheNextCommitIsExact) {
  Cluster cl(2);
  auto seg = test::must(cl.node(1).create("reopened", 1 << 20));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 3);
  auto g1 = test::must(cl.node(1).commit(seg));
  const auto at_g1 = std::vector<std::byte>(mem.begin(), mem.end());
  std::memset(mem.data() + 4096, 0xee, 100'000);  // the departed application's writes
  auto reopened = test::must(cl.node(1).reopen(seg));
  ASSERT_EQ(reopened.generation, g1);
  ASSERT_TRUE(std::equal(at_g1.begin(), at_g1.end(), mem.begin()));
  mem[777] = std::byte{0x42};
  const auto want = std::vector<std::byte>(mem.begin(), mem.end());
  auto g2 = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g2, 1, 10s)));
  EXPECT_TRUE(test::must(cl.node(2).read_replica("reopened", g2)) == want);
}

// A segment loaded here and handed to no one is the loaded generation as it
// is: the application's first open gets it without a copy back. Once its
// memory was handed out (memory_fd), a reopen puts the committed
// generation back whatever was written through that mapping.
TEST(Snapshot, ReopenAfterALoadGivesTheLoadedGenerationAndAHandedOutMappingCannotLeak) {
  Cluster cl(3, [] {
    EngineConfig c = test::fast_detector();
    c.replication_factor = 2;
    return c;
  }());
  auto seg = test::must(cl.node(1).create("loaded", 1 << 20));
  auto mem = cl.node(1).data(seg);
  test::fill_pattern(mem, 8);
  const uint64_t g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  const auto want = std::vector<std::byte>(mem.begin(), mem.end());
  cl.kill(1);
  ASSERT_TRUE(test::eventually([&] { return !test::peer_alive(cl.node(2), 1); }));
  const OpenResult loaded = test::must(cl.node(2).load("loaded"));
  EXPECT_EQ(cl.node(2).size(loaded.segment), want.size());
  const OpenResult first = test::must(cl.node(2).reopen(loaded.segment));
  EXPECT_EQ(first.generation, g);
  auto got = cl.node(2).data(first.segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin()));
  // Written through a mapping of the handed-out memfd, never committed.
  const int fd = cl.node(2).memory_fd(first.segment);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, want.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::memset(static_cast<std::byte*>(p) + 8192, 0x5a, 50'000);
  munmap(p, want.size());
  const OpenResult again = test::must(cl.node(2).reopen(first.segment));
  EXPECT_EQ(again.generation, g);
  got = cl.node(2).data(again.segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin())) << "the uncommitted writes were put back";
}

TEST(Snapshot, WrittenRangesAreValidated) {
  Cluster cl(2);
  auto seg = test::must(cl.node(1).create("ranges", 64 * 1024));
  const std::pair<uint64_t, uint64_t> past[] = {{64 * 1024 - 10, 11}};
  CommitOptions o;
  o.written = past;
  EXPECT_EQ(cl.node(1).commit(seg, o).error().code, Errc::kInvalidArgument);
  const std::pair<uint64_t, uint64_t> wrap[] = {{8, UINT64_MAX}};
  o.written = wrap;
  EXPECT_EQ(cl.node(1).commit(seg, o).error().code, Errc::kInvalidArgument);
  const std::pair<uint64_t, uint64_t> edge[] = {{64 * 1024 - 10, 10}, {0, 0}};
  o.written = edge;
  EXPECT_TRUE(test::ok(cl.node(1).commit(seg, o)));
}

// A segment's second stage is created unfaulted and faulted in on a
// thread of its own (Segment::prefault): what that relies on.
TEST(LocalStorage, MemoryLeftToFaultInLaterIsZeroAndPopulatedOnRequest) {
  constexpr uint64_t kSize = 4 << 20;
  auto resident = [](const LocalStorage& m) {
    std::vector<unsigned char> v(m.mapped_size() / kPage);
    EXPECT_EQ(mincore(m.data(), m.mapped_size(), v.data()), 0);
    return std::count_if(v.begin(), v.end(), [](unsigned char c) { return (c & 1) != 0; });
  };
  auto later = test::must(LocalStorage::create("later", kSize, -1, LocalStorage::Pages::kSmall,
                                               LocalStorage::Populate::kLater));
  EXPECT_FALSE(later.populated());
  EXPECT_EQ(resident(later), 0) << "nothing faulted in yet";
  later.populate();
  EXPECT_EQ(resident(later), static_cast<long>(later.mapped_size() / kPage)) << "every page faulted in";
  EXPECT_TRUE(std::all_of(later.bytes().begin(), later.bytes().end(), [](std::byte b) { return b == std::byte{0}; }));
  later.data()[kSize - 1] = std::byte{7};  // writable
  auto now = test::must(LocalStorage::create("now", kSize, -1, LocalStorage::Pages::kSmall));
  EXPECT_TRUE(now.populated());
  EXPECT_EQ(resident(now), static_cast<long>(now.mapped_size() / kPage));
}

}  // namespace
}  // namespace baton
