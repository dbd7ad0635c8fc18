// Durability and set records (S22; docs/architecture.md, "Fencing"): what
// counts as durable, the data path's side of how an owner records its
// replica set at a quorum of nodes (proposing it, storing and answering
// records), and fencing an owner that was superseded.
//
// Thread: the poll-token holder.

#include <algorithm>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

uint64_t Engine::Impl::held_by(const Segment& seg, uint16_t node) const noexcept {
  for (const auto& r : seg.replicas)
    if (r->node.load(std::memory_order_relaxed) == node) return r->held.load(std::memory_order_relaxed);
  return 0;  // no longer a replica: holds nothing for this owner
}

void Engine::Impl::update_durable(Segment& seg) noexcept {
  // While a new set is being recorded, nothing new becomes durable: a loader
  // may already go by the new record, or still by the old one.
  if (seg.pending.active || seg.recorded_set.empty()) return;
  // The generation the majority-th best member holds: a majority holds it.
  uint64_t held[wire::kMaxReplicaSet] = {};
  const size_t n = std::min(seg.recorded_set.size(), wire::kMaxReplicaSet);
  // A member the detector holds for gone counts for nothing: if it died, its
  // memory went with it (a false suspicion only delays the acknowledgement).
  for (size_t i = 0; i < n; ++i)
    held[i] = unreachable(seg.recorded_set[i]) ? 0 : held_by(seg, seg.recorded_set[i]);
  std::sort(held, held + n, std::greater<>());
  // A majority of the set, and never fewer holders than a majority of the
  // replication factor asks for while that many peers are reachable: a set
  // left short while peers are there to fill it acknowledges nothing until
  // it is filled, or "durable" would quietly mean fewer copies than the
  // operator set. With fewer peers reachable (a blade lost from a small
  // chassis) it degrades to a majority of what there is.
  size_t reachable = 0;
  for (const auto& p : peer_states) reachable += !unreachable(p.node);
  const size_t want = std::min<size_t>(config.replication_factor, reachable);
  const size_t need = std::max(n / 2 + 1, want / 2 + 1);
  if (need > n) return;
  const uint64_t d = held[need - 1];
  if (d <= seg.durable.load(std::memory_order_relaxed)) return;
  seg.durable_at_ns.store(clock_ns(), std::memory_order_relaxed);
  seg.durable.store(d, std::memory_order_release);
  note_progress();
}

//
// The owner writes its segment's replica set to every node and counts it once
// a quorum of nodes stored it. A loader hears from a quorum of nodes, so it
// sees the newest recorded set (or a newer proposal), and claims from a
// majority of that set. A set is proposed only once a majority of it holds
// every generation that may be durable, so that majority intersects the
// holders of any durable generation. The data path proposes (it owns what
// the replicas hold and the durability gate); the control thread asks the
// nodes and counts their answers (control/rounds.cc, RecordRound).

uint64_t Engine::Impl::record_need(const Segment& seg) const noexcept {
  // The generation being replicated; before the first snapshot, the one
  // handed out (a restored segment's, which the set must hold before it
  // replaces the set that held it).
  const uint64_t latest = seg.current_stage >= 0 ? seg.stages[seg.current_stage].generation : 0;
  return std::max({latest, seg.durable.load(std::memory_order_relaxed),
                   seg.current_stage >= 0 ? 0 : seg.committed.load(std::memory_order_relaxed)});
}

void Engine::Impl::propose_set(Segment& seg, uint64_t need) noexcept {
  auto& p = seg.pending;
  p.set.clear();
  for (const auto& r : seg.replicas)
    if (const uint16_t n = r->node.load(std::memory_order_relaxed); n != 0) p.set.push_back(n);
  // No replica at all: nothing to record. The newest record stays the set
  // that still holds the last durable state (a loader claims from it).
  p.active = !p.set.empty();
  p.version = std::max(seg.recorded_version, p.version) + 1;
  p.sent = false;
  p.failed = false;
  p.need = need;
}

