// Deleting a segment everywhere (S11's clean exit; issue #9; see
// control/tombstones.cc for the poll-loop side and docs/architecture.md,
// "Deletion and reclamation").
//
// Thread: control (an API caller), holding the name busy (NameGuard).

#include <algorithm>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

Result<void> Engine::remove(std::string_view name) {
  Impl* impl = &shard_for(name);
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  SegmentTable::NameGuard guard(impl->table, name);
  return impl->remove_locked(name);
}

namespace {

// The nodes dropped their copies, global storage could not be marked.
tl::unexpected<Error> storage_failed(std::string_view name, const Error& e) {
  return fail(e.code, e.message, " (", name,
              " is deleted on the nodes, not yet in global storage: delete it again once the directory can be "
              "written, or its copies there come back after every node has restarted)");
}

}  // namespace

Result<void> Engine::Impl::remove_locked(std::string_view name) {
  Segment* local = table.by_name(name);
  if (local != nullptr) {
    if (!local->fenced.load())
      return fail(Errc::kBusy, "segment ", name, " is open on this node; close it before deleting it");
    if (auto ok = remove_segment(local); !ok) return ok;  // superseded: nothing of ours
  }
  if (auto ok = require_quorum("delete a segment"); !ok) return tl::unexpected(ok.error());
  // A node that promised a claim above the tombstone refuses it (a load
  // racing the delete, or one that failed after its promises): asked
  // again, from a new query, above that claim, twice at most. Above it the
  // tombstone supersedes the claim's owner if the load is done, and its
  // promises if not. The refused attempt's own tombstone, stored on some
  // nodes, must not hide from the next one what the first set out to
  // delete: the next covers what lies above the first query's delete (else
  // it would answer "deleted already" for a delete that never completed).
  RemoveAttempt attempt;
  for (int n = 0;; ++n) {
    uint64_t refused = 0;
    auto done = remove_once(name, attempt, n < 2 ? &refused : nullptr);
    if (done || refused == 0) return done;
    attempt.floor = refused + 1;
  }
}

Result<void> Engine::Impl::remove_once(std::string_view name, RemoveAttempt& attempt, uint64_t* promise_refused) {
  auto q = query(name);
  if (!q) return tl::unexpected(q.error());
  // What the delete must cover: copies and records above what was
  // deleted before, and files in global storage.
  uint64_t deleted = deleted_at(**q);
  if (attempt.tombstone == 0) attempt.covered = deleted;
  else if (deleted <= attempt.tombstone) deleted = attempt.covered;  // nothing newer than our own try
  uint64_t newest = (*q)->global_deleted;
  for (const auto& a : (*q)->answers) newest = std::max({newest, a.epoch, a.record.epoch});
  SetRecord record;  // the newest recorded set: a majority of it must store the tombstone
  bool exists = false;
  for (const auto& a : (*q)->answers) {
    exists |= live_copy(a, deleted);
    if (live_record(a, deleted)) {
      exists = true;
      if (a.record.newer_than(record)) record = a.record;
    }
  }
  // Global storage's copies, intact or not, by their names: after every
  // node restarted they may be all there is, at epochs no node remembers.
  const GlobalStore::Listing stored =
      config.global_dir.empty() ? GlobalStore::Listing{} : GlobalStore::list(config.global_dir, name, deleted + 1);
  newest = std::max(newest, stored.newest_epoch);
  // (Asked again, our own earlier tombstone may be all that hides the
  // copies it set out to delete: it is finished above the claim, whatever
  // the query finds.)
  if (!exists && stored.copies == 0 && attempt.tombstone == 0) {
    if (deleted != 0) {
      repair_tombstone(**q);
      // A delete that stored its tombstone but not its global-storage
      // marker (the directory failed, or too few nodes answered and it
      // stopped before) left the deleted history's copies there: marked
      // now, or they come back once every node has restarted.
      if (!config.global_dir.empty() && GlobalStore::list(config.global_dir, name).copies != 0)
        if (auto ok = GlobalStore::remove(config.global_dir, name, deleted); !ok) return storage_failed(name, ok.error());
    }
    return fail(Errc::kNotFound, "no segment ", name, deleted != 0 ? " (it was deleted already)" : "");
  }
  // One above every epoch seen: the tombstone supersedes every owner and
  // replica of the name, as a takeover would.
  const uint64_t epoch = std::max(newest + 1, attempt.floor);
  std::vector<uint16_t> set;
  for (uint16_t n : wire::unpack_set(record.set))
    if (n != 0) set.push_back(n);
  attempt.tombstone = epoch;
  if (auto ok = write_tombstone(name, epoch, set, promise_refused); !ok) return ok;
  if (!config.global_dir.empty())
    if (auto ok = GlobalStore::remove(config.global_dir, name, epoch); !ok) return storage_failed(name, ok.error());
  record_event("segment " + std::string(name) + " deleted at owner epoch " + std::to_string(epoch));
  return {};
}

