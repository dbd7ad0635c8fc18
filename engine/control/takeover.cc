// Taking ownership (S1, S9, S11, S22; docs/architecture.md, "Fencing"):
// create a new name, open (restore or start fresh), load as an agent, and
// reopen after an application restart. The control side: these calls ask
// peers through query and claim rounds the poll loop drives, and block.
//
// Thread: control (an API caller), holding the name busy (NameGuard).

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/crc32c.h"
#include "common/log.h"
#include "common/messages.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

namespace {
/// An open (S11) whose restore would bring another size than it asked for.
tl::unexpected<Error> size_differs(std::string_view name, uint64_t held, uint64_t asked) {
  return tl::unexpected(Error{Errc::kInvalidArgument, size_differs_text(name, held, asked)});
}
}  // namespace

namespace {

// The newest owner epoch any answer mentions (held or recorded), or global
// storage's delete marker: a new owner starts above it, so stale replicas,
// records and files give way.
uint64_t newest_epoch(const QueryOp& q) {
  uint64_t e = q.global_deleted;
  for (const auto& a : q.answers) e = std::max({e, a.epoch, a.record.epoch});
  return e;
}

}  // namespace

Result<std::unique_ptr<QueryOp>> Engine::Impl::query(std::string_view name) {
  auto q = std::make_unique<QueryOp>();
  q->name = std::string(name);
  q->id = wire::segment_id(name);
  for (auto& p : peer_states) q->answers.push_back(QueryAnswer{p.node});
  QueryOp* raw = q.get();
  q->run = [this, raw] {
    // This node answers too: it may hold a replica (the nearest copy of
    // all) and a record of the replica set.
    QueryAnswer self{config.node_id, true};
    if (auto it = stores.find(raw->id); it != stores.end() && it->second->latest() != nullptr) {
      ReplicaStore& st = *it->second;
      self.found = true;
      self.epoch = st.epoch();
      self.generation = st.latest()->generation;
      self.total_len = st.size();
    }
    if (auto it = records.find(raw->id); it != records.end()) self.record = it->second;
    raw->answers.push_back(self);
    const uint64_t now = clock_ns();
    raw->deadline_ns = now + round_timeout_ns();
    raw->hard_deadline_ns = now + quorum_patience_ns();
    raw->need = data_view.quorum;
    start_round(RoundEvent::Kind::kStartQuery, raw);
  };
  post(raw);
  await_round(*raw);
  if (!raw->ok) return tl::unexpected(raw->error);
  if (!config.global_dir.empty()) q->global_deleted = GlobalStore::deleted_epoch(config.global_dir, name);
  // Decisions rest on what a quorum of nodes said: a set record written at
  // a quorum is then seen by at least one of them.
  const uint32_t need = current_view().quorum;
  const uint32_t answered = q->answered();
  if (answered < need)
    return fail(Errc::kUnavailable, "only ", std::to_string(answered), " of the ", std::to_string(need),
                " nodes a decision needs answered about ", name);
  return q;
}

Result<Segment*> Engine::create(std::string_view name, uint64_t size) {
  Impl* impl = &shard_for(name);
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  if (size == 0 || size > impl->config.max_segment_size)
    return fail(Errc::kInvalidArgument, "size must be 1..", std::to_string(impl->config.max_segment_size));
  SegmentTable::NameGuard guard(impl->table, name);
  if (impl->table.by_name(name) != nullptr) return fail(Errc::kExists, "segment ", name, " is open here");
  if (auto ok = impl->require_quorum("create a segment"); !ok) return tl::unexpected(ok.error());
  auto q = impl->query(name);
  if (!q) return tl::unexpected(q.error());
  for (int asks_left = 2;; --asks_left) {
    const uint64_t deleted = deleted_at(**q);
    for (const auto& a : (*q)->answers) {
      if (live_copy(a, deleted))
        return fail(Errc::kExists, "segment ", name, " already exists on node ", std::to_string(a.peer),
                    a.owner ? " (its owner)" : " (a replica); load it instead");
      // A record without a copy: an owner wrote it (perhaps creating this very
      // name right now, or it is cut off): creating again would make a second
      // owner without a claim.
      if (live_record(a, deleted))
        return fail(Errc::kExists, "segment ", name, " is recorded at epoch ", std::to_string(a.record.epoch),
                    " (node ", std::to_string(a.peer), " holds its record); load it instead");
    }
    // Found nowhere. Just started, a node knows no records: a peer not
    // heard yet, or one alive now that did not answer (heard just after
    // the question went out), may hold the name. Ask again once it is
    // heard (create_fresh would refuse) or its answer can come; a later
    // node is covered by the quorum that holds the name's set record.
    const uint16_t silent = impl->just_started() ? impl->silent_peer(**q) : 0;
    if (asks_left > 0 && (impl->waited_to_hear_peers() || silent != 0)) {
      q = impl->query(name);
      if (!q) return tl::unexpected(q.error());
      continue;
    }
    if (silent != 0)
      return fail(Errc::kUnavailable, "node ", std::to_string(silent), " is alive but did not say what it holds of ",
                  name, "; not creating it (try again)");
    // As open: every peer's records here, then none of them names it (its
    // own answer was taken when the round began).
    if (auto ok = impl->heard_every_peer(name, "creating it"); !ok) return tl::unexpected(ok.error());
    if (impl->arrived_since(**q)) {
      if (asks_left > 0) {
        q = impl->query(name);
        if (!q) return tl::unexpected(q.error());
        continue;
      }
      return fail(Errc::kUnavailable, "segment ", name, " is arriving at this node; try again");
    }
    if (deleted != 0) impl->repair_tombstone(**q);
    return impl->create_fresh(name, size, **q);
  }
}

uint64_t Engine::Impl::up_ns() const {
  const uint64_t now = clock_ns();
  return now - std::min(now, incarnation);
}

