// Direct reads (issue #11, the CC-NUMA half of S13): over a link whose
// peer shares this host's memory (caps().direct_read: the shm driver, and
// loopback wires told so), a load asks the replica to lend its published
// slot and reads it itself, checked against the generation checksum;
// anything else is streamed as before.

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../../common/cluster.h"
#include "../../common/ok.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;
using test::fill_pattern;
using test::has_event;

using test::copy_of;

void share_memory(Cluster& cl) {
  for (auto& [pair, wire] : cl.wires) wire->set_direct_read(true);
}

// The node of `nodes` that holds no replica of `name`.
int without_replica(Cluster& cl, std::initializer_list<int> nodes, const std::string& name) {
  for (int n : nodes)
    if (!cl.node(n).read_replica(name)) return n;
  return 0;
}

void await_death(Cluster& cl, int dead, std::initializer_list<int> survivors) {
  for (int n : survivors)
    ASSERT_TRUE(test::eventually([&] { return !test::peer_alive(cl.node(n), static_cast<uint16_t>(dead)); }));
}

TEST(DirectRead, ALoadReadsTheLentSlotThroughSharedMemory) {
  EngineConfig c;
  c.replication_factor = 2;
  c.fetch_timeout_ms = 60'000;  // a lent slot never let go stays pinned past the test's waits
  Cluster cl(4, c);
  share_memory(cl);
  const uint64_t size = (8u << 20) + 1234;  // a short last chunk
  auto seg = test::must(cl.node(1).create("lent", size));
  auto mem = cl.node(1).data(seg);
  fill_pattern(mem, 3);
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, test::must(cl.node(1).commit(seg)), kDurable, 10s)));
  mem[size - 1] = std::byte{0x42};  // the next generation a delta
  mem[4096 * 7] = std::byte{0x17};
  const uint64_t g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
  const auto want = copy_of(mem);
  const int loader = without_replica(cl, {2, 3, 4}, "lent");
  ASSERT_NE(loader, 0);
  cl.kill(1);
  await_death(cl, 1, {2, 3, 4});

  auto loaded = cl.node(loader).load("lent");
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  EXPECT_EQ(loaded->generation, g);
  auto got = cl.node(loader).data(loaded->segment);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin()));
  EXPECT_EQ(cl.node(loader).stats().direct_reads, 1u);
  EXPECT_EQ(cl.node(loader).stats().direct_read_failures, 0u);
  uint64_t lent = 0;
  for (int n : {2, 3, 4}) lent += cl.node(n).stats().slots_lent;
  EXPECT_EQ(lent, 1u);
  EXPECT_TRUE(has_event(cl.node(loader), "its slot read directly, through shared memory")) << cl.events();

  // The lender let go of its slot when the loader was done: its store
  // (two slots, retain 0) takes the new owner's generations one after
  // another, which it could not with one slot still pinned.
  for (int i = 0; i < 4; ++i) {
    fill_pattern(got.subspan(uint64_t(i) << 20, 4096), 50 + i);
    const uint64_t next = test::must(cl.node(loader).commit(loaded->segment));
    ASSERT_TRUE(test::ok(cl.node(loader).wait_replicated(loaded->segment, next, 2, 10s))) << cl.events();
  }
  for (int n : {2, 3, 4}) {
    if (n == loader) continue;
    auto copy = cl.node(n).read_replica("lent");
    ASSERT_TRUE(copy) << "node " << n;
    EXPECT_TRUE(std::equal(got.begin(), got.end(), copy->begin(), copy->end())) << "node " << n;
  }
}

// Three nodes, one replica: node 1 commits `name` (1 MiB) durably and is
// killed; returns the generation, its bytes, and the node without a copy.
struct Orphan {
  uint64_t generation = 0;
  std::vector<std::byte> want;
  int loader = 0;
};
Orphan commit_and_kill_owner(Cluster& cl, const std::string& name, uint32_t seed) {
  Orphan o;
  auto seg = test::must(cl.node(1).create(name, 1 << 20));
  auto mem = cl.node(1).data(seg);
  fill_pattern(mem, seed);
  o.generation = test::must(cl.node(1).commit(seg));
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, o.generation, kDurable, 10s)));
  o.want = copy_of(mem);
  o.loader = without_replica(cl, {2, 3}, name);
  cl.kill(1);
  await_death(cl, 1, {2, 3});
  return o;
}

TEST(DirectRead, IsStreamedWhenTurnedOff) {
  EngineConfig c;
  c.replication_factor = 1;
  c.direct_reads = false;
  Cluster cl(3, c);
  share_memory(cl);
  const auto [g, want, loader] = commit_and_kill_owner(cl, "streamed", 9);
  ASSERT_NE(loader, 0);
  auto loaded = cl.node(loader).load("streamed");
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  auto got = cl.node(loader).data(loaded->segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end()));
  EXPECT_EQ(cl.node(2).stats().slots_lent + cl.node(3).stats().slots_lent, 0u);
  EXPECT_EQ(cl.node(loader).stats().direct_reads, 0u);
}

// Every slot of this process whose memfd is named `label` and holds `want`.
std::vector<std::string> slots_holding(const std::string& label, const std::vector<std::byte>& want) {
  std::vector<std::string> found;
  for (const auto& path : test::memfds_labelled(label)) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) continue;
    void* p = ::mmap(nullptr, want.size(), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) continue;
    if (std::memcmp(p, want.data(), want.size()) == 0) found.push_back(path);
    ::munmap(p, want.size());
  }
  return found;
}

void flip(const std::string& path, uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x5a;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

// A replica's memory corrupted after it published (a stray write, a bad
// DIMM): the lent read fails the generation checksum, the stream that
// follows fails its frames' checksums, and the load refuses rather than
// restore what was never committed. Once the byte is right again, the same
// load reads the lent slot.
TEST(DirectRead, ACorruptedLentSlotIsNeverRestored) {
  EngineConfig c;
  c.replication_factor = 1;
  c.fetch_timeout_ms = 300;
  Cluster cl(3, c);
  share_memory(cl);
  const auto [g, want, loader] = commit_and_kill_owner(cl, "corrupt", 21);
  ASSERT_NE(loader, 0);
  const auto slots = slots_holding("corrupt@replica", want);
  ASSERT_EQ(slots.size(), 1u);
  flip(slots[0], 777777);

  auto refused = cl.node(loader).load("corrupt");
  ASSERT_FALSE(refused) << "restored a generation nobody committed";
  EXPECT_EQ(cl.node(loader).stats().direct_read_failures, 1u);
  EXPECT_EQ(cl.node(loader).stats().direct_reads, 0u);

  flip(slots[0], 777777);
  auto loaded = cl.node(loader).load("corrupt");
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  EXPECT_EQ(loaded->generation, g);
  auto got = cl.node(loader).data(loaded->segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end()));
  EXPECT_EQ(cl.node(loader).stats().direct_reads, 1u);
}

}  // namespace
}  // namespace baton
