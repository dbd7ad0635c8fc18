#include "ipc/client.h"
#include "ipc/liveness.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <utility>

#include "baton/baton.h"
#include "common/log.h"
#include "protocol/wire.h"
#include "runtime/futex.h"
#include "runtime/readable.h"

namespace baton::ipc {
namespace {

constexpr uint64_t kMinTrackedSize = 32 * 1024;     // smaller segments are copied whole
constexpr uint64_t kSpinNs = 200'000;               // before sleeping on `done`
/// What every commit refused as fenced says, before how it was refused.
constexpr const char* kFencedText = "fenced: the segment moved to a newer owner, or was deleted";

void unmap(ClientSegment& s) {
  s.cow.reset();  // lifts its protection before the mapping goes
  s.watch.reset();
  if (s.data != nullptr) munmap(s.data, s.mapped);
  if (s.channel != nullptr) munmap(s.channel, sizeof(CommitChannel));
  if (s.event_fd >= 0) ::close(s.event_fd);
  s.data = nullptr;
  s.channel = nullptr;
  s.event_fd = -1;
}

/// Nanoseconds from a variable of milliseconds, if it is set above 0.
uint64_t ms_from_env(const char* name, uint64_t otherwise_ns) {
  const char* t = std::getenv(name);
  const uint64_t ms = t != nullptr ? std::strtoull(t, nullptr, 10) : 0;
  return ms > 0 ? ms * 1'000'000 : otherwise_ns;
}

/// A request of `op` about `name` (its length checked by the caller).
Request named_request(Op op, std::string_view name) {
  Request r{};
  r.magic = kMagic;
  r.version = kVersion;
  r.op = static_cast<uint16_t>(op);
  r.name_len = static_cast<uint8_t>(name.size());
  std::memcpy(r.name, name.data(), name.size());
  return r;
}

}  // namespace

Result<std::unique_ptr<Client>> Client::connect(const std::string& path) {
  if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path))
    return fail(Errc::kInvalidArgument, "socket path empty or too long");
  auto c = std::unique_ptr<Client>(new Client());
  c->fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (c->fd_ < 0) return fail(Errc::kIo, "socket: ", std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(c->fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return fail(Errc::kUnavailable, "no batond at ", path, ": ", std::strerror(errno));
  // batond accepts every connection and refuses some at once (a user it
  // does not let in, too many applications), saying why: ask now, so that
  // a refusal is this call's error rather than the first request's. A
  // batond too busy or stopped to answer within a moment lets the
  // connection go ahead; its answer is read before the next request's,
  // and a refusal then is every later call's error.
  // A status, events or groups request gives up BATON_STATUS_TIMEOUT_MS
  // after the connect began, the greeting included.
  c->text_patience_ns_ = ms_from_env("BATON_STATUS_TIMEOUT_MS", c->text_patience_ns_);
  Request hello{};
  hello.magic = kMagic;
  hello.version = kVersion;
  hello.op = static_cast<uint16_t>(Op::kHello);
  const uint64_t greeting = now_ns();
  auto greeted = c->call(hello, nullptr, nullptr, std::min(kHelloPatienceNs, c->text_patience_ns_));
  if (!greeted) {
    if (greeted.error().code != Errc::kTimeout) return tl::unexpected(greeted.error());
    c->hello_unanswered_ = true;
    c->hello_waited_ns_ = now_ns() - greeting;
  } else if (greeted->status != 0 && greeted->status != BATON_EINVAL) {  // (EINVAL: a batond older than kHello)
    return tl::unexpected(error_of(*greeted));
  }
  ucred cred{};
  socklen_t cred_len = sizeof cred;
  if (getsockopt(c->fd_, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0) c->daemon_pid_ = cred.pid;
  hold_liveness();  // an application the failover runner started: its death is seen at once
  c->commit_timeout_ns_ = ms_from_env("BATON_COMMIT_TIMEOUT_MS", c->commit_timeout_ns_);
  return c;
}

Client::~Client() {
  if (periodic_.joinable()) {
    {
      std::lock_guard lock(periodic_mu_);
      periodic_stop_ = true;
    }
    periodic_cv_.notify_all();
    periodic_.join();
  }
  for (auto& s : segments_) unmap(*s);
  if (fd_ >= 0) ::close(fd_);
}

void Client::interrupt() noexcept {
  interrupted_.store(true);
  ::shutdown(fd_, SHUT_RDWR);
}

Result<Reply> Client::call(const Request& r, std::vector<int>* fds, std::string* text, uint64_t patience_ns) {
  // Another thread's request first (a wait may hold it for its timeout):
  // the patience counts from this one's turn.
  std::lock_guard lock(call_mu_);
  const uint64_t deadline = patience_ns == 0 ? 0 : now_ns() + patience_ns;
  if (refused_) return tl::unexpected(*refused_);
  // Answers to calls that gave up on a stalled batond come first (batond
  // answers a connection's requests in order, each once): read and drop
  // them, with whatever descriptors they carry.
  while (unanswered_ > 0) {
    if (wait_readable(fd_, deadline) == Readable::kTimeout)  // an error: receive() says which
      return fail(Errc::kTimeout, "batond has not answered an earlier request in ", std::to_string(patience_ns / 1'000'000),
                  " ms (it may be stopped or overloaded)");
    auto late = receive(nullptr, nullptr);
    if (!late) return late;
    --unanswered_;
    if (hello_unanswered_) {  // the first owed answer: the connection's own
      hello_unanswered_ = false;
      if (late->status != 0 && late->status != BATON_EINVAL) {
        refused_ = error_of(*late);
        return tl::unexpected(*refused_);
      }
    }
  }
  if (send(fd_, &r, sizeof r, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof r)) {
    const int err = errno;
    // A daemon that refused this connection (credentials, too many
    // applications) said why before it hung up: report that.
    Reply refusal{};
    if (recv(fd_, &refusal, sizeof refusal, MSG_DONTWAIT) == static_cast<ssize_t>(sizeof refusal) &&
        refusal.magic == kMagic && refusal.status != 0) {
      refused_ = error_of(refusal);
      return tl::unexpected(*refused_);
    }
    return fail(Errc::kUnavailable, "batond went away: ", std::strerror(err));
  }
  if (wait_readable(fd_, deadline) == Readable::kTimeout) {
    ++unanswered_;
    return fail(Errc::kTimeout, "batond did not answer in ", std::to_string(patience_ns / 1'000'000),
                " ms (it may be stopped or overloaded)");
  }
  return receive(fds, text);
}

Result<Reply> Client::receive(std::vector<int>* fds, std::string* text) {
  Reply rep{};
  std::string tail(kMaxReply - sizeof rep, '\0');
  iovec iov[2] = {{&rep, sizeof rep}, {tail.data(), tail.size()}};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
  std::vector<int> got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n >= 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    got.resize(got.size() + count);
    std::memcpy(got.data() + got.size() - count, CMSG_DATA(c), count * sizeof(int));
  }
  const bool whole = n >= static_cast<ssize_t>(sizeof rep) && rep.magic == kMagic &&
                     static_cast<size_t>(n) == sizeof rep + rep.text_len;
  if (whole && fds != nullptr) fds->insert(fds->end(), got.begin(), got.end());
  else for (int fd : got) ::close(fd);
  if (!whole) return fail(Errc::kUnavailable, "batond went away or sent a malformed reply");
  if (text != nullptr) *text = tail.substr(0, rep.text_len);
  rep.message[sizeof rep.message - 1] = '\0';
  return rep;
}

Result<ClientSegment*> Client::open(Op op, std::string_view name, uint64_t size) {
  if (!wire::valid_name(name)) return fail(Errc::kInvalidArgument, "segment name must be 1..63 printable characters");
  Request r = named_request(op, name);
  r.size = size;
  std::vector<int> fds;
  auto rep = call(r, &fds);
  if (!rep) return tl::unexpected(rep.error());
  auto close_all = [&] {
    for (int fd : fds) ::close(fd);
  };
  if (rep->status != 0) {
    close_all();
    return tl::unexpected(error_of(*rep));
  }
  const size_t expected = rep->copy_on_write != 0 ? 4 : 3;
  if (fds.size() != expected) {
    close_all();
    return fail(Errc::kInternal, "batond sent ", std::to_string(fds.size()), " descriptors, expected ",
                std::to_string(expected));
  }
  auto s = std::make_unique<ClientSegment>();
  s->handle = rep->handle;
  s->size = rep->size;
  s->generation = rep->generation;
  s->restored = rep->restored != 0;
  struct stat st{};
  if (fstat(fds[0], &st) != 0 || static_cast<uint64_t>(st.st_size) < s->size) {
    close_all();
    return fail(Errc::kInternal, "segment descriptor smaller than the segment");
  }
  s->mapped = static_cast<uint64_t>(st.st_size);
  if (fstat(fds[1], &st) != 0 || static_cast<uint64_t>(st.st_size) < sizeof(CommitChannel)) {
    close_all();
    return fail(Errc::kInternal, "commit channel descriptor smaller than a channel");
  }
  void* data = mmap(nullptr, s->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
  void* ch = mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
  ::close(fds[0]);
  ::close(fds[1]);
  s->event_fd = fds[2];
  if (data == MAP_FAILED || ch == MAP_FAILED) {
    if (data != MAP_FAILED) munmap(data, s->mapped);
    if (ch != MAP_FAILED) munmap(ch, sizeof(CommitChannel));
    ::close(s->event_fd);
    return fail(Errc::kNoMemory, "cannot map the segment: ", std::strerror(errno));
  }
  s->data = static_cast<std::byte*>(data);
  s->channel = static_cast<CommitChannel*>(ch);
  // Posted commits count on from the generation batond has, in the log as
  // batond left it at the open.
  s->posts = fds.size() == 3 && s->size <= kLogMaxSegment && post_commits_allowed();
  s->cow_posts = fds.size() == 4 && post_commits_allowed();
  s->quiescent = quiescent_commits_promised();
  s->last_generation = s->channel->log.committed.load();
  s->log_head = s->channel->log.head.load();
  s->failures_seen = s->channel->log.failures.load();
  if (fds.size() == 4) {
    // Copy-on-write: this mapping is protected and this process's handler
    // copies pages aside for batond. Not where the application said its
    // memory changes by other means (BATON_TRACK_WRITES=0).
    std::string why = track_writes_allowed() ? CopyOnWrite::unavailable_reason() : "BATON_TRACK_WRITES=0";
    auto share = CowShare::map(fds[3], s->mapped);  // takes the descriptor
    if (!share) {
      why = share.error().message;
    } else if (!why.empty()) {
      share->header().declined.store(1, std::memory_order_relaxed);  // batond's status says so
    } else {
      auto cow = CopyOnWrite::attach_client(s->data, s->mapped, std::move(*share),
                                            rep->protect_ahead == 1 || s->quiescent);
      if (cow) s->cow = std::move(*cow);
      else why = cow.error().message;
    }
    if (s->cow == nullptr)
      BT_WARN("segment %.*s: no copy-on-write in this process, commits copy it%s: %s", static_cast<int>(name.size()),
              name.data(),
              rep->commit_every_ms != 0
                  ? (", and batond's periodic commits (every " + std::to_string(rep->commit_every_ms) +
                     " ms) are not taken: only the application's own")
                        .c_str()
                  : "",
              why.c_str());
    else
      s->commit_every_ms = rep->commit_every_ms;
    // With a period, only what the application writes from now on counts:
    // an open that only reads makes no generation.
    if (s->cow != nullptr && s->commit_every_ms != 0)
      if (auto ok = s->cow->protect_all(); !ok)
        BT_WARN("segment %.*s: %s: the first periodic commit takes it whole", static_cast<int>(name.size()),
                name.data(), ok.error().message.c_str());
  }
  // A segment of a chunk or two is copied whole anyway: no scan, no faults.
  if (s->cow == nullptr && s->size > kMinTrackedSize && track_writes_allowed())
    s->watch = WriteWatch::start(s->data, s->mapped, nullptr);
  ClientSegment* opened = s.get();
  {
    std::lock_guard lock(periodic_mu_);
    if (s->commit_every_ms != 0) {
      s->next_periodic_ns = now_ns() + uint64_t{s->commit_every_ms} * 1'000'000;
      if (!periodic_.joinable()) periodic_ = std::thread([this] { run_periodic(); });
    }
    segments_.push_back(std::move(s));
  }
  periodic_cv_.notify_all();
  return opened;
}

bool post_commits_allowed() {
  const char* v = std::getenv("BATON_POST_COMMITS");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

bool quiescent_commits_promised() {
  const char* v = std::getenv("BATON_QUIESCENT_COMMITS");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

bool track_writes_allowed() {
  const char* v = std::getenv("BATON_TRACK_WRITES");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

namespace {

/// Tells batond what was written since the previous commit: `s.ranges`, or
/// everything (`all`). Past kMaxWritten ranges, they are widened to fit
/// (copying more is safe; under copy-on-write, a page not written since
/// the previous commit is still protected, so pending it is too).
void put_written(ClientSegment& s, bool all) {
  CommitChannel& ch = *s.channel;
  auto& ranges = s.ranges;
  if (!all && ranges.size() > kMaxWritten) {
    // Round each out to a grain that makes kMaxWritten enough, and merge.
    const uint64_t grain = std::max<uint64_t>(4096, (s.size / kMaxWritten + 4095) & ~uint64_t{4095}) * 2;
    for (auto& [off, len] : ranges) {
      const uint64_t end = std::min(s.size, off + len);
      off = off / grain * grain;
      len = std::min(s.size, (end + grain - 1) / grain * grain) - off;
    }
    std::sort(ranges.begin(), ranges.end());
    size_t n = 0;
    for (const auto& r : ranges) {
      if (n > 0 && r.first <= ranges[n - 1].first + ranges[n - 1].second)
        ranges[n - 1].second = std::max(ranges[n - 1].first + ranges[n - 1].second, r.first + r.second) -
                               ranges[n - 1].first;
      else
        ranges[n++] = r;
    }
    ranges.resize(n);
    all = ranges.size() > kMaxWritten;
  }
  if (all) {
    ch.written_count.store(kWrittenAll, std::memory_order_relaxed);
    return;
  }
  for (size_t i = 0; i < ranges.size(); ++i) {
    ch.written[2 * i].store(ranges[i].first, std::memory_order_relaxed);
    ch.written[2 * i + 1].store(ranges[i].second, std::memory_order_relaxed);
  }
  ch.written_count.store(static_cast<uint32_t>(ranges.size()), std::memory_order_relaxed);
}

/// The ranges the application named, then `found` adds what a watch or
/// copy-on-write found (the mapping is page-rounded: writes past the
/// segment's end are no one's).
auto start_ranges(ClientSegment& s, std::span<const std::pair<uint64_t, uint64_t>> named) {
  s.ranges.assign(named.begin(), named.end());
  return [&s](uint64_t off, uint64_t len) {
    if (off < s.size) s.ranges.emplace_back(off, std::min(len, s.size - off));
  };
}

/// Whether batond closed its end of the socket (it died or stopped).
bool daemon_gone(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/// Whether process `pid` (batond, from the socket) still runs.
bool daemon_runs(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

/// Rings batond's doorbell: wakes the commit thread of `s`'s lane.
void ring(const ClientSegment& s) {
  const uint64_t one = 1;
  (void)!write(s.event_fd, &one, sizeof one);
}

/// Waits until `done(word)` holds, where batond moves `word` and, when
/// `sleeping` is set, wakes it as a futex in shared memory. Spins
/// `spin_ns` first, then sleeps in futex waits of up to 10 ms. Each round
/// asks `give_up(waited_ns)` first: true ends the wait (returns false).
template <typename Done, typename GiveUp>
bool await_daemon(std::atomic<uint32_t>& word, std::atomic<uint32_t>& sleeping, uint64_t spin_ns, Done done,
                  GiveUp give_up) {
  const uint64_t start = now_ns();
  while (!done(word.load(std::memory_order_acquire))) {
    const uint64_t waited = now_ns() - start;
    if (give_up(waited)) return false;
    if (waited < spin_ns) {
      _mm_pause();
      continue;
    }
    sleeping.store(1);
    const uint32_t seen = word.load();
    if (!done(seen)) {
      timespec ts{0, 10'000'000};
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT, seen, &ts, nullptr, 0);
    }
    sleeping.store(0);
  }
  return true;
}

/// Publishes a commit request (what it says is stored already) and rings
/// the doorbell if batond sleeps (`posted`: only if it sleeps for long;
/// a napping batond looks within kNapNs by itself). Returns its number;
/// `rang`: whether it rang.
uint32_t publish(ClientSegment& s, bool posted, bool& rang) {
  CommitChannel& ch = *s.channel;
  const uint32_t seq = ch.request.load(std::memory_order_relaxed) + 1;  // we are the only writer
  ch.claim.store(claim_of(seq, kPosted), std::memory_order_relaxed);  // published by the request's store
  ch.request.store(seq);  // seq_cst: pairs with the daemon's daemon_sleeping store
  const uint32_t sleeping = ch.daemon_sleeping.load();
  rang = sleeping == kAsleep || (sleeping != kAwake && !posted);
  if (rang) ring(s);
  return seq;
}

/// Waits for batond's answer to request `seq` (publish). After
/// `timeout_ns` the request is withdrawn, unless batond has taken it
/// (post).
Result<uint64_t> answer(ClientSegment& s, uint32_t seq, bool rang, uint64_t timeout_ns, int socket_fd,
                        const std::atomic<bool>& interrupted, pid_t daemon_pid) {
  CommitChannel& ch = *s.channel;
  Result<uint64_t> failed;
  const bool answered = await_daemon(
      ch.done, ch.app_sleeping, rang ? 0 : kSpinNs, [seq](uint32_t done) { return done == seq; },
      [&](uint64_t waited) {
        // A batond that went away answers nothing: the wait ends then, not
        // at its timeout (looked at every futex slice, past the spin).
        const bool gone = waited > 10'000'000 && daemon_gone(socket_fd);
        if (waited <= timeout_ns && !gone) return false;
        uint32_t posted = claim_of(seq, kPosted);
        if (ch.claim.compare_exchange_strong(posted, claim_of(seq, kWithdrawn)))
          failed = gone ? fail(Errc::kUnavailable,
                               "batond went away before it took the snapshot; the commit was withdrawn and will "
                               "not become a generation")
                        : fail(Errc::kUnavailable, "batond did not take the snapshot in ",
                               std::to_string(timeout_ns / 1'000'000),
                               " ms; the commit was withdrawn and will not become a generation");
        else if (gone || daemon_gone(socket_fd)) {
          if (interrupted.load() && waited <= timeout_ns && daemon_runs(daemon_pid)) return false;
          failed = fail(Errc::kUnavailable,
                        "batond went away during the commit (it may or may not have become a generation)");
        }
        return !failed;
      });
  if (!answered) return failed;
  const int32_t status = ch.status.load(std::memory_order_relaxed);
  if (status != 0) {
    const auto code = static_cast<Errc>(-status);
    const char* why = code == Errc::kFenced            ? kFencedText
                      : code == Errc::kTimeout           ? "batond timed out taking the snapshot"
                      : code == Errc::kNoMemory          ? "batond is out of memory"
                      : code == Errc::kInvalidArgument   ? "a written range is past the segment's end"
                                                         : errc_name(code);
    return tl::unexpected(Error{code, std::string("commit refused by batond: ") + why});
  }
  return ch.generation.load(std::memory_order_relaxed);
}

/// Posts the commit request in the channel (what it says is stored
/// already) and waits for batond's answer. After `timeout_ns` the request
/// is withdrawn, unless batond has taken it (CommitChannel::claim): then
/// the answer is awaited for as long as batond lives, since what it took
/// becomes a generation. `interrupted`: this process shut the connection
/// itself (baton_stop on another thread), which reads as batond gone; a
/// commit batond took is then awaited while batond runs, up to the
/// timeout, since batond is copying the memory the application would
/// write as soon as this returned (a generation of neither state).
Result<uint64_t> post(ClientSegment& s, uint64_t timeout_ns, int socket_fd, const std::atomic<bool>& interrupted,
                      pid_t daemon_pid) {
  // A sleeping daemon is rung, and then this thread sleeps too rather than
  // spin: the kernel can then run the daemon's commit thread on this vCPU
  // at once, where waking it on the other (idle, halted) vCPU while this
  // one spins costs a cross-vCPU wake-up of ~100 us on these machines.
  bool rang = false;
  const uint32_t seq = publish(s, false, rang);
  return answer(s, seq, rang, timeout_ns, socket_fd, interrupted, daemon_pid);
}

/// Waits until batond's tail of `s`'s log reaches `target` (slots it
/// took), ringing its doorbell if it sleeps. False after `timeout_ns`,
/// or when batond has gone.
bool wait_tail(ClientSegment& s, uint32_t target, uint64_t timeout_ns, int socket_fd) {
  CommitLog& log = s.channel->log;
  auto reached = [target](uint32_t tail) { return static_cast<int32_t>(tail - target) >= 0; };
  if (reached(log.tail.load(std::memory_order_acquire))) return true;
  // batond is behind: ring it if it sleeps, and then sleep at once (as a
  // waiting commit does); else spin only briefly, since a commit thread
  // that is behind while awake has usually lost its vCPU, and spinning
  // here would keep it off this one.
  bool rang = false;
  if (s.channel->daemon_sleeping.load()) {
    ring(s);
    rang = true;
  }
  constexpr uint64_t kBehindSpinNs = 20'000;
  return await_daemon(log.tail, log.app_sleeping, rang ? 0 : kBehindSpinNs, reached, [&](uint64_t waited) {
    return waited > timeout_ns || (waited > 10'000'000 && daemon_gone(socket_fd));
  });
}

/// Posts a commit of `ranges` (they fit a slot) as the next generation
/// and returns it, without waiting for batond, unless every slot is still
/// untaken (then it waits for one, up to `timeout_ns`).
Result<uint64_t> post_log(ClientSegment& s, std::span<const std::pair<uint64_t, uint64_t>> ranges,
                          uint64_t timeout_ns, int socket_fd) {
  CommitLog& log = s.channel->log;
  // A batond that went away takes nothing more, so a commit is not posted
  // then (it would never become a generation). Looked at with half the log
  // behind, and at most once a millisecond else: a poll costs more than a
  // post (a commit returned success for seconds after batond was gone: a
  // new-user trial, session 36).
  const uint64_t now = now_ns();
  if (s.log_head - log.tail.load(std::memory_order_acquire) > kLogSlots / 2 || now - s.gone_checked_ns > 1'000'000) {
    s.gone_checked_ns = now;
    if (daemon_gone(socket_fd)) return fail(Errc::kUnavailable, "batond went away; this commit was not posted");
  }
  if (!wait_tail(s, s.log_head + 1 - kLogSlots, timeout_ns, socket_fd)) {
    if (daemon_gone(socket_fd)) return fail(Errc::kUnavailable, "batond went away; this commit was not posted");
    return fail(Errc::kUnavailable, "batond took none of the ", std::to_string(kLogSlots),
                " commits posted before this one in ", std::to_string(timeout_ns / 1'000'000),
                " ms; this one was not posted");
  }
  LogSlot& slot = log.slots[s.log_head % kLogSlots];
  uint64_t at = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto [off, len] = ranges[i];
    std::memcpy(slot.data + at, s.data + off, len);
    slot.ranges[2 * i].store(off, std::memory_order_relaxed);
    slot.ranges[2 * i + 1].store(len, std::memory_order_relaxed);
    at += len;
  }
  const uint64_t generation = s.last_generation + 1;
  slot.generation.store(generation, std::memory_order_relaxed);
  slot.count.store(static_cast<uint32_t>(ranges.size()), std::memory_order_relaxed);
  slot.bytes.store(static_cast<uint32_t>(at), std::memory_order_relaxed);
  log.head.store(++s.log_head);  // seq_cst: publishes the slot; pairs with daemon_sleeping
  // A napping commit thread takes it within kNapNs without a doorbell: no
  // system call, and no wake-up that could run batond on this vCPU.
  if (s.channel->daemon_sleeping.load() == kAsleep) ring(s);
  s.last_generation = generation;
  return generation;
}

/// The ranges of a post: `ranges` sorted and merged (or the whole
/// segment), if they fit a log slot. One past the segment's end does not
/// (the waiting commit then says so: batond refuses it).
bool fit_slot(ClientSegment& s, bool all) {
  auto& r = s.ranges;
  if (all) {
    r.assign(1, {0, s.size});
  } else {
    for (const auto& [off, len] : r)
      if (off > s.size || len > s.size - off) return false;
    std::erase_if(r, [](const auto& x) { return x.second == 0; });
    std::sort(r.begin(), r.end());
    size_t n = 0;
    for (const auto& x : r) {
      if (n > 0 && x.first <= r[n - 1].first + r[n - 1].second)
        r[n - 1].second = std::max(r[n - 1].first + r[n - 1].second, x.first + x.second) - r[n - 1].first;
      else
        r[n++] = x;
    }
    r.resize(n);
  }
  if (r.size() > kLogRanges) return false;
  uint64_t bytes = 0;
  for (const auto& x : r) bytes += x.second;
  return bytes <= kLogSlotBytes;
}

}  // namespace

void Client::answer_cow_post(ClientSegment& s, uint64_t timeout_ns) {
  if (!std::exchange(s.cow_posted, false)) return;
  auto g = answer(s, s.cow_post, false, timeout_ns != 0 ? timeout_ns : commit_timeout_ns_, fd_, interrupted_,
                  daemon_pid_);
  if (g && *g == s.cow_post_generation) return;
  // No generation (or, from a batond that answered another, not the one
  // the application was told): every page counts as written again, and
  // the count goes on from the generation before it. The application is
  // told at its next commit, wait or close, even if a periodic commit
  // took the answer.
  if (s.cow != nullptr) CopyOnWrite::Freeze(*s.cow).untake();
  s.last_generation = s.cow_post_generation - 1;
  if (!g) {
    if (g.error().code == Errc::kFenced) s.fenced = true;  // every later commit is refused too
    s.cow_refusal = Error{g.error().code, "the posted commit of generation " + std::to_string(s.cow_post_generation) +
                                              " is no generation: " + g.error().message};
  } else {
    s.cow_refusal = Error{Errc::kInternal, "batond committed the posted commit of generation " +
                                               std::to_string(s.cow_post_generation) + " as " + std::to_string(*g)};
  }
}

Result<void> Client::report_cow_post(ClientSegment& s, uint64_t timeout_ns) {
  answer_cow_post(s, timeout_ns);
  if (s.cow_refusal) return tl::unexpected(*std::exchange(s.cow_refusal, std::nullopt));
  return {};
}

Result<void> Client::drain_posts(ClientSegment& s, uint64_t timeout_ns) {
  if (auto reported = report_cow_post(s, timeout_ns); !reported) return reported;
  if (!s.posts) return {};
  CommitLog& log = s.channel->log;
  if (timeout_ns == 0) timeout_ns = commit_timeout_ns_;
  if (!wait_tail(s, s.log_head, timeout_ns, fd_)) {
    if (daemon_gone(fd_)) return fail(Errc::kUnavailable, "batond went away before it took this segment's posted commits");
    return fail(Errc::kTimeout, "batond did not take this segment's posted commits in ",
                std::to_string(timeout_ns / 1'000'000), " ms");
  }
  const uint32_t failures = log.failures.load(std::memory_order_relaxed);
  if (failures == s.failures_seen) return {};
  // Refused: count from batond's generation again, and send everything
  // next (what the refused slots carried is in no generation).
  s.failures_seen = failures;
  s.last_generation = log.committed.load(std::memory_order_relaxed);
  s.resend_all = true;
  const int32_t status = log.status.load(std::memory_order_relaxed);
  s.fenced |= status == -static_cast<int32_t>(Errc::kFenced) || log.fenced.load(std::memory_order_relaxed) != 0;
  const uint64_t generation = log.failed_generation.load(std::memory_order_relaxed);
  const Errc code = s.fenced ? Errc::kFenced : status < 0 ? static_cast<Errc>(-status) : Errc::kInternal;
  return tl::unexpected(Error{code,
                              "batond refused the posted commit of generation " + std::to_string(generation) +
                                  " (it and the commits posted after it are no generation; the last is " +
                                  std::to_string(s.last_generation) + ")"});
}

Result<uint64_t> Client::commit(ClientSegment* s, std::span<const std::pair<uint64_t, uint64_t>> written) {
  std::lock_guard lock(s->commit_mu);
  // A refused posted commit fails this one (it was counted on), as a
  // refused posted log slot does.
  if (auto reported = report_cow_post(*s); !reported) return tl::unexpected(reported.error());
  auto g = commit_locked(s, written, s->quiescent);
  // A commit of the application's restarts the period.
  if (s->commit_every_ms != 0) s->next_periodic_ns = now_ns() + uint64_t{s->commit_every_ms} * 1'000'000;
  return g;
}

// --- periodic commits (S5) ---------------------------------------------------
// batond gave the segment a period: the library commits it by itself when
// anything was written since its last commit. The snapshot is a point in
// the application's run, as an application commit's is (copy-on-write: a
// write to a page already protected waits while the rest is protected).

void Client::run_periodic() {
  pthread_setname_np(pthread_self(), "baton-periodic");
  std::unique_lock lock(periodic_mu_);
  while (!periodic_stop_) {
    const uint64_t now = now_ns();
    uint64_t next = now + 100'000'000;
    for (auto& s : segments_) {
      std::lock_guard commit_lock(s->commit_mu);
      if (s->commit_every_ms == 0 || s->cow == nullptr) continue;
      if (now >= s->next_periodic_ns) {
        if (s->cow->any_written() && s->cow->let_write_land()) {  // one generation, not two
          next = std::min(next, now + CopyOnWrite::kWriteLandsNs);
          continue;
        }
        s->next_periodic_ns = now + uint64_t{s->commit_every_ms} * 1'000'000;
        if (s->cow->any_written()) {
          auto g = commit_locked(s.get(), {}, false);  // other threads write on meanwhile
          if (!g && (g.error().code == Errc::kFenced || daemon_gone(fd_))) {
            // Not the owner any more, or batond went away (this connection
            // is over: the application connects again): no commit of it can
            // succeed again.
            BT_WARN("segment handle %u: periodic commits stop: %s", s->handle, g.error().message.c_str());
            s->commit_every_ms = 0;
            continue;
          }
          if (!g && s->periodic_failures++ == 0)
            BT_WARN("segment handle %u: periodic commit failed: %s (retried every %u ms; logged again once one "
                    "succeeds)", s->handle, g.error().message.c_str(), s->commit_every_ms);
          if (g && s->periodic_failures != 0) {
            BT_WARN("segment handle %u: periodic commits succeed again, after %u failed", s->handle,
                    s->periodic_failures);
            s->periodic_failures = 0;
          }
        }
      }
      next = std::min(next, s->next_periodic_ns);
    }
    const uint64_t after = now_ns();
    periodic_cv_.wait_for(lock, std::chrono::nanoseconds(next > after ? next - after : 0));
  }
}

Result<uint64_t> Client::commit_locked(ClientSegment* s, std::span<const std::pair<uint64_t, uint64_t>> written,
                                      bool quiescent) {
  CommitChannel& ch = *s->channel;
  if (s->cow != nullptr && s->fenced)
    return fail(Errc::kFenced, kFencedText, " (a commit was refused)");
  if (s->cow != nullptr) {
    // The commit point: the written pages are taken and protected, and
    // this mapping's fault handler waits until batond has marked what the
    // snapshot needs; then the application writes on while batond's
    // worker copies it. Or, when batond said the last snapshot is settled
    // and its next stage needs only these pages, this process marks them
    // itself and posts the commit without waiting (ipc/messages.h).
    answer_cow_post(*s);  // a refusal is the application's to hear (Client::commit), not a periodic commit's
    bool frozen = false;
    Result<uint64_t> g = 0;
    {
      CopyOnWrite::Freeze freeze(*s->cow);
      freeze.take_written(start_ranges(*s, written));
      // Quiescent: the pages left to the commit are copied aside below, once
      // they are pending, instead of protected here.
      const bool copy_left = quiescent && freeze.copy_left_pays();
      Result<void> protect;
      if (!copy_left) protect = freeze.protect();
      if (!protect)
        BT_WARN("segment handle %u: copy-on-write stops, commits copy it: %s", s->handle,
                protect.error().message.c_str());
      frozen = static_cast<bool>(protect);
      // Posted: just the pages taken (not those the application named,
      // nor runs coarsened to fit the channel), and not too many to mark
      // here (past an eighth of the segment, batond's pass over its bitmap
      // costs less than a store per page).
      const bool posted = frozen && s->cow_posts && written.empty() && s->ranges.size() <= kMaxWritten &&
                          freeze.taken_pages().size() <= std::max<uint64_t>(64, s->size / CopyOnWrite::kPage / 8) &&
                          s->last_generation != 0 && s->cow->ready() == s->last_generation;
      put_written(*s, !frozen);  // a failed protect: batond copies everything
      ch.frozen.store(posted ? 2 : frozen ? 1 : 0, std::memory_order_relaxed);
      if (posted) {
        freeze.pend_taken();
        if (copy_left) freeze.copy_left();  // (before batond can settle them)
        s->cow_post_generation = s->last_generation + 1;
        ch.expect_generation.store(s->cow_post_generation, std::memory_order_relaxed);
        bool rang = false;
        s->cow_post = publish(*s, true, rang);
        s->cow_posted = true;
        s->last_generation = s->cow_post_generation;
        return s->cow_post_generation;
      }
      g = post(*s, commit_timeout_ns_, fd_, interrupted_, daemon_pid_);
      // Even after a failure: batond may have pended them (a refusal after
      // it took the commit); a page it did not pend is not copied.
      if (copy_left) freeze.copy_left();
      if (!g) freeze.untake();  // its pages may not have been applied: all again next time
      if (!g && g.error().code == Errc::kFenced) s->fenced = true;  // every later commit is refused too
      if (g) s->last_generation = *g;
    }
    // batond settled everything before its copy: the protection can go.
    if (!frozen && g) {
      s->cow.reset();
      if (s->size > kMinTrackedSize) s->watch = WriteWatch::start(s->data, s->mapped, nullptr);
    }
    return g;
  }
  auto found = start_ranges(*s, written);
  bool all = written.empty() && s->watch == nullptr;
  if (s->watch != nullptr && !s->watch->collect(found)) all = true;
  if (std::exchange(s->resend_all, false)) all = true;
  if (s->posts) {
    if (s->fenced) return fail(Errc::kFenced, kFencedText, " (a posted commit was refused)");
    // A refusal of an earlier post fails this commit (it was counted on).
    if (s->failures_seen != ch.log.failures.load(std::memory_order_relaxed))
      if (auto drained = drain_posts(*s); !drained) return tl::unexpected(drained.error());
    if (fit_slot(*s, all)) {
      auto g = post_log(*s, s->ranges, commit_timeout_ns_, fd_);
      if (!g) s->resend_all = true;
      return g;
    }
    // Too much for a slot: the waiting commit, after every post.
    s->resend_all = true;
    if (auto drained = drain_posts(*s); !drained) return tl::unexpected(drained.error());
  }
  put_written(*s, all);  // published by the request's store
  ch.frozen.store(0, std::memory_order_relaxed);
  s->resend_all = true;  // until this commit is known to have succeeded
  auto g = post(*s, commit_timeout_ns_, fd_, interrupted_, daemon_pid_);
  if (g) {
    s->resend_all = false;
    s->last_generation = *g;
  } else if (g.error().code == Errc::kFenced) {
    s->fenced = true;  // as a refused post would: every later commit is refused
  }
  return g;
}

Result<void> Client::wait(ClientSegment* s, uint64_t generation, uint32_t k, uint32_t timeout_ms) {
  {
    // batond must have taken the posted commits before it can wait on them.
    std::lock_guard lock(s->commit_mu);
    if (auto drained = drain_posts(*s, (uint64_t{timeout_ms} + kWaitSlackMs) * 1'000'000); !drained)
      return tl::unexpected(drained.error());
  }
  Request r{};
  r.magic = kMagic;
  r.version = kVersion;
  r.op = static_cast<uint16_t>(Op::kWait);
  r.handle = s->handle;
  r.generation = generation;
  r.k = k;
  r.timeout_ms = timeout_ms;
  // batond answers by the timeout; one that does not answer a second
  // after it is stopped or overloaded, and the application hears so.
  auto rep = call(r, nullptr, nullptr, (uint64_t{timeout_ms} + kWaitSlackMs) * 1'000'000);
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status == 0) return {};
  Error e = error_of(*rep);
  if (e.code == Errc::kFenced) {
    // Ownership moved on: the next commits are refused at once too, not
    // only after batond has refused a post of one (a commit posted
    // meanwhile returned success: sigstop_test saw three on a loaded
    // machine).
    std::lock_guard lock(s->commit_mu);
    s->fenced = true;
  }
  return tl::unexpected(std::move(e));
}

Result<void> Client::close(ClientSegment* s) {
  // Under periodic_mu_ from the request on: a periodic commit after batond
  // let go of the channel would wait for an answer that never comes.
  std::lock_guard lock(periodic_mu_);
  {
    // What was posted becomes generations before the segment is let go of.
    std::lock_guard commit_lock(s->commit_mu);
    if (auto drained = drain_posts(*s); !drained)
      BT_WARN("segment handle %u: closing: %s", s->handle, drained.error().message.c_str());
  }
  Request r{};
  r.magic = kMagic;
  r.version = kVersion;
  r.op = static_cast<uint16_t>(Op::kClose);
  r.handle = s->handle;
  auto rep = call(r, nullptr);
  auto it = std::find_if(segments_.begin(), segments_.end(), [s](const auto& p) { return p.get() == s; });
  if (it != segments_.end()) {
    unmap(**it);
    segments_.erase(it);
  }
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status != 0) return tl::unexpected(error_of(*rep));
  return {};
}

Result<Client::Loaded> Client::take_over(std::string_view name) {
  if (name.size() > kMaxName) return fail(Errc::kInvalidArgument, "segment name longer than ", std::to_string(kMaxName));
  std::vector<int> fds;
  auto rep = call(named_request(Op::kTakeOver, name), &fds);
  for (int fd : fds) ::close(fd);  // none expected
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status != 0) return tl::unexpected(error_of(*rep));
  return Loaded{rep->generation, rep->size, rep->restored != 0};
}

Result<Client::Loaded> Client::load_for(std::string_view name, pid_t pid) {
  if (name.size() > kMaxName) return fail(Errc::kInvalidArgument, "segment name longer than ", std::to_string(kMaxName));
  if (pid <= 0) return fail(Errc::kInvalidArgument, "not a process id: ", std::to_string(pid));
  Request r = named_request(Op::kLoadFor, name);
  r.size = static_cast<uint64_t>(pid);
  std::vector<int> fds;
  auto rep = call(r, &fds);
  for (int fd : fds) ::close(fd);  // none expected
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status != 0) return tl::unexpected(error_of(*rep));
  return Loaded{rep->generation, rep->size, rep->restored != 0};
}

Result<void> Client::remove(std::string_view name) {
  if (name.size() > kMaxName) return fail(Errc::kInvalidArgument, "segment name longer than ", std::to_string(kMaxName));
  auto rep = call(named_request(Op::kDelete, name), nullptr);
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status != 0) return tl::unexpected(error_of(*rep));
  return {};
}