bool Engine::Impl::just_started() const { return up_ns() < uint64_t{config.fresh_start_wait_ms} * 1'000'000; }

uint16_t Engine::Impl::silent_peer(const QueryOp& q) {
  uint16_t silent = 0;
  (void)call([&] {
    for (const auto& a : q.answers)
      if (auto it = peer_by_node.find(a.peer); !a.answered && it != peer_by_node.end() && it->second->alive)
        silent = a.peer;
  });
  return silent;
}

bool Engine::Impl::waited_to_hear_peers() {
  // An application that opens a new name right after its node started
  // would otherwise be refused (heard_every_peer) while a peer's first
  // heartbeat is on its way, a few milliseconds. Waiting is bounded: a
  // peer that is down does not hold up the open for long.
  constexpr uint64_t kHearPeersWaitNs = 1'000'000'000;
  const uint64_t up = up_ns(), window_ns = uint64_t{config.fresh_start_wait_ms} * 1'000'000;
  if (up >= window_ns) return false;
  const uint64_t now = clock_ns();
  const uint64_t left_ns = window_ns - up;
  // PeerState is the token holder's: poll_until looks with the token held.
  // Heard is not enough: the next query asks only the peers the control
  // thread counts alive, and this node must have the peer's records
  // (ask_for_records), so it waits for both.
  std::vector<uint16_t> unheard;
  (void)call([&] {
    for (const auto& p : peer_states)
      if (!p.records_had()) unheard.push_back(p.node);
  });
  if (unheard.empty()) return false;
  return poll_until(
      [&] {
        return std::all_of(unheard.begin(), unheard.end(), [&](uint16_t n) {
          auto it = peer_by_node.find(n);
          return it != peer_by_node.end() && it->second->alive && it->second->records_had();
        });
      },
      now + std::min(kHearPeersWaitNs, left_ns));
}

Result<void> Engine::Impl::heard_every_peer(std::string_view name, const char* what) {
  // Having just started, this node knows nothing of what its peers hold,
  // and two nodes that restarted at once are a quorum of three: a peer it
  // has not heard from since may hold the name (alive, its link not up
  // yet, or stopped for a moment). A session 37 embedded trial killed an
  // owner and one replica; restarted, one of them opened the name before
  // the third node's memif link was back, started it afresh, and the
  // third node then dropped the durable generation it held for the new
  // history. Heard means this node has the peer's set records too
  // (ask_for_records): a peer that falls silent right after its first
  // heartbeat leaves behind what it recorded, and a name it holds is then
  // not started afresh (its record names it). Bounded
  // (fresh_start_wait_ms): a peer that never comes back does not stop new
  // names for good.
  const uint64_t up_ms = up_ns() / 1'000'000;
  if (up_ms >= config.fresh_start_wait_ms) return {};
  uint16_t unheard = 0;
  bool heard = false;
  (void)call([&] {
    for (const auto& p : peer_states)
      if (!p.records_had()) {
        unheard = p.node;
        heard = p.ever_heard;
      }
  });
  if (unheard == 0) return {};
  return fail(Errc::kUnavailable, "this node started ", std::to_string(up_ms), " ms ago and has not heard from node ",
              std::to_string(unheard), heard ? " what it has recorded" : "", " yet, which may hold ", name, ": not ",
              what, " (for ", std::to_string(config.fresh_start_wait_ms - up_ms), " ms more; try again)");
}

bool Engine::Impl::arrived_since(const QueryOp& q) {
  const QueryAnswer* self = nullptr;
  for (const auto& a : q.answers)
    if (a.peer == config.node_id) self = &a;
  bool arrived = false;
  (void)call([&] {
    auto rec = records.find(q.id);
    auto st = stores.find(q.id);
    arrived = (st != stores.end() && st->second->latest() != nullptr && (self == nullptr || !self->found)) ||
              (rec != records.end() && (self == nullptr || rec->second.newer_than(self->record)));
  });
  return arrived;
}

Result<Segment*> Engine::Impl::create_fresh(std::string_view name, uint64_t size, const QueryOp& q) {
  if (auto ok = heard_every_peer(name, "starting it afresh"); !ok) return tl::unexpected(ok.error());
  // A new name has no replica set to fence through, so its creation rests
  // on the view alone. Two nodes split apart are each quorate (two_node);
  // only the tie-breaker (the lowest node id) creates names then, as
  // votequorum's auto_tie_breaker would decide. Loads stay open to both:
  // they are fenced by the replica set's majority.
  if (const View v = current_view(); v.expected_votes == 2 && v.members.size() < 2 && config.node_id != tie_breaker)
    return fail(Errc::kUnavailable, "cannot create ", name, ": this two-node cluster is split and only node ",
                std::to_string(tie_breaker), " (the tie-breaker) creates new names while the other is unreachable");
  // No node holds or records the name above its newest tombstone (the
  // callers checked): epoch 1, or one above every epoch of its deleted
  // history. Nodes still holding copies of that history (they missed the
  // delete) are told to drop them once this set is recorded.
  std::vector<uint16_t> stale;
  for (const auto& a : q.answers)
    if (a.found) stale.push_back(a.peer);
  auto made = make_segment(name, size, nullptr, newest_epoch(q) + 1, 0, {}, std::move(stale));
  if (!made) return made;
  Segment* seg = *made;
  // The name is this node's once its replica set is placed and recorded at
  // a quorum: of two nodes creating one name at once, at most one gets there.
  bool failed = false;
  const uint64_t deadline = clock_ns() + quorum_patience_ns();
  const bool settled = poll_until(
      [&] {
        failed = seg->pending.failed;
        return failed || (seg->placed && !seg->pending.active);
      },
      deadline);
  if (settled && !failed) {
    seg->creating.store(false);
    return seg;
  }
  (void)call([this, seg] { withdraw_record(*seg); });
  (void)remove_segment(seg);
  if (failed) return fail(Errc::kExists, "segment ", name, " is being created by another node");
  return fail(Errc::kUnavailable, "segment ", name, ": its replica set was not recorded at a quorum of nodes in time");
}

