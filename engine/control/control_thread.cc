// The control thread: it owns the failure detector and the membership views
// (control/detector.h), placement (control/placement.h) and the asking side
// of rounds (control/rounds.h: queries, claims, tombstones, set records),
// and talks to the data path only through
// rings and what the data path publishes in atomics. It sleeps until the
// next heartbeat or round is due or the data path has news for it.
//
// Thread: control (under simulation, the one thread, via Engine::poll_control).

#include <sys/prctl.h>

#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

void Engine::Impl::wake_control() noexcept {
  if (sim != nullptr) return;
  // Pairs with the control thread's store of control_sleeping before it
  // checks its ring: one of the two sees the other (else it sleeps a tick).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!control_sleeping.load()) return;
  control_wake.fetch_add(1);
  futex_wake_all(control_wake);
}

bool Engine::Impl::control_step(uint64_t now) noexcept {
  assert_control_thread();
  control_out.clear();
  HeartbeatSeen hb;
  while (to_control.pop(hb)) {
    detector->on_heartbeat(hb, control_out);
    if (hb.link < links.size())  // links are fixed at start
      peer_tags[links[hb.link]->peer()] = PeerTags{hb.blade, hb.power_domain, hb.numa_node};
  }
  // Read polled_ns first (acquire): every heard_ns of that poll is then visible.
  const uint64_t polled = polled_ns.load(std::memory_order_acquire);
  control_obs.resize(link_states.size());
  for (size_t i = 0; i < link_states.size(); ++i)
    control_obs[i] = LinkObservation{link_states[i].heard_ns.load(std::memory_order_relaxed),
                                     link_states[i].up.load(std::memory_order_relaxed)};
  detector->step(now, polled, control_obs, control_out);
  // Placement and rounds after the detector: they go by whom it holds
  // reachable now.
  step_placement(now, control_out);
  step_rounds(now, control_out);
  bool view_changed = false;
  for (const ControlMsg& m : control_out) {
    if (m.kind == ControlMsg::Kind::kView) {
      std::lock_guard lock(view_mu);
      view = *m.view;
      view_changed = true;
    }
    // Peers, views and questions keep their order behind what is already
    // waiting; a heartbeat that does not fit is dropped (the next one is
    // due soon).
    if (m.kind != ControlMsg::Kind::kHeartbeat && !to_data_backlog.empty()) {
      to_data_backlog.push_back(m);
    } else if (!to_data.push(m)) {
      if (m.kind == ControlMsg::Kind::kHeartbeat) counters.tx_dropped.fetch_add(1, std::memory_order_relaxed);
      else to_data_backlog.push_back(m);
    }
  }
  while (!to_data_backlog.empty() && to_data.push(to_data_backlog.front())) to_data_backlog.pop_front();
  const bool sent = !control_out.empty();
  // The data path polls again within max_idle_sleep_us by itself, soon
  // enough for a heartbeat; a peer or a view change is worth waking it for.
  // (Unless it is configured to sleep long enough to delay heartbeats.)
  bool news = view_changed || (sent && uint64_t{config.max_idle_sleep_us} * 1000 > heartbeat_ns / 4);
  for (const ControlMsg& m : control_out) news |= m.kind != ControlMsg::Kind::kHeartbeat;
  if (news && sleeping.load()) {
    wake.fetch_add(1);
    if (sim == nullptr) futex_wake_all(wake);
  }
  return sent;
}

void Engine::Impl::run_control() noexcept {
  prctl(PR_SET_TIMERSLACK, 10'000UL, 0, 0, 0);
  prctl(PR_SET_NAME, "baton-control", 0, 0, 0);
  control_id.store(std::this_thread::get_id(), std::memory_order_relaxed);
  while (control_running.load()) {
    const uint64_t now = now_ns();
    control_step(now);
    // Sleep until the next heartbeat is due (failure checks ride on the
    // same tick: the timeout is many heartbeats long), or until news.
    const uint64_t due = detector->next_due_ns();
    const uint64_t after = now_ns();
    uint64_t sleep = due > after ? std::min(due - after, heartbeat_ns) : 0;
    // Rounds in flight are asked again and settle on their own clock.
    if (!queries.empty() || !claims.empty() || !tombstones.empty() || !set_records.empty())
      sleep = std::min<uint64_t>(sleep, 1'000'000);
    if (sleep == 0) continue;
    const uint32_t w = control_wake.load();
    control_sleeping.store(true);
    if (to_control.empty() && round_starts.empty() && round_answers.empty() && segment_news.empty() &&
        control_running.load())
      futex_wait(control_wake, w, sleep);
    control_sleeping.store(false);
  }
  // Views the data path never took.
  for (ControlMsg& m : to_data_backlog) delete m.view;
  to_data_backlog.clear();
}

bool Engine::poll_control() {
  if (impl_->sim == nullptr) return false;  // the control thread runs it
  return impl_->control_step(impl_->clock_ns());
}

}  // namespace baton