bool Engine::Impl::store_record(uint64_t seg_id, const SetRecord& r) noexcept {
  if (promise_refuses(seg_id, r.epoch, r.owner) != 0) return false;  // as on_set_record
  auto& stored = records[seg_id];
  if (stored.deleted && stored.epoch == r.epoch) {  // a delete that raced this owner's claim (on_set_record)
    stored = r;
    return true;
  }
  if (stored.epoch == r.epoch && stored.owner != r.owner && stored.owner != 0) return false;
  if (r.newer_than(stored)) stored = r;
  return true;
}

void Engine::Impl::withdraw_record(Segment& seg) noexcept {
  auto& p = seg.pending;
  // Whoever stored this proposal or an earlier one of the epoch (the set
  // was proposed again when a member restarted) drops it if it is still
  // this node's; asking everyone costs a frame per peer, once.
  if (auto it = records.find(seg.id); it != records.end() && it->second.owner == config.node_id &&
                                      it->second.epoch == seg.epoch.load() && it->second.version <= p.version)
    records.erase(it);
  for (auto& ps : peer_states) send_record(seg, *ps.link, ps.node, wire::kFlagRestart);
  p.active = false;
}

wire::Frame Engine::Impl::set_record_frame(uint16_t peer, uint64_t seg_id, std::string_view name, uint64_t epoch,
                                           uint64_t version, uint64_t set, uint16_t flags) const noexcept {
  wire::Frame f;
  f.type = wire::MsgType::kSetRecord;
  f.flags = flags;
  f.src = config.node_id;
  f.dst = peer;
  f.seg_id = seg_id;
  f.name = name;
  f.epoch = epoch;
  f.generation = version;
  f.sack = set;
  return f;
}

void Engine::Impl::send_record(Segment& seg, Link& link, uint16_t peer, uint16_t flags) noexcept {
  send_control(link, set_record_frame(peer, seg.id, seg.name, seg.epoch.load(std::memory_order_relaxed),
                                      seg.pending.version, wire::pack_nodes(seg.pending.set), flags));
}

void Engine::Impl::step_records() noexcept {
  for (auto& [id, segp] : owned) {
    Segment& seg = *segp;
    auto& p = seg.pending;
    if (!p.active || p.sent || seg.fenced.load(std::memory_order_relaxed)) continue;
    size_t holding = 0;
    for (uint16_t n : p.set) holding += held_by(seg, n) >= p.need;
    if (holding * 2 <= p.set.size()) continue;
    RoundEvent e;
    e.kind = RoundEvent::Kind::kStartRecord;
    e.src = config.node_id;
    e.seg_id = id;
    e.epoch = seg.epoch.load(std::memory_order_relaxed);
    e.generation = p.version;
    e.sack = wire::pack_nodes(p.set);
    // This node's own answer first, as any node's: stored unless another
    // node wrote this epoch here first.
    if (store_record(id, SetRecord{e.epoch, p.version, e.sack, config.node_id, false, seg.name})) e.flags = wire::kFlagComplete;
    if (!round_starts.push(e)) return;  // the ring is full: handed over at a later poll
    p.sent = true;
    wake_control();
  }
}

