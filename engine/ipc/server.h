#pragma once
// batond's side of the client protocol (engine/ipc/messages.h).
//
// Threads, and what each owns:
//   - the accept thread runs serve(): it accepts applications on the unix
//     socket (checking each one's credentials with SO_PEERCRED and the
//     client limit) and starts a session for each. It owns the listening
//     socket and the session list.
//   - one session thread per application answers that application's
//     requests, one at a time. A slow request (a load fetching a GiB, a wait
//     for durability) delays only the application that made it: every other
//     application has its own session. Waits are cut to max_wait_ms and end
//     early when the application hangs up.
//   - two commit threads serve the commit channels of the held segments
//     (the fast path: shared memory, no socket): one for segments up to
//     kLargeSegment, one for larger ones, so that copying a large snapshot
//     does not hold up a small commit. Each never waits for an application;
//     it spins idle_spin_us after a commit, then sleeps on an epoll set of
//     the doorbells of its segments' holders (an eventfd each).
// The segment registry (name -> Segment, and who holds each) is shared by
// the sessions under registry_mu_; a commit thread's list of channels is
// changed by the sessions under its lane's mutex. Lock order: registry_mu_,
// then a lane's mutex, then the engine's locks. Opens, loads, reopens,
// closes, waits and a departing application's release (which takes the
// commits it posted) run with registry_mu_ released, the segments they
// concern held meanwhile; only the engine's quick
// lookups of one handle (status, data, memory_fd) are made under it, and
// those take only the engine's table lock, never one held for a network
// round (docs/architecture.md).
//
// A load for a standby instance (Op::kLoadFor, the failover manager's) is
// opened in that process's name and held for it by a Pledge (no session
// of its own) until the instance's open takes it as it stands: fresh
// (kPledgeFreshNs), in the same membership view and not fenced since, else
// the open runs as any open does. The accept thread lets go of pledges whose process is gone or that
// nobody took within kPledgeKeepNs. A load for an application the failover
// manager started beside its loads is not exclusive: an open of the name
// from a process that is no descendant of the one it was made for (an
// application a container runtime or systemd-run started) lets go of the
// pledge and opens afresh. A standby instance's stays its own.
//
// Segments belong to the daemon, not to the connection: when an application
// crashes or disconnects, its segments and their replicas stay (S3), and the
// next application that opens the name gets them back. One application holds
// a name at a time. Everything a client sends is validated; the memfds it is
// handed are size-sealed (segment/local_storage.h), so nothing it does to its
// mappings can fault the daemon.

#include <sys/types.h>

#include <array>
#include <atomic>
#include <functional>
#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "baton/engine.h"
#include "baton/result.h"
#include "ipc/messages.h"
#include "segment/local_storage.h"

namespace baton::ipc {

struct ServerConfig {
  std::string node_name;
  std::string socket_path;
  mode_t socket_mode = 0660;
  std::optional<uid_t> allow_uid;
  std::optional<gid_t> allow_gid;
  uint32_t idle_spin_us = 100;          ///< how long the commit thread polls channels before it sleeps
  uint32_t max_clients = 256;           ///< connected applications; one more is refused (kBusy)
  uint32_t max_clients_per_process = 16;  ///< connections of one process (batond's own exempt)
  uint32_t max_clients_per_user = 64;     ///< connections of one user (root and batond's own user exempt)
  uint32_t max_segments = 64;           ///< segments one application may hold at once
  uint64_t max_bytes = uint64_t{4} << 30;  ///< bytes of segments one application may hold at once
  uint32_t max_wait_ms = 60'000;        ///< a wait asked for longer ends (kTimeout) after this
  std::string telemetry_prefix;         ///< the EAL file prefix dpdk-telemetry.py reaches batond by; "" if none
  /// The failover manager's state for Op::kGroups (null: no service groups
  /// here). Called on a session thread.
  std::function<std::string()> groups;
  /// A metric an application reported (Op::kMetric), with its pid (as the
  /// kernel says: SO_PEERCRED). Null: metrics are accepted and dropped.
  /// Called on the application's session thread.
  std::function<void(pid_t, const std::string&, double)> metric;
};

struct ServerCounters {
  uint64_t accepted = 0, refused_credentials = 0, refused_limit = 0, bad_requests = 0, commits = 0,
           disconnects = 0,
           withdrawn_commits = 0,  ///< requests their application stopped waiting for before batond took them
           posted_commits = 0,     ///< commits that came through a log slot (CommitLog), not a request
           refused_posts = 0,      ///< log slots refused (bad contents, a failed commit)
           dropped_fenced = 0,     ///< segments another node took over, closed here once unheld (drop_fenced)
           handed_over = 0,        ///< opens that took what a load for them left (Op::kLoadFor)
           posted_cow_commits = 0,  ///< copy-on-write commits their library pended and posted (ipc/messages.h)
           refused_cow_posts = 0;   ///< of those, the ones that became no generation
};

/// Whether batond may take `path` for its socket: nothing is there, or a
/// stale socket (a batond that was killed). Errors: kExists (a live batond
/// serves it: a second one must not take its clients, nor unlink its
/// socket when it stops; another program listens there; or it is not a
/// socket: a file, a directory or a link batond must not replace),
/// kInvalidArgument (empty or too long), kIo. `try_bind`: also binds and
/// removes a socket beside it, as start() does (batond --check).
/// Thread: any.
Result<void> socket_path_usable(const std::string& path, bool try_bind);

class Server {
 public:
  /// Binds the socket (replacing a stale one) with the configured mode.
  /// Errors: kExists (socket_path_usable), kIo,
  /// kInvalidArgument. Thread: control.
  static Result<std::unique_ptr<Server>> start(Engine& engine, const ServerConfig& config);
  /// Ends every session and the commit thread if serve() has not.
  ~Server();

