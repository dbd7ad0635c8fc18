// The replica side of the data path: DATA frames into replica stores (with
// the fencing checks of S22 and the allocation of new stores off the
// worker), the acks they earn, and fetches served from published slots and
// received into a load's destination. Run by the poll loop (worker.cc).
//
// Thread: the poll-token holder. Never blocks, never throws.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>

#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

void Engine::Impl::on_data(Link& link, wire::Frame& f) noexcept {
  // The fast path (the next chunk of the generation in progress) verifies the
  // frame while copying it; every other path verifies before acting on it.
  auto it = stores.find(f.seg_id);
  if (it != stores.end() && f.epoch > it->second->epoch() && f.name == it->second->name() &&
      f.total_len != it->second->size()) {
    // A newer owner of another size: the name was deleted and created
    // again, and this copy (which missed the delete) is of the old one.
    if (!verified(f)) return;
    drop_store(f.seg_id);
    it = stores.end();
  }
  if (it != stores.end() && f.src == it->second->owner() && f.epoch == it->second->epoch()) {
    // The owner restarted and began a new history under the same epoch: a
    // fresh start that could not see this copy (beyond what the set
    // records tolerate). Its generation numbers start again, so this copy
    // is of another history, and acks by it would count generations the
    // new owner never sent (simulation seed 1739, 2 nodes). It goes; the
    // new history's frames build a new copy.
    const auto p = peer_by_node.find(f.src);
    const uint64_t now_known = p != peer_by_node.end() ? p->second->incarnation : 0;
    ReplicaStore& st = *it->second;
    if (st.owner_incarnation() == 0) {
      st.set_owner_incarnation(now_known);
    } else if (now_known != 0 && now_known != st.owner_incarnation()) {
      if (!verified(f)) return;
      record_event("segment " + st.name() + ": replica copy dropped: node " + std::to_string(f.src) +
                   " restarted and began a new history under epoch " + std::to_string(f.epoch));
      drop_store(f.seg_id);
      it = stores.end();
    }
  }
  if (it == stores.end()) {
    if (!verified(f)) return;
    // A record of a newer epoch (a tombstone, or a newer owner's set):
    // the sender was superseded. A tombstone of the sender's own epoch is
    // not: the sender claimed that epoch while a delete ran, and its claim
    // was granted where the tombstone was refused, so the delete failed
    // (deleted_at() in ops.h). Its data is taken here as anywhere.
    if (auto r = records.find(f.seg_id); r != records.end() && r->second.epoch > f.epoch) {
      bump(counters.stale_epoch);
      send_error(link, f, wire::ErrorCode::kStaleEpoch, r->second.epoch);
      return;
    }
    // Nor may it write here when this node claimed the segment at a newer
    // epoch: it owns it at that epoch (fenced since or not), or its load
    // is turning the claim into ownership. A load that promoted this
    // node's own replica or standby copy took that copy, with the epoch it
    // had accepted, out of the stores: a copy made afresh for the older
    // owner would ack its generations, and the older owner, which recorded
    // a new set before this node's claim superseded it, counted them
    // durable (simulation seeds 3274 and 4886: two loads at once, the
    // stale one's commit acknowledged by this node after it had taken
    // ownership above it).
    if (const uint64_t claimed = claimed_epoch(f.seg_id); claimed > f.epoch) {
      bump(counters.stale_epoch);
      send_error(link, f, wire::ErrorCode::kStaleEpoch, claimed);
      return;
    }
    if (auto o = owned.find(f.seg_id); o != owned.end()) {
      Segment& seg = *o->second;
      // Nor when this node owns it at that very epoch: two loads claimed
      // it at once (records.cc, on_set_record). A node is never a replica
      // of what it owns (once it stepped down, it may be).
      if (seg.epoch.load() == f.epoch && !seg.fenced.load()) {
        bump(counters.stale_epoch);
        send_error(link, f, wire::ErrorCode::kStaleEpoch, f.epoch, rival_record_flag(f) | wire::kFlagOwner);
        return;
      }
      // A newer owner writes it: fenced, its last snapshot becomes the
      // copy here (one of another size is of a name deleted and created
      // again), which this frame updates.
      if (f.epoch > seg.epoch.load()) {
        fence(seg, {}, f.total_len == seg.size);
        it = stores.find(f.seg_id);
      }
    }
  }
  if (it == stores.end()) {
    if (f.total_len > config.max_segment_size) {
      send_error(link, f, wire::ErrorCode::kNoRoom, 0);
      return;
    }
    if (allocator) {
      // First sight of a segment: its slots are allocated off the worker
      // (seconds of page faults for a large one would stop heartbeats).
      // The frame is dropped meanwhile; the sender sends it again.
      if (allocation_failed.erase(f.seg_id) != 0) {
        send_error(link, f, wire::ErrorCode::kNoRoom, 0);
        return;
      }
      if (allocating.insert(f.seg_id).second) allocator->submit(store_origin(f));
      return;
    }
    auto store = ReplicaStore::create(store_origin(f), config.retain, memory_node);
    if (!store) {
      BT_WARN("cannot hold replica of %.*s: %s", int(f.name.size()), f.name.data(),
               store.error().message.c_str());
      send_error(link, f, wire::ErrorCode::kNoRoom, 0);
      return;
    }
    it = stores.emplace(f.seg_id, std::move(*store)).first;
    fence_if_superseded(f.seg_id, f.epoch);  // another owner writes a segment this node owns
  }
  ReplicaStore& st = *it->second;
  if (f.name != st.name() || f.total_len != st.size()) {
    if (verified(f)) bump(counters.bad_input);
    return;
  }
  if (f.epoch != st.epoch() || f.src != st.owner()) {
    if (!verified(f)) return;
    // Fencing (S22): data from an older owner epoch, or from another node
    // claiming the current one, is refused, and the sender is told which
    // epoch superseded it. A newer epoch means ownership moved: adopt it.
    if (f.epoch <= st.epoch()) {
      bump(counters.stale_epoch);
      send_error(link, f, wire::ErrorCode::kStaleEpoch, st.epoch(), rival_record_flag(f));
      return;
    }
    st.adopt_epoch(f.src, f.epoch);
    fence_if_superseded(f.seg_id, f.epoch);
  }
  bool restart = false, need_full = false;
  switch (st.accept(f, frames_copy_budget)) {
    case ReplicaStore::Accept::kStored:
      if (st.preparing()) list_if_behind(st);  // the poll copies the rest of the delta's base
      break;
    case ReplicaStore::Accept::kStale: break;
    case ReplicaStore::Accept::kDuplicate: bump(counters.duplicates); break;
    case ReplicaStore::Accept::kNeedFull: need_full = true; break;
    case ReplicaStore::Accept::kRestamped:
      bump(counters.restamped);
      record_event("segment " + st.name() + ": generation " + std::to_string(f.generation) +
                   " held already; relabelled with node " + std::to_string(f.src) + "'s epoch " +
                   std::to_string(f.epoch) + ", not received again");
      break;
    case ReplicaStore::Accept::kPublished: on_published(st); break;
    case ReplicaStore::Accept::kCompleting: list_if_behind(st); break;  // advance_stores publishes it
    case ReplicaStore::Accept::kCorrupt:
      bump(counters.corrupt_generations);
      restart = true;
      break;
    case ReplicaStore::Accept::kNoSlot: bump(counters.no_slot); return;
    case ReplicaStore::Accept::kBadFrame:
      bump(counters.decode[static_cast<size_t>(wire::DecodeError::kChecksum)]);
      return;
  }
  for (auto& a : acks_due)
    if (a.store == &st && a.link == &link) {
      a.restart |= restart;
      if (a.generation != f.generation) a.need_full = false;
      a.need_full |= need_full;
      a.generation = f.generation;
      return;
    }
  acks_due.push_back({&link, &st, nullptr, f.generation, restart, need_full});
}

