// Copy-on-write snapshots (S14, issue #10 item 1; segment/copy_on_write.h
// has the mechanism). A commit freezes the segment: it takes the pages
// written since the previous commit, marks the pages this stage must
// refresh as pending, and write-protects what was written, then posts the
// stage empty and returns. The poll-token holder (the worker, or a caller
// holding the token) settles the stage chunk by chunk: copies each pending
// page from the segment (still protected, so still the commit's contents)
// or finds it already copied aside by a writer's fault, checksums the
// chunk and raises `ready`, which is what the senders wait on. The
// application's thread copies nothing, but in a quiescent commit the few
// written pages the protector had not protected again yet.
//
// Threads: snapshot_cow is the committer's (seg.mu held; it takes the
// token); advance_cow and settle_cow the token holder's.

#include <algorithm>

#include "common/crc32c.h"
#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

namespace {
/// Bytes of chunks the worker settles per segment per poll: heartbeats go
/// on meanwhile, and what a poll settles is sent while it is still in the
/// cache (the stage's tx copy reads it again). With 4 MiB slices a 64 MiB
/// copy-on-write commit replicated in 47-77 ms here, with 512 KiB in
/// 32-73 ms (medians 60 and 42; `baton-e2e`, six rounds of each, twice).
constexpr uint64_t kCowSlice = 512u << 10;
}  // namespace

EngineConfig::SnapshotMode Engine::Impl::snapshot_mode_for(std::string_view name) const {
  for (const auto& m : config.snapshot_modes)
    if (m.segment == name) return m.mode;
  return config.snapshot_mode;
}

Result<void> Engine::Impl::snapshot_cow(Segment& seg, uint64_t generation, const CommitOptions& options) {
  acquire_token();
  seg.cow->set_ready(0);  // (kSettler) until this snapshot is settled and the free stage caught up
  // A commit the client pended itself (posted: it did not wait) was
  // taken on the word that the last snapshot is settled and the free stage
  // needs only its pages: checked here, before anything is settled.
  const bool unsettled = std::any_of(seg.stages.begin(), seg.stages.end(), [](const Stage& s) { return s.cow; });
  // The previous snapshot must be whole before its pages can pend again
  // (the worker has usually finished it long since). If not, this thread
  // settles the rest a slice at a time, and runs the poll loop between
  // slices (it holds the token), so heartbeats and sends go on.
  settle_cow(seg, true);
  if (auto fenced = refuse_if_fenced(seg); !fenced) return fenced;  // (settle_cow polls)
  Stage* stage = seg.free_stage();
  if (stage == nullptr) {
    release_token();
    return fail(Errc::kInternal, "no free snapshot stage");
  }
  if (options.pended &&
      (seg.cow->role() != CopyOnWrite::Role::kSettler || unsettled || stage->stale.popcount() != 0)) {
    release_token();
    return fail(Errc::kInvalidArgument, "a commit of ", seg.name,
                " posted before batond said its last snapshot was settled");
  }
  Result<void> protected_ok;
  if (seg.cow->role() == CopyOnWrite::Role::kSettler) {
    // Daemon mode: the client library froze its mapping and holds it
    // frozen until this returns (or, posted, pended the pages itself and
    // went on); `written` is what it took.
    mark_written(seg, options.written);
    apply_marks(seg);
    seg.tracked.store(true, std::memory_order_relaxed);
    if (options.pended) seg.cow->aim(stage->mem.data());
    else seg.cow->pend(stage->mem.data(), stage->stale);
  } else {
    CopyOnWrite::Freeze freeze(*seg.cow);
    // The stage needs only this commit's pages when it held the last
    // snapshot but one whole (its catch-up copied the last one's pages in,
    // and cleared them): then they are pending by the tags their faults
    // left (CopyOnWrite::tag_writes), with no store per page.
    const bool only_taken = options.written.empty() && stage->stale.next_set(0) == stage->stale.count();
    mark_written(seg, options.written, &freeze);
    apply_marks(seg);
    if (only_taken && freeze.tags_complete()) {
      freeze.pend_tagged(stage->mem.data(), stage->stale.count());
      bump(counters.cow_pended_by_tags);
    } else {
      freeze.pend(stage->mem.data(), stage->stale);
    }
    if (options.quiescent && freeze.copy_left_pays()) freeze.copy_left();
    else protected_ok = freeze.protect();
  }
  prepare_stage(seg, *stage, generation);
  stage->ready.store(0, std::memory_order_relaxed);
  stage->cow = true;
  stage->state.store(Stage::kPosted, std::memory_order_release);
  start_replication(seg, *stage, clock_ns());
  bump(counters.cow_snapshots);
  if (!protected_ok) {
    // Some written pages may not be protected: copy the snapshot now, as
    // a stage copy would, and commit by copying from now on.
    BT_WARN("segment %s: %s", seg.name.c_str(), protected_ok.error().message.c_str());
    drop_cow(seg, "write-protection failed");
  } else if (std::find(cow_behind.begin(), cow_behind.end(), seg.id) == cow_behind.end()) {
    cow_behind.push_back(seg.id);
  }
  release_token(false, true);
  return {};
}