Result<void> Engine::Impl::require_quorum(const char* what) {
  // Quorate as the data path last heard: no need to stop its poll to look.
  if (data_quorate.load(std::memory_order_acquire)) return {};
  const uint64_t deadline = clock_ns() + round_timeout_ns();
  // Just after start the view may not have gathered the peers yet: poll.
  if (poll_until([this] { return data_view.quorate; }, deadline)) return {};
  return fail(Errc::kUnavailable, "cannot ", what, ": no quorum (", current_view().to_string(), ")");
}

Result<std::unique_ptr<ClaimOp>> Engine::Impl::claim(std::string_view name, uint64_t epoch,
                                                     const std::vector<uint16_t>& peers, uint32_t need) {
  auto c = std::make_unique<ClaimOp>();
  c->name = std::string(name);
  c->id = wire::segment_id(name);
  c->epoch = epoch;
  c->need = need;
  for (uint16_t p : peers) c->answers.push_back(ClaimAnswer{p});
  ClaimOp* raw = c.get();
  c->run = [this, raw] {
    // This node answers here and now, by the same rule as a peer.
    for (auto& a : raw->answers)
      if (a.peer == config.node_id) a = answer_claim(raw->id, raw->name, raw->epoch, config.node_id);
    const uint64_t now = clock_ns();
    raw->deadline_ns = now + round_timeout_ns();
    raw->hard_deadline_ns = now + quorum_patience_ns();
    start_round(RoundEvent::Kind::kStartClaim, raw);
  };
  post(raw);
  await_round(*raw);
  if (!raw->ok) return tl::unexpected(raw->error);
  return c;
}

namespace {

std::string set_string(const std::vector<uint16_t>& set) {
  std::string s = "{";
  for (size_t i = 0; i < set.size(); ++i) s += (i ? "," : "") + std::to_string(set[i]);
  return s + "}";
}

}  // namespace

bool Engine::Impl::copies_outside_lost_sets(const QueryOp& q, const ClaimOp& c, const SetRecord& record,
                                            const std::vector<uint64_t>& sets,
                                            const std::vector<uint16_t>& copy_holders, const ClaimAnswer& best) {
  if (record.epoch == 0 || copy_holders.empty()) return false;
  // Only a copy of that set's own history: written under the record's
  // epoch or later. One from before it may be of a history deleted since
  // (a new one then started above the tombstone, whose records took its
  // place: simulation seed 630200); and a newer owner that recorded its
  // own set made everything durable there, on members that all lost it.
  if (best.data_epoch < record.epoch) return false;
  // Every member of every set that must accept answered that it holds
  // nothing (each restarted: its memory, and the epochs it accepted, are
  // gone), and so did the set's owner or it answered with a copy, not as
  // the live owner: no generation can become durable under that set again.
  for (uint64_t packed : sets)
    for (uint16_t n : wire::unpack_set(packed)) {
      const QueryAnswer* a = n == 0 ? nullptr : q.from(n);
      if (n != 0 && (a == nullptr || !a->answered || a->found)) return false;
    }
  if (const QueryAnswer* o = q.from(record.owner); o == nullptr || !o->answered) return false;
  // No live owner anywhere (one would be sending its set the generation
  // again), and nobody alive that did not say what it holds.
  for (const auto& a : q.answers)
    if (a.found && a.owner) return false;
  if (silent_peer(q) != 0) return false;
  if (!heard_every_peer(q.name, "loading it from a copy outside its replica set")) return false;
  // Every node that answered with a copy accepted (the newest of them is
  // among those the load chooses from), and none refused: a newer epoch
  // is held somewhere.
  for (const auto& a : c.answers)
    if (a.refused_epoch != 0) return false;
  for (uint16_t n : copy_holders)
    if (const ClaimAnswer* a = c.from(n); a == nullptr || !a->granted) return false;
  return true;
}

