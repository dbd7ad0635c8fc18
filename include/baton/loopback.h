#pragma once
// Loopback driver: two in-process Links joined by queues, with fault
// injection (drop, duplicate, reorder, corrupt, delay, partition). For tests:
// this kernel has no netem, so delay and reordering come from here. It copies
// every frame and queues it in a node of its own (its buffers are reused);
// it is a test transport, not a data path.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <utility>

#include "baton/driver_sdk.h"

namespace baton::loopback {

struct Faults {
  double drop = 0;       ///< probability a frame vanishes
  double duplicate = 0;  ///< probability a frame arrives twice
  double reorder = 0;    ///< probability a frame is held back behind later ones
  double corrupt = 0;    ///< probability one byte of a frame is flipped
  uint32_t delay_us = 0; ///< every frame arrives this much later
  uint32_t reorder_delay_us = 300;
  bool partitioned = false;  ///< nothing crosses, either way
  /// Frames for which it returns true vanish (a test losing one kind of
  /// frame); it sees the frame's head. Called under the wire's lock.
  std::function<bool(std::span<const std::byte> head)> drop_if;
};

/// The wire between two links; shared by both, changeable while they run.
class Wire {
 public:
  virtual ~Wire() = default;
  /// Thread: any.
  virtual void set_faults(const Faults& f) = 0;
  virtual void set_partitioned(bool p) = 0;
  /// While on, nothing arrives at node `to` over this wire, but nothing is
  /// lost: frames wait and arrive in order once it clears (a peer stopped
  /// with SIGSTOP, one direction at a time). Thread: any.
  virtual void set_stalled(uint16_t to, bool on) = 0;
  /// Whether both links say caps().direct_read (the two nodes share this
  /// process's memory, as they do): loads over this wire then read a
  /// replica's slot directly. Off by default. Thread: any.
  virtual void set_direct_read(bool on) = 0;
  /// A new link for the end at `node` (one of the two nodes this wire
  /// joins), for a node that restarted: frames still queued towards that
  /// end were for the old incarnation and vanish. The old link of that end
  /// must be gone. Returns nullptr if `node` is not an end of this wire.
  /// Thread: any.
  virtual std::unique_ptr<Link> reconnect(uint16_t node) = 0;
};

struct Pair {
  std::unique_ptr<Link> a;  ///< on node_a, reaches node_b
  std::unique_ptr<Link> b;  ///< on node_b, reaches node_a
  std::shared_ptr<Wire> wire;
};

/// Creates two joined links. `capacity` frames may be in flight each way
/// (a full queue pushes back like a device ring). `seed` makes faults
/// repeatable. `clock` (nanoseconds) times delays; empty: CLOCK_MONOTONIC
/// (a simulation passes its own).
Pair make_pair(uint16_t node_a, uint16_t node_b, uint32_t max_frame = 16384, uint32_t capacity = 1024,
               uint64_t seed = 1, std::function<uint64_t()> clock = {});

}  // namespace baton::loopback
