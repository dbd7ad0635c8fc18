// libFuzzer target: the frame handlers behind the decoder. Two real engines
// on a simulated clock, joined by a loopback wire; node 1 owns a segment
// replicated to node 2 and commits it every run. The fuzz input is a burst
// of frames that arrive at node 1 as if node 2 had sent them, mended
// to pass the framing checks (fuzz_frames.h) so that the handlers see
// them: data for new and known segments, acks, claims, set records, fetches,
// heartbeats. The engine must neither crash nor grow without bound.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "baton/driver_sdk.h"
#include "baton/engine.h"
#include "baton/loopback.h"
#include "fuzz_frames.h"

namespace {

/// Node 1's link to node 2: what the real node 2 sends, plus whatever the
/// fuzzer queues, as if node 2 had sent it too.
class TapLink final : public baton::Link {
 public:
  explicit TapLink(std::unique_ptr<baton::Link> inner) : inner_(std::move(inner)) {}
  const std::string& name() const noexcept override { return inner_->name(); }
  uint16_t peer() const noexcept override { return inner_->peer(); }
  baton::LinkCaps caps() const noexcept override { return inner_->caps(); }
  bool up() noexcept override { return inner_->up(); }
  uint16_t rx_burst(baton::RxFrame* out, uint16_t n) noexcept override {
    uint16_t k = 0;
    while (k < n && !queue.empty()) {
      held_.push_back(std::move(queue.front()));
      queue.pop_front();
      out[k++] = baton::RxFrame{held_.back(), &held_};
    }
    return k + inner_->rx_burst(out + k, static_cast<uint16_t>(n - k));
  }
  void release_rx(baton::RxFrame* frames, uint16_t n) noexcept override {
    for (uint16_t i = 0; i < n; ++i) {
      if (frames[i].token == &held_) {
        if (!held_.empty()) held_.pop_front();
      } else {
        inner_->release_rx(&frames[i], 1);
      }
    }
  }
  uint16_t tx_burst(const baton::TxFrame* frames, uint16_t n) noexcept override { return inner_->tx_burst(frames, n); }
  bool service(uint64_t now_ns) noexcept override { return inner_->service(now_ns); }
  baton::LinkCounters counters() const noexcept override { return inner_->counters(); }

  std::deque<std::vector<std::byte>> queue;

 private:
  std::unique_ptr<baton::Link> inner_;
  std::deque<std::vector<std::byte>> held_;
};

struct Harness {
  uint64_t now = 1'000'000'000;
  std::unique_ptr<baton::Engine> node1, node2;
  TapLink* tap = nullptr;
  baton::Segment* owned = nullptr;

  void step() {
    now += 50'000;
    node1->poll();
    node1->poll_control();
    node2->poll();
    node2->poll_control();
  }

  Harness() {
    auto hooks = std::make_shared<baton::SimulationHooks>();
    hooks->now = [this] { return now; };
    hooks->step = [this] { step(); };
    auto config = [&](uint16_t id) {
      baton::EngineConfig c;
      c.node_id = id;
      c.replication_factor = 1;
      c.max_segment_size = 1 << 20;
      c.heartbeat_interval_us = 1000;
      c.failure_timeout_us = 10'000;
      c.simulation = hooks;
      return c;
    };
    auto pair = baton::loopback::make_pair(1, 2, 16384, 1024, 1, hooks->now);
    pair.wire->set_direct_read(true);  // requests for lent slots are served too
    auto t = std::make_unique<TapLink>(std::move(pair.a));
    tap = t.get();
    std::vector<std::unique_ptr<baton::Link>> l1, l2;
    l1.push_back(std::move(t));
    l2.push_back(std::move(pair.b));
    node1 = start(config(1), std::move(l1));
    node2 = start(config(2), std::move(l2));
    for (int i = 0; i < 200; ++i) step();  // until the two agree on a view
    auto s = node1->create("s0", 8192);
    if (!s) {
      std::fprintf(stderr, "fuzz_engine_frames: %s\n", s.error().to_string().c_str());
      std::abort();
    }
    owned = *s;
  }

  static std::unique_ptr<baton::Engine> start(const baton::EngineConfig& c,
                                              std::vector<std::unique_ptr<baton::Link>> links) {
    auto e = baton::Engine::start(c, std::move(links));
    if (!e) {
      std::fprintf(stderr, "fuzz_engine_frames: %s\n", e.error().to_string().c_str());
      std::abort();
    }
    return std::move(*e);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Harness h;
  for (auto& f : baton::fuzz::split_frames(data, size)) {
    // A few names only: every new name is a replica store, and a long run
    // must not be an out-of-memory test.
    if (f.size() > 77 && static_cast<uint8_t>(f[76]) != 0) {
      f.resize(std::max<size_t>(f.size(), baton::wire::kHeaderSize + 2));
      f[76] = std::byte{2};
      f[baton::wire::kHeaderSize] = std::byte{'s'};
      f[baton::wire::kHeaderSize + 1] = std::byte{static_cast<uint8_t>('0' + static_cast<uint8_t>(f[77]) % 4)};
    }
    baton::fuzz::mend_frame(f, false);
    h.tap->queue.push_back(std::move(f));
  }
  for (int k = 0; k < 8; ++k) h.step();
  if (h.node1->status(h.owned)) (void)h.node1->commit(h.owned);
  return 0;
}
