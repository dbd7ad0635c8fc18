// Placement and re-replication (S4, S12; control/placement.h): which peers
// hold a segment's replicas, replacing lost ones, and spreading them over
// failure domains. The control thread decides (Placer); the data path
// applies a decision if it still fits and reports the slots
// (apply_placement, tell_control).
//
// Thread: control (Placer), but for replica_set, tell_control,
// flush_segment_news and apply_placement (the poll-token holder).

#include <algorithm>

#include "common/log.h"
#include "control/rounds.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

namespace {

bool contains(const wire::ReplicaSet& nodes, uint16_t n) {
  return n != 0 && std::find(nodes.begin(), nodes.end(), n) != nodes.end();
}

// A segment whose set is recorded and whose latest generation is complete
// and durable: a replica may move without leaving anything under-held.
bool settled(const Segment& seg) {
  if (seg.pending.active || seg.recorded_set.empty() || seg.current_stage < 0) return false;
  const Stage& stage = seg.stages[seg.current_stage];
  return stage.ready.load(std::memory_order_acquire) == wire::chunk_count_for(seg.size, seg.chunk_size) &&
         seg.durable.load(std::memory_order_relaxed) >= stage.generation;
}

}  // namespace

// --- the data path's side ---------------------------------------------------

uint64_t Engine::Impl::replica_set(const Segment& seg) const noexcept {
  wire::ReplicaSet set{};
  for (size_t i = 0; i < seg.replicas.size() && i < set.size(); ++i)
    set[i] = seg.replicas[i]->node.load(std::memory_order_relaxed);
  return wire::pack_set(set);
}

void Engine::Impl::tell_control(const SegmentNews& n) noexcept {
  assert_token_holder();
  if (segment_news_backlog.empty() && segment_news.push(n)) {
    wake_control();
    return;
  }
  segment_news_backlog.push_back(n);  // in order, after what waits already
}

void Engine::Impl::flush_segment_news() noexcept {
  while (!segment_news_backlog.empty() && segment_news.push(segment_news_backlog.front()))
    segment_news_backlog.pop_front();
  wake_control();
}

void Engine::Impl::apply_placement(const ControlMsg& m, uint64_t now) noexcept {
  auto it = owned.find(m.seg_id);
  if (it == owned.end() || it->second->fenced.load(std::memory_order_relaxed)) return;  // it was told
  Segment& seg = *it->second;
  const auto reason = static_cast<Placement::Reason>(m.flags);
  // Decided on slots that have changed since, or a move of a segment that
  // is not settled: the control thread decides again from what it is told.
  if (replica_set(seg) != m.expect ||
      ((reason == Placement::kBetter || reason == Placement::kStandby) && !settled(seg))) {
    tell_control(SegmentNews{SegmentNews::Kind::kSlots, 0, seg.id, replica_set(seg)});
    return;
  }
  const wire::ReplicaSet next = wire::unpack_set(m.set);
  const Stage* stage = seg.current_stage >= 0 ? &seg.stages[seg.current_stage] : nullptr;
  size_t filled = 0;
  for (size_t i = 0; i < seg.replicas.size() && i < next.size(); ++i) {
    ReplicaTarget& r = *seg.replicas[i];
    filled += next[i] != 0;
    const uint16_t old = r.node.load(std::memory_order_relaxed);
    if (old == next[i]) continue;
    r.sender.stop();
    r.held.store(0);
    r.node.store(next[i]);
    const std::string to = std::to_string(next[i]);
    if (reason == Placement::kLost)
      record_event("segment " + seg.name + ": " +
                   (old != 0 ? "replica on node " + std::to_string(old) + " lost" : std::string("replica missing")) +
                   (next[i] != 0 ? "; re-replicating to node " + to
                                 : std::string("; no live peer to take its place: the set goes on without it")));
    else if (reason == Placement::kBetter)
      record_event("segment " + seg.name + ": replica moves from node " + std::to_string(old) + " to node " + to +
                   " (more failure domains)");
    else if (reason == Placement::kStandby && next[i] != 0)
      record_event("segment " + seg.name + ": replica moves from node " + std::to_string(old) + " to node " + to +
                   " (its hot standby)");
    if (stage != nullptr && next[i] != 0) r.sender.start(stage_source(seg, *stage), tuning(), now);
  }
  if (reason == Placement::kInitial && filled < config.replication_factor)
    BT_WARN("segment %s: %zu of %u replicas (not enough peers)", seg.name.c_str(), filled,
            config.replication_factor);
  seg.placed = true;
  // The new set is recorded once a majority of it holds every generation
  // that may be durable; durability waits meanwhile.
  propose_set(seg, record_need(seg));
  tell_control(SegmentNews{SegmentNews::Kind::kSlots, 0, seg.id, replica_set(seg)});
}

// --- the control thread's side ----------------------------------------------