Result<void> Engine::Impl::write_tombstone(std::string_view name, uint64_t epoch, std::vector<uint16_t> set,
                                           uint64_t* promise_refused) {
  auto t = std::make_unique<TombstoneOp>();
  t->name = std::string(name);
  t->id = wire::segment_id(name);
  t->epoch = epoch;
  t->set = std::move(set);
  for (auto& p : peer_states) t->answers.push_back(TombstoneAnswer{p.node});
  TombstoneOp* raw = t.get();
  t->run = [this, raw] {
    TombstoneAnswer self{config.node_id, true};
    if (const uint64_t newer = apply_tombstone(raw->id, raw->name, raw->epoch, config.node_id, &self.refused_by_owner); newer != 0)
      self.refused_epoch = newer;
    else
      self.stored = true;
    raw->answers.push_back(self);
    const uint64_t now = clock_ns();
    raw->deadline_ns = now + round_timeout_ns();
    raw->hard_deadline_ns = now + quorum_patience_ns();
    // A quorum of nodes, so every later query (at a quorum) meets it; in a
    // two-node cluster, where one node alone is quorate and queries only
    // itself when split, both nodes.
    const View& v = data_view;
    raw->need = v.expected_votes == 2 ? 2 : record_quorum(v);
    start_round(RoundEvent::Kind::kStartTombstone, raw);
  };
  post(raw);
  await_round(*raw);
  if (!raw->ok) return tl::unexpected(raw->error);
  uint64_t refused = 0;
  uint16_t refuser = 0;
  bool only_owners = true;
  for (const auto& a : t->answers)
    if (a.refused_epoch != 0) {
      only_owners &= a.refused_by_owner;
      if (a.refused_epoch > refused) {
        refused = a.refused_epoch;
        refuser = a.peer;
      }
    }
  // Stored where it must be, the tombstone holds against owners that took
  // the name above it meanwhile (an open that started afresh after the
  // delete began): a majority W of the set dropped their copies, so no
  // claim can get the R grants it needs from the rest (R + W > |S|), and
  // those owners' state is not of the deleted history. A copy of that
  // history that took a claim's epoch refuses it too; then the delete says
  // so and fails (it would otherwise stay, above the tombstone).
  if (t->enough() && only_owners) {
    if (refused != 0)
      record_event("segment " + std::string(name) + " deleted at owner epoch " + std::to_string(epoch) +
                   " while node " + std::to_string(refuser) + " held epoch " + std::to_string(refused) +
                   " (a new owner's, above the deleted history)");
    return {};
  }
  // Refused by a claim's promise, not by an owner: the caller may ask
  // again above it.
  if (promise_refused != nullptr && refused != 0 && !only_owners) *promise_refused = refused;
  if (refused != 0)
    return fail(Errc::kBusy, "segment ", name, " was taken at owner epoch ", std::to_string(refused),
                " while it was being deleted (node ", std::to_string(refuser),
                " holds that epoch and refused the delete): it lives on under its new owner (deleting it again "
                "deletes the new owner's state), and copies the delete reached are gone");
  std::string set_text;
  for (uint16_t n : t->set) set_text += (set_text.empty() ? "" : ",") + std::to_string(n);
  return fail(Errc::kUnavailable, "delete of ", name, " reached ", std::to_string(t->stored()), " nodes (",
              std::to_string(t->need), " must) and ", std::to_string(t->set_stored()), " of its replica set {",
              set_text, "} (a majority must); it may have been deleted on some nodes (try again)");
}

void Engine::Impl::repair_tombstone(const QueryOp& q) {
  // The newest tombstone, and who answered without it (an older record or
  // a copy below its epoch): they missed the delete. A copy at its epoch is
  // of an owner that claimed that epoch while the delete ran: it refuses
  // the tombstone (deleted_at()).
  SetRecord tomb;
  for (const auto& a : q.answers)
    if (a.record.deleted && a.record.newer_than(tomb)) tomb = a.record;
  if (tomb.epoch == 0) return;
  std::vector<uint16_t> missed;
  for (const auto& a : q.answers)
    if (a.answered && !(a.record.deleted && a.record.epoch == tomb.epoch) &&
        ((a.found && a.epoch < tomb.epoch) || (a.record.epoch != 0 && a.record.epoch < tomb.epoch)))
      missed.push_back(a.peer);
  if (missed.empty()) return;
  const uint64_t id = q.id;
  const std::string name = q.name;
  (void)call([&] {
    for (uint16_t n : missed) {
      if (n == config.node_id) {
        (void)apply_tombstone(id, name, tomb.epoch, tomb.owner);
        continue;
      }
      // The tombstone as its writer sent it: the receiver stores it (or
      // refuses it for a newer epoch) exactly as it would have then.
      send_tombstone_to(n, id, name, tomb.epoch);
    }
  });
}

}  // namespace baton
