// Deleting a segment and reclaiming copies (issue #9, S11's clean exit):
// real engines and worker threads on loopback links.

#include <gtest/gtest.h>

#include <fstream>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "../../common/cluster.h"
#include "../../common/ok.h"
#include "../../common/scratch_dir.h"
#include "storage/global_store.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;
using test::eventually;

EngineConfig config(uint32_t rf) {
  EngineConfig c = test::fast_detector();
  c.query_timeout_ms = 300;
  c.replication_factor = rf;
  return c;
}

// Commits `n` generations of a pattern and waits until the last is durable.
uint64_t commit_durable(Engine& e, Segment* seg, int n, uint32_t seed = 1) {
  uint64_t g = 0;
  for (int i = 0; i < n; ++i) {
    test::fill_pattern(e.data(seg), seed + static_cast<uint32_t>(i));
    g = test::must(e.commit(seg));
  }
  EXPECT_TRUE(test::ok(e.wait_replicated(seg, g, kDurable, 10s)));
  return g;
}

std::vector<uint16_t> replicas_of(Engine& e, Segment* seg) {
  std::vector<uint16_t> out;
  for (auto& [node, held] : test::must(e.status(seg)).replicas) out.push_back(node);
  return out;
}

bool zeroed(std::span<std::byte> s) {
  return std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; });
}

TEST(Delete, RemovesEveryCopyAndTheNextOpenStartsFresh) {
  Cluster cl(4, config(2));
  Segment* seg = test::must(cl.node(1).create("gone", 64 * 1024));
  commit_durable(cl.node(1), seg, 3);
  const auto set = replicas_of(cl.node(1), seg);
  const uint64_t old_epoch = test::must(cl.node(1).status(seg)).epoch;
  ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
  ASSERT_TRUE(test::ok(cl.node(3).remove("gone"))) << cl.events();
  // Every replica dropped its copy (reclaimed, not only hidden).
  for (uint16_t n : set)
    EXPECT_TRUE(eventually([&] { return !cl.node(n).replica_status("gone"); }))
        << "node " << n << " still holds a copy" << cl.events();
  // Load finds nothing; open starts fresh, zeroed, above the tombstone.
  auto loaded = cl.node(2).load("gone");
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code, Errc::kNotFound) << loaded.error().to_string();
  auto fresh = test::must(cl.node(4).open("gone", 16 * 1024));
  EXPECT_EQ(fresh.outcome, OpenOutcome::kCreated);
  EXPECT_TRUE(zeroed(cl.node(4).data(fresh.segment)));
  EXPECT_GT(test::must(cl.node(4).status(fresh.segment)).epoch, old_epoch + 1);
  // The new segment (another size) replicates and becomes durable.
  const uint64_t g = commit_durable(cl.node(4), fresh.segment, 2, 77);
  EXPECT_EQ(g, 2u);
  // Deleting twice: the second finds nothing.
  ASSERT_TRUE(test::ok(cl.node(4).close(fresh.segment)));
  ASSERT_TRUE(test::ok(cl.node(1).remove("gone")));
  auto again = cl.node(2).remove("gone");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::kNotFound) << again.error().to_string();
}

TEST(Delete, RefusesWhileOpenHereAndUnknownNames) {
  Cluster cl(3, config(1));
  Segment* seg = test::must(cl.node(1).create("busy", 4096));
  auto r = cl.node(1).remove("busy");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kBusy) << r.error().to_string();
  EXPECT_TRUE(test::ok(cl.node(1).commit(seg))) << "the refused delete changed nothing";
  auto none = cl.node(2).remove("never-was");
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, Errc::kNotFound);
  auto bad = cl.node(2).remove("bad name");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
}

