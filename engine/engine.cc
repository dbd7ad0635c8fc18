// The engine's facade: start-up, the segment table, closing, and status.
// API calls validate input, allocate, and hand work to the worker through
// the command ring; they may block. Taking ownership (create, open, load,
// reopen) is in control/takeover.cc; commit and wait in commit.cc.

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "common/crc32c.h"
#include "common/log.h"
#include "control/corosync_membership.h"
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
  if (sim == nullptr) {
    token.acquire();
    return;
  }
  // Under simulation one thread runs everything: the worker's polls that
  // a real caller would wait out run here, if the simulation says so.
  if (sim->while_waiting_for_token) sim->while_waiting_for_token();
}

bool Engine::Impl::try_acquire_token() noexcept {
  // A sleeping worker wakes to find the token taken and waits for it (and
  // a parked one stays parked) until release_token().
  return sim != nullptr || token.try_acquire();
}

void Engine::Impl::release_token(bool caller_sleeps, bool snapshot_left) noexcept {
  if (sim != nullptr) return;
  // Waking the parked worker costs a system call here and a wake-up on the
  // other vCPU; only pay it when there is work nobody would do meanwhile.
  // Otherwise it resumes by itself within max_idle_sleep_us.
  const bool work = has_pending_work(!snapshot_left) || (caller_sleeps && has_transfers_in_flight());
  if (token.release() && work) {
    if (parked.load()) {
      futex_wake_all(token.wanting());
    } else if (sleeping.load()) {
      wake.fetch_add(1);
      futex_wake_all(wake);
    }
  }
}

Engine::Engine(std::vector<std::unique_ptr<Impl>> shards) : shards_(std::move(shards)), impl_(shards_.front().get()) {}

Engine::~Engine() {
  for (auto& shard : shards_) {
    Impl* impl = shard.get();
    if (impl->periodic.joinable()) {  // first: it commits, which needs the worker
      {
        std::lock_guard lock(impl->periodic_mu);
        impl->periodic_stop = true;
      }
      impl->periodic_cv.notify_all();
      impl->periodic.join();
    }
  }
  for (auto& shard : shards_) {
    Impl* impl = shard.get();
    impl->control->stop();
    impl->running.store(false);
    impl->wake.fetch_add(1);
    futex_wake_all(impl->wake);
    if (impl->worker.joinable()) impl->worker.join();
    // Global storage first: a queued write may still read a store's slot,
    // and the retired stores go before it in ~Impl. A hung file system
    // does not hold the stop (its writer is left behind).
    (void)GlobalStore::shut_down(std::move(impl->global), uint64_t{impl->config.global_stop_wait_ms} * 1'000'000);
    impl->control->abort();
    // Views sent and never taken (both threads are gone).
    ControlMsg m;
    while (impl->to_data.pop(m)) delete m.view;
    if (impl->notes_event >= 0) ::close(impl->notes_event);
  }
}

size_t Engine::shards() const noexcept { return shards_.size(); }
size_t Engine::shard_of(std::string_view name) const noexcept {
  return shard_index(wire::segment_id(name), shards_.size());
}
Engine::Impl& Engine::shard_for(std::string_view name) const noexcept { return *shards_[shard_of(name)]; }
Engine::Impl* Engine::shard_holding(const Segment* segment) const noexcept {
  if (shards_.size() == 1) return impl_;  // its table tells a stranger
  for (const auto& shard : shards_)
    if (shard->table.lookup(const_cast<Segment*>(segment)) != nullptr) return shard.get();
  return nullptr;
}

uint16_t Engine::node_id() const noexcept { return impl_->config.node_id; }
uint64_t Engine::incarnation() const noexcept { return impl_->incarnation; }
uint64_t Engine::max_segment_size() const noexcept { return impl_->config.max_segment_size; }

bool Engine::poll() {
  if (impl_->sim == nullptr) return false;  // the workers poll
  bool any = false;
  for (auto& shard : shards_) any |= shard->poll_once(shard->clock_ns());
  return any;
}
const Topology& Engine::topology() const noexcept { return impl_->topology; }
NodePlace Engine::place(size_t shard) const noexcept {
  const Impl& impl = *shards_[std::min(shard, shards_.size() - 1)];
  const EngineConfig& c = impl.config;
  return NodePlace{c.blade != 0 ? c.blade : c.node_id, c.power_domain, impl.package, c.numa_node, impl.memory_node};
}

