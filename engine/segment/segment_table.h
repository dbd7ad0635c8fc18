#pragma once
// The segments this node owns, by name and by live handle, and the names
// whose ownership is changing. Thread: any; its mutex is held only for a
// lookup, an insertion or a removal. Lock order: a busy name (NameGuard),
// then this table, then a segment's own mutex.

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "segment/segment.h"

namespace baton {

class SegmentTable {
 public:
  /// Holds `name` busy for its scope. Ownership changes of one name
  /// (create, open, load, reopen, close, remove), which may wait on network
  /// rounds for seconds, take turns; of different names, and commits and
  /// waits, they run at once.
  class NameGuard {
   public:
    NameGuard(SegmentTable& table, std::string_view name) : table_(table), name_(name) {
      std::unique_lock lock(table_.mu_);
      table_.names_cv_.wait(lock, [&] { return table_.busy_names_.count(name_) == 0; });
      table_.busy_names_.insert(name_);
    }
    ~NameGuard() {
      {
        std::lock_guard lock(table_.mu_);
        table_.busy_names_.erase(name_);
      }
      table_.names_cv_.notify_all();
    }
    NameGuard(const NameGuard&) = delete;
    NameGuard& operator=(const NameGuard&) = delete;

   private:
    SegmentTable& table_;
    std::string name_;
  };

  /// Adds `seg` (its name not in the table) and makes it a live handle.
  void insert(std::unique_ptr<Segment> seg) {
    std::lock_guard lock(mu_);
    Segment* raw = seg.get();
    segments_.emplace(raw->name, std::move(seg));
    handles_.insert(raw);
  }
  /// Runs `f` with `handle` if it is live, else null, under the table's
  /// mutex: the segment cannot be removed meanwhile.
  template <typename F>
  auto with(Segment* handle, F&& f) const {
    std::lock_guard lock(mu_);
    return f(find(handle));
  }
  /// `handle` if it is live, else null.
  Segment* lookup(Segment* handle) const {
    return with(handle, [](Segment* s) { return s; });
  }
  /// The name of a live handle ("" if unknown).
  std::string name_of(Segment* handle) const {
    return with(handle, [](Segment* s) { return s != nullptr ? s->name : std::string(); });
  }
  /// The segment called `name` (live or being removed), or null. Stable
  /// while the caller holds the name busy.
  Segment* by_name(std::string_view name) const {
    std::lock_guard lock(mu_);
    auto it = segments_.find(std::string(name));
    return it == segments_.end() ? nullptr : it->second.get();
  }
  /// Looks `seg` up and locks its mutex (null, unlocked, if not live).
  std::unique_lock<std::mutex> lock(Segment*& seg) const {
    std::lock_guard lock(mu_);
    seg = find(seg);
    return seg == nullptr ? std::unique_lock<std::mutex>() : std::unique_lock(seg->mu);
  }
  /// The live handles now (each may be closed by the time it is used:
  /// pass it back through lock() or with()).
  std::vector<Segment*> handles() const {
    std::lock_guard lock(mu_);
    return {handles_.begin(), handles_.end()};
  }
  /// `seg` stops being a live handle: no new call finds it.
  void retire(Segment* seg) {
    std::lock_guard lock(mu_);
    handles_.erase(seg);
  }
  /// Removes `seg` from the table; the caller destroys it.
  std::unique_ptr<Segment> take(Segment* seg) {
    std::lock_guard lock(mu_);
    handles_.erase(seg);
    auto it = segments_.find(seg->name);
    if (it == segments_.end()) return nullptr;
    std::unique_ptr<Segment> gone = std::move(it->second);
    segments_.erase(it);
    return gone;
  }

  /// A claim this node won at a majority but did not turn into ownership
  /// (a fetch failed, the set's majority said no): its epoch, or 0. The
  /// next load claims that epoch again instead of one above it, so failed
  /// attempts do not raise epochs without bound. Safe: the replicas that
  /// granted it refuse every other claimant of it, and no data was written
  /// under it. Lost on restart (the next claim goes one higher).
  uint64_t unused_claim(uint64_t seg_id) const {
    std::lock_guard lock(claims_mu_);
    auto it = unused_claims_.find(seg_id);
    return it == unused_claims_.end() ? 0 : it->second;
  }
  void set_unused_claim(uint64_t seg_id, uint64_t epoch) {
    std::lock_guard lock(claims_mu_);
    unused_claims_[seg_id] = epoch;
  }
  void clear_unused_claim(uint64_t seg_id) {
    std::lock_guard lock(claims_mu_);
    unused_claims_.erase(seg_id);
  }

 private:
  Segment* find(Segment* handle) const { return handles_.count(handle) != 0 ? handle : nullptr; }

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<Segment>> segments_;
  std::unordered_set<Segment*> handles_;  ///< the live handles: checked on every call, O(1)
  std::unordered_set<std::string> busy_names_;
  std::condition_variable names_cv_;  ///< a name stopped being busy
  /// A leaf lock of its own: the data path reads unused claims while a
  /// committing caller that polls holds a segment's mutex, and lock() takes
  /// a segment's mutex under mu_ (TSan found the cycle, session 31).
  mutable std::mutex claims_mu_;
  std::unordered_map<uint64_t, uint64_t> unused_claims_;  ///< by segment id; claims_mu_
};

}  // namespace baton
