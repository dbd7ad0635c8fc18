// The engine's facade: start-up, the segment table, commit and wait, and
// status. API calls validate input, allocate, and hand work to the worker
// through the command ring; they may block. Taking ownership (create, open,
// load, reopen) is in control/takeover.cc.

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "common/crc32c.h"
#include "common/log.h"
#include "engine_impl.h"
#include "engine_util.h"
#include "runtime/futex.h"

namespace baton {
namespace {

constexpr unsigned kCommandRingSize = 1024;

}  // namespace

// Rendezvous hashing: every node ranks peers the same way for a segment, and
// a peer joining or leaving moves only the segments it ranks first for.
uint64_t replica_rank(uint64_t seg_id, uint16_t node) noexcept {
  uint64_t x = seg_id ^ (uint64_t{node} * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

// --- Op -------------------------------------------------------------------

void Op::fail(Errc code, std::string message) noexcept {
  ok = false;
  error = Error{code, std::move(message)};
  finish();
}

void Engine::Impl::acquire_token() noexcept {
  if (sim != nullptr) return;  // one thread runs everything
  handoff.fetch_add(1);
  // A sleeping worker holds no token; a polling one lets go within one
  // iteration (sleeping here would cost a wake-up). Should the worker have
  // been preempted holding it on this very vCPU, yield after a while
  // rather than spin out the timeslice it needs.
  for (int spins = 0; !poll_mu.try_lock(); ++spins) {
    if (spins < 4096) _mm_pause();
    else sched_yield();
  }
  token_holder.store(std::this_thread::get_id(), std::memory_order_relaxed);
}

bool Engine::Impl::try_acquire_token() noexcept {
  if (sim != nullptr) return true;
  if (!poll_mu.try_lock()) return false;  // the worker (or a caller) is polling: it sends
  // A sleeping worker wakes to find the token taken and waits for it (and
  // a parked one stays parked) until release_token().
  handoff.fetch_add(1);
  token_holder.store(std::this_thread::get_id(), std::memory_order_relaxed);
  return true;
}

void Engine::Impl::release_token() noexcept {
  if (sim != nullptr) return;
  // Waking the parked worker costs a system call here and a wake-up on the
  // other vCPU; only pay it when there is work nobody would do meanwhile.
  // Otherwise it resumes by itself within max_idle_sleep_us.
  const bool work = has_pending_work();
  token_holder.store(std::thread::id(), std::memory_order_relaxed);
  poll_mu.unlock();
  if (handoff.fetch_sub(1) == 1 && work) {
    if (parked.load()) {
      futex_wake_all(handoff);
    } else if (sleeping.load()) {
      wake.fetch_add(1);
      futex_wake_all(wake);
    }
  }
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() {
  impl_->control->stop();
  impl_->running.store(false);
  impl_->wake.fetch_add(1);
  futex_wake_all(impl_->wake);
  if (impl_->worker.joinable()) impl_->worker.join();
  impl_->control->abort();
  // Views sent and never taken (both threads are gone).
  ControlMsg m;
  while (impl_->to_data.pop(m)) delete m.view;
}

uint16_t Engine::node_id() const noexcept { return impl_->config.node_id; }
uint64_t Engine::incarnation() const noexcept { return impl_->incarnation; }
uint64_t Engine::max_segment_size() const noexcept { return impl_->config.max_segment_size; }

bool Engine::poll() {
  if (impl_->sim == nullptr) return false;  // the worker polls
  return impl_->poll_once(impl_->clock_ns());
}
const Topology& Engine::topology() const noexcept { return impl_->topology; }

Result<std::unique_ptr<Engine>> Engine::start(const EngineConfig& config,
                                              std::vector<std::unique_ptr<Link>> links) {
  if (config.node_id == 0 || config.node_id == wire::kBroadcast)
    return fail(Errc::kInvalidArgument, "node_id must be 1..65534");
  if (config.replication_factor == 0 || config.replication_factor > wire::kMaxReplicaSet)
    return fail(Errc::kInvalidArgument, "replication_factor must be 1..", std::to_string(wire::kMaxReplicaSet));
  if (config.chunk_size < wire::kMinChunkSize || config.chunk_size > wire::kMaxChunkSize)
    return fail(Errc::kInvalidArgument, "chunk_size must be ", std::to_string(wire::kMinChunkSize), "..",
                std::to_string(wire::kMaxChunkSize));
  if (config.retain > 64) return fail(Errc::kInvalidArgument, "retain must be 0..64");
  for (const auto& l : links)
    if (l != nullptr && l->caps().max_frame < wire::kMaxHeadSize + wire::kMinChunkSize)
      return fail(Errc::kInvalidArgument, "link ", l->name(), " carries frames of ", std::to_string(l->caps().max_frame),
                  " bytes; Baton needs at least ",
                  std::to_string(wire::kMaxHeadSize + wire::kMinChunkSize));
  if (config.window == 0 || config.window > 65536) return fail(Errc::kInvalidArgument, "window must be 1..65536");
  if (config.max_segment_size == 0 || config.max_segment_size > wire::kMaxSegmentSize)
    return fail(Errc::kInvalidArgument, "max_segment_size out of range");
  if (config.worker_cpu >= CPU_SETSIZE || (config.worker_cpu >= 0 && config.worker_cpu >= sysconf(_SC_NPROCESSORS_CONF)))
    return fail(Errc::kInvalidArgument, "worker_cpu ", std::to_string(config.worker_cpu), " does not exist here");
  if (config.simulation && (!config.simulation->now || !config.simulation->step))
    return fail(Errc::kInvalidArgument, "simulation hooks need both now and step");
  if (config.track_writes && !DirtyTracker::unavailable_reason().empty())
    BT_INFO("commits copy whole segments: this kernel cannot track writes (%s)",
            DirtyTracker::unavailable_reason().c_str());
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->sim = impl->config.simulation.get();
  if (impl->sim != nullptr && !config.global_dir.empty())
    return fail(Errc::kInvalidArgument, "global storage runs its own thread: not under simulation");
  // Segments live on the NUMA node the engine runs on unless told otherwise.
  auto topology = Topology::discover();
  if (!topology) return tl::unexpected(topology.error());
  impl->topology = std::move(*topology);
  if (impl->config.numa_node < 0) impl->config.numa_node = impl->topology.numa_node_of_this_thread();
  for (auto& link : links) {
    if (!link) return fail(Errc::kInvalidArgument, "null link");
    if (link->peer() == config.node_id) return fail(Errc::kInvalidArgument, "link ", link->name(), " leads to this node");
    if (link->caps().max_frame < wire::kMaxHeadSize + wire::kMinChunkSize)
      return fail(Errc::kInvalidArgument, "link ", link->name(), " carries frames too small for Baton");
  }
  impl->links = std::move(links);
  const bool spin = config.idle == IdlePolicy::kSpin;
  impl->heartbeat_ns = uint64_t{config.heartbeat_interval_us ? config.heartbeat_interval_us : (spin ? 100u : 5000u)} * 1000;
  impl->failure_ns = uint64_t{config.failure_timeout_us ? config.failure_timeout_us : (spin ? 500u : 150'000u)} * 1000;
  if (impl->failure_ns < 2 * impl->heartbeat_ns)
    return fail(Errc::kInvalidArgument, "failure_timeout_us must be at least twice heartbeat_interval_us");
  impl->incarnation = impl->clock_ns();
  std::unordered_set<uint16_t> nodes{config.node_id};
  for (auto& l : impl->links) nodes.insert(l->peer());
  const uint32_t votes = config.expected_votes ? config.expected_votes : static_cast<uint32_t>(nodes.size());
  if (votes < nodes.size())
    return fail(Errc::kInvalidArgument, "expected_votes ", std::to_string(votes), " is below the ",
                std::to_string(nodes.size()), " nodes this one links to");
  impl->tie_breaker = *std::min_element(nodes.begin(), nodes.end());
  if (!config.global_dir.empty()) {
    auto global = GlobalStore::open(config.global_dir, config.global_keep, config.node_id);
    if (!global) return tl::unexpected(global.error());
    impl->global = std::move(*global);
  }
  // Replica slots are allocated off the worker; a simulation (one thread,
  // deterministic) allocates them in place.
  if (impl->sim == nullptr) impl->allocator = std::make_unique<SlotAllocator>(config.retain, config.numa_node);
  // Several links may reach one peer (S17: it is dead only when all are silent).
  std::vector<Detector::LinkInfo> detector_links;
  for (auto& l : impl->links) {
    impl->link_states.emplace_back(l.get());
    detector_links.push_back(Detector::LinkInfo{l->peer(), l->name()});
    if (std::none_of(impl->peer_states.begin(), impl->peer_states.end(),
                     [&](const PeerState& p) { return p.node == l->peer(); }))
      impl->peer_states.push_back(PeerState{l->peer(), l.get()});
  }
  for (auto& ls : impl->link_states)
    for (auto& p : impl->peer_states)
      if (p.node == ls.link->peer()) p.links.push_back(&ls);
  for (auto& p : impl->peer_states) {
    impl->peer_by_node.emplace(p.node, &p);
    impl->peer_nodes.push_back(p.node);
  }
  Impl* raw = impl.get();
  impl->control = std::make_unique<Control>(
      *impl, std::make_unique<Detector>(DetectorConfig{config.node_id, impl->heartbeat_ns, impl->failure_ns, votes},
                                        std::move(detector_links),
                                        [raw](std::string text) { raw->record_event(std::move(text)); }));
  impl->view = impl->data_view = impl->control->view();
  const ssize_t ring_bytes = rte_ring_get_memsize(kCommandRingSize);
  if (ring_bytes < 0) return fail(Errc::kInternal, "rte_ring_get_memsize failed");
  impl->command_mem.reset(std::aligned_alloc(64, (static_cast<size_t>(ring_bytes) + 63) / 64 * 64));
  if (!impl->command_mem) return fail(Errc::kNoMemory, "command ring");
  impl->commands = static_cast<rte_ring*>(impl->command_mem.get());
  if (rte_ring_init(impl->commands, "baton_commands", kCommandRingSize, RING_F_SC_DEQ) != 0)
    return fail(Errc::kInternal, "rte_ring_init failed");
  if (raw->sim == nullptr) {
    impl->worker = std::thread([raw] { raw->run_worker(); });
    impl->control->start();
  }
  if (config.worker_cpu >= 0 && raw->sim == nullptr) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(config.worker_cpu, &set);
    if (pthread_setaffinity_np(impl->worker.native_handle(), sizeof set, &set) != 0)
      BT_WARN("cannot pin the worker to CPU %d; it floats", config.worker_cpu);
  }
  BT_INFO("engine node %u started with %zu links; %s; segments on NUMA node %d", config.node_id,
           raw->links.size(), raw->topology.summary().c_str(), raw->config.numa_node);
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

void Engine::Impl::post(void* item) {
  // The ring holds 1024; a full ring means the worker is far behind: wait.
  queued.fetch_add(1);  // before the enqueue: the worker never counts below zero
  {
    // Producers take turns (many application sessions call at once): the
    // ring's multi-producer tail hand-off orders them through a relaxed
    // spin, which ThreadSanitizer cannot follow; a mutex it can, and this
    // is the control path, not the data path.
    std::lock_guard lock(post_mu);
    while (rte_ring_mp_enqueue(commands, item) != 0) _mm_pause();
  }
  if (sleeping.load()) {
    wake.fetch_add(1);
    futex_wake_all(wake);
  }
}

Result<void> Engine::Impl::call(std::function<void()> fn) {
  if (sim != nullptr) {  // the simulation's one thread holds every engine's state
    fn();
    return {};
  }
  Op op;
  op.run = [&op, &fn] {
    fn();
    op.finish();
  };
  post(&op);
  await(op);
  if (!op.ok) return tl::unexpected(op.error);
  return {};
}

uint32_t Engine::Impl::effective_chunk_size() const {
  uint32_t c = config.chunk_size;
  for (auto& l : links) c = std::min<uint32_t>(c, l->caps().max_frame - wire::kMaxHeadSize);
  return c;
}

Result<Segment*> Engine::Impl::add_segment(std::unique_ptr<Segment> seg, const std::vector<uint16_t>& preferred) {
  // Empty slots, one per replica the replication factor asks for (as many as
  // there are peers): the control thread fills them (control/placement.cc).
  const size_t want = std::min<size_t>(peer_states.size(), config.replication_factor);
  for (size_t i = 0; i < want; ++i) seg->replicas.push_back(std::make_unique<ReplicaTarget>());
  const uint64_t prefer = wire::pack_nodes(preferred);
  Segment* raw = seg.get();
  auto added = call([this, raw, prefer, want] {
    owned[raw->id] = raw;
    tell_control(SegmentNews{SegmentNews::Kind::kAdded, static_cast<uint8_t>(want), raw->id, prefer});
  });
  if (!added) return tl::unexpected(added.error());
  table.insert(std::move(seg));
  return raw;
}

Result<Segment*> Engine::Impl::make_segment(std::string_view name, uint64_t size, LocalStorage* restored,
                                            uint64_t epoch, uint64_t generation, std::vector<uint16_t> preferred,
                                            std::vector<uint16_t> stale) {
  auto seg = std::make_unique<Segment>();
  seg->release_to = std::move(stale);
  for (uint16_t n : preferred) seg->release_to.push_back(n);  // those kept are members: not released
  seg->name = std::string(name);
  seg->id = wire::segment_id(name);
  seg->size = size;
  seg->chunk_size = effective_chunk_size();
  seg->epoch.store(epoch);
  seg->committed.store(generation);
  if (restored != nullptr) {
    seg->mem = std::move(*restored);
  } else {
    auto mem = LocalStorage::create(seg->name, size, config.numa_node, app_pages());
    if (!mem) return tl::unexpected(mem.error());
    seg->mem = std::move(*mem);
  }
  const uint32_t chunks = wire::chunk_count_for(size, seg->chunk_size);
  for (auto& stage : seg->stages) {
    auto mem = LocalStorage::create(seg->name + "@stage", size, config.numa_node);
    if (!mem) return tl::unexpected(mem.error());
    stage.mem = std::move(*mem);
    stage.chunk_crcs.resize(chunks);
    stage.stale.reset(static_cast<uint32_t>((size + Stage::kStalePage - 1) / Stage::kStalePage));
    stage.stale.set_all();
    stage.delta.reserve(std::min<uint32_t>(chunks, 256));  // no allocation per commit
  }
  seg->written_chunks.reset(chunks);
  // A segment of one chunk is copied whole anyway: no scan, no faults.
  if (tracks_writes() && chunks > 1) {
    std::string why;
    seg->watch = WriteWatch::start(seg->mem.data(), seg->mem.mapped_size(), &why);
    if (seg->watch == nullptr)
      BT_WARN("segment %s: writes not tracked, every commit copies it whole: %s", seg->name.c_str(), why.c_str());
    seg->tracked.store(seg->watch != nullptr, std::memory_order_relaxed);
  }
  auto added = add_segment(std::move(seg), preferred);
  if (!added || generation == 0) return added;
  // The restored generation goes to the new replica set as it is (same
  // number, new epoch): the set is recorded once a majority holds it.
  std::lock_guard lock((*added)->mu);
  if (auto ok = snapshot(**added, generation, {}); !ok) return tl::unexpected(ok.error());
  return added;
}

std::span<std::byte> Engine::data(Segment* segment) const noexcept {
  return impl_->table.with(segment, [](Segment* seg) {
    return seg == nullptr ? std::span<std::byte>() : seg->mem.bytes();
  });
}

int Engine::memory_fd(Segment* segment) const noexcept {
  return impl_->table.with(segment, [](Segment* seg) {
    if (seg == nullptr) return -1;
    seg->shared_out.store(true);  // before anyone can map it: the next commit stops tracking
    return seg->mem.fd();
  });
}

Result<uint64_t> Engine::commit(Segment* segment, CommitOptions options) {
  // Only this segment's mutex is held while it is copied: another
  // application's commit, or an open waiting on the network, goes on.
  Segment* seg = segment;
  auto lock = impl_->table.lock(seg);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  if (seg->fenced.load()) return fail(Errc::kFenced, "segment ", seg->name, " moved to a newer owner");
  for (const auto& [off, len] : options.written)
    if (off > seg->size || len > seg->size - off)
      return fail(Errc::kInvalidArgument, "written range [", std::to_string(off), ", +", std::to_string(len),
                  ") is past the end of ", seg->name, " (", std::to_string(seg->size), " bytes)");
  const uint64_t generation = seg->committed.load() + 1;
  if (auto ok = impl_->snapshot(*seg, generation, options); !ok) return tl::unexpected(ok.error());
  return generation;
}

void Engine::Impl::mark_written(Segment& seg, std::span<const std::pair<uint64_t, uint64_t>> ranges) {
  // What changed since the last snapshot, for every stage. Untracked (or
  // the tracker failed, or is resting): everything, unless the application
  // said what it wrote.
  constexpr uint64_t kPage = Stage::kStalePage;
  const uint64_t cs = seg.chunk_size;
  auto mark = [&](uint64_t off, uint64_t len) {
    if (len == 0 || off >= seg.size) return;
    const uint64_t end = off + std::min(len, seg.size - off) - 1;  // the last byte written
    for (auto& stage : seg.stages)
      stage.stale.set_range(static_cast<uint32_t>(off / kPage), static_cast<uint32_t>(end / kPage));
    seg.written_chunks.set_range(static_cast<uint32_t>(off / cs), static_cast<uint32_t>(end / cs));
  };
  for (const auto& [off, len] : ranges) mark(off, len);
  if (seg.watch != nullptr && seg.shared_out.load()) {
    BT_INFO("segment %s: its memory was handed out; commits copy it whole from now on", seg.name.c_str());
    seg.watch.reset();
  }
  bool all = ranges.empty();
  if (seg.watch != nullptr) {
    std::string error;
    all = !seg.watch->collect(mark, &error);
    if (!error.empty()) BT_WARN("segment %s: write tracking stopped: %s", seg.name.c_str(), error.c_str());
  }
  if (all)
    for (auto& stage : seg.stages) stage.stale.set_all();
  if (all || std::exchange(seg.rewritten, false)) seg.written_unknown = true;
  seg.tracked.store(seg.watch != nullptr && seg.watch->tracking(), std::memory_order_relaxed);
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
  // would hold up everyone (CommitOptions). Copy-on-write snapshots will
  // replace the copy (S14).
  mark_written(seg, options.written);
  acquire_token();
  Stage* stage = nullptr;
  for (auto& s : seg.stages)
    if (s.state.load(std::memory_order_acquire) == Stage::kFree) stage = &s;
  if (stage == nullptr) {  // cannot happen: starting a stage frees the other
    release_token();
    return fail(Errc::kInternal, "no free snapshot stage");
  }
  const uint32_t cs = seg.chunk_size;
  const uint32_t chunks = wire::chunk_count_for(seg.size, cs);
  constexpr uint32_t kChunksPerPoll = 8;
  stage->generation = generation;
  // What changed since the previous generation, for replicas that hold it.
  stage->delta.clear();
  stage->delta_base = 0;
  if (!seg.written_unknown && generation > 1) {
    for (uint32_t c = 0; c < seg.written_chunks.count(); ++c)
      if (seg.written_chunks.test(c)) stage->delta.push_back(c);
    if (stage->delta.empty()) stage->delta.push_back(0);  // nothing changed: a delta of one chunk
    if (stage->delta.size() < seg.written_chunks.count()) stage->delta_base = generation - 1;
  }
  seg.written_chunks.clear_all();  // taken: what is written from now on is the next delta
  seg.written_unknown = false;
  seg.committed.store(generation);
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
      std::memcpy(stage->mem.data() + off, seg.mem.data() + off, len);
      copy = true;
    } else {
      // Only the stale pages of the chunk (chunks need not be page aligned).
      for (uint64_t p = off / kPage; p * kPage < off + len; ++p) {
        if (!stage->stale.test(static_cast<uint32_t>(p))) continue;
        const uint64_t from = std::max(off, p * kPage), to = std::min(off + len, (p + 1) * kPage);
        std::memcpy(stage->mem.data() + from, seg.mem.data() + from, to - from);
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
    if ((options.share || handoff.load(std::memory_order_relaxed) > 1) && i + 1 != chunks) {
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

Result<void> Engine::wait_replicated(Segment* segment, uint64_t generation, uint32_t k,
                                     std::chrono::milliseconds timeout) {
  Segment* seg = nullptr;
  auto valid = impl_->table.with(segment, [&](Segment* s) -> Result<void> {
    if (s == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
    if (k != kDurable && k > s->replicas.size())
      return fail(Errc::kInvalidArgument, "asked for ", std::to_string(k), " replicas; the segment has ",
                  std::to_string(s->replicas.size()));
    if (generation > s->committed.load()) return fail(Errc::kInvalidArgument, "generation not committed yet");
    seg = s;
    return {};
  });
  if (!valid) return valid;
  const uint64_t deadline = impl_->clock_ns() + static_cast<uint64_t>(timeout.count()) * 1'000'000;
  auto held = [seg, generation] {
    uint32_t n = 0;
    for (auto& r : seg->replicas)
      if (r->held.load(std::memory_order_acquire) >= generation) ++n;
    return n;
  };
  auto done = [&] {
    return k == kDurable ? seg->durable.load(std::memory_order_acquire) >= generation : held() >= k;
  };
  impl_->poll_until([&] { return done() || seg->fenced.load(); }, deadline);
  if (done()) return {};
  if (seg->fenced.load()) return fail(Errc::kFenced, "segment ", seg->name, " moved to a newer owner");
  if (k == kDurable)
    return fail(Errc::kTimeout, "generation ", std::to_string(generation), " is not durable: ",
                std::to_string(held()), " of ", std::to_string(seg->replicas.size()),
                " replicas hold it (a majority must)");
  return fail(Errc::kTimeout, std::to_string(held()), " of ", std::to_string(k), " replicas hold generation ",
              std::to_string(generation));
}

Result<void> Engine::close(Segment* segment) {
  const std::string name = impl_->table.name_of(segment);
  if (name.empty()) return fail(Errc::kInvalidArgument, "unknown segment handle");
  SegmentTable::NameGuard guard(impl_->table, name);
  Segment* seg = impl_->table.lookup(segment);  // closed meanwhile?
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  return impl_->remove_segment(seg);
}

Result<void> Engine::Impl::remove_segment(Segment* seg) {
  // No new call finds it once it is out of the handle set; one in progress
  // (a commit) finishes first: its mutex is taken before the worker lets go.
  table.retire(seg);
  std::unique_lock seg_lock(seg->mu);
  auto removed = call([this, seg] {
    owned.erase(seg->id);
    seg->current_stage = -1;
    tell_control(SegmentNews{SegmentNews::Kind::kGone, 0, seg->id, 0});
  });
  if (!removed) return removed;  // the engine stops: it frees the segment itself
  seg_lock.unlock();
  table.take(seg);  // destroyed here
  return {};
}

Result<SegmentStatus> Engine::status(Segment* segment) const {
  return impl_->table.with(segment, [this](Segment* seg) -> Result<SegmentStatus> {
    if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
    SegmentStatus st{seg->name, seg->id, seg->size, seg->committed.load(), seg->epoch.load(), seg->fenced.load(), {}};
    for (auto& r : seg->replicas) st.replicas.emplace_back(r->node.load(), r->held.load());
    st.durable = seg->durable.load();
    if (st.durable != 0) st.durable_age_us = elapsed(impl_->clock_ns(), seg->durable_at_ns.load()) / 1000;
    st.writes_tracked = seg->tracked.load(std::memory_order_relaxed);
    return st;
  });
}

Result<ReplicaStatus> Engine::replica_status(std::string_view name) const {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  ReplicaStatus st;
  bool found = false;
  const uint64_t id = wire::segment_id(name);
  auto done = impl_->call([&] {
    auto it = impl_->stores.find(id);
    if (it == impl_->stores.end()) return;
    found = true;
    st = ReplicaStatus{it->second->name(), it->second->size(), it->second->owner(), it->second->epoch(),
                       it->second->generations()};
  });
  if (!done) return tl::unexpected(done.error());
  if (!found) return fail(Errc::kNotFound, "no replica of ", name, " here");
  return st;
}

Result<RecordStatus> Engine::record(std::string_view name) const {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  RecordStatus st;
  bool found = false;
  const uint64_t id = wire::segment_id(name);
  auto done = impl_->call([&] {
    auto it = impl_->records.find(id);
    if (it == impl_->records.end()) return;
    found = true;
    st = RecordStatus{it->second.epoch, it->second.version, it->second.owner, {}};
    for (uint16_t n : wire::unpack_set(it->second.set))
      if (n != 0) st.set.push_back(n);
  });
  if (!done) return tl::unexpected(done.error());
  if (!found) return fail(Errc::kNotFound, "no record of ", name, " here");
  return st;
}

Result<std::vector<std::byte>> Engine::read_replica(std::string_view name, uint64_t generation) const {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  std::vector<std::byte> out;
  bool found = false;
  const uint64_t id = wire::segment_id(name);
  auto done = impl_->call([&] {
    auto it = impl_->stores.find(id);
    if (it == impl_->stores.end()) return;
    ReplicaStore::Slot* slot = it->second->find(generation);
    if (slot == nullptr) return;
    found = true;
    out.assign(slot->mem.data(), slot->mem.data() + it->second->size());
  });
  if (!done) return tl::unexpected(done.error());
  if (!found) return fail(Errc::kNotFound, "no replica of ", name, " generation ", std::to_string(generation));
  return out;
}

std::vector<PeerStatus> Engine::peers() const {
  std::vector<PeerStatus> out;
  auto done = impl_->call([&] {
    const uint64_t now = impl_->clock_ns();
    for (const auto& p : impl_->peer_states) {
      uint64_t heard = 0;
      for (const LinkState* l : p.links) heard = std::max(heard, l->heard_ns.load(std::memory_order_relaxed));
      out.push_back(PeerStatus{p.node, p.alive, p.ever_heard, p.ever_heard ? (now - std::min(now, heard)) / 1000 : 0,
                               p.incarnation, p.incarnation != 0 ? elapsed(now, p.incarnation_seen_ns) / 1000 : 0});
    }
  });
  if (!done) return {};
  return out;
}

View Engine::view() const { return impl_->current_view(); }

std::vector<Event> Engine::events() const {
  std::lock_guard lock(impl_->events_mu);
  return {impl_->event_log.begin(), impl_->event_log.end()};
}

std::vector<LinkStatus> Engine::link_status() const {
  std::vector<LinkStatus> out;
  // up() is the token holder's to call; the worker answers.
  auto done = impl_->call([&] {
    for (auto& l : impl_->links) out.push_back(LinkStatus{l->name(), l->peer(), l->up(), l->counters()});
  });
  if (!done) return {};
  return out;
}

EngineStats Engine::stats() const noexcept {
  const auto& c = impl_->counters;
  EngineStats s;
  s.frames_rx = c.frames_rx.load();
  s.frames_tx = c.frames_tx.load();
  s.misdirected = c.misdirected.load();
  s.retransmits = c.retransmits.load();
  s.duplicates = c.duplicates.load();
  s.stale_epoch = c.stale_epoch.load();
  s.published = c.published.load();
  s.corrupt_generations = c.corrupt_generations.load();
  s.tx_dropped = c.tx_dropped.load();
  s.no_slot = c.no_slot.load();
  s.bad_input = c.bad_input.load();
  s.stalls = c.stalls.load();
  s.longest_stall_us = c.longest_stall_us.load();
  s.snapshot_chunks_copied = c.snapshot_chunks_copied.load();
  s.snapshot_chunks_skipped = c.snapshot_chunks_skipped.load();
  s.deltas_sent = c.deltas_sent.load();
  s.wholes_sent = c.wholes_sent.load();
  s.deltas_published = c.deltas_published.load();
  for (size_t i = 0; i < c.decode.size(); ++i) s.decode_errors[i] = c.decode[i].load();
  return s;
}

}  // namespace baton