Result<void> Engine::Impl::place_on_topology(const std::vector<std::unique_ptr<Link>>& links) {
  auto loaded = Topology::load(config.topology);
  if (!loaded) return tl::unexpected(loaded.error());
  topology = std::move(*loaded);
  auto cpus = [this] {
    std::string s;
    for (const auto& n : topology.numa_nodes)
      for (int c : n.cpus) s += (s.empty() ? "" : ",") + std::to_string(c);
    return s;
  };
  if (config.worker_cpu >= 0 && !topology.has_cpu(config.worker_cpu))
    return fail(Errc::kInvalidArgument, "worker_cpu ", std::to_string(config.worker_cpu),
                " does not exist here (CPUs ", cpus(), ")");
  if (config.numa_node >= 0 && !topology.has_numa_node(config.numa_node))
    return fail(Errc::kInvalidArgument, "numa_node ", std::to_string(config.numa_node), " does not exist here (",
                topology.summary(), ")");
  int node = config.numa_node;
  if (node < 0 && config.worker_cpu >= 0) node = topology.numa_node_of_cpu(config.worker_cpu);
  if (node < 0) {
    // The NUMA node most links' devices sit on (a vdev, memif or shm says
    // none), so the worker's frames and the segments meet in one node.
    std::unordered_map<int, int> votes;
    for (const auto& l : links)
      if (l != nullptr && topology.has_numa_node(l->caps().numa_node)) ++votes[l->caps().numa_node];
    int best = 0;
    for (const auto& [n, v] : votes)
      if (v > best || (v == best && n < node)) node = n, best = v;
  }
  if (node < 0) node = topology.numa_node_of_this_thread();
  if (node < 0 && !topology.numa_nodes.empty()) node = topology.numa_nodes.front().os_index;
  config.numa_node = node;
  package = topology.package_of(node);
  memory_node = node;
  if (topology.described) {
    auto here = Topology::discover();
    if (!here || !here->has_numa_node(node)) memory_node = -1;
  }
  return {};
}

Result<std::unique_ptr<Engine>> Engine::start(const EngineConfig& config,
                                              std::vector<std::unique_ptr<Link>> links) {
  if (config.workers.size() > 1)
    return fail(Errc::kInvalidArgument, std::to_string(config.workers.size()),
                " workers take links per shard: Engine::start_sharded");
  std::vector<std::vector<std::unique_ptr<Link>>> shards;
  shards.push_back(std::move(links));
  return start_sharded(config, std::move(shards));
}

Result<std::unique_ptr<Engine>> Engine::start_sharded(const EngineConfig& config,
                                                      std::vector<std::vector<std::unique_ptr<Link>>> links) {
  const size_t count = std::max<size_t>(1, config.workers.size());
  if (links.size() != count)
    return fail(Errc::kInvalidArgument, std::to_string(links.size()), " shards of links for ", std::to_string(count),
                count == 1 ? " worker" : " workers");
  if (count > kMaxShards) return fail(Errc::kInvalidArgument, "at most ", std::to_string(kMaxShards), " workers");
  if (count > 1 && config.membership == MembershipKind::kCorosync)
    return fail(Errc::kInvalidArgument, "Corosync membership runs one shard (one CPG member per node)");
  // Shard k of one node talks to shard k of each peer: every shard reaches
  // the same peers.
  auto peers_of = [](const std::vector<std::unique_ptr<Link>>& ls) {
    std::vector<uint16_t> p;
    for (const auto& l : ls)
      if (l != nullptr) p.push_back(l->peer());
    std::sort(p.begin(), p.end());
    p.erase(std::unique(p.begin(), p.end()), p.end());
    return p;
  };
  for (size_t k = 1; k < count; ++k)
    if (peers_of(links[k]) != peers_of(links[0]))
      return fail(Errc::kInvalidArgument, "shard ", std::to_string(k), " does not reach the peers shard 0 reaches");
  std::vector<std::unique_ptr<Impl>> shards;
  for (size_t k = 0; k < count; ++k) {
    EngineConfig c = config;
    if (!config.workers.empty()) c.worker_cpu = config.workers[k];
    auto shard = Impl::prepare(c, std::move(links[k]), k, count);
    if (!shard) return tl::unexpected(shard.error());
    shards.push_back(std::move(*shard));
  }
  for (auto& shard : shards) shard->launch();
  return std::unique_ptr<Engine>(new Engine(std::move(shards)));
}