Result<void> Client::report(std::string_view name, double value) {
  if (name.empty() || name.size() > kMaxName)
    return fail(Errc::kInvalidArgument, "a metric's name has 1..", std::to_string(kMaxName), " characters");
  if (!std::isfinite(value)) return fail(Errc::kInvalidArgument, "a metric's value must be finite");
  Request r = named_request(Op::kMetric, name);
  std::memcpy(&r.generation, &value, sizeof value);
  auto rep = call(r, nullptr);
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status != 0) return tl::unexpected(error_of(*rep));
  return {};
}

Result<std::string> Client::status() { return text_request(Op::kStatus); }
Result<std::vector<Event>> Client::events() {
  auto text = text_request(Op::kEvents);
  if (!text) return tl::unexpected(text.error());
  std::vector<Event> out;
  for (size_t at = 0; at < text->size();) {
    const size_t end = std::min(text->find('\n', at), text->size());
    const size_t sp = text->find(' ', at);
    if (sp < end) out.push_back(Event{std::strtoull(text->c_str() + at, nullptr, 10), text->substr(sp + 1, end - sp - 1)});
    at = end + 1;
  }
  return out;
}
Result<std::string> Client::groups() { return text_request(Op::kGroups); }

Result<std::string> Client::text_request(Op op) {
  Request r{};
  r.magic = kMagic;
  r.version = kVersion;
  r.op = static_cast<uint16_t>(op);
  std::string text;
  // batond answers these at once: a batond stopped (SIGSTOP) or a socket
  // that is not batond's must not hold `batonctl status` (or an OCF
  // monitor) for ever.
  // The first such request on a connection whose greeting went
  // unanswered has already waited that long.
  const uint64_t waited = hello_waited_ns_.exchange(0);
  const uint64_t patience = text_patience_ns_ > waited ? text_patience_ns_ - waited : 1;
  auto rep = call(r, nullptr, &text, patience);
  if (!rep) return tl::unexpected(rep.error());
  if (rep->status != 0) return tl::unexpected(error_of(*rep));
  return text;
}

}  // namespace baton::ipc
