#pragma once
// A simulated chassis: N batond processes on this machine, one per blade,
// full-meshed by memif links (each pair shares one socket; the lower node id
// serves) or by af_packet ports on veth pairs between per-blade network
// namespaces. Everything lives in one directory: configs, sockets, pid files,
// logs and the list of namespaces; `down` removes what `up` made.

#include <sys/types.h>

#include <string>
#include <vector>

#include "baton/result.h"

namespace baton::ctl {

/// The most per-core shards `chassis up --workers` gives a blade (and the
/// shm regions per blade pair `chassis down` removes).
inline constexpr int kMaxChassisWorkers = 8;

struct ChassisConfig {
  std::string dir = "/run/baton/chassis";
  int blades = 4;
  /// "memif": shared-memory links between processes. "af_packet": each blade
  /// in its own network namespace, joined by veth pairs (real Ethernet).
  /// "shm": regions in /dev/shm (the CC-NUMA driver). "mixed": blades two
  /// by two are the NUMA nodes of one server, shm between them, memif
  /// between servers (issue #11 item 5).
  std::string transport = "memif";
  uint32_t replication_factor = 2;
  /// Older generations each replica keeps (engine retain, 0..64).
  uint32_t retain = 0;
  /// af_packet: veth pairs per blade pair, each its own link (two
  /// backplanes: a node is dead only when both are silent).
  int backplanes = 1;
  /// Per-core shards per blade (issue #11): each blade's engine runs this
  /// many workers, floating, each with a queue pair of every memif link or
  /// a shm region of its own (not af_packet, which spreads frames over its
  /// queues by flow hash).
  int workers = 1;  ///< 1..kMaxChassisWorkers
  /// Loads over shm links read a peer's lent slot directly (engine
  /// direct_reads); false: every fetch is streamed, as over a backplane.
  bool direct_reads = true;
  /// Workers spin (`idle = "spin"`), each blade's pinned to a CPU of its
  /// own: blade N's to CPU N-1 (one worker per blade). For a machine with a
  /// core per blade; the daemons' default detector is then 100 us
  /// heartbeats and a 500 us timeout.
  bool spin = false;
  /// memif links: the client end (the higher node id) in memif's zero-copy
  /// mode, its server copying straight into its mbufs (operations, "memif
  /// zero-copy"). Off by default: a restarted blade with such links once
  /// did not come back in the kill campaign (reliability, session 32).
  bool memif_zero_copy = false;
  uint32_t heartbeat_us = 0;        ///< 0: the daemons' default
  uint32_t failure_timeout_us = 0;  ///< 0: the daemons' default
  /// Where the blades' views come from: "backplane" (heartbeats) or
  /// "corosync" (a running corosync on this host; memif or shm only, since
  /// af_packet blades sit in network namespaces of their own, out of reach
  /// of corosync's sockets). The CPG group is named after the directory.
  std::string membership = "backplane";
  /// Service groups (issue #12): a file of [[group]] tables appended to
  /// every blade's config; blades in the spare pool; each blade's cores
  /// (the [node] table; empty: none declared).
  std::string groups_file;
  std::vector<int> spares;
  std::vector<uint32_t> cores;
  /// Each blade's `[engine] chunk_kib` (the unit commits copy, checksum
  /// and send): one value for every blade, or one per blade (a chassis
  /// whose blades disagree, as while a changed chunk size rolls out);
  /// empty: the daemons' default.
  std::vector<uint32_t> chunk_kib;
  std::string batond;  ///< path of the batond binary
};

struct Blade {
  int id = 0;
  pid_t pid = -1;
  bool alive = false;
  std::string socket, config, log;
};

/// Writes the configs and starts every blade; waits until all serve.
/// Errors: kInvalidArgument (blades outside 2..16), kIo (a blade failed: its log tail is in the message).
Result<std::vector<Blade>> chassis_up(const ChassisConfig& c);
/// Blades found in `dir` (pid files), alive or not.
std::vector<Blade> chassis_blades(const std::string& dir);
/// Stops every blade (SIGTERM, then SIGKILL after 3 s) and removes the files `up` made.
Result<void> chassis_down(const std::string& dir);
/// Starts blade `id` of a chassis that is up again (after it died), with the
/// config `up` wrote; returns its pid. Thread: control.
Result<pid_t> chassis_restart_blade(const ChassisConfig& c, int id);

/// `batonctl chassis restart`: starts blade `id` of the chassis in `dir`
/// again if its batond is not running (transport from what `up` left there).
/// Errors: kInvalidArgument (no such blade, or it runs), kIo.
Result<pid_t> chassis_restart(const std::string& dir, int id);

/// Drops `loss_pct` percent of the frames between blade `blade` and each
/// blade in `peers` (every other blade if empty), both ways: nftables rules
/// (`numgen random`) on the egress hook of each veth end, in the blades'
/// namespaces. 100 cuts the links: a partition. af_packet chassis only.
/// Errors: kInvalidArgument (memif chassis, bad blade or percentage), kIo.
/// `backplane` 1 or 2 fails only that backplane's veths; 0 every one.
Result<void> chassis_fault(const std::string& dir, int blade, const std::vector<int>& peers, int loss_pct,
                           int backplane = 0);
/// Removes every fault rule chassis_fault installed.
Result<void> chassis_heal(const std::string& dir);

/// The path of a program installed beside this one (batond, baton-kv).
std::string sibling(const std::string& program);

}  // namespace baton::ctl
