#pragma once
// Embedding API: a program links the engine and runs it in-process. The same
// semantics as the daemon's client API (baton.h), in C++.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "baton/driver_sdk.h"
#include "baton/result.h"

namespace baton {

struct Topology;

enum class IdlePolicy : uint8_t {
  kSpin,      ///< never sleep: dedicated cores, lowest latency
  kAdaptive,  ///< back off to short sleeps when idle, so several engines share cores
};

/// Runs an engine inside a deterministic simulation (tests/sim): it reads
/// time from `now` (nanoseconds) instead of CLOCK_MONOTONIC and starts no
/// worker or control thread. Whoever drives the simulation polls every
/// engine with Engine::poll() and Engine::poll_control(); an API call that
/// waits for the engine calls `step` instead, which must advance the
/// simulated world (poll every engine, move the clock). Everything then runs on the one thread that drives the
/// simulation, in an order the simulation chooses.
struct SimulationHooks {
  std::function<uint64_t()> now;
  std::function<void()> step;
  /// Called when an API call asks for the poll token (unset: nothing
  /// happens). Outside a simulation the worker may be polling then, and
  /// the call takes the token only after that poll, while the other nodes
  /// run on: what the call checked before it asked may have been fenced,
  /// moved or deleted meanwhile. The simulation may advance its clock and
  /// poll the engines' data paths here (not their control threads: the
  /// caller may hold a segment's lock, which they take).
  std::function<void()> while_waiting_for_token;
};

/// Where membership views and quorum come from (S17).
enum class MembershipKind : uint8_t {
  kBackplane,  ///< the heartbeats on the links: a view is who answers them; quorum a majority of expected votes
  kCorosync,   ///< Corosync: members from a CPG process group, quorum from votequorum (beyond one chassis)
};

struct EngineConfig {
  uint16_t node_id = 1;               ///< 1..65534, unique in the cluster
  uint32_t replication_factor = 1;    ///< replicas per segment (capped by reachable peers)
  uint32_t retain = 0;                ///< older generations a replica keeps beside the latest
  uint32_t chunk_size = 16384;        ///< payload bytes per frame (capped by each link)
  uint32_t window = 256;              ///< chunks in flight per transfer
  uint64_t max_segment_size = 1ull << 30;
  uint32_t query_timeout_ms = 200;    ///< how long a load waits for peers to say what they hold
  uint32_t fetch_timeout_ms = 2000;   ///< a fetch without progress this long tries another replica
  /// Bytes a replica copies from one of its slots to another per poll of
  /// its worker (at least a chunk), when a delta's base, a hot standby's
  /// copy or the next delta's shadow must be brought up to date: a 64 MiB
  /// copy takes 16 polls, and heartbeats and acks go out between them. A
  /// delta whose last frame comes before its base is copied is published,
  /// and acked, when the copy is done.
  uint64_t copy_slice = 4ull << 20;
  /// For this long after it starts, a node starts no name afresh (a create,
  /// or an open that finds nothing) while a peer it links to has not been
  /// heard from since: having just started, it knows nothing of what that
  /// peer holds (votequorum's wait_for_all, bounded). kUnavailable meanwhile.
  uint32_t fresh_start_wait_ms = 10'000;
  /// A load from a peer whose link says caps().direct_read (a CC-NUMA
  /// shared region) asks it to lend its slot and reads it directly (one
  /// copy at memory speed) instead of having it streamed. False: stream.
  bool direct_reads = true;
  IdlePolicy idle = IdlePolicy::kAdaptive;
  uint32_t idle_spin_us = 100;        ///< adaptive: how long an idle worker spins before it sleeps
  uint32_t max_idle_sleep_us = 200;   ///< adaptive: longest sleep between polls
  /// Where segments, stages and replica slots live (a NUMA node's OS
  /// index), and this node's NUMA placement tag (S12). -1: the node of
  /// worker_cpu; else the one most links' devices sit on; else the one the
  /// engine starts on.
  int numa_node = -1;
  int worker_cpu = -1;                ///< pin the worker thread to this CPU; -1: let it float
  /// Per-core shards (Engine::start_sharded): one shard per entry, its
  /// worker pinned to that CPU (-1: it floats). Empty: one shard, its
  /// worker on worker_cpu. Each shard is a whole data path of its own
  /// (worker, queue pair on every port, replica stores, control plane)
  /// and owns the segments whose id falls to it (Engine::shard_of); every
  /// node of a cluster runs the same number of shards. numa_node, when
  /// set, binds every shard's memory; else each shard's follows its CPU.
  std::vector<int> workers;
  /// The machine's topology: "" discovers it (hwloc); "synthetic:DESC" is
  /// an hwloc synthetic description ("synthetic:package:2 numa:2 core:8
  /// pu:1"); anything else the path of an hwloc XML export. A described
  /// topology stands in for a bigger machine: worker_cpu and numa_node
  /// name its CPUs and nodes, which give the placement tags (package,
  /// NUMA node); the worker is then not pinned and memory is bound only to
  /// nodes this machine has.
  std::string topology;
  /// Heartbeats on every link (S17). 0 picks by idle policy: 100 us when
  /// spinning on dedicated cores, 5 ms in adaptive mode.
  uint32_t heartbeat_interval_us = 0;
  /// A peer silent this long, or whose link is down, is dead. 0 picks by idle
  /// policy: 500 us when spinning (sub-millisecond detection), 150 ms in
  /// adaptive mode (no false alarms when engines share cores and sleep).
  uint32_t failure_timeout_us = 0;
  /// The two as the engine takes them (0 picked by idle policy); the
  /// failure timeout must be at least twice the heartbeat.
  uint32_t heartbeat_us() const noexcept {
    return heartbeat_interval_us != 0 ? heartbeat_interval_us : idle == IdlePolicy::kSpin ? 100u : 5000u;
  }
  uint32_t failure_us() const noexcept {
    return failure_timeout_us != 0 ? failure_timeout_us : idle == IdlePolicy::kSpin ? 500u : 150'000u;
  }
  /// Global storage (S7): replicas also write every published generation
  /// here (a shared file system in production); a load falls back to it when
  /// no replica is alive. Empty: off.
  std::string global_dir;
  uint32_t global_keep = 2;  ///< newest generations kept per segment and node
  /// A stop writes the generations still waiting for global storage while
  /// its writes make progress; one that makes none for this long (a hung
  /// file system) is abandoned, so that the stop ends.
  uint32_t global_stop_wait_ms = 10'000;
  /// Memory for generations copied out and waiting for the file system
  /// (one per segment at most; two of a segment's size always fit). A
  /// generation past it is skipped, and offered again shortly after.
  uint32_t global_buffer_mib = 256;
  /// Votes in the cluster for quorum: a view decides only with a strict
  /// majority of them (two nodes: see View). 0: one per link plus this node.
  uint32_t expected_votes = 0;
  /// Views from the backplane heartbeats, or from Corosync (CPG members and
  /// votequorum's verdict; a member must also answer heartbeats, which stay
  /// the fast failure detector). kCorosync in a build without libcpg and
  /// libvotequorum fails start(). Without a running corosync the engine
  /// starts alone and without quorum, and joins once corosync answers
  /// (it tries every second).
  MembershipKind membership = MembershipKind::kBackplane;
  /// The CPG process group every batond of one cluster joins.
  std::string corosync_group = "baton";
  /// Placement tags (S12): replicas go to another blade, then another power
  /// domain, then another NUMA node first. 0: this node is its own blade /
  /// the power domain is unknown.
  uint32_t blade = 0;
  uint32_t power_domain = 0;
  /// Copy only what changed (S15): a commit's snapshot copies just the
  /// chunks written since the segment's previous snapshot, found by
  /// write-protecting its pages (userfaultfd asynchronous write-protect and
  /// PAGEMAP_SCAN, Linux 6.7; about 1 us on a page's first write after a
  /// commit). Where the kernel cannot, or once memory_fd() handed the
  /// memory to another process, every chunk is copied. A commit that
  /// finds most of the segment written stops tracking for a few commits.
  bool track_writes = true;
  /// How a commit takes its snapshot (issue #10 item 6; the trade-offs are
  /// measured in docs/performance.md):
  ///  - kStageCopy: the committing thread copies what was written into a
  ///    stage before the call returns (found as track_writes says; the
  ///    application may also name its ranges: CommitOptions::written).
  ///  - kCopyOnWrite (S14): the commit write-protects what was written and
  ///    returns; the worker copies the snapshot while the application goes
  ///    on, and a write to a page not copied yet copies it aside first, in
  ///    the writing thread (a SIGBUS handler this process installs: about
  ///    4 us per first write to a page after each commit). Traps: a
  ///    write the kernel makes into the segment (read(2) into it) fails
  ///    with EFAULT while its page is protected; an application's own
  ///    SIGBUS handler must be installed before the engine starts (the
  ///    engine's chains to it). Where the kernel cannot (or the memory is
  ///    on huge pages, or memory_fd() hands it out) the segment falls back
  ///    to kStageCopy, with the reason logged.
  enum class SnapshotMode : uint8_t { kStageCopy, kCopyOnWrite };
  /// Daemon mode (batond sets it): every segment's memory is handed to an
  /// application process (memory_fd()), whose client library tracks its
  /// writes and, for a copy-on-write segment, freezes its own mapping at
  /// each commit (share_copy_on_write(), CommitOptions::frozen). The
  /// engine attaches no copy-on-write of its own and runs no periodic
  /// commits: the client library does.
  bool shared_with_clients = false;
  SnapshotMode snapshot_mode = SnapshotMode::kStageCopy;
  /// Copy-on-write: a thread of the process protects written pages again
  /// while the application writes on, so that a commit protects only the
  /// few written last and its pause does not grow with how many pages
  /// were written (copy_on_write.h). The kernel work is the same, moved
  /// off the commit into the writing phase; where page-table changes are
  /// slow (shadow paging) the writes slow down by more than the pause
  /// shrinks (docs/performance.md). Off: each commit protects every page
  /// written since the last.
  bool cow_protect_ahead = false;
  /// Periodic commits (S5): the engine commits each copy-on-write segment
  /// by itself every this many milliseconds, when anything was written
  /// since its last commit (an application's own commit restarts the
  /// period). The snapshot is as consistent as a fork's: a point in the
  /// application's run where every write before it is in, none after (a
  /// write to a page already protected waits while the commit protects
  /// the rest). Generations so taken are ordinary ones (wait on them,
  /// load them). A stage-copy segment cannot be snapshotted while it is
  /// written: it commits on the application's call only (logged).
  /// 0: on the application's call only.
  uint32_t commit_every_ms = 0;
  /// Per segment name, a mode (and a period) other than the engine's.
  struct SegmentSnapshot {
    std::string segment;
    SnapshotMode mode = SnapshotMode::kStageCopy;
    std::optional<uint32_t> commit_every_ms;  ///< unset: EngineConfig::commit_every_ms
  };
  std::vector<SegmentSnapshot> snapshot_modes;
  /// Hot standbys (S16): per segment name, the nodes that keep a current,
  /// ready-to-run copy of it. Give every node of a cluster the same list.
  /// An owner places the segment's replicas on its live standby nodes
  /// first (and moves one there when a standby node comes up); a standby
  /// node keeps, beside its replica slots, the latest generation as
  /// application memory, brought up to date after every generation (only
  /// the chunks a delta changed), so that a load there takes that memory
  /// over: no fetch, no allocation, no copy.
  struct Standby {
    std::string segment;
    std::vector<uint16_t> nodes;
  };
  std::vector<Standby> standbys;
  /// Set only by a simulation (see SimulationHooks); null in production.
  std::shared_ptr<const SimulationHooks> simulation;
};

/// Wait for a majority of the segment's replica set under the current owner
/// epoch, and never fewer holders than a majority of the replication factor:
/// the durability rule fencing relies on (docs/architecture.md).
inline constexpr uint32_t kDurable = UINT32_MAX;

/// A membership view: who can reach whom now. Decisions about replicas and
/// ownership are taken only in a quorate view.
struct View {
  uint64_t id = 0;                ///< rises by one on every change this node sees
  std::vector<uint16_t> members;  ///< sorted; includes this node
  uint32_t expected_votes = 0;
  /// Votes a decision needs: a strict majority of expected votes (1 of 2
  /// in a two-node cluster). Set records and load queries need answers from
  /// this many nodes.
  uint32_t quorum = 0;
  /// A strict majority of expected votes. Two nodes are votequorum's
  /// two_node mode: one is quorate alone once it has seen the other.
  bool quorate = false;
  bool agreed = false;            ///< every member reported the same member set
  const char* source = "backplane";  ///< where it came from: "backplane" or "corosync"
  uint64_t digest() const noexcept;  ///< of the member set
  std::string to_string() const;     ///< "view 4 {1,2,3} 3 of 3 votes, quorate, agreed"
};

struct PeerStatus {
  uint16_t node = 0;
  bool alive = false;
  bool ever_heard = false;
  uint64_t silent_us = 0;  ///< since the last frame from it
  /// Its incarnation as last heard (a new one each start: a restarted node
  /// holds nothing it held before); 0: not heard yet.
  uint64_t incarnation = 0;
  uint64_t incarnation_age_us = 0;  ///< since this node first heard that incarnation
  /// Its failure domains, from its heartbeats (NodePlace; -1: unknown).
  int package = -1;
  int numa_node = -1;
  /// This node has the peer's set records and tombstones (asked for once
  /// after this node started): until then it starts no name afresh within
  /// fresh_start_wait_ms of its start (the peer may hold it).
  bool records_had = false;
};

/// Where a node stands, for placement (S12) and memory: resolved at start
/// from EngineConfig (numa_node, worker_cpu, topology) and the links.
struct NodePlace {
  uint32_t blade = 0;         ///< EngineConfig::blade, or the node id when 0
  uint32_t power_domain = 0;  ///< 0: unknown
  int package = -1;           ///< the NUMA node's package on this blade; -1: none known
  int numa_node = -1;         ///< segments, stages and replica slots are bound here
  int memory_node = -1;       ///< where memory really goes: numa_node, or -1 when a described topology's node is not here
};

struct Event {
  uint64_t unix_us = 0;
  std::string text;
};

/// Handle to a segment this node owns. Valid until Engine::close() or the
/// engine's destruction.
struct Segment;

/// How a commit shares the engine with other callers.
struct CommitOptions {
  /// A snapshot of more than a few chunks is copied holding the engine's
  /// poll loop (chunks go out while in cache; fastest for one application)
  /// until another caller asks for it. `share`: copy without holding it,
  /// taking it between batches only when it is free: for a process where
  /// other applications commit meanwhile (batond's large-segment thread),
  /// so that none waits behind a copy the scheduler preempted.
  bool share = false;
  /// Application-managed ranges: the application promises it wrote only
  /// these bytes (offset, length) since its previous commit of the segment,
  /// and only their chunks are copied (with whatever write tracking found).
  /// Empty: the engine finds out (EngineConfig::track_writes) or copies
  /// everything. A range past the segment's end is kInvalidArgument.
  std::span<const std::pair<uint64_t, uint64_t>> written;
  /// Daemon mode, a segment shared by share_copy_on_write(): the client
  /// library froze its mapping for this commit (it took the pages written
  /// since its previous commit, gave them as `written`, protected them,
  /// and keeps its fault handler waiting until the call returns). The
  /// commit then copies nothing: the worker settles the snapshot from the
  /// memory while the application goes on. False: a stage copy.
  bool frozen = false;
  /// With `frozen`: the client library also made the pages it took
  /// pending itself, since the share said that the snapshot of the
  /// generation before `expect_generation` was settled whole and the next
  /// stage needs only the pages written since, and returned without
  /// waiting for this call (a posted copy-on-write commit). The commit
  /// then marks nothing pending. If that does not hold (a client that did
  /// not check), or the commit fails for any reason, it fails and every
  /// page is made idle again: the generation is no snapshot, the client
  /// counts its pages as written again, and only its commits suffer.
  /// Needs `expect_generation`.
  bool pended = false;
  /// A stage copy takes the bytes from here (as many as the segment has)
  /// instead of from the segment's memory: batond's copy of a segment as
  /// last committed, onto which it applied a posted commit (ipc/messages.h,
  /// CommitLog). Null: the segment's memory. Not with copy-on-write
  /// (kInvalidArgument).
  const std::byte* source = nullptr;
  /// The caller promises that nothing but its own thread writes the
  /// segment until the call returns (an application that commits from its
  /// only writer, or with its other writers stopped: as the stage copy
  /// needs anyway). A copy-on-write segment with cow_protect_ahead then
  /// copies the few written pages the protector has not protected again
  /// into the snapshot, instead of protecting them: the pause is a few
  /// page copies, whatever a page-table change costs on the host
  /// (copy_on_write.h, "Quiescent commits"). A write by another thread
  /// during such a call can leave a snapshot that is no point in the
  /// application's run. Periodic commits are never quiescent.
  bool quiescent = false;
  /// Nonzero: the commit must become exactly this generation (the client
  /// library numbered a posted commit itself), else it fails with
  /// kInvalidArgument and takes nothing.
  uint64_t expect_generation = 0;
};

/// What a client library needs to take copy-on-write snapshots of its own
/// mapping of a segment (Engine::share_copy_on_write).
struct ClientCopyOnWrite {
  int fd = -1;                   ///< the share (CowShare): the caller's, to send and close
  uint32_t commit_every_ms = 0;  ///< the segment's period (S5), for the library to keep
  bool protect_ahead = false;    ///< EngineConfig::cow_protect_ahead, for the library's CopyOnWrite
};

enum class OpenOutcome : uint8_t {
  kCreated,   ///< nothing existed anywhere: fresh zeroed segment (first run)
  kRestored,  ///< loaded from a replica: the application resumes
};

struct OpenResult {
  Segment* segment = nullptr;
  OpenOutcome outcome = OpenOutcome::kCreated;
  uint64_t generation = 0;  ///< generation loaded (0 when created)
};

struct SegmentStatus {
  std::string name;
  uint64_t id = 0;
  uint64_t size = 0;
  uint64_t generation = 0;  ///< last committed
  uint64_t epoch = 0;
  bool fenced = false;
  std::vector<std::pair<uint16_t, uint64_t>> replicas;  ///< (node, generation it holds)
  uint64_t durable = 0;  ///< newest generation a majority of the replica set holds (kDurable)
  uint64_t durable_age_us = 0;  ///< since `durable` reached its value (0 while nothing is durable)
  bool writes_tracked = false;  ///< commits copy only the chunks written since (EngineConfig::track_writes)
  /// Commits take copy-on-write snapshots (EngineConfig::snapshot_mode);
  /// writes that faulted on a protected page, and of those the pages
  /// copied aside for a snapshot still being taken; written pages
  /// protected again ahead of the commit (EngineConfig::cow_protect_ahead)
  /// and by the commits themselves; times a dense writer's protection was
  /// lifted whole (docs/user-guide.md, "Snapshot modes").
  bool copy_on_write = false;
  uint64_t cow_faults = 0;
  uint64_t cow_copied_aside = 0;
  uint64_t cow_protected_ahead = 0;
  uint64_t cow_protected_at_commit = 0;
  uint64_t cow_lifted_whole = 0;
  uint64_t cow_copied_at_commit = 0;  ///< written pages quiescent commits copied instead (CommitOptions::quiescent)
  /// Daemon mode: times batond stopped waiting for the application's
  /// library (a page its fault handler held past the patience of a
  /// snapshot, or kept moving) and took pages from the segment as they
  /// were. Nonzero: a client preempted, killed or misbehaving mid-copy.
  uint64_t cow_settler_gave_up = 0;
  std::vector<uint16_t> standbys;  ///< its hot standby nodes (EngineConfig::standbys)
};

struct ReplicaStatus {
  std::string name;
  uint64_t size = 0;
  uint16_t owner = 0;
  uint64_t epoch = 0;
  std::vector<uint64_t> generations;  ///< newest first
  /// A hot standby (EngineConfig::standbys): the generation its ready copy
  /// equals, and the bytes it still has to copy to equal the newest one.
  bool standby = false;
  uint64_t standby_generation = 0;
  uint64_t standby_behind_bytes = 0;
};

/// A node's record of a segment's replica set (docs/architecture.md,
/// "Fencing"): written by the owner at a quorum of nodes.
struct RecordStatus {
  uint64_t epoch = 0;
  uint64_t version = 0;
  uint16_t owner = 0;            ///< the owner that wrote it
  std::vector<uint16_t> set;     ///< the replica set
};

struct LinkStatus {
  std::string name;
  uint16_t peer = 0;
  bool up = false;  ///< as the device reports it (a dead af_packet peer still looks up)
  LinkCounters counters;
  uint16_t shard = 0;  ///< the shard (worker) it serves
};

struct EngineStats {
  uint64_t frames_rx = 0, frames_tx = 0;
  uint64_t decode_errors[16] = {};  ///< by wire::DecodeError
  /// Frames refused as undecodable, whatever the reason.
  uint64_t decode_errors_total() const noexcept {
    uint64_t n = 0;
    for (uint64_t e : decode_errors) n += e;
    return n;
  }
  uint64_t misdirected = 0;         ///< frames for another node
  uint64_t retransmits = 0;
  uint64_t duplicates = 0;
  uint64_t stale_epoch = 0;         ///< frames refused because their owner epoch is old
  uint64_t published = 0;           ///< generations published by this node's replica stores
  uint64_t corrupt_generations = 0; ///< assembled generations whose checksum failed
  uint64_t tx_dropped = 0;          ///< control frames dropped for want of tx room
  uint64_t no_slot = 0;
  uint64_t bad_input = 0;           ///< well-formed frames that made no sense here
  uint64_t stalls = 0;              ///< gaps between polls of half the failure timeout or more
  uint64_t longest_stall_us = 0;    ///< the longest such gap
  uint64_t last_stall_age_ms = 0;   ///< how long ago the newest one ended (0 with none)
  uint64_t snapshot_chunks_copied = 0;   ///< chunks commits copied into a snapshot
  uint64_t snapshot_chunks_skipped = 0;  ///< chunks unchanged since the stage's last snapshot
  uint64_t deltas_sent = 0;        ///< generations sent to a replica as only what changed (S15)
  uint64_t wholes_sent = 0;        ///< generations sent to a replica whole
  uint64_t deltas_published = 0;   ///< generations this node's replica stores built from a delta
  /// Of those, published by the worker's poll loop after the rest of their
  /// base was copied, a slice per poll (their last frame came first).
  uint64_t deltas_published_later = 0;
  /// Generations a new owner re-replicated under its epoch that this
  /// node's replica already held: relabelled, not received again.
  uint64_t restamped = 0;
  /// Owners fenced here whose last snapshot stayed as a replica copy
  /// until the newer owner's set held it (it is counted as a copy).
  uint64_t fenced_copies_kept = 0;
  /// Loads that took a copy held outside the replica set, because every
  /// member of the set had lost its copy (a fenced owner's, kept).
  uint64_t loads_outside_set = 0;
  uint64_t notes_rx = 0;           ///< daemon notes received (Engine::take_notes)
  uint64_t notes_dropped = 0;      ///< received while the inbox was full: lost
  uint64_t standby_promotions = 0; ///< loads that took over this node's hot standby copy (no fetch, no copy)
  /// Loads that mapped this node's replica slot in place as the
  /// application's memory and took a free slot for the first stage
  /// (issue #11, zero-copy takeover: no allocation; at most one copy,
  /// into the stage; no checksum pass).
  uint64_t replica_promotions = 0;
  /// Of those, the ones whose first stage was a slot the worker had kept
  /// a copy of the generation (or a chain of deltas away from it): only
  /// the chunks it lacked were copied, not the segment.
  uint64_t replica_promotions_chained = 0;
  /// Direct reads (issue #11; links with caps().direct_read): published
  /// slots this node lent to a loader instead of streaming them; loads
  /// that read a peer's lent slot themselves (one copy, at memory speed);
  /// and lent reads that failed (the file gone or another one, the
  /// checksum wrong) and were streamed instead.
  uint64_t slots_lent = 0;
  uint64_t direct_reads = 0;
  uint64_t direct_read_failures = 0;
  uint64_t cow_snapshots = 0;      ///< commits that took a copy-on-write snapshot (S14)
  uint64_t cow_pages_settled = 0;  ///< snapshot pages the engine copied (the rest the writers copied aside)
  /// Copy-on-write commits whose pages were pending by the tags their
  /// faults left (no store per page in the commit's pause); the others
  /// marked each page of the stage (its catch-up unfinished, explicit
  /// ranges, or pages counted as written in bulk).
  uint64_t cow_pended_by_tags = 0;
  uint64_t periodic_commits = 0;   ///< commits the engine took by itself (EngineConfig::commit_every_ms)
};

/// Global storage (S7) on this node, summed over its shards: what its
/// replicas wrote there, and whether it is failing now.
struct StorageStatus {
  std::string dir;
  uint64_t written = 0;   ///< generations made safe in `dir`
  uint64_t failed = 0;    ///< writes that failed (the directory unwritable, full, gone)
  uint64_t skipped = 0;   ///< generations not written: the writer was behind (a newer one was)
  uint64_t dropped = 0;   ///< writes of a name deleted meanwhile
  bool failing = false;   ///< the last write (of some shard) failed
  uint64_t failing_for_ms = 0;     ///< since its first failure in a row (while failing)
  std::string last_error; ///< the newest failure's message
  uint64_t last_error_age_ms = 0;  ///< how long ago it failed (0 with no failure)
  uint64_t last_write_age_ms = 0;  ///< how long ago a file was last written (UINT64_MAX: never)
};

/// A note from another node's daemon (Engine::send_note).
struct Note {
  uint16_t from = 0;
  std::vector<std::byte> bytes;
};

class Engine {
 public:
  /// Starts an engine with its worker thread over `links`.
  /// Errors: kInvalidArgument (bad config, duplicate peer), kIo. Thread: control.
  static Result<std::unique_ptr<Engine>> start(const EngineConfig& config,
                                               std::vector<std::unique_ptr<Link>> links);
  /// Starts an engine of per-core shards, one per EngineConfig::workers
  /// entry (one when it is empty): shard k runs over `links[k]`, its own
  /// queue pair (or device) to every peer, and every shard reaches the same
  /// peers. Shard k of one node talks only to shard k of the others, so the
  /// protocol runs per shard exactly as it runs per engine. Errors:
  /// kInvalidArgument (a shard count that does not match the workers,
  /// shards reaching different peers, Corosync membership with more than
  /// one shard), and those of start(). Thread: control.
  static Result<std::unique_ptr<Engine>> start_sharded(const EngineConfig& config,
                                                       std::vector<std::vector<std::unique_ptr<Link>>> links);
  /// The number of shards (1 unless started with several workers).
  size_t shards() const noexcept;
  /// The shard that owns segment `name` on every node of the cluster.
  size_t shard_of(std::string_view name) const noexcept;
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Registers a new segment (S1): fails with kExists if this node or any
  /// reachable peer already holds the name. The service selects replicas (S4).
  Result<Segment*> create(std::string_view name, uint64_t size);