  /// Serves until `stop` is set (checked at least every 100 ms), then ends
  /// every session. Thread: the accept thread (one call).
  void serve(const std::atomic<bool>& stop);

  ServerCounters counters() const noexcept;

  /// The node, its view, links, clients and segments (with their replicas)
  /// as JSON: the kStatus reply, batonctl status, the telemetry commands.
  /// Segments that would take the text past `limit` bytes are left out
  /// and counted in "segments_omitted". Dump it with
  /// error_handler_t::replace: a string that is not UTF-8 must not throw. Thread: any.
  nlohmann::json status_json(size_t limit = SIZE_MAX) const;

  /// batond's own failover manager's load, in this process: what a
  /// kLoadFor request for the standby instance `instance` (> 0), or a
  /// kTakeOver one (0), from batond's user does, without a connection and
  /// a session thread to wake (a thread hand-off each way on a busy
  /// machine). The commit channel that a socket's open makes ahead for the
  /// next one after it has answered is left to prepare_open(), for the
  /// caller to run once it has acted on the answer. `exclusive`: only
  /// `instance` and its descendants may take the load (Pledge::exclusive).
  /// Errors: the request's. Thread: any (a load's thread).
  Result<void> load_here(const std::string& name, pid_t instance, bool exclusive = true);
  /// Makes the next open's commit channel ahead if none is (after a
  /// load_here). Thread: any.
  void prepare_open();
  /// Holds `name` for batond's own loads (`on`), for at most `for_ns`, or
  /// lets go of one hold of it: while a name is held, an application's
  /// open, load or create of it waits instead of running its own round,
  /// through the failover manager's loads and their retries, then takes
  /// what they left. The failover manager holds a group's names from just
  /// before it starts the application until its loads have ended (its
  /// start timeout bounds them, and `for_ns` is a little longer: a hold
  /// nobody let go of ends by itself). Holds are counted. Thread: any.
  void hold(const std::string& name, bool on, uint64_t for_ns = 0);

  /// Answers one request from an application connected on `fd` exactly as
  /// its session thread would, then lets go of what it opened (as when an
  /// application leaves). For the IPC fuzzer (tests/fuzz/). Thread: one
  /// caller at a time, with serve() not running.
  void answer_once(int fd, const char* request, size_t n);

 private:
  struct Segment;  // a segment this daemon owns locally, held or not
  struct Session;  // one connected application
  struct Pledge;   // a load for a standby instance, waiting for its open