TEST(Delete, FencesAnOwnerOnAnotherNode) {
  Cluster cl(4, config(2));
  Segment* seg = test::must(cl.node(1).create("fenced", 32 * 1024));
  commit_durable(cl.node(1), seg, 2);
  ASSERT_TRUE(test::ok(cl.node(3).remove("fenced"))) << cl.events();
  // The owner learns it lost the segment: nothing it commits becomes durable.
  test::fill_pattern(cl.node(1).data(seg), 99);
  auto g = cl.node(1).commit(seg);
  if (g) {
    auto w = cl.node(1).wait_replicated(seg, *g, kDurable, 2s);
    ASSERT_FALSE(w) << "a generation committed after the delete became durable";
  }
  EXPECT_TRUE(eventually([&] { return test::must(cl.node(1).status(seg)).fenced; })) << cl.events();
  auto fresh = test::must(cl.node(2).open("fenced", 32 * 1024));
  EXPECT_EQ(fresh.outcome, OpenOutcome::kCreated);
  EXPECT_TRUE(zeroed(cl.node(2).data(fresh.segment)));
  commit_durable(cl.node(2), fresh.segment, 1, 500);
  const auto want = std::vector<std::byte>(cl.node(2).data(fresh.segment).begin(), cl.node(2).data(fresh.segment).end());
  ASSERT_TRUE(test::ok(cl.node(2).close(fresh.segment)));
  // The old owner's handle reopens the new segment, never its own copy.
  auto reopened = test::must(cl.node(1).reopen(seg));
  EXPECT_EQ(reopened.outcome, OpenOutcome::kRestored);
  EXPECT_EQ(reopened.generation, 1u);
  auto got = cl.node(1).data(reopened.segment);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin(), want.end()));
}

// A majority of the replica set must store the tombstone; the rest may
// miss it.
TEST(Delete, ACopyThatMissedTheDeleteIsNeverRestored) {
  Cluster cl(5, config(3));
  Segment* seg = test::must(cl.node(1).create("stale", 16 * 1024));
  commit_durable(cl.node(1), seg, 4);
  const auto set = replicas_of(cl.node(1), seg);
  ASSERT_EQ(set.size(), 3u);
  const uint16_t cut = set[0];
  ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
  cl.isolate(cut, true);  // it misses the delete, keeping its copy
  uint16_t deleter = 1;
  ASSERT_TRUE(test::ok(cl.node(deleter).remove("stale"))) << cl.events();
  ASSERT_TRUE(cl.node(cut).replica_status("stale")) << "the cut-off replica kept its copy";
  cl.isolate(cut, false);
  ASSERT_TRUE(eventually([&] { return cl.node(cut).view().members.size() == 5; }));
  // Opening on the node that holds the stale copy starts fresh, and the
  // query's answers tell it to drop the copy.
  auto r = test::must(cl.node(cut).open("stale", 16 * 1024));
  EXPECT_EQ(r.outcome, OpenOutcome::kCreated) << "restored generation " << r.generation << cl.events();
  EXPECT_TRUE(zeroed(cl.node(cut).data(r.segment)));
  EXPECT_TRUE(eventually([&] { return !cl.node(cut).replica_status("stale"); })) << cl.events();
}

TEST(Delete, GlobalStorageForgetsTheName) {
  test::ScratchDir dir;
  Cluster cl(3, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
  Segment* seg = test::must(cl.node(1).create("kept", 8192));
  commit_durable(cl.node(1), seg, 2);
  const auto files = [&] {
    size_t n = 0;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir.path + "/kept", ec)) n += e.path().extension() == ".seg";
    return n;
  };
  ASSERT_TRUE(eventually([&] { return files() > 0; }));
  ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
  ASSERT_TRUE(test::ok(cl.node(2).remove("kept")));
  // No copy is readable once the delete returns; a replica's write still in
  // flight then lands under the delete marker and removes its own file.
  EXPECT_FALSE(GlobalStore::newest(dir.path, "kept", 1 << 20));
  EXPECT_TRUE(eventually([&] { return files() == 0; })) << files() << " copies left";
  auto r = test::must(cl.node(3).open("kept", 8192));
  EXPECT_EQ(r.outcome, OpenOutcome::kCreated);
}

