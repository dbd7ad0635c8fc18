// Commit and wait (S4, S15): a commit copies what the application wrote
// since the last one into a stage (only the stale pages, when writes are
// tracked) and checksums the chunks they touch; the worker, or the
// committing thread holding the poll token, sends it. wait_replicated polls
// until enough replicas hold a generation, or a majority for durable.
//
// Thread: the application's (API caller), which takes the segment's mutex
// and, to copy in cache and send at once, the poll token.

#include <algorithm>
#include <bit>
#include <cstring>

#include "common/crc32c.h"
#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

Result<uint64_t> Engine::commit(Segment* segment, CommitOptions options) {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  // Only this segment's mutex is held while it is copied: another
  // application's commit, or an open waiting on the network, goes on.
  Segment* seg = segment;
  auto lock = impl->table.lock(seg);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  auto g = impl->commit_locked(*seg, options);
  // A posted copy-on-write commit that is no generation: the pages its
  // client made pending are no snapshot's.
  if (!g && options.pended && seg->cow != nullptr && seg->cow->role() == CopyOnWrite::Role::kSettler)
    impl->drop_pended(*seg);
  return g;
}

Result<uint64_t> Engine::Impl::commit_locked(Segment& segment, const CommitOptions& options) {
  Segment* const seg = &segment;
  if (options.pended && (!options.frozen || options.expect_generation == 0))
    return fail(Errc::kInvalidArgument, "a commit pended by its client must be frozen and numbered");
  if (seg->fenced.load()) return fail(Errc::kFenced, "segment ", seg->name, " moved to a newer owner, or was deleted");
  for (const auto& [off, len] : options.written)
    if (off > seg->size || len > seg->size - off)
      return fail(Errc::kInvalidArgument, "written range [", std::to_string(off), ", +", std::to_string(len),
                  ") is past the end of ", seg->name, " (", std::to_string(seg->size), " bytes)");
  const uint64_t generation = seg->committed.load() + 1;
  if (options.expect_generation != 0 && options.expect_generation != generation)
    return fail(Errc::kInvalidArgument, "a commit of ", seg->name, " as generation ",
                std::to_string(options.expect_generation), " where the next is ", std::to_string(generation));
  if (options.source != nullptr && seg->cow != nullptr)
    return fail(Errc::kInvalidArgument, "segment ", seg->name, " takes copy-on-write snapshots: no other source");
  if (auto ok = snapshot(*seg, generation, options); !ok) return tl::unexpected(ok.error());
  if (seg->commit_every_ns != 0) seg->next_periodic_ns = clock_ns() + seg->commit_every_ns;
  return generation;
}

void Engine::Impl::drop_pended(Segment& seg) {
  acquire_token();
  settle_cow(seg, true);  // a snapshot pending still is one's: settled first
  seg.cow->unpend_all();
  release_token();
}

void Engine::Impl::publish_cow_ready(Segment& seg, const Stage& current) noexcept {
  if (seg.cow != nullptr && seg.cow->role() == CopyOnWrite::Role::kSettler && !seg.fenced.load())
    seg.cow->set_ready(current.generation);
}