Result<std::unique_ptr<Engine::Impl>> Engine::Impl::prepare(const EngineConfig& config,
                                                            std::vector<std::unique_ptr<Link>> links, size_t shard,
                                                            size_t shards) {
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
  if (config.copy_slice == 0) return fail(Errc::kInvalidArgument, "copy_slice must be at least 1 byte");
  if (config.max_segment_size == 0 || config.max_segment_size > wire::kMaxSegmentSize)
    return fail(Errc::kInvalidArgument, "max_segment_size out of range");
  if (config.worker_cpu >= CPU_SETSIZE || config.worker_cpu < -1)
    return fail(Errc::kInvalidArgument, "worker_cpu ", std::to_string(config.worker_cpu), " does not exist here");
  if (config.simulation && (!config.simulation->now || !config.simulation->step))
    return fail(Errc::kInvalidArgument, "simulation hooks need both now and step");
  for (const auto& sb : config.standbys) {
    if (auto ok = check_name(sb.segment); !ok) return fail(Errc::kInvalidArgument, "standby: ", ok.error().message);
    if (sb.nodes.empty() || sb.nodes.size() > wire::kMaxReplicaSet)
      return fail(Errc::kInvalidArgument, "standby of ", sb.segment, ": 1..", std::to_string(wire::kMaxReplicaSet),
                  " nodes");
    for (uint16_t n : sb.nodes)
      if (n == 0 || n == wire::kBroadcast)
        return fail(Errc::kInvalidArgument, "standby of ", sb.segment, ": node ids are 1..65534");
  }
  for (size_t i = 0; i < config.snapshot_modes.size(); ++i) {
    const auto& m = config.snapshot_modes[i];
    if (auto ok = check_name(m.segment); !ok) return fail(Errc::kInvalidArgument, "snapshot mode: ", ok.error().message);
    for (size_t j = 0; j < i; ++j)
      if (config.snapshot_modes[j].segment == m.segment)
        return fail(Errc::kInvalidArgument, "snapshot mode of ", m.segment, " given twice");
  }
  if (config.track_writes && !DirtyTracker::unavailable_reason().empty())
    BT_INFO("commits copy whole segments: this kernel cannot track writes (%s)",
            DirtyTracker::unavailable_reason().c_str());
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->sim = impl->config.simulation.get();
  for (const auto& sb : config.standbys) {
    auto& nodes = impl->standby_nodes[wire::segment_id(sb.segment)];
    for (uint16_t n : sb.nodes)
      if (std::find(nodes.begin(), nodes.end(), n) == nodes.end()) nodes.push_back(n);
  }
  if (impl->sim != nullptr && !config.global_dir.empty())
    return fail(Errc::kInvalidArgument, "global storage runs its own thread: not under simulation");
  if (auto placed = impl->place_on_topology(links); !placed) return tl::unexpected(placed.error());
  for (auto& link : links) {
    if (!link) return fail(Errc::kInvalidArgument, "null link");
    if (link->peer() == config.node_id) return fail(Errc::kInvalidArgument, "link ", link->name(), " leads to this node");
    if (link->caps().max_frame < wire::kMaxHeadSize + wire::kMinChunkSize)
      return fail(Errc::kInvalidArgument, "link ", link->name(), " carries frames too small for Baton");
  }
  // Drivers bind their own buffers next to the shard's memory (a shm ring
  // its side writes).
  if (impl->memory_node >= 0)
    for (auto& link : links) link->place(impl->memory_node);
  impl->links = std::move(links);
  impl->heartbeat_ns = uint64_t{config.heartbeat_us()} * 1000;
  impl->failure_ns = uint64_t{config.failure_us()} * 1000;
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
    auto global = GlobalStore::open(config.global_dir, config.global_keep, config.node_id,
                                   std::max<uint64_t>(config.global_buffer_mib, 1) << 20);
    if (!global) return tl::unexpected(global.error());
    impl->global = std::move(*global);
  }
  // Replica slots are allocated off the worker; a simulation (one thread,
  // deterministic) allocates them in place.
  if (impl->sim == nullptr) impl->allocator = std::make_unique<SlotAllocator>(config.retain, impl->memory_node);
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
  auto event = [raw](std::string text) { raw->record_event(std::move(text)); };
  std::unique_ptr<MembershipSource> membership;
  if (config.membership == MembershipKind::kCorosync) {
    if (raw->sim != nullptr) return fail(Errc::kInvalidArgument, "a simulation takes membership from its heartbeats");
    auto m = make_corosync_membership(config.node_id, votes, config.corosync_group, event);
    if (!m) return tl::unexpected(m.error());
    membership = std::move(*m);
  } else {
    membership = make_heartbeat_membership(config.node_id, votes);
  }
  impl->control = std::make_unique<Control>(
      *impl, std::make_unique<Detector>(DetectorConfig{config.node_id, impl->heartbeat_ns, impl->failure_ns, votes},
                                        std::move(detector_links), event, std::move(membership)));
  impl->view = impl->data_view = impl->control->view();
  impl->data_quorate.store(impl->data_view.quorate);
  const ssize_t ring_bytes = rte_ring_get_memsize(kCommandRingSize);
  if (ring_bytes < 0) return fail(Errc::kInternal, "rte_ring_get_memsize failed");
  impl->command_mem.reset(std::aligned_alloc(64, (static_cast<size_t>(ring_bytes) + 63) / 64 * 64));
  if (!impl->command_mem) return fail(Errc::kNoMemory, "command ring");
  impl->commands = static_cast<rte_ring*>(impl->command_mem.get());
  impl->notes_event = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (impl->notes_event < 0) return fail(Errc::kIo, "eventfd: ", std::strerror(errno));
  if (rte_ring_init(impl->commands, "baton_commands", kCommandRingSize, RING_F_SC_DEQ) != 0)
    return fail(Errc::kInternal, "rte_ring_init failed");
  impl->shard = static_cast<uint16_t>(shard);
  impl->shard_count = static_cast<uint16_t>(shards);
  if (shard > 0) impl->event_prefix = "shard " + std::to_string(shard) + ": ";
  return impl;
}