  /// Application start-up (S11): restores the segment from the newest copy a
  /// reachable peer holds, or creates it if none does. `size` is used when
  /// creating; a restored segment keeps its recorded size. A fenced segment
  /// of that name still open here is closed first (its handle becomes
  /// invalid): the cluster holds newer state than this node.
  Result<OpenResult> open(std::string_view name, uint64_t size);

  /// Application restart on this node (S3, S11): the application that held
  /// `segment` is gone and another (or the same, restarted) takes it over.
  /// Asks a quorum of nodes whether ownership moved meanwhile; if it did (or
  /// the segment is fenced) the local copy is dropped and the segment is
  /// opened from the cluster as by open() (by load() with `take_over`: an
  /// agent moving the segment here takes it from a live owner too), under a
  /// new handle. Otherwise the
  /// memory is put back to the last committed generation (what the departed
  /// application wrote after it is not a generation) and the same handle is
  /// returned: kRestored with that generation, or kCreated (zeroed) if it
  /// never committed. Errors: kInvalidArgument (unknown handle),
  /// kUnavailable (no quorum to confirm ownership), open()'s errors.
  /// Thread: control.
  Result<OpenResult> reopen(Segment* segment, bool take_over = false);

  /// Load request (S9): takes ownership here under a new owner epoch, which
  /// enough of the segment's replica set must accept first (half of it,
  /// rounded up, and none refusing: docs/architecture.md, "Fencing"), then
  /// retrieves the newest copy they hold. kNotFound if no peer holds it; kUnavailable
  /// if this node's view has no quorum or too few replicas accepted.
  Result<OpenResult> load(std::string_view name);

