#pragma once
// Engine internals, used by three kinds of thread:
// - API callers (which may block and allocate: engine.cc,
//   control/takeover.cc, control/delete.cc);
// - the poll loop (never blocks, never throws: worker.cc and replica.cc
//   move frames and bytes; control/liveness, records, claims and
//   tombstones.cc answer peers' rounds, apply the control thread's
//   decisions and propose set records). It allocates only off the commit
//   path: when a replica segment, a set record or a served fetch first
//   appears, and for the text of an event. The poll loop and all data-path
//   state belong to whoever holds the poll token: the worker thread, or an
//   API caller while it waits for the engine;
// - the control thread, which runs the control plane (control/control.h:
//   the failure detector and the views, placement, and the asking side of
//   rounds: queries, claims, tombstones, set records) with all of its state
//   its own, and talks to the poll loop only through SPSC rings and a few
//   atomics the loop publishes.
// API callers otherwise reach poll-loop state only through ops on the
// command ring, and read what the loop publishes in atomics (generations
// held, the fenced flag). Under simulation one thread drives all of it.

#include <rte_ring.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <deque>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "baton/engine.h"
#include "common/log.h"
#include "control/control.h"
#include "control/detector.h"
#include "control/placement.h"
#include "control/rounds.h"
#include "protocol/wire.h"
#include "replication/replica_store.h"
#include "replication/slot_allocator.h"
#include "replication/transfer.h"
#include "runtime/futex.h"
#include "runtime/poll_token.h"
#include "runtime/spsc_ring.h"
#include "runtime/topology.h"
#include "segment/local_storage.h"
#include "segment/segment.h"
#include "segment/segment_table.h"
#include "storage/global_store.h"
#include "ops.h"
#include "peers.h"

namespace baton {

/// The most shards (workers) one engine runs.
inline constexpr size_t kMaxShards = 64;

/// One shard of an engine: a whole data path (worker, links, replica
/// stores, owned segments) with its own control plane. An engine of one
/// shard is the classic engine; with several (EngineConfig::workers) each
/// owns the segments shard_index() gives it and talks only to the same
/// shard of its peers.
struct Engine::Impl {
  /// Validates `config` and builds shard `shard` of `shards` over `links`;
  /// starts no thread. Thread: Engine::start_sharded.
  static Result<std::unique_ptr<Impl>> prepare(const EngineConfig& config, std::vector<std::unique_ptr<Link>> links,
                                               size_t shard, size_t shards);
  /// Starts the worker, control and periodic threads and pins the worker.
  void launch();
  uint16_t shard = 0, shard_count = 1;  ///< fixed at start
  std::string event_prefix;             ///< "shard K: " for shards after the first; fixed at start
  EngineConfig config;
  const SimulationHooks* sim = nullptr;  ///< config.simulation, or null: real time and a worker
  /// The engine's clock: CLOCK_MONOTONIC, or the simulation's. Thread: any.
  uint64_t clock_ns() const { return sim != nullptr ? sim->now() : now_ns(); }
  /// This machine's topology, or the one EngineConfig::topology describes.
  Topology topology;
  /// Where this node stands (fixed at start; any thread): config.numa_node
  /// as resolved by place_on_topology(), its package (a placement tag
  /// beside it, S12; -1: none known), and the NUMA node memory is bound
  /// to: the same, unless the topology is described and this machine has
  /// no such node (-1: wherever the kernel puts it).
  int package = -1;
  int memory_node = -1;
  /// Loads the topology and resolves where this node's memory lives: the
  /// configured NUMA node; else the one of the worker's CPU; else the one
  /// most links' devices sit on; else the starting thread's. Errors:
  /// kInvalidArgument (a CPU or node the topology lacks, a bad
  /// description). Thread: Engine::start.
  Result<void> place_on_topology(const std::vector<std::unique_ptr<Link>>& links);
  uint64_t incarnation = 0;  ///< start time: tells a restarted peer from the old one
  uint64_t heartbeat_ns = 0, failure_ns = 0;
  std::deque<LinkState> link_states;   ///< parallel to links, fixed at start; fields say who writes them
  std::vector<PeerState> peer_states;  ///< one per peer, fixed at start; poll-token holder only
  /// The view as the control thread last sent it (kView). Token holder.
  View data_view;
  /// data_view.quorate, for require_quorum() to read without the token
  /// (taking it waits for the worker's poll: up to 2 ms of an open on two
  /// busy vCPUs). Written by the token holder with data_view; any reader.
  std::atomic<bool> data_quorate{false};
  mutable std::mutex view_mu;
  View view;  ///< the control thread's view as last published (under view_mu), for API callers
  mutable std::mutex events_mu;
  std::deque<Event> event_log;  ///< bounded; appended on membership changes only
  std::vector<std::unique_ptr<Link>> links;
  std::unordered_map<uint16_t, PeerState*> peer_by_node;  ///< fixed at start
  std::vector<uint16_t> peer_nodes;  ///< every peer, fixed at start: any thread
  /// The link frames to `node` go over now, or nullptr for an unknown node.
  Link* link_to(uint16_t node) const noexcept {
    auto it = peer_by_node.find(node);
    return it == peer_by_node.end() ? nullptr : it->second->link;
  }