// Ownership moves in two steps (S9, S22). First a claim: every replica that
// holds the name, and every member of the newest recorded replica set, is
// asked to accept owner epoch E+1, above any epoch seen; one that accepts
// refuses the old owner from then on and hands over what it holds.
// Ownership is taken only if a majority of that recorded set accepted (or
// every member of it lost its copy, and copies outside it are all there is:
// copies_outside_lost_sets). Then the newest generation handed over is
// fetched from a replica that accepted. See docs/architecture.md, "Fencing".
Result<OpenResult> Engine::Impl::load_from(const QueryOp& q, std::string_view name) {
  uint64_t max_epoch = newest_epoch(q);
  // Claim one above the newest epoch seen, or the newest itself if this
  // node won it before without taking ownership (SegmentTable::unused_claim).
  uint64_t claim_epoch = max_epoch + 1;
  if (const uint64_t unused = table.unused_claim(q.id); unused != 0 && unused == max_epoch) claim_epoch = max_epoch;
  uint64_t deleted = deleted_at(q);
  std::vector<uint16_t> copy_holders, stale;
  for (const auto& a : q.answers) {
    if (!a.found) continue;
    stale.push_back(a.peer);  // released once the new owner's set is recorded
    if (!a.owner && a.generation > 0 && a.total_len > 0 && a.total_len <= config.max_segment_size &&
        a.epoch > deleted)
      copy_holders.push_back(a.peer);
  }
  if (deleted != 0) repair_tombstone(q);
  if (copy_holders.empty()) {
    // A peer not heard yet may hold a copy, and a newer one than storage's.
    if (auto ok = heard_every_peer(name, "saying no replica holds it"); !ok) return tl::unexpected(ok.error());
    if (!config.global_dir.empty() && GlobalStore::newest(config.global_dir, name, config.max_segment_size, deleted + 1))
      return load_from_global(name, max_epoch, deleted);
    if (auto ok = no_unreadable_copies(name, deleted); !ok) return tl::unexpected(ok.error());
    if (deleted != 0)
      return fail(Errc::kNotFound, "segment ", name, " was deleted (at owner epoch ", std::to_string(deleted), ")");
    // Its live owner holds the only copy: no replica has published a
    // generation yet (the first is on its way). Not "nothing anywhere":
    // an application started here would find that owner.
    for (const auto& a : q.answers)
      if (a.found && a.owner && a.epoch >= max_epoch && a.peer != config.node_id)
        return fail(Errc::kUnavailable, "segment ", name, " is held only by its live owner, node ",
                    std::to_string(a.peer), ": no replica holds a generation of it yet (open it there, or try "
                    "again once its owner has committed and replicated)");
    return fail(Errc::kNotFound, "no live replica holds ", name);
  }
  // Every node is asked: the replicas to grant, a quorum of nodes to
  // promise (see below). With two nodes, one is a quorum (two_node): a set
  // record there needs every member of the view (record_quorum), this node
  // among them, so its own promise names any record stored while it saw
  // the other; and a claim does not wait for a peer that died and is not
  // yet known dead (the load of its own replica the moment it did).
  std::vector<uint16_t> everyone{config.node_id};
  for (const auto& p : peer_states) everyone.push_back(p.node);
  const uint32_t quorum = current_view().quorum;
  std::unique_ptr<ClaimOp> c;
  for (int attempt = 0;; ++attempt) {
    auto claimed = claim(name, claim_epoch, everyone, quorum);
    if (!claimed) return tl::unexpected(claimed.error());
    c = std::move(*claimed);
    uint64_t refused = 0;
    for (const auto& a : c->answers) {
      refused = std::max(refused, a.refused_epoch);
      // A set record of this epoch or a newer one: another node claimed it.
      if (a.promised && a.record.epoch >= claim_epoch && !a.record.deleted &&
          !(a.record.epoch == claim_epoch && a.record.owner == config.node_id))
        refused = std::max(refused, a.record.epoch);
    }
    // A node had seen a newer epoch than the query showed (a concurrent
    // or failed claim): claim above it, a few times at most.
    if (refused == 0 || attempt == 2) break;
    claim_epoch = std::max(claim_epoch, refused + 1);
    // Two loads of one name at once refuse each other at each epoch and,
    // retrying in step, would collide at every one after it too (dueling
    // proposers). Each waits a while of its own first, as Paxos proposers
    // and Raft candidates do: one claims alone and wins.
    uint64_t h = (uint64_t{config.node_id} << 32) ^ incarnation ^ (uint64_t(attempt) * 0x9e3779b97f4a7c15ull);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    const uint64_t backoff = 1'000'000 + h % std::max<uint64_t>(1, round_timeout_ns() / 4);
    poll_until([] { return false; }, clock_ns() + backoff);
  }
  // Until ownership is taken at it, this epoch is an unused claim of ours.
  {
    table.set_unused_claim(q.id, c->epoch);
  }
  // Nothing counts without a quorum of promises (claim_basis says why).
  if (const uint32_t promised = c->promised(); promised < quorum)
    return fail(Errc::kUnavailable, "only ", std::to_string(promised), " of the ", std::to_string(quorum),
                " nodes a claim needs took owner epoch ", std::to_string(c->epoch), " of ", name);
  // The claim's promises name the records stored since the query (claim_basis).
  const ClaimBasis basis = claim_basis(q, *c, deleted);
  if (basis.deleted > deleted)
    record_event("segment " + std::string(name) + ": deleted at owner epoch " + std::to_string(basis.deleted) +
                 " while it was being loaded (a tombstone in the claim's answers)");
  deleted = basis.deleted;
  const SetRecord& record = basis.record;  // the newest record of the replica set any node holds
  const ClaimAnswer* best = nullptr;
  for (const auto& a : c->answers)
    if (a.granted && a.generation > 0 && a.data_epoch > deleted &&
        (best == nullptr || std::tie(a.data_epoch, a.generation) > std::tie(best->data_epoch, best->generation)))
      best = &a;
  if (best == nullptr) {
    // Every copy it asked went meanwhile: a delete that ran at the same
    // time (exit 3 to batonctl, "no copy anywhere", as for any load of a
    // deleted name), or a claim that failed for now (try again). Only a
    // second query tells them apart.
    if (auto again = query(name); again) {
      const uint64_t gone = deleted_at(**again);
      bool live = !config.global_dir.empty() &&
                  GlobalStore::newest(config.global_dir, name, config.max_segment_size, gone + 1).has_value();
      for (const auto& a : (*again)->answers) live |= live_copy(a, gone) || live_record(a, gone);
      if (gone != 0 && !live)
        return fail(Errc::kNotFound, "segment ", name, " was deleted while it was being loaded (at owner epoch ",
                    std::to_string(gone), ")");
    }
    return fail(Errc::kUnavailable, "no replica of ", name, " accepted owner epoch ", std::to_string(c->epoch));
  }
  const std::vector<uint64_t> sets = sets_to_grant(basis, best->set);
  const Grants grants = grants_of(*c, sets);
  const std::vector<uint16_t>& set = grants.set;
  const size_t accepted = grants.granted, refusing = grants.refusing;
  if (grants.enough) {
    // Enough of the set granted: the usual load.
  } else if (copies_outside_lost_sets(q, *c, record, sets, copy_holders, *best)) {
    record_event("segment " + std::string(name) + ": every replica of set " + set_string(set) +
                 " answered without a copy; loading generation " + std::to_string(best->generation) +
                 " of owner epoch " + std::to_string(best->data_epoch) + " from node " + std::to_string(best->peer) +
                 ", which holds it outside the set");
    bump(counters.loads_outside_set);
  } else {
    record_event("segment " + std::string(name) + ": ownership not taken: " + std::to_string(accepted) + " of " +
                 std::to_string(set.size()) + " replicas of set " + set_string(set) + " accepted epoch " +
                 std::to_string(c->epoch));
    return fail(Errc::kUnavailable, "only ", std::to_string(accepted), " of the ", std::to_string(set.size()),
                " replicas ", set_string(set), " of ", name, " accepted owner epoch ", std::to_string(c->epoch),
                refusing != 0 ? " and " + std::to_string(refusing) + " refused it" : std::string(), "; ",
                std::to_string((set.size() + 1) / 2), " must, and none refuse");
  }
  // The new owner keeps the live members of that set as its replicas.
  std::vector<uint16_t> keep;
  for (uint16_t n : set)
    if (n != config.node_id) keep.push_back(n);
  // Sources: replicas that accepted and hold the newest generation; this
  // node's own copy first (no transfer at all), then the best answer's.
  std::vector<const ClaimAnswer*> sources;
  for (const auto& a : c->answers)
    if (a.granted && a.data_epoch == best->data_epoch && a.generation == best->generation &&
        a.total_len == best->total_len)
      sources.push_back(&a);
  std::stable_sort(sources.begin(), sources.end(), [this, best](auto* a, auto* b) {
    return std::make_pair(a->peer == config.node_id, a == best) > std::make_pair(b->peer == config.node_id, b == best);
  });
  Error last{Errc::kNotFound, "no replica could deliver " + std::string(name)};
  for (const ClaimAnswer* a : sources) {
    uint64_t got = 0;
    bool promoted = false, in_place = false, lent = false;
    uint64_t stage_copied = 0;  // in place: what the first stage lacked
    ReplicaStore::Promotion promotion;
    Result<LocalStorage> dest = fail(Errc::kInternal, "no copy");
    if (a->peer == config.node_id) {
      // A hot standby here (S16) hands over its ready copy of the newest
      // generation, and its slots become the new owner's stages: no
      // allocation, no copy. This node's copy as a replica ends there
      // (the owner holds the generation now, in its first stage).
      // Any other replica here hands over the slot that holds it, mapped
      // in place as the application's memory (issue #11, zero-copy
      // takeover), and a free slot for the first stage, which is filled
      // below before the application can write; only the second stage is
      // allocated.
      auto took = call([&] {
        auto it = stores.find(q.id);
        if (it == stores.end() || it->second->size() != a->total_len) return;
        auto p = it->second->promote(a->generation, a->data_epoch);
        if (!p) {
          p = it->second->promote(a->generation, a->data_epoch, ReplicaStore::Hand::kInPlace);
          in_place = p.has_value();
        }
        if (p) {
          promotion = std::move(*p);
          drop_store(q.id);
          dest = std::move(promotion.app);
          got = a->generation;
          promoted = true;
        }
      });
      if (!took) return tl::unexpected(took.error());
    }
    if (!promoted) {
      dest = LocalStorage::create(std::string(name), a->total_len, memory_node, app_pages());
      if (!dest) return tl::unexpected(dest.error());
    }
    if (in_place) {
      // The stage gets the generation the application's memory holds (its
      // CRCs came with it), off the worker: the only copy of this load,
      // and only of what the stage lacks when the replica kept it close.
      stage_copied = promotion.fill_stage(*dest);
      if (sim != nullptr) check_stage(name, promotion);
      bump(counters.replica_promotions);
      if (promotion.stage_chained) bump(counters.replica_promotions_chained);
    } else if (promoted) {
      bump(counters.standby_promotions);
    } else if (a->peer == config.node_id) {
      // Our own replica store, a slot of which a reader holds (a fetch
      // served, a global-storage write): a copy of it, the store staying.
      auto copied = call([&] {
        auto it = stores.find(q.id);
        if (it == stores.end() || it->second->size() != dest->size()) return;
        ReplicaStore::Slot* slot = it->second->find(a->generation);
        if (slot == nullptr) return;
        std::memcpy(dest->data(), slot->mem.data(), dest->size());
        got = slot->generation;
      });
      if (!copied || got == 0) continue;  // published over meanwhile: try the next copy
    } else {
      // A peer that shares this host's memory (caps().direct_read) is
      // asked to lend its slot, which this thread then reads; if it
      // streams instead, or the read fails, it is a fetch as over any link.
      for (bool direct : {config.direct_reads, false}) {
        FetchOp op;
        op.name = std::string(name);
        op.id = q.id;
        op.peer = a->peer;
        op.generation = a->generation;
        op.dest = &*dest;
        op.ask_direct = direct;
        op.run = [this, &op] {
          op.last_progress_ns = clock_ns();
          fetches.push_back(&op);
          send_fetch_request(op, op.last_progress_ns);
        };
        post(&op);
        await(op);
        if (!op.ok) {
          BT_WARN("load %.*s from node %u failed: %s", int(name.size()), name.data(), a->peer,
                  op.error.message.c_str());
          last = op.error;
          break;
        }
        if (op.lent.generation == 0) {
          got = op.got_generation;
          break;
        }
        auto read = read_lent(op.lent, *dest);
        (void)call([&] { send_lent_done(op.peer, op.id, op.lent.generation); });
        if (read) {
          bump(counters.direct_reads);
          got = op.lent.generation;
          lent = true;
          break;
        }
        bump(counters.direct_read_failures);
        BT_WARN("load %.*s: node %u's lent slot: %s; streaming it instead", int(name.size()), name.data(), a->peer,
                read.error().message.c_str());
      }
      if (got == 0) continue;
    }
    auto seg = make_segment(name, a->total_len, &*dest, c->epoch, got, keep, stale,
                            promoted ? &promotion : nullptr);
    if (!seg) return tl::unexpected(seg.error());
    {
      table.clear_unused_claim(q.id);
    }
    record_event("segment " + std::string(name) + ": ownership taken at epoch " + std::to_string(c->epoch) + " (" +
                 std::to_string(accepted) + " of " + std::to_string(set.size()) + " replicas of " +
                 set_string(set) + " accepted); generation " + std::to_string(got) + " loaded from " +
                 (in_place ? "this node's replica, mapped in place (no fetch; " + std::to_string((stage_copied + 1023) >> 10) +
                                " KiB copied into the first stage)"
                  : promoted ? std::string("this node's hot standby copy (no fetch, no copy)")
                  : a->peer == config.node_id ? std::string("this node's replica")
                  : lent ? "node " + std::to_string(a->peer) + " (its slot read directly, through shared memory)"
                         : "node " + std::to_string(a->peer)));
    return OpenResult{*seg, OpenOutcome::kRestored, got};
  }
  return tl::unexpected(last);
}

