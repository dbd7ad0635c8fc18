#pragma once
// The application side of the client protocol (messages.h): what
// libbaton-client does under baton_connect(). No DPDK.

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "baton/engine.h"
#include "baton/result.h"
#include "ipc/messages.h"
#include "segment/copy_on_write.h"
#include "segment/dirty_tracker.h"

namespace baton::ipc {

struct ClientSegment {
  uint32_t handle = 0;
  std::byte* data = nullptr;
  uint64_t size = 0;
  uint64_t mapped = 0;
  CommitChannel* channel = nullptr;
  int event_fd = -1;
  uint64_t generation = 0;  ///< at open: restored generation
  bool restored = false;
  /// The application's writes through `data`, which batond cannot see
  /// (null: untracked, every commit says "everything").
  std::unique_ptr<WriteWatch> watch;
  /// A copy-on-write segment (batond sent a share): a commit freezes this
  /// mapping and returns once batond has marked the snapshot's pages; the
  /// writes after it fault once per page (and replace `watch`).
  std::unique_ptr<CopyOnWrite> cow;
  uint32_t commit_every_ms = 0;  ///< batond's period for it (S5): the library commits by itself
  uint64_t next_periodic_ns = 0;  ///< when the periodic thread commits it next; commit_mu
  /// Periodic commits that failed in a row (their first is logged, and
  /// the end of the streak). commit_mu.
  uint32_t periodic_failures = 0;
  /// Held by a commit: the application's and the periodic thread's.
  std::mutex commit_mu;
  /// The last commit failed: its ranges may not have been applied, so the
  /// next one says "everything".
  bool resend_all = false;
  /// Posted commits (CommitLog): the generation of the last commit as
  /// this library counts (the next post is one more), slots posted, and
  /// batond's refusals already reported. commit_mu.
  bool posts = false;  ///< batond takes posted commits of it (small, and no copy-on-write)
  /// The application promised quiescent commits (BATON_QUIESCENT_COMMITS=1,
  /// read at the open, as the other switches are, not at every commit).
  bool quiescent = false;
  /// batond refused a post as fenced, or answered a commit or a wait so:
  /// a newer owner exists, and every later commit fails at once (as
  /// batond would refuse it). commit_mu.
  bool fenced = false;
  uint64_t last_generation = 0;
  /// Posted copy-on-write commits (ipc/messages.h): whether this segment
  /// posts them; whether one is posted that batond has not answered yet,
  /// its request number and the generation it was numbered. commit_mu.
  bool cow_posts = false;
  bool cow_posted = false;
  uint32_t cow_post = 0;
  uint64_t cow_post_generation = 0;
  /// A posted copy-on-write commit batond refused, not yet reported to the
  /// application. commit_mu.
  std::optional<Error> cow_refusal;
  /// When a post last looked whether batond is gone (post_log). commit_mu.
  uint64_t gone_checked_ns = 0;
  uint32_t log_head = 0;
  uint32_t failures_seen = 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  ///< a commit's, kept to save an allocation each time
};

/// False when BATON_TRACK_WRITES=0 is in the environment: the application
/// says something other than its own writes through the segment's mapping
/// changes it (DMA, a child process), so commits copy whole segments.
bool track_writes_allowed();

/// False when BATON_POST_COMMITS=0 is in the environment: every commit
/// waits until batond has taken it (and so fails at once, not at the
/// next call, when batond refuses it).
bool post_commits_allowed();

/// True when BATON_QUIESCENT_COMMITS=1 is in the environment: the
/// application commits only while nothing but the committing thread writes
/// its segments (CommitOptions::quiescent). A copy-on-write segment's
/// commits then copy the few pages not protected again yet instead of
/// protecting them, and this process protects written pages ahead of the
/// commits whatever batond's protect_ahead says. Periodic commits are
/// never quiescent.
bool quiescent_commits_promised();

/// Thread: any of the application's, at once (the C API promises it):
/// requests on the socket go one at a time (`call_mu_`: a long wait holds
/// back the other requests on this connection, not commits), a segment's
/// commits under its `commit_mu`; and the client's own `baton-periodic`
/// thread, started at the first segment batond gives a commit period: it
/// commits such segments by itself (S5), under each segment's
/// `commit_mu`; the segment list changes under `periodic_mu_`. The C API
/// keeps a segment's close (and the Client's end) from racing calls on it.
class Client {
 public:
  /// Connects to batond's socket. Errors: kUnavailable (no daemon), kInvalidArgument.
  /// Thread: any.
  static Result<std::unique_ptr<Client>> connect(const std::string& socket_path);
  ~Client();