// The delete outlives every node: with all of them restarted (their
// tombstones were in memory), a copy of the deleted history that a slow
// writer left behind is still never restored, and the name's new history
// starts above the delete and is restored in turn.
TEST(Delete, AGlobalDeleteOutlivesEveryNode) {
  test::ScratchDir dir;
  std::string old_copy;
  {
    Cluster cl(3, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
    Segment* seg = test::must(cl.node(1).create("gone", 8192));
    commit_durable(cl.node(1), seg, 1);
    ASSERT_TRUE(eventually([&] { return GlobalStore::newest(dir.path, "gone", 1 << 20).has_value(); }));
    old_copy = GlobalStore::newest(dir.path, "gone", 1 << 20)->path;
    std::filesystem::copy_file(old_copy, old_copy + ".keep");
    ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
    ASSERT_TRUE(test::ok(cl.node(1).remove("gone")));
  }
  std::filesystem::rename(old_copy + ".keep", old_copy);  // as if written after the delete listed the directory
  const uint64_t deleted = GlobalStore::deleted_epoch(dir.path, "gone");
  EXPECT_GT(deleted, 1u);
  EXPECT_FALSE(GlobalStore::newest(dir.path, "gone", 1 << 20)) << "a copy under the delete marker is readable";
  uint64_t g = 0;
  {
    Cluster cl(3, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
    auto r = cl.node(2).open("gone", 8192);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->outcome, OpenOutcome::kCreated) << "a deleted history was restored";
    EXPECT_TRUE(std::all_of(cl.node(2).data(r->segment).begin(), cl.node(2).data(r->segment).end(),
                            [](std::byte b) { return b == std::byte{0}; }));
    EXPECT_GT(test::must(cl.node(2).status(r->segment)).epoch, deleted) << "the new history starts above the delete";
    std::memset(cl.node(2).data(r->segment).data(), 9, 8192);
    g = test::must(cl.node(2).commit(r->segment));
    ASSERT_TRUE(test::ok(cl.node(2).wait_replicated(r->segment, g, kDurable, 10s)));
    ASSERT_TRUE(eventually([&] {
      auto c = GlobalStore::newest(dir.path, "gone", 1 << 20);
      return c && c->generation == g;
    }));
  }
  // The new history, not the marker, is what a node restores now.
  EngineConfig c = config(1);
  c.global_dir = dir.path;
  c.node_id = 7;
  auto lone = Engine::start(c, {});
  ASSERT_TRUE(lone) << lone.error().to_string();
  auto r = (*lone)->open("gone", 8192);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->outcome, OpenOutcome::kRestored);
  EXPECT_EQ(r->generation, g);
  EXPECT_EQ((*lone)->data(r->segment)[100], std::byte{9});
}

// A delete whose global-storage marker cannot be written (here the
// marker's temp name is taken by a directory) fails saying so, and the
// next delete finishes it. Before (a session 37 storage trial), the nodes
// had dropped their copies, the retry said "deleted already" without
// marking storage, and after every node restarted the deleted state came
// back from it.
TEST(Delete, ADeleteThatCouldNotMarkGlobalStorageIsFinishedByTheNext) {
  test::ScratchDir dir;
  Cluster cl(3, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
  Segment* seg = test::must(cl.node(1).create("stubborn", 8192));
  commit_durable(cl.node(1), seg, 2);
  ASSERT_TRUE(eventually([&] { return GlobalStore::newest(dir.path, "stubborn", 1 << 20).has_value(); }));
  ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
  const std::string blocker = dir.path + "/stubborn/deleted-e2.tmp";
  ASSERT_TRUE(std::filesystem::create_directory(blocker));
  auto failed = cl.node(2).remove("stubborn");
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, Errc::kIo);
  EXPECT_NE(failed.error().message.find("delete it again"), std::string::npos) << failed.error().message;
  EXPECT_TRUE(GlobalStore::newest(dir.path, "stubborn", 1 << 20)) << "storage still holds it";
  std::filesystem::remove(blocker);
  auto again = cl.node(3).remove("stubborn");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::kNotFound) << again.error().to_string();
  EXPECT_FALSE(GlobalStore::newest(dir.path, "stubborn", 1 << 20)) << "the retry left the copies readable";
  EXPECT_GE(GlobalStore::deleted_epoch(dir.path, "stubborn"), 2u);
}

