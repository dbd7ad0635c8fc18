#pragma once
// Driver SDK: what a transport implements. Drivers move frames; generations,
// acks, retransmission and fencing live in the engine.
//
// A Link joins this node to one peer. It is created on the control thread and
// then used only by the worker that owns it: every burst call is made from that
// one thread, so a driver needs no locking on its data path. The fast path is
// one virtual call per burst, never per frame.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace baton {

struct LinkCaps {
  uint32_t max_frame = 0;     ///< largest frame (Baton header + name + payload) the link carries
  /// The driver hands the payload to its device without copying it (the
  /// ethdev driver attaches it to an mbuf as an external buffer, and memif
  /// and af_packet copy it into their rings inside tx_burst). Informational:
  /// like every driver's, such a device is done with the bytes when
  /// tx_burst() returns, since the engine writes its buffers again then.
  bool zero_copy_tx = false;
  /// The NUMA node the device and its buffers sit on; -1: none in
  /// particular (a virtual device, a shared-memory ring).
  int numa_node = -1;
  /// The peer runs on this host's memory (a CC-NUMA shared region): it may
  /// lend a published replica slot by its file descriptor, which a loader
  /// here maps and reads directly instead of having it streamed as frames
  /// (protocol, "Direct reads"). Backplane links (memif, af_packet) stand
  /// for blades that share no memory and say false.
  bool direct_read = false;
};

/// A frame to send: a small header and an optional payload the driver joins.
/// Both stay valid only for the duration of tx_burst(): the driver is done
/// with them when it returns, zero_copy_tx or not.
struct TxFrame {
  std::span<const std::byte> head;
  std::span<const std::byte> payload;
};

/// A received frame: contiguous bytes, valid until release_rx().
struct RxFrame {
  std::span<const std::byte> bytes;
  void* token = nullptr;  ///< driver's own (an mbuf, a buffer index)
};

struct LinkCounters {
  uint64_t rx_frames = 0, tx_frames = 0, rx_bytes = 0, tx_bytes = 0;
  uint64_t rx_dropped = 0;  ///< frames the driver refused (foreign EtherType, chained, oversize)
  uint64_t tx_dropped = 0;
  uint64_t reconnects = 0;
};

class Link {
 public:
  virtual ~Link() = default;

  /// Human-readable ("memif0 -> node 2"). Thread: any.
  virtual const std::string& name() const noexcept = 0;
  /// Node id of the peer this link reaches. Thread: any.
  virtual uint16_t peer() const noexcept = 0;
  virtual LinkCaps caps() const noexcept = 0;

  /// Whether the device says the link is up. A link that is "up" may still
  /// reach a dead peer (af_packet on veth): heartbeats decide liveness. Thread: worker.
  virtual bool up() noexcept = 0;

  /// Receives up to `n` frames into `out`. Thread: worker.
  virtual uint16_t rx_burst(RxFrame* out, uint16_t n) noexcept = 0;
  /// Returns frames from rx_burst() to the driver. Thread: worker.
  virtual void release_rx(RxFrame* frames, uint16_t n) noexcept = 0;
  /// Sends up to `n` frames; returns how many were taken, in order. The rest
  /// were not sent and may be offered again. Thread: worker.
  virtual uint16_t tx_burst(const TxFrame* frames, uint16_t n) noexcept = 0;

  /// The NUMA node the engine (this link's shard) keeps its memory on, told
  /// once at start before any burst: a driver may bind its own buffers
  /// there. Thread: control (Engine::start).
  virtual void place(int numa_node) noexcept { (void)numa_node; }

  /// Upkeep between bursts: reconnects, deferred device events. `now_ns` is
  /// the poll's CLOCK_MONOTONIC time. Returns true if it did work. Thread: worker.
  virtual bool service(uint64_t now_ns) noexcept { return false; }

  virtual LinkCounters counters() const noexcept = 0;
};

}  // namespace baton