void Engine::Impl::check_stage(std::string_view name, const ReplicaStore::Promotion& p) const noexcept {
  // The simulator's check that a stage taken in place (kept current by the
  // replica, or a chain of deltas away) holds exactly the generation: every
  // chunk against the checksums the replica received it with.
  const uint64_t size = p.stage.size();
  const uint32_t chunks = wire::chunk_count_for(size, p.chunk_size);
  bool exact = p.chunk_crcs.size() == chunks;
  for (uint32_t c = 0; exact && c < chunks; ++c)
    exact = crc32c(p.stage.data() + uint64_t{c} * p.chunk_size, wire::chunk_len(size, p.chunk_size, c)) ==
            p.chunk_crcs[c];
  if (exact) return;
  BT_ERROR("load %.*s: the first stage taken in place (%s) is not the generation", int(name.size()), name.data(),
           p.stage_chained ? "chained" : "copied whole");
  std::abort();
}

Result<void> Engine::Impl::read_lent(const FetchOp::Lent& lent, LocalStorage& dest) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/fd/%u", lent.pid, lent.fd);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "cannot open ", path, ": ", std::strerror(errno));
  struct stat sb{};
  const bool same = ::fstat(fd, &sb) == 0 && sb.st_ino == lent.inode && S_ISREG(sb.st_mode);
  // A file that may shrink could take pages from under the mapping (SIGBUS):
  // a slot's size is sealed.
  const int seals = same ? ::fcntl(fd, F_GET_SEALS) : 0;
  if (!same || seals < 0 || (seals & F_SEAL_SHRINK) == 0 || uint64_t(sb.st_size) < dest.size()) {
    ::close(fd);
    return fail(Errc::kIo, path, " is not the lent slot (another file, or not sealed at its size)");
  }
  // Only the segment's bytes (rounded to a huge page, which a slot on huge
  // pages is sized in), populated in one call: cheaper than a fault per
  // 4 KiB page.
  const uint64_t huge = uint64_t{2} << 20;
  const auto len = static_cast<size_t>(std::min<uint64_t>(sb.st_size, (dest.size() + huge - 1) / huge * huge));
  void* map = ::mmap(nullptr, len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return fail(Errc::kIo, "cannot map ", path, ": ", std::strerror(errno));
  // Read remote, write local, one pass: each chunk's CRC is of the bytes
  // written, and together they must make the lender's generation checksum.
  const auto* src = static_cast<const std::byte*>(map);
  const uint32_t chunks = wire::chunk_count_for(dest.size(), lent.chunk_size);
  std::vector<uint32_t> crcs(chunks);
  for (uint32_t i = 0; i < chunks; ++i) {
    const uint64_t off = uint64_t{i} * lent.chunk_size;
    const uint32_t len = wire::chunk_len(dest.size(), lent.chunk_size, i);
    crcs[i] = crc32c_final(copy_crc32c(dest.data() + off, src + off, len, crc32c_init()));
  }
  ::munmap(map, len);
  if (wire::generation_crc(crcs) != lent.gen_crc)
    return fail(Errc::kCorrupt, "generation ", std::to_string(lent.generation), " read from ", path, " fails its checksum");
  return {};
}