void Engine::Impl::mark_written(Segment& seg, std::span<const std::pair<uint64_t, uint64_t>> ranges,
                                CopyOnWrite::Freeze* freeze) {
  // What changed since the last snapshot. Untracked (or the tracker
  // failed, or is resting): everything, unless the application said what
  // it wrote. The stages learn it in apply_marks(), under the poll token
  // (a free stage's stale pages are the token holder's); the scan runs
  // without it.
  const uint64_t cs = seg.chunk_size;
  constexpr uint64_t kPage = Stage::kStalePage;
  // A chunk is seldom a power of two (a link caps it to its frame), and
  // two 64-bit divisions a page were half of the copy-on-write loop below:
  // the quotient from a multiplication, corrected (exact below 2^52 bytes).
  const double inv = 1.0 / static_cast<double>(cs);
  auto chunk_of = [&](uint64_t byte) {
    auto q = static_cast<uint64_t>(static_cast<double>(byte) * inv);
    if (q * cs > byte) --q;
    else if ((q + 1) * cs <= byte) ++q;
    return static_cast<uint32_t>(q);
  };
  seg.marks.clear();
  seg.mark_words.clear();
  seg.delta_listed = false;
  // A range of at most 64 pages that comes after the ones before it (the
  // client library's copy-on-write runs: scattered pages, in order) goes
  // into the words of pages, which apply_marks ORs in a word at a time;
  // anything else is a run of its own.
  auto mark = [&](uint64_t off, uint64_t len) {
    if (len == 0 || off >= seg.size) return;
    const uint64_t end = off + std::min(len, seg.size - off) - 1;  // the last byte written
    seg.written_chunks.set_range(chunk_of(off), chunk_of(end));
    const uint64_t first = off / kPage, last = end / kPage;
    if (last - first >= 64 || (!seg.mark_words.empty() && first / 64 < seg.mark_words.back().first)) {
      seg.marks.emplace_back(off, end);  // keeps its room: no allocation once warm
      return;
    }
    for (uint64_t w = first / 64; w <= last / 64; ++w) {
      const uint64_t lo = std::max(first, w * 64) % 64, hi = std::min(last, w * 64 + 63) % 64;
      const uint64_t bits = (~uint64_t{0} >> (63 - hi)) & (~uint64_t{0} << lo);
      if (!seg.mark_words.empty() && seg.mark_words.back().first == w) seg.mark_words.back().second |= bits;
      else seg.mark_words.emplace_back(static_cast<uint32_t>(w), bits);
    }
  };
  for (const auto& [off, len] : ranges) mark(off, len);
  if (seg.watch != nullptr && seg.shared_out.load()) {
    BT_INFO("segment %s: its memory was handed out; commits copy it whole from now on", seg.name.c_str());
    seg.watch.reset();
  }
  bool all = ranges.empty();
  if (freeze != nullptr) {  // copy-on-write: every write faulted once and was noted
    // The lists of the written words and pages, not a walk of the bitmap
    // per use (Freeze::take_lists): at 1% of 1 GiB written at random, a
    // walk's mispredicted exits cost ~20 us each.
    static_assert(CopyOnWrite::kPage == Stage::kStalePage);
    const uint64_t pages = (seg.size + kPage - 1) / kPage;  // (the memory may run on past the segment)
    const uint32_t whole_words = static_cast<uint32_t>(pages / 64);
    // Whether the chunks of this commit's delta come only from its pages:
    // then they are listed here, in order, and prepare_stage need not walk
    // the chunk bitmap for them.
    seg.delta_listed = ranges.empty() && seg.written_chunks.popcount() == 0;
    seg.delta_list.clear();
    freeze->take_lists();
    for (auto [w, bits] : freeze->taken_words()) {
      if (w >= whole_words) {
        if (w > whole_words || pages % 64 == 0) break;
        bits &= (uint64_t{1} << (pages % 64)) - 1;
        if (bits == 0) break;
      }
      seg.mark_words.emplace_back(w, bits);  // keeps its room, as marks
    }
    // A page lies in at most two chunks of at least a page each: both bits
    // set and both listed, the same one twice or not, without a branch on
    // which (a page straddles a chunk boundary about as often as not: a
    // branch mispredicted half the time was ~10 ns a page). Smaller chunks
    // take set_range, and no list.
    const auto taken = freeze->taken_pages();
    const auto in_segment = taken.first(std::lower_bound(taken.begin(), taken.end(), pages) - taken.begin());
    if (cs < kPage) seg.delta_listed = false;
    if (seg.delta_listed) seg.delta_list.resize(2 * in_segment.size());
    uint32_t* const out = seg.delta_listed ? seg.delta_list.data() : nullptr;  // listed: the bitmap stays empty
    uint32_t listed = 0, prev = UINT32_MAX;
    for (const uint32_t p : in_segment) {  // (the branches below take the same way for every page)
      const uint64_t off = uint64_t{p} * kPage;
      const uint32_t first = chunk_of(off), last = chunk_of(std::min(off + kPage, seg.size) - 1);
      if (out != nullptr) {  // each listed unless equal to the one before
        out[listed] = first;
        listed += first != prev;
        out[listed] = last;
        listed += last != first;
        prev = last;
      } else if (cs < kPage) {
        seg.written_chunks.set_range(first, last);
      } else {
        seg.written_chunks.or_word(first / 64, uint64_t{1} << (first % 64));
        seg.written_chunks.or_word(last / 64, uint64_t{1} << (last % 64));
      }
    }
    if (out != nullptr) seg.delta_list.resize(listed);
    all = false;
  } else if (seg.watch != nullptr) {
    std::string error;
    all = !seg.watch->collect(mark, &error);
    if (!error.empty()) BT_WARN("segment %s: write tracking stopped: %s", seg.name.c_str(), error.c_str());
  }
  seg.marks_all = all;
  if (all || std::exchange(seg.rewritten, false)) seg.written_unknown = true;
  seg.tracked.store(freeze != nullptr || (seg.watch != nullptr && seg.watch->tracking()), std::memory_order_relaxed);
}