  /// The segment's memory: the application writes its state here.
  std::span<std::byte> data(Segment* segment) const noexcept;
  /// Its size in bytes (0: unknown handle), without handing the memory out.
  uint64_t size(Segment* segment) const noexcept;
  /// The memfd behind data(), to share the segment with another process
  /// (batond hands it to applications); -1 for an unknown handle. Borrowed.
  int memory_fd(Segment* segment) const noexcept;
  /// Daemon mode (EngineConfig::shared_with_clients), a copy-on-write
  /// segment: a fresh share of page states and aside buffer for the client
  /// library that maps the memory next (any previous client's snapshot is
  /// settled first). Its commits then say `frozen`. Nothing (no error)
  /// when the segment takes stage copies by the config. Errors:
  /// kInvalidArgument (unknown handle), kUnavailable (copy-on-write asked
  /// for, but this kernel or this memory cannot: the reason), kNoMemory.
  Result<std::optional<ClientCopyOnWrite>> share_copy_on_write(Segment* segment);

  /// Takes a snapshot and replicates it as a new generation (S5). Returns
  /// the generation once the snapshot is taken; replication goes on.
  /// Errors: kInvalidArgument (unknown handle), kFenced (a newer owner exists).
  Result<uint64_t> commit(Segment* segment, CommitOptions options = {});