void Engine::Impl::list_if_behind(const ReplicaStore& st) noexcept {
  if (st.behind() && std::find(stores_behind.begin(), stores_behind.end(), st.id()) == stores_behind.end())
    stores_behind.push_back(st.id());
}

void Engine::Impl::on_published(ReplicaStore& st) noexcept {
  bump(counters.published);
  if (st.latest()->delta_of != 0) bump(counters.deltas_published);
  list_if_behind(st);
  BT_DEBUG("published %s generation %lu", st.name().c_str(), static_cast<unsigned long>(st.latest()->generation));
  if (global) (void)offer_to_global(st);
}

void Engine::Impl::flush_acks() noexcept {
  for (const auto& a : acks_due) {
    wire::Frame ack;
    ack.type = wire::MsgType::kAck;
    ack.src = config.node_id;
    ack.dst = a.link->peer();
    ack.gen_crc = static_cast<uint32_t>(incarnation);  // see from_known_incarnation()
    if (a.store != nullptr) {
      ack.seg_id = a.store->id();
      ack.epoch = a.store->epoch();
      a.store->fill_ack(ack);
    } else {
      ack.seg_id = a.fetch->id;
      ack.flags = wire::kFlagFetch;
      a.fetch->assembler.fill_ack(ack);
      if (a.fetch->got_generation != 0) {
        ack.generation = a.fetch->got_generation;
        ack.flags |= wire::kFlagComplete;
      }
    }
    if (a.restart) {
      ack.generation = a.generation;
      ack.flags |= wire::kFlagRestart;
    }
    if (a.need_full) {  // this generation's delta cannot be built here: send it whole
      ack = wire::Frame{};
      ack.type = wire::MsgType::kAck;
      ack.src = config.node_id;
      ack.dst = a.link->peer();
      ack.gen_crc = static_cast<uint32_t>(incarnation);
      ack.seg_id = a.store->id();
      ack.epoch = a.store->epoch();
      ack.generation = a.generation;
      ack.flags = wire::kFlagDelta | wire::kFlagNeedFull;
    }
    if (ack.generation == 0) continue;  // nothing to acknowledge yet
    send_control(*a.link, ack);
  }
  acks_due.clear();
}

