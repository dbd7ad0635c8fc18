// Deleting a segment and reclaiming copies (S11's clean exit; issue #9;
// docs/architecture.md, "Deletion and reclamation").
//
// A delete writes a tombstone, a set record with no set, at an owner epoch
// above every one seen. A node that stores it drops its copy, fences a
// local owner, and refuses the old owners' data from then on; query
// answers carry it, so a copy on a node that missed it is never restored,
// and a new segment of that name starts above it.
//
// Once an owner's replica set is recorded at a quorum, nodes that held
// copies before (the set it took over, a replica it replaced, stale copies
// its query found) are told to drop theirs: every loader now claims from
// the recorded set.
//
// Thread: the poll-token holder.

#include <algorithm>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

namespace {
/// Whether `seg`'s owner may count on `node`'s copy: a member of its
/// recorded set, of the set it proposes, or placed in a slot (its
/// acknowledgements count towards a proposal). Thread: token holder.
bool counts_on(const Segment& seg, uint16_t node) noexcept {
  auto in = [node](const std::vector<uint16_t>& set) { return std::find(set.begin(), set.end(), node) != set.end(); };
  if (in(seg.recorded_set) || (seg.pending.active && in(seg.pending.set))) return true;
  return std::any_of(seg.replicas.begin(), seg.replicas.end(),
                     [node](const auto& r) { return r->node.load(std::memory_order_relaxed) == node; });
}
}  // namespace

void Engine::Impl::drop_store(uint64_t seg_id) noexcept {
  auto it = stores.find(seg_id);
  allocating.erase(seg_id);
  allocation_failed.erase(seg_id);
  if (it == stores.end()) return;
  ReplicaStore* st = it->second.get();
  std::erase_if(serves, [st](const auto& s) { return s->store == st; });
  std::erase_if(acks_due, [st](const AckDue& a) { return a.store == st; });
  retired_stores.push_back(std::move(it->second));
  stores.erase(it);
  free_retired();
}

void Engine::Impl::free_retired() noexcept {
  for (auto it = retired_stores.begin(); it != retired_stores.end();) {
    if ((*it)->writer_pinned()) {  // a global-storage write still reads it
      ++it;
      continue;
    }
    if (allocator) allocator->free(std::move(*it));  // unmapping is slow: off the worker
    it = retired_stores.erase(it);                  // (a simulation frees in place)
  }
}

uint64_t Engine::Impl::apply_tombstone(uint64_t seg_id, std::string_view name, uint64_t epoch, uint16_t owner, bool* by_owner) noexcept {
  // A newer owner epoch known here (a load or a new segment after the
  // delete began) wins over the tombstone: the deleter is told.
  auto rec = records.find(seg_id);
  if (by_owner != nullptr) *by_owner = true;
  // (The same tombstone may come from its writer and from a node repairing
  // one that missed it: same epoch, another sender.)
  if (rec != records.end() &&
      (rec->second.epoch > epoch || (rec->second.epoch == epoch && rec->second.owner != owner && !rec->second.deleted)))
    return rec->second.epoch;
  // A claim this node promised above it (or of its epoch, to another
  // node): a promise stores no older record, a tombstone included. Its
  // claimant may be loading the very history the tombstone deletes, from a
  // copy the delete cannot reach (a load from outside the set): were the
  // tombstone stored here too, the delete's quorum and the claim's would
  // meet only in a node that kept both, and both would succeed (sim seed
  // 9500392, 3 nodes, RF 3: I5). Not an owner's refusal: the deleter tries
  // again above it (remove_locked).
  if (const uint64_t promised = promise_refuses(seg_id, epoch, owner); promised != 0) {
    if (by_owner != nullptr) *by_owner = false;
    return promised;
  }
  if (auto st = stores.find(seg_id);
      st != stores.end() && (st->second->epoch() > epoch || (st->second->epoch() == epoch && st->second->owner() != owner))) {
    // A copy of the deleted history that took a claim's epoch is not an
    // owner's: that claim may yet fail (delete.cc).
    const ReplicaStore::Slot* latest = st->second->latest();
    if (by_owner != nullptr) *by_owner = latest == nullptr || latest->epoch > epoch;
    return st->second->epoch();
  }
  if (auto o = owned.find(seg_id); o != owned.end() && !o->second->fenced.load() && o->second->epoch.load() >= epoch)
    return o->second->epoch.load();
  if (rec == records.end()) {
    if (records.size() >= kMaxRecords) {  // a bound on what peers can make this node keep
      bump(counters.bad_input);
      return 0;
    }
    rec = records.emplace(seg_id, SetRecord{}).first;
  }
  if (!rec->second.deleted || rec->second.epoch != epoch) {
    rec->second = SetRecord{epoch, 1, 0, owner, true, std::string(name)};
    if (stores.count(seg_id) != 0)
      record_event("segment " + stores[seg_id]->name() + " deleted at epoch " + std::to_string(epoch) + " by node " +
                   std::to_string(owner) + ": replica copy dropped");
  }
  drop_store(seg_id);
  if (auto o = owned.find(seg_id); o != owned.end() && o->second->epoch.load() < epoch) o->second->nothing_to_keep = true;
  fence_if_superseded(seg_id, epoch);
  return 0;
}