bool Engine::Impl::advance_cow(Segment& seg, Stage& stage, uint64_t& budget) noexcept {
  if (!stage.cow) return true;
  constexpr uint64_t kPage = Stage::kStalePage;
  const uint32_t cs = seg.chunk_size;
  const uint32_t chunks = wire::chunk_count_for(seg.size, cs);
  const uint32_t pages = stage.stale.count();
  uint32_t i = stage.ready.load(std::memory_order_relaxed);
  uint64_t done = 0;
  uint32_t copied = 0, skipped = 0, settled = 0;
  while (i < chunks) {
    const uint64_t off = uint64_t{i} * cs;
    const uint32_t len = wire::chunk_len(seg.size, cs, i);
    const auto last_page = static_cast<uint32_t>((off + len - 1) / kPage);
    uint32_t p = stage.stale.next_set(static_cast<uint32_t>(off / kPage));
    if (p > last_page) {  // unchanged since this stage's last snapshot: skip to the next stale chunk
      const uint32_t from = i;
      i = p >= pages ? chunks : std::max(i + 1, static_cast<uint32_t>(uint64_t{p} * kPage / cs));
      skipped += i - from;
      if (i < chunks) stage.ready.store(i, std::memory_order_release);
      continue;
    }
    // The budget bounds the copies, not the skips: with nothing stale left
    // past it the snapshot is whole now, not a poll later. The senders
    // would send the last chunks meanwhile without the generation's
    // checksum, and a receiver holding every chunk but that would wait out
    // the sender's retransmit timeout (2 ms at least) for it.
    if (done >= budget) break;
    for (; p <= last_page && p < pages; p = stage.stale.next_set(p + 1)) {
      if (seg.cow != nullptr) seg.cow->settle(p);
      ++settled;
    }
    stage.chunk_crcs[i] = crc32c(stage.mem.data() + off, len);
    ++copied;
    done += len;
    if (++i < chunks) stage.ready.store(i, std::memory_order_release);
  }
  bump(counters.snapshot_chunks_copied, copied);
  bump(counters.snapshot_chunks_skipped, skipped);
  bump(counters.cow_pages_settled, settled);
  budget -= std::min(budget, done);
  if (i < chunks) return false;
  stage.gen_crc = wire::generation_crc(stage.chunk_crcs);
  stage.stale.clear_all();
  stage.cow = false;
  stage.ready.store(chunks, std::memory_order_release);  // after gen_crc: senders read it then
  return true;
}

void Engine::Impl::settle_cow(Segment& seg, bool poll) noexcept {
  for (auto& stage : seg.stages)
    for (uint64_t slice = poll ? kCowSlice : UINT64_MAX; !advance_cow(seg, stage, slice);) {
      poll_once(clock_ns());
      slice = kCowSlice;
    }
}

void Engine::Impl::drop_cow(Segment& seg, const char* why) {
  if (seg.cow == nullptr) return;
  settle_cow(seg, false);
  seg.cow.reset();
  seg.copy_on_write.store(false);
  seg.tracked.store(false, std::memory_order_relaxed);
  BT_INFO("segment %s: copy-on-write stopped (%s); commits copy it whole from now on", seg.name.c_str(), why);
}

uint32_t Engine::Impl::commit_every_ms_for(std::string_view name) const {
  for (const auto& m : config.snapshot_modes)
    if (m.segment == name && m.commit_every_ms.has_value()) return *m.commit_every_ms;
  return config.commit_every_ms;
}

// --- periodic commits (S5) ---------------------------------------------------
// The application keeps running: a copy-on-write commit protects what was
// written and returns, and a write to a page already protected meanwhile
// waits in the fault handler until the commit point is complete, so the
// snapshot is a point in the application's run (see engine.h).

void Engine::Impl::run_periodic() {
  std::unique_lock lock(periodic_mu);
  while (!periodic_stop) {
    lock.unlock();
    const uint64_t now = clock_ns();
    uint64_t next = now + 100'000'000;  // new segments are noticed within 100 ms
    for (Segment* handle : table.handles()) next = std::min(next, periodic_commit(handle, now));
    lock.lock();
    if (periodic_stop) break;
    const uint64_t wait_ns = next > clock_ns() ? next - clock_ns() : 0;
    periodic_cv.wait_for(lock, std::chrono::nanoseconds(wait_ns));
  }
}

uint64_t Engine::Impl::periodic_commit(Segment* handle, uint64_t now) {
  Segment* seg = handle;
  auto lock = table.lock(seg);  // closed meanwhile: null
  if (seg == nullptr || seg->commit_every_ns == 0) return UINT64_MAX;
  if (seg->cow == nullptr || seg->fenced.load()) {
    BT_INFO("segment %s: periodic commits stopped (%s)", seg->name.c_str(),
            seg->fenced.load() ? "moved to a newer owner" : "no copy-on-write any more");
    seg->commit_every_ns = 0;
    return UINT64_MAX;
  }
  if (now < seg->next_periodic_ns) return seg->next_periodic_ns;
  if (!seg->cow->any_written()) {  // nothing new to keep
    seg->next_periodic_ns = now + seg->commit_every_ns;
    return seg->next_periodic_ns;
  }
  if (seg->cow->let_write_land()) return now + CopyOnWrite::kWriteLandsNs;  // one generation, not two
  seg->next_periodic_ns = now + seg->commit_every_ns;
  const uint64_t generation = seg->committed.load() + 1;
  if (auto ok = snapshot(*seg, generation, {}); !ok)
    BT_WARN("segment %s: periodic commit failed: %s", seg->name.c_str(), ok.error().message.c_str());
  else
    bump(counters.periodic_commits);
  return seg->next_periodic_ns;
}

bool Engine::Impl::advance_cow_snapshots() noexcept {
  // A slice of each in turn, one copy_slice in all per poll (take_turns):
  // however many segments commit at once, a poll settles about 4 MiB.
  if (cow_behind.empty()) return false;
  uint64_t budget = config.copy_slice;
  take_turns(cow_behind, budget, kCowSlice, [this](uint64_t id, uint64_t& slice) {
    auto it = owned.find(id);
    if (it == owned.end()) return true;
    bool done = true;
    for (auto& stage : it->second->stages) done &= advance_cow(*it->second, stage, slice);
    return done;
  });
  return true;
}

}  // namespace baton