void Engine::Impl::apply_marks(Segment& seg) noexcept {
  constexpr uint64_t kPage = Stage::kStalePage;
  for (auto& stage : seg.stages) {
    if (seg.marks_all) {
      stage.stale.set_all();
      continue;
    }
    for (const auto& [off, end] : seg.marks)
      stage.stale.set_range(static_cast<uint32_t>(off / kPage), static_cast<uint32_t>(end / kPage));
    for (const auto& [w, bits] : seg.mark_words) stage.stale.or_word(w, bits);
  }
  // Pages written since the current stage's snapshot differ from it: a
  // catch-up must not copy them from there (the next stage's start lets
  // it go on).
  seg.catch_up_to = Segment::kCatchUpStopped;
}

Result<void> Engine::Impl::snapshot(Segment& seg, uint64_t generation, const CommitOptions& options) {
  // The caller acts as the transfer processor: it snapshots chunk by chunk
  // and, every few chunks, runs a poll iteration that sends what is ready
  // while it is still in cache. Replication thus overlaps the snapshot; the
  // call returns once the snapshot is complete (S5), and the worker carries
  // on with the rest. Only chunks written since this stage's previous
  // snapshot are copied (mark_written); the rest, and their CRCs, are
  // still right. The copy holds the poll token (no wake-up, chunks
  // sent while in cache) until another caller asks for it (another
  // application's commit): then it lets go at the next batch and copies on
  // without it, taking it back between batches only when nobody else
  // holds it, so that commit does not wait out this copy. With `share`
  // it lets go after every batch: a copy preempted while holding the token
  // would hold up everyone (CommitOptions). A copy-on-write segment
  // copies nothing here (snapshot_cow).
  if (seg.cow != nullptr) {
    if (seg.cow->role() != CopyOnWrite::Role::kSettler || options.frozen)
      return snapshot_cow(seg, generation, options);
    // A client that could not protect its mapping commits by copying:
    // whatever it left pending is settled first.
    acquire_token();
    seg.cow->set_ready(0);  // until this snapshot is settled and the free stage caught up
    settle_cow(seg, true);
    release_token();
  }
  mark_written(seg, options.written);
  acquire_token();
  if (auto fenced = refuse_if_fenced(seg); !fenced) return fenced;
  apply_marks(seg);
  Stage* stage = seg.free_stage();
  if (stage == nullptr) {
    release_token();
    return fail(Errc::kInternal, "no free snapshot stage");
  }
  const uint32_t cs = seg.chunk_size;
  const uint32_t chunks = wire::chunk_count_for(seg.size, cs);
  constexpr uint32_t kChunksPerPoll = 8;
  prepare_stage(seg, *stage, generation);
  stage->ready.store(0, std::memory_order_relaxed);
  stage->state.store(Stage::kPosted, std::memory_order_release);
  start_replication(seg, *stage, clock_ns());
  bool holding = true;
  uint32_t copied = 0;
  // A whole copy sends as it goes, chunks still in cache. A partial one
  // would mostly send chunks it did not touch (every chunk still travels):
  // it copies what changed without the token and leaves the sending to
  // the worker.
  const bool pipelined = stage->stale.popcount() == stage->stale.count();
  const std::byte* const source = options.source != nullptr ? options.source : seg.mem.data();
  if (!pipelined) {
    release_token();
    holding = false;
  }
  constexpr uint64_t kPage = Stage::kStalePage;
  for (uint32_t i = 0; i < chunks; ++i) {
    const uint64_t off = uint64_t{i} * cs;
    const uint32_t len = wire::chunk_len(seg.size, cs, i);
    bool copy = false;
    if (pipelined) {
      // memcpy moves 64 bytes per instruction; the CRC then reads the chunk
      // back from cache, faster than one fused 8-byte loop.
      std::memcpy(stage->mem.data() + off, source + off, len);
      copy = true;
    } else {
      // Only the stale pages of the chunk (chunks need not be page aligned).
      for (uint64_t p = off / kPage; p * kPage < off + len; ++p) {
        if (!stage->stale.test(static_cast<uint32_t>(p))) continue;
        const uint64_t from = std::max(off, p * kPage), to = std::min(off + len, (p + 1) * kPage);
        std::memcpy(stage->mem.data() + from, source + from, to - from);
        copy = true;
      }
    }
    if (copy) {
      stage->chunk_crcs[i] = crc32c(stage->mem.data() + off, len);
      ++copied;
    }
    if (i + 1 == chunks) stage->gen_crc = wire::generation_crc(stage->chunk_crcs);
    if (!copy && i + 1 != chunks) continue;  // published with the next copied chunk
    stage->ready.store(i + 1, std::memory_order_release);
    if ((!pipelined || copied % kChunksPerPoll != 0) && i + 1 != chunks) continue;
    if (!holding) holding = try_acquire_token();
    if (!holding) continue;  // the holder (the worker, or another caller) sends
    poll_once(clock_ns());
    if ((options.share || token.wanting_now() > 1) && i + 1 != chunks) {
      release_token();  // someone else waits for it: copy on without it
      holding = false;
    }
  }
  if (holding) release_token();
  stage->stale.clear_all();
  bump(counters.snapshot_chunks_copied, copied);
  bump(counters.snapshot_chunks_skipped, chunks - copied);
  return {};
}

