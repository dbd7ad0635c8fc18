// The asking side of rounds (control/rounds.h): queries, claims, tombstones
// and set records in flight, on the control thread. A round arrives with this
// node's own answer filled in by the data path (which owns what it is
// about); the control thread asks every reachable peer that has not
// answered, asks again every kQueryRetryNs and the moment a silent peer
// becomes reachable, takes the answers the data path forwards, and finishes
// the round once it is settled: the answers its decision needs are in and
// every reachable peer answered or the soft deadline passed; at the hard
// deadline regardless (the answers needed may never come).
//
// Thread: control (Rounds), but for start_round, forward_answer and
// wake_round_waiters (the poll-token holder's side of the rings).

#include <algorithm>
#include <cstring>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

void Engine::Impl::start_round(RoundEvent::Kind kind, Op* op) noexcept {
  assert_token_holder();
  RoundEvent e;
  e.kind = kind;
  e.op = op;
  if (!round_starts.push(e)) {
    op->fail(Errc::kBusy, "too many questions to peers in flight; try again");
    wake_round_waiters();
    return;
  }
  wake_control();
}

void Engine::Impl::wake_round_waiters() noexcept {
  // After the op's done store (seq_cst): a waiter that counted itself
  // before this load is woken; one that did after sees its op done.
  rounds_settled.fetch_add(1, std::memory_order_seq_cst);
  if (round_waiters.load(std::memory_order_seq_cst) != 0) futex_wake_all(rounds_settled);
}

void Engine::Impl::forward_answer(RoundEvent::Kind kind, const wire::Frame& f) noexcept {
  assert_token_holder();
  RoundEvent e;
  e.kind = kind;
  e.src = f.src;
  e.flags = f.flags;
  e.gen_crc = f.gen_crc;
  e.chunk_size = f.chunk_size;
  e.seg_id = f.seg_id;
  e.epoch = f.epoch;
  e.generation = f.generation;
  e.total_len = f.total_len;
  e.sack = f.sack;
  e.aux_epoch = wire::aux_epoch(f);
  if (wire::RecordEntry r; kind == RoundEvent::Kind::kGranted && (f.flags & wire::kFlagRecord) != 0) {
    if (!wire::claim_record(f, r)) {  // a claim's answer whose record is not one: not an answer
      bump(counters.bad_input);
      return;
    }
    e.record = RoundEvent::Record{r.epoch, r.version, r.set, r.owner, r.deleted};
  }
  // Dropped when the ring is full (a flood of answers nobody asked for):
  // the peer is asked again within kQueryRetryNs, and answers again.
  if (!round_answers.push(e)) return;
  wake_control();
}

namespace {

bool answered(const RecordRound& r, uint16_t node) {
  return std::find(r.acked.begin(), r.acked.end(), node) != r.acked.end() ||
         std::find(r.refused.begin(), r.refused.end(), node) != r.refused.end();
}

template <typename OpT>
bool busy_name(const std::vector<OpT*>& ops, const OpT& op) {
  return std::any_of(ops.begin(), ops.end(), [&](const OpT* o) { return o->id == op.id; });
}

// A question to one peer, as the data path will send it.
ControlMsg question(wire::MsgType type, uint16_t flags, uint16_t peer, uint64_t seg_id, uint64_t epoch,
                    const std::string& name) {
  ControlMsg m;
  m.kind = ControlMsg::Kind::kSend;
  m.frame = static_cast<uint8_t>(type);
  m.flags = flags;
  m.node = peer;
  m.seg_id = seg_id;
  m.epoch = epoch;
  m.name_len = static_cast<uint8_t>(std::min(name.size(), sizeof m.name - 1));
  std::memcpy(m.name, name.data(), m.name_len);
  return m;
}

// Asks every peer of `op` that has not answered and can be reached.
template <typename OpT, typename Reachable, typename Make>
void ask(OpT& op, uint64_t now, uint16_t self, Reachable reachable, Make make, std::vector<ControlMsg>& out) {
  op.last_sent_ns = now;
  for (auto& a : op.answers) {
    if (a.answered || a.peer == self || !reachable(a.peer)) continue;
    a.asked = true;
    out.push_back(make(a.peer));
  }
}

// Finishes settled rounds (returns whether any did); asks the silent again
// when due, or at once when one not asked yet became reachable.
template <typename OpT, typename Settled, typename Reachable, typename Ask>
bool settle_or_ask(std::vector<OpT*>& ops, uint64_t now, Settled settled, Reachable reachable, Ask ask_again) {
  bool finished = false;
  for (auto it = ops.begin(); it != ops.end();) {
    OpT* op = *it;
    if (settled(*op)) {
      it = ops.erase(it);
      op->finish();  // its waiter may free it from here on
      finished = true;
      continue;
    }
    const bool newly_reachable = std::any_of(op->answers.begin(), op->answers.end(), [&](const auto& a) {
      return !a.asked && !a.answered && reachable(a.peer);
    });
    if (newly_reachable || elapsed(now, op->last_sent_ns) >= kQueryRetryNs) ask_again(*op);
    ++it;
  }
  return finished;
}

}  // namespace