void Engine::Impl::send_lent_done(uint16_t peer, uint64_t id, uint64_t generation) noexcept {
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.flags = wire::kFlagDirect | wire::kFlagFetch | wire::kFlagComplete;
  ack.src = config.node_id;
  ack.dst = peer;
  ack.seg_id = id;
  ack.generation = generation;
  if (Link* l = link_to(peer)) send_control(*l, ack);
}

Result<void> Engine::Impl::no_unreadable_copies(std::string_view name, uint64_t deleted) const {
  // Copies global storage holds but cannot read (every one corrupt, of
  // another segment, unreadable): the state exists and is damaged. Starting
  // afresh would lose it without a word, and the fresh history's files
  // would rank below the damaged ones; the operator decides (a delete
  // removes them).
  if (config.global_dir.empty()) return {};
  const GlobalStore::Listing stored = GlobalStore::list(config.global_dir, name, deleted + 1, config.max_segment_size);
  if (stored.copies == 0) return {};
  return fail(Errc::kCorrupt, "global storage holds ", std::to_string(stored.copies), " copies of ", name,
              " (up to owner epoch ", std::to_string(stored.newest_epoch),
              ") and none is intact (the log says why): not starting it afresh; delete the segment to start over");
}

Result<OpenResult> Engine::Impl::load_from_global(std::string_view name, uint64_t max_epoch, uint64_t deleted) {
  // Files written under the newest tombstone's epoch or before are of the
  // deleted history (a replica's write queued before the delete may land
  // after it).
  auto copy = GlobalStore::newest(config.global_dir, name, config.max_segment_size, deleted + 1);
  if (!copy) return fail(Errc::kNotFound, "no live replica and no copy in global storage holds ", name);
  auto dest = LocalStorage::create(std::string(name), copy->size, memory_node, app_pages());
  if (!dest) return tl::unexpected(dest.error());
  if (auto ok = GlobalStore::read(*copy, dest->bytes()); !ok) return tl::unexpected(ok.error());
  const uint64_t epoch = std::max(max_epoch, copy->epoch) + 1;
  auto seg = make_segment(name, copy->size, &*dest, epoch, copy->generation);
  if (!seg) return tl::unexpected(seg.error());
  // Storage is behind the replicas by design: say how far, as far as this
  // node can tell (the copy's age; the generations committed after it
  // died with every replica).
  std::string age = "of unknown age";
  struct stat st;
  timespec now;
  if (::stat(copy->path.c_str(), &st) == 0 && clock_gettime(CLOCK_REALTIME, &now) == 0)
    age = "written " + std::to_string(std::max<int64_t>(0, now.tv_sec - st.st_mtim.tv_sec)) + " s ago";
  BT_WARN("%s: no live replica; restoring generation %lu from global storage (%s): any generation committed "
          "after it is not in it",
          std::string(name).c_str(), static_cast<unsigned long>(copy->generation), age.c_str());
  record_event("loaded " + std::string(name) + " generation " + std::to_string(copy->generation) +
               " from global storage (no live replica; the copy was " + age + ")");
  return OpenResult{*seg, OpenOutcome::kRestored, copy->generation};
}

