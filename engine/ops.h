#pragma once
// What API callers hand the poll loop (ops on the command ring) and the
// rounds the control thread asks for them: each carries its own answer
// slots, which the thread named on each field fills in.

#include <algorithm>
#include <atomic>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "baton/engine.h"
#include "protocol/wire.h"
#include "replication/replica_store.h"
#include "replication/transfer.h"
#include "segment/local_storage.h"

namespace baton {

/// Something the worker runs for a control thread, which waits for `done`.
struct Op {
  std::atomic<uint32_t> done{0};
  Error error;
  bool ok = true;
  std::function<void()> run;  ///< executed by the poll-token holder (worker or a waiting caller)

  /// Marks the op done (the poll-token holder, or the control thread for a
  /// round). The waiter may free the op the moment it sees this: the
  /// finisher touches nothing of it afterwards.
  void finish() noexcept { done.store(1, std::memory_order_seq_cst); }
  void fail(Errc code, std::string message) noexcept;
  bool finished() const noexcept { return done.load(std::memory_order_acquire) != 0; }
};

/// A node's record of a segment's replica set: written by the owner at a
/// quorum of nodes before the set counts for durability.
struct SetRecord {
  uint64_t epoch = 0;
  uint64_t version = 0;
  uint64_t set = 0;  ///< wire::pack_set
  uint16_t owner = 0;  ///< who wrote it (one owner per epoch)
  bool deleted = false;  ///< a tombstone: the name was deleted at `epoch` (no set)
  /// The segment's name, where the node storing it knows it: records are
  /// handed on by name to a node that started (hand_records).
  std::string name;
  bool newer_than(const SetRecord& o) const noexcept {
    return epoch != o.epoch ? epoch > o.epoch : version > o.version;
  }
};

/// A load in progress, in two steps the control side drives: query every peer
/// for what it holds, then fetch from the best one into `dest`.
struct QueryAnswer {
  uint16_t peer = 0;
  bool answered = false;
  bool found = false;
  bool owner = false;       ///< the peer is the live owner, not a replica
  uint64_t epoch = 0;
  uint64_t generation = 0;
  uint64_t total_len = 0;
  SetRecord record;  ///< epoch 0: the peer has none
  bool asked = false;  ///< the question went out to it at least once
};

/// A node's answer to a claim for a new owner epoch. Every node is asked:
/// one that promises stores no set record of an older epoch (nor another
/// owner's of this one) from then on, and says which record it holds; one
/// that holds a copy also grants, handing over what it holds.
struct ClaimAnswer {
  uint16_t peer = 0;
  bool answered = false;
  bool promised = false;       ///< it took the claim's epoch (granted or not)
  bool granted = false;        ///< ... and holds a copy, which it hands over
  SetRecord record;            ///< its set record or tombstone when it promised (epoch 0: none)
  uint64_t refused_epoch = 0;  ///< it holds a newer epoch than the claim's
  uint64_t data_epoch = 0;     ///< epoch its latest generation was written under
  uint64_t generation = 0;     ///< its latest generation (0: none)
  uint64_t total_len = 0;
  uint64_t set = 0;            ///< replica set stamped on that generation
  bool asked = false;          ///< the claim went out to it at least once
};

/// A round of questions to peers (a query or a claim): done once `need`
/// answers are in and every reachable peer answered or `deadline_ns` passed;
/// at `hard_deadline_ns` regardless (the answers needed may never come).
template <typename Answer>
struct RoundOp : Op {
  std::string name;
  uint64_t id = 0;
  uint64_t deadline_ns = 0;
  uint64_t hard_deadline_ns = 0;
  uint32_t need = 1;  ///< answers a decision can rest on
  uint64_t last_sent_ns = 0;
  std::vector<Answer> answers;  ///< the peers asked, sized by the control side
  uint32_t answered() const noexcept {
    return static_cast<uint32_t>(std::count_if(answers.begin(), answers.end(), [](auto& a) { return a.answered; }));
  }
  /// The answer slot of `peer` (this node's own too), or null if it was not asked.
  const Answer* from(uint16_t peer) const noexcept {
    auto it = std::find_if(answers.begin(), answers.end(), [peer](const Answer& a) { return a.peer == peer; });
    return it == answers.end() ? nullptr : &*it;
  }
};

/// Asks every node to accept a new owner epoch for a segment (S22) before
/// ownership moves; each grant hands over what the replica holds, each
/// promise says which set record the node holds. `need`: a quorum of nodes.
struct ClaimOp : RoundOp<ClaimAnswer> {
  uint64_t epoch = 0;
  uint32_t promised() const noexcept {
    return static_cast<uint32_t>(std::count_if(answers.begin(), answers.end(), [](auto& a) { return a.promised; }));
  }
};

/// Asks every peer (and this node) what it holds of a name. `need`: a quorum
/// of nodes.
struct QueryOp : RoundOp<QueryAnswer> {
  /// The epoch of the name's delete marker in global storage (0: none, or
  /// no global storage): a tombstone that outlives every node's memory.
  /// Read by the caller once the round is over.
  uint64_t global_deleted = 0;
};

/// What a round's records say was deleted: every copy and record at or
/// below the returned owner epoch belongs to a deleted history (0: none). That is the
/// newest tombstone any answer carries, or global storage's delete marker,
/// with one exception. A delete and a load (or a create) that queried at
/// once pick the same epoch T, and each node keeps whichever of the two
/// reached it first. Only one of them can get what it needs from the
/// replica set (a claim is granted only by a copy, which a tombstone
/// drops), so when the owner at T got far enough to record its replica set,
/// the delete failed and said so: the tombstone at T then removes what is
/// below T only, and the owner's copies and records at T live on. Without
/// that exception the owner's durable generations would read as deleted
/// wherever a later query met the tombstone.
inline uint64_t deleted_in(std::span<const SetRecord> records, uint64_t global_deleted) noexcept {
  uint64_t tomb = 0;
  for (const auto& r : records)
    if (r.deleted) tomb = std::max(tomb, r.epoch);
  for (const auto& r : records)
    if (tomb != 0 && r.epoch == tomb && !r.deleted) {
      --tomb;  // beaten by an owner of its epoch: what is below it is deleted
      break;
    }
  return std::max(tomb, global_deleted);
}
/// What a query's answers say was deleted (deleted_in).
inline uint64_t deleted_at(const QueryOp& q) noexcept {
  std::vector<SetRecord> records;
  for (const auto& a : q.answers) records.push_back(a.record);
  return deleted_in(records, q.global_deleted);
}

/// What a load goes by once its claim is answered (S22; architecture, "Why
/// no durable generation is lost"). The query saw every set record stored
/// at a quorum before it; one stored after it and before the claim is in a
/// promise's answer: a quorum of nodes promised, none stores a record below
/// the claim's epoch from then on, and a record counts once a quorum stored
/// it, so one that counted was stored at a node that promised, before it
/// did (simulation seed 790287). A delete made since the query shows there
/// too.
struct ClaimBasis {
  std::vector<SetRecord> seen;  ///< every record and tombstone the query and the promises carried
  uint64_t deleted = 0;         ///< what they say was deleted, no less than the query alone
  SetRecord record;             ///< the newest live set record among them (epoch 0: none)
};
inline ClaimBasis claim_basis(const QueryOp& q, const ClaimOp& c, uint64_t query_deleted) {
  ClaimBasis b;
  for (const auto& a : q.answers)
    if (a.record.epoch != 0) b.seen.push_back(a.record);
  for (const auto& a : c.answers)
    if (a.promised && a.record.epoch != 0) b.seen.push_back(a.record);
  b.deleted = std::max(query_deleted, deleted_in(b.seen, q.global_deleted));
  for (const auto& r : b.seen)
    if (!r.deleted && r.epoch > b.deleted && r.newer_than(b.record)) b.record = r;
  return b;
}

/// The sets whose members must grant a claim: the newest record's. Without
/// any record (its creator died before recording one) nothing was ever
/// durable, and `stamped`, the set on the newest generation handed over,
/// serves. Two records of one (epoch, version) from different owners are
/// left by a lost race to create the name whose loser could not withdraw
/// its own: then each must. (A tombstone of that epoch is no such record: a
/// delete that the owner's claim beat, deleted_in(). Taken for one, its
/// empty set made every later load fail, "0 of 0 replicas of set {}": seed
/// 15871.)
inline std::vector<uint64_t> sets_to_grant(const ClaimBasis& b, uint64_t stamped) {
  const SetRecord& rec = b.record;
  std::vector<uint64_t> sets{rec.epoch != 0 ? rec.set : stamped};
  for (const auto& r : b.seen)
    if (!r.deleted && r.epoch > b.deleted && r.epoch == rec.epoch && r.version == rec.version &&
        r.owner != rec.owner && rec.epoch != 0 && std::find(sets.begin(), sets.end(), r.set) == sets.end())
      sets.push_back(r.set);
  return sets;
}

/// Whether enough members of `sets` granted the claim: in each, R = |S| - W
/// + 1 of them (W = |S|/2 + 1, rule 1's majority: durable means held by W),
/// none refusing. R grants (a) leave the old owner fewer than W members
/// that still take its data, and (b) meet every majority that held a
/// durable generation (R + W > |S|). Only a member that holds the segment
/// grants; one that restarted and lost it cannot, and R (not a majority)
/// keeps the segment loadable when that happens to a member of a set of
/// two. A member that refuses (it took another claimant's epoch) fails the
/// claim. `set`, `granted`, `refusing`: the first set, or the one that fails.
struct Grants {
  bool enough = false;
  std::vector<uint16_t> set;
  size_t granted = 0, refusing = 0;
};
inline Grants grants_of(const ClaimOp& c, const std::vector<uint64_t>& sets) {
  auto enough = [](size_t yes, size_t no, size_t size) { return no == 0 && yes > 0 && yes >= (size + 1) / 2; };
  Grants g;
  for (uint64_t packed : sets) {
    std::vector<uint16_t> members;
    for (uint16_t n : wire::unpack_set(packed))
      if (n != 0) members.push_back(n);
    size_t yes = 0, no = 0;
    for (const auto& a : c.answers) {
      if (std::find(members.begin(), members.end(), a.peer) == members.end()) continue;
      yes += a.granted;
      no += a.refused_epoch != 0;
    }
    const bool ok = enough(yes, no, members.size());
    if (g.set.empty() || !ok) g = Grants{ok, members, yes, no};
    if (!ok) break;
  }
  return g;
}

/// A copy (replica or owner) above what was deleted.
inline bool live_copy(const QueryAnswer& a, uint64_t deleted) noexcept { return a.found && a.epoch > deleted; }
/// A set record above what was deleted.
inline bool live_record(const QueryAnswer& a, uint64_t deleted) noexcept {
  return a.record.epoch != 0 && !a.record.deleted && a.record.epoch > deleted;
}

/// A node's answer to a tombstone.
struct TombstoneAnswer {
  uint16_t peer = 0;
  bool answered = false;
  bool stored = false;          ///< it stored the tombstone (and dropped its copy)
  uint64_t refused_epoch = 0;   ///< it holds a newer owner epoch than the tombstone's
  bool refused_by_owner = false;  ///< refused by an owner above the tombstone (apply_tombstone)
  bool asked = false;
};

/// Writes a tombstone for a name at `epoch` (S11's clean exit, issue #9):
/// it must be stored by a quorum of nodes (so every later query sees it)
/// and by a majority of the newest recorded replica set (so the old owner
/// can make nothing durable after it, and no claim can take the segment
/// over from the copies left). `need`: that quorum.
struct TombstoneOp : RoundOp<TombstoneAnswer> {
  uint64_t epoch = 0;
  std::vector<uint16_t> set;  ///< the newest recorded set (empty: none)
  uint32_t stored() const noexcept {
    return static_cast<uint32_t>(std::count_if(answers.begin(), answers.end(), [](auto& a) { return a.stored; }));
  }
  uint32_t set_stored() const noexcept {
    return static_cast<uint32_t>(std::count_if(answers.begin(), answers.end(), [this](auto& a) {
      return a.stored && std::find(set.begin(), set.end(), a.peer) != set.end();
    }));
  }
  bool refused() const noexcept {
    return std::any_of(answers.begin(), answers.end(), [](auto& a) { return a.refused_epoch != 0; });
  }
  bool enough() const noexcept { return stored() >= need && set_stored() >= set_majority(); }
  /// Whether enough could still be stored: counting every node that has
  /// not answered yet as storing it.
  bool reachable_enough() const noexcept {
    uint32_t maybe = 0, set_maybe = 0;
    for (const auto& a : answers) {
      if (a.answered && !a.stored) continue;
      ++maybe;
      set_maybe += std::find(set.begin(), set.end(), a.peer) != set.end();
    }
    return maybe >= need && set_maybe >= set_majority();
  }
  uint32_t set_majority() const noexcept { return static_cast<uint32_t>(set.size() / 2 + (set.empty() ? 0 : 1)); }
};

struct FetchOp : Op {
  std::string name;
  uint64_t id = 0;
  uint16_t peer = 0;
  uint64_t generation = 0;   ///< wanted (0: latest)
  LocalStorage* dest = nullptr;
  ChunkAssembler assembler;
  uint64_t last_progress_ns = 0;
  uint64_t last_request_ns = 0;
  uint64_t got_generation = 0;
  uint64_t got_epoch = 0;
  /// Ask the replica to lend its slot rather than stream it (the link to
  /// it says caps().direct_read). Set by the loader before posting.
  bool ask_direct = false;
  /// The slot the replica lent (FETCH_META + kFlagDirect; generation 0:
  /// none): the op finishes with it set, and the loader's thread maps and
  /// reads it (Engine::Impl::read_lent), then says it is done.
  struct Lent {
    uint32_t pid = 0, fd = 0;
    uint64_t inode = 0, epoch = 0, generation = 0;
    uint32_t chunk_size = 0, gen_crc = 0;
  } lent;
};

/// A replica serving a fetch from one of its published slots.
struct FetchServe {
  uint64_t id = 0;
  uint16_t requester = 0;
  ReplicaStore* store = nullptr;
  ReplicaStore::Slot* slot = nullptr;
  ChunkSender sender;
  uint64_t last_progress_ns = 0;
  /// The slot is lent (a direct read), not streamed: it stays pinned until
  /// the loader's done-ack, or `lease_ns` without one.
  bool lent = false;
  uint64_t lease_ns = 0;
};

}  // namespace baton