void Engine::Impl::launch() {
  if (sim == nullptr) {
    worker = std::thread([this] { run_worker(); });
    control->start();
    bool periodic_commits = config.commit_every_ms != 0;
    for (const auto& m : config.snapshot_modes) periodic_commits |= m.commit_every_ms.value_or(0) != 0;
    if (periodic_commits) periodic = std::thread([this] { run_periodic(); });
  }
  if (config.worker_cpu >= 0 && sim == nullptr && topology.described) {
    BT_INFO("worker_cpu %d is a CPU of the described topology, not of this machine: the worker floats",
            config.worker_cpu);
  } else if (config.worker_cpu >= 0 && sim == nullptr) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(config.worker_cpu, &set);
    if (pthread_setaffinity_np(worker.native_handle(), sizeof set, &set) != 0)
      BT_WARN("cannot pin the worker to CPU %d; it floats", config.worker_cpu);
  }
  BT_INFO("engine node %u shard %u of %u started with %zu links; %s; segments on NUMA node %d (package %d)%s",
          config.node_id, shard + 1u, shard_count + 0u, links.size(), topology.summary().c_str(), config.numa_node,
          package, memory_node == config.numa_node ? "" : ", memory where the kernel puts it");
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
                                            std::vector<uint16_t> stale, ReplicaStore::Promotion* promoted) {
  auto seg = std::make_unique<Segment>();
  seg->release_to = std::move(stale);
  for (uint16_t n : preferred) seg->release_to.push_back(n);  // those kept are members: not released
  seg->name = std::string(name);
  seg->id = wire::segment_id(name);
  seg->size = size;
  seg->chunk_size = effective_chunk_size();
  seg->epoch.store(epoch);
  seg->committed.store(generation);
  seg->creating.store(restored == nullptr && generation == 0);  // create_fresh's
  // create_fresh takes one above every epoch of the name's deleted history.
  if (restored == nullptr && generation == 0) seg->deleted_history = epoch - 1;
  if (restored != nullptr) {
    seg->mem = std::move(*restored);
  } else {
    auto mem = LocalStorage::create(seg->name, size, memory_node, app_pages());
    if (!mem) return tl::unexpected(mem.error());
    seg->mem = std::move(*mem);
  }
  const uint32_t chunks = wire::chunk_count_for(size, seg->chunk_size);
  // A promoted standby's latest slot is the first stage as it is when its
  // chunks are this node's chunks; any other slot memory it brought is
  // reused for a stage's copy.
  bool ready_stage = false;
  std::vector<LocalStorage*> reuse;
  if (promoted != nullptr) {
    ready_stage = promoted->stage.data() != nullptr && promoted->stage.size() == size &&
                  promoted->chunk_size == seg->chunk_size && promoted->chunk_crcs.size() == chunks;
    for (LocalStorage* m : {&promoted->stage, &promoted->spare})
      if (m->data() != nullptr && m->size() == size && !(ready_stage && m == &promoted->stage)) reuse.push_back(m);
  }
  for (size_t i = 0; i < seg->stages.size(); ++i) {
    Stage& stage = seg->stages[i];
    stage.stale.reset(static_cast<uint32_t>((size + Stage::kStalePage - 1) / Stage::kStalePage));
    stage.stale.set_all();
    if (i == 0 && ready_stage) {
      stage.mem = std::move(promoted->stage);
      stage.chunk_crcs = std::move(promoted->chunk_crcs);
      stage.gen_crc = promoted->gen_crc;
      stage.stale.clear_all();  // it holds what the application's memory holds
    } else if (!reuse.empty()) {
      stage.mem = std::move(*reuse.back());
      reuse.pop_back();
      stage.chunk_crcs.resize(chunks);
    } else {
      // free_stage() takes the last free stage: the second one takes this
      // generation's snapshot below (or the first commit) and is faulted
      // in now. The first is only needed by the commit after that: it is
      // faulted in on a thread of its own (prefault).
      const bool next = i + 1 == seg->stages.size();
      const auto when = next || sim != nullptr ? LocalStorage::Populate::kNow : LocalStorage::Populate::kLater;
      auto mem = LocalStorage::create(seg->name + "@stage", size, memory_node, LocalStorage::Pages::kAny, when);
      if (!mem) return tl::unexpected(mem.error());
      stage.mem = std::move(*mem);
      stage.chunk_crcs.resize(chunks);
    }
    stage.delta.reserve(std::min<uint32_t>(chunks, 256));  // no allocation per commit
  }
  if (!seg->stages[0].mem.populated())
    seg->prefault = std::jthread([mem = &seg->stages[0].mem] {
      prctl(PR_SET_NAME, "baton-prefault", 0, 0, 0);
      mem->populate();
    });
  seg->written_chunks.reset(chunks);
  seg->marks.reserve(256);  // mark_written's runs: no allocation per commit
  // Copy-on-write where asked and possible (else the stage copy below).
  // (In daemon mode the client library takes the snapshot of its own
  // mapping: share_copy_on_write.)
  if (snapshot_mode_for(seg->name) == EngineConfig::SnapshotMode::kCopyOnWrite && !config.shared_with_clients) {
    std::string why = CopyOnWrite::unavailable_reason();
    if (why.empty() && seg->mem.huge_pages()) why = "the memory is on huge pages";
    if (why.empty()) {
      auto cow = CopyOnWrite::attach(seg->mem.data(), seg->mem.mapped_size(), config.cow_protect_ahead);
      if (cow) {
        seg->cow = std::move(*cow);
        seg->cow->tag_writes();  // snapshot_cow pends with pend_tagged where it can, else pend
      } else {
        why = cow.error().message;
      }
    }
    if (!why.empty())
      BT_WARN("segment %s: no copy-on-write, commits copy it: %s", seg->name.c_str(), why.c_str());
    seg->copy_on_write.store(seg->cow != nullptr);
    seg->tracked.store(seg->cow != nullptr, std::memory_order_relaxed);
  }
  if (const uint32_t every = commit_every_ms_for(seg->name); every != 0 && config.shared_with_clients) {
    // The client library takes them, of a copy-on-write segment only.
    if (snapshot_mode_for(seg->name) != EngineConfig::SnapshotMode::kCopyOnWrite)
      BT_WARN("segment %s: no periodic commits (every %u ms asked): they need copy-on-write snapshots "
              "([snapshots] mode = \"copy-on-write\"); only the application's commits make generations",
              seg->name.c_str(), every);
  } else if (every != 0) {
    if (seg->cow != nullptr && sim == nullptr) {
      seg->commit_every_ns = uint64_t{every} * 1'000'000;
      seg->next_periodic_ns = clock_ns() + seg->commit_every_ns;
      // Only what the application writes from now on counts (CopyOnWrite::protect_all).
      if (auto ok = seg->cow->protect_all(); !ok)
        BT_WARN("segment %s: %s: the first periodic commit takes it whole", seg->name.c_str(),
                ok.error().message.c_str());
    } else {
      BT_WARN("segment %s: no periodic commits (every %u ms asked): %s", seg->name.c_str(), every,
              sim != nullptr ? "not in a simulation" : "they need copy-on-write snapshots");
    }
  }
  // A segment of one chunk is copied whole anyway: no scan, no faults.
  if (seg->cow == nullptr && tracks_writes() && chunks > 1) {
    std::string why;
    seg->watch = WriteWatch::start(seg->mem.data(), seg->mem.mapped_size(), &why);
    if (seg->watch == nullptr)
      BT_WARN("segment %s: writes not tracked, every commit copies it whole: %s", seg->name.c_str(), why.c_str());
    seg->tracked.store(seg->watch != nullptr, std::memory_order_relaxed);
  }
  // Nothing has written the memory: it is the generation (or zeroes).
  seg->pristine.store(true);
  auto added = add_segment(std::move(seg), preferred);
  if (!added || generation == 0) return added;
  // The restored generation goes to the new replica set as it is (same
  // number, new epoch): the set is recorded once a majority holds it.
  std::lock_guard lock((*added)->mu);
  if (ready_stage) {
    post_ready_stage(**added, (*added)->stages[0], generation);
    return added;
  }
  // It copies without holding the poll token: the worker sends to the new
  // set meanwhile, and the load returns once the copy is whole, not once
  // the caller has also pushed the first of it to every replica.
  CommitOptions copy_only;
  copy_only.share = true;
  if (auto ok = snapshot(**added, generation, copy_only); !ok) return tl::unexpected(ok.error());
  return added;
}