void Engine::Impl::on_fetch_request(Link& link, const wire::Frame& f, uint64_t now) noexcept {
  auto owned_it = owned.find(f.seg_id);
  auto store_it = stores.find(f.seg_id);
  ReplicaStore* st = store_it == stores.end() ? nullptr : store_it->second.get();
  if ((f.flags & wire::kFlagQuery) != 0) {
    wire::Frame meta;
    meta.type = wire::MsgType::kFetchMeta;
    meta.src = config.node_id;
    meta.dst = f.src;
    meta.seg_id = f.seg_id;
    meta.name = f.name;
    if (owned_it != owned.end() && !owned_it->second->fenced.load()) {  // a fenced one is no one's
      Segment& seg = *owned_it->second;
      meta.flags = wire::kFlagFound | wire::kFlagOwner;
      meta.epoch = seg.epoch.load();
      meta.total_len = seg.size;
      meta.generation = seg.current_stage >= 0 ? seg.stages[seg.current_stage].generation : 0;
    } else if (st != nullptr && st->latest() != nullptr) {
      meta.flags = wire::kFlagFound;
      meta.epoch = st->epoch();
      meta.total_len = st->size();
      meta.generation = st->latest()->generation;
    }
    if (auto rec = records.find(f.seg_id); rec != records.end()) {
      meta.flags |= wire::kFlagRecord | (rec->second.deleted ? wire::kFlagDeleted : 0);
      wire::set_aux_epoch(meta, rec->second.epoch);
      meta.gen_crc = static_cast<uint32_t>(rec->second.version);
      meta.chunk_size = rec->second.owner;
      meta.sack = rec->second.set;
    }
    send_control(link, meta);
    return;
  }
  ReplicaStore::Slot* slot = st == nullptr ? nullptr : st->find(f.generation);
  if (slot == nullptr) {
    send_error(link, f, wire::ErrorCode::kNoSuchSegment, 0);
    return;
  }
  // A repeated request restarts the transfer (the loader lost its state or our frames).
  FetchServe* serve = nullptr;
  for (auto& s : serves)
    if (s->id == f.seg_id && s->requester == f.src) {
      s->slot->pins--;
      serve = s.get();
    }
  if (serve == nullptr) serve = serves.emplace_back(std::make_unique<FetchServe>()).get();
  serve->id = f.seg_id;
  serve->requester = f.src;
  serve->store = st;
  serve->slot = slot;
  slot->pins++;
  serve->last_progress_ns = now;
  // Direct read (issue #11): a loader that shares this host's memory maps
  // the slot itself. It stays pinned (never rewritten) until the loader
  // says it is done, or for a lease long enough to copy it at 100 MB/s; a
  // reader that takes longer finds the generation checksum wrong and asks
  // for a stream.
  if ((f.flags & wire::kFlagDirect) != 0 && link.caps().direct_read && slot->mem.fd() >= 0) {
    struct stat sb{};
    if (::fstat(slot->mem.fd(), &sb) == 0) {
      serve->sender.stop();
      serve->lent = true;
      serve->lease_ns = uint64_t{config.fetch_timeout_ms} * 1'000'000 + st->size() * 10;
      wire::Frame meta;
      meta.type = wire::MsgType::kFetchMeta;
      meta.flags = wire::kFlagDirect | wire::kFlagFound | wire::kFlagGenCrc;
      meta.src = config.node_id;
      meta.dst = f.src;
      meta.seg_id = f.seg_id;
      meta.name = f.name;
      meta.epoch = st->epoch();
      meta.generation = slot->generation;
      meta.total_len = st->size();
      meta.chunk_size = slot->chunk_size;
      meta.gen_crc = slot->gen_crc;
      wire::set_direct(meta, static_cast<uint32_t>(::getpid()), static_cast<uint32_t>(slot->mem.fd()), sb.st_ino);
      send_control(link, meta);
      bump(counters.slots_lent);
      return;
    }
  }
  serve->lent = false;
  SendSource src{slot->mem.data(), st->size(), slot->chunk_size, slot->chunk_crcs, slot->gen_crc,
                 slot->generation};
  serve->sender.start(src, tuning(), now);
}

