// The failure detector (S17): heartbeats on every link, a peer dead only
// when every link to it is silent, incarnations (a restarted peer lost what
// it held), and the membership views fed from it; events.
//
// Thread: the poll-token holder (the worker, or a caller waiting on it).

#include <algorithm>

#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

void Engine::Impl::record_event(std::string text) noexcept {
  BT_INFO("event: %s", text.c_str());
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  std::lock_guard lock(events_mu);
  event_log.push_back(Event{static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000, std::move(text)});
  if (event_log.size() > 256) event_log.pop_front();
}

void Engine::Impl::heard_from(size_t i, uint64_t now) noexcept {
  LinkState& ls = link_states[i];
  ls.last_heard_ns = now;
  PeerState& p = *peer_by_node.at(ls.link->peer());
  p.last_heard_ns = now;
  if (!ls.alive) {
    ls.alive = true;
    if (p.alive) record_event("link " + ls.link->name() + " up");
  }
  if (!p.alive) {
    p.alive = true;
    p.ever_heard = true;
    membership_dirty = true;
    record_event("node " + std::to_string(p.node) + " up");
  }
}

bool Engine::Impl::unreachable(uint16_t peer) const noexcept {
  auto it = peer_by_node.find(peer);
  if (it == peer_by_node.end()) return true;
  const PeerState& p = *it->second;
  if (p.alive) return false;
  if (p.ever_heard) return true;
  // Never heard yet: gone only if no link to it is even up.
  return std::none_of(p.links.begin(), p.links.end(), [](const LinkState* l) { return l->link->up(); });
}

void Engine::Impl::step_liveness(uint64_t now) noexcept {
  const View& v = membership->view();
  for (auto& ls : link_states) {
    if (now - std::min(now, ls.last_sent_ns) >= heartbeat_ns) {
      wire::Frame hb;
      hb.type = wire::MsgType::kHeartbeat;
      hb.src = config.node_id;
      hb.dst = ls.link->peer();
      hb.epoch = incarnation;
      hb.generation = ++ls.heartbeat_seq;
      // This node's view, so peers can tell whether they agree, and its
      // placement tags.
      hb.seg_id = v.digest();
      hb.total_len = v.id;
      if (v.quorate) hb.flags = wire::kFlagQuorate;
      hb.chunk_index = config.blade != 0 ? config.blade : config.node_id;
      hb.chunk_count = config.power_domain;
      hb.chunk_size = static_cast<uint32_t>(config.numa_node + 1);
      send_control(*ls.link, hb);
      ls.last_sent_ns = now;
    }
    if (ls.alive && (now - std::min(now, ls.last_heard_ns) >= failure_ns || !ls.link->up())) {
      ls.alive = false;
      const PeerState& p = *peer_by_node.at(ls.link->peer());
      const bool others = std::any_of(p.links.begin(), p.links.end(), [](const LinkState* l) { return l->alive; });
      // A link failure is not a node failure while another link still hears it.
      if (others)
        record_event("link " + ls.link->name() + " down (" + (ls.link->up() ? "silent" : "device down") + "); node " +
                     std::to_string(p.node) + " still reachable over another link");
    }
  }
  for (auto& p : peer_states) {
    const LinkState* live = nullptr;
    for (const LinkState* l : p.links)
      if (l->alive && live == nullptr) live = l;
    if (live != nullptr) {
      // Frames go over a link that works (this runs every poll, after rx).
      for (const LinkState* l : p.links)
        if (l->link == p.link && !l->alive) p.link = live->link;
      continue;
    }
    if (!p.alive) continue;
    // Dead: every link to it is silent or down.
    p.alive = false;
    membership_dirty = true;
    const bool any_up = std::any_of(p.links.begin(), p.links.end(), [](const LinkState* l) { return l->link->up(); });
    record_event("node " + std::to_string(p.node) + " down (" +
                 (any_up ? "silent for " + std::to_string((now - std::min(now, p.last_heard_ns)) / 1'000'000) + " ms"
                         : std::string(p.links.size() > 1 ? "every link down" : "link down")) +
                 ")");
  }
  if (membership_dirty) step_membership();
}

void Engine::Impl::step_membership() noexcept {
  membership_dirty = false;
  uint16_t alive[256];
  size_t n = 0;
  for (const auto& p : peer_states)
    if (p.alive && n < std::size(alive)) alive[n++] = p.node;
  if (!membership->update({alive, n})) return;
  const View& v = membership->view();
  {
    std::lock_guard lock(view_mu);
    view = v;
  }
  record_event(v.to_string());
}

void Engine::Impl::on_heartbeat(const wire::Frame& f, uint64_t now) noexcept {
  if (auto it = peer_by_node.find(f.src); it != peer_by_node.end()) {
    PeerState& p = *it->second;
    // A heartbeat names its sender's incarnation: a new one means the node
    // restarted and lost everything it held (its memory is the storage).
    if (p.incarnation != f.epoch) {
      const bool restarted = p.incarnation != 0;
      p.incarnation = f.epoch;
      if (restarted) on_peer_restarted(p.node, now);
    }
    p.blade = f.chunk_index;
    p.power_domain = f.chunk_count;
    p.numa_node = static_cast<int>(f.chunk_size) - 1;
  }
  // A report about a view this node does not share yet is news only once
  // the failure detector catches up; agreement is rechecked then.
  if (!membership->reported(f.src, f.seg_id)) return;
  const View& v = membership->view();
  {
    std::lock_guard lock(view_mu);
    view = v;
  }
  if (v.agreed && v.members.size() > 1) record_event("view " + std::to_string(v.id) + " agreed by every member");
}

void Engine::Impl::on_peer_restarted(uint16_t node, uint64_t now) noexcept {
  record_event("node " + std::to_string(node) + " restarted: a new incarnation, holding nothing it held before");
  for (auto& [id, segp] : owned) {
    Segment& seg = *segp;
    if (seg.fenced.load(std::memory_order_relaxed)) continue;
    const Stage* stage = seg.current_stage >= 0 ? &seg.stages[seg.current_stage] : nullptr;
    // Its acknowledgements were of memory that is gone: they count no more,
    // and it gets the latest generation again from the first chunk.
    for (auto& r : seg.replicas) {
      if (r->node.load(std::memory_order_relaxed) != node) continue;
      r->sender.stop();
      r->held.store(0, std::memory_order_release);
      if (stage != nullptr)
        r->sender.start(stage_source(seg, *stage), tuning(), now);
    }
    // It lost its copy of the set record too: record the set again (at a
    // quorum that counts it afresh), once a majority of the set holds the
    // latest generation; durability waits meanwhile.
    auto& p = seg.pending;
    if (p.active) {
      std::erase(p.acked, node);
      std::erase(p.refused, node);
    } else if (!seg.recorded_set.empty()) {
      propose_set(seg, stage != nullptr ? stage->generation : 0);
    }
  }
}

}  // namespace baton
