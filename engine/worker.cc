// The worker: one poll loop that owns every link, every replica store and
// every transfer of this engine. Never blocks, never throws.

#include <immintrin.h>
#include <sys/prctl.h>

#include <algorithm>

#include "common/log.h"
#include "engine_impl.h"
#include "runtime/futex.h"

namespace baton {
namespace {

constexpr uint16_t kBurst = 32;
constexpr uint64_t kFetchRequestRetryNs = 50'000'000;
constexpr uint64_t kQueryRetryNs = 20'000'000;  // a lost query or answer must not read as "not found"

// Time since `since`, zero if `since` is later (stamped after this poll began).
inline uint64_t elapsed(uint64_t now, uint64_t since) noexcept { return now > since ? now - since : 0; }

inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) noexcept {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// Drives rounds of questions to peers (load queries, claims): the silent are
// asked again every kQueryRetryNs, and a peer not asked yet (it was
// unreachable) as soon as it can be reached; an op finishes, and its caller
// wakes, once `done` says so.
template <typename OpT, typename Done, typename Reachable, typename Resend>
bool step_rounds(std::vector<OpT*>& ops, uint64_t now, Done done, Reachable reachable, Resend resend) {
  bool busy = false;
  for (auto it = ops.begin(); it != ops.end();) {
    OpT* op = *it;
    if (done(*op)) {
      it = ops.erase(it);
      op->finish();
      busy = true;
      continue;
    }
    const bool newly_reachable = std::any_of(op->answers.begin(), op->answers.end(), [&](const auto& a) {
      return !a.asked && !a.answered && reachable(a.peer);
    });
    if (newly_reachable || elapsed(now, op->last_sent_ns) >= kQueryRetryNs) {
      resend(*op);
      busy = true;
    }
    ++it;
  }
  return busy;
}

}  // namespace

void Engine::Impl::run_worker() noexcept {
  // Short sleeps must stay short: the default 50 us timer slack would turn
  // every 1 us back-off step into 50.
  prctl(PR_SET_TIMERSLACK, 10'000UL, 0, 0, 0);
  prctl(PR_SET_NAME, "baton-worker", 0, 0, 0);
  std::unique_lock lock(poll_mu);
  const uint64_t spin_ns = uint64_t{config.idle_spin_us} * 1000;
  uint64_t idle_since = 0;
  uint32_t sleep_us = 1;
  while (running.load(std::memory_order_relaxed)) {
    if (handoff.load() != 0) {  // a caller polls for us meanwhile
      lock.unlock();
      park_worker();
      lock.lock();
      idle_since = 0;
      continue;
    }
    const uint64_t now = now_ns();
    if (poll_once(now)) {
      idle_since = 0;
      sleep_us = 1;
      continue;
    }
    // Idle. Spin for a while (the next frame usually comes within one round
    // trip), then sleep in growing steps, woken early by a posted command or
    // a caller that wants the poll token.
    if (idle_since == 0) idle_since = now;
    if (config.idle == IdlePolicy::kSpin || now - idle_since < spin_ns) {
      _mm_pause();
      continue;
    }
    const uint32_t w = wake.load();
    sleeping.store(true);
    if (rte_ring_count(commands) == 0 && handoff.load() == 0) futex_wait(wake, w, uint64_t{sleep_us} * 1000);
    sleeping.store(false);
    sleep_us = std::min(sleep_us * 2, config.max_idle_sleep_us);
  }
  // Nobody may be left waiting on an op the worker will never finish.
  for (QueryOp* q : queries) q->finish();
  for (ClaimOp* c : claims) c->finish();
  claims.clear();
  for (FetchOp* f : fetches) f->fail(Errc::kUnavailable, "engine stopped");
  queries.clear();
  fetches.clear();
  void* p;
  while (rte_ring_sc_dequeue(commands, &p) == 0) static_cast<Op*>(p)->fail(Errc::kUnavailable, "engine stopped");
}

void Engine::Impl::park_worker() noexcept {
  parked.store(true);
  for (;;) {
    const uint32_t h = handoff.load();
    if (h == 0 || !running.load()) break;
    futex_wait(handoff, h, uint64_t{config.max_idle_sleep_us} * 1000);
  }
  parked.store(false);
}

bool Engine::Impl::has_pending_work() const noexcept {
  if (!queries.empty() || !claims.empty() || !fetches.empty() || rte_ring_count(commands) != 0) return true;
  for (const auto& [id, seg] : owned)
    for (const auto& r : seg->replicas)
      if (r->sender.has_unsent()) return true;
  for (const auto& s : serves)
    if (s->sender.has_unsent()) return true;
  return false;
}

void Engine::Impl::note_poll_gap(uint64_t now) noexcept {
  const uint64_t gap = now - std::min(now, last_poll_ns);
  last_poll_ns = now;
  if (gap < failure_ns / 2 || gap == now) return;
  bump(counters.stalls);
  const uint64_t us = gap / 1000;
  if (us > counters.longest_stall_us.load(std::memory_order_relaxed))
    counters.longest_stall_us.store(us, std::memory_order_relaxed);
  BT_WARN("no poll for %lu ms (failure timeout %lu ms): peers may suspect this node; is the machine overloaded?",
          static_cast<unsigned long>(us / 1000), static_cast<unsigned long>(failure_ns / 1'000'000));
}

bool Engine::Impl::poll_once(uint64_t now) noexcept {
  note_poll_gap(now);
  bool busy = drain_commands();
  for (size_t li = 0; li < links.size(); ++li) {
    Link* link = links[li].get();
    RxFrame rx[kBurst];
    const uint16_t n = link->rx_burst(rx, kBurst);
    for (uint16_t i = 0; i < n; ++i) {
      wire::Frame f;
      // Payload CRCs are checked later, in the pass that copies each payload
      // where it belongs (see wire::decode).
      const wire::DecodeError err = wire::decode(rx[i].bytes, f, false);
      if (err != wire::DecodeError::kNone) {
        bump(counters.decode[static_cast<size_t>(err)]);
        BT_DEBUG("%s: dropped frame: %s", link->name().c_str(), wire::decode_error_name(err));
        continue;
      }
      if (f.src == link->peer()) heard_from(li, now);  // any valid frame is a sign of life
      on_frame(*link, f, now);
    }
    if (n > 0) {
      link->release_rx(rx, n);
      bump(counters.frames_rx, n);
      flush_acks();
      busy = true;
    }
  }
  busy |= pump_senders(now);
  busy |= step_ops(now);
  step_records(now);
  step_liveness(now);  // upkeep, not work: it must not keep an idle worker spinning
  step_replicas(now);
  for (auto& link : links) busy |= link->service(now);
  return busy;
}

bool Engine::Impl::drain_commands() noexcept {
  void* cmds[kBurst];
  const unsigned n = rte_ring_sc_dequeue_burst(commands, cmds, kBurst, nullptr);
  for (unsigned i = 0; i < n; ++i) static_cast<Op*>(cmds[i])->run();
  return n > 0;
}

bool Engine::Impl::verified(wire::Frame& f) noexcept {
  if (wire::verify_payload(f)) return true;
  bump(counters.decode[static_cast<size_t>(wire::DecodeError::kChecksum)]);
  return false;
}

void Engine::Impl::on_frame(Link& link, wire::Frame& f, uint64_t now) noexcept {
  if (f.dst != config.node_id && f.dst != wire::kBroadcast) {
    bump(counters.misdirected);
    return;
  }
  if (f.src != link.peer()) {  // a frame must come from the node its link reaches
    bump(counters.bad_input);
    return;
  }
  switch (f.type) {
    case wire::MsgType::kData: on_data(link, f); break;
    case wire::MsgType::kFetchData: on_fetch_data(f, now); break;
    case wire::MsgType::kAck: on_ack(f, now); break;
    case wire::MsgType::kFetchRequest: on_fetch_request(link, f, now); break;
    case wire::MsgType::kFetchMeta: on_fetch_meta(f); break;
    case wire::MsgType::kError: on_error(f); break;
    case wire::MsgType::kHeartbeat: on_heartbeat(f, now); break;  // liveness itself was noted by the caller
    case wire::MsgType::kClaim: on_claim(link, f); break;
    case wire::MsgType::kSetRecord: on_set_record(link, f); break;
  }
}

void Engine::Impl::send_control(Link& link, const wire::Frame& f) noexcept {
  std::byte buf[wire::kHeaderSize + wire::kMaxNameLen];
  const size_t len = wire::encode(f, buf);
  TxFrame tx{{buf, len}, {}};
  if (len == 0 || link.tx_burst(&tx, 1) != 1) bump(counters.tx_dropped);
  else bump(counters.frames_tx);
}

void Engine::Impl::send_error(Link& link, const wire::Frame& about, wire::ErrorCode code,
                              uint64_t epoch) noexcept {
  wire::Frame e;
  e.type = wire::MsgType::kError;
  e.src = config.node_id;
  e.dst = about.src;
  e.seg_id = about.seg_id;
  e.epoch = epoch;
  e.generation = about.generation;
  e.code = static_cast<uint16_t>(code);
  send_control(link, e);
}

// --- replica side ---------------------------------------------------------

void Engine::Impl::on_data(Link& link, wire::Frame& f) noexcept {
  // The fast path (the next chunk of the generation in progress) verifies the
  // frame while copying it; every other path verifies before acting on it.
  auto it = stores.find(f.seg_id);
  if (it == stores.end()) {
    if (!verified(f)) return;
    if (f.total_len > config.max_segment_size) {
      send_error(link, f, wire::ErrorCode::kNoRoom, 0);
      return;
    }
    // The one allocation on the worker: first sight of a segment.
    auto store = ReplicaStore::create(f, config.retain, config.numa_node);
    if (!store) {
      BT_WARN("cannot hold replica of %.*s: %s", int(f.name.size()), f.name.data(),
               store.error().message.c_str());
      send_error(link, f, wire::ErrorCode::kNoRoom, 0);
      return;
    }
    it = stores.emplace(f.seg_id, std::move(*store)).first;
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
      send_error(link, f, wire::ErrorCode::kStaleEpoch, st.epoch());
      return;
    }
    st.adopt_epoch(f.src, f.epoch);
  }
  fence_if_superseded(f.seg_id, f.epoch);
  bool restart = false;
  switch (st.accept(f)) {
    case ReplicaStore::Accept::kStored: break;
    case ReplicaStore::Accept::kStale: break;
    case ReplicaStore::Accept::kDuplicate: bump(counters.duplicates); break;
    case ReplicaStore::Accept::kPublished:
      bump(counters.published);
      BT_DEBUG("published %s generation %lu", st.name().c_str(), static_cast<unsigned long>(f.generation));
      if (global) {  // S7: the slot stays pinned until the file is safe
        ReplicaStore::Slot& slot = *st.latest();
        auto& pin = st.writer_pin(slot);
        pin.fetch_add(1);
        GlobalStore::Job job;
        job.set_name(st.name());  // a valid wire name always fits
        job.epoch = st.epoch();
        job.generation = slot.generation;
        job.size = st.size();
        job.data = slot.mem.data();
        job.pin = &pin;
        if (!global->submit(job)) pin.fetch_sub(1);  // the writer is behind: this generation is skipped
      }
      break;
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
      a.generation = f.generation;
      return;
    }
  acks_due.push_back({&link, &st, nullptr, f.generation, restart});
}

void Engine::Impl::flush_acks() noexcept {
  for (const auto& a : acks_due) {
    wire::Frame ack;
    ack.type = wire::MsgType::kAck;
    ack.src = config.node_id;
    ack.dst = a.link->peer();
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
      meta.flags |= wire::kFlagRecord;
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
  SendSource src{slot->mem.data(), st->size(), slot->chunk_size, slot->chunk_crcs, slot->gen_crc,
                 slot->generation};
  serve->sender.start(src, tuning(), now);
}

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

// --- loader side ----------------------------------------------------------

void Engine::Impl::on_fetch_meta(const wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagGranted) != 0) {
    for (ClaimOp* c : claims) {
      if (c->id != f.seg_id || f.epoch != c->epoch) continue;
      for (auto& a : c->answers) {
        if (a.peer != f.src || a.answered) continue;
        a.answered = true;
        a.granted = true;
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
        a.record = SetRecord{wire::aux_epoch(f), f.gen_crc, f.sack, static_cast<uint16_t>(f.chunk_size)};
    }
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
    acks_due.push_back({link_to(op.peer), nullptr, &op, f.generation, restart});
    if (op.got_generation != 0) {
      // The final ack goes out with this burst's flush; the op ends now.
      fetches.erase(it);
      completed_fetches.push_back(&op);
    }
    return;
  }
}

// --- primary side ---------------------------------------------------------

SenderTuning Engine::Impl::tuning() const noexcept {
  SenderTuning t;
  t.window = config.window;
  return t;
}

void Engine::Impl::start_replication(Segment& seg, Stage& stage, uint64_t now) noexcept {
  const int idx = static_cast<int>(&stage - seg.stages.data());
  if (seg.current_stage >= 0 && seg.current_stage != idx) seg.stages[seg.current_stage].state.store(Stage::kFree);
  seg.current_stage = idx;
  if (seg.fenced.load()) {
    stage.state.store(Stage::kFree);
    seg.current_stage = -1;
    return;
  }
  // Latest wins: a replica still receiving an older generation moves to this one.
  SendSource src{stage.mem.data(), seg.size, seg.chunk_size, stage.chunk_crcs, 0, stage.generation, &stage.ready};
  for (auto& r : seg.replicas)
    if (r->node != 0) r->sender.start(src, tuning(), now);
}

void Engine::Impl::on_ack(const wire::Frame& f, uint64_t now) noexcept {
  if ((f.flags & wire::kFlagFetch) != 0) {
    for (auto it = serves.begin(); it != serves.end(); ++it) {
      FetchServe& s = **it;
      if (s.id != f.seg_id || s.requester != f.src) continue;
      if (s.sender.on_ack(f, now)) s.last_progress_ns = now;
      if (s.sender.complete()) {
        s.slot->pins--;
        serves.erase(it);
      }
      return;
    }
    return;
  }
  auto it = owned.find(f.seg_id);
  if (it == owned.end()) return;
  Segment& seg = *it->second;
  if (f.epoch > seg.epoch.load()) {
    fence(seg);
    return;
  }
  for (auto& r : seg.replicas) {
    if (r->node != f.src) continue;
    r->sender.on_ack(f, now);
    // Only a replica that accepted this epoch holds anything for it.
    if ((f.flags & wire::kFlagComplete) != 0 && f.epoch == seg.epoch.load(std::memory_order_relaxed) &&
        f.generation > r->held.load(std::memory_order_relaxed)) {
      r->held.store(f.generation, std::memory_order_release);
      update_durable(seg);
    }
    return;
  }
}

void Engine::Impl::fence_if_superseded(uint64_t seg_id, uint64_t epoch) noexcept {
  if (auto it = owned.find(seg_id); it != owned.end() && epoch > it->second->epoch.load(std::memory_order_relaxed))
    fence(*it->second);
}

void Engine::Impl::fence(Segment& seg) noexcept {
  if (seg.fenced.exchange(true)) return;
  record_event("segment " + seg.name + " fenced: owner epoch " + std::to_string(seg.epoch.load()) +
               " was superseded; this node no longer owns it");
  for (auto& r : seg.replicas) r->sender.stop();
}

void Engine::Impl::on_error(const wire::Frame& f) noexcept {
  switch (static_cast<wire::ErrorCode>(f.code)) {
    case wire::ErrorCode::kStaleEpoch: {
      for (ClaimOp* c : claims)
        if (c->id == f.seg_id)
          for (auto& a : c->answers)
            if (a.peer == f.src && !a.answered) {
              a.answered = true;
              a.refused_epoch = f.epoch;
            }
      auto it = owned.find(f.seg_id);
      if (it != owned.end() && f.epoch > it->second->epoch.load()) fence(*it->second);
      // Our own epoch refused: that node holds another owner's record of it
      // (two nodes creating one name at once). Too many such and the record
      // can never reach a quorum.
      if (it != owned.end() && f.epoch == it->second->epoch.load()) {
        auto& p = it->second->pending;
        if (p.active && p.sent && std::find(p.refused.begin(), p.refused.end(), f.src) == p.refused.end()) {
          p.refused.push_back(f.src);
          const View& v = membership->view();
          if (p.refused.size() > v.expected_votes - record_quorum()) p.failed = true;
        }
      }
      return;
    }
    case wire::ErrorCode::kNoSuchSegment:
      for (ClaimOp* c : claims)
        if (c->id == f.seg_id)
          for (auto& a : c->answers)
            if (a.peer == f.src) a.answered = true;
      for (auto it = fetches.begin(); it != fetches.end(); ++it) {
        if ((*it)->id != f.seg_id || (*it)->peer != f.src) continue;
        FetchOp* op = *it;
        fetches.erase(it);
        op->fail(Errc::kNotFound, "the replica no longer holds that generation");
        return;
      }
      return;
    case wire::ErrorCode::kNoRoom:
      BT_WARN("node %u cannot hold segment %016lx", f.src, static_cast<unsigned long>(f.seg_id));
      return;
  }
}

bool Engine::Impl::pump_one(Link& link, ChunkSender& sender, const wire::Frame& proto, uint64_t now) noexcept {
  uint32_t idx[kBurst];
  const uint16_t n = sender.plan(now, idx, kBurst);
  if (n == 0) return false;
  TxFrame tx[kBurst];
  alignas(64) std::byte heads[kBurst][wire::kHeaderSize + wire::kMaxNameLen + 1];
  const SendSource& src = sender.source();
  wire::Frame f = proto;
  for (uint16_t i = 0; i < n; ++i) {
    f.chunk_index = idx[i];
    const uint32_t len = wire::chunk_len(src.total_len, src.chunk_size, idx[i]);
    const std::byte* payload = src.data + uint64_t{idx[i]} * src.chunk_size;
    // The stored CRC is final; un-finalise it to extend over the header.
    const uint32_t state = src.chunk_crcs[idx[i]] ^ 0xFFFFFFFFu;
    const size_t h = wire::encode_header(f, state, len, heads[i]);
    tx[i] = TxFrame{{heads[i], h}, {payload, len}};
  }
  const uint16_t k = link.tx_burst(tx, n);
  const uint64_t retransmits_before = sender.retransmits();
  sender.sent(idx, k, now);
  bump(counters.retransmits, sender.retransmits() - retransmits_before);
  bump(counters.frames_tx, k);
  return k > 0;
}

bool Engine::Impl::pump_senders(uint64_t now) noexcept {
  bool busy = false;
  for (auto& [id, seg] : owned) {
    if (seg->current_stage < 0) continue;
    const Stage& stage = seg->stages[seg->current_stage];
    for (auto& r : seg->replicas) {
      if (!r->sender.active()) continue;
      wire::Frame proto;
      proto.type = wire::MsgType::kData;
      proto.src = config.node_id;
      proto.dst = r->node;
      proto.seg_id = seg->id;
      proto.epoch = seg->epoch.load(std::memory_order_relaxed);
      proto.generation = stage.generation;
      proto.total_len = seg->size;
      proto.chunk_size = seg->chunk_size;
      proto.chunk_count = wire::chunk_count_for(seg->size, seg->chunk_size);
      if (stage.ready == proto.chunk_count) {  // snapshot complete: the checksum is known
        proto.gen_crc = stage.gen_crc;
        proto.flags = wire::kFlagGenCrc;
      }
      proto.name = seg->name;
      proto.sack = replica_set(*seg);
      if (Link* l = link_to(r->node.load(std::memory_order_relaxed))) busy |= pump_one(*l, r->sender, proto, now);
    }
  }
  for (auto& s : serves) {
    if (!s->sender.active()) continue;
    const SendSource& src = s->sender.source();
    wire::Frame proto;
    proto.type = wire::MsgType::kFetchData;
    proto.src = config.node_id;
    proto.dst = s->requester;
    proto.seg_id = s->id;
    proto.epoch = s->store->epoch();
    proto.generation = src.generation;
    proto.total_len = src.total_len;
    proto.chunk_size = src.chunk_size;
    proto.chunk_count = wire::chunk_count_for(src.total_len, src.chunk_size);
    proto.gen_crc = src.gen_crc;
    proto.flags = wire::kFlagGenCrc;
    proto.name = s->store->name();
    if (Link* l = link_to(s->requester)) busy |= pump_one(*l, s->sender, proto, now);
  }
  return busy;
}

// --- failure detector (S17) -------------------------------------------------

void Engine::Impl::record_event(std::string text) noexcept {
  BT_INFO("event: %s", text.c_str());
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  std::lock_guard lock(events_mu);
  event_log.push_back(Event{static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000, std::move(text)});
  if (event_log.size() > 256) event_log.pop_front();
}

void Engine::Impl::heard_from(size_t i, uint64_t now) noexcept {
  LinkState& ls = link_states[i];
  ls.last_heard_ns = now;
  PeerState& p = *peer_by_node.at(ls.link->peer());
  p.last_heard_ns = now;
  if (!ls.alive) {
    ls.alive = true;
    if (p.alive) record_event("link " + ls.link->name() + " up");
  }
  if (!p.alive) {
    p.alive = true;
    p.ever_heard = true;
    membership_dirty = true;
    record_event("node " + std::to_string(p.node) + " up");
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

void Engine::Impl::step_liveness(uint64_t now) noexcept {
  const View& v = membership->view();
  for (auto& ls : link_states) {
    if (now - std::min(now, ls.last_sent_ns) >= heartbeat_ns) {
      wire::Frame hb;
      hb.type = wire::MsgType::kHeartbeat;
      hb.src = config.node_id;
      hb.dst = ls.link->peer();
      hb.epoch = incarnation;
      hb.generation = ++ls.heartbeat_seq;
      // This node's view, so peers can tell whether they agree, and its
      // placement tags.
      hb.seg_id = v.digest();
      hb.total_len = v.id;
      if (v.quorate) hb.flags = wire::kFlagQuorate;
      hb.chunk_index = config.blade != 0 ? config.blade : config.node_id;
      hb.chunk_count = config.power_domain;
      hb.chunk_size = static_cast<uint32_t>(config.numa_node + 1);
      send_control(*ls.link, hb);
      ls.last_sent_ns = now;
    }
    if (ls.alive && (now - std::min(now, ls.last_heard_ns) >= failure_ns || !ls.link->up())) {
      ls.alive = false;
      const PeerState& p = *peer_by_node.at(ls.link->peer());
      const bool others = std::any_of(p.links.begin(), p.links.end(), [](const LinkState* l) { return l->alive; });
      // A link failure is not a node failure while another link still hears it.
      if (others)
        record_event("link " + ls.link->name() + " down (" + (ls.link->up() ? "silent" : "device down") + "); node " +
                     std::to_string(p.node) + " still reachable over another link");
    }
  }
  for (auto& p : peer_states) {
    const LinkState* live = nullptr;
    for (const LinkState* l : p.links)
      if (l->alive && live == nullptr) live = l;
    if (live != nullptr) {
      // Frames go over a link that works (this runs every poll, after rx).
      for (const LinkState* l : p.links)
        if (l->link == p.link && !l->alive) p.link = live->link;
      continue;
    }
    if (!p.alive) continue;
    // Dead: every link to it is silent or down.
    p.alive = false;
    membership_dirty = true;
    const bool any_up = std::any_of(p.links.begin(), p.links.end(), [](const LinkState* l) { return l->link->up(); });
    record_event("node " + std::to_string(p.node) + " down (" +
                 (any_up ? "silent for " + std::to_string((now - std::min(now, p.last_heard_ns)) / 1'000'000) + " ms"
                         : std::string(p.links.size() > 1 ? "every link down" : "link down")) +
                 ")");
  }
  if (membership_dirty) step_membership();
}

void Engine::Impl::step_membership() noexcept {
  membership_dirty = false;
  uint16_t alive[256];
  size_t n = 0;
  for (const auto& p : peer_states)
    if (p.alive && n < std::size(alive)) alive[n++] = p.node;
  if (!membership->update({alive, n})) return;
  const View& v = membership->view();
  {
    std::lock_guard lock(view_mu);
    view = v;
  }
  record_event(v.to_string());
}

void Engine::Impl::on_heartbeat(const wire::Frame& f, uint64_t now) noexcept {
  if (auto it = peer_by_node.find(f.src); it != peer_by_node.end()) {
    PeerState& p = *it->second;
    // A heartbeat names its sender's incarnation: a new one means the node
    // restarted and lost everything it held (its memory is the storage).
    if (p.incarnation != f.epoch) {
      const bool restarted = p.incarnation != 0;
      p.incarnation = f.epoch;
      if (restarted) on_peer_restarted(p.node, now);
    }
    p.blade = f.chunk_index;
    p.power_domain = f.chunk_count;
    p.numa_node = static_cast<int>(f.chunk_size) - 1;
  }
  // A report about a view this node does not share yet is news only once
  // the failure detector catches up; agreement is rechecked then.
  if (!membership->reported(f.src, f.seg_id)) return;
  const View& v = membership->view();
  {
    std::lock_guard lock(view_mu);
    view = v;
  }
  if (v.agreed && v.members.size() > 1) record_event("view " + std::to_string(v.id) + " agreed by every member");
}

void Engine::Impl::on_peer_restarted(uint16_t node, uint64_t now) noexcept {
  record_event("node " + std::to_string(node) + " restarted: a new incarnation, holding nothing it held before");
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
        r->sender.start(SendSource{stage->mem.data(), seg.size, seg.chunk_size, stage->chunk_crcs, 0,
                                   stage->generation, &stage->ready},
                        tuning(), now);
    }
    // It lost its copy of the set record too: record the set again (at a
    // quorum that counts it afresh), once a majority of the set holds the
    // latest generation; durability waits meanwhile.
    auto& p = seg.pending;
    if (p.active) {
      std::erase(p.acked, node);
      std::erase(p.refused, node);
    } else if (!seg.recorded_set.empty()) {
      propose_set(seg, stage != nullptr ? stage->generation : 0);
    }
  }
}

// --- re-replication (S12) ----------------------------------------------------

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
  const uint64_t d = held[n / 2];
  if (d > seg.durable.load(std::memory_order_relaxed)) seg.durable.store(d, std::memory_order_release);
}

