// The worker: one poll loop that owns every link, every replica store and
// every transfer of this engine, and moves frames and bytes: the data path
// (replication, acks, fetches; the replica side is in replica.cc). Liveness and views are decided on the
// control thread (control/detector.cc, control_thread.cc), which this loop
// hears from through a ring; what it decides about ownership (placement,
// records, claims in engine/control/) it still runs itself. Never blocks,
// never throws.

#include <immintrin.h>
#include <sys/prctl.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"
#include "runtime/futex.h"

namespace baton {
namespace {

constexpr uint16_t kBurst = 32;

}  // namespace

void Engine::Impl::run_worker() noexcept {
  // Short sleeps must stay short: the default 50 us timer slack would turn
  // every 1 us back-off step into 50.
  prctl(PR_SET_TIMERSLACK, 10'000UL, 0, 0, 0);
  prctl(PR_SET_NAME, "baton-worker", 0, 0, 0);
  token.worker_take();
  const uint64_t spin_ns = uint64_t{config.idle_spin_us} * 1000;
  uint64_t idle_since = 0;
  uint32_t sleep_us = 1;
  while (running.load(std::memory_order_relaxed)) {
    if (token.wanting_now() != 0) {  // a caller polls for us meanwhile
      token.worker_drop();
      park_worker();
      token.worker_take();
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
    // Asleep, the worker does not hold the poll token: a caller that wants
    // it (a commit) takes it at once instead of waking the worker first and
    // spinning until it lets go, which cost a cross-vCPU wake-up per commit,
    // and a whole timeslice when both landed on one vCPU.
    const uint32_t w = wake.load();
    sleeping.store(true);
    token.worker_drop();
    if (queued.load() == 0 && token.wanting_now() == 0) futex_wait(wake, w, uint64_t{sleep_us} * 1000);
    token.worker_take();
    sleeping.store(false);
    sleep_us = std::min(sleep_us * 2, config.max_idle_sleep_us);
  }
  // Nobody may be left waiting on an op the worker will never finish
  // (rounds: the control thread's, finished once both threads are gone).
  for (FetchOp* f : fetches) f->fail(Errc::kUnavailable, "engine stopped");
  fetches.clear();
  void* p;
  while (rte_ring_sc_dequeue(commands, &p) == 0) static_cast<Op*>(p)->fail(Errc::kUnavailable, "engine stopped");
}

void Engine::Impl::park_worker() noexcept {
  // A caller polls meanwhile; the worker only has to take over once nobody
  // does. release_token() wakes it when work would otherwise wait, and the
  // control thread when it has news; otherwise it looks again by itself.
  // Each look that finds a caller still polling doubles the next nap, up to
  // kMaxParkNaps x max_idle_sleep_us: every wake-up preempts whatever runs
  // on that vCPU (the polling caller, or another process's poll loop), and
  // at one every 200 us a tight commit loop paid it at its p99
  // (docs/performance.md). The price: frames that arrive after a long
  // poll by a caller ends wait up to one nap (1.6 ms by default), once.
  constexpr uint64_t kMaxParkNaps = 8;
  const uint64_t first = uint64_t{config.max_idle_sleep_us} * 1000;
  uint64_t nap = first;
  parked.store(true);
  for (;;) {
    const uint32_t h = token.wanting_now();
    if (h == 0 || !running.load()) break;
    futex_wait(token.wanting(), h, nap);
    nap = std::min(nap * 2, first * kMaxParkNaps);
  }
  parked.store(false);
}

template <typename Pred>
bool Engine::Impl::any_sender(Pred&& pred) const noexcept {
  for (const auto& [id, seg] : owned)
    for (const auto& r : seg->replicas)
      if (pred(r->sender)) return true;
  for (const auto& s : serves)
    if (pred(s->sender)) return true;
  return false;
}

bool Engine::Impl::has_pending_work(bool count_snapshots) const noexcept {
  if (!fetches.empty() || !allocating.empty() || (count_snapshots && !cow_behind.empty()) ||
      queued.load() != 0 || !to_data.empty())
    return true;
  return any_sender([](const ChunkSender& s) { return s.has_unsent(); });
}

bool Engine::Impl::has_transfers_in_flight() const noexcept {
  return any_sender([](const ChunkSender& s) { return s.in_flight(); });
}

void Engine::Impl::note_poll_gap(uint64_t now) noexcept {
  const uint64_t gap = now - std::min(now, last_poll_ns);
  last_poll_ns = now;
  if (gap < failure_ns / 2 || gap == now) return;
  bump(counters.stalls);
  const uint64_t us = gap / 1000;
  if (us > counters.longest_stall_us.load(std::memory_order_relaxed))
    counters.longest_stall_us.store(us, std::memory_order_relaxed);
  counters.last_stall_ns.store(now, std::memory_order_relaxed);
  BT_WARN("node %u: no poll for %lu ms (failure timeout %lu ms): peers may suspect this node; is the machine "
          "overloaded?",
          config.node_id, static_cast<unsigned long>(us / 1000), static_cast<unsigned long>(failure_ns / 1'000'000));
}

bool Engine::Impl::install_allocated() noexcept {
  if (!allocator || allocating.empty()) return false;
  bool any = false;
  SlotAllocator::Done d;
  while (allocator->take(d)) {
    any = true;
    allocating.erase(d.origin.id);
    if (!d.store) {
      BT_WARN("cannot hold replica of %s: %s", d.origin.name.c_str(), d.store.error().message.c_str());
      allocation_failed.insert(d.origin.id);
      continue;
    }
    if (stores.count(d.origin.id) != 0) continue;
    // Deleted while its slots were being allocated: nobody sends it again.
    if (auto r = records.find(d.origin.id);
        r != records.end() && r->second.deleted && r->second.epoch > d.origin.epoch) {
      allocator->free(std::move(*d.store));
      continue;
    }
    // Claimed at a newer epoch, or owned at this very one, since the frame
    // that asked for it passed on_data's checks: the older owner's frames
    // would find a store here and skip them.
    const auto o = owned.find(d.origin.id);
    if (claimed_epoch(d.origin.id) > d.origin.epoch ||
        (o != owned.end() && o->second->epoch.load() == d.origin.epoch && !o->second->fenced.load())) {
      allocator->free(std::move(*d.store));
      continue;
    }
    stores.emplace(d.origin.id, std::move(*d.store));
    fence_if_superseded(d.origin.id, d.origin.epoch);  // another owner writes a segment this node owns
  }
  return any;
}

bool Engine::Impl::poll_once(uint64_t now) noexcept {
  assert_token_holder();
  note_poll_gap(now);
  frames_copy_budget = config.copy_slice;
  bool busy = apply_control();
  busy |= drain_commands();
  busy |= install_allocated();
  if (!retired_stores.empty()) free_retired();
  for (size_t li = 0; li < links.size(); ++li) {
    Link* link = links[li].get();
    RxFrame rx[kBurst];
    const uint16_t n = link->rx_burst(rx, kBurst);
    uint16_t work = 0;  // frames other than heartbeats (see apply_control)
    for (uint16_t i = 0; i < n; ++i) {
      wire::Frame f;
      // Payload CRCs are checked later, in the pass that copies each payload
      // where it belongs (see wire::decode).
      const wire::DecodeError err = wire::decode(rx[i].bytes, f, false);
      if (err != wire::DecodeError::kNone) {
        bump(counters.decode[static_cast<size_t>(err)]);
        BT_DEBUG("%s: dropped frame: %s", link->name().c_str(), wire::decode_error_name(err));
        if (err == wire::DecodeError::kBadVersion && !std::exchange(link_states[li].version_warned, true))
          BT_WARN("%s: node %u speaks wire version %u and this node version %u: it will look down until every node runs "
                  "one release", link->name().c_str(), link->peer(), wire::frame_version(rx[i].bytes),
                  unsigned{wire::kVersion});
        continue;
      }
      if (f.src == link->peer()) heard_from(li, now);  // any valid frame is a sign of life
      work += f.type != wire::MsgType::kHeartbeat;
      on_frame(*link, f, now);
    }
    if (n > 0) {
      link->release_rx(rx, n);
      bump(counters.frames_rx, n);
      flush_acks();
      busy |= work > 0;
    }
  }
  // What the failure detector reads: the devices' states, and that every
  // link was read at `now` (heard_ns above are visible with it). A device
  // going down (memif knows at once when its peer dies) is news for the
  // control thread now, not at its next tick.
  bool link_changed = false;
  for (auto& ls : link_states) {
    const bool up = ls.link->up();
    if (up == ls.up.load(std::memory_order_relaxed)) continue;
    ls.up.store(up, std::memory_order_relaxed);
    link_changed = true;
  }
  polled_ns.store(now, std::memory_order_release);
  if (link_changed) wake_control();
  busy |= pump_senders(now);
  busy |= step_ops(now);
  busy |= advance_stores();
  busy |= advance_cow_snapshots();
  busy |= catch_up_stages();
  if (!fenced_to_keep.empty()) keep_fenced_copies();
  send_releases_due(now);
  offer_skipped_to_global(now);
  step_records();
  ask_for_records(now);
  if (!segment_news_backlog.empty()) flush_segment_news();
  for (auto& link : links) busy |= link->service(now);
  return busy;
}

bool Engine::Impl::advance_stores() noexcept {
  // One copy_slice per poll for all of them (a 64 MiB copy spreads over 16
  // polls, and heartbeats go on meanwhile), in turns: however many
  // applications this node holds replicas of, a poll copies about 4 MiB
  // (take_turns).
  if (stores_behind.empty()) return false;
  uint64_t budget = config.copy_slice;
  published_scratch.clear();
  // (No cap per store: each takes what is left, at least a chunk.)
  take_turns(stores_behind, budget, UINT64_MAX, [&](uint64_t id, uint64_t& slice) {
    auto it = stores.find(id);
    if (it == stores.end()) return true;
    bool published = false;
    const bool done = it->second->advance_within(slice, &published);
    if (published) published_scratch.push_back(it->second.get());
    return done;
  });
  for (ReplicaStore* st : published_scratch) {
    on_published(*st);  // may list it again: the next shadow to bring up
    bump(counters.deltas_published_later);
    // A delta finished here, not on a frame: its sender waits for this ack.
    if (Link* link = link_to(st->owner()); link != nullptr)
      acks_due.push_back({link, st, nullptr, st->latest()->generation, false, false});
  }
  if (!acks_due.empty()) flush_acks();
  return true;
}

bool Engine::Impl::drain_commands() noexcept {
  void* cmds[kBurst];
  const unsigned n = rte_ring_sc_dequeue_burst(commands, cmds, kBurst, nullptr);
  if (n > 0) queued.fetch_sub(n);
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
    case wire::MsgType::kHeartbeat: on_heartbeat(link, f, now); break;  // liveness itself was noted by the caller
    case wire::MsgType::kClaim: on_claim(link, f); break;
    case wire::MsgType::kSetRecord: on_set_record(link, f); break;
    case wire::MsgType::kNote:
      if (verified(f)) on_note(f);
      break;
    case wire::MsgType::kRecords: on_records(link, f); break;
  }
}

void Engine::Impl::send_control(Link& link, const wire::Frame& f) noexcept {
  std::byte buf[wire::kMaxHeadSize + wire::kMaxNote];  // a note's or a records batch's payload fits
  const size_t len = wire::encode(f, buf);
  TxFrame tx{{buf, len}, {}};
  if (len == 0 || link.tx_burst(&tx, 1) != 1) bump(counters.tx_dropped);
  else bump(counters.frames_tx);
}

void Engine::Impl::send_error(Link& link, const wire::Frame& about, wire::ErrorCode code, uint64_t epoch,
                              uint16_t flags) noexcept {
  wire::Frame e;
  e.type = wire::MsgType::kError;
  e.flags = flags;
  e.src = config.node_id;
  e.dst = about.src;
  e.seg_id = about.seg_id;
  e.epoch = epoch;
  e.generation = about.generation;
  e.code = static_cast<uint16_t>(code);
  wire::set_aux_epoch(e, about.epoch);  // which claim or tombstone (or frame) this answers
  send_control(link, e);
}

// --- primary side ---------------------------------------------------------

SenderTuning Engine::Impl::tuning() const noexcept {
  SenderTuning t;
  t.window = config.window;
  return t;
}

void Engine::Impl::start_replication(Segment& seg, Stage& stage, uint64_t now) noexcept {
  const int idx = static_cast<int>(&stage - seg.stages.data());
  if (seg.fenced.load()) {
    // Not replicated; the current stage stays: it is the last snapshot a
    // fenced owner keeps as a copy (keep_fenced_copy). (It was dropped
    // here, and a commit fenced while it waited for the token lost it.)
    stage.state.store(Stage::kFree);
    return;
  }
  if (seg.current_stage >= 0 && seg.current_stage != idx) seg.stages[seg.current_stage].state.store(Stage::kFree);
  seg.current_stage = idx;
  // Latest wins: a replica still receiving an older generation moves to this one.
  // One that holds the previous generation gets only what changed (S15);
  // if it turns out not to, it says so and gets it whole.
  const SendSource whole = stage_source(seg, stage);
  const SendSource delta = stage_delta_source(seg, stage);
  for (auto& r : seg.replicas) {
    if (r->node == 0) continue;
    const bool base_held = stage.delta_base != 0 && r->held.load(std::memory_order_relaxed) == stage.delta_base;
    r->sender.start(base_held ? delta : whole, tuning(), now);
    bump(base_held ? counters.deltas_sent : counters.wholes_sent);
  }
  seg.catch_up_to = 0;  // a new current stage: the free one may catch up with it
  if (std::find(stages_behind.begin(), stages_behind.end(), seg.id) == stages_behind.end())
    stages_behind.push_back(seg.id);
}

// --- the free stage, between commits ----------------------------------------
//
// A commit copies into the free stage the pages written since that
// stage's own snapshot: two commits' writes, since the stages alternate.
// Those of the previous commit are in the current stage already. Once its
// snapshot is complete and every reachable replica holds it, the token
// holder copies them over between commits, with their chunks' checksums,
// so the next commit copies (or, copy-on-write, settles) only what was
// written since the last one. At 1 GiB with 1% of the pages written each
// time, that halved a commit's settling (docs/performance.md).

namespace {
/// Bytes a poll copies into a segment's free stage: heartbeats go on.
constexpr uint64_t kCatchUpSlice = 1u << 20;
}  // namespace

bool Engine::Impl::catch_up_stages() noexcept {
  // A slice of each in turn, one copy_slice in all per poll (take_turns).
  if (stages_behind.empty()) return false;
  bool copied = false;
  uint64_t budget = config.copy_slice;
  take_turns(stages_behind, budget, kCatchUpSlice, [&](uint64_t id, uint64_t& slice) {
    auto it = owned.find(id);
    return it == owned.end() || catch_up_stage(*it->second, slice, copied);
  });
  return copied;
}

bool Engine::Impl::catch_up_stage(Segment& seg, uint64_t& budget, bool& copied) noexcept {
  if (seg.current_stage < 0 || seg.fenced.load(std::memory_order_relaxed)) return true;
  const Stage& from = seg.stages[seg.current_stage];
  Stage& to = seg.stages[1 - seg.current_stage];
  const uint32_t cs = seg.chunk_size;
  const uint32_t chunks = wire::chunk_count_for(seg.size, cs);
  // Not before the current snapshot is whole (its pages and checksums are
  // final then), nor while a replica that can be reached still receives
  // it: the copy would hold up its frames and acks, and it can wait.
  if (from.cow || from.ready.load(std::memory_order_acquire) < chunks) return false;
  for (const auto& r : seg.replicas)
    if (r->sender.in_flight() && !unreachable(r->node.load(std::memory_order_relaxed))) return false;
  if (to.state.load(std::memory_order_acquire) != Stage::kFree || to.mem.data() == nullptr ||
      to.chunk_crcs.size() != chunks || from.chunk_crcs.size() != chunks)
    return true;
  if (seg.catch_up_to == Segment::kCatchUpStopped) return true;
  if (seg.catch_up_to != from.generation) {
    // Most of the segment stale (the first commits, untracked writes): the
    // next commit copies it whole anyway, sending as it goes.
    const uint32_t stale = to.stale.popcount();
    if (stale == 0) publish_cow_ready(seg, from);
    if (stale == 0 || stale > to.stale.count() / 2) return true;
    seg.catch_up_to = from.generation;
    seg.catch_up_chunk = 0;
  }
  // Chunk by chunk, each whole in one step: every stale page it touches
  // is copied and its checksum taken from the current stage, since the two
  // stages now agree on all of it. A page that runs on into the next chunk
  // stays stale until that chunk is done too, so a commit meanwhile still
  // checksums that chunk again. Chunks need not be page aligned.
  constexpr uint64_t kPage = Stage::kStalePage;
  const uint32_t pages = to.stale.count();
  uint64_t done = 0;
  uint32_t c = seg.catch_up_chunk;
  while (done < budget) {
    const uint32_t p = c < chunks ? to.stale.next_set(static_cast<uint32_t>(uint64_t{c} * cs / kPage)) : pages;
    if (p >= pages) {
      seg.catch_up_chunk = chunks;
      publish_cow_ready(seg, from);
      copied |= done > 0;
      budget -= std::min(budget, done);
      return true;
    }
    c = std::max(c, static_cast<uint32_t>(uint64_t{p} * kPage / cs));
    const uint64_t off = uint64_t{c} * cs;
    const uint64_t end = off + wire::chunk_len(seg.size, cs, c);
    for (uint64_t q = off / kPage; q * kPage < end; ++q) {
      if (!to.stale.test(static_cast<uint32_t>(q))) continue;
      const uint64_t a = q * kPage, b = std::min((q + 1) * kPage, seg.size);
      std::memcpy(to.mem.data() + a, from.mem.data() + a, b - a);
      if (b <= end) to.stale.clear(static_cast<uint32_t>(q));
      done += b - a;
    }
    to.chunk_crcs[c] = from.chunk_crcs[c];
    ++c;
  }
  seg.catch_up_chunk = c;
  copied |= done > 0;
  budget -= std::min(budget, done);
  return false;
}

void Engine::Impl::on_ack(const wire::Frame& f, uint64_t now) noexcept {
  if ((f.flags & wire::kFlagFetch) != 0) {
    for (auto it = serves.begin(); it != serves.end(); ++it) {
      FetchServe& s = **it;
      if (s.id != f.seg_id || s.requester != f.src) continue;
      if (s.lent) {  // the loader is done with the lent slot (or a stray ack)
        if ((f.flags & wire::kFlagDirect) != 0 && f.generation == s.slot->generation) {
          s.slot->pins--;
          serves.erase(it);
        }
        return;
      }
      if ((f.flags & wire::kFlagDirect) != 0) return;
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
  // An ack from before the replica restarted would mark chunks delivered
  // and a generation held that its memory lost (issue #8 bug 3).
  if (!from_known_incarnation(f)) {
    bump(counters.stale_epoch);
    return;
  }
  for (auto& r : seg.replicas) {
    if (r->node != f.src) continue;
    if ((f.flags & wire::kFlagNeedFull) != 0) {
      // It lacks the delta's base (restarted, missed a generation, new in
      // the set): send it the generation whole.
      const SendSource& src = r->sender.source();
      if (r->sender.active() && src.is_delta() && src.generation == f.generation && seg.current_stage >= 0 &&
          seg.stages[seg.current_stage].generation == f.generation) {
        r->sender.start(stage_source(seg, seg.stages[seg.current_stage]), tuning(), now);
        bump(counters.wholes_sent);
      }
      return;
    }
    // A "published" from before this epoch says nothing of what this
    // owner sends (it ends a transfer, of whatever kind).
    if ((f.flags & wire::kFlagComplete) == 0 || f.epoch == seg.epoch.load(std::memory_order_relaxed))
      r->sender.on_ack(f, now);
    // Only a replica that accepted this epoch holds anything for it.
    if ((f.flags & wire::kFlagComplete) != 0 && f.epoch == seg.epoch.load(std::memory_order_relaxed) &&
        f.generation > r->held.load(std::memory_order_relaxed)) {
      r->held.store(f.generation, std::memory_order_release);
      update_durable(seg);
      note_progress();  // a wait for k replicas (update_durable announces durability)
    }
    return;
  }
}

void Engine::Impl::on_error(const wire::Frame& f) noexcept {
  switch (static_cast<wire::ErrorCode>(f.code)) {
    case wire::ErrorCode::kStaleEpoch: {
      // A claim or a tombstone refused: that peer holds a newer epoch. Or a
      // set record of our own epoch: that node holds another owner's record
      // of it (two nodes creating one name at once). The rounds count them.
      forward_answer(RoundEvent::Kind::kRefused, f);
      auto it = owned.find(f.seg_id);
      if (it != owned.end() && f.epoch > it->second->epoch.load()) fence(*it->second);
      // Of this owner's own epoch, by a node holding another owner's set
      // record of it: two loads claimed the epoch at once.
      else if (it != owned.end() && (f.flags & wire::kFlagRecord) != 0)
        step_down_if_rivalled(*it->second, f.epoch,
                              "node " + std::to_string(f.src) + " holds the other's replica set record");
      // By the other owner itself, and neither proposed a set: each may
      // wait forever for replicas the other holds (a small cluster). The
      // higher node id yields; the lower one's set then fills, through
      // this node too.
      else if (it != owned.end() && (f.flags & wire::kFlagOwner) != 0 && f.src < config.node_id)
        step_down_if_rivalled(*it->second, f.epoch,
                              "node " + std::to_string(f.src) + " owns it at that epoch too and has the lower id");
      // A member refusing this owner's own epoch holds the other owner's
      // copy (or is it): it never will take this one's data, so it is
      // replaced, or neither owner might ever fill its set and propose it.
      if (it != owned.end() && f.epoch == it->second->epoch.load() && !it->second->fenced.load()) {
        Segment& seg = *it->second;
        const bool member = std::any_of(seg.replicas.begin(), seg.replicas.end(), [&](const auto& r) {
          return r->node.load(std::memory_order_relaxed) == f.src;
        });
        if (member && std::find(seg.refusing.begin(), seg.refusing.end(), f.src) == seg.refusing.end() &&
            seg.refusing.size() < 64) {
          seg.refusing.push_back(f.src);
          record_event("segment " + seg.name + ": node " + std::to_string(f.src) + " refuses owner epoch " +
                       std::to_string(f.epoch) + " (another owner took it too); its replica goes elsewhere");
          tell_control(SegmentNews{SegmentNews::Kind::kRefusing, 0, seg.id, f.src});
        }
      }
      return;
    }
    case wire::ErrorCode::kNoSuchSegment:
      forward_answer(RoundEvent::Kind::kNoSuchSegment, f);
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
  alignas(64) std::byte heads[kBurst][wire::kMaxHeadSize];
  const SendSource& src = sender.source();
  wire::Frame f = proto;
  if (src.is_delta()) {  // positions in the delta; each frame says which chunk it carries
    f.flags |= wire::kFlagDelta;
    f.delta_base = src.base;
    f.chunk_count = static_cast<uint32_t>(src.delta.size());
  }
  for (uint16_t i = 0; i < n; ++i) {
    f.chunk_index = idx[i];
    const uint32_t c = sender.chunk_at(idx[i]);
    f.delta_chunk = src.is_delta() ? c : 0;
    const uint32_t len = wire::chunk_len(src.total_len, src.chunk_size, c);
    const std::byte* payload = src.data + uint64_t{c} * src.chunk_size;
    // The stored CRC is final; un-finalise it to extend over the header.
    const uint32_t state = src.chunk_crcs[c] ^ 0xFFFFFFFFu;
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

bool Engine::Impl::step_ops(uint64_t now) noexcept {
  bool busy = false;
  for (FetchOp* op : completed_fetches) op->finish();
  busy |= !completed_fetches.empty();
  completed_fetches.clear();
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
    if (elapsed(now, (*it)->last_progress_ns) >= ((*it)->lent ? (*it)->lease_ns : timeout)) {
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
  Link* l = link_to(op.peer);
  if (l != nullptr && op.ask_direct && l->caps().direct_read) req.flags = wire::kFlagDirect;
  if (l != nullptr) send_control(*l, req);
  op.last_request_ns = now;
}

}  // namespace baton