std::span<std::byte> Engine::data(Segment* segment) const noexcept {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return {};
  return impl->table.with(segment, [](Segment* seg) {
    if (seg == nullptr) return std::span<std::byte>();
    seg->pristine.store(false);  // the caller may write it
    return seg->mem.bytes();
  });
}

uint64_t Engine::size(Segment* segment) const noexcept {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return 0;
  return impl->table.with(segment, [](Segment* seg) { return seg == nullptr ? uint64_t{0} : seg->size; });
}

int Engine::memory_fd(Segment* segment) const noexcept {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return -1;
  return impl->table.with(segment, [impl](Segment* seg) {
    if (seg == nullptr) return -1;
    seg->shared_out.store(true);  // before anyone can map it: the next commit stops tracking
    seg->pristine.store(false);
    // Writes through another mapping would bypass copy-on-write: stop it
    // now (unless a client library protects its own mapping).
    if (seg->cow != nullptr && seg->cow->role() != CopyOnWrite::Role::kSettler) {
      std::lock_guard lock(seg->mu);
      impl->acquire_token();
      impl->drop_cow(*seg, "its memory was handed out");
      impl->release_token();
    }
    return seg->mem.fd();
  });
}

Result<std::optional<ClientCopyOnWrite>> Engine::share_copy_on_write(Segment* segment) {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  Segment* seg = segment;
  auto lock = impl->table.lock(seg);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  if (impl->snapshot_mode_for(seg->name) != EngineConfig::SnapshotMode::kCopyOnWrite)
    return std::optional<ClientCopyOnWrite>{};
  if (const auto& why = CopyOnWrite::unavailable_reason(); !why.empty()) return fail(Errc::kUnavailable, why);
  if (seg->mem.huge_pages()) return fail(Errc::kUnavailable, "the memory is on huge pages");
  if (seg->cow != nullptr) {  // the previous client's: its snapshot is settled first
    impl->acquire_token();
    impl->settle_cow(*seg, true);
    seg->cow.reset();
    impl->release_token();
  }
  const uint64_t len = seg->mem.mapped_size();
  auto share = CowShare::create(len);
  if (!share) return tl::unexpected(share.error());
  const int fd = dup(share->fd());
  if (fd < 0) return fail(Errc::kIo, "dup: ", std::strerror(errno));
  auto cow = CopyOnWrite::settler(seg->mem.data(), len, std::move(*share));
  if (!cow) {
    ::close(fd);
    return tl::unexpected(cow.error());
  }
  seg->cow = std::move(*cow);
  seg->copy_on_write.store(true);
  return ClientCopyOnWrite{fd, impl->commit_every_ms_for(seg->name), impl->config.cow_protect_ahead};
}

