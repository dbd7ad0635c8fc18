// The data path's side of the failure detector (S17): what it publishes for
// the control thread (frames heard, heartbeats whose content changed), what
// it applies from it (heartbeats and rounds' questions to send, peers'
// states, views, placements, recorded sets), and what cannot wait for it:
// a restarted peer's acknowledgements stop counting the moment its first
// heartbeat is read.
// The decisions are the control thread's (control/detector.cc). Events: any
// thread.
//
// Thread: the poll-token holder (the worker, or a caller waiting on it).

#include <algorithm>

#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

void Engine::Impl::record_event(std::string text) noexcept {
  if (!event_prefix.empty()) text.insert(0, event_prefix);
  BT_INFO("event: %s", text.c_str());
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  std::lock_guard lock(events_mu);
  event_log.push_back(Event{static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000, std::move(text)});
  if (event_log.size() > 256) event_log.pop_front();
}

void Engine::Impl::heard_from(size_t i, uint64_t now) noexcept {
  LinkState& ls = link_states[i];
  ls.heard_ns.store(now, std::memory_order_relaxed);  // published by polled_ns (release)
  // A peer the control thread counts dead is back: tell it now rather than
  // at its next heartbeat tick.
  if (!ls.nudged && !peer_by_node.at(ls.link->peer())->alive) {
    ls.nudged = true;
    wake_control();
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

bool Engine::Impl::apply_control() noexcept {
  // Heartbeats going out are chatter, not work: they do not keep an
  // adaptive worker spinning (it would spin after every one, several
  // hundred times a second, on cores it shares).
  bool any = false;
  ControlMsg m;
  while (to_data.pop(m)) {
    any |= m.kind != ControlMsg::Kind::kHeartbeat;
    switch (m.kind) {
      case ControlMsg::Kind::kHeartbeat: {
        if (m.link >= links.size()) break;
        Link& link = *links[m.link];
        wire::Frame hb;
        hb.type = wire::MsgType::kHeartbeat;
        hb.src = config.node_id;
        hb.dst = link.peer();
        hb.epoch = incarnation;
        hb.generation = m.seq;
        // The sender's view, so peers can tell whether they agree, and its
        // placement tags.
        hb.seg_id = m.view_digest;
        hb.total_len = m.view_id;
        if (m.quorate) hb.flags = wire::kFlagQuorate;
        hb.chunk_index = config.blade != 0 ? config.blade : config.node_id;
        hb.chunk_count = config.power_domain;
        // NUMA node and package, each + 1 (0: unknown), in 16 bits apiece.
        hb.chunk_size = static_cast<uint32_t>(config.numa_node + 1) & 0xffff;
        hb.chunk_size |= (static_cast<uint32_t>(package + 1) & 0xffff) << 16;
        send_control(link, hb);
        break;
      }
      case ControlMsg::Kind::kPeer: {
        auto it = peer_by_node.find(m.node);
        if (it == peer_by_node.end() || m.link >= links.size()) break;
        PeerState& p = *it->second;
        const bool back = m.alive && !p.alive;
        p.alive = m.alive;
        p.ever_heard = m.ever_heard;
        p.link = links[m.link].get();
        for (LinkState* l : p.links) l->nudged = false;
        // Its acknowledgements read while it was held for gone counted for
        // nothing (update_durable): they count now. What it holds is still
        // there, or it would have come back as a new incarnation, whose
        // first heartbeat cleared it (on_heartbeat).
        if (back)
          for (auto& [id, seg] : owned)
            if (!seg->fenced.load(std::memory_order_relaxed)) update_durable(*seg);
        // A peer back from a partition may hold what a takeover here left
        // behind: an old owner's segment, which a takeover's query did not
        // reach (so no release was sent it), and which would otherwise
        // keep its last snapshot as a replica copy for good once fenced.
        // Every recorded set it is neither in nor placed in (where its
        // acknowledgements may count) releases it: a no-op where it holds
        // nothing, or something newer. (Frames keep their order: data a
        // later placement sends it comes after.) Queued, a few sent per
        // poll (send_releases_due): a burst of one per segment filled the
        // link's ring, and control frames are dropped when it is full.
        if (back)
          for (auto& [id, seg] : owned)
            if (releases(*seg, m.node)) releases_due.emplace_back(id, m.node);
        break;
      }
      case ControlMsg::Kind::kView: {
        std::unique_ptr<View> v(m.view);
        if (v) {
          data_view = std::move(*v);
          data_quorate.store(data_view.quorate, std::memory_order_release);
        }
        break;
      }
      case ControlMsg::Kind::kPlace: apply_placement(m, clock_ns()); break;
      case ControlMsg::Kind::kRecorded: apply_recorded(m); break;
      case ControlMsg::Kind::kSend: {  // a round's question (control/rounds.cc)
        const std::string_view name(m.name, std::min<size_t>(m.name_len, sizeof m.name));
        if (static_cast<wire::MsgType>(m.frame) == wire::MsgType::kSetRecord) {
          if ((m.flags & wire::kFlagDeleted) != 0) {
            send_tombstone_to(m.node, m.seg_id, name, m.epoch);
            break;
          }
          // A set record goes out only while it is still the proposal in
          // hand: not after it was withdrawn, replaced or fenced.
          auto it = owned.find(m.seg_id);
          if (it == owned.end()) break;
          Segment& seg = *it->second;
          const auto& p = seg.pending;
          if (!p.active || !p.sent || p.version != m.generation || seg.fenced.load(std::memory_order_relaxed) ||
              seg.epoch.load(std::memory_order_relaxed) != m.epoch)
            break;
          if (Link* l = link_to(m.node)) send_record(seg, *l, m.node);
          break;
        }
        Link* l = link_to(m.node);
        if (l == nullptr) break;  // asked again later
        wire::Frame q;
        q.type = static_cast<wire::MsgType>(m.frame);
        q.flags = m.flags;
        q.src = config.node_id;
        q.dst = m.node;
        q.seg_id = m.seg_id;
        q.epoch = m.epoch;
        q.name = name;
        send_control(*l, q);
        break;
      }
    }
  }
  return any;
}

void Engine::Impl::on_heartbeat(Link& link, const wire::Frame& f, uint64_t now) noexcept {
  auto it = peer_by_node.find(f.src);
  if (it == peer_by_node.end()) return;
  PeerState& p = *it->second;
  // A heartbeat names its sender's incarnation: a new one means the node
  // restarted and lost everything it held (its memory is the storage). Its
  // acknowledgements stop counting here, before any later frame of it is
  // read, not when the control thread gets round to it.
  bool restarted = false;
  if (p.incarnation != f.epoch) {
    restarted = p.incarnation != 0;
    p.incarnation = f.epoch;
    p.incarnation_seen_ns = now;
    if (restarted) on_peer_restarted(p.node, now);
  }
  p.blade = f.chunk_index;
  p.power_domain = f.chunk_count;
  p.numa_node = static_cast<int>(f.chunk_size & 0xffff) - 1;
  p.package = static_cast<int>(f.chunk_size >> 16) - 1;
  // Only news goes to the control thread: a new incarnation or view.
  for (size_t i = 0; i < link_states.size(); ++i) {
    LinkState& ls = link_states[i];
    if (ls.link != &link) continue;
    ls.restart_unreported |= restarted;
    if (ls.forwarded && !ls.restart_unreported && ls.forwarded_incarnation == f.epoch && ls.forwarded_digest == f.seg_id)
      return;
    if (!to_control.push(HeartbeatSeen{static_cast<uint16_t>(i), ls.restart_unreported, f.seg_id, p.blade,
                                       p.power_domain, p.package, p.numa_node}))
      return;  // next one
    ls.restart_unreported = false;
    ls.forwarded = true;
    ls.forwarded_incarnation = f.epoch;
    ls.forwarded_digest = f.seg_id;
    wake_control();
    return;
  }
}

void Engine::Impl::on_peer_restarted(uint16_t node, uint64_t now) noexcept {
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
    // It lost its copy of the set record too: record the set again (a new
    // version, at a quorum that counts it afresh), once a majority of the
    // set holds the latest generation; durability waits from now. A round
    // still in flight for the old version counts for nothing any more.
    if (seg.pending.active || !seg.recorded_set.empty()) propose_set(seg, record_need(seg));
    // If it refused this owner's epoch, the other owner's copy that made
    // it refuse is gone with its memory: it may hold a replica again (in a
    // cluster of three, kept out for good, it left a set of two one member
    // short and its durability waiting forever: seed 9401189, 3 nodes, RF 3).
    if (const auto r = std::find(seg.refusing.begin(), seg.refusing.end(), node); r != seg.refusing.end()) {
      seg.refusing.erase(r);
      tell_control(SegmentNews{SegmentNews::Kind::kRefusingNoMore, 0, seg.id, node});
    }
  }
}

}  // namespace baton
