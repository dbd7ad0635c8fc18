#pragma once
// Links and peers as the data path knows them. Fields say which thread
// writes them.

#include <atomic>
#include <cstdint>
#include <vector>

#include "baton/driver_sdk.h"

namespace baton {

/// Rank of `node` as a replica of segment `seg_id` (rendezvous hashing).
uint64_t replica_rank(uint64_t seg_id, uint16_t node) noexcept;

/// The data path's side of one link: what it saw, for the failure detector
/// on the control thread (control/detector.h), which decides.
struct LinkState {
  explicit LinkState(Link* l) : link(l) {}
  Link* link = nullptr;
  /// The last valid frame from the peer, at the poll's time: written by the
  /// token holder, read by the control thread.
  std::atomic<uint64_t> heard_ns{0};
  /// The device's state at the last poll: token holder writes, control reads.
  std::atomic<bool> up{false};
  // The last heartbeat content passed to the control thread: only changes
  // are. Token holder.
  bool forwarded = false;
  uint64_t forwarded_incarnation = 0;
  uint64_t forwarded_digest = 0;
  bool restart_unreported = false;  ///< a restart seen but not yet passed on (the ring was full)
  /// A frame of another wire version came, and the log said so (once per
  /// link: a peer of another release sends nothing else). Token holder.
  bool version_warned = false;
  /// The control thread was woken for a frame from a peer it counts dead;
  /// again only once it says otherwise. Token holder.
  bool nudged = false;
};

/// One peer as the data path knows it: alive or not as the control thread
/// last said (a kPeer message), its incarnation and placement tags from its
/// heartbeats. Token holder.
struct PeerState {
  uint16_t node = 0;
  Link* link = nullptr;  ///< where frames to it go: as the control thread chose
  std::vector<LinkState*> links;
  uint64_t incarnation = 0;  ///< from its heartbeats; 0: not heard yet
  uint64_t incarnation_seen_ns = 0;  ///< when this node first heard that incarnation
  bool alive = false;
  bool ever_heard = false;
  // Its set records and tombstones, asked for the first time this node
  // hears it after its start (Engine::Impl::ask_for_records): whether the
  // last batch came, whether one found no room here (its own map full),
  // the incarnation of the peer asked, the segment id the next batch
  // starts at, and when the question last went out (0: ask now).
  bool records_done = false;
  bool records_lost = false;
  uint64_t records_incarnation = 0;
  uint64_t records_cursor = 0;
  uint64_t records_asked_ns = 0;
  // Its placement tags, from its heartbeats (passed on to the control thread).
  uint32_t blade = 0;
  uint32_t power_domain = 0;
  int32_t package = -1;
  int32_t numa_node = -1;
  /// This node has all its records: the last batch came, and each found room.
  bool records_had() const noexcept { return records_done && !records_lost; }
};

}  // namespace baton