  // Control -> worker: Op* (commits run under the poll token instead).
  rte_ring* commands = nullptr;
  std::mutex post_mu;  ///< producers of `commands` take turns (post())
  struct FreeDeleter {
    void operator()(void* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<void, FreeDeleter> command_mem;
  /// Ops posted and not yet taken off the ring: read by the worker before it
  /// sleeps (rte_ring_count reads the ring's tails without atomics).
  std::atomic<uint32_t> queued{0};
  std::atomic<uint32_t> wake{0};       ///< futex word the idle worker sleeps on
  /// Bumped by the token holder whenever a replica's held generation or a
  /// segment's durable one advances; callers of wait_replicated sleep on it
  /// (announced in progress_waiters) without the poll token.
  std::atomic<uint32_t> progress{0};
  std::atomic<uint32_t> progress_waiters{0};
  /// After storing what advanced. Thread: poll-token holder.
  void note_progress() noexcept {
    progress.fetch_add(1);  // seq_cst: pairs with the waiter's progress_waiters increment
    if (progress_waiters.load() != 0) futex_wake_all(progress);
  }
  std::atomic<bool> sleeping{false};
  std::atomic<bool> running{true};
  std::thread worker;
  /// Periodic commits (EngineConfig::commit_every_ms): a thread that
  /// sleeps until the next one is due; started only when some segment may
  /// have a period, never in a simulation. `periodic_mu` guards
  /// `periodic_stop` for the condition variable.
  std::thread periodic;
  std::mutex periodic_mu;
  std::condition_variable periodic_cv;
  bool periodic_stop = false;
  void run_periodic();
  /// Commits `handle` if its period is due and something was written;
  /// returns when it is due next (UINT64_MAX: never). Thread: periodic.
  uint64_t periodic_commit(Segment* handle, uint64_t now);
  /// The period configured for segment `name` (0: none).
  uint32_t commit_every_ms_for(std::string_view name) const;

  // The control plane (control/control.h) runs on a thread of its own and
  // talks to the data path only through these rings and what the data path
  // publishes in atomics (per link: heard_ns, up; polled_ns). Neither side
  // takes the other's locks.
  SpscRing<HeartbeatSeen, 256> to_control;  ///< token holder -> control thread
  SpscRing<ControlMsg, 1024> to_data;       ///< control thread -> token holder
  /// Rounds starting, and the answers to them (control/rounds.h): token
  /// holder -> control thread. Apart, so a flood of answers cannot crowd out
  /// a start: a round that does not fit fails kBusy (256 in flight is far
  /// past what the name locks let happen); an answer that does not fit is
  /// dropped (the question is asked again).
  SpscRing<RoundEvent, 256> round_starts;
  SpscRing<RoundEvent, 1024> round_answers;
  /// The data path's news about owned segments (control/placement.h), and
  /// what did not fit in the ring yet (sent first at the next poll). Token
  /// holder -> control thread; the backlog is the token holder's.
  SpscRing<SegmentNews, 256> segment_news;
  /// Daemon notes received (notes.cc): token holder -> Engine::take_notes.
  struct NoteSlot {
    uint16_t from = 0;
    uint16_t len = 0;
    std::array<std::byte, wire::kMaxNote> bytes;
  };
  SpscRing<NoteSlot, 64> notes_in;
  int notes_event = -1;  ///< eventfd: written when a note arrives or the view changes (Engine::notes_fd); closed by ~Impl
  /// A NOTE frame: into notes_in, or dropped and counted. Thread: token holder.
  void on_note(const wire::Frame& f) noexcept;
  std::deque<SegmentNews> segment_news_backlog;
  /// When the data path last received from every link (its poll's time):
  /// silence counts only up to it. Token holder writes, control reads.
  std::atomic<uint64_t> polled_ns{0};
  /// The control plane: fixed at start; its state is its thread's.
  std::unique_ptr<Control> control;
  /// Tells the control thread `n` (in order, never dropped). Thread: token holder.
  void tell_control(const SegmentNews& n) noexcept;
  /// Moves the backlog into the ring. Thread: token holder.
  void flush_segment_news() noexcept;
  /// Hands a round whose own answer is in to the control thread (or fails
  /// it: kBusy). Thread: token holder.
  void start_round(RoundEvent::Kind kind, Op* op) noexcept;
  /// Wakes API callers sleeping in await_round after rounds finished (the
  /// ops' done stores come first). Thread: any.
  void wake_round_waiters() noexcept;
  /// Forwards `f`, an answer of kind `kind` to one of this node's rounds,
  /// to the control thread. Thread: token holder.
  void forward_answer(RoundEvent::Kind kind, const wire::Frame& f) noexcept;
  /// Wakes the control thread if it sleeps. Thread: any.
  void wake_control() noexcept;
  /// Applies what the control thread sent: heartbeats and rounds' questions
  /// to send, peers' new states, views, placements, recorded sets. Returns
  /// whether there was any. Thread: token holder.
  bool apply_control() noexcept;

  /// The poll token (runtime/poll_token.h): whoever holds it runs
  /// poll_once() and owns the data path's state.
  PollToken token;
  /// Aborts unless the calling thread holds the poll token: the worker, a
  /// caller polling in its place, or (under simulation) the one thread that
  /// drives everything. Like eRPC's in_dispatch() checks; not compiled with
  /// NDEBUG. Thread: any.
  void assert_token_holder() const noexcept {
#ifndef NDEBUG
    if (sim == nullptr && !token.held_here()) {
      BT_ERROR("engine state touched by a thread that does not hold the poll token");
      std::abort();
    }
#endif
  }
  std::atomic<bool> parked{false};

  // Control side.
  SegmentTable table;

  // Worker side.
  std::unordered_map<uint64_t, Segment*> owned;                       ///< by segment id
  std::unordered_map<uint64_t, std::unique_ptr<ReplicaStore>> stores;  ///< by segment id
  /// Replica stores being allocated off the worker (none in a simulation,
  /// which allocates in place), and those whose allocation failed (the
  /// next frame is answered NO_ROOM). Poll-token holder.
  std::unique_ptr<SlotAllocator> allocator;
  std::unordered_set<uint64_t> allocating, allocation_failed;
  /// Hot standbys (EngineConfig::standbys): segment id -> its standby
  /// nodes. Set at start, read-only after (any thread).
  std::unordered_map<uint64_t, std::vector<uint16_t>> standby_nodes;
  /// Engine::prefer_replicas_on: written by any thread under its mutex,
  /// the version bumped after; the control thread (Placer) copies the
  /// nodes when the version moved.
  struct ReplicaPreference {
    std::mutex mu;
    std::vector<uint16_t> nodes;
    std::atomic<uint64_t> version{0};
  } replica_preference;
  /// Whether this node keeps a hot copy of segment `id`.
  bool standby_here(uint64_t id) const noexcept {
    auto it = standby_nodes.find(id);
    return it != standby_nodes.end() &&
           std::find(it->second.begin(), it->second.end(), config.node_id) != it->second.end();
  }
  /// What a replica store of `f`'s segment is made from here.
  ReplicaStore::Origin store_origin(const wire::Frame& f) const {
    ReplicaStore::Origin o = ReplicaStore::Origin::of(f);
    o.hot = standby_here(f.seg_id);
    o.pages = app_pages();
    return o;
  }
  /// Replica stores with copying to do (a hot copy behind the latest, the
  /// next delta's shadow, a delta's base: ReplicaStore::behind): each poll
  /// copies one copy_slice of theirs in all, in turns (take_turns), and
  /// lists those that published a delta meanwhile in published_scratch.
  /// Poll-token holder.
  std::vector<uint64_t> stores_behind;
  std::vector<ReplicaStore*> published_scratch;
  /// What the frames of one poll may copy of their deltas' bases, all
  /// together (ReplicaStore::accept): one copy_slice, refilled by each
  /// poll. Poll-token holder.
  uint64_t frames_copy_budget = 0;
  bool advance_stores() noexcept;
  /// Owned segments with a copy-on-write snapshot still being taken: each
  /// poll settles a slice of each in turn, one copy_slice in all.
  /// Poll-token holder.
  std::vector<uint64_t> cow_behind;
  bool advance_cow_snapshots() noexcept;
  /// Owned segments whose free stage may be brought up to the current one
  /// before the next commit (catch_up_stage): as cow_behind. Poll-token
  /// holder.
  std::vector<uint64_t> stages_behind;
  bool catch_up_stages() noexcept;
  /// Copies into `seg`'s free stage, up to `budget` bytes (at least a
  /// chunk, taken from it), the stale pages the current (complete) stage
  /// holds newer; returns true when there is nothing more to do for this
  /// generation.
  bool catch_up_stage(Segment& seg, uint64_t& budget, bool& copied) noexcept;
  /// By segment id, in order: a node that started is handed them in
  /// batches from an id on (answer_records). At most kMaxRecords: a bound
  /// on what peers can make this node keep.
  std::map<uint64_t, SetRecord> records;
  static constexpr size_t kMaxRecords = 65536;
  /// Claims this node promised: by segment id, the newest owner epoch a
  /// claim asked of it and the claimant (on_claim). From then on it stores
  /// no set record of an older epoch, nor another node's of that one
  /// (promise_refuses): a record counted at a quorum after a claim was
  /// promised by a quorum cannot exist, and one counted before is in some
  /// promise's answer (docs/architecture.md, "Fencing"). One per segment
  /// id, as `records`; at most kMaxRecords. Poll-token holder.
  struct Promise {
    uint64_t epoch = 0;
    uint16_t node = 0;
  };
  std::unordered_map<uint64_t, Promise> promises;
  /// The epoch this node promised that refuses a set record of `epoch`
  /// written by `owner` (0: none does).
  uint64_t promise_refuses(uint64_t seg_id, uint64_t epoch, uint16_t owner) const noexcept {
    auto it = promises.find(seg_id);
    if (it == promises.end()) return 0;
    const Promise& p = it->second;
    return epoch < p.epoch || (epoch == p.epoch && owner != p.node) ? p.epoch : 0;
  }
  /// Promises epoch `epoch` of `seg_id` to `node`; false if a newer promise
  /// refuses it or there is no room for one.
  bool promise(uint64_t seg_id, uint64_t epoch, uint16_t node) noexcept;
  /// Records their writers withdrew (a create that failed), heard while a
  /// peer's batches may still bring them (read before the withdrawal
  /// reached that peer): take_handed_record does not take those. Cleared
  /// once every peer's last batch came; the oldest go past kMaxWithdrawn.
  struct Withdrawal {
    uint64_t seg_id = 0, epoch = 0, version = 0;
    uint16_t owner = 0;
  };
  std::vector<Withdrawal> withdrawn;
  static constexpr size_t kMaxWithdrawn = 1024;
  /// After `stores`: destroyed first, so queued writes finish from live slots.
  std::unique_ptr<GlobalStore> global;
  /// Offers replica `st`'s newest generation to global storage; false if
  /// it was skipped (GlobalStore::submit). Poll-token holder.
  bool offer_to_global(ReplicaStore& st) noexcept;
  /// Offers again the newest generation of each segment global storage
  /// skipped, every kGlobalRetryNs: without it, a generation skipped
  /// while the file system was behind stayed unstored until the next
  /// commit, for good if none came. Poll-token holder.
  void offer_skipped_to_global(uint64_t now) noexcept;
  uint64_t global_offered_ns = 0;  ///< the last offer_skipped_to_global. Poll-token holder.
  size_t global_sweep_at = 0;      ///< where a sweep of every store goes on. Poll-token holder.
  std::vector<FetchOp*> fetches;
  std::vector<std::unique_ptr<FetchServe>> serves;
  std::vector<FetchOp*> completed_fetches;  ///< finished after this poll's acks went out
  struct AckDue {
    Link* link;
    ReplicaStore* store;  ///< replication ack, or
    FetchOp* fetch;       ///< fetch ack
    uint64_t generation;
    bool restart;
    bool need_full = false;  ///< a delta whose base this store lacks
  };
  std::vector<AckDue> acks_due;  ///< gathered over one rx burst, sent after it

  // Counters: written by the worker (relaxed), read by anyone.
  struct Counters {
    std::atomic<uint64_t> frames_rx{0}, frames_tx{0}, misdirected{0}, retransmits{0}, duplicates{0},
        stale_epoch{0}, published{0}, corrupt_generations{0}, tx_dropped{0}, no_slot{0}, bad_input{0}, stalls{0},
        longest_stall_us{0}, last_stall_ns{0}, snapshot_chunks_copied{0}, snapshot_chunks_skipped{0}, deltas_sent{0},
        wholes_sent{0}, deltas_published{0}, deltas_published_later{0}, restamped{0}, notes_rx{0}, notes_dropped{0},
        standby_promotions{0}, replica_promotions{0}, replica_promotions_chained{0}, slots_lent{0}, direct_reads{0}, direct_read_failures{0}, cow_snapshots{0}, cow_pages_settled{0}, cow_pended_by_tags{0},
        periodic_commits{0}, fenced_copies_kept{0}, loads_outside_set{0};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(wire::DecodeError::kCount)> decode{};
  } counters;

  // --- control side (engine.cc, control/takeover.cc) ---
  /// A round (query, claim, record) waits `query_timeout_ms` for everyone's
  /// answer, and up to five times that for the quorum a decision needs: a
  /// loaded machine answers late, and a decision is worth the wait.
  uint64_t round_timeout_ns() const noexcept { return uint64_t{config.query_timeout_ms} * 1'000'000; }
  uint64_t quorum_patience_ns() const noexcept { return 5 * round_timeout_ns(); }
  void post(void* item);
  /// Runs `fn` on the worker side and waits. Thread: control.
  Result<void> call(std::function<void()> fn);
  /// Takes the poll token and polls until `done()` or the deadline; returns
  /// done(). A template, not std::function: a commit's wait must not allocate.
  /// `Token::kNotNeeded`: done() reads only atomics that note_progress()
  /// announces, so after its active phase the caller sleeps on `progress`
  /// without the token and leaves all polling to the worker.
  /// Thread: control.
  enum class Token : uint8_t { kNeeded, kNotNeeded };
  template <typename Done>
  bool poll_until(Done&& done, uint64_t deadline_ns, Token token_for_done = Token::kNeeded) {
    if (sim != nullptr) {  // the simulated world moves on, this engine with it
      for (;;) {
        if (done()) return true;
        if (clock_ns() >= deadline_ns) return false;
        sim->step();
      }
    }
    // The caller polls as the worker for a short while (an ack usually
    // comes within one round trip, and this saves a wake-up), then leaves
    // polling to the worker and the token to whoever else wants it (another
    // application's commit must not wait out this one's timeout), taking
    // the token back only to look at `done` if it reads token-owned state.
    constexpr uint64_t kActiveNs = 200'000;
    const uint64_t start = clock_ns();
    uint64_t step_ns = 10'000;
    acquire_token();
    bool ok = false;
    for (;;) {
      if (done()) {
        ok = true;
        break;
      }
      const uint64_t now = clock_ns();
      if (now >= deadline_ns) break;
      if (now - start < kActiveNs && token.wanting_now() <= 1) {
        poll_once(now);
        continue;
      }
      release_token(true);
      if (token_for_done == Token::kNotNeeded) return sleep_until_progress(done, deadline_ns);
      std::this_thread::sleep_for(std::chrono::nanoseconds(std::min(step_ns, deadline_ns - now)));
      step_ns = std::min<uint64_t>(step_ns * 2, 1'000'000);
      acquire_token();
    }
    release_token();
    return ok;
  }
  /// Sleeps on `progress` until done() or the deadline, without the poll
  /// token (a wake-up is never missed: the waiter announces itself before
  /// it looks; it looks again at least every millisecond all the same).
  /// Thread: control.
  template <typename Done>
  bool sleep_until_progress(Done&& done, uint64_t deadline_ns) {
    for (;;) {
      if (done()) return true;
      const uint64_t now = clock_ns();
      if (now >= deadline_ns) return false;
      progress_waiters.fetch_add(1);  // seq_cst: see note_progress()
      const uint32_t seen = progress.load();
      if (!done()) futex_wait(progress, seen, std::min<uint64_t>(deadline_ns - now, 1'000'000));
      progress_waiters.fetch_sub(1);
    }
  }
  /// Takes / gives back the poll token (the worker parks meanwhile). Thread: control.
  void acquire_token() noexcept;
  /// `caller_sleeps`: the caller will not poll again for a while (a long
  /// wait), so transfers in flight need the worker too; a caller about to
  /// take the token back (a commit, then its wait) does not wake it for
  /// them: each such wake-up preempted a vCPU (a 4 KiB commit loop's p99
  /// went from 38-51 us to 57-1 566 us when every commit woke it).
  ///
  /// `snapshot_left`: a copy-on-write commit's release. The snapshot it
  /// leaves to settle is no reason to wake the worker: woken, it took the
  /// committer's vCPU for 0.3-1.7 ms in 9 of 21 commits of baton-snapshot
  /// (an involuntary switch inside the release), on a commit whose point
  /// is a short pause. The worker finds the snapshot when its nap ends
  /// (idle: at most max_idle_sleep_us; parked: at most 8 of them), or the
  /// application's wait settles it; a write to a page not settled yet
  /// copies it aside meanwhile. Other work still wakes it.
  void release_token(bool caller_sleeps = false, bool snapshot_left = false) noexcept;
  /// Takes the poll token only if nobody holds it (the worker polling, or
  /// another caller); release with release_token(). Thread: control.
  bool try_acquire_token() noexcept;
  /// Polls until the worker side finished `op`. Thread: control.
  void await(Op& op) { poll_until([&op] { return op.finished(); }, UINT64_MAX); }
  /// Waits for a round (control/rounds.cc): the worker runs its start and
  /// the data path, the control thread settles it and wakes this caller,
  /// which sleeps meanwhile rather than polling in the worker's place (the
  /// round ends on another thread: a polling caller would only notice at
  /// its next look). Under simulation, steps the world. Thread: an API caller.
  void await_round(Op& op) {
    if (sim != nullptr) return await(op);
    round_waiters.fetch_add(1, std::memory_order_seq_cst);
    for (;;) {
      const uint32_t seen = rounds_settled.load(std::memory_order_seq_cst);
      if (op.done.load(std::memory_order_seq_cst) != 0) break;
      futex_wait(rounds_settled, seen, 10'000'000);
    }
    round_waiters.fetch_sub(1, std::memory_order_relaxed);
  }
  /// Bumped (and waited on, as a futex word) when the control thread
  /// finishes rounds: the word lives as long as the engine, so the waker
  /// never touches an op its waiter may have freed already. Waiters count
  /// themselves in round_waiters, so a round nobody sleeps on costs no
  /// wake-up. Thread: any.
  std::atomic<uint32_t> rounds_settled{0};
  std::atomic<uint32_t> round_waiters{0};
  Result<std::unique_ptr<QueryOp>> query(std::string_view name);
  Result<OpenResult> load_from(const QueryOp& q, std::string_view name);
  /// Whether load_from may take ownership from copies outside the sets
  /// that must accept, because every member of them lost its copy
  /// (docs/architecture.md, "Fencing": a fenced owner's kept copy).
  /// `copy_holders`: the nodes that answered `q` with a copy; `c`: the
  /// claim, which each of them must have granted; `best`: the copy the
  /// load would take. Thread: control.
  bool copies_outside_lost_sets(const QueryOp& q, const ClaimOp& c, const SetRecord& record,
                                const std::vector<uint64_t>& sets, const std::vector<uint16_t>& copy_holders,
                                const ClaimAnswer& best);
  /// Engine::remove with the name held busy. Thread: control.
  Result<void> remove_locked(std::string_view name);
  /// Writes a tombstone for `name` at `epoch` to every node; kUnavailable
  /// unless a quorum and a majority of `set` stored it, kBusy if a newer
  /// owner refused it. `promise_refused`: set to the epoch a node refused
  /// it for, when it failed for a refusal that was not an owner's (a
  /// claim's promise, or a copy of the deleted history that took a claim's
  /// epoch). Thread: control.
  Result<void> write_tombstone(std::string_view name, uint64_t epoch, std::vector<uint16_t> set,
                               uint64_t* promise_refused = nullptr);
  /// remove_locked's attempts so far: the tombstone epoch to reach at
  /// least (above a claim that refused the last one), what the first
  /// query found deleted already, and the last attempt's tombstone (0:
  /// none yet).
  struct RemoveAttempt {
    uint64_t floor = 0;
    uint64_t covered = 0;
    uint64_t tombstone = 0;
  };
  /// One attempt of remove_locked: a query, then a tombstone above every
  /// epoch it saw and at least `attempt.floor`. Thread: control.
  Result<void> remove_once(std::string_view name, RemoveAttempt& attempt, uint64_t* promise_refused);
  /// Sends the newest tombstone a query found to the nodes that answered
  /// with an older copy or record (they missed the delete). Thread: control.
  void repair_tombstone(const QueryOp& q);
  /// Engine::open / Engine::load with the name held busy. A local segment of
  /// that name that is fenced is forgotten first (the cluster has newer
  /// state); a live one is kExists. Thread: control.
  /// `asks_left`: how many more times it may ask the cluster again (a peer
  /// just heard, a silent one, a copy arriving meanwhile) before it says
  /// to try again.
  Result<OpenResult> open_locked(std::string_view name, uint64_t size, bool load_only, int asks_left = 2);
  /// Copies the last committed generation back over the segment's memory
  /// (zeroes it if nothing was committed); returns that generation. Thread: control.
  uint64_t restore_committed(Segment& seg);
  /// Runs one round of claims for `epoch` on the replicas in `peers`. Thread: control.
  /// `need`: answers worth waiting past the query timeout for. Thread: control.
  Result<std::unique_ptr<ClaimOp>> claim(std::string_view name, uint64_t epoch, const std::vector<uint16_t>& peers,
                                         uint32_t need);
  /// Fails with kUnavailable unless this node's view is quorate (it waits up
  /// to the query timeout for one, e.g. just after start). Thread: control.
  Result<void> require_quorum(const char* what);
  View current_view() const {
    std::lock_guard lock(view_mu);
    return view;
  }
  /// S7: restores `name` from the newest intact copy in global storage.
  /// Only files written above epoch `deleted` (the newest tombstone) count.
  /// kUnavailable while this node, started less than fresh_start_wait_ms
  /// ago, has not heard from every peer since: one may hold `name`.
  /// `what` says what it refuses. Thread: control.
  Result<void> heard_every_peer(std::string_view name, const char* what);
  /// Started less than fresh_start_wait_ms ago with a peer not heard from
  /// yet: waits up to a second (within that window) for every peer to be
  /// heard. True if one was unheard and every one is now: the caller asks
  /// again who holds the name. Thread: control (an API caller).
  bool waited_to_hear_peers();
  /// Whether a copy or a record of q's name reached this node after its own
  /// answer to `q` was taken. Thread: control (an API caller).
  bool arrived_since(const QueryOp& q);
  /// How long ago this incarnation started, and whether that is less than
  /// fresh_start_wait_ms. Thread: any.
  uint64_t up_ns() const;
  bool just_started() const;
  /// A peer the data path counts alive that did not answer `q` (0: none).
  /// Thread: control (an API caller).
  uint16_t silent_peer(const QueryOp& q);
  /// kCorrupt when global storage holds copies of `name` above `deleted`
  /// and none of them is intact. Thread: control.
  Result<void> no_unreadable_copies(std::string_view name, uint64_t deleted) const;
  Result<OpenResult> load_from_global(std::string_view name, uint64_t max_epoch, uint64_t deleted);
  /// Makes `seg` owned here and asks the control thread to place its
  /// replicas (`preferred` first, where alive). Thread: an API caller.
  Result<Segment*> add_segment(std::unique_ptr<Segment> seg, const std::vector<uint16_t>& preferred);
  /// `preferred`: the recorded set ownership was taken over from; its live
  /// members are kept as replicas. A restored segment's generation is
  /// replicated to the new set at once, and the set recorded. `stale`:
  /// nodes holding older copies, told to drop them once it is (Segment::release_to).
  /// `promoted`: a hot standby's memory (ReplicaStore::promote): the
  /// application's memory, and the slots that become the stages (the
  /// first holds `generation` already: it is replicated as it is).
  Result<Segment*> make_segment(std::string_view name, uint64_t size, LocalStorage* restored, uint64_t epoch,
                                uint64_t generation, std::vector<uint16_t> preferred = {},
                                std::vector<uint16_t> stale = {}, ReplicaStore::Promotion* promoted = nullptr);
  /// Replicates `stage`, which holds `generation` with its checksums
  /// already (a promoted standby's slot), as the segment's snapshot of it.
  /// The caller holds seg.mu. Thread: control.
  void post_ready_stage(Segment& seg, Stage& stage, uint64_t generation);
  /// Snapshots `seg` as `generation` and starts replicating it; the caller
  /// holds seg.mu. Thread: control.
  Result<void> snapshot(Segment& seg, uint64_t generation, const CommitOptions& options);
  /// Marks the pages written since the last snapshot stale in both
  /// stages: those the tracker found, those the application named, or all.
  /// Committer (under seg.mu).
  /// Sets the stale pages of both stages from what mark_written() found.
  /// Token holder.
  void apply_marks(Segment& seg) noexcept;
  void mark_written(Segment& seg, std::span<const std::pair<uint64_t, uint64_t>> ranges,
                    CopyOnWrite::Freeze* freeze = nullptr);
  /// Engine::commit, under seg.mu.
  Result<uint64_t> commit_locked(Segment& seg, const CommitOptions& options);
  /// A commit the client pended itself (CommitOptions::pended) failed:
  /// settles what is left of the last snapshot and makes every page idle
  /// again (CopyOnWrite::unpend_all). Committer; takes the token.
  void drop_pended(Segment& seg);
  /// Daemon mode: tells the client library of `seg` that the snapshot in
  /// `current` is settled whole and the free stage needs nothing of it,
  /// so its next commit may pend its own pages and post
  /// (CowShare::Header::ready). Token holder.
  void publish_cow_ready(Segment& seg, const Stage& current) noexcept;
  /// snapshot() for a copy-on-write segment: protects, posts, returns.
  Result<void> snapshot_cow(Segment& seg, uint64_t generation, const CommitOptions& options);
  /// What a snapshot sends: the chunks changed since the previous
  /// generation, for replicas that hold it. Committer, token held.
  /// Under the token, before a commit takes a stage: kFenced (the token
  /// released) if `seg` was fenced since the commit began.
  Result<void> refuse_if_fenced(Segment& seg) noexcept;
  void prepare_stage(Segment& seg, Stage& stage, uint64_t generation);
  /// Settles up to `budget` bytes of chunks of `stage`'s copy-on-write
  /// snapshot (at least one, taken from `budget`), raising `ready`; true
  /// once it is complete. Token holder.
  bool advance_cow(Segment& seg, Stage& stage, uint64_t& budget) noexcept;
  /// Completes every copy-on-write snapshot of `seg` still being taken;
  /// with `poll`, a slice at a time with a poll iteration between slices
  /// (heartbeats and sends go on: only where a poll may run, i.e. not
  /// under the segment table's mutex). Token holder.
  void settle_cow(Segment& seg, bool poll) noexcept;
  /// Stops copy-on-write for `seg` (its snapshots complete first): commits
  /// copy from now on. The caller holds seg.mu and the token.
  void drop_cow(Segment& seg, const char* why);
  /// The snapshot mode configured for segment `name`.
  EngineConfig::SnapshotMode snapshot_mode_for(std::string_view name) const;
  /// Whether segments' writes are tracked (EngineConfig::track_writes, and
  /// the kernel can). Thread: any.
  bool tracks_writes() const { return config.track_writes && DirtyTracker::unavailable_reason().empty(); }
  /// Pages for an application's segment memory: small ones wherever the
  /// kernel can track writes, by the engine or by batond's client library
  /// (a written huge page would count 2 MiB).
  static LocalStorage::Pages app_pages() {
    return DirtyTracker::unavailable_reason().empty() ? LocalStorage::Pages::kSmall : LocalStorage::Pages::kAny;
  }

  /// A new, empty segment (S1), owned here once its replica set is recorded
  /// at a quorum of nodes; kExists if another node won a race for the name.
  /// `q`: the query that found nothing above the newest tombstone.
  Result<Segment*> create_fresh(std::string_view name, uint64_t size, const QueryOp& q);
  /// Forgets a segment this node owns (close, or a create that lost). Thread: control.
  Result<void> remove_segment(Segment* seg);
  uint32_t effective_chunk_size() const;

  // --- poll loop (worker.cc, replica.cc; control/liveness, records, claims, tombstones.cc) ---
  void run_worker() noexcept;
  void park_worker() noexcept;
  bool poll_once(uint64_t now) noexcept;
  /// Notes a gap between two polls long enough for peers to start suspecting
  /// this node (not scheduled, or one poll ran long). Thread: token holder.
  void note_poll_gap(uint64_t now) noexcept;
  uint64_t last_poll_ns = 0;
  bool drain_commands() noexcept;
  /// Installs replica stores the slot allocator finished. Thread: poll-token holder.
  bool install_allocated() noexcept;
  void on_frame(Link& link, wire::Frame& f, uint64_t now) noexcept;
  void on_data(Link& link, wire::Frame& f) noexcept;
  void on_fetch_data(wire::Frame& f, uint64_t now) noexcept;
  /// Verifies a frame decoded without its payload CRC; counts a mismatch.
  bool verified(wire::Frame& f) noexcept;
  void on_ack(const wire::Frame& f, uint64_t now) noexcept;
  /// Whether a reply that says what its sender holds (an ACK, a SET_RECORD
  /// echo) comes from the incarnation of it this node knows: each carries
  /// the low 32 bits of its sender's incarnation in the generation-checksum
  /// field. One from an earlier incarnation, delayed past the restart,
  /// speaks for memory that is gone and counts for nothing; one from a new
  /// incarnation not yet heard of waits for its heartbeat (the sender
  /// resends). Thread: token holder.
  bool from_known_incarnation(const wire::Frame& f) const noexcept {
    auto it = peer_by_node.find(f.src);
    return it != peer_by_node.end() && it->second->incarnation != 0 &&
           static_cast<uint32_t>(it->second->incarnation) == f.gen_crc;
  }
  void on_fetch_request(Link& link, const wire::Frame& f, uint64_t now) noexcept;
  /// A replica lent the slot a fetch asked for (FETCH_META + kFlagDirect):
  /// the fetch finishes with it, for the loader to read (read_lent).
  void on_lent_slot(const wire::Frame& f) noexcept;
  /// Reads a slot a replica lent into `dest`: maps the lender's file
  /// read-only through /proc/PID/fd, copies it chunk by chunk with each
  /// chunk's CRC, and accepts it only if they make the generation checksum
  /// the lender named. Errors: kIo (not the file lent), kCorrupt. Thread:
  /// the loader, without the poll token (a 64 MiB copy must not stop polls).
  Result<void> read_lent(const FetchOp::Lent& lent, LocalStorage& dest) noexcept;
  /// Under the simulator: aborts unless a promotion's first stage, filled
  /// (fill_stage), matches the generation's chunk checksums.
  void check_stage(std::string_view name, const ReplicaStore::Promotion& p) const noexcept;
  /// Tells `peer` the lent slot of `generation` may be rewritten. Thread: token holder.
  void send_lent_done(uint16_t peer, uint64_t id, uint64_t generation) noexcept;
  void on_fetch_meta(wire::Frame& f) noexcept;
  void on_error(const wire::Frame& f) noexcept;
  void on_claim(Link& link, const wire::Frame& f) noexcept;
  /// This node's answer to `claimant`'s claim of owner epoch `epoch` for
  /// the segment `name` (this node's own claims included): refused if a
  /// promise or a copy here is of a newer epoch (or of this one, another
  /// node's); otherwise promised, with the set record held here, and
  /// granted with what a copy here holds, whose store takes the epoch.
  ClaimAnswer answer_claim(uint64_t seg_id, std::string_view name, uint64_t epoch, uint16_t claimant) noexcept;
  void on_set_record(Link& link, const wire::Frame& f) noexcept;
  /// Proposes the replica set in `seg`'s slots for recording, once a
  /// majority of it holds `need`; durability waits meanwhile. Thread: token holder.
  void propose_set(Segment& seg, uint64_t need) noexcept;
  /// Every generation of `seg` that may be durable or is being restored:
  /// what a new set must hold before it is recorded. Thread: token holder.
  uint64_t record_need(const Segment& seg) const noexcept;
  /// Hands proposals a majority of whose set holds `need` to the control
  /// thread (this node's own record stored first). Thread: token holder.
  void step_records() noexcept;
  /// A SET_RECORD frame to `peer`: a set record (`version`, `set` packed),
  /// a tombstone or a release (`flags`). Thread: token holder.
  wire::Frame set_record_frame(uint16_t peer, uint64_t seg_id, std::string_view name, uint64_t epoch, uint64_t version,
                               uint64_t set, uint16_t flags) const noexcept;
  /// Sends `seg`'s pending set record (its version, its set) to `peer`;
  /// `flags`: wire::kFlagRestart withdraws it. Thread: token holder.
  void send_record(Segment& seg, Link& link, uint16_t peer, uint16_t flags = 0) noexcept;
  /// Stores `owner`'s record of `seg_id` at `epoch` here, as any node does:
  /// false (nothing stored) if another owner recorded this epoch first.
  /// Thread: token holder.
  bool store_record(uint64_t seg_id, const SetRecord& r) noexcept;
  /// The control thread's kRecorded: the proposal it names is recorded (or
  /// failed). Thread: token holder.
  void apply_recorded(const ControlMsg& m) noexcept;
  /// The control thread's kPlace, applied if the slots still hold what it
  /// was decided on; the slots are reported back either way. Thread: token holder.
  void apply_placement(const ControlMsg& m, uint64_t now) noexcept;
  /// Takes back a record that failed to reach a quorum (a lost race to
  /// create a name): every node drops it if it is still this one. Thread: token holder.
  void withdraw_record(Segment& seg) noexcept;
  /// A tombstone at `epoch` from `owner` (a delete): stores it unless a
  /// newer owner epoch is known here (returns that epoch then), drops the
  /// replica copy, fences a local owner. Thread: token holder.
  /// Stores a tombstone here, or returns the newer epoch that refuses it
  /// (0: stored). `by_owner`, when refused: whether by an owner that took
  /// the name above the tombstone (a live owner, its set record, or a copy
  /// of data written at a newer epoch), not by a copy of the deleted
  /// history that adopted a claim's epoch.
  uint64_t apply_tombstone(uint64_t seg_id, std::string_view name, uint64_t epoch, uint16_t owner, bool* by_owner = nullptr) noexcept;
  /// Sends `peer` the tombstone of segment `id` at `epoch`. Thread: token holder.
  void send_tombstone_to(uint16_t peer, uint64_t id, std::string_view name, uint64_t epoch) noexcept;
  /// SET_RECORD with kFlagDeleted: a tombstone, or (with kFlagComplete)
  /// the answer to ours. Thread: token holder.
  void on_tombstone(Link& link, const wire::Frame& f) noexcept;
  /// Records for a node that started (docs/architecture.md, "Load"): it
  /// asks each peer, the first time it hears it after its start, for its
  /// set records and tombstones, in batches (RECORDS), and counts the peer
  /// heard for new names only once it has them (heard_every_peer), so that
  /// two nodes that restarted together and heard the third before it fell
  /// silent know what it holds.
  /// Thread: token holder.
  void ask_for_records(uint64_t now) noexcept;
  void on_records(Link& link, wire::Frame& f) noexcept;
  void answer_records(Link& link, const wire::Frame& f) noexcept;
  /// Stores a record a peer handed over as its writer's frame, delivered
  /// late, would have been stored (on_set_record, apply_tombstone), saying
  /// nothing back; not one withdrawn since (`withdrawn`). False if this
  /// node's map had no room for it.
  bool take_handed_record(const wire::RecordEntry& e) noexcept;
  /// SET_RECORD with kFlagRelease: a set recorded without this node: its
  /// copy is dropped. Thread: token holder.
  void on_release(const wire::Frame& f) noexcept;
  /// Tells the nodes in seg.release_to outside its recorded set to drop
  /// their copies. Thread: token holder.
  void release_copies(Segment& seg) noexcept;
  /// Tells `peer`, outside `seg`'s recorded set, to drop what it holds of
  /// it: a copy of an older epoch, and an older owner (fenced, nothing of
  /// it kept). Thread: token holder.
  void send_release(const Segment& seg, uint16_t peer) noexcept;
  /// Tells `peer` to drop what it holds of `seg`'s deleted history
  /// (Segment::deleted_history): a release at that epoch, naming no set,
  /// so that a member of the new set drops it too, and nothing of the new
  /// history (above it) goes. Thread: token holder.
  void send_history_release(const Segment& seg, uint16_t peer) noexcept;
  /// Whether `seg`'s owner tells `peer` to drop the deleted history's copies.
  bool releases_history(const Segment& seg, uint16_t peer) const noexcept;
  /// Releases still to send: (segment id, peer), a few per poll, each
  /// checked again when its turn comes (owned, not fenced, a recorded set
  /// that does not count on the peer, which is alive). A peer back from a
  /// partition queues every owned segment for it; every
  /// release_again_ns(), with none queued, every live peer outside each
  /// set is queued again: a release is one control frame, and one lost
  /// left an old owner's kept copy there for good. Token holder.
  std::deque<std::pair<uint64_t, uint16_t>> releases_due;
  uint64_t releases_queued_ns = 0;  ///< the last periodic queueing. Token holder.
  uint64_t release_again_ns() const noexcept { return std::max<uint64_t>(20 * failure_ns, 1'000'000'000); }
  /// Whether `seg`'s owner would release `peer` (see releases_due).
  bool releases(const Segment& seg, uint16_t peer) const noexcept;
  /// Sends up to kReleasesPerPoll of releases_due; queues them all again
  /// when due. Token holder.
  void send_releases_due(uint64_t now) noexcept;
  /// Forgets this node's replica copy of a segment: its serves and pending
  /// acks go, its memory is freed off the worker. Thread: token holder.
  void drop_store(uint64_t seg_id) noexcept;
  /// Stores whose slots a global-storage write still pins: freed once not.
  std::vector<std::unique_ptr<ReplicaStore>> retired_stores;
  /// Frees retired stores whose pins are gone. Thread: token holder.
  void free_retired() noexcept;
  /// A heartbeat: a new incarnation of its sender drops that peer's acks at
  /// once (on_peer_restarted); changed content goes to the control thread.
  /// Thread: token holder.
  void on_heartbeat(Link& link, const wire::Frame& f, uint64_t now) noexcept;
  /// A peer came back as a new incarnation: its acknowledgements and set
  /// records are gone with its memory. Resends it the latest generation of
  /// every segment it replicates and records each set again. Thread: token holder.
  void on_peer_restarted(uint16_t node, uint64_t now) noexcept;
  /// Nodes a set record must reach in view `v`: a quorum; with two nodes
  /// (where one alone is quorate) every member of the view, so two nodes
  /// that see each other never both record one new name.
  static uint32_t record_quorum(const View& v) noexcept {
    return v.expected_votes == 2 ? static_cast<uint32_t>(std::max<size_t>(1, v.members.size())) : v.quorum;
  }
  /// The lowest node id of the cluster: the tie-breaker that alone may
  /// create new names when a two-node cluster is split. Fixed at start.
  uint16_t tie_breaker = 0;
  /// The newest generation `node` acknowledged for `seg` under its epoch (0
  /// if it is not a replica). Thread: token holder.
  uint64_t held_by(const Segment& seg, uint16_t node) const noexcept;
  /// Recomputes seg.durable from the replicas' acks. Thread: token holder.
  void update_durable(Segment& seg) noexcept;
  uint64_t replica_set(const Segment& seg) const noexcept;
  void start_replication(Segment& seg, Stage& stage, uint64_t now) noexcept;
  bool pump_senders(uint64_t now) noexcept;
  bool pump_one(Link& link, ChunkSender& sender, const wire::Frame& proto, uint64_t now) noexcept;
  bool step_ops(uint64_t now) noexcept;
  /// Notes a valid frame from link `link_index`'s peer for the failure
  /// detector. Thread: token holder.
  void heard_from(size_t link_index, uint64_t now) noexcept;
  /// Known to be gone: its link is down, or it was heard and then fell silent.
  bool unreachable(uint16_t peer) const noexcept;
  void record_event(std::string text) noexcept;
  /// Work nobody would do while the worker stays parked: unsent chunks,
  /// copy-on-write snapshots to settle, pending loads, queued commands.
  /// Thread: poll-token holder.
  bool has_pending_work(bool count_snapshots = true) const noexcept;
  /// A transfer started and not yet acknowledged whole: its acks open the
  /// window and its timer resends. Thread: poll-token holder.
  bool has_transfers_in_flight() const noexcept;
  /// Whether `pred` holds for the sender of any replica or fetch being served.
  template <typename Pred>
  bool any_sender(Pred&& pred) const noexcept;
  /// Encodes `f` (a payload of at most kMaxNote bytes included) and sends
  /// it alone, counting it sent or dropped. Thread: token holder.
  void send_control(Link& link, const wire::Frame& f) noexcept;
  void send_error(Link& link, const wire::Frame& about, wire::ErrorCode code, uint64_t epoch,
                  uint16_t flags = 0) noexcept;
  void send_fetch_request(FetchOp& op, uint64_t now) noexcept;
  void flush_acks() noexcept;
  /// A replica store published a generation (on a frame, or in
  /// advance_stores once a delta's base was copied): counters, the copying
  /// it leaves to do, global storage. Thread: token holder.
  void on_published(ReplicaStore& st) noexcept;
  /// Lists `st` for advance_stores (once) when it has copying to do
  /// (ReplicaStore::behind). Thread: token holder.
  void list_if_behind(const ReplicaStore& st) noexcept;
  /// `why`: what superseded it (default: a newer owner epoch). `keep`:
  /// its last snapshot stays here as a replica copy (keep_fenced_copy);
  /// not for an owner that yields to a rival of its own epoch, whose data
  /// that copy (of the same epoch) would refuse.
  void fence(Segment& seg, const std::string& why = {}, bool keep = true) noexcept;
  /// A fenced owner's last complete snapshot becomes a replica store of
  /// its epoch here (ReplicaStore::from_owner: the stages mapped again,
  /// nothing copied), so it is counted like any copy until the new owner's
  /// set holds the generation: it answers queries and claims, serves
  /// fetches, is relabelled or updated by the new owner's data, and goes
  /// when that owner's set is recorded without this node (a release), or
  /// with a delete. Without it a durable generation was lost when a load
  /// moved the segment and the new owner and the other replica died
  /// before the new set was recorded: the old owner, alive with the
  /// generation, counted for nothing (docs/reliability.md). Returns false
  /// to be asked again (the committer holds seg.mu, or a copy-on-write
  /// snapshot is still settling), true once done with it (kept, or
  /// nothing to keep: a copy is here already, no complete snapshot, a
  /// delete). `mu_held`: the caller holds seg.mu (remove_segment).
  /// Thread: token holder.
  bool keep_fenced_copy(Segment& seg, bool mu_held) noexcept;
  /// Owned segments fenced whose copy is still to be kept (by id), tried
  /// again at each poll. Token holder.
  std::vector<uint64_t> fenced_to_keep;
  void keep_fenced_copies() noexcept;
  /// Another owner of `seg`'s own `epoch` proposed a replica set
  /// (`evidence` says how this node learnt it): if this owner's set is not
  /// recorded yet, it steps down (records.cc).
  void step_down_if_rivalled(Segment& seg, uint64_t epoch, const std::string& evidence) noexcept;
  /// kFlagRecord for a kStaleEpoch refusal of `f` when this node holds
  /// another owner's set record of f's epoch, else 0.
  uint16_t rival_record_flag(const wire::Frame& f) const noexcept;
  /// Another node wrote data or a set record of segment `seg_id` under
  /// `epoch`: if this node owns it at an older epoch, it was superseded (it
  /// may not have been asked: its replicas may have restarted and forgotten
  /// the newer epoch). Thread: token holder.
  void fence_if_superseded(uint64_t seg_id, uint64_t epoch) noexcept;
  /// The newest epoch this node claimed segment `seg_id` at: the epoch it
  /// owns it at (fenced since or not), or of a claim its load is turning
  /// into ownership (SegmentTable::unused_claim); 0 if none. Data and set
  /// records from below it are refused even where no copy is held here.
  /// Thread: token holder.
  uint64_t claimed_epoch(uint64_t seg_id) const noexcept;
  SenderTuning tuning() const noexcept;
};

}  // namespace baton