// --- set records ---------------------------------------------------------------
//
// The owner writes its segment's replica set to every node and counts it once
// a quorum of nodes stored it. A loader hears from a quorum of nodes, so it
// sees the newest recorded set (or a newer proposal), and claims from a
// majority of that set. A set is proposed only once a majority of it holds
// every generation that may be durable, so that majority intersects the
// holders of any durable generation.

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
  p.acked.clear();
  p.refused.clear();
}

void Engine::Impl::withdraw_record(Segment& seg) noexcept {
  auto& p = seg.pending;
  for (uint16_t n : p.acked) {
    if (n == config.node_id) {
      auto it = records.find(seg.id);
      if (it != records.end() && it->second.owner == config.node_id && it->second.version == p.version)
        records.erase(it);
      continue;
    }
    if (Link* l = link_to(n)) send_record(seg, *l, n, true);
  }
  p.active = false;
}

void Engine::Impl::send_record(Segment& seg, Link& link, uint16_t peer, bool withdraw) noexcept {
  wire::Frame f;
  f.type = wire::MsgType::kSetRecord;
  if (withdraw) f.flags = wire::kFlagRestart;
  f.src = config.node_id;
  f.dst = peer;
  f.seg_id = seg.id;
  f.name = seg.name;
  f.epoch = seg.epoch.load(std::memory_order_relaxed);
  f.generation = seg.pending.version;
  wire::ReplicaSet set{};
  for (size_t i = 0; i < seg.pending.set.size() && i < set.size(); ++i) set[i] = seg.pending.set[i];
  f.sack = wire::pack_set(set);
  send_control(link, f);
}

