// Placement and re-replication (S4, S12): which peers hold a segment's
// replicas, replacing lost ones, and spreading them over failure domains.
//
// Thread: the poll-token holder.

#include <algorithm>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

uint64_t Engine::Impl::replica_set(const Segment& seg) const noexcept {
  wire::ReplicaSet set{};
  for (size_t i = 0; i < seg.replicas.size() && i < set.size(); ++i)
    set[i] = seg.replicas[i]->node.load(std::memory_order_relaxed);
  return wire::pack_set(set);
}

Engine::Impl::Diversity Engine::Impl::diversity(const Segment& seg, const PeerState& cand,
                                               uint16_t skip) const noexcept {
  // Does `cand` add a blade, a power domain, a NUMA node that neither the
  // owner nor the other live replicas (but `skip`) already use?
  const uint32_t my_blade = config.blade != 0 ? config.blade : config.node_id;
  bool new_blade = cand.blade == 0 || cand.blade != my_blade;
  bool new_power = cand.power_domain != 0 && cand.power_domain != config.power_domain;
  bool new_numa = cand.numa_node >= 0 && cand.numa_node != config.numa_node;
  for (const auto& r : seg.replicas) {
    const uint16_t n = r->node.load(std::memory_order_relaxed);
    if (n == skip || n == cand.node || unreachable(n)) continue;  // a lost replica shares nothing any more
    const auto it = peer_by_node.find(n);
    if (it == peer_by_node.end()) continue;
    const PeerState& other = *it->second;
    new_blade &= other.blade == 0 || other.blade != cand.blade;
    new_power &= other.power_domain == 0 || other.power_domain != cand.power_domain;
    new_numa &= other.numa_node < 0 || other.numa_node != cand.numa_node;
  }
  return {new_blade, new_power, new_numa};
}

PeerState* Engine::Impl::pick_replica(const Segment& seg, bool live_only) noexcept {
  auto score = [&](const PeerState& cand) {
    return std::make_pair(diversity(seg, cand, 0), replica_rank(seg.id, cand.node));
  };
  PeerState* best = nullptr;
  for (auto& p : peer_states) {
    const uint16_t cand = p.node;
    if (live_only ? !p.alive : unreachable(cand)) continue;
    bool taken = false;
    for (const auto& r : seg.replicas) taken |= r->node.load(std::memory_order_relaxed) == cand;
    if (taken) continue;
    if (best == nullptr || score(p) > score(*best)) best = &p;
  }
  return best;
}

void Engine::Impl::step_replicas(uint64_t now) noexcept {
  if (now - std::min(now, last_replica_check_ns) < heartbeat_ns) return;
  last_replica_check_ns = now;
  // Placement decisions only in a quorate view that every member shares: a
  // minority partition, or a view still settling, moves nothing.
  const View& v = data_view;
  if (!v.quorate || !v.agreed) return;
  for (auto& [id, seg] : owned) {
    if (seg->fenced.load()) continue;
    for (auto& r : seg->replicas) {
      const uint16_t lost = r->node.load(std::memory_order_relaxed);  // 0: an empty slot
      if (lost != 0 && !unreachable(lost)) continue;
      PeerState* best = pick_replica(*seg, true);
      if (best == nullptr) continue;  // under-replicated until a peer is alive
      r->sender.stop();
      r->held.store(0);
      r->node.store(best->node);
      record_event("segment " + seg->name + ": " +
                   (lost != 0 ? "replica on node " + std::to_string(lost) + " lost" : std::string("replica missing")) +
                   "; re-replicating to node " + std::to_string(best->node));
      uint64_t latest = 0;
      if (seg->current_stage >= 0) {
        Stage& st = seg->stages[seg->current_stage];
        latest = st.generation;
        r->sender.start(stage_source(*seg, st), tuning(), now);
      }
      // The new set is recorded once a majority of it holds the latest
      // generation (so every durable one); durability waits meanwhile.
      propose_set(*seg, latest);
    }
    improve_placement(*seg, now);
  }
}

void Engine::Impl::improve_placement(Segment& seg, uint64_t now) noexcept {
  // A node joined that spreads the replicas over more failure domains than
  // one of them does: move that one (S12), but only on a settled segment
  // (set recorded, latest generation durable) and one move at a time.
  if (seg.pending.active || seg.recorded_set.empty() || seg.current_stage < 0) return;
  const Stage& stage = seg.stages[seg.current_stage];
  if (stage.ready != wire::chunk_count_for(seg.size, seg.chunk_size) || seg.durable.load() < stage.generation) return;
  for (auto& r : seg.replicas) {
    const uint16_t n = r->node.load(std::memory_order_relaxed);
    const auto it = peer_by_node.find(n);
    if (n == 0 || it == peer_by_node.end() || !it->second->alive) continue;
    Diversity have = diversity(seg, *it->second, n);
    PeerState* better = nullptr;
    for (auto& p : peer_states) {
      if (!p.alive || std::any_of(seg.replicas.begin(), seg.replicas.end(),
                                  [&](auto& o) { return o->node.load(std::memory_order_relaxed) == p.node; }))
        continue;
      if (const Diversity d = diversity(seg, p, n); d > have) {
        have = d;  // the best so far is the bar for the next
        better = &p;
      }
    }
    if (better == nullptr) continue;
    r->sender.stop();
    r->held.store(0);
    r->node.store(better->node);
    record_event("segment " + seg.name + ": replica moves from node " + std::to_string(n) + " to node " +
                 std::to_string(better->node) + " (more failure domains)");
    r->sender.start(stage_source(seg, stage), tuning(), now);
    propose_set(seg, stage.generation);
    return;
  }
}

}  // namespace baton
