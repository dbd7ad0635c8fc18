// batond's commit threads (ipc/server.h): one lane for small segments, one
// for large ones. Each polls the commit channels of the segments attached to
// it, commits what the applications asked for, and sleeps on an eventfd
// (the applications' doorbell) when idle.
//
// Thread: the lane's commit thread, but for attach() and detach() (session
// threads), which take the lane's mutex (detach() also takes the posted
// commits the lane has not taken yet, on the session's thread).

#include <immintrin.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "baton/baton.h"
#include "common/log.h"
#include "ipc/server_impl.h"
#include "runtime/futex.h"

namespace baton::ipc {


Server::CommitLane& Server::lane_of(const Segment& seg) { return lanes_[seg.size > kLargeSegment ? 1 : 0]; }

void Server::attach(Segment& seg, bool posts) {
  CommitLane& lane = lane_of(seg);
  {
    std::lock_guard lock(lane.mu);
    seg.seen = seg.channel->request.load();
    seg.channel->done.store(seg.seen);
    // Posted commits start from here: whatever a previous holder left
    // untaken is dropped (it never became a generation), and the shadow is
    // the memory as the open or reopen left it, the last committed
    // generation.
    CommitLog& log = seg.channel->log;
    seg.log_tail = log.head.load();
    log.tail.store(seg.log_tail);
    seg.shadow.clear();
    seg.shadow_stale = false;
    seg.refusing = false;
    if (posts && seg.size <= kLogMaxSegment) {
      const std::span<std::byte> mem = engine_.data(seg.handle);
      seg.shadow.assign(mem.begin(), mem.begin() + std::min<uint64_t>(mem.size(), seg.size));
      if (seg.shadow.size() != seg.size) seg.shadow.clear();
    }
    if (auto st = engine_.status(seg.handle)) log.committed.store(st->generation);
    // The commit thread may be asleep: until it has looked at this channel,
    // the application rings the doorbell.
    seg.channel->daemon_sleeping.store(kAsleep);
    lane.active.push_back(&seg);
    // Edge-triggered, and never read: every ring (a write) is an edge of
    // its own. Reading it would let its application block this thread
    // (the descriptor is the application's too: it can clear O_NONBLOCK).
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLET;
    ev.data.fd = seg.bell_fd;
    if (seg.bell_fd >= 0 && epoll_ctl(lane.epoll_fd, EPOLL_CTL_ADD, seg.bell_fd, &ev) != 0)
      BT_WARN("segment %s: its doorbell is not watched (%s): commits wait for the lane's next look",
              seg.name.c_str(), std::strerror(errno));
  }
  const uint64_t one = 1;
  (void)!write(lane.event_fd, &one, sizeof one);
}

void Server::detach(Segment& seg) {
  // Under the lane's mutex: once it is released, the commit thread is not
  // in a commit of this segment and will not start one.
  CommitLane& lane = lane_of(seg);
  std::lock_guard lock(lane.mu);
  // What the application posted and was told is a commit becomes one,
  // even when it exits (or dies) without waiting for it.
  if (const uint32_t head = seg.channel->log.head.load(); head != seg.log_tail) take_log(lane, seg, head);
  // So does a posted copy-on-write commit (a waiting one's application
  // was told nothing).
  if (const uint32_t req = seg.channel->request.load();
      req != seg.seen && seg.channel->frozen.load(std::memory_order_relaxed) == 2)
    take_request(lane, seg, req);
  lane.active.erase(std::remove(lane.active.begin(), lane.active.end(), &seg), lane.active.end());
  std::vector<std::byte>().swap(seg.shadow);  // the next holder's attach makes its own
  // Out of the set before it closes: the application's copy keeps the
  // eventfd, and with it a registration, alive.
  if (seg.bell_fd >= 0) {
    epoll_ctl(lane.epoll_fd, EPOLL_CTL_DEL, seg.bell_fd, nullptr);
    ::close(seg.bell_fd);
    seg.bell_fd = -1;
  }
}

void Server::take_log(CommitLane& lane, Segment& seg, uint32_t head) {
  CommitLog& log = seg.channel->log;
  auto refuse = [&](uint64_t generation, Errc code, const char* why) {
    // The first refusal of a run is the one to report: the ones after it
    // follow from it (a generation that no longer follows, a stale shadow).
    if (!seg.refusing) {
      log.status.store(-static_cast<int32_t>(code), std::memory_order_relaxed);
      log.failed_generation.store(generation, std::memory_order_relaxed);
    }
    seg.refusing = true;
    if (code == Errc::kFenced) log.fenced.store(1, std::memory_order_relaxed);
    log.failures.fetch_add(1, std::memory_order_relaxed);  // published by the tail's store
    ++counters_.refused_posts;
    BT_DEBUG("segment %s: posted commit of generation %llu refused: %s", seg.name.c_str(),
             static_cast<unsigned long long>(generation), why);
  };
  if (head - seg.log_tail > kLogSlots) {
    // More slots than the log has: not a library's doing. Nothing in it is
    // taken (only this application's own commits are lost).
    refuse(0, Errc::kInvalidArgument, "more posted commits than log slots");
    seg.log_tail = head;
  }
  for (; seg.log_tail != head; ++seg.log_tail) {
    LogSlot& slot = log.slots[seg.log_tail % kLogSlots];
    const uint64_t generation = slot.generation.load(std::memory_order_relaxed);
    const uint32_t count = slot.count.load(std::memory_order_relaxed);
    const uint32_t bytes = slot.bytes.load(std::memory_order_relaxed);
    // Everything is copied out and checked before any of it is used: the
    // application may change the slot meanwhile (then only its own
    // generation suffers).
    lane.written.clear();
    uint64_t sum = 0;
    bool whole = false;
    const char* bad = seg.shadow.empty() ? "the segment is too large to post commits" : nullptr;
    if (bad == nullptr && (count > kLogRanges || bytes > kLogSlotBytes)) bad = "a bad range count or size";
    for (uint32_t i = 0; bad == nullptr && i < count; ++i) {
      const uint64_t off = slot.ranges[2 * i].load(std::memory_order_relaxed);
      const uint64_t len = slot.ranges[2 * i + 1].load(std::memory_order_relaxed);
      if (off > seg.size || len > seg.size - off || len > bytes - sum) bad = "a range past the segment or its bytes";
      else {
        lane.written.emplace_back(off, len);
        sum += len;
        whole |= off == 0 && len == seg.size;
      }
    }
    if (bad == nullptr && sum != bytes) bad = "ranges that do not add up to the slot's bytes";
    if (bad == nullptr && seg.shadow_stale && !whole) bad = "an earlier posted commit failed: the whole segment must come";
    if (bad != nullptr) {
      refuse(generation, Errc::kInvalidArgument, bad);
      continue;
    }
    uint64_t at = 0;
    for (const auto& [off, len] : lane.written) {
      std::memcpy(seg.shadow.data() + off, slot.data + at, len);
      at += len;
    }
    if (count == 0) lane.written.emplace_back(0, 0);  // nothing written: a range of nothing
    CommitOptions options{.share = &lane == &lanes_[1]};
    options.written = lane.written;
    options.source = seg.shadow.data();
    options.expect_generation = generation;
    auto g = engine_.commit(seg.handle, options);
    seg.shadow_stale = !g;  // the shadow holds bytes that are no generation
    if (!g) {
      refuse(generation, g.error().code, g.error().message.c_str());
      if (auto st = engine_.status(seg.handle)) log.committed.store(st->generation, std::memory_order_relaxed);
      continue;
    }
    log.committed.store(*g, std::memory_order_relaxed);
    seg.refusing = false;
    ++counters_.commits;
    ++counters_.posted_commits;
  }
  log.tail.store(head);  // seq_cst: publishes the slots' outcome; pairs with app_sleeping
  if (log.app_sleeping.load())
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&log.tail), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

Server::Polled Server::poll_commits(CommitLane& lane) {
  Polled busy = Polled::kNothing;
  std::lock_guard lock(lane.mu);
  for (Segment* seg : lane.active) {
    CommitChannel& ch = *seg->channel;
    // Posted commits first: a waiting commit comes after the ones its
    // application posted before it.
    if (const uint32_t head = ch.log.head.load(); head != seg->log_tail) {
      busy = std::max(busy, Polled::kPosts);
      take_log(lane, *seg, head);
    }
    const uint32_t req = ch.request.load();  // seq_cst: pairs with the daemon_sleeping handshake
    if (req == seg->seen) continue;
    // Nobody waits for a posted one: the lane naps after it, as after
    // posts (its application rings only a sleeping lane).
    busy = take_request(lane, *seg, req) ? std::max(busy, Polled::kPosts) : Polled::kRequests;
  }
  return busy;
}

bool Server::take_request(CommitLane& lane, Segment& segment, uint32_t req) {
  Segment* const seg = &segment;
  CommitChannel& ch = *seg->channel;
  seg->seen = req;
  // Taken, unless the application stopped waiting for it first (or wrote
  // something else there: then only its own commit is lost).
  uint32_t posted = claim_of(req, kPosted);
  if (!ch.claim.compare_exchange_strong(posted, claim_of(req, kTaken))) {
    ch.status.store(-static_cast<int32_t>(Errc::kUnavailable), std::memory_order_relaxed);
    ch.done.store(req, std::memory_order_release);
    ++counters_.withdrawn_commits;
    return false;
  }
  // The large lane shares the engine: its copies never hold up a small
  // commit, even when preempted (CommitOptions::share).
  CommitOptions options{.share = &lane == &lanes_[1]};
  Result<uint64_t> g = fail(Errc::kInvalidArgument, "bad written-range count in the commit channel");
  const uint32_t n = ch.written_count.load(std::memory_order_relaxed);
  const uint32_t frozen = ch.frozen.load(std::memory_order_relaxed);
  if (n != kWrittenAll && n > kMaxWritten && frozen == 2) {
    // Posted, and no commit: the engine still makes the pages its client
    // pended idle again (a pended commit without a number fails so).
    options.frozen = options.pended = true;
    g = engine_.commit(seg->handle, options);
  } else if (n == kWrittenAll || n <= kMaxWritten) {
    // Only what the application wrote is copied; the engine checks the
    // ranges against the segment (a bad one fails this commit alone).
    lane.written.clear();
    if (n != kWrittenAll)
      for (uint32_t i = 0; i < n; ++i)
        lane.written.emplace_back(ch.written[2 * i].load(std::memory_order_relaxed),
                                  ch.written[2 * i + 1].load(std::memory_order_relaxed));
    // "Nothing written" is a range of nothing, not "everything".
    if (n == 0) lane.written.emplace_back(0, 0);
    options.written = lane.written;
    options.frozen = frozen == 1 || frozen == 2;
    options.pended = frozen == 2;
    if (options.pended) options.expect_generation = ch.expect_generation.load(std::memory_order_relaxed);
    g = engine_.commit(seg->handle, options);
    // The application waits meanwhile, so its memory is this generation:
    // the shadow takes what it wrote (or all of it).
    if (g && !seg->shadow.empty()) {
      const std::byte* mem = engine_.data(seg->handle).data();
      if (n == kWrittenAll || seg->shadow_stale) {
        std::memcpy(seg->shadow.data(), mem, seg->size);
      } else {
        for (const auto& [off, len] : lane.written) std::memcpy(seg->shadow.data() + off, mem + off, len);
      }
      seg->shadow_stale = false;
    }
    if (g) seg->refusing = false;
  }
  ch.status.store(g ? 0 : -static_cast<int32_t>(g.error().code), std::memory_order_relaxed);
  if (g) ch.generation.store(*g, std::memory_order_relaxed);
  if (g) ch.log.committed.store(*g, std::memory_order_relaxed);
  ch.done.store(req);  // seq_cst: pairs with the application's app_sleeping store
  if (ch.app_sleeping.load())  // shared memory between processes: not a private futex
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&ch.done), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
  ++counters_.commits;
  if (options.pended) {
    ++counters_.posted_cow_commits;
    if (!g) {
      ++counters_.refused_cow_posts;
      BT_DEBUG("segment %s: posted copy-on-write commit refused: %s", seg->name.c_str(), g.error().message.c_str());
    }
  }
  return options.pended;
}

