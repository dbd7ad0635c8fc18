// The answering side of ownership moves (S9, S22): a claim of a new owner
// epoch is granted or refused here; answers to this node's own queries and
// claims go to the control thread, which asks them (control/rounds.cc).
//
// Thread: the poll-token holder.

#include <algorithm>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

// A new owner asks this replica to accept a newer owner epoch (S22). Once it
// has, data from the old owner is refused, so the old owner can no longer
// make any generation durable; the answer hands over what is held.
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
  auto it = stores.find(f.seg_id);
  if (it == stores.end() || it->second->name() != f.name) {
    send_error(link, f, wire::ErrorCode::kNoSuchSegment, 0);
    return;
  }
  ReplicaStore& st = *it->second;
  // One owner per epoch: a second claimant of the same epoch is refused.
  if (f.epoch < st.epoch() || (f.epoch == st.epoch() && f.src != st.owner())) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, st.epoch());
    return;
  }
  if (f.epoch > st.epoch()) {
    record_event("segment " + st.name() + ": accepted owner epoch " + std::to_string(f.epoch) + " from node " +
                 std::to_string(f.src) + " (was " + std::to_string(st.epoch()) + " of node " +
                 std::to_string(st.owner()) + ")");
    st.adopt_epoch(f.src, f.epoch);
  }
  wire::Frame meta;
  meta.type = wire::MsgType::kFetchMeta;
  meta.flags = wire::kFlagFound | wire::kFlagGranted;
  meta.src = config.node_id;
  meta.dst = f.src;
  meta.seg_id = f.seg_id;
  meta.name = st.name();
  meta.epoch = f.epoch;
  meta.total_len = st.size();
  if (const ReplicaStore::Slot* slot = st.latest()) {
    meta.generation = slot->generation;
    meta.sack = slot->set;
    wire::set_aux_epoch(meta, slot->epoch);
  }
  send_control(link, meta);
}

// An answer to one of our queries or claims: for the control thread, which
// asks them (control/rounds.cc).
void Engine::Impl::on_fetch_meta(const wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagDirect) != 0) return on_lent_slot(f);  // a fetch's answer, not a round's
  forward_answer((f.flags & wire::kFlagGranted) != 0 ? RoundEvent::Kind::kGranted : RoundEvent::Kind::kFound, f);
}

}  // namespace baton
