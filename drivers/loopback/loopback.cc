#include "baton/loopback.h"

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "runtime/futex.h"

namespace baton::loopback {
namespace {

using Bytes = std::vector<std::byte>;

/// Frame buffers a lane keeps for reuse once the receiver released them:
/// a transfer then allocates nothing per frame after its first window.
constexpr size_t kSpareBuffers = 128;

// One direction: frames ordered by the time they become visible.
struct Lane {
  std::mutex mu;
  std::multimap<uint64_t, Bytes> queue;
  std::vector<Bytes> spare;          ///< released buffers, for the next frames sent
  std::atomic<bool> stalled{false};  ///< hold what is queued (Wire::set_stalled)
};

class WireImpl final : public Wire, public std::enable_shared_from_this<WireImpl> {
 public:
  WireImpl(uint16_t node_a, uint16_t node_b, uint32_t max_frame, uint32_t capacity, uint64_t seed,
           std::function<uint64_t()> clock)
      : nodes_{node_a, node_b}, max_frame_(max_frame), clock_(std::move(clock)), capacity_(capacity), rng_(seed) {
    for (Lane& l : lanes_) l.spare.reserve(kSpareBuffers);  // recycle() never allocates
  }

  std::unique_ptr<Link> reconnect(uint16_t node) override;

  void set_faults(const Faults& f) override {
    std::lock_guard lock(mu_);
    faults_ = f;
  }
  void set_partitioned(bool p) override {
    std::lock_guard lock(mu_);
    faults_.partitioned = p;
  }
  void set_stalled(uint16_t to, bool on) override {
    // Lane 0 carries nodes_[0] -> nodes_[1].
    if (to == nodes_[1]) lanes_[0].stalled.store(on, std::memory_order_relaxed);
    if (to == nodes_[0]) lanes_[1].stalled.store(on, std::memory_order_relaxed);
  }
  void set_direct_read(bool on) override { direct_read_.store(on, std::memory_order_relaxed); }
  bool direct_read() const noexcept { return direct_read_.load(std::memory_order_relaxed); }

  // Returns how many of `n` frames the lane took (full lane: fewer).
  uint16_t send(int lane, const TxFrame* frames, uint16_t n) {
    Lane& l = lanes_[lane];
    std::scoped_lock lock(mu_, l.mu);
    const uint64_t now = clock_ ? clock_() : now_ns();
    uint16_t taken = 0;
    for (; taken < n; ++taken) {
      if (l.queue.size() >= capacity_) break;
      const TxFrame& f = frames[taken];
      if (faults_.partitioned || chance(faults_.drop) || (faults_.drop_if && faults_.drop_if(f.head))) continue;
      Bytes b;
      if (!l.spare.empty()) {
        b = std::move(l.spare.back());
        l.spare.pop_back();
      }
      b.resize(f.head.size() + f.payload.size());
      std::memcpy(b.data(), f.head.data(), f.head.size());
      if (!f.payload.empty()) std::memcpy(b.data() + f.head.size(), f.payload.data(), f.payload.size());
      if (chance(faults_.corrupt)) b[rng_() % b.size()] ^= std::byte{static_cast<unsigned char>(1 + rng_() % 255)};
      uint64_t due = now + uint64_t{faults_.delay_us} * 1000;
      if (chance(faults_.reorder)) due += uint64_t{faults_.reorder_delay_us} * 1000;
      if (chance(faults_.duplicate)) l.queue.emplace(due + 1, b);
      l.queue.emplace(due, std::move(b));
    }
    return taken;
  }

  uint16_t receive(int lane, std::vector<Bytes>& held, RxFrame* out, uint16_t n) {
    Lane& l = lanes_[lane];
    std::lock_guard lock(l.mu);
    const uint64_t now = clock_ ? clock_() : now_ns();
    uint16_t k = 0;
    while (k < n && !l.stalled.load(std::memory_order_relaxed) && !l.queue.empty() && l.queue.begin()->first <= now) {
      held.push_back(std::move(l.queue.begin()->second));
      l.queue.erase(l.queue.begin());
      ++k;
    }
    // Pointers are taken after the pushes: the vector may have moved.
    for (uint16_t i = 0; i < k; ++i) {
      Bytes& b = held[held.size() - k + i];
      out[i] = RxFrame{{b.data(), b.size()}, nullptr};
    }
    return k;
  }