void Engine::Impl::apply_recorded(const ControlMsg& m) noexcept {
  auto it = owned.find(m.seg_id);
  if (it == owned.end()) return;
  Segment& seg = *it->second;
  auto& p = seg.pending;
  // A round for an older proposal (the set changed since, a member
  // restarted, or it was an earlier owner's of this id, removed since)
  // counts for nothing: the newer one is recorded on its own.
  if (!p.active || !p.sent || p.version != m.generation || m.epoch != seg.epoch.load(std::memory_order_relaxed) ||
      seg.fenced.load(std::memory_order_relaxed))
    return;
  if (!m.alive) {
    p.failed = true;
    if (seg.creating.load()) return;  // the creator gives up (create_fresh) and withdraws it
    // Too many nodes hold another owner's record of this very epoch for
    // this one to reach a quorum (they refused it): see step_down_if_rivalled.
    step_down_if_rivalled(seg, seg.epoch.load(), "too many nodes refused its replica set record");
    return;
  }
  // Members of the set recorded before that this one leaves out hold copies
  // nobody will claim from again: they are released below.
  for (uint16_t n : seg.recorded_set) seg.release_to.push_back(n);
  seg.recorded_set = p.set;
  seg.recorded_version = p.version;
  p.active = false;
  std::string members;
  for (uint16_t n : p.set) members += (members.empty() ? "" : ",") + std::to_string(n);
  record_event("segment " + seg.name + ": replica set {" + members + "} recorded at epoch " +
               std::to_string(seg.epoch.load()) + " (version " + std::to_string(p.version) + ")");
  update_durable(seg);
  release_copies(seg);
}

void Engine::Impl::on_set_record(Link& link, const wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagDeleted) != 0) return on_tombstone(link, f);
  if ((f.flags & wire::kFlagRelease) != 0) return on_release(f);
  if ((f.flags & wire::kFlagComplete) != 0) {  // an ack: the owner's side
    auto it = owned.find(f.seg_id);
    if (it == owned.end()) return;
    auto& p = it->second->pending;
    // An echo from before the node restarted: the record it stored is gone.
    if (p.active && p.sent && f.generation == p.version && f.epoch == it->second->epoch.load() &&
        from_known_incarnation(f))
      forward_answer(RoundEvent::Kind::kRecordAck, f);
    return;
  }
  auto it = records.find(f.seg_id);
  if ((f.flags & wire::kFlagRestart) != 0) {  // withdrawn by the node that wrote it (this version and older)
    if (it != records.end() && it->second.owner == f.src && it->second.epoch == f.epoch &&
        it->second.version <= f.generation)
      records.erase(it);
    // A peer's batch may still hold it, read before the withdrawal reached
    // that peer: remembered while batches may come (take_handed_record).
    if (std::any_of(peer_states.begin(), peer_states.end(), [](const PeerState& p) { return !p.records_done; })) {
      if (withdrawn.size() >= kMaxWithdrawn) withdrawn.erase(withdrawn.begin());
      withdrawn.push_back(Withdrawal{f.seg_id, f.epoch, f.generation, f.src});
    }
    return;
  }
  // A record from below an epoch this node claimed (it owns the segment
  // at it, or its load is turning the claim into ownership), before its
  // own record of that epoch is stored: the sender was superseded, as for
  // its data (on_data).
  if (const uint64_t claimed = claimed_epoch(f.seg_id); claimed > f.epoch) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, claimed);
    return;
  }
  // Below a claim this node promised, or of its epoch and not the
  // claimant's: the claimant may have gone by what this node held then, so
  // this record must not count. (Of the same epoch, the sender is another
  // owner of it, as below.)
  if (const uint64_t promised = promise_refuses(f.seg_id, f.epoch, f.src)) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, promised, promised == f.epoch ? wire::kFlagRecord : 0);
    return;
  }
  // Another owner's record of the very epoch this node owns the segment
  // at: two loads claimed it at once, each granted by its own copy (a set
  // of two, R = 1) while they could not hear each other.
  if (auto o = owned.find(f.seg_id); o != owned.end() && f.src != config.node_id) {
    step_down_if_rivalled(*o->second, f.epoch, "node " + std::to_string(f.src) + " proposed its replica set");
  }
  if (it == records.end()) {
    if (records.size() >= kMaxRecords) {  // a bound on what peers can make this node keep
      bump(counters.bad_input);
      return;
    }
    it = records.emplace(f.seg_id, SetRecord{}).first;
  }
  const SetRecord proposed{f.epoch, f.generation, f.sack, f.src, false, std::string(f.name)};
  // A record from an older owner epoch, or from a second owner of the same
  // one (two nodes creating one new name at once), is refused like its
  // data: the sender learns it was superseded. A tombstone of the same
  // epoch gives way: its delete raced the sender's claim of that epoch and
  // failed (deleted_at() in ops.h).
  const bool beats_tombstone = it->second.deleted && f.epoch == it->second.epoch;
  if (f.epoch < it->second.epoch || (f.epoch == it->second.epoch && f.src != it->second.owner && !beats_tombstone)) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, it->second.epoch, rival_record_flag(f));
    return;
  }
  if (beats_tombstone || proposed.newer_than(it->second)) it->second = proposed;
  fence_if_superseded(f.seg_id, f.epoch);
  wire::Frame ack = f;
  ack.src = config.node_id;
  ack.dst = f.src;
  ack.flags = wire::kFlagComplete;
  ack.gen_crc = static_cast<uint32_t>(incarnation);  // see from_known_incarnation()
  send_control(link, ack);
}