// After every node restarted, global storage is all there is of a name,
// at epochs no node remembers: a delete marks above them (it marked at 1,
// and a copy written at epoch 2, after a failover, came back).
TEST(Delete, ADeleteOfWhatOnlyGlobalStorageHoldsCoversItsEpochs) {
  test::ScratchDir dir;
  {
    Cluster cl(3, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
    Segment* seg = test::must(cl.node(1).create("moved", 8192));
    commit_durable(cl.node(1), seg, 1);
    const uint16_t replica = replicas_of(cl.node(1), seg).at(0);
    cl.kill(1);
    const int other = replica == 2 ? 3 : 2;
    Segment* moved = nullptr;
    ASSERT_TRUE(eventually([&] {
      auto r = cl.node(other).load("moved");
      if (r) moved = r->segment;
      return r.has_value();
    })) << cl.events();
    ASSERT_EQ(test::must(cl.node(other).status(moved)).epoch, 2u);
    commit_durable(cl.node(other), moved, 1, 7);
    ASSERT_TRUE(eventually([&] {
      auto c = GlobalStore::newest(dir.path, "moved", 1 << 20);
      return c && c->epoch == 2;
    }));
  }
  Cluster cl(3, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
  ASSERT_TRUE(test::ok(cl.node(1).remove("moved")));
  EXPECT_FALSE(GlobalStore::newest(dir.path, "moved", 1 << 20)) << "a copy above the marker is readable";
  auto r = test::must(cl.node(2).open("moved", 8192));
  EXPECT_EQ(r.outcome, OpenOutcome::kCreated) << "the deleted state came back";
}

// Global storage holds the name but no copy of it is intact (every file
// damaged). The state exists: an open says so (ECORRUPT) instead of
// starting afresh, which lost every durable generation without a word and
// put the new history's files below the damaged ones (a session 37
// storage trial). A delete clears the way.
TEST(Delete, CopiesNoneOfWhichIsIntactAreNotStartedAfresh) {
  test::ScratchDir dir;
  {
    Cluster cl(2, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
    Segment* seg = test::must(cl.node(1).create("damaged", 8192));
    commit_durable(cl.node(1), seg, 3);
    ASSERT_TRUE(eventually([&] { return GlobalStore::list(dir.path, "damaged").copies >= 1; }));
  }
  for (const auto& e : std::filesystem::directory_iterator(dir.path + "/damaged")) {
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-10, std::ios::end);
    const char was = static_cast<char>(f.get());
    f.seekp(-10, std::ios::end);
    f.put(static_cast<char>(was ^ 0x5a));  // a different byte, whatever it was
  }
  Cluster cl(2, config(1), 16384, [&](int, EngineConfig& c) { c.global_dir = dir.path; });
  auto open = cl.node(1).open("damaged", 8192);
  ASSERT_FALSE(open) << "started afresh over damaged state";
  EXPECT_EQ(open.error().code, Errc::kCorrupt);
  EXPECT_NE(open.error().message.find("none is intact"), std::string::npos) << open.error().message;
  auto load = cl.node(2).load("damaged");
  ASSERT_FALSE(load);
  EXPECT_EQ(load.error().code, Errc::kCorrupt) << load.error().to_string();
  ASSERT_TRUE(test::ok(cl.node(2).remove("damaged")));
  auto fresh = test::must(cl.node(1).open("damaged", 8192));
  EXPECT_EQ(fresh.outcome, OpenOutcome::kCreated);
}

// S11's third case: every replica is gone (here: nothing was ever
// committed). The record alone does not wedge the name: once its owner and
// every member of its set answered that they hold nothing, open starts
// fresh; while one of them is silent, it says so instead.
TEST(Lifecycle, ARecordWithEveryReplicaGoneStartsFresh) {
  Cluster cl(3, config(1));
  Segment* seg = test::must(cl.node(1).create("never", 4096));
  const auto set = replicas_of(cl.node(1), seg);
  ASSERT_EQ(set.size(), 1u);
  ASSERT_TRUE(eventually([&] { return cl.node(set[0]).record("never").has_value(); }));
  ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
  auto r = test::must(cl.node(2).open("never", 4096));
  EXPECT_EQ(r.outcome, OpenOutcome::kCreated) << cl.events();
  EXPECT_TRUE(test::has_event(cl.node(2), "starting afresh")) << cl.events();
}

// Reclamation: a takeover leaves the new owner's own replica copy and the
// replicas it no longer uses behind; once its set is recorded, they go.
TEST(Reclaim, ATakeoverDropsCopiesOutsideTheNewSet) {
  Cluster cl(4, config(2));
  Segment* seg = test::must(cl.node(1).create("moved", 16 * 1024));
  commit_durable(cl.node(1), seg, 3);
  const auto set = replicas_of(cl.node(1), seg);
  ASSERT_TRUE(test::ok(cl.node(1).close(seg)));
  // Load on a replica: it restores from its own copy, which then is garbage.
  const uint16_t taker = set[0];
  auto moved = test::must(cl.node(taker).load("moved"));
  EXPECT_EQ(moved.generation, 3u);
  commit_durable(cl.node(taker), moved.segment, 1, 5);
  EXPECT_TRUE(eventually([&] { return !cl.node(taker).replica_status("moved"); }))
      << "the new owner still holds its old replica copy" << cl.events();
  // Every node still holding a copy is in the new recorded set.
  const auto new_set = replicas_of(cl.node(taker), moved.segment);
  EXPECT_TRUE(eventually([&] {
    for (int n = 1; n <= 4; ++n)
      if (cl.node(n).replica_status("moved") && std::find(new_set.begin(), new_set.end(), n) == new_set.end())
        return false;
    return true;
  })) << cl.events();
}

}  // namespace
}  // namespace baton
