// baton-takeover: how long an ownership move takes inside one process, on
// loopback links (no device, no wire time): three engines, one 4 KiB
// segment with two replicas, and `load` alternating between two nodes, so
// every load is a query round, a claim round and a copy. What it measures is
// the engine's own overhead per move (thread hand-offs, rounds, wake-ups);
// beside it, the same run measures a futex ping-pong between two threads,
// the floor of any design that hands work to another thread and back.
//
// With --mib N the segment is N MiB and each move is a takeover by mapping
// in place (issue #11): the loading node holds a replica, and its slot
// becomes the application's memory; the one copy left is into the first
// snapshot stage. Beside it, the same run measures what a takeover by copy
// cannot avoid: allocating and faulting in N MiB (4 KiB pages, as an
// application's memory is) and copying N MiB into it; and memcpy alone.
//
// With --remote (and --mib) the nodes are joined by shm links (real
// regions in /dev/shm, as the nodes of one CC-NUMA server are), the
// segment has one replica, and every move is a load on the node that holds
// no copy: the replica lends its slot and the loader reads it directly
// (issue #11, direct reads), or with --stream has it streamed through the
// rings as over any link. The same baselines are measured beside it.
//
// Usage: baton-takeover [--moves N] [--mib N] [--remote [--stream]]   (prints a JSON line)

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "baton/engine.h"
#include "baton/loopback.h"
#include "baton/shm.h"
#include "runtime/futex.h"
#include "../stats.h"