void Rounds::step(uint64_t now, std::vector<ControlMsg>& out) noexcept {
  const uint16_t self = e_.config.node_id;
  auto reachable = [this, self](uint16_t peer) { return peer != self && detector_.reachable(peer); };
  auto ask_query = [&](QueryOp& q) {
    ask(q, now, self, reachable, [&](uint16_t p) {
      return question(wire::MsgType::kFetchRequest, wire::kFlagQuery, p, q.id, 0, q.name);
    }, out);
  };
  auto ask_claim = [&](ClaimOp& c) {
    ask(c, now, self, reachable, [&](uint16_t p) {
      return question(wire::MsgType::kClaim, 0, p, c.id, c.epoch, c.name);
    }, out);
  };
  auto ask_tombstone = [&](TombstoneOp& t) {
    ask(t, now, self, reachable, [&](uint16_t p) {
      return question(wire::MsgType::kSetRecord, wire::kFlagDeleted, p, t.id, t.epoch, t.name);
    }, out);
  };
  // What the data path saw: new rounds first (no answer to a round can
  // precede its start: it is asked only once started), then answers.
  bool finished = false;
  // A new round is asked at once, unless one of the same name is in flight.
  auto start = [&](auto& ops, auto* op, const char* busy, auto& ask_op) {
    if (busy_name(ops, *op)) {
      op->fail(Errc::kBusy, busy);
      finished = true;
      return;
    }
    ops.push_back(op);
    ask_op(*op);
  };
  RoundEvent e;
  while (e_.round_starts.pop(e) || e_.round_answers.pop(e)) {
    switch (e.kind) {
      case RoundEvent::Kind::kStartQuery:
        start(queries_, static_cast<QueryOp*>(e.op), "another load of this name is in progress", ask_query);
        break;
      case RoundEvent::Kind::kStartClaim:
        start(claims_, static_cast<ClaimOp*>(e.op), "another load of this name is in progress", ask_claim);
        break;
      case RoundEvent::Kind::kStartTombstone:
        start(tombstones_, static_cast<TombstoneOp*>(e.op), "another delete of this name is in progress",
              ask_tombstone);
        break;
      case RoundEvent::Kind::kFound:
        for (QueryOp* q : queries_) {
          if (q->id != e.seg_id) continue;
          for (auto& a : q->answers) {
            if (a.peer != e.src || a.answered) continue;
            a.answered = true;
            a.found = (e.flags & wire::kFlagFound) != 0;
            a.owner = (e.flags & wire::kFlagOwner) != 0;
            a.epoch = e.epoch;
            a.generation = e.generation;
            a.total_len = e.total_len;
            if ((e.flags & wire::kFlagRecord) != 0)
              a.record = SetRecord{e.aux_epoch, e.gen_crc, e.sack, static_cast<uint16_t>(e.chunk_size),
                                   (e.flags & wire::kFlagDeleted) != 0};
          }
        }
        break;
      case RoundEvent::Kind::kGranted:
        for (ClaimOp* c : claims_) {
          if (c->id != e.seg_id || e.epoch != c->epoch) continue;
          for (auto& a : c->answers) {
            if (a.peer != e.src || a.answered) continue;
            a.answered = true;
            a.promised = true;
            if (e.record.epoch != 0)
              a.record = SetRecord{e.record.epoch, e.record.version, e.record.set, e.record.owner, e.record.deleted};
            a.granted = (e.flags & wire::kFlagFound) != 0;
            if (!a.granted) continue;  // a promise alone: it holds no copy
            // A copy offered must be one this node could take: a size past
            // what it accepts (or none) is no copy, though the grant stands.
            if (e.generation != 0 && (e.total_len == 0 || e.total_len > e_.config.max_segment_size)) {
              bump(e_.counters.bad_input);
              continue;
            }
            a.data_epoch = e.aux_epoch;
            a.generation = e.generation;
            a.total_len = e.total_len;
            a.set = e.sack;
          }
        }
        break;
      case RoundEvent::Kind::kStartRecord: {  // replaces the segment's older proposal
        std::erase_if(set_records_, [&](const RecordRound& r) { return r.seg_id == e.seg_id; });
        RecordRound r{e.seg_id, e.epoch, e.generation, e.sack, {}, {}, 0};
        ((e.flags & wire::kFlagComplete) != 0 ? r.acked : r.refused).push_back(self);
        set_records_.push_back(std::move(r));
        break;
      }
      case RoundEvent::Kind::kRecordAck:
        for (RecordRound& r : set_records_)
          if (r.seg_id == e.seg_id && r.epoch == e.epoch && r.version == e.generation && !answered(r, e.src))
            r.acked.push_back(e.src);
        break;
      case RoundEvent::Kind::kRefused: {
        // A set record of the owner's own epoch refused: that node holds
        // another owner's record of it (two nodes creating one name at once).
        for (RecordRound& r : set_records_)
          if (r.seg_id == e.seg_id && r.epoch == e.epoch && !answered(r, e.src)) r.refused.push_back(e.src);
        // A claim's or tombstone's refusal names the epoch it refuses: one
        // of an earlier claim, or of a data frame of this node's from
        // before, arriving late (a lossy or reordering link) is not this
        // round's. (A peer of a version that leaves it 0 is taken at its word.)
        auto refused = [&e](auto& rounds) {
          for (auto* op : rounds)
            if (op->id == e.seg_id && (e.aux_epoch == op->epoch || (e.aux_epoch == 0 && e.epoch >= op->epoch)))
              for (auto& a : op->answers)
                if (a.peer == e.src && !a.answered) {
                  a.answered = true;
                  a.refused_epoch = e.epoch;
                  if constexpr (requires { a.refused_by_owner; }) a.refused_by_owner = (e.flags & wire::kFlagOwner) != 0;
                }
        };
        refused(tombstones_);
        refused(claims_);
        break;
      }
      case RoundEvent::Kind::kNoSuchSegment:
        for (ClaimOp* c : claims_)
          if (c->id == e.seg_id)
            for (auto& a : c->answers)
              if (a.peer == e.src) a.answered = true;
        break;
      case RoundEvent::Kind::kStored:
        for (TombstoneOp* t : tombstones_)
          if (t->id == e.seg_id && t->epoch == e.epoch)
            for (auto& a : t->answers)
              if (a.peer == e.src && !a.answered) {
                a.answered = true;
                a.stored = true;
              }
        break;
    }
  }
  auto everyone = [&](const auto& op) {
    return std::all_of(op.answers.begin(), op.answers.end(), [&](auto& a) { return a.answered || !reachable(a.peer); });
  };
  // A peer not heard from lately counts as unreachable, but it may be
  // starting or falsely suspected: fewer answers than needed wait on, up to
  // the hard deadline.
  auto settled = [&](const auto& op) {
    return (op.answered() >= op.need && (everyone(op) || now >= op.deadline_ns)) || now >= op.hard_deadline_ns;
  };
  finished |= settle_or_ask(queries_, now, settled, reachable, ask_query);
  finished |= settle_or_ask(claims_, now, settled, reachable, ask_claim);
  // A tombstone round that a newer owner refused ends once what it needs
  // is stored, or can no longer be (a delete that got it succeeds anyway:
  // delete.cc), or at its soft deadline.
  finished |= settle_or_ask(tombstones_, now, [&](const TombstoneOp& t) {
    if (t.enough()) return everyone(t) || now >= t.deadline_ns;
    return (t.refused() && (!t.reachable_enough() || everyone(t) || now >= t.deadline_ns)) ||
           now >= t.hard_deadline_ns;
  }, reachable, ask_tombstone);
  if (finished) e_.wake_round_waiters();
  step_set_records(now, out);
}

