// The answering side of ownership moves (S9, S22): a claim of a new owner
// epoch is granted or refused here; answers to this node's own queries and
// claims go to the control thread, which asks them (control/rounds.cc).
//
// Thread: the poll-token holder.

#include <algorithm>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

// A new owner asks every node to accept a newer owner epoch (S22). A replica
// that accepts refuses the old owner's data from then on, so the old owner
// can no longer make any generation durable through it, and hands over what
// it holds; every node that accepts promises to store no set record of an
// older epoch, and says which record it holds (answer_claim).
void Engine::Impl::on_claim(Link& link, const wire::Frame& f) noexcept {
  if (auto it = owned.find(f.seg_id); it != owned.end()) {
    Segment& seg = *it->second;
    // A live owner refuses a claim that is not above its own epoch; one
    // that is means it was cut off: it is fenced, and answers below from
    // what it holds as a replica of the new owner, like any other node.
    if (!seg.fenced.load() && f.epoch <= seg.epoch.load()) {
      bump(counters.stale_epoch);
      send_error(link, f, wire::ErrorCode::kStaleEpoch, seg.epoch.load());
      return;
    }
    fence(seg);
  } else if (const uint64_t mine = table.unused_claim(f.seg_id); mine != 0 && f.epoch <= mine) {
    // A load here won this epoch or a newer one and is turning it into
    // ownership: one owner per epoch, as above. (Its own copy, promoted,
    // may have left the stores meanwhile, which answered "no copy".)
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, mine);
    return;
  }
  const ClaimAnswer a = answer_claim(f.seg_id, f.name, f.epoch, f.src);
  if (a.refused_epoch != 0) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, a.refused_epoch);
    return;
  }
  if (!a.promised) {  // no room for the promise: nothing taken
    send_error(link, f, wire::ErrorCode::kNoSuchSegment, 0);
    return;
  }
  wire::Frame meta;
  meta.type = wire::MsgType::kFetchMeta;
  meta.flags = wire::kFlagGranted | (a.granted ? wire::kFlagFound : 0);
  meta.src = config.node_id;
  meta.dst = f.src;
  meta.seg_id = f.seg_id;
  meta.name = f.name;
  meta.epoch = f.epoch;
  if (a.granted) {
    meta.total_len = a.total_len;
    meta.generation = a.generation;
    meta.sack = a.set;
    wire::set_aux_epoch(meta, a.data_epoch);
  }
  std::byte entry[wire::kRecordEntryHead + wire::kMaxNameLen];
  const size_t len = a.record.epoch == 0 ? 0 : wire::put_record_entry(entry, 0, wire::RecordEntry{
      f.name, a.record.epoch, a.record.version, a.record.set, a.record.owner, a.record.deleted});
  if (len != 0) {
    meta.flags |= wire::kFlagRecord;
    meta.payload = std::span<const std::byte>(entry, len);
  }
  send_control(link, meta);
}

ClaimAnswer Engine::Impl::answer_claim(uint64_t seg_id, std::string_view name, uint64_t epoch,
                                       uint16_t claimant) noexcept {
  ClaimAnswer a{config.node_id, true};
  // A newer claim was promised here, or this very epoch to another node.
  if (const uint64_t promised = promise_refuses(seg_id, epoch, claimant)) {
    a.refused_epoch = promised;
    return a;
  }
  auto it = stores.find(seg_id);
  ReplicaStore* st = it != stores.end() && it->second->name() == name ? it->second.get() : nullptr;
  // One owner per epoch: a second claimant of the same one is refused.
  if (st != nullptr && (epoch < st->epoch() || (epoch == st->epoch() && claimant != st->owner()))) {
    a.refused_epoch = st->epoch();
    return a;
  }
  if (!promise(seg_id, epoch, claimant)) return a;
  a.promised = true;
  if (auto r = records.find(seg_id); r != records.end() && r->second.epoch != 0) a.record = r->second;
  if (st == nullptr) return a;  // nothing to hand over: a promise alone
  if (epoch > st->epoch()) {
    record_event("segment " + st->name() + ": accepted owner epoch " + std::to_string(epoch) + " from node " +
                 std::to_string(claimant) + " (was " + std::to_string(st->epoch()) + " of node " +
                 std::to_string(st->owner()) + ")");
    st->adopt_epoch(claimant, epoch);
  }
  a.granted = true;
  a.total_len = st->size();
  if (const ReplicaStore::Slot* slot = st->latest()) {
    a.data_epoch = slot->epoch;
    a.generation = slot->generation;
    a.set = slot->set;
  }
  return a;
}

bool Engine::Impl::promise(uint64_t seg_id, uint64_t epoch, uint16_t node) noexcept {
  auto it = promises.find(seg_id);
  if (it == promises.end()) {
    if (promises.size() >= kMaxRecords) {  // the bound `records` keeps
      bump(counters.bad_input);
      return false;
    }
    promises.emplace(seg_id, Promise{epoch, node});
    return true;
  }
  if (promise_refuses(seg_id, epoch, node) != 0) return false;
  it->second = Promise{epoch, node};
  return true;
}

// An answer to one of our queries or claims: for the control thread, which
// asks them (control/rounds.cc).
void Engine::Impl::on_fetch_meta(wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagDirect) != 0) return on_lent_slot(f);  // a fetch's answer, not a round's
  if (!f.payload.empty() && !verified(f)) return;  // a claim's answer and the record it carries
  forward_answer((f.flags & wire::kFlagGranted) != 0 ? RoundEvent::Kind::kGranted : RoundEvent::Kind::kFound, f);
}

}  // namespace baton