Result<OpenResult> Engine::load(std::string_view name) {
  Impl* impl = &shard_for(name);
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  SegmentTable::NameGuard guard(impl->table, name);
  return impl->open_locked(name, 0, true);
}

Result<OpenResult> Engine::open(std::string_view name, uint64_t size) {
  Impl* impl = &shard_for(name);
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  if (size == 0 || size > impl->config.max_segment_size)
    return fail(Errc::kInvalidArgument, "size must be 1..", std::to_string(impl->config.max_segment_size));
  SegmentTable::NameGuard guard(impl->table, name);
  auto r = impl->open_locked(name, size, false);
  if (r && r->outcome == OpenOutcome::kRestored && r->segment->size != size) {
    // A newer copy of another size turned up between the question and the
    // load (a delete and a create elsewhere): this node owns it now, and
    // its replicas keep it; the application gets no handle.
    const uint64_t held = r->segment->size;
    (void)impl->remove_segment(r->segment);
    return size_differs(name, held, size);
  }
  return r;
}


Result<OpenResult> Engine::Impl::open_locked(std::string_view name, uint64_t size, bool load_only, int asks_left) {
  Segment* local = table.by_name(name);
  if (local != nullptr) {
    if (!local->fenced.load()) return fail(Errc::kExists, "segment ", name, " is open here");
    // Superseded here: its memory holds a history the cluster moved past.
    if (auto ok = remove_segment(local); !ok) return tl::unexpected(ok.error());
  }
  if (auto ok = require_quorum(load_only ? "take ownership" : "open a segment"); !ok)
    return tl::unexpected(ok.error());
  auto q = query(name);
  if (!q) return tl::unexpected(q.error());
  if (load_only) return load_from(**q, name);
  bool any_replica = false;
  const uint64_t newest = newest_epoch(**q);
  const uint64_t deleted = deleted_at(**q);
  for (const auto& a : (*q)->answers) {
    // An owner whose epoch was superseded (it has not heard yet) owns nothing.
    if (a.found && a.owner && a.epoch >= newest)
      return fail(Errc::kExists, "segment ", name, " is owned by live node ", std::to_string(a.peer));
    any_replica |= live_copy(a, deleted);
  }
  if (any_replica) {
    // The restore would bring the segment in the size it was committed
    // in: an application that asked for another would read or write past
    // its end. Said before anything is claimed (Engine::open checks the
    // result too).
    const QueryAnswer* newest_copy = nullptr;
    for (const auto& a : (*q)->answers)
      if (live_copy(a, deleted) && a.total_len != 0 &&
          (newest_copy == nullptr || std::pair(a.epoch, a.generation) > std::pair(newest_copy->epoch, newest_copy->generation)))
        newest_copy = &a;
    if (newest_copy != nullptr && newest_copy->total_len != size)
      return size_differs(name, newest_copy->total_len, size);
    return load_from(**q, name);
  }
  // Nothing found, but this node just started and has not heard from a
  // peer that may hold it: once every peer is heard, ask again (else the
  // fresh start or the restore from storage below would be refused).
  if (asks_left > 0 && waited_to_hear_peers()) return open_locked(name, size, load_only, asks_left - 1);
  // No replica anywhere: global storage may still hold it (S7); only when it
  // does not either is this a first run.
  if (!config.global_dir.empty())
    if (auto copy = GlobalStore::newest(config.global_dir, name, config.max_segment_size, deleted + 1)) {
      if (copy->size != size) return size_differs(name, copy->size, size);
      // Storage is behind the replicas by design: a peer not heard yet may
      // hold a newer durable generation (and would drop it for the epoch
      // this restore takes).
      if (auto ok = heard_every_peer(name, "restoring it from global storage"); !ok) return tl::unexpected(ok.error());
      return load_from_global(name, newest, deleted);
    }
  if (auto ok = no_unreadable_copies(name, deleted); !ok) return tl::unexpected(ok.error());
  // A record but no copy anywhere. If every member of the newest recorded
  // set, and the owner that wrote it, answered that it holds nothing, all
  // replicas are gone (S11's third case: they restarted, or the segment
  // was closed before its first commit) and the segment starts afresh.
  // If one of them did not answer, its copy may be there: say so instead
  // of hiding it.
  SetRecord newest_record;
  for (const auto& a : (*q)->answers)
    if (live_record(a, deleted) && a.record.newer_than(newest_record)) newest_record = a.record;
  if (newest_record.epoch != 0) {
    auto answered_empty = [&](uint16_t n) {
      if (const QueryAnswer* a = (*q)->from(n)) return a->answered && !a->found;
      return n == config.node_id;  // this node holds nothing of it (else it would have answered found)
    };
    std::vector<uint16_t> must{newest_record.owner};
    for (uint16_t n : wire::unpack_set(newest_record.set))
      if (n != 0) must.push_back(n);
    for (uint16_t n : must)
      if (!answered_empty(n))
        return fail(Errc::kNotFound, "segment ", name, " is recorded at epoch ", std::to_string(newest_record.epoch),
                    " but no live replica or global storage holds it (node ", std::to_string(n),
                    " of its replica set did not answer)");
    record_event("segment " + std::string(name) + ": its owner and every replica " + set_string(must) +
                 " answered without a copy: its state is gone; starting afresh");
  }
  // "Nothing anywhere" is a conclusion about every node, not a quorum: a
  // quorum of nodes that restarted (and so forgot everything) would agree
  // on it while a live node that did not answer in time holds the state.
  // Nor may this node have received a copy or a record while it asked (its
  // own answer was taken when the round began): then ask once more.
  const uint16_t silent = silent_peer(**q);
  if (silent != 0) {
    // Perhaps back a moment ago (its answer on the way): ask it once more.
    if (asks_left > 0) return open_locked(name, size, false, asks_left - 1);
    return fail(Errc::kUnavailable, "node ", std::to_string(silent), " is alive but did not say what it holds of ",
                name, "; not starting it afresh (try again)");
  }
  // Every peer's records here first, then whether one of them names this
  // name: in the other order a record handed over in between is missed.
  if (auto ok = heard_every_peer(name, "starting it afresh"); !ok) return tl::unexpected(ok.error());
  if (arrived_since(**q)) {
    if (asks_left > 0) return open_locked(name, size, false, asks_left - 1);
    return fail(Errc::kUnavailable, "segment ", name, " is arriving at this node; try again");
  }
  if (deleted != 0) repair_tombstone(**q);
  auto seg = create_fresh(name, size, **q);
  if (!seg) return tl::unexpected(seg.error());
  return OpenResult{*seg, OpenOutcome::kCreated, 0};
}