  /// kOpen, kCreate or kLoad: maps the segment the daemon holds for `name`.
  Result<ClientSegment*> open(Op op, std::string_view name, uint64_t size);
  /// Asks the daemon to snapshot and replicate; returns the generation.
  /// Commits `s`: batond copies what the watch found written plus
  /// `written` (the application's own ranges), or everything.
  Result<uint64_t> commit(ClientSegment* s, std::span<const std::pair<uint64_t, uint64_t>> written = {});
  Result<void> wait(ClientSegment* s, uint64_t generation, uint32_t k, uint32_t timeout_ms);
  Result<void> close(ClientSegment* s);
  /// What a take-over loaded: the generation (0: none, created) and size.
  struct Loaded {
    uint64_t generation = 0;
    uint64_t size = 0;
    bool restored = false;
  };
  /// Loads `name` onto this node for an agent (kTakeOver): ownership moves
  /// here and batond keeps the segment for the application to open; no
  /// memory is mapped into this process.
  Result<Loaded> take_over(std::string_view name);
  /// take_over() for the application with pid `pid`, a standby instance
  /// about to be promoted (kLoadFor): its own open of `name` then gets the
  /// segment as this load left it. Only root or batond's user may ask.
  Result<Loaded> load_for(std::string_view name, pid_t pid);
  /// Deletes segment `name` everywhere (kDelete).
  Result<void> remove(std::string_view name);
  /// The daemon's status report: `kind key=value ...` lines.
  Result<std::string> status();
  /// Recent events, oldest first (the daemon sends `unix_us text` lines).
  Result<std::vector<Event>> events();
  /// A performance metric of this application (kMetric).
  Result<void> report(std::string_view name, double value);
  /// Service groups, the spare pool and the last decisions: a JSON object.
  Result<std::string> groups();
  /// Shuts the connection: calls in flight on other threads end at once,
  /// as when batond goes away, and every later one fails. Thread: any.
  void interrupt() noexcept;

 private:
  /// Sends `r` and returns batond's answer. After `patience_ns` (0: as
  /// long as batond lives) it gives up with kTimeout; the answer, when it
  /// comes, is dropped by the next call. Thread: the caller's.
  Result<Reply> call(const Request& r, std::vector<int>* fds, std::string* text = nullptr, uint64_t patience_ns = 0);
  /// Reads one answer; its descriptors go to `fds` (closed if null).
  Result<Reply> receive(std::vector<int>* fds, std::string* text);
  /// How long past its own timeout a wait gives batond to answer.
  static constexpr uint64_t kWaitSlackMs = 1000;
  /// How long status, events and groups wait for batond's answer
  /// (BATON_STATUS_TIMEOUT_MS; 10 s), connect()'s greeting included.
  uint64_t text_patience_ns_ = 10'000'000'000;
  Result<std::string> text_request(Op op);
  Result<uint64_t> commit_locked(ClientSegment* s, std::span<const std::pair<uint64_t, uint64_t>> written,
                                 bool quiescent);
  /// Waits until batond has taken every commit `s` posted, then reports
  /// the first refusal it has not reported yet (and counts from batond's
  /// generation again). commit_mu.
  /// Gives up after `timeout_ns` (0: the commit timeout) with kUnavailable.
  Result<void> drain_posts(ClientSegment& s, uint64_t timeout_ns = 0);
  /// Waits for batond's answer to the posted copy-on-write commit of `s`
  /// (if any; cow_posted), up to `timeout_ns` (0: the commit timeout) for
  /// batond to take it. A refusal (the commit is no generation) makes
  /// every page count as written again and is kept in cow_refusal for the
  /// application's next commit, wait or close. commit_mu.
  void answer_cow_post(ClientSegment& s, uint64_t timeout_ns = 0);
  /// answer_cow_post(), then the refusal it kept (if any), taken: for the
  /// application's own calls. commit_mu.
  Result<void> report_cow_post(ClientSegment& s, uint64_t timeout_ns = 0);
  void run_periodic();
  int fd_ = -1;
  /// batond's pid, from the socket at connect (0: not known). Read only.
  pid_t daemon_pid_ = 0;
  /// interrupt() shut the connection (not batond): a commit batond took
  /// is still copying the memory, and is waited for (post). Thread: any.
  std::atomic<bool> interrupted_{false};
  /// One request and its answer at a time on the socket (batond answers a
  /// connection's requests in order): held by call().
  std::mutex call_mu_;
  /// Answers still owed by batond to calls that stopped waiting for them.
  /// call_mu_, as are hello_unanswered_ and refused_.
  uint32_t unanswered_ = 0;
  /// How long connect() waits for batond to let the connection in.
  static constexpr uint64_t kHelloPatienceNs = 2'000'000'000;
  /// The first of those is connect()'s hello: a refusal there is kept.
  bool hello_unanswered_ = false;
  /// How long connect() waited for that unanswered hello: taken off the
  /// first text request's patience (so `batonctl status` gives up
  /// BATON_STATUS_TIMEOUT_MS after it began). Thread: any (exchanged).
  std::atomic<uint64_t> hello_waited_ns_{0};
  /// batond refused this connection: every call's error.
  std::optional<Error> refused_;
  /// How long a commit waits for batond to take it before withdrawing it
  /// (BATON_COMMIT_TIMEOUT_MS; 30 s).
  uint64_t commit_timeout_ns_ = 30'000'000'000;
  std::vector<std::unique_ptr<ClientSegment>> segments_;  ///< periodic_mu_ (written; the application reads)
  std::mutex periodic_mu_;
  std::condition_variable periodic_cv_;
  bool periodic_stop_ = false;
  std::thread periodic_;
};

}  // namespace baton::ipc