  /// Waits until at least `k` replicas hold `generation` (or newer) under
  /// the current owner epoch; k = kDurable waits for a majority of the
  /// replica set (and, while the set is changing, of the previous set too).
  /// Errors: kTimeout, kInvalidArgument (k above the replica count), kFenced.
  Result<void> wait_replicated(Segment* segment, uint64_t generation, uint32_t k,
                               std::chrono::milliseconds timeout);

  /// Unregisters: the handle and local memory go; replicas keep their copies.
  Result<void> close(Segment* segment);

  /// Deletes segment `name` everywhere (S11's clean exit): a tombstone at an
  /// owner epoch above every one seen is stored by a quorum of nodes and a
  /// majority of the replica set; they drop their copies, its owner (if
  /// any, anywhere) is fenced, global storage forgets it, and the next open
  /// of the name starts fresh. A load that races the delete may win; then
  /// the delete fails with kBusy and the segment lives on.
  /// Errors: kBusy (open on this node: close it first; or a racing load),
  /// kNotFound (no such segment), kUnavailable (no quorum, or too few nodes
  /// stored the tombstone: it may be deleted on some of them; try again).
  Result<void> remove(std::string_view name);

  Result<SegmentStatus> status(Segment* segment) const;
  /// What this node holds as a replica of `name`. kNotFound if nothing.
  Result<ReplicaStatus> replica_status(std::string_view name) const;
  /// Everything this node holds as a replica, by name (hot standbys among
  /// them).
  Result<std::vector<ReplicaStatus>> replicas() const;
  /// This node's record of `name`'s replica set. kNotFound if it has none.
  Result<RecordStatus> record(std::string_view name) const;
  /// Copies a replica generation this node holds (0: latest) into a vector.
  Result<std::vector<std::byte>> read_replica(std::string_view name, uint64_t generation = 0) const;