Result<OpenResult> Engine::reopen(Segment* segment, bool take_over) {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  const std::string name = impl->table.name_of(segment);
  if (name.empty()) return fail(Errc::kInvalidArgument, "unknown segment handle");
  SegmentTable::NameGuard guard(impl->table, name);
  Segment* seg = impl->table.lookup(segment);  // closed meanwhile?
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  if (!seg->fenced.load()) {
    // While the application was gone the node may have been cut off (or
    // stopped) and another taken over: ask a quorum before trusting the
    // local copy. A newer epoch anywhere, or another live owner, fences it.
    if (auto ok = impl->require_quorum("confirm ownership"); !ok) return tl::unexpected(ok.error());
    auto q = impl->query(seg->name);
    if (!q) return tl::unexpected(q.error());
    const uint64_t epoch = seg->epoch.load();
    bool superseded = false;
    for (const auto& a : (*q)->answers)
      superseded |= a.record.epoch > epoch || (a.found && a.epoch > epoch) ||
                    (a.found && a.owner && a.epoch >= epoch);  // an older owner that has not heard is no one
    if (superseded) (void)impl->call([impl, seg] { impl->fence(*seg); });
  }
  if (seg->fenced.load()) return impl->open_locked(std::string(seg->name), seg->size, take_over);
  uint64_t generation;
  {
    std::unique_lock seg_lock(seg->mu);  // no commit of it meanwhile (one may still be returning)
    // Fenced since it was asked: its stages may be a replica copy's slots
    // now (keep_fenced_copy, which waits for this mutex), no restore's.
    if (seg->fenced.load()) {
      seg_lock.unlock();
      return impl->open_locked(std::string(seg->name), seg->size, take_over);
    }
    // Memory nobody was given since it was made from the last generation
    // (a load for an agent, then the application's first open) needs
    // nothing put back.
    generation = seg->pristine.load() ? seg->committed.load() : impl->restore_committed(*seg);
  }
  return OpenResult{seg, generation > 0 ? OpenOutcome::kRestored : OpenOutcome::kCreated, generation};
}

uint64_t Engine::Impl::restore_committed(Segment& seg) {
  // The stage of the newest generation is complete once commit() returned
  // (the snapshot is taken under the poll token), or once a copy-on-write
  // snapshot is settled (below); it stays while the
  // replicas receive it, and until the next commit.
  // Which stage is current is the poll-token holder's to say; the copy
  // runs without the token (a large segment would stop the worker's polls
  // for its length): the stage changes only in a commit, under seg.mu,
  // which the caller holds.
  acquire_token();
  settle_cow(seg, true);  // a copy-on-write snapshot is in its stage once settled
  const Stage* stage = seg.current_stage >= 0 ? &seg.stages[seg.current_stage] : nullptr;
  release_token();
  // The whole memory is rewritten: no fault per page (every page counts
  // as written for the next commit).
  if (seg.cow != nullptr)
    if (auto ok = seg.cow->release_all(); !ok) {
      acquire_token();
      drop_cow(seg, ok.error().message.c_str());
      release_token();
    }
  uint64_t generation = 0;
  if (stage != nullptr) {
    std::memcpy(seg.mem.data(), stage->mem.data(), seg.size);
    generation = stage->generation;
  } else {
    std::memset(seg.mem.data(), 0, seg.size);
  }
  // Written here, perhaps through a mapping no tracker watches (batond's,
  // while the application's client library tracks its own): the next
  // snapshot copies everything.
  acquire_token();  // a free stage's stale pages are the token holder's
  for (auto& s : seg.stages) s.stale.set_all();
  seg.catch_up_to = Segment::kCatchUpStopped;  // nothing to bring over: the next commit copies it whole
  release_token();
  seg.rewritten = true;  // and no delta of it
  // With a period, what the application writes from now on is what counts
  // (the memory is the committed generation again): as at the open.
  if (seg.cow != nullptr && seg.commit_every_ns != 0)
    if (auto ok = seg.cow->protect_all(); !ok)
      BT_WARN("segment %s: %s: the next periodic commit takes it whole", seg.name.c_str(), ok.error().message.c_str());
  return generation;
}

}  // namespace baton