void Server::commit_loop(CommitLane& lane, const char* thread_name) {
  prctl(PR_SET_NAME, thread_name, 0, 0, 0);
  const uint64_t spin_ns = uint64_t{config_.idle_spin_us} * 1000;
  uint64_t idle_since = now_ns();
  auto set_sleeping = [&lane](uint32_t v) {
    std::lock_guard lock(lane.mu);
    for (Segment* seg : lane.active) seg->channel->daemon_sleeping.store(v);
  };
  // After posted commits only, nobody waits for an answer: spin briefly
  // (more may follow at once) and then sleep. A long spin here mostly kept
  // the application that rang the doorbell off its own vCPU, where the
  // kernel had run this thread: its commit call's p99 was the spin.
  const uint64_t posts_spin_ns = std::min<uint64_t>(spin_ns, kPostsSpinNs);
  uint64_t window = spin_ns;
  uint64_t posts_at = 0;  // when posted commits last came
  while (!stopping_.load(std::memory_order_relaxed)) {
    if (const Polled polled = poll_commits(lane); polled != Polled::kNothing) {
      idle_since = now_ns();
      if (polled == Polled::kPosts) posts_at = idle_since;
      window = polled == Polled::kRequests || spin_ns == uint64_t{UINT32_MAX} * 1000 ? spin_ns : posts_spin_ns;
      continue;
    }
    const uint64_t now = now_ns();
    if (now - idle_since < window) {
      _mm_pause();
      continue;
    }
    // Sleep, telling every application to ring the doorbell (a commit
    // posted before an application saw the flag is taken first). While
    // applications post, only nap: they then post without a doorbell.
    const bool nap = now - posts_at < kNapWindowNs;
    set_sleeping(nap ? kNapping : kAsleep);
    if (poll_commits(lane) == Polled::kNothing) {
      pollfd p{lane.epoll_fd, POLLIN, 0};
      const timespec timeout{0, static_cast<long>(nap ? kNapNs : 100'000'000)};
      if (ppoll(&p, 1, &timeout, nullptr) == 1) {
        // Each application rings its own bell: one that reads its copy
        // only silences itself. The bells are edge-triggered and never
        // read: taking the events is all there is to do.
        epoll_event ready[32];
        while (epoll_wait(lane.epoll_fd, ready, 32, 0) == 32) {
        }
      }
    }
    set_sleeping(kAwake);
    idle_since = now_ns();
  }
}

}  // namespace baton::ipc
