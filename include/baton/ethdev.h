#pragma once
// ethdev driver: Baton frames as raw Ethernet frames (EtherType 0x88B5) on any
// DPDK port: memif, af_packet on a veth, net_ring, or a real NIC.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "baton/driver_sdk.h"
#include "baton/result.h"

namespace baton::ethdev {

inline constexpr uint16_t kEtherType = 0x88B5;  // IEEE 802 local experimental
inline constexpr uint32_t kDefaultMaxFrame = 16384 + 256;

/// Starts DPDK's EAL once per process: --no-pci, --in-memory, huge pages when
/// the kernel has free ones (else --no-huge), the process's allowed CPUs as
/// one floating lcore. `extra` is appended (e.g. "--log-level=8").
/// `telemetry_prefix`: serve DPDK telemetry under this file prefix
/// (/var/run/dpdk/PREFIX/dpdk_telemetry.v2, `dpdk-telemetry.py -f PREFIX`);
/// empty: no telemetry. Later calls return the first call's result.
/// Thread: control.
Result<void> init_eal(const std::vector<std::string>& extra = {}, const std::string& telemetry_prefix = {});

/// Whether DPDK's EAL starts with `extra` after Baton's own arguments (as
/// init_eal() would pass them), tried in a child process; the error names
/// the EAL's complaint. For `batond --check`. Thread: any, in a process
/// that has not started the EAL.
Result<void> check_eal_args(const std::vector<std::string>& extra);

/// Whether init_eal() chose huge pages.
bool eal_uses_huge_pages() noexcept;

struct PortConfig {
  /// A vdev to probe ("net_memif0,role=server,socket=/run/baton/a.sock") or
  /// the name of a port that already exists (a real NIC, a net_ring port).
  std::string device;
  uint16_t peer = 0;                       ///< node id at the other end
  uint32_t max_frame = kDefaultMaxFrame;   ///< Baton bytes per frame (without the Ethernet header)
  uint16_t descriptors = 1024;             ///< per rx/tx queue
  /// mbufs per queue pair in the pool that ports of this frame size share
  /// (sized when the first of them creates it). 0: as the PMD needs
  /// (memif and af_packet copy frames and hold none: 2047 for all such
  /// ports; another PMD: 4095 per queue pair).
  uint32_t mbufs = 0;
  /// Queue pairs: one link each, for one shard each (EngineConfig::workers).
  /// memif and net_ring pair queue q with the peer's queue q (both ends
  /// must ask for the same number); af_packet, which spreads frames over
  /// its queues by flow hash, takes one (give each shard a device).
  uint16_t queues = 1;
};

/// The most queue pairs open_port_queues opens on one port.
inline constexpr uint16_t kMaxQueues = 64;

/// Opens (probing if needed), configures and starts a port, one rx and one tx
/// queue on the port's NUMA socket. For memif, `bsize` is set to hold a whole
/// frame unless the devargs set it. Errors: kInvalidArgument, kIo. Thread: control.
Result<std::unique_ptr<Link>> open_port(const PortConfig& config);
/// The NUMA node of `device`'s port (DPDK devargs or a port name), before
/// it is configured: -1 for a virtual device (memif, af_packet, net_ring:
/// no node in particular) or a port whose node is unknown. Errors: kIo
/// (the EAL), kInvalidArgument (no such port).
Result<int> device_numa_node(const std::string& device);

/// open_port with config.queues queue pairs: one link per queue, in queue
/// order, each for one shard's worker. The port stops and closes with the
/// last of them. Errors: as open_port; kInvalidArgument for more queues
/// than the device has, or several on af_packet.
Result<std::vector<std::unique_ptr<Link>>> open_port_queues(const PortConfig& config);

/// Two net_ring ports joined back to back inside this process (tests, demo):
/// first is on node_a and reaches node_b. Thread: control.
Result<std::pair<std::unique_ptr<Link>, std::unique_ptr<Link>>> ring_pair(uint16_t node_a, uint16_t node_b,
                                                                          uint32_t max_frame = kDefaultMaxFrame);
/// ring_pair with `queues` queue pairs: first[q] on node_a reaches second[q]
/// on node_b.
Result<std::pair<std::vector<std::unique_ptr<Link>>, std::vector<std::unique_ptr<Link>>>> ring_pair_queues(
    uint16_t node_a, uint16_t node_b, uint16_t queues, uint32_t max_frame = kDefaultMaxFrame);

}  // namespace baton::ethdev