Result<void> Engine::close(Segment* segment) {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  const std::string name = impl->table.name_of(segment);
  if (name.empty()) return fail(Errc::kInvalidArgument, "unknown segment handle");
  SegmentTable::NameGuard guard(impl->table, name);
  Segment* seg = impl->table.lookup(segment);  // closed meanwhile?
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  return impl->remove_segment(seg);
}

Result<void> Engine::Impl::remove_segment(Segment* seg) {
  // No new call finds it once it is out of the handle set; one in progress
  // (a commit) finishes first: its mutex is taken before the worker lets go.
  table.retire(seg);
  std::unique_lock seg_lock(seg->mu);
  auto removed = call([this, seg] {
    // A fenced owner's copy stays as a replica copy (keep_fenced_copy),
    // if that was not done yet: its stages go with the segment below.
    if (seg->fenced.load()) (void)keep_fenced_copy(*seg, true);
    std::erase(fenced_to_keep, seg->id);
    owned.erase(seg->id);
    seg->current_stage = -1;
    tell_control(SegmentNews{SegmentNews::Kind::kGone, 0, seg->id, 0});
  });
  if (!removed) return removed;  // the engine stops: it frees the segment itself
  seg_lock.unlock();
  // Nothing refers to it any more. Its memory (the application's, two
  // stages) goes back on the allocator's thread, after a quiet moment: a
  // load that finds a fenced copy of the name removes it first, on a
  // failover's critical path, where unmapping 64 MiB three times took
  // 23-26 ms; freed at once on another thread, it still took that CPU
  // time from the failover's rounds on two vCPUs (their query took 21-42
  // ms instead of 1-2; docs/performance.md). In a simulation, here and now.
  constexpr auto kQuietMoment = std::chrono::milliseconds(300);
  std::unique_ptr<Segment> gone = table.take(seg);
  if (allocator) allocator->free(std::move(gone), kQuietMoment);
  return {};
}