void Rounds::step_set_records(uint64_t now, std::vector<ControlMsg>& out) noexcept {
  const View& v = detector_.view();
  const uint32_t quorum = Engine::Impl::record_quorum(v);
  auto recorded = [&](const RecordRound& r, bool ok) {
    ControlMsg m;
    m.kind = ControlMsg::Kind::kRecorded;
    m.seg_id = r.seg_id;
    m.epoch = r.epoch;
    m.generation = r.version;
    m.alive = ok;
    out.push_back(m);
  };
  for (auto it = set_records_.begin(); it != set_records_.end();) {
    RecordRound& r = *it;
    if (r.acked.size() >= quorum) {
      recorded(r, true);
      it = set_records_.erase(it);
      continue;
    }
    // Too many hold another owner's record for this one to reach a quorum.
    if (r.refused.size() > v.expected_votes - std::min(quorum, v.expected_votes)) {
      recorded(r, false);
      it = set_records_.erase(it);
      continue;
    }
    if (elapsed(now, r.last_sent_ns) >= kQueryRetryNs / 4) {
      r.last_sent_ns = now;
      for (const uint16_t peer : e_.peer_nodes) {
        if (answered(r, peer) || !detector_.reachable(peer)) continue;
        ControlMsg m;
        m.kind = ControlMsg::Kind::kSend;
        m.frame = static_cast<uint8_t>(wire::MsgType::kSetRecord);
        m.node = peer;
        m.seg_id = r.seg_id;
        m.epoch = r.epoch;
        m.generation = r.version;
        m.set = r.set;
        out.push_back(m);
      }
    }
    ++it;
  }
}

void Rounds::abort() noexcept {
  RoundEvent e;
  while (e_.round_starts.pop(e))
    if (e.op != nullptr) e.op->fail(Errc::kUnavailable, "engine stopped");  // a set record has none
  while (e_.round_answers.pop(e)) continue;  // answers to rounds that are over
  for (QueryOp* q : queries_) q->finish();
  for (ClaimOp* c : claims_) c->finish();
  for (TombstoneOp* t : tombstones_) t->finish();
  queries_.clear();
  claims_.clear();
  tombstones_.clear();
  set_records_.clear();
  e_.wake_round_waiters();
}

void Rounds::forget(uint64_t seg_id) noexcept {
  std::erase_if(set_records_, [seg_id](const RecordRound& r) { return r.seg_id == seg_id; });
}

}  // namespace baton