void Engine::Impl::step_records(uint64_t now) noexcept {
  for (auto& [id, segp] : owned) {
    Segment& seg = *segp;
    auto& p = seg.pending;
    if (!p.active || seg.fenced.load(std::memory_order_relaxed)) continue;
    if (!p.sent) {
      size_t holding = 0;
      for (uint16_t n : p.set) holding += held_by(seg, n) >= p.need;
      if (holding * 2 <= p.set.size()) continue;
      p.sent = true;
      p.last_sent_ns = 0;
      wire::ReplicaSet packed{};
      for (size_t i = 0; i < p.set.size() && i < packed.size(); ++i) packed[i] = p.set[i];
      const SetRecord mine{seg.epoch.load(), p.version, wire::pack_set(packed), config.node_id};
      auto& stored = records[id];
      if (stored.epoch == mine.epoch && stored.owner != mine.owner && stored.owner != 0) {
        p.refused.push_back(config.node_id);  // another node wrote this epoch here first
        const View& v = membership->view();
        if (p.refused.size() > v.expected_votes - record_quorum()) p.failed = true;
      } else {
        if (mine.newer_than(stored)) stored = mine;
        p.acked.push_back(config.node_id);
      }
    }
    if (p.failed) continue;  // the creator gives up (Engine::create)
    if (p.acked.size() >= record_quorum()) {
      seg.recorded_set = p.set;
      seg.recorded_version = p.version;
      p.active = false;
      std::string members;
      for (uint16_t n : p.set) members += (members.empty() ? "" : ",") + std::to_string(n);
      record_event("segment " + seg.name + ": replica set {" + members + "} recorded at epoch " +
                   std::to_string(seg.epoch.load()) + " (version " + std::to_string(p.version) + ")");
      update_durable(seg);
      continue;
    }
    if (elapsed(now, p.last_sent_ns) < kQueryRetryNs / 4) continue;
    p.last_sent_ns = now;
    for (auto& ps : peer_states) {
      const uint16_t peer = ps.node;
      if (std::find(p.acked.begin(), p.acked.end(), peer) != p.acked.end() ||
          std::find(p.refused.begin(), p.refused.end(), peer) != p.refused.end() || unreachable(peer))
        continue;
      send_record(seg, *ps.link, peer);
    }
  }
}