  /// Counters summed over the shards (longest_stall_us: the longest).
  EngineStats stats() const noexcept;
  /// Global storage's state; nullopt when it is off.
  std::optional<StorageStatus> storage() const;
  /// Every link's state and counters, shard by shard.
  std::vector<LinkStatus> link_status() const;
  /// What the failure detector believes of each peer (the first shard's:
  /// each shard's control plane watches its own queue pairs).
  std::vector<PeerStatus> peers() const;
  /// The same, as the shard that owns segment `name` sees them: each shard
  /// has links and a failure detector of its own (EngineConfig::shards),
  /// and a wire of one shard may be down while another's is up.
  std::vector<PeerStatus> peers(std::string_view name) const;
  /// The current membership view (the first shard's).
  View view() const;
  /// The most recent events (membership changes, fencing, the daemon's
  /// failover decisions), oldest first; every shard's, those of shards
  /// after the first marked "shard K: ".
  std::vector<Event> events() const;
  /// Adds a line to events() (and the log): for the daemon's own decisions.
  /// Thread: any.
  void add_event(std::string text);
  /// Peers to put replicas on before others that spread them over as many
  /// failure domains (hot standbys still first): batond gives its service
  /// groups' spare pool, so that a failover there takes its own replica
  /// over instead of fetching. A hint for sets chosen from now on; no set
  /// moves for it. Thread: any.
  void prefer_replicas_on(std::vector<uint16_t> nodes);
  /// Sends `bytes` (1..1024) to `peer`'s daemon, or to every peer's (0),
  /// over the backplane links: best effort, unordered, unacknowledged (a
  /// daemon's protocol on top repeats what matters). Errors:
  /// kInvalidArgument (size, not a peer). Thread: any.
  Result<void> send_note(uint16_t peer, std::span<const std::byte> bytes);
  /// The notes received since the last call, oldest first. At most 64 wait;
  /// more are dropped (EngineStats::notes_dropped). Thread: one caller at a
  /// time (the daemon's failover thread).
  std::vector<Note> take_notes();
  /// An eventfd that turns readable when a note arrives or the membership
  /// view changes (read it to clear it), for a daemon that polls. Thread:
  /// any.
  int notes_fd() const noexcept;
  uint16_t node_id() const noexcept;
  /// This engine's incarnation: its start time, which peers see in its
  /// heartbeats (PeerStatus::incarnation).
  uint64_t incarnation() const noexcept;
  /// The largest segment this engine creates or accepts (EngineConfig::max_segment_size).
  uint64_t max_segment_size() const noexcept;
  /// The machine as hwloc saw it at start, or as EngineConfig::topology
  /// described it (runtime/topology.h).
  const Topology& topology() const noexcept;
  /// Where this node stands (fixed at start): its first shard's place, or
  /// shard `shard`'s (each shard's memory sits on its worker's NUMA node).
  /// Thread: any.
  NodePlace place(size_t shard = 0) const noexcept;
  /// One iteration of the poll loop; returns whether it did work. Only for
  /// an engine started with EngineConfig::simulation (it has no worker).
  /// Thread: the simulation's.
  bool poll();
  /// One pass of the control thread (failure detector, views); returns
  /// whether it sent the data path anything. Only under simulation, which
  /// steps it apart from poll(). Thread: the simulation's.
  bool poll_control();

  struct Impl;

 private:
  explicit Engine(std::vector<std::unique_ptr<Impl>> shards);
  /// The shard owning `name`, and the one whose table holds `segment`
  /// (null: an unknown handle). Thread: any.
  Impl& shard_for(std::string_view name) const noexcept;
  std::vector<PeerStatus> peers_of(Impl& shard) const;
  Impl* shard_holding(const Segment* segment) const noexcept;
  std::vector<std::unique_ptr<Impl>> shards_;  ///< fixed at start
  Impl* impl_;  ///< shards_[0]: node-wide state (view, peers, notes, events) is read from it
};

}  // namespace baton