uint16_t Engine::Impl::rival_record_flag(const wire::Frame& f) const noexcept {
  auto it = records.find(f.seg_id);
  return it != records.end() && !it->second.deleted && it->second.epoch == f.epoch && it->second.owner != f.src &&
                 it->second.owner != 0
             ? wire::kFlagRecord
             : 0;
}

void Engine::Impl::step_down_if_rivalled(Segment& seg, uint64_t epoch, const std::string& evidence) noexcept {
  // Only an owner whose own set is not recorded yet: at most one owner of
  // an epoch gets its set recorded at a quorum (each node stores one
  // owner's record of an epoch), and one that did is the owner. The other
  // learnt that its rival proposed a set, which happens only once a
  // majority of the rival's set holds every generation that may be
  // durable: stepping down loses nothing. (Both may step down, if both
  // proposed: then both sets hold it, and the next load claims above.)
  if (seg.epoch.load() != epoch || !seg.recorded_set.empty() || seg.creating.load() || seg.fenced.load()) return;
  // Its proposal, if it made one, stays where it is stored: a majority of
  // that set holds every generation that may be durable too, and if both
  // step down, a later load needs a record of this epoch to claim from
  // (the older one names the two owners, whose copies left their stores).
  fence(seg, "another node took it at owner epoch " + std::to_string(epoch) + " too (" + evidence + ")", false);
}

void Engine::Impl::fence_if_superseded(uint64_t seg_id, uint64_t epoch) noexcept {
  if (auto it = owned.find(seg_id); it != owned.end() && epoch > it->second->epoch.load(std::memory_order_relaxed))
    fence(*it->second);
}

uint64_t Engine::Impl::claimed_epoch(uint64_t seg_id) const noexcept {
  uint64_t claimed = table.unused_claim(seg_id);
  if (auto it = owned.find(seg_id); it != owned.end()) claimed = std::max(claimed, it->second->epoch.load());
  return claimed;
}

void Engine::Impl::fence(Segment& seg, const std::string& why, bool keep) noexcept {
  if (seg.fenced.exchange(true)) return;
  record_event("segment " + seg.name + " fenced: " +
               (why.empty() ? "owner epoch " + std::to_string(seg.epoch.load()) + " was superseded" : why) +
               "; this node no longer owns it");
  for (auto& r : seg.replicas) r->sender.stop();
  tell_control(SegmentNews{SegmentNews::Kind::kFenced, 0, seg.id, 0});  // placement stops
  if (keep && !keep_fenced_copy(seg, false)) fenced_to_keep.push_back(seg.id);
}

