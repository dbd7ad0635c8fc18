#pragma once
// A deterministic simulation of failover decisions (issue #12): the real
// Coordinator on every node, a model of each node's Runner, and a seeded
// schedule of node kills and restarts, crashing applications, failing
// provision hooks, slow nodes, slow starts and lost notes. After every
// step it checks the invariants:
//  F1 an assignment number of a group names one node, whichever
//     coordinator made it (numbers only grow);
//  F2 every assignment goes to a node that was alive and eligible then
//     (cores, memory, tags; not running work of the same or higher
//     priority);
//  F3 a node works at most one group at a time, and at most one node
//     works a group at its newest assignment;
// and at the end, after a quiet spell with every fault healed:
//  F4 every group that some node qualifies for runs, unless the nodes it
//     qualifies for all run work of the same or higher priority.
// A failing seed prints its schedule and replays exactly.

#include <cstdint>
#include <optional>
#include <string>

namespace baton::failover::sim {

struct Options {
  int nodes = 0;    ///< 0: drawn from the seed (3..6)
  int steps = 400;  ///< of 50 ms each, before the quiet spell
  bool print = false;
};

struct Stats {
  uint64_t assignments = 0, failovers = 0, performance_moves = 0, alerts = 0, kills = 0, crashes = 0;
  uint64_t packed = 0;  ///< assignments to a node that kept other work running beside (capacity)
};

/// Runs one seed. Returns the failed invariant with the schedule, or nullopt.
std::optional<std::string> run(uint64_t seed, const Options& o, Stats* stats = nullptr);

}  // namespace baton::failover::sim
