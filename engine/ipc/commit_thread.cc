// batond's commit threads (ipc/server.h): one lane for small segments, one
// for large ones. Each polls the commit channels of the segments attached to
// it, commits what the applications asked for, and sleeps on an eventfd
// (the applications' doorbell) when idle.
//
// Thread: the lane's commit thread, but for attach() and detach() (session
// threads), which take the lane's mutex.

#include <immintrin.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "baton/baton.h"
#include "common/log.h"
#include "ipc/server_impl.h"
#include "runtime/futex.h"

namespace baton::ipc {


Server::CommitLane& Server::lane_of(const Segment& seg) { return lanes_[seg.size > kLargeSegment ? 1 : 0]; }

void Server::attach(Segment& seg) {
  CommitLane& lane = lane_of(seg);
  {
    std::lock_guard lock(lane.mu);
    seg.seen = seg.channel->request.load();
    seg.channel->done.store(seg.seen);
    // The commit thread may be asleep: until it has looked at this channel,
    // the application rings the doorbell.
    seg.channel->daemon_sleeping.store(1);
    lane.active.push_back(&seg);
  }
  const uint64_t one = 1;
  (void)!write(lane.event_fd, &one, sizeof one);
}

void Server::detach(Segment& seg) {
  // Under the lane's mutex: once it is released, the commit thread is not
  // in a commit of this segment and will not start one.
  CommitLane& lane = lane_of(seg);
  std::lock_guard lock(lane.mu);
  lane.active.erase(std::remove(lane.active.begin(), lane.active.end(), &seg), lane.active.end());
}

bool Server::poll_commits(CommitLane& lane) {
  bool busy = false;
  std::lock_guard lock(lane.mu);
  for (Segment* seg : lane.active) {
    CommitChannel& ch = *seg->channel;
    const uint32_t req = ch.request.load();  // seq_cst: pairs with the daemon_sleeping handshake
    if (req == seg->seen) continue;
    busy = true;
    seg->seen = req;
    // Taken, unless the application stopped waiting for it first (or wrote
    // something else there: then only its own commit is lost).
    uint32_t posted = kPosted;
    if (!ch.claim.compare_exchange_strong(posted, kTaken)) {
      ch.status.store(-static_cast<int32_t>(Errc::kUnavailable), std::memory_order_relaxed);
      ch.done.store(req, std::memory_order_release);
      ++counters_.withdrawn_commits;
      continue;
    }
    // The large lane shares the engine: its copies never hold up a small
    // commit, even when preempted (CommitOptions::share).
    CommitOptions options{.share = &lane == &lanes_[1]};
    Result<uint64_t> g = fail(Errc::kInvalidArgument, "bad written-range count in the commit channel");
    const uint32_t n = ch.written_count.load(std::memory_order_relaxed);
    if (n == kWrittenAll || n <= kMaxWritten) {
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
      options.frozen = ch.frozen.load(std::memory_order_relaxed) == 1;
      g = engine_.commit(seg->handle, options);
    }
    ch.status.store(g ? 0 : -static_cast<int32_t>(g.error().code), std::memory_order_relaxed);
    if (g) ch.generation.store(*g, std::memory_order_relaxed);
    ch.done.store(req, std::memory_order_release);
    if (ch.app_sleeping.load())  // shared memory between processes: not a private futex
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&ch.done), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
    ++counters_.commits;
  }
  return busy;
}

void Server::commit_loop(CommitLane& lane, const char* thread_name) {
  prctl(PR_SET_NAME, thread_name, 0, 0, 0);
  const uint64_t spin_ns = uint64_t{config_.idle_spin_us} * 1000;
  uint64_t idle_since = now_ns();
  auto set_sleeping = [&lane](uint32_t v) {
    std::lock_guard lock(lane.mu);
    for (Segment* seg : lane.active) seg->channel->daemon_sleeping.store(v);
  };
  while (!stopping_.load(std::memory_order_relaxed)) {
    if (poll_commits(lane)) {
      idle_since = now_ns();
      continue;
    }
    if (now_ns() - idle_since < spin_ns) {
      _mm_pause();
      continue;
    }
    // Sleep, telling every application to ring the doorbell; a commit
    // posted before an application saw the flag is taken first.
    set_sleeping(1);
    if (!poll_commits(lane)) {
      pollfd p{lane.event_fd, POLLIN, 0};
      if (poll(&p, 1, 100) == 1) {
        uint64_t v;
        (void)!read(lane.event_fd, &v, sizeof v);
      }
    }
    set_sleeping(0);
    idle_since = now_ns();
  }
}

}  // namespace baton::ipc