  Server(Engine& engine, const ServerConfig& config);
  void accept_clients();
  void reap_sessions();
  /// Closes the segments this node no longer owns (fenced: another node
  /// took the name over, or it was deleted elsewhere) that no application
  /// holds, so their memory goes back now, not at the next open of the
  /// name here, which may never come. Thread: the accept thread, about
  /// once a second.
  void drop_fenced();
  /// An open of a name batond does not have, by `s`, for `bytes` more: refused
  /// (kBusy) if the segments kept for its user that nobody holds, with what
  /// it holds, would pass its limits. Under registry_mu_.
  std::optional<Reply> over_kept(const Session& s, uint64_t bytes) const;
  /// A registry entry that reserves `name` for `holder` while the engine
  /// opens, deletes or closes it unlocked (no handle yet). registry_mu_.
  std::unique_ptr<Segment> reserved(const std::string& name, Session* holder);
  bool allowed(uid_t uid, gid_t gid) const;
  void run_session(Session& s);
  void on_request(Session& s, const char* buf, size_t n);
  void release(Session& s);
  Reply open_segment(Session& s, const Request& r, std::vector<int>& fds);
  /// Op::kLoadFor: loads the name and opens it for the application with
  /// pid `r.size` (a Pledge), so that its own open needs no round of its
  /// own. Only root or batond's user (its failover manager) may ask.
  /// Thread: a session's, or a failover load's (load_here).
  Reply load_for(Session& s, const Request& r, bool exclusive = true);
  /// The pledge of `name` to this application, if there is one still good
  /// (fresh, the same view, its segment not fenced): its reply, `fds` its descriptors,
  /// the segment now held by `s`. With registry_mu_ held (`lock`, which a
  /// pledge let go of releases and takes again).
  std::optional<Reply> take_pledge(Session& s, const std::string& name, uint64_t size, std::vector<int>& fds,
                                   std::unique_lock<std::mutex>& lock);
  /// Whether `seg` is held by batond's own load still under way (a
  /// take-over, or a load_for in the name of `s`'s application or an
  /// ancestor of it whose pledge is not made yet). registry_mu_ held.
  bool loading_for(const Session& s, const Segment& seg) const;
  /// Lets go of pledges whose application is gone or which waited longer
  /// than kPledgeKeepNs (`all`: every one): the segment stays here, free,
  /// for whoever opens it. Thread: the accept thread; a session's for one
  /// found stale.
  void drop_pledges(bool all);
  /// Takes out of pledges_ (under registry_mu_) those `which` names, for
  /// the caller to let_go() unlocked.
  std::vector<std::unique_ptr<Pledge>> take_pledges(const std::function<bool(const Pledge&)>& which);
  /// A new CommitChannel in its own memfd. Thread: any.
  Result<LocalStorage> make_channel();
  /// Makes the next open's channel (and shadow) ahead if none is. Thread: the accept
  /// thread (at start), a session's (after an open), a failover load's (prepare_open).
  void make_spare_channel();
  void let_go(Pledge& p);
  Reply wait(Session& s, const Request& r);
  Reply close_segment(Session& s, const Request& r);
  Reply delete_segment(Session& s, const Request& r);
  std::string events() const;
  /// Puts the segment's channel on its commit lane; `posts`: it may post
  /// commits (CommitLog), so the lane keeps a shadow of it.
  void attach(Segment& seg, bool posts);
  void detach(Segment& seg);
  /// A commit thread and the channels it serves. Thread: the lane's own
  /// ("baton-commit" / "baton-commit-l"); `active` changes under `mu`.
  struct CommitLane {
    int event_fd = -1;              ///< wakes its thread (an attach, the shutdown); never handed out
    int epoll_fd = -1;              ///< what its thread sleeps on: event_fd and each held segment's doorbell
    std::mutex mu;
    std::vector<Segment*> active;   ///< held segments whose channels it polls; mu
    std::thread thread;
    /// The ranges of the commit in hand, copied out of its channel (the
    /// application could change them meanwhile). Its thread only.
    std::vector<std::pair<uint64_t, uint64_t>> written;
  };
  /// Segments above this size get the large lane. A snapshot copy of it
  /// takes about a millisecond here.
  static constexpr uint64_t kLargeSegment = 1 << 20;
  static constexpr int kLargeLaneNice = 10;  ///< the large lane's thread runs at this nice value
  void commit_loop(CommitLane& lane, const char* thread_name);
  /// What one look at every channel of a lane found: nothing, posted
  /// commits only, or a waiting commit (whose application spins or sleeps
  /// for the answer).
  enum class Polled : uint8_t { kNothing, kPosts, kRequests };
  Polled poll_commits(CommitLane& lane);
  /// Takes request `req` of `seg`'s channel (unless its application
  /// withdrew it): commits, and answers in the channel; returns whether it
  /// was a posted copy-on-write commit (nobody waits for the answer). The
  /// lane's commit thread, or detach() (lane.mu held).
  bool take_request(CommitLane& lane, Segment& seg, uint32_t req);
  /// How long a lane spins after taking only posted commits (idle =
  /// "spin" spins on regardless).
  static constexpr uint64_t kPostsSpinNs = 10'000;
  /// A lane that took posted commits this recently naps (kNapping: looks
  /// again within kNapNs, no doorbell needed for a post) instead of
  /// sleeping until a doorbell.
  static constexpr uint64_t kNapWindowNs = 50'000'000;
  /// Applies the posted commits of `seg` up to `head` (CommitLog).
  void take_log(CommitLane& lane, Segment& seg, uint32_t head);
  CommitLane& lane_of(const Segment& seg);
  void shutdown();