void Engine::Impl::send_tombstone_to(uint16_t peer, uint64_t id, std::string_view name, uint64_t epoch) noexcept {
  // (A tombstone has one version, and no set.)
  if (Link* l = link_to(peer)) send_control(*l, set_record_frame(peer, id, name, epoch, 1, 0, wire::kFlagDeleted));
}

void Engine::Impl::on_tombstone(Link& link, const wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagComplete) != 0) {  // an answer to ours: the control thread's
    forward_answer(RoundEvent::Kind::kStored, f);
    return;
  }
  bool by_owner = false;
  if (const uint64_t newer = apply_tombstone(f.seg_id, f.name, f.epoch, f.src, &by_owner); newer != 0) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, newer, by_owner ? wire::kFlagOwner : 0);
    return;
  }
  wire::Frame ack = f;
  ack.src = config.node_id;
  ack.dst = f.src;
  ack.flags = wire::kFlagDeleted | wire::kFlagComplete;
  send_control(link, ack);
}

void Engine::Impl::on_release(const wire::Frame& f) noexcept {
  // The sender owns the segment at f.epoch and recorded set f.sack at a
  // quorum: a loader claims from that set (or a newer one) only.
  const auto set = wire::unpack_set(f.sack);
  if (std::find(set.begin(), set.end(), config.node_id) != set.end()) return;
  // An older owner here is superseded, and the new set holds what its
  // last snapshot holds: nothing of it is kept (keep_fenced_copy).
  if (auto o = owned.find(f.seg_id); o != owned.end() && o->second->epoch.load() < f.epoch) {
    o->second->nothing_to_keep = true;
    fence(*o->second, {}, false);
  }
  auto st = stores.find(f.seg_id);
  if (st == stores.end() || st->second->epoch() > f.epoch || st->second->name() != f.name) return;
  record_event("segment " + st->second->name() + ": replica copy dropped (node " + std::to_string(f.src) +
               " recorded its set at epoch " + std::to_string(f.epoch) + " without this node)");
  drop_store(f.seg_id);
}

void Engine::Impl::release_copies(Segment& seg) noexcept {
  for (uint16_t n : seg.release_to) {
    if (std::find(seg.recorded_set.begin(), seg.recorded_set.end(), n) != seg.recorded_set.end()) continue;
    if (n == config.node_id) {  // a copy this node held as a replica before it took over
      if (auto st = stores.find(seg.id); st != stores.end() && st->second->epoch() <= seg.epoch.load()) drop_store(seg.id);
      continue;
    }
    send_release(seg, n);
  }
  seg.release_to.clear();
  for (const PeerState& p : peer_states)
    if (releases_history(seg, p.node)) send_history_release(seg, p.node);
}

bool Engine::Impl::releases_history(const Segment& seg, uint16_t peer) const noexcept {
  if (seg.deleted_history == 0 || seg.fenced.load(std::memory_order_relaxed) || seg.recorded_set.empty()) return false;
  auto it = peer_by_node.find(peer);
  return it != peer_by_node.end() && it->second->alive;
}

bool Engine::Impl::releases(const Segment& seg, uint16_t peer) const noexcept {
  if (seg.fenced.load(std::memory_order_relaxed) || seg.recorded_set.empty() || counts_on(seg, peer)) return false;
  auto it = peer_by_node.find(peer);
  return it != peer_by_node.end() && it->second->alive;
}

void Engine::Impl::send_releases_due(uint64_t now) noexcept {
  // A release is one control frame and is not answered: one lost (a link
  // that dropped it as the peer came back) left an old owner's kept copy
  // on that peer for good (a leak: it is older than the recorded set, so
  // no load takes it). So, now and then, every live peer outside each
  // recorded set is released again: a no-op where it holds nothing.
  if (releases_due.empty() && !owned.empty() && elapsed(now, releases_queued_ns) >= release_again_ns()) {
    releases_queued_ns = now;
    for (auto& [id, seg] : owned)
      for (const PeerState& p : peer_states)
        if (releases(*seg, p.node) || releases_history(*seg, p.node)) releases_due.emplace_back(id, p.node);
  }
  for (size_t n = 0; n < kReleasesPerPoll && !releases_due.empty(); ++n) {
    const auto [id, peer] = releases_due.front();
    releases_due.pop_front();
    if (auto o = owned.find(id); o != owned.end()) {
      if (releases(*o->second, peer)) send_release(*o->second, peer);
      if (releases_history(*o->second, peer)) send_history_release(*o->second, peer);
    }
  }
}

void Engine::Impl::send_history_release(const Segment& seg, uint16_t peer) noexcept {
  // (on_release: a node outside the set named, none here, drops a copy at
  // or below the epoch and fences an owner below it.)
  if (Link* l = link_to(peer))
    send_control(*l, set_record_frame(peer, seg.id, seg.name, seg.deleted_history, 1, 0, wire::kFlagRelease));
}

void Engine::Impl::send_release(const Segment& seg, uint16_t peer) noexcept {
  if (Link* l = link_to(peer))
    send_control(*l, set_record_frame(peer, seg.id, seg.name, seg.epoch.load(std::memory_order_relaxed),
                                      seg.recorded_version, wire::pack_nodes(seg.recorded_set), wire::kFlagRelease));
}

}  // namespace baton
