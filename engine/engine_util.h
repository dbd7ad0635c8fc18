#pragma once
// Small helpers the engine's units share (engine.cc, worker.cc, control/).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>
#include <algorithm>

#include "baton/result.h"
#include "protocol/wire.h"

namespace baton {

inline constexpr uint64_t kFetchRequestRetryNs = 50'000'000;
inline constexpr uint64_t kQueryRetryNs = 20'000'000;  // a lost query or answer must not read as "not found"
inline constexpr uint64_t kGlobalRetryNs = 100'000'000;  // a generation global storage skipped is offered again
inline constexpr size_t kReleasesPerPoll = 16;  // a burst of releases must not fill a link's ring

/// The shard of `shards` that owns segment `id` on every node (its id is a
/// hash of its name; the high half is folded in so both halves count).
inline size_t shard_index(uint64_t id, size_t shards) noexcept {
  return shards <= 1 ? 0 : static_cast<size_t>((id ^ (id >> 32)) % shards);
}

/// Time since `since`, zero if `since` is later (stamped after this poll began).
inline uint64_t elapsed(uint64_t now, uint64_t since) noexcept { return now > since ? now - since : 0; }

/// Adds to a counter only the poll-token holder writes (others read it).
inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) noexcept {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

/// Gives the ids in `ids` turns at one budget, as a poll does with its
/// background copying: in order, while any budget is left, calls
/// `visit(id, slice)` with a slice of at most `per_turn` of what is left;
/// the visit takes from `slice` what it used (that much leaves `budget`)
/// and returns true once the id has nothing more to do (it leaves the
/// list). The ids visited and not done go to the back, so those the budget
/// did not reach this time come first next time: however many there are,
/// a poll copies about one budget, and none waits for ever. A visit must
/// leave the list alone (it is being reordered). No allocation.
template <typename Visit>
void take_turns(std::vector<uint64_t>& ids, uint64_t& budget, uint64_t per_turn, Visit&& visit) {
  size_t kept = 0, next = 0;
  for (; next < ids.size() && budget > 0; ++next) {
    const uint64_t given = std::min(per_turn, budget);
    uint64_t slice = given;
    const bool done = visit(ids[next], slice);
    budget -= given - std::min(slice, given);
    if (!done) ids[kept++] = ids[next];
  }
  // [0, kept): visited, not done; [kept, next): done; [next, end): not reached.
  ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(kept), ids.begin() + static_cast<std::ptrdiff_t>(next));
  std::rotate(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept), ids.end());
}

/// A segment name as the API takes it: kInvalidArgument with the reason.
inline Result<void> check_name(std::string_view name) {
  if (name.empty()) return fail(Errc::kInvalidArgument, "segment name is empty");
  if (name.size() > wire::kMaxNameLen)
    return fail(Errc::kInvalidArgument, "segment name longer than ", std::to_string(wire::kMaxNameLen), " bytes");
  if (!wire::valid_name(name))
    return fail(Errc::kInvalidArgument, "segment name must be printable ASCII without spaces");
  return {};
}

}  // namespace baton