Result<void> Engine::Impl::refuse_if_fenced(Segment& seg) noexcept {
  // The commit checked the fence before it waited for the token, and the
  // token holder may have fenced the segment meanwhile (a load elsewhere):
  // a new snapshot now would take the stage of the last one, which the
  // fenced owner keeps as a copy of the generation its replicas may have
  // lost since (keep_fenced_copy).
  if (!seg.fenced.load()) return {};
  release_token();
  return fail(Errc::kFenced, "segment ", seg.name, " moved to a newer owner, or was deleted");
}

void Engine::Impl::prepare_stage(Segment& seg, Stage& stage, uint64_t generation) {
  stage.generation = generation;
  stage.delta.clear();
  stage.delta_base = 0;
  const bool listed = std::exchange(seg.delta_listed, false);
  if (!seg.written_unknown && generation > 1) {
    if (listed) stage.delta.assign(seg.delta_list.begin(), seg.delta_list.end());
    else seg.written_chunks.for_each_set([&](uint32_t c) { stage.delta.push_back(c); });
    if (stage.delta.empty()) stage.delta.push_back(0);  // nothing changed: a delta of one chunk
    if (stage.delta.size() < seg.written_chunks.count()) stage.delta_base = generation - 1;
  }
  seg.written_chunks.clear_all();  // taken: what is written from now on is the next delta
  seg.written_unknown = false;
  seg.committed.store(generation);
}

void Engine::Impl::post_ready_stage(Segment& seg, Stage& stage, uint64_t generation) {
  // What snapshot() does, but the copy and the checksums are done: the
  // stage is the replica slot this node held the generation in.
  mark_written(seg, {});
  acquire_token();
  if (seg.cow != nullptr) seg.cow->set_ready(0);
  apply_marks(seg);
  stage.generation = generation;
  stage.delta.clear();
  stage.delta_base = 0;  // a new owner epoch: every replica gets it whole
  seg.written_chunks.clear_all();
  seg.delta_listed = false;
  seg.written_unknown = false;
  seg.committed.store(generation);
  stage.ready.store(wire::chunk_count_for(seg.size, seg.chunk_size), std::memory_order_release);
  stage.state.store(Stage::kPosted, std::memory_order_release);
  start_replication(seg, stage, clock_ns());
  release_token();
  stage.stale.clear_all();
}

Result<void> Engine::wait_replicated(Segment* segment, uint64_t generation, uint32_t k,
                                     std::chrono::milliseconds timeout) {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  Segment* seg = nullptr;
  auto valid = impl->table.with(segment, [&](Segment* s) -> Result<void> {
    if (s == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
    if (k != kDurable && k > s->replicas.size())
      return fail(Errc::kInvalidArgument, "asked for ", std::to_string(k), " replicas; the segment has ",
                  std::to_string(s->replicas.size()));
    if (generation > s->committed.load()) {
      // A fenced owner's application may wait on a generation it posted
      // and batond refused: what it needs to hear is why.
      if (s->fenced.load()) return fail(Errc::kFenced, "segment ", s->name, " moved to a newer owner, or was deleted");
      return fail(Errc::kInvalidArgument, "generation not committed yet");
    }
    seg = s;
    return {};
  });
  if (!valid) return valid;
  const uint64_t deadline = impl->clock_ns() + static_cast<uint64_t>(timeout.count()) * 1'000'000;
  auto held = [seg, generation] {
    uint32_t n = 0;
    for (auto& r : seg->replicas)
      if (r->held.load(std::memory_order_acquire) >= generation) ++n;
    return n;
  };
  auto done = [&] {
    return k == kDurable ? seg->durable.load(std::memory_order_acquire) >= generation : held() >= k;
  };
  // done() reads atomics only (a segment's replica list is fixed once the
  // worker added it): a long wait sleeps without the poll token.
  impl->poll_until([&] { return done() || seg->fenced.load(); }, deadline, Impl::Token::kNotNeeded);
  if (done()) return {};
  if (seg->fenced.load()) return fail(Errc::kFenced, "segment ", seg->name, " moved to a newer owner, or was deleted");
  if (k == kDurable)
    return fail(Errc::kTimeout, "generation ", std::to_string(generation), " is not durable: ",
                std::to_string(held()), " of ", std::to_string(seg->replicas.size()),
                " replicas hold it (a majority must)");
  return fail(Errc::kTimeout, std::to_string(held()), " of ", std::to_string(k), " replicas hold generation ",
              std::to_string(generation));
}

}  // namespace baton