Result<SegmentStatus> Engine::status(Segment* segment) const {
  Impl* impl = shard_holding(segment);
  if (impl == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  return impl->table.with(segment, [impl](Segment* seg) -> Result<SegmentStatus> {
    if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
    SegmentStatus st{seg->name, seg->id, seg->size, seg->committed.load(), seg->epoch.load(), seg->fenced.load(), {}};
    for (auto& r : seg->replicas) st.replicas.emplace_back(r->node.load(), r->held.load());
    st.durable = seg->durable.load();
    if (st.durable != 0) st.durable_age_us = elapsed(impl->clock_ns(), seg->durable_at_ns.load()) / 1000;
    st.writes_tracked = seg->tracked.load(std::memory_order_relaxed);
    // The committer drops `cow` holding seg->mu: hold it to read through it
    // (but never wait out a commit's copy for a status: counts then stay 0).
    st.copy_on_write = seg->copy_on_write.load(std::memory_order_relaxed);
    std::unique_lock lock(seg->mu, std::try_to_lock);
    if (lock.owns_lock() && seg->cow != nullptr) {
      st.cow_faults = seg->cow->faults();
      st.cow_copied_aside = seg->cow->copied_aside();
      st.cow_protected_ahead = seg->cow->protected_ahead();
      st.cow_protected_at_commit = seg->cow->protected_at_commit();
      st.cow_lifted_whole = seg->cow->lifted_whole();
      st.cow_copied_at_commit = seg->cow->copied_at_commit();
      st.cow_settler_gave_up = seg->cow->settler_gave_up();
      if (seg->cow->declined()) st.copy_on_write = false;  // the application's library commits by copying
    }
    if (auto it = impl->standby_nodes.find(seg->id); it != impl->standby_nodes.end()) st.standbys = it->second;
    return st;
  });
}

namespace {

ReplicaStatus replica_status_of(const ReplicaStore& store) {
  ReplicaStatus st{store.name(), store.size(), store.owner(), store.epoch(), store.generations()};
  const ReplicaStore::HotStatus hot = store.hot_status();
  st.standby = hot.on;
  st.standby_generation = hot.generation;
  st.standby_behind_bytes = hot.behind_bytes;
  return st;
}

}  // namespace

Result<ReplicaStatus> Engine::replica_status(std::string_view name) const {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  ReplicaStatus st;
  bool found = false;
  const uint64_t id = wire::segment_id(name);
  Impl* impl = &shard_for(name);
  auto done = impl->call([&] {
    auto it = impl->stores.find(id);
    if (it == impl->stores.end()) return;
    found = true;
    st = replica_status_of(*it->second);
  });
  if (!done) return tl::unexpected(done.error());
  if (!found) return fail(Errc::kNotFound, "no replica of ", name, " here");
  return st;
}

Result<std::vector<ReplicaStatus>> Engine::replicas() const {
  std::vector<ReplicaStatus> out;
  for (const auto& shard : shards_) {
    Impl* impl = shard.get();
    auto done = impl->call([&] {
      for (const auto& [id, store] : impl->stores) out.push_back(replica_status_of(*store));
    });
    if (!done) return tl::unexpected(done.error());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

void Engine::prefer_replicas_on(std::vector<uint16_t> nodes) {
  std::sort(nodes.begin(), nodes.end());
  nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  for (auto& shard : shards_) {
    auto& pref = shard->replica_preference;
    {
      std::lock_guard lock(pref.mu);
      if (pref.nodes == nodes) continue;
      pref.nodes = nodes;
    }
    pref.version.fetch_add(1, std::memory_order_release);
  }
}

Result<RecordStatus> Engine::record(std::string_view name) const {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  RecordStatus st;
  bool found = false;
  const uint64_t id = wire::segment_id(name);
  Impl* impl = &shard_for(name);
  auto done = impl->call([&] {
    auto it = impl->records.find(id);
    if (it == impl->records.end()) return;
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
  Impl* impl = &shard_for(name);
  auto done = impl->call([&] {
    auto it = impl->stores.find(id);
    if (it == impl->stores.end()) return;
    ReplicaStore::Slot* slot = it->second->find(generation);
    if (slot == nullptr) return;
    found = true;
    out.assign(slot->mem.data(), slot->mem.data() + it->second->size());
  });
  if (!done) return tl::unexpected(done.error());
  if (!found) return fail(Errc::kNotFound, "no replica of ", name, " generation ", std::to_string(generation));
  return out;
}

std::vector<PeerStatus> Engine::peers() const { return peers_of(*impl_); }

std::vector<PeerStatus> Engine::peers(std::string_view name) const { return peers_of(shard_for(name)); }

std::vector<PeerStatus> Engine::peers_of(Impl& impl) const {
  std::vector<PeerStatus> out;
  auto done = impl.call([&] {
    const uint64_t now = impl.clock_ns();
    for (const auto& p : impl.peer_states) {
      uint64_t heard = 0;
      for (const LinkState* l : p.links) heard = std::max(heard, l->heard_ns.load(std::memory_order_relaxed));
      out.push_back(PeerStatus{p.node, p.alive, p.ever_heard, p.ever_heard ? (now - std::min(now, heard)) / 1000 : 0,
                               p.incarnation, p.incarnation != 0 ? elapsed(now, p.incarnation_seen_ns) / 1000 : 0,
                               p.package, p.numa_node, p.records_had()});
    }
  });
  if (!done) return {};
  return out;
}

View Engine::view() const { return impl_->current_view(); }

std::vector<Event> Engine::events() const {
  std::vector<Event> out;
  for (const auto& shard : shards_) {
    std::lock_guard lock(shard->events_mu);
    out.insert(out.end(), shard->event_log.begin(), shard->event_log.end());
  }
  std::stable_sort(out.begin(), out.end(), [](const Event& a, const Event& b) { return a.unix_us < b.unix_us; });
  return out;
}

std::vector<LinkStatus> Engine::link_status() const {
  std::vector<LinkStatus> out;
  // up() is the token holder's to call; each shard's worker answers.
  for (const auto& shard : shards_) {
    Impl* impl = shard.get();
    auto done = impl->call([&] {
      for (auto& l : impl->links)
        out.push_back(LinkStatus{l->name(), l->peer(), l->up(), l->counters(), impl->shard});
    });
    if (!done) return {};
  }
  return out;
}

namespace {
/// Milliseconds from `then` to `now` (0 if `then` is later).
uint64_t ms_since(uint64_t now, uint64_t then) { return (now - std::min(now, then)) / 1'000'000; }
}  // namespace

std::optional<StorageStatus> Engine::storage() const {
  std::optional<StorageStatus> out;
  const uint64_t now = now_ns();
  uint64_t newest_error = 0, newest_write = 0, failing_since = 0;
  for (const auto& shard : shards_) {
    if (!shard->global) continue;
    if (!out) {
      out.emplace();
      out->dir = shard->config.global_dir;
    }
    const GlobalStore::Health h = shard->global->health();
    out->written += h.written;
    out->failed += h.failed;
    out->skipped += h.skipped;
    out->dropped += h.dropped;
    out->failing |= h.failing;
    if (h.failing && (failing_since == 0 || h.failing_since_ns < failing_since)) failing_since = h.failing_since_ns;
    if (h.last_error_ns > newest_error) {
      newest_error = h.last_error_ns;
      out->last_error = h.last_error;
    }
    newest_write = std::max(newest_write, h.last_write_ns);
  }
  if (out) {
    out->last_error_age_ms = newest_error == 0 ? 0 : std::max<uint64_t>(ms_since(now, newest_error), 1);
    out->failing_for_ms = failing_since == 0 ? 0 : ms_since(now, failing_since);
    out->last_write_age_ms = newest_write == 0 ? UINT64_MAX : ms_since(now, newest_write);
  }
  return out;
}

EngineStats Engine::stats() const noexcept {
  EngineStats s;
  for (const auto& shard : shards_) {
    const auto& c = shard->counters;
    s.frames_rx += c.frames_rx.load();
    s.frames_tx += c.frames_tx.load();
    s.misdirected += c.misdirected.load();
    s.retransmits += c.retransmits.load();
    s.duplicates += c.duplicates.load();
    s.stale_epoch += c.stale_epoch.load();
    s.published += c.published.load();
    s.corrupt_generations += c.corrupt_generations.load();
    s.tx_dropped += c.tx_dropped.load();
    s.no_slot += c.no_slot.load();
    s.bad_input += c.bad_input.load();
    s.stalls += c.stalls.load();
    s.longest_stall_us = std::max(s.longest_stall_us, c.longest_stall_us.load());
    if (const uint64_t at = c.last_stall_ns.load(); at != 0) {  // the newest stall of any shard
      const uint64_t age = std::max<uint64_t>(ms_since(shard->clock_ns(), at), 1);  // 0 means none
      s.last_stall_age_ms = s.last_stall_age_ms == 0 ? age : std::min(s.last_stall_age_ms, age);
    }
    s.snapshot_chunks_copied += c.snapshot_chunks_copied.load();
    s.snapshot_chunks_skipped += c.snapshot_chunks_skipped.load();
    s.deltas_sent += c.deltas_sent.load();
    s.wholes_sent += c.wholes_sent.load();
    s.deltas_published += c.deltas_published.load();
    s.restamped += c.restamped.load();
    s.fenced_copies_kept += c.fenced_copies_kept.load();
    s.loads_outside_set += c.loads_outside_set.load();
    s.deltas_published_later += c.deltas_published_later.load();
    s.notes_rx += c.notes_rx.load();
    s.notes_dropped += c.notes_dropped.load();
    s.standby_promotions += c.standby_promotions.load();
    s.replica_promotions += c.replica_promotions.load();
    s.replica_promotions_chained += c.replica_promotions_chained.load();
    s.slots_lent += c.slots_lent.load();
    s.direct_reads += c.direct_reads.load();
    s.direct_read_failures += c.direct_read_failures.load();
    s.cow_snapshots += c.cow_snapshots.load();
    s.cow_pages_settled += c.cow_pages_settled.load();
    s.cow_pended_by_tags += c.cow_pended_by_tags.load();
    s.periodic_commits += c.periodic_commits.load();
    for (size_t i = 0; i < c.decode.size(); ++i) s.decode_errors[i] += c.decode[i].load();
  }
  return s;
}

}  // namespace baton
