#pragma once
// Deterministic simulation (issue #8): N real engines in one thread, on a
// simulated clock, joined by loopback links whose faults come from the same
// seeded generator. A seeded scheduler plays applications (commit, wait for
// durable, crash, restart, agent loads) against node kills and restarts
// (a restarted node is a new incarnation that lost its memory), stalls (as
// SIGSTOP), partitions, heals and lossy links, and checks the invariants
// after every step:
//   I1 no generation acknowledged durable is lost: every restore returns it
//      or a newer one while any node still holds it;
//   I2 every restore is byte-exact a committed generation;
//   I3 one owner per segment and epoch gets durable acknowledgements;
//   I4 epochs stay bounded, and at the end, with every fault healed, every
//      segment whose state some node holds loads again;
//   I5 once a delete returned, no restore gives a generation committed
//      before it (applications delete on a clean exit, operators at any time,
//      also while a load of the name runs elsewhere);
//   I6 with every fault healed, a running application's commit becomes
//      durable, or it learns that it lost the segment.
// The same seed gives the same schedule, step for step.

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "baton/engine.h"
#include "baton/loopback.h"

namespace baton::sim {

struct Options {
  int nodes = 4;
  uint32_t replication_factor = 2;
  uint64_t segment_size = 12 * 1024;
  int segments = 2;
  int actions = 60;       ///< scheduler decisions per seed
  bool faults_in_calls = true;  ///< kills, stalls and partitions also strike while a call waits
  /// While an open or an agent's load of a name waits, an operator's
  /// delete of it, or another open or load, on another node runs now and
  /// then, or an open or load while a delete waits: the two race (the
  /// second call runs inside the first's wait).
  bool races = true;
  bool print = false;     ///< print the schedule as it runs
  bool standbys = true;   ///< give some segments a hot standby node (picked from the seed)
  bool cow = true;        ///< some segments take copy-on-write snapshots (picked from the seed)
  /// Some node pairs share memory (picked from the seed): their wires say
  /// caps().direct_read, so loads there read a lent slot directly.
  bool direct = true;
  /// Per-core shards per node (EngineConfig::workers): shard k of every
  /// node pair has a wire of its own, which faults strike one at a time.
  int shards = 1;
  /// Each engine incarnation takes a chunk size of its own (picked from the
  /// seed; EngineConfig::chunk_size): owners and replicas then disagree
  /// about the chunking now and then, as after a changed `chunk_kib`.
  bool mixed_chunks = true;
  /// An API call that asks for an engine's poll token now and then finds
  /// its worker polling, and waits that poll out while the other nodes run
  /// on (SimulationHooks::while_waiting_for_token). Its own generator: the
  /// scheduler's draws stay as they were. On since session 52, once the
  /// violations it found were fixed (docs/reliability.md, "Polls while a
  /// call waits for the token"); `baton-sim --no-token-waits` replays a
  /// seed found without it.
  bool token_waits = true;
};

struct Stats {
  uint64_t seeds = 0, steps = 0, commits = 0, durable_acks = 0, restores = 0, fresh_starts = 0, kills = 0,
           restarts = 0, partitions = 0, stalls = 0, failed_opens = 0, lost_with_every_copy = 0,
           acks_in_detection_window = 0, past_tolerance = 0, records_lost = 0, deletes = 0, failed_deletes = 0,
           partial_snapshots = 0,  ///< commits that copied only the chunks written since (write tracking)
           delta_generations = 0,  ///< generations replicas built from a delta (only what changed travelled)
           deltas_published_later = 0,  ///< of those, published by the poll after their base was copied
           standby_promotions = 0,  ///< loads that took a hot standby's ready copy over
           replica_promotions = 0,  ///< loads that mapped their node's own replica slot in place
           replica_promotions_chained = 0,  ///< of those, whose stage the replica had kept close (only chunks copied)
           cow_snapshots = 0,       ///< commits that took a copy-on-write snapshot (S14)
           cow_pended_by_tags = 0,  ///< of those, the engines' own whose pages were pending by their tags
           restamped = 0,           ///< takeovers' generations a replica held already: relabelled, not resent
           fenced_copies_kept = 0,  ///< fenced owners whose last snapshot stayed as a replica copy
           loads_outside_set = 0,   ///< loads from such a copy: every member of the set had lost its own
           direct_reads = 0,        ///< loads that read a peer's lent slot through shared memory
           races = 0,               ///< two calls of one name that ran at once (a delete and a load, or two loads)
           start_races = 0,         ///< of which two opens or loads
           zombie_commits = 0,      ///< commits by the instance of two racing starts that returned first
           zombie_durable = 0,      ///< of which acknowledged durable (its start won)
           client_cow_opens = 0,    ///< starts that ran as a daemon-mode client (its own mapping, frozen commits)
           client_cow_posts = 0,    ///< of their commits, those the client pended itself (CommitOptions::pended)
           client_cow_posts_refused = 0;  ///< of those, the ones that became no generation
  void add(const Stats& o);
  std::string to_string() const;
};

struct Outcome {
  bool ok = true;
  std::string violation;  ///< the invariant broken, with its evidence
  std::string schedule;   ///< every decision and fault, in order, with simulated time
  Stats stats;
};

/// Runs one seed. Thread: the caller's (everything runs on it).
Outcome run_seed(uint64_t seed, const Options& options);

}  // namespace baton::sim