void Engine::Impl::on_lent_slot(const wire::Frame& f) noexcept {
  for (auto it = fetches.begin(); it != fetches.end(); ++it) {
    FetchOp& op = **it;
    if (op.id != f.seg_id || op.peer != f.src) continue;
    // A late answer to an earlier request of this load (resent, or before
    // it fell back to a stream) is no longer wanted.
    if (!op.ask_direct || op.assembler.active()) return;
    // Only what was asked for: the size and generation the load expects,
    // over a link that says the peer shares this memory.
    Link* l = link_to(op.peer);
    if (l == nullptr || !l->caps().direct_read || f.total_len != op.dest->size() ||
        (op.generation != 0 && f.generation != op.generation)) {
      bump(counters.bad_input);
      return;
    }
    op.lent = FetchOp::Lent{wire::direct_pid(f), wire::direct_fd(f), wire::direct_inode(f), f.epoch, f.generation,
                            f.chunk_size, f.gen_crc};
    fetches.erase(it);
    completed_fetches.push_back(&op);
    return;
  }
}

void Engine::Impl::on_fetch_data(wire::Frame& f, uint64_t now) noexcept {
  for (auto it = fetches.begin(); it != fetches.end(); ++it) {
    FetchOp& op = **it;
    if (op.id != f.seg_id || op.peer != f.src) continue;
    if (op.got_generation != 0) return;  // done; a late duplicate
    if (!op.assembler.active()) {
      if (!verified(f)) return;
      if (f.total_len != op.dest->size() || (op.generation != 0 && f.generation != op.generation)) {
        bump(counters.bad_input);
        return;
      }
      op.assembler.begin(op.dest->data(), f);
      op.got_epoch = f.epoch;
    }
    if (!op.assembler.matches(f)) {
      if (verified(f)) bump(counters.bad_input);
      return;
    }
    op.last_progress_ns = now;
    bool restart = false;
    switch (op.assembler.accept(f)) {
      case ChunkAssembler::Outcome::kStored: break;
      case ChunkAssembler::Outcome::kDuplicate: bump(counters.duplicates); break;
      case ChunkAssembler::Outcome::kCorrupt:
        bump(counters.corrupt_generations);
        restart = true;
        break;
      case ChunkAssembler::Outcome::kComplete: op.got_generation = f.generation; break;
      case ChunkAssembler::Outcome::kBadFrame:
        bump(counters.decode[static_cast<size_t>(wire::DecodeError::kChecksum)]);
        return;
    }
    // One ack per burst, as for replication: it says what the assembler
    // holds when it goes out (flush_acks), so later frames only update it.
    bool merged = false;
    for (auto& a : acks_due)
      if (a.fetch == &op) {
        a.restart |= restart;
        a.generation = f.generation;
        merged = true;
        break;
      }
    if (!merged) acks_due.push_back({link_to(op.peer), nullptr, &op, f.generation, restart});
    if (op.got_generation != 0) {
      // The final ack goes out with this burst's flush; the op ends now.
      fetches.erase(it);
      completed_fetches.push_back(&op);
    }
    return;
  }
}

bool Engine::Impl::offer_to_global(ReplicaStore& st) noexcept {
  // S7: the slot stays pinned until the store's copier has copied it.
  ReplicaStore::Slot* slot = st.latest();
  if (slot == nullptr) return true;
  auto& pin = st.writer_pin(*slot);
  pin.fetch_add(1);
  GlobalStore::Job job;
  job.set_name(st.name());  // a valid wire name always fits
  job.epoch = st.epoch();
  job.generation = slot->generation;
  job.size = st.size();
  job.data = slot->mem.data();
  job.pin = &pin;
  if (global->submit(job, st.id())) return true;
  pin.fetch_sub(1);  // the copier is behind: skipped (offered again by offer_skipped_to_global)
  return false;
}

void Engine::Impl::offer_skipped_to_global(uint64_t now) noexcept {
  if (!global || !global->has_skipped() || elapsed(now, global_offered_ns) < kGlobalRetryNs) return;
  global_offered_ns = now;
  std::array<uint64_t, GlobalStore::kMaxSkipped> ids;
  bool all = false;
  const size_t n = global->skipped_segments(ids, all);
  for (size_t i = 0; i < n; ++i)
    if (auto it = stores.find(ids[i]); it != stores.end()) (void)offer_to_global(*it->second);
  if (!all) return;
  // More segments skipped than remembered: every one is offered, as many
  // per round as the copier's queue takes (the sweep goes on from there
  // next round), so that it ends rather than skipping most again.
  size_t i = 0;
  for (auto& [id, st] : stores) {
    if (i++ < global_sweep_at) continue;
    if (!offer_to_global(*st)) {
      global_sweep_at = i - 1;  // from that one on, next round
      global->sweep_again();
      return;
    }
  }
  global_sweep_at = 0;
}

}  // namespace baton