  Engine& engine_;
  ServerConfig config_;
  int listen_fd_ = -1;  ///< accept thread
  /// Refused connections are logged at most once a second (a client that
  /// connects in a loop must not flood the log); those in between are
  /// counted into the next line. Accept thread.
  uint64_t refusal_logged_ns_ = 0;
  uint32_t refusals_unlogged_ = 0;
  /// Whether to log this refusal now; `*more` the ones not logged since.
  bool log_refusal(uint32_t* more) noexcept;
  /// Refuses connection `fd` of process `pid` (user `uid`) for want of
  /// room (a limit reached, no session thread): BATON_EBUSY and `told` to
  /// the client, `logged` to the log (log_refusal), counted. Accept thread.
  void refuse_busy(int fd, pid_t pid, uid_t uid, const std::string& logged, const std::string& told);
  /// The socket file this server made (st_dev, st_ino): it is unlinked at
  /// the end only if the path still names it.
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
  std::atomic<bool> stopping_{false};

  std::list<std::unique_ptr<Session>> sessions_;  ///< accept thread

  mutable std::mutex registry_mu_;
  std::condition_variable registry_cv_;  ///< a holder let go of a segment
  std::unordered_map<std::string, std::unique_ptr<Segment>> segments_;  ///< registry_mu_
  uint32_t next_handle_ = 1;                                            ///< registry_mu_
  /// The holder of a name drop_fenced() is closing: an open of that name
  /// waits for it as for a departing application.
  std::unique_ptr<Session> dropping_;
  std::vector<std::unique_ptr<Pledge>> pledges_;  ///< registry_mu_
  struct Hold {
    uint32_t count = 0;
    uint64_t until_ns = 0;  ///< the latest any of them lasts
  };
  std::unordered_map<std::string, Hold> holds_;  ///< hold(), by name; registry_mu_
  /// Whether an application's open of `name` waits for a hold. registry_mu_.
  bool held(const std::string& name) const;
  /// The next open's commit channel, made ahead (at start, then after each
  /// open has answered), so that an open does not make one under
  /// registry_mu_. registry_mu_.
  std::optional<LocalStorage> spare_channel_;
  /// The next shadow of posted commits (Segment::shadow), kLogMaxSegment
  /// bytes of capacity faulted in ahead, made with the spare channel.
  /// registry_mu_.
  std::vector<std::byte> spare_shadow_;
  static constexpr uint64_t kSpareShadowMin = 64 * 1024;  ///< smaller segments make their own shadow
  /// A pledge is handed over only this soon after its load: a later open
  /// confirms ownership with a round of its own, as any open does.
  static constexpr uint64_t kPledgeFreshNs = 100'000'000;
  /// An open that finds batond's own load of the name under way waits
  /// this long at most for it (the engine's rounds end well before).
  static constexpr uint64_t kLoadWaitNs = 30'000'000'000;
  /// A pledge nobody took is let go after this.
  static constexpr uint64_t kPledgeKeepNs = 2'000'000'000;
  uint64_t dropped_at_ns_ = 0;  ///< the last drop_fenced(); accept thread

  std::array<CommitLane, 2> lanes_;  ///< [0]: segments up to kLargeSegment; [1]: larger ones

  struct Counters {
    std::atomic<uint64_t> accepted{0}, refused_credentials{0}, refused_limit{0}, bad_requests{0}, commits{0},
        disconnects{0}, withdrawn_commits{0}, posted_commits{0}, refused_posts{0}, dropped_fenced{0}, handed_over{0},
        posted_cow_commits{0}, refused_cow_posts{0};
  } counters_;
};

}  // namespace baton::ipc
