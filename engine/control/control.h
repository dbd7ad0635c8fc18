#pragma once
// The control plane as a component of its own (S17, issue #8): the failure
// detector and the views (Detector), placement (Placer) and the asking side
// of rounds (Rounds), on the engine's control thread. It talks to the data
// path only through the engine's rings (Engine::Impl: to_control, to_data,
// round_starts, round_answers, segment_news) and what the data path
// publishes in atomics (per link: heard_ns, up; polled_ns), and decides
// from those and the time it is given: the simulation steps it as a
// component apart from the data path, in an order of its choosing.
//
// Thread: control (under simulation, the one thread, via
// Engine::poll_control), but for start(), stop(), wake() and abort().

#include <atomic>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "baton/engine.h"
#include "control/detector.h"
#include "control/placement.h"
#include "control/rounds.h"

namespace baton {

class Control {
 public:
  Control(Engine::Impl& engine, std::unique_ptr<Detector> detector);
  ~Control();
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  /// Starts the thread (not under simulation). Thread: Engine::start.
  void start();
  /// Stops the thread and waits for it. Thread: the engine's destructor.
  void stop() noexcept;
  /// Wakes the thread if it sleeps. Thread: any.
  void wake() noexcept;
  /// One pass: takes the data path's reports, steps the detector,
  /// placement and the rounds in flight, sends what they decided. Returns
  /// whether anything was sent.
  bool step(uint64_t now) noexcept;
  /// Finishes every round (the engine stops). Once both threads are gone.
  void abort() noexcept { rounds_.abort(); }
  /// The view as the detector has it. Before start(), or the control thread.
  const View& view() const noexcept { return detector_->view(); }

 private:
  void run() noexcept;
  /// Aborts unless called on the control thread (or under simulation). Not
  /// compiled with NDEBUG.
  void assert_thread() const noexcept;

  Engine::Impl& e_;
  std::unique_ptr<Detector> detector_;
  Rounds rounds_;
  Placer placer_;
  /// Messages for the data path that did not fit in its ring (a stalled
  /// data path): sent first next time; never dropped (heartbeats are).
  std::deque<ControlMsg> backlog_;
  std::vector<ControlMsg> out_;          ///< scratch
  std::vector<LinkObservation> obs_;     ///< scratch
  std::atomic<uint32_t> wake_word_{0};   ///< futex word the thread sleeps on
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> running_{true};
  std::thread thread_;
  std::atomic<std::thread::id> id_{};
};

}  // namespace baton