void Placer::place(uint64_t id, Placement& pl, const wire::ReplicaSet& next, Placement::Reason why,
                   std::vector<ControlMsg>& out) noexcept {
  ControlMsg m;
  m.kind = ControlMsg::Kind::kPlace;
  m.flags = why;
  m.seg_id = id;
  m.set = wire::pack_set(next);
  m.expect = wire::pack_set(pl.nodes);
  out.push_back(m);
  pl.waiting = true;
}

Placer::Diversity Placer::diversity(const wire::ReplicaSet& nodes, uint16_t cand,
                                               uint16_t skip) const noexcept {
  // Does `cand` add a blade, a power domain, a package, a NUMA node that
  // neither this node nor the other reachable replicas (but `skip`)
  // already use? Packages and NUMA nodes are numbered per blade.
  static const PeerTags kUnknown;
  auto tags = [this](uint16_t n) -> const PeerTags& {
    auto it = peer_tags_.find(n);
    return it == peer_tags_.end() ? kUnknown : it->second;
  };
  const PeerTags& c = tags(cand);
  const uint32_t my_blade = e_.config.blade != 0 ? e_.config.blade : e_.config.node_id;
  bool new_blade = c.blade == 0 || c.blade != my_blade;
  bool new_power = c.power_domain != 0 && c.power_domain != e_.config.power_domain;
  bool new_package = c.package >= 0 && (c.blade != my_blade || c.package != e_.package);
  bool new_numa = c.numa_node >= 0 && (c.blade != my_blade || c.numa_node != e_.config.numa_node);
  for (const uint16_t n : nodes) {
    if (n == 0 || n == skip || n == cand || !detector_.reachable(n)) continue;  // a lost replica shares nothing
    const PeerTags& other = tags(n);
    new_blade &= other.blade == 0 || other.blade != c.blade;
    new_power &= other.power_domain == 0 || other.power_domain != c.power_domain;
    new_package &= other.package < 0 || other.blade != c.blade || other.package != c.package;
    new_numa &= other.numa_node < 0 || other.blade != c.blade || other.numa_node != c.numa_node;
  }
  return {new_blade, new_power, new_package, new_numa};
}

bool Placer::standby(uint64_t seg_id, uint16_t node) const noexcept {
  auto it = e_.standby_nodes.find(seg_id);
  return it != e_.standby_nodes.end() && std::find(it->second.begin(), it->second.end(), node) != it->second.end();
}

uint16_t Placer::pick_replica(uint64_t seg_id, const wire::ReplicaSet& nodes, bool live_only) const noexcept {
  auto score = [&](uint16_t cand) {
    return std::make_tuple(standby(seg_id, cand), diversity(nodes, cand, 0), preferred(cand),
                           replica_rank(seg_id, cand));
  };
  const auto pl = placements_.find(seg_id);
  auto refusing = [&](uint16_t n) {
    return pl != placements_.end() && std::find(pl->second.refusing.begin(), pl->second.refusing.end(), n) !=
                                          pl->second.refusing.end();
  };
  uint16_t best = 0;
  for (const uint16_t cand : e_.peer_nodes) {
    if (!(live_only ? detector_.alive(cand) : detector_.reachable(cand)) || contains(nodes, cand) || refusing(cand))
      continue;
    if (best == 0 || score(cand) > score(best)) best = cand;
  }
  return best;
}

