#pragma once
// batond's configuration: a TOML file. A bad file is refused with a message
// naming the field and the reason.
//
//   [node]    id = 1, name = "blade1", cores = 2, memory_mib = 4096, tags = ["slot=1"], spare = false
//   [engine]  replication_factor = 2, retain = 0, idle = "adaptive" | "spin", max_segment_mib = 1024,
//             worker_cpu = 1 (pin the poll loop; default: float),
//             workers = [0, 1] (per-core shards: one worker each, pinned to that CPU, -1 floats;
//             default: one worker on worker_cpu; every node of a cluster runs as many),
//             numa_node = 0 (where memory lives; default: worker_cpu's node),
//             topology = "synthetic:package:2 numa:2 core:8 pu:1" (default: discovered),
//             heartbeat_us = 5000, failure_timeout_us = 150000 (0: by idle policy)
//   [client]  socket = "/run/baton/blade1.sock", user = "root", group = "baton", mode = "0660",
//             max_clients = 256, max_clients_per_process = 16,
//             max_clients_per_user = 64 (default: a quarter of max_clients; root and batond's user exempt),
//             max_segments = 64 (per application),
//             max_mib = 4096 (per application; both also bound what batond keeps for a user),
//             max_wait_ms = 60000 (a longer wait is cut to this)
//   [log]     level = "info", syslog = false
//   [storage] dir = "/shared/baton", keep = 2 (global storage, S7; optional)
//   [eal]     args = ["--log-level=5"]
//   [snapshots] mode = "stage-copy" | "copy-on-write", commit_every_ms = 0 (periodic commits, S5; copy-on-write only)
//   [[snapshots.segment]] name = "kv", mode = ..., commit_every_ms = ... (per segment; unset: as [snapshots])
//   [[group]] name = "kv", segments = ["kv"], start = "...", probe = "...", provision = "...", alert = "...",
//             probe_interval_ms, probe_timeout_ms, slow_ms, slow_for_ms, failover_on = "either",
//             priority = 0, min_cores, min_memory_mib, tags = [...], home = [1], start_timeout_ms
//             (service groups, issue #12: failover/service_group.h; the same on every node)
//   [[link]]  peer = 2, driver = "ethdev", device = "net_memif0,role=server,socket=/run/baton/1-2.sock",
//             max_frame = 9000 (optional: what the medium carries, e.g. the veth MTU),
//             shard = 1 (optional: this device serves that shard alone; default: every shard, a memif
//             or net_ring port opened with a queue pair per shard, a shm region per shard)
//             or driver = "shm", device = "/dev/shm/baton-1-2" (a region shared with the peer on this
//             machine; the lower node id is its side 0)

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "baton/engine.h"
#include "baton/result.h"
#include "common/log.h"
#include "failover/service_group.h"

namespace baton {

struct LinkSpec {
  uint16_t peer = 0;
  std::string driver;  ///< "ethdev" or "shm"
  /// ethdev: DPDK devargs or a port name; shm: the shared region's file
  /// (the lower node id is side 0 of it).
  std::string device;
  uint32_t max_frame = 0;  ///< Baton bytes per frame; 0: the driver's default
  /// The shard this device serves alone; -1: every shard (a queue pair, or
  /// for shm a region `device`.K, per shard K > 0).
  int shard = -1;
};

struct DaemonConfig {
  EngineConfig engine;
  std::string name;
  uint32_t cores = 0;
  uint64_t memory_mib = 0;
  std::vector<std::string> tags;
  bool spare = false;  ///< in the spare pool (S19)
  std::vector<failover::ServiceGroup> groups;  ///< [[group]]: the same on every node of the cluster
  std::vector<LinkSpec> links;
  std::string socket_path;
  std::optional<uid_t> allow_uid;  ///< clients must run as this user (or root), if set
  std::optional<gid_t> allow_gid;  ///< ... or be in this group, if set
  mode_t socket_mode = 0660;
  uint32_t max_clients = 256;          ///< applications connected at once
  uint32_t max_clients_per_process = 16;  ///< connections one process holds at once
  uint32_t max_clients_per_user = 64;     ///< connections one user's processes hold at once (default max_clients / 4)
  uint32_t max_segments = 64;          ///< segments one application holds at once
  uint64_t max_client_bytes = 4ull << 30;  ///< bytes of segments one application holds at once
  uint32_t max_wait_ms = 60'000;       ///< the longest wait the daemon serves
  LogLevel log_level = LogLevel::kInfo;
  bool syslog = false;
  std::vector<std::string> eal_args;
  /// Settings that are valid but likely not what was meant (a period on a
  /// stage-copy segment, more standby nodes than replicas): batond logs
  /// them at start, and `--check` prints them.
  std::vector<std::string> warnings;
};

/// Parses and validates a config. `source` names it in error messages.
/// Errors: kInvalidArgument with "source: field: reason". Thread: any.
Result<DaemonConfig> parse_daemon_config(std::string_view text, std::string_view source);

/// Reads and parses a config file. Errors: kIo (unreadable), kInvalidArgument.
Result<DaemonConfig> load_daemon_config(const std::string& path);

/// What a config asks of this machine, checked without starting anything
/// (batond --check, and batond before it starts): its topology readable,
/// the worker CPUs and NUMA node present, the client socket's directory
/// there. Errors: kInvalidArgument with "source: field: reason". Thread: any.
Result<void> check_daemon_host(const DaemonConfig& config, std::string_view source);

struct Topology;
/// batond's default shards when the config names no workers (issue #11):
/// one per NUMA node that has a link (`link_nodes`: each link's device's
/// node, -1 for none in particular), each pinned to that node's first CPU
/// on `topology`. Empty (one floating worker) unless links sit on two
/// nodes or more.
std::vector<int> default_workers(const Topology& topology, const std::vector<int>& link_nodes);

}  // namespace baton