void Engine::Impl::on_set_record(Link& link, const wire::Frame& f) noexcept {
  if ((f.flags & wire::kFlagComplete) != 0) {  // an ack: the owner's side
    auto it = owned.find(f.seg_id);
    if (it == owned.end()) return;
    auto& p = it->second->pending;
    if (p.active && p.sent && f.generation == p.version && f.epoch == it->second->epoch.load() &&
        std::find(p.acked.begin(), p.acked.end(), f.src) == p.acked.end())
      p.acked.push_back(f.src);
    return;
  }
  auto it = records.find(f.seg_id);
  if ((f.flags & wire::kFlagRestart) != 0) {  // withdrawn by the node that wrote it
    if (it != records.end() && it->second.owner == f.src && it->second.epoch == f.epoch &&
        it->second.version == f.generation)
      records.erase(it);
    return;
  }
  if (it == records.end()) {
    if (records.size() >= 65536) {  // a bound on what peers can make this node keep
      bump(counters.bad_input);
      return;
    }
    it = records.emplace(f.seg_id, SetRecord{}).first;
  }
  const SetRecord proposed{f.epoch, f.generation, f.sack, f.src};
  // A record from an older owner epoch, or from a second owner of the same
  // one (two nodes creating one new name at once), is refused like its
  // data: the sender learns it was superseded.
  if (f.epoch < it->second.epoch || (f.epoch == it->second.epoch && f.src != it->second.owner)) {
    bump(counters.stale_epoch);
    send_error(link, f, wire::ErrorCode::kStaleEpoch, it->second.epoch);
    return;
  }
  if (proposed.newer_than(it->second)) it->second = proposed;
  fence_if_superseded(f.seg_id, f.epoch);
  wire::Frame ack = f;
  ack.src = config.node_id;
  ack.dst = f.src;
  ack.flags = wire::kFlagComplete;
  send_control(link, ack);
}