void Placer::step(uint64_t now, Rounds& rounds, std::vector<ControlMsg>& out) noexcept {
  if (const uint64_t v = e_.replica_preference.version.load(std::memory_order_acquire); v != preferred_version_) {
    std::lock_guard lock(e_.replica_preference.mu);
    preferred_ = e_.replica_preference.nodes;
    preferred_version_ = v;
  }
  SegmentNews n;
  while (e_.segment_news.pop(n)) {
    switch (n.kind) {
      case SegmentNews::Kind::kAdded: {
        Placement& pl = placements_[n.seg_id] = Placement{};
        pl.slots = n.slots;
        for (const uint16_t p : wire::unpack_set(n.set))
          if (p != 0) pl.preferred.push_back(p);
        break;
      }
      case SegmentNews::Kind::kSlots:
        if (auto it = placements_.find(n.seg_id); it != placements_.end()) {
          it->second.nodes = wire::unpack_set(n.set);
          it->second.waiting = false;
        }
        break;
      case SegmentNews::Kind::kFenced:
        if (auto it = placements_.find(n.seg_id); it != placements_.end()) it->second.fenced = true;
        break;
      case SegmentNews::Kind::kRefusing:
        if (auto it = placements_.find(n.seg_id); it != placements_.end()) {
          const auto node = static_cast<uint16_t>(n.set);
          auto& r = it->second.refusing;
          if (std::find(r.begin(), r.end(), node) == r.end()) r.push_back(node);
        }
        break;
      case SegmentNews::Kind::kRefusingNoMore:
        if (auto it = placements_.find(n.seg_id); it != placements_.end())
          std::erase(it->second.refusing, static_cast<uint16_t>(n.set));
        break;
      case SegmentNews::Kind::kGone:
        placements_.erase(n.seg_id);
        rounds.forget(n.seg_id);
        break;
    }
  }
  // A new segment is placed at once: its live hot standbys first (S16),
  // then after a takeover the live replicas of the set taken over (they
  // hold the state already), then by failure domains and rank among live
  // peers, then among peers not known to be gone. A slot left empty is
  // filled when a peer comes up.
  for (auto& [id, pl] : placements_) {
    if (pl.placed) continue;
    wire::ReplicaSet next{};
    for (size_t i = 0; i < pl.slots && i < next.size(); ++i) {
      uint16_t pick = 0;
      if (auto sb = e_.standby_nodes.find(id); sb != e_.standby_nodes.end())
        for (const uint16_t p : sb->second)
          if (pick == 0 && p != e_.config.node_id && detector_.alive(p) && !contains(next, p)) pick = p;
      for (const uint16_t p : pl.preferred)
        if (pick == 0 && detector_.alive(p) && !contains(next, p)) pick = p;
      if (pick == 0) pick = pick_replica(id, next, true);
      if (pick == 0) pick = pick_replica(id, next, false);
      next[i] = pick;
    }
    pl.placed = true;
    pl.preferred.clear();
    place(id, pl, next, Placement::kInitial, out);
  }
  if (elapsed(now, last_ns_) < e_.heartbeat_ns) return;
  last_ns_ = now;
  // Later changes only in a quorate view that every member shares: a
  // minority partition, or a view still settling, moves nothing.
  const View& v = detector_.view();
  if (!v.quorate || !v.agreed) return;
  for (auto& [id, pl] : placements_) {
    if (!pl.placed || pl.waiting || pl.fenced) continue;
    // S12: a replica on a node that is gone (or a slot never filled) goes
    // to the best live peer; so does one on a node that refuses this
    // owner's epoch (it holds another owner's copy of it).
    wire::ReplicaSet next = pl.nodes;
    bool changed = false;
    for (size_t i = 0; i < pl.slots && i < next.size(); ++i) {
      const bool refuses = std::find(pl.refusing.begin(), pl.refusing.end(), next[i]) != pl.refusing.end();
      if (next[i] != 0 && detector_.reachable(next[i]) && !refuses) continue;
      if (refuses) next[i] = 0;  // not a candidate for its own slot either
      if (const uint16_t best = pick_replica(id, next, true); best != 0) {
        next[i] = best;
        changed = true;
      } else if (next[i] != 0) {
        // No live peer to take it: the slot is emptied, and the smaller set
        // recorded (once a majority of it holds what may be durable), so
        // that durability degrades to a majority of what is left instead
        // of waiting for a node that is gone (a blade lost from a
        // three-blade chassis: the one left holds it). Filled again when a
        // peer comes up. Under-replicated meanwhile.
        next[i] = 0;
        changed = true;
      }
    }
    if (changed) {
      place(id, pl, next, Placement::kLost, out);
      continue;
    }
    // A hot standby (S16) that is alive but holds no replica (it was down
    // when the set was chosen) takes the place of a replica that is not
    // one: the last such slot.
    if (auto sb = e_.standby_nodes.find(id); sb != e_.standby_nodes.end()) {
      uint16_t want = 0;
      for (const uint16_t p : sb->second)
        if (want == 0 && p != e_.config.node_id && detector_.alive(p) && !contains(next, p)) want = p;
      size_t slot = next.size();
      for (size_t i = 0; want != 0 && i < pl.slots && i < next.size(); ++i)
        if (!standby(id, next[i])) slot = i;
      if (want != 0 && slot < next.size()) {
        next[slot] = want;
        place(id, pl, next, Placement::kStandby, out);
        continue;
      }
    }
    // A peer that spreads the replicas over more failure domains than one of
    // them does: that one moves (one move at a time; the data path applies
    // it only to a settled segment). A hot standby stays.
    for (size_t i = 0; i < pl.slots && i < next.size(); ++i) {
      const uint16_t cur = next[i];
      if (cur == 0 || !detector_.alive(cur) || standby(id, cur)) continue;
      Diversity have = diversity(next, cur, cur);
      uint16_t better = 0;
      for (const uint16_t p : e_.peer_nodes) {
        if (!detector_.alive(p) || contains(next, p)) continue;
        if (const Diversity d = diversity(next, p, cur); d > have) {
          have = d;  // the best so far is the bar for the next
          better = p;
        }
      }
      if (better == 0) continue;
      next[i] = better;
      place(id, pl, next, Placement::kBetter, out);
      break;
    }
  }
}

}  // namespace baton