bool Engine::Impl::keep_fenced_copy(Segment& seg, bool mu_held) noexcept {
  // (A store being allocated for the newer owner's data gives way to it.)
  if (!seg.fenced.load() || seg.nothing_to_keep || stores.count(seg.id) != 0 || seg.current_stage < 0) return true;
  // Fenced by a delete (a tombstone above its epoch): nothing to keep.
  if (auto r = records.find(seg.id); r != records.end() && r->second.deleted && r->second.epoch > seg.epoch.load())
    return true;
  // The stages are the committer's while it holds seg.mu (a stage-copy
  // commit copies without the poll token); once fenced, no commit takes
  // them again. (A committer polling mid-copy holds seg.mu itself: its
  // try_lock finds the mutex busy, and the next poll asks again.)
  std::unique_lock lock(seg.mu, std::defer_lock);
  if (!mu_held && !lock.try_lock()) return false;
  Stage& stage = seg.stages[seg.current_stage];
  if (stage.cow) {
    if (!mu_held) return false;  // advance_cow settles it meanwhile
    settle_cow(seg, false);
  }
  const size_t chunks = stage.chunk_crcs.size();
  if (stage.generation == 0 || chunks == 0 || stage.ready.load(std::memory_order_acquire) < chunks) return true;
  Stage& other = seg.stages[1 - seg.current_stage];
  auto latest = stage.mem.share();
  auto spare = other.mem.share();
  if (!latest || !spare) {
    BT_WARN("segment %s: fenced; its generation %lu is not kept as a replica copy: %s", seg.name.c_str(),
            static_cast<unsigned long>(stage.generation),
            (!latest ? latest.error() : spare.error()).message.c_str());
    return true;
  }
  ReplicaStore::Origin origin{seg.name, seg.id, seg.size, seg.epoch.load(), config.node_id};
  origin.pages = app_pages();
  ReplicaStore::Kept k{std::move(*latest), std::move(*spare), stage.generation, seg.epoch.load(),
                       wire::pack_nodes(seg.recorded_set), stage.gen_crc, seg.chunk_size, stage.chunk_crcs};
  stores.emplace(seg.id, ReplicaStore::from_owner(origin, std::move(k)));
  bump(counters.fenced_copies_kept);
  record_event("segment " + seg.name + ": generation " + std::to_string(stage.generation) +
               " kept here as a replica copy of owner epoch " + std::to_string(seg.epoch.load()) +
               " until the newer owner's replica set holds it");
  return true;
}

void Engine::Impl::keep_fenced_copies() noexcept {
  std::erase_if(fenced_to_keep, [this](uint64_t id) {
    auto it = owned.find(id);
    return it == owned.end() || keep_fenced_copy(*it->second, false);
  });
}

//
// Records for a node that started. Records live in memory: a node that
// restarts knows none, and two of three that restarted together are a
// quorum that knows nothing. Waiting to hear every peer (heard_every_peer)
// is not enough if the third falls silent right after its first
// heartbeat: so a node asks each peer, the first time it hears it after
// its start, for all it has recorded, and counts the peer heard only once
// it has it. A record handed on is the writer's frame delivered late: it
// is stored much as that would have been, except one its writer withdrew
// since (`withdrawn`), which a direct link would have delivered first.

namespace {
/// Asked again when a batch did not come: a frame lost, the peer busy.
constexpr uint64_t kRecordsAskAgainNs = 20'000'000;
}  // namespace

void Engine::Impl::ask_for_records(uint64_t now) noexcept {
  for (auto& p : peer_states) {
    if (p.records_done || !p.alive || p.incarnation == 0 || p.link == nullptr) continue;
    if (p.records_incarnation != p.incarnation) {  // (again) from the start: it restarted meanwhile
      p.records_incarnation = p.incarnation;
      p.records_cursor = 0;
      p.records_asked_ns = 0;
    }
    if (p.records_asked_ns != 0 && now - p.records_asked_ns < kRecordsAskAgainNs) continue;
    wire::Frame q;
    q.type = wire::MsgType::kRecords;
    q.flags = wire::kFlagQuery;
    q.src = config.node_id;
    q.dst = p.node;
    q.epoch = incarnation;  // echoed: an answer meant for an earlier incarnation of this node is not taken
    q.generation = p.records_cursor;
    send_control(*p.link, q);
    p.records_asked_ns = now;
  }
}

