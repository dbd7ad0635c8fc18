// The control thread (control/control.h): it steps the failure detector
// and the membership views (control/detector.h), placement
// (control/placement.h) and the asking side of rounds (control/rounds.h),
// passes what they decide to the data path, and sleeps until the next
// heartbeat or round is due or the data path has news for it.
//
// Thread: control (under simulation, the one thread, via
// Engine::poll_control), but for start, stop and wake.

#include <sys/prctl.h>
#include <unistd.h>

#include "common/log.h"
#include "control/control.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

Control::Control(Engine::Impl& engine, std::unique_ptr<Detector> detector)
    : e_(engine), detector_(std::move(detector)), rounds_(engine, *detector_), placer_(engine, *detector_) {}

Control::~Control() {
  stop();
  for (ControlMsg& m : backlog_) delete m.view;  // views the data path never took
}

void Control::start() {
  thread_ = std::thread([this] { run(); });
}

void Control::stop() noexcept {
  running_.store(false);
  wake_word_.fetch_add(1);
  futex_wake_all(wake_word_);
  if (thread_.joinable()) thread_.join();
}

void Control::wake() noexcept {
  if (e_.sim != nullptr) return;
  // Pairs with the thread's store of sleeping_ before it checks its rings:
  // one of the two sees the other (else it sleeps a tick).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!sleeping_.load()) return;
  wake_word_.fetch_add(1);
  futex_wake_all(wake_word_);
}

void Control::assert_thread() const noexcept {
#ifndef NDEBUG
  if (e_.sim == nullptr && id_.load(std::memory_order_relaxed) != std::this_thread::get_id()) {
    BT_ERROR("control-thread state touched by another thread");
    std::abort();
  }
#endif
}

bool Control::step(uint64_t now) noexcept {
  assert_thread();
  out_.clear();
  HeartbeatSeen hb;
  while (e_.to_control.pop(hb)) {
    detector_->on_heartbeat(hb, out_);
    if (hb.link < e_.links.size())  // links are fixed at start
      placer_.on_tags(e_.links[hb.link]->peer(), PeerTags{hb.blade, hb.power_domain, hb.package, hb.numa_node});
  }
  // Read polled_ns first (acquire): every heard_ns of that poll is then visible.
  const uint64_t polled = e_.polled_ns.load(std::memory_order_acquire);
  obs_.resize(e_.link_states.size());
  for (size_t i = 0; i < e_.link_states.size(); ++i)
    obs_[i] = LinkObservation{e_.link_states[i].heard_ns.load(std::memory_order_relaxed),
                              e_.link_states[i].up.load(std::memory_order_relaxed)};
  if (e_.sim == nullptr) detector_->poll_membership(now, out_);
  detector_->step(now, polled, obs_, out_);
  // Placement and rounds after the detector: they go by whom it holds
  // reachable now.
  placer_.step(now, rounds_, out_);
  rounds_.step(now, out_);
  bool view_changed = false;
  for (const ControlMsg& m : out_) {
    if (m.kind == ControlMsg::Kind::kView) {
      std::lock_guard lock(e_.view_mu);
      e_.view = *m.view;
      view_changed = true;
    }
    // Everything keeps its order behind what is already waiting; a
    // heartbeat that does not fit is dropped (the next one is due soon).
    if (m.kind != ControlMsg::Kind::kHeartbeat && !backlog_.empty()) {
      backlog_.push_back(m);
    } else if (!e_.to_data.push(m)) {
      if (m.kind == ControlMsg::Kind::kHeartbeat) e_.counters.tx_dropped.fetch_add(1, std::memory_order_relaxed);
      else backlog_.push_back(m);
    }
  }
  while (!backlog_.empty() && e_.to_data.push(backlog_.front())) backlog_.pop_front();
  const bool sent = !out_.empty();
  // The data path polls again within max_idle_sleep_us by itself, soon
  // enough for a heartbeat; anything else is worth waking it for. (Unless
  // it is configured to sleep long enough to delay heartbeats.)
  bool news = view_changed || (sent && uint64_t{e_.config.max_idle_sleep_us} * 1000 > e_.heartbeat_ns / 4);
  // A daemon's failover thread decides on views: it wakes now, not at its
  // next tick.
  if (view_changed && e_.notes_event >= 0) {
    const uint64_t one = 1;
    (void)!write(e_.notes_event, &one, sizeof one);
  }
  for (const ControlMsg& m : out_) news |= m.kind != ControlMsg::Kind::kHeartbeat;
  if (news && e_.sleeping.load()) {
    e_.wake.fetch_add(1);
    if (e_.sim == nullptr) futex_wake_all(e_.wake);
  }
  // A parked worker naps longer while a caller polls (park_worker): it
  // looks at once, in case that caller has let go since.
  if (news && e_.parked.load() && e_.sim == nullptr) futex_wake_all(e_.token.wanting());
  return sent;
}

void Control::run() noexcept {
  prctl(PR_SET_TIMERSLACK, 10'000UL, 0, 0, 0);
  prctl(PR_SET_NAME, "baton-control", 0, 0, 0);
  id_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  while (running_.load()) {
    const uint64_t now = now_ns();
    step(now);
    // Sleep until the next heartbeat is due (failure checks and placement
    // ride on the same tick: the timeout is many heartbeats long), or until
    // news.
    const uint64_t due = detector_->next_due_ns();
    const uint64_t after = now_ns();
    uint64_t sleep = due > after ? std::min(due - after, e_.heartbeat_ns) : 0;
    // Rounds in flight are asked again and settle on their own clock.
    if (rounds_.busy()) sleep = std::min<uint64_t>(sleep, 1'000'000);
    if (sleep == 0) continue;
    const uint32_t w = wake_word_.load();
    sleeping_.store(true);
    if (e_.to_control.empty() && e_.round_starts.empty() && e_.round_answers.empty() && e_.segment_news.empty() &&
        running_.load())
      futex_wait(wake_word_, w, sleep);
    sleeping_.store(false);
  }
}

void Engine::Impl::wake_control() noexcept { control->wake(); }

bool Engine::poll_control() {
  if (impl_->sim == nullptr) return false;  // the control threads run it
  bool any = false;
  for (auto& shard : shards_) any |= shard->control->step(shard->clock_ns());
  return any;
}

}  // namespace baton
