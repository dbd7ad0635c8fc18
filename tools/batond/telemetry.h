#pragma once
// batond's DPDK telemetry commands, readable with dpdk-telemetry.py:
//
//   /baton/status            node, view and client counters
//   /baton/segments[,PAGE]   segments, 40 per page ("page", "pages", "total")
//   /baton/peers             per peer: alive, link up, frames, reconnects
//   /baton/stats             the engine's counters and the clients'
//   /baton/groups            service groups (group_N: name, node, state, ...),
//                            the pool (node_N), the coordinator, its last decision
//
// Every reply stays far below the 16 KiB a telemetry reply may hold.
// Booleans are 0/1 (this DPDK's telemetry has no boolean type); names use
// only letters, digits, _ and / (what telemetry accepts): node_id, peer_2.

#include <functional>
#include <string>

#include "baton/engine.h"
#include "ipc/server.h"

namespace baton::batond {

/// Registers the commands; they answer from `server`, `engine` and
/// `groups_json` (the failover manager's status as JSON text; empty: no
/// service groups) until the process ends (all must outlive the EAL).
/// Thread: control, once.
void register_telemetry(ipc::Server& server, Engine& engine, std::function<std::string()> groups_json);

}  // namespace baton::batond