void Engine::Impl::on_records(Link& link, wire::Frame& f) noexcept {
  if (!verified(f)) return;
  if ((f.flags & wire::kFlagQuery) != 0) return answer_records(link, f);
  auto it = peer_by_node.find(f.src);
  if (it == peer_by_node.end()) return;
  PeerState& p = *it->second;
  // Only the batch asked for last, by this incarnation.
  if (p.records_done || f.epoch != incarnation || f.generation != p.records_cursor) return;
  const bool last = (f.flags & wire::kFlagComplete) != 0;
  if (!last && f.total_len <= p.records_cursor) {  // it must move on
    bump(counters.bad_input);
    return;
  }
  bool all_kept = true;
  if (!wire::parse_record_entries(f.payload,
                                  [&](const wire::RecordEntry& e) { all_kept &= take_handed_record(e); })) {
    bump(counters.bad_input);
    return;
  }
  p.records_asked_ns = 0;  // the next batch at once
  p.records_lost |= !all_kept;
  if (!last) {
    p.records_cursor = f.total_len;
    return;
  }
  p.records_done = true;
  // A record it handed over that found no room here is not had
  // (records_had): this node then waits out fresh_start_wait_ms before it
  // starts names afresh.
  if (p.records_lost)
    record_event("node " + std::to_string(p.node) + "'s set records did not all fit here (" +
                 std::to_string(records.size()) + " kept): new names wait for fresh_start_wait_ms after the start");
  if (std::all_of(peer_states.begin(), peer_states.end(), [](const PeerState& q) { return q.records_done; }))
    withdrawn.clear();  // no batch is on its way any more
}

void Engine::Impl::answer_records(Link& link, const wire::Frame& f) noexcept {
  std::byte payload[wire::kMaxNote];
  size_t len = 0;
  auto it = records.lower_bound(f.generation);
  for (; it != records.end(); ++it) {
    const SetRecord& r = it->second;
    if (r.name.empty() || r.epoch == 0) continue;  // nothing to hand on
    if (len + wire::kRecordEntryHead + r.name.size() > sizeof payload) break;
    len = wire::put_record_entry(payload, len, wire::RecordEntry{r.name, r.epoch, r.version, r.set, r.owner, r.deleted});
  }
  wire::Frame a;
  a.type = wire::MsgType::kRecords;
  a.flags = it == records.end() ? wire::kFlagComplete : 0;
  a.src = config.node_id;
  a.dst = f.src;
  a.epoch = f.epoch;
  a.generation = f.generation;
  a.total_len = it == records.end() ? 0 : it->first;
  a.payload = std::span<const std::byte>(payload, len);
  send_control(link, a);
}

bool Engine::Impl::take_handed_record(const wire::RecordEntry& e) noexcept {
  const uint64_t id = wire::segment_id(e.name);
  if (records.count(id) == 0 && records.size() >= kMaxRecords) return false;  // the bound on_set_record keeps
  if (e.deleted) {
    (void)apply_tombstone(id, e.name, e.epoch, e.owner);  // refused for a newer epoch known here: kept
    return true;
  }
  // Withdrawn by its writer since the peer read it (its create failed):
  // the withdrawal came first here, so the record must not.
  for (const Withdrawal& w : withdrawn)
    if (w.seg_id == id && w.owner == e.owner && w.epoch == e.epoch && e.version <= w.version) return true;
  auto it = records.find(id);
  if (it == records.end()) it = records.emplace(id, SetRecord{}).first;
  SetRecord& stored = it->second;
  // As on_set_record: an older epoch, or a second owner of the stored one,
  // is not taken; a tombstone of the same epoch gives way.
  const bool beats_tombstone = stored.deleted && e.epoch == stored.epoch;
  if (stored.epoch != 0 && (e.epoch < stored.epoch || (e.epoch == stored.epoch && e.owner != stored.owner && !beats_tombstone)))
    return true;
  SetRecord r{e.epoch, e.version, e.set, e.owner, false, std::string(e.name)};
  if (beats_tombstone || r.newer_than(stored)) stored = std::move(r);
  fence_if_superseded(id, e.epoch);
  return true;
}

}  // namespace baton