void Engine::Impl::step_replicas(uint64_t now) noexcept {
  if (now - std::min(now, last_replica_check_ns) < heartbeat_ns) return;
  last_replica_check_ns = now;
  // Placement decisions only in a quorate view that every member shares: a
  // minority partition, or a view still settling, moves nothing.
  const View& v = membership->view();
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
        r->sender.start(SendSource{st.mem.data(), seg->size, seg->chunk_size, st.chunk_crcs, 0, st.generation, &st.ready},
                        tuning(), now);
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
    r->sender.start(SendSource{stage.mem.data(), seg.size, seg.chunk_size, stage.chunk_crcs, 0, stage.generation,
                               &stage.ready},
                    tuning(), now);
    propose_set(seg, stage.generation);
    return;
  }
}

bool Engine::Impl::step_ops(uint64_t now) noexcept {
  bool busy = false;
  for (FetchOp* op : completed_fetches) op->finish();
  busy |= !completed_fetches.empty();
  completed_fetches.clear();
  // A round (query or claim) is done once it has the answers its decision
  // needs and every reachable peer answered or the soft deadline passed. A
  // peer not heard from lately counts as unreachable, but it may be starting
  // or falsely suspected: fewer answers than needed wait on, up to the hard
  // deadline.
  auto settled = [this, now](const auto& op) {
    const bool everyone = std::all_of(op.answers.begin(), op.answers.end(),
                                      [this](auto& a) { return a.answered || unreachable(a.peer); });
    return (op.answered() >= op.need && (everyone || now >= op.deadline_ns)) || now >= op.hard_deadline_ns;
  };
  auto reachable = [this](uint16_t peer) { return peer != config.node_id && !unreachable(peer); };
  busy |= step_rounds(queries, now, settled, reachable, [&](QueryOp& q) { send_query(q, now); });
  busy |= step_rounds(claims, now, settled, reachable, [&](ClaimOp& c) { send_claim(c, now); });
  const uint64_t timeout = uint64_t{config.fetch_timeout_ms} * 1'000'000;
  for (auto it = fetches.begin(); it != fetches.end();) {
    FetchOp* op = *it;
    if (elapsed(now, op->last_progress_ns) >= timeout || unreachable(op->peer)) {
      it = fetches.erase(it);
      op->fail(Errc::kTimeout, unreachable(op->peer) ? "node " + std::to_string(op->peer) + " died during the fetch"
                                                      : "no progress from node " + std::to_string(op->peer));
      busy = true;
      continue;
    }
    if (!op->assembler.active() && elapsed(now, op->last_request_ns) >= kFetchRequestRetryNs) {
      send_fetch_request(*op, now);
      busy = true;
    }
    ++it;
  }
  for (auto it = serves.begin(); it != serves.end();) {
    if (elapsed(now, (*it)->last_progress_ns) >= timeout) {
      (*it)->slot->pins--;
      it = serves.erase(it);
    } else {
      ++it;
    }
  }
  return busy;
}

void Engine::Impl::send_fetch_request(FetchOp& op, uint64_t now) noexcept {
  wire::Frame req;
  req.type = wire::MsgType::kFetchRequest;
  req.src = config.node_id;
  req.dst = op.peer;
  req.seg_id = op.id;
  req.generation = op.generation;
  req.name = op.name;
  if (Link* l = link_to(op.peer)) send_control(*l, req);
  op.last_request_ns = now;
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
