// The wire side of ownership moves (S9, S22): queries for what peers hold,
// claims of a new owner epoch, and the answers to both.
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

void Engine::Impl::on_fetch_meta(const wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagGranted) != 0) {
    for (ClaimOp* c : claims) {
      if (c->id != f.seg_id || f.epoch != c->epoch) continue;
      for (auto& a : c->answers) {
        if (a.peer != f.src || a.answered) continue;
        a.answered = true;
        a.granted = true;
        // A copy offered must be one this node could take: a size past what
        // it accepts (or none) is no copy, though the grant stands.
        if (f.generation != 0 && (f.total_len == 0 || f.total_len > config.max_segment_size)) {
          bump(counters.bad_input);
          continue;
        }
        a.data_epoch = wire::aux_epoch(f);
        a.generation = f.generation;
        a.total_len = f.total_len;
        a.set = f.sack;
      }
    }
    return;
  }
  for (QueryOp* q : queries) {
    if (q->id != f.seg_id) continue;
    for (auto& a : q->answers) {
      if (a.peer != f.src || a.answered) continue;
      a.answered = true;
      a.found = (f.flags & wire::kFlagFound) != 0;
      a.owner = (f.flags & wire::kFlagOwner) != 0;
      a.epoch = f.epoch;
      a.generation = f.generation;
      a.total_len = f.total_len;
      if ((f.flags & wire::kFlagRecord) != 0)
        a.record = SetRecord{wire::aux_epoch(f), f.gen_crc, f.sack, static_cast<uint16_t>(f.chunk_size),
                             (f.flags & wire::kFlagDeleted) != 0};
    }
  }
}

void Engine::Impl::send_claim(ClaimOp& c, uint64_t now) noexcept {
  c.last_sent_ns = now;
  for (auto& a : c.answers) {
    if (a.answered || a.peer == config.node_id || unreachable(a.peer)) continue;
    a.asked = true;
    Link* l = link_to(a.peer);
    if (l == nullptr) continue;
    wire::Frame req;
    req.type = wire::MsgType::kClaim;
    req.src = config.node_id;
    req.dst = a.peer;
    req.seg_id = c.id;
    req.epoch = c.epoch;
    req.name = c.name;
    send_control(*l, req);
  }
}

void Engine::Impl::send_query(QueryOp& q, uint64_t now) noexcept {
  q.last_sent_ns = now;
  for (auto& p : peer_states) {
    auto a = std::find_if(q.answers.begin(), q.answers.end(), [&](const QueryAnswer& x) { return x.peer == p.node; });
    if ((a != q.answers.end() && a->answered) || unreachable(p.node)) continue;
    if (a != q.answers.end()) a->asked = true;
    wire::Frame req;
    req.type = wire::MsgType::kFetchRequest;
    req.flags = wire::kFlagQuery;
    req.src = config.node_id;
    req.dst = p.node;
    req.seg_id = q.id;
    req.name = q.name;
    send_control(*p.link, req);
  }
}

}  // namespace baton