namespace {

using baton::bench::median;
using baton::bench::pct;

// One round trip between two threads through a futex each way, in us.
std::vector<double> ping_pong(int n) {
  std::atomic<uint32_t> ping{0}, pong{0};
  std::thread t([&] {
    for (uint32_t i = 1; i <= static_cast<uint32_t>(n); ++i) {
      while (ping.load() < i) baton::futex_wait(ping, i - 1, 1'000'000);
      pong.store(i);
      baton::futex_wake_all(pong);
    }
  });
  std::vector<double> us;
  for (uint32_t i = 1; i <= static_cast<uint32_t>(n); ++i) {
    const uint64_t t0 = baton::now_ns();
    ping.store(i);
    baton::futex_wake_all(ping);
    while (pong.load() < i) baton::futex_wait(pong, i - 1, 1'000'000);
    us.push_back((baton::now_ns() - t0) / 1e3);
  }
  t.join();
  return us;
}

// Takeover by copy, its floor: fresh memory of `len` bytes faulted in, and
// `from` copied into it; and the copy alone into memory already there. ms.
struct CopyFloor {
  double alloc_copy_ms = 0, copy_ms = 0;
};
CopyFloor copy_floor(const std::byte* from, size_t len) {
  CopyFloor out;
  uint64_t t0 = baton::now_ns();
  // As an application's memory is: a memfd on 4 KiB pages, faulted in.
  const int fd = memfd_create("baton-bench-copy", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(len)) != 0) return out;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return out;
  madvise(p, len, MADV_POPULATE_WRITE);
  std::memcpy(p, from, len);
  out.alloc_copy_ms = (baton::now_ns() - t0) / 1e6;
  t0 = baton::now_ns();
  std::memcpy(p, from, len);
  out.copy_ms = (baton::now_ns() - t0) / 1e6;
  munmap(p, len);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int moves = 200;
  uint64_t mib = 0;
  bool remote = false, stream = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--moves" && i + 1 < argc) moves = std::atoi(argv[++i]);
    else if (a == "--mib" && i + 1 < argc) mib = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--remote") remote = true;
    else if (a == "--stream") stream = true;
    else return std::fprintf(stderr, "usage: baton-takeover [--moves N] [--mib N] [--remote [--stream]]\n"), 2;
  }
  if (moves < 1 || mib > 4096 || (remote && mib == 0) || (stream && !remote))
    return std::fprintf(stderr, "baton-takeover: moves >= 1, mib <= 4096; --remote needs --mib, --stream --remote\n"), 2;
  const uint64_t size = mib == 0 ? 4096 : mib << 20;
  constexpr int kNodes = 3;
  std::vector<std::vector<std::unique_ptr<baton::Link>>> links(kNodes);
  for (int a = 0; a < kNodes; ++a)
    for (int b = a + 1; b < kNodes; ++b) {
      if (remote) {
        // A region per pair, gone from /dev/shm once both ends have it mapped.
        const std::string path = "/dev/shm/baton-takeover-" + std::to_string(getpid()) + "-" + std::to_string(a) +
                                 std::to_string(b);
        auto p = baton::shm::pair(path, static_cast<uint16_t>(a + 1), static_cast<uint16_t>(b + 1));
        ::unlink(path.c_str());
        if (!p) return std::fprintf(stderr, "baton-takeover: %s\n", p.error().to_string().c_str()), 1;
        links[a].push_back(std::move(p->first));
        links[b].push_back(std::move(p->second));
        continue;
      }
      auto p = baton::loopback::make_pair(a + 1, b + 1);
      links[a].push_back(std::move(p.a));
      links[b].push_back(std::move(p.b));
    }
  std::vector<std::unique_ptr<baton::Engine>> engines;
  for (int i = 0; i < kNodes; ++i) {
    baton::EngineConfig c;
    c.node_id = static_cast<uint16_t>(i + 1);
    c.replication_factor = remote ? 1 : 2;
    c.direct_reads = !stream;
    if (mib != 0) c.max_segment_size = std::max<uint64_t>(c.max_segment_size, size);
    auto e = baton::Engine::start(c, std::move(links[i]));
    if (!e) {
      std::fprintf(stderr, "baton-takeover: %s\n", e.error().to_string().c_str());
      return 1;
    }
    engines.push_back(std::move(*e));
  }
  for (int tries = 0; engines[0]->view().members.size() < kNodes || !engines[0]->view().agreed; ++tries) {
    if (tries > 1000) return std::fprintf(stderr, "baton-takeover: no view\n"), 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto seg = engines[0]->create("moving", size);
  if (!seg) return std::fprintf(stderr, "baton-takeover: %s\n", seg.error().to_string().c_str()), 1;
  std::memset(engines[0]->data(*seg).data(), 7, size);
  auto g = engines[0]->commit(*seg);
  if (!g || !engines[0]->wait_replicated(*seg, *g, baton::kDurable, std::chrono::seconds(120)))
    return std::fprintf(stderr, "baton-takeover: not durable\n"), 1;
  std::vector<double> floor_ms, copy_ms;
  // The baselines first, on an idle machine (after the moves, the new
  // owners' second stages are still being faulted in on the side).
  for (int i = 0; mib != 0 && i < std::min(moves, 5); ++i) {
    const CopyFloor f = copy_floor(engines[0]->data(*seg).data(), size);
    floor_ms.push_back(f.alloc_copy_ms);
    copy_ms.push_back(f.copy_ms);
  }
  baton::Segment* held = *seg;
  int owner = 0;
  // --remote: the one replica keeps its copy; the two others take turns.
  int replica = -1;
  for (int n = 1; remote && n < kNodes; ++n)
    if (engines[n]->read_replica("moving")) replica = n;
  if (remote && replica < 0) return std::fprintf(stderr, "baton-takeover: no replica\n"), 1;
  std::vector<double> move_us, pp_us;
  uint64_t in_place = 0;
  for (int i = 0; i < moves; ++i) {
    // The next owner: another node (a replica, so the copy is local or one hop).
    const int next = remote ? kNodes - owner - replica : (owner + 1 + i % 2) % kNodes;
    const uint64_t t0 = baton::now_ns();
    auto r = engines[next]->load("moving");
    const uint64_t t1 = baton::now_ns();
    if (!r) return std::fprintf(stderr, "baton-takeover: move %d: %s\n", i, r.error().to_string().c_str()), 1;

    (void)engines[owner]->close(held);  // fenced: closing frees it
    held = r->segment;
    owner = next;
    move_us.push_back((t1 - t0) / 1e3);
    // Commit once on the new owner, so the next move copies a fresh generation.
    auto c = engines[owner]->commit(held);
    if (!c || !engines[owner]->wait_replicated(held, *c, baton::kDurable, std::chrono::seconds(120)))
      return std::fprintf(stderr, "baton-takeover: commit after move %d failed\n", i), 1;
    auto pp = ping_pong(20);
    pp_us.insert(pp_us.end(), pp.begin(), pp.end());
  }
  uint64_t direct = 0;
  for (auto& e : engines)
    if (e) in_place += e->stats().replica_promotions, direct += e->stats().direct_reads;
  if (remote) {
    std::printf("{\"mib\": %lu, \"moves\": %d, \"from\": \"%s\", \"direct_reads\": %lu, \"move_p50_ms\": %.2f, "
                "\"alloc_and_copy_p50_ms\": %.2f, \"memcpy_p50_ms\": %.2f, \"ratio_to_alloc_and_copy\": %.2f, "
                "\"ratio_to_memcpy\": %.2f}\n",
                static_cast<unsigned long>(mib), moves, stream ? "stream over shm" : "lent slot, read directly",
                static_cast<unsigned long>(direct), median(move_us) / 1e3, median(floor_ms), median(copy_ms),
                median(move_us) / 1e3 / median(floor_ms), median(move_us) / 1e3 / median(copy_ms));
    return 0;
  }
  if (mib != 0) {
    std::printf("{\"mib\": %lu, \"moves\": %d, \"in_place\": %lu, \"move_p50_ms\": %.2f, "
                "\"alloc_and_copy_p50_ms\": %.2f, \"memcpy_p50_ms\": %.2f, \"ratio_to_alloc_and_copy\": %.2f, "
                "\"ratio_to_memcpy\": %.2f}\n",
                static_cast<unsigned long>(mib), moves, static_cast<unsigned long>(in_place), median(move_us) / 1e3,
                median(floor_ms), median(copy_ms), median(move_us) / 1e3 / median(floor_ms),
                median(move_us) / 1e3 / median(copy_ms));
    return 0;
  }
  std::printf("{\"moves\": %d, \"move_p50_us\": %.1f, \"move_p99_us\": %.1f, \"futex_pingpong_p50_us\": %.1f, "
              "\"ratio_p50\": %.1f}\n",
              moves, median(move_us), pct(move_us, 0.99), median(pp_us), median(move_us) / median(pp_us));
  return 0;
}