  /// The receiver of `lane` is done with `held`: its buffers serve later
  /// frames of the lane (up to kSpareBuffers). Empties `held`.
  void recycle(int lane, std::vector<Bytes>& held) {
    Lane& l = lanes_[lane];
    std::lock_guard lock(l.mu);
    for (Bytes& b : held)
      if (l.spare.size() < kSpareBuffers) l.spare.push_back(std::move(b));
    held.clear();
  }

 private:
  bool chance(double p) { return p > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  std::mutex mu_;  // faults and rng
  uint16_t nodes_[2];  // lane 0 carries nodes_[0] -> nodes_[1]
  uint32_t max_frame_;
  std::function<uint64_t()> clock_;
  Faults faults_;
  uint32_t capacity_;
  std::mt19937_64 rng_;
  Lane lanes_[2];
  std::atomic<bool> direct_read_{false};
};

class LoopbackLink final : public Link {
 public:
  LoopbackLink(std::shared_ptr<WireImpl> wire, int tx_lane, uint16_t peer, uint32_t max_frame)
      : wire_(std::move(wire)), tx_lane_(tx_lane), peer_(peer), max_frame_(max_frame),
        name_("loopback -> node " + std::to_string(peer)) {}

  const std::string& name() const noexcept override { return name_; }
  uint16_t peer() const noexcept override { return peer_; }
  LinkCaps caps() const noexcept override { return {max_frame_, false, -1, wire_->direct_read()}; }
  bool up() noexcept override { return true; }

  uint16_t rx_burst(RxFrame* out, uint16_t n) noexcept override {
    uint16_t k = wire_->receive(1 - tx_lane_, held_, out, n);
    counters_.rx_frames += k;
    return k;
  }
  void release_rx(RxFrame*, uint16_t) noexcept override { wire_->recycle(1 - tx_lane_, held_); }
  uint16_t tx_burst(const TxFrame* frames, uint16_t n) noexcept override {
    for (uint16_t i = 0; i < n; ++i)
      if (frames[i].head.size() + frames[i].payload.size() > max_frame_) return i;  // oversize: refuse
    uint16_t k = wire_->send(tx_lane_, frames, n);
    counters_.tx_frames += k;
    return k;
  }
  LinkCounters counters() const noexcept override { return counters_; }

 private:
  std::shared_ptr<WireImpl> wire_;
  int tx_lane_;
  uint16_t peer_;
  uint32_t max_frame_;
  std::string name_;
  std::vector<Bytes> held_;
  LinkCounters counters_;
};

}  // namespace

std::unique_ptr<Link> WireImpl::reconnect(uint16_t node) {
  if (node != nodes_[0] && node != nodes_[1]) return nullptr;
  const int tx_lane = node == nodes_[0] ? 0 : 1;
  {
    Lane& in = lanes_[1 - tx_lane];
    std::lock_guard lock(in.mu);
    in.queue.clear();
  }
  return std::make_unique<LoopbackLink>(shared_from_this(), tx_lane, nodes_[1 - tx_lane], max_frame_);
}

Pair make_pair(uint16_t node_a, uint16_t node_b, uint32_t max_frame, uint32_t capacity, uint64_t seed,
               std::function<uint64_t()> clock) {
  auto wire = std::make_shared<WireImpl>(node_a, node_b, max_frame, capacity, seed, std::move(clock));
  Pair p;
  p.a = std::make_unique<LoopbackLink>(wire, 0, node_b, max_frame);
  p.b = std::make_unique<LoopbackLink>(wire, 1, node_a, max_frame);
  p.wire = wire;
  return p;
}

}  // namespace baton::loopback
