// Control side of the engine: the API calls. They validate input, allocate,
// and hand work to the worker through the command ring; they may block.

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
#include "runtime/futex.h"

namespace baton {
namespace {

constexpr unsigned kCommandRingSize = 1024;

Result<void> check_name(std::string_view name) {
  if (name.empty()) return fail(Errc::kInvalidArgument, "segment name is empty");
  if (name.size() > wire::kMaxNameLen)
    return fail(Errc::kInvalidArgument, "segment name longer than ", std::to_string(wire::kMaxNameLen), " bytes");
  if (!wire::valid_name(name))
    return fail(Errc::kInvalidArgument, "segment name must be printable ASCII without spaces");
  return {};
}

// The newest owner epoch any answer mentions (held or recorded): a new owner
// starts above it, so stale replicas and records give way.
uint64_t newest_epoch(const QueryOp& q) {
  uint64_t e = 0;
  for (const auto& a : q.answers) e = std::max({e, a.epoch, a.record.epoch});
  return e;
}

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
  if (sleeping.load()) {
    wake.fetch_add(1);
    futex_wake_all(wake);
  }
  // The worker lets go within one poll iteration; sleeping here would cost a wake-up.
  while (!poll_mu.try_lock()) _mm_pause();
}

void Engine::Impl::release_token() noexcept {
  if (sim != nullptr) return;
  // Waking the parked worker costs a system call here and a wake-up on the
  // other vCPU; only pay it when there is work nobody would do meanwhile.
  // Otherwise it resumes by itself within max_idle_sleep_us.
  const bool work = has_pending_work();
  poll_mu.unlock();
  if (handoff.fetch_sub(1) == 1 && work && parked.load()) futex_wake_all(handoff);
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() {
  impl_->running.store(false);
  impl_->wake.fetch_add(1);
  futex_wake_all(impl_->wake);
  if (impl_->worker.joinable()) impl_->worker.join();
}

uint16_t Engine::node_id() const noexcept { return impl_->config.node_id; }

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
  if (config.chunk_size < 512 || config.chunk_size > wire::kMaxChunkSize)
    return fail(Errc::kInvalidArgument, "chunk_size must be 512..", std::to_string(wire::kMaxChunkSize));
  if (config.window == 0 || config.window > 65536) return fail(Errc::kInvalidArgument, "window must be 1..65536");
  if (config.max_segment_size == 0 || config.max_segment_size > wire::kMaxSegmentSize)
    return fail(Errc::kInvalidArgument, "max_segment_size out of range");
  if (config.worker_cpu >= CPU_SETSIZE || (config.worker_cpu >= 0 && config.worker_cpu >= sysconf(_SC_NPROCESSORS_CONF)))
    return fail(Errc::kInvalidArgument, "worker_cpu ", std::to_string(config.worker_cpu), " does not exist here");
  if (config.simulation && (!config.simulation->now || !config.simulation->step))
    return fail(Errc::kInvalidArgument, "simulation hooks need both now and step");
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
    if (link->caps().max_frame < wire::kHeaderSize + wire::kMaxNameLen + 512)
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
  impl->membership = make_heartbeat_membership(config.node_id, votes);
  impl->view = impl->membership->view();
  if (!config.global_dir.empty()) {
    auto global = GlobalStore::open(config.global_dir, config.global_keep, config.node_id);
    if (!global) return tl::unexpected(global.error());
    impl->global = std::move(*global);
  }
  // Several links may reach one peer (S17: it is dead only when all are silent).
  impl->link_states.reserve(impl->links.size());
  for (auto& l : impl->links) {
    impl->link_states.push_back(LinkState{l.get()});
    if (std::none_of(impl->peer_states.begin(), impl->peer_states.end(),
                     [&](const PeerState& p) { return p.node == l->peer(); }))
      impl->peer_states.push_back(PeerState{l->peer(), l.get()});
  }
  for (auto& ls : impl->link_states)
    for (auto& p : impl->peer_states)
      if (p.node == ls.link->peer()) p.links.push_back(&ls);
  for (auto& p : impl->peer_states) impl->peer_by_node.emplace(p.node, &p);
  const ssize_t ring_bytes = rte_ring_get_memsize(kCommandRingSize);
  if (ring_bytes < 0) return fail(Errc::kInternal, "rte_ring_get_memsize failed");
  impl->command_mem.reset(std::aligned_alloc(64, (static_cast<size_t>(ring_bytes) + 63) / 64 * 64));
  if (!impl->command_mem) return fail(Errc::kNoMemory, "command ring");
  impl->commands = static_cast<rte_ring*>(impl->command_mem.get());
  if (rte_ring_init(impl->commands, "baton_commands", kCommandRingSize, RING_F_SC_DEQ) != 0)
    return fail(Errc::kInternal, "rte_ring_init failed");
  Impl* raw = impl.get();
  if (raw->sim == nullptr) impl->worker = std::thread([raw] { raw->run_worker(); });
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
  while (rte_ring_mp_enqueue(commands, item) != 0) _mm_pause();
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
  for (auto& l : links) c = std::min<uint32_t>(c, l->caps().max_frame - wire::kHeaderSize - wire::kMaxNameLen);
  return c;
}

Result<std::unique_ptr<QueryOp>> Engine::Impl::query(std::string_view name) {
  auto q = std::make_unique<QueryOp>();
  q->name = std::string(name);
  q->id = wire::segment_id(name);
  for (auto& p : peer_states) q->answers.push_back(QueryAnswer{p.node});
  QueryOp* raw = q.get();
  q->run = [this, raw] {
    for (QueryOp* other : queries)
      if (other->id == raw->id) return raw->fail(Errc::kBusy, "another load of this name is in progress");
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
    raw->need = membership->view().quorum;
    queries.push_back(raw);
    send_query(*raw, now);
  };
  post(raw);
  await(*raw);
  if (!raw->ok) return tl::unexpected(raw->error);
  // Decisions rest on what a quorum of nodes said: a set record written at
  // a quorum is then seen by at least one of them.
  const uint32_t need = current_view().quorum;
  const uint32_t answered = q->answered();
  if (answered < need)
    return fail(Errc::kUnavailable, "only ", std::to_string(answered), " of the ", std::to_string(need),
                " nodes a decision needs answered about ", name);
  return q;
}

Result<Segment*> Engine::Impl::add_segment(std::unique_ptr<Segment> seg) {
  // Replica selection (S4): live peers on other blades / power domains /
  // NUMA nodes first (pick_replica), then any peer not known to be gone.
  const size_t want = std::min<size_t>(peer_states.size(), config.replication_factor);
  for (size_t i = 0; i < want; ++i) seg->replicas.push_back(std::make_unique<ReplicaTarget>());
  Segment* raw = seg.get();
  size_t picked = 0;
  auto added = call([this, raw, &picked] {
    std::vector<std::unique_ptr<ReplicaTarget>> slots = std::move(raw->replicas);
    raw->replicas.clear();
    for (auto& slot : slots) {
      // After a takeover, the live replicas of the set taken over come first:
      // they hold the state already.
      PeerState* p = nullptr;
      for (uint16_t n : raw->preferred)
        for (auto& ps : peer_states)
          if (p == nullptr && ps.node == n && ps.alive &&
              std::none_of(raw->replicas.begin(), raw->replicas.end(), [n](auto& r) { return r->node == n; }))
            p = &ps;
      if (p == nullptr) p = pick_replica(*raw, true);
      if (p == nullptr) p = pick_replica(*raw, false);
      if (p != nullptr) {
        slot->node = p->node;
        ++picked;
      }  // else an empty slot (node 0): filled when a peer comes up (step_replicas)
      raw->replicas.push_back(std::move(slot));
    }
    owned[raw->id] = raw;
    propose_set(*raw, raw->committed);
  });
  if (!added) return tl::unexpected(added.error());
  if (picked < config.replication_factor)
    BT_WARN("segment %s: %zu of %u replicas (not enough peers)", raw->name.c_str(), picked,
            config.replication_factor);
  segments.emplace(raw->name, std::move(seg));
  handles.insert(raw);
  return raw;
}

Result<Segment*> Engine::Impl::make_segment(std::string_view name, uint64_t size, LocalStorage* restored,
                                            uint64_t epoch, uint64_t generation, std::vector<uint16_t> preferred) {
  auto seg = std::make_unique<Segment>();
  seg->preferred = std::move(preferred);
  seg->name = std::string(name);
  seg->id = wire::segment_id(name);
  seg->size = size;
  seg->chunk_size = effective_chunk_size();
  seg->epoch.store(epoch);
  seg->committed = generation;
  if (restored != nullptr) {
    seg->mem = std::move(*restored);
  } else {
    auto mem = LocalStorage::create(seg->name, size, config.numa_node);
    if (!mem) return tl::unexpected(mem.error());
    seg->mem = std::move(*mem);
  }
  const uint32_t chunks = wire::chunk_count_for(size, seg->chunk_size);
  for (auto& stage : seg->stages) {
    auto mem = LocalStorage::create(seg->name + "@stage", size, config.numa_node);
    if (!mem) return tl::unexpected(mem.error());
    stage.mem = std::move(*mem);
    stage.chunk_crcs.resize(chunks);
  }
  auto added = add_segment(std::move(seg));
  if (!added || generation == 0) return added;
  // The restored generation goes to the new replica set as it is (same
  // number, new epoch): the set is recorded once a majority holds it.
  if (auto ok = snapshot(**added, generation); !ok) return tl::unexpected(ok.error());
  return added;
}

Result<Segment*> Engine::create(std::string_view name, uint64_t size) {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  if (size == 0 || size > impl_->config.max_segment_size)
    return fail(Errc::kInvalidArgument, "size must be 1..", std::to_string(impl_->config.max_segment_size));
  std::lock_guard lock(impl_->control_mu);
  if (impl_->segments.count(std::string(name)) != 0) return fail(Errc::kExists, "segment ", name, " is open here");
  if (auto ok = impl_->require_quorum("create a segment"); !ok) return tl::unexpected(ok.error());
  auto q = impl_->query(name);
  if (!q) return tl::unexpected(q.error());
  for (const auto& a : (*q)->answers) {
    if (a.found)
      return fail(Errc::kExists, "segment ", name, " already exists on node ", std::to_string(a.peer),
                  a.owner ? " (its owner)" : " (a replica); load it instead");
    // A record without a copy: an owner wrote it (perhaps creating this very
    // name right now, or it is cut off): creating again would make a second
    // owner without a claim.
    if (a.record.epoch != 0)
      return fail(Errc::kExists, "segment ", name, " is recorded at epoch ", std::to_string(a.record.epoch),
                  " (node ", std::to_string(a.peer), " holds its record); load it instead");
  }
  return impl_->create_fresh(name, size);
}

Result<Segment*> Engine::Impl::create_fresh(std::string_view name, uint64_t size) {
  // A new name has no replica set to fence through, so its creation rests
  // on the view alone. Two nodes split apart are each quorate (two_node);
  // only the tie-breaker (the lowest node id) creates names then, as
  // votequorum's auto_tie_breaker would decide. Loads stay open to both:
  // they are fenced by the replica set's majority.
  if (const View v = current_view(); v.expected_votes == 2 && v.members.size() < 2 && config.node_id != tie_breaker)
    return fail(Errc::kUnavailable, "cannot create ", name, ": this two-node cluster is split and only node ",
                std::to_string(tie_breaker), " (the tie-breaker) creates new names while the other is unreachable");
  // Epoch 1: no node holds or records the name (the callers checked).
  auto made = make_segment(name, size, nullptr, 1, 0);
  if (!made) return made;
  Segment* seg = *made;
  // The name is this node's once its replica set is recorded at a quorum:
  // of two nodes creating one name at once, at most one gets there.
  bool failed = false;
  const uint64_t deadline = clock_ns() + quorum_patience_ns();
  const bool settled = poll_until(
      [&] {
        failed = seg->pending.failed;
        return failed || !seg->pending.active;
      },
      deadline);
  if (settled && !failed) return seg;
  (void)call([this, seg] { withdraw_record(*seg); });
  (void)remove_segment(seg);
  if (failed) return fail(Errc::kExists, "segment ", name, " is being created by another node");
  return fail(Errc::kUnavailable, "segment ", name, ": its replica set was not recorded at a quorum of nodes in time");
}

Result<void> Engine::Impl::require_quorum(const char* what) {
  const uint64_t deadline = clock_ns() + round_timeout_ns();
  // Just after start the view may not have gathered the peers yet: poll.
  if (poll_until([this] { return membership->view().quorate; }, deadline)) return {};
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
    for (ClaimOp* other : claims)
      if (other->id == raw->id) return raw->fail(Errc::kBusy, "another load of this name is in progress");
    // Our own replica answers here and now, by the same rule as a peer's.
    for (auto& a : raw->answers) {
      if (a.peer != config.node_id) continue;
      a.answered = true;
      auto it = stores.find(raw->id);
      if (it == stores.end()) continue;
      ReplicaStore& st = *it->second;
      if (raw->epoch < st.epoch() || (raw->epoch == st.epoch() && st.owner() != config.node_id)) {
        a.refused_epoch = st.epoch();
        continue;
      }
      st.adopt_epoch(config.node_id, raw->epoch);
      a.granted = true;
      a.total_len = st.size();
      if (const ReplicaStore::Slot* slot = st.latest()) {
        a.data_epoch = slot->epoch;
        a.generation = slot->generation;
        a.set = slot->set;
      }
    }
    const uint64_t now = clock_ns();
    raw->deadline_ns = now + round_timeout_ns();
    raw->hard_deadline_ns = now + quorum_patience_ns();
    claims.push_back(raw);
    send_claim(*raw, now);
  };
  post(raw);
  await(*raw);
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

// Ownership moves in two steps (S9, S22). First a claim: every replica that
// holds the name, and every member of the newest recorded replica set, is
// asked to accept owner epoch E+1, above any epoch seen; one that accepts
// refuses the old owner from then on and hands over what it holds.
// Ownership is taken only if a majority of that recorded set accepted. Then
// the newest generation handed over is fetched from a replica that accepted.
// See docs/architecture.md, "Fencing".
Result<OpenResult> Engine::Impl::load_from(const QueryOp& q, std::string_view name) {
  uint64_t max_epoch = newest_epoch(q);
  // Claim one above the newest epoch seen, or the newest itself if this
  // node won it before without taking ownership (see unused_claims).
  uint64_t claim_epoch = max_epoch + 1;
  if (auto it = unused_claims.find(q.id); it != unused_claims.end() && it->second == max_epoch) claim_epoch = max_epoch;
  std::vector<uint16_t> holders;
  SetRecord record;  // the newest record of the replica set any node holds
  for (const auto& a : q.answers) {
    if (a.record.newer_than(record)) record = a.record;
    if (!a.found) continue;
    if (!a.owner && a.generation > 0 && a.total_len > 0 && a.total_len <= config.max_segment_size)
      holders.push_back(a.peer);
  }
  if (holders.empty()) {
    if (!config.global_dir.empty()) return load_from_global(name, max_epoch);
    return fail(Errc::kNotFound, "no live replica holds ", name);
  }
  // Members of the recorded set are asked too, whatever they answered.
  for (uint16_t n : wire::unpack_set(record.set))
    if (n != 0 && std::find(holders.begin(), holders.end(), n) == holders.end() &&
        (n == config.node_id || peer_by_node.count(n) != 0))
      holders.push_back(n);
  std::unique_ptr<ClaimOp> c;
  for (int attempt = 0;; ++attempt) {
    size_t recorded = 0;
    for (uint16_t n : wire::unpack_set(record.set)) recorded += n != 0;
    auto claimed = claim(name, claim_epoch, holders, static_cast<uint32_t>(std::max<size_t>(1, (recorded + 1) / 2)));
    if (!claimed) return tl::unexpected(claimed.error());
    c = std::move(*claimed);
    uint64_t refused = 0;
    for (const auto& a : c->answers) refused = std::max(refused, a.refused_epoch);
    // A replica had seen a newer epoch than the query showed (a concurrent
    // or failed claim): claim above it, a few times at most.
    if (refused == 0 || attempt == 2) break;
    claim_epoch = std::max(claim_epoch, refused + 1);
  }
  // Until ownership is taken at it, this epoch is an unused claim of ours.
  unused_claims[q.id] = c->epoch;
  const ClaimAnswer* best = nullptr;
  for (const auto& a : c->answers)
    if (a.granted && a.generation > 0 &&
        (best == nullptr || std::tie(a.data_epoch, a.generation) > std::tie(best->data_epoch, best->generation)))
      best = &a;
  if (best == nullptr)
    return fail(Errc::kUnavailable, "no replica of ", name, " accepted owner epoch ", std::to_string(c->epoch));
  // The set whose majority must accept: the newest recorded one. Without any
  // record (its creator died before recording one) nothing was ever
  // durable, and the set stamped on the newest generation serves.
  // Two records of one (epoch, version) from different owners are left by
  // a lost race to create the name whose loser could not withdraw its own:
  // then a majority of each must accept.
  std::vector<uint64_t> sets{record.epoch != 0 ? record.set : best->set};
  for (const auto& a : q.answers)
    if (a.record.epoch == record.epoch && a.record.version == record.version && a.record.owner != record.owner &&
        record.epoch != 0 && std::find(sets.begin(), sets.end(), a.record.set) == sets.end())
      sets.push_back(a.record.set);
  //
  // How many must accept: durable means held by a majority W = |S|/2 + 1 of
  // the set, so R = |S| - W + 1 acceptances (a) leave the old owner fewer
  // than W members that still take its data, and (b) meet every majority
  // that held a durable generation (R + W > |S|). Only a member that holds
  // the segment accepts; one that restarted and lost it cannot, and R (not
  // a majority) keeps the segment loadable when that happens to a member of
  // a set of two. A member that refuses (it took another claimant's epoch)
  // fails the claim.
  auto enough = [](size_t yes, size_t no, size_t size) { return no == 0 && yes > 0 && yes >= (size + 1) / 2; };
  std::vector<uint16_t> set;
  size_t accepted = 0, refusing = 0;
  for (uint64_t packed : sets) {
    std::vector<uint16_t> members;
    for (uint16_t n : wire::unpack_set(packed))
      if (n != 0) members.push_back(n);
    size_t yes = 0, no = 0;
    for (const auto& a : c->answers) {
      if (std::find(members.begin(), members.end(), a.peer) == members.end()) continue;
      yes += a.granted;
      no += a.refused_epoch != 0;
    }
    const bool ok = enough(yes, no, members.size());
    if (set.empty() || !ok) {  // report the first set, or the one that fails
      set = members;
      accepted = yes;
      refusing = no;
    }
    if (!ok) break;
  }
  if (!enough(accepted, refusing, set.size())) {
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
    auto dest = LocalStorage::create(std::string(name), a->total_len, config.numa_node);
    if (!dest) return tl::unexpected(dest.error());
    uint64_t got = 0;
    if (a->peer == config.node_id) {  // our own replica store: a local copy
      auto copied = call([&] {
        auto it = stores.find(q.id);
        ReplicaStore::Slot* slot = it == stores.end() ? nullptr : it->second->find(a->generation);
        if (slot == nullptr || it->second->size() != dest->size()) return;
        std::memcpy(dest->data(), slot->mem.data(), dest->size());
        got = slot->generation;
      });
      if (!copied || got == 0) continue;  // published over meanwhile: try the next copy
    } else {
      FetchOp op;
      op.name = std::string(name);
      op.id = q.id;
      op.peer = a->peer;
      op.generation = a->generation;
      op.dest = &*dest;
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
        continue;
      }
      got = op.got_generation;
    }
    auto seg = make_segment(name, a->total_len, &*dest, c->epoch, got, keep);
    if (!seg) return tl::unexpected(seg.error());
    unused_claims.erase(q.id);
    record_event("segment " + std::string(name) + ": ownership taken at epoch " + std::to_string(c->epoch) + " (" +
                 std::to_string(accepted) + " of " + std::to_string(set.size()) + " replicas of " +
                 set_string(set) + " accepted); generation " + std::to_string(got) + " loaded from " +
                 (a->peer == config.node_id ? std::string("this node's replica")
                                            : "node " + std::to_string(a->peer)));
    return OpenResult{*seg, OpenOutcome::kRestored, got};
  }
  return tl::unexpected(last);
}

Result<OpenResult> Engine::Impl::load_from_global(std::string_view name, uint64_t max_epoch) {
  auto copy = GlobalStore::newest(config.global_dir, name, config.max_segment_size);
  if (!copy) return fail(Errc::kNotFound, "no live replica and no copy in global storage holds ", name);
  auto dest = LocalStorage::create(std::string(name), copy->size, config.numa_node);
  if (!dest) return tl::unexpected(dest.error());
  if (auto ok = GlobalStore::read(*copy, dest->bytes()); !ok) return tl::unexpected(ok.error());
  const uint64_t epoch = std::max(max_epoch, copy->epoch) + 1;
  auto seg = make_segment(name, copy->size, &*dest, epoch, copy->generation);
  if (!seg) return tl::unexpected(seg.error());
  record_event("loaded " + std::string(name) + " generation " + std::to_string(copy->generation) +
               " from global storage (no live replica)");
  return OpenResult{*seg, OpenOutcome::kRestored, copy->generation};
}

Result<OpenResult> Engine::load(std::string_view name) {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  std::lock_guard lock(impl_->control_mu);
  return impl_->open_locked(name, 0, true);
}

Result<OpenResult> Engine::open(std::string_view name, uint64_t size) {
  if (auto ok = check_name(name); !ok) return tl::unexpected(ok.error());
  if (size == 0 || size > impl_->config.max_segment_size)
    return fail(Errc::kInvalidArgument, "size must be 1..", std::to_string(impl_->config.max_segment_size));
  std::lock_guard lock(impl_->control_mu);
  return impl_->open_locked(name, size, false);
}

Result<OpenResult> Engine::Impl::open_locked(std::string_view name, uint64_t size, bool load_only, bool again) {
  if (auto it = segments.find(std::string(name)); it != segments.end()) {
    if (!it->second->fenced.load()) return fail(Errc::kExists, "segment ", name, " is open here");
    // Superseded here: its memory holds a history the cluster moved past.
    if (auto ok = remove_segment(it->second.get()); !ok) return tl::unexpected(ok.error());
  }
  if (auto ok = require_quorum(load_only ? "take ownership" : "open a segment"); !ok)
    return tl::unexpected(ok.error());
  auto q = query(name);
  if (!q) return tl::unexpected(q.error());
  if (load_only) return load_from(**q, name);
  bool any_replica = false;
  const uint64_t newest = newest_epoch(**q);
  for (const auto& a : (*q)->answers) {
    // An owner whose epoch was superseded (it has not heard yet) owns nothing.
    if (a.found && a.owner && a.epoch >= newest)
      return fail(Errc::kExists, "segment ", name, " is owned by live node ", std::to_string(a.peer));
    any_replica |= a.found;
  }
  if (any_replica) return load_from(**q, name);
  // No replica anywhere: global storage may still hold it (S7); only when it
  // does not either is this a first run.
  if (!config.global_dir.empty() && GlobalStore::newest(config.global_dir, name, config.max_segment_size))
    return load_from_global(name, newest_epoch(**q));
  // A record but no copy anywhere: the state existed and is lost (or its
  // holders are cut off). Starting afresh would hide that; say it instead.
  for (const auto& a : (*q)->answers)
    if (a.record.epoch != 0)
      return fail(Errc::kNotFound, "segment ", name, " is recorded at epoch ", std::to_string(a.record.epoch),
                  " but no live replica or global storage holds it");
  // "Nothing anywhere" is a conclusion about every node, not a quorum: a
  // quorum of nodes that restarted (and so forgot everything) would agree
  // on it while a live node that did not answer in time holds the state.
  // Nor may this node have received a copy or a record while it asked (its
  // own answer was taken when the round began): then ask once more.
  uint16_t silent = 0;
  bool arrived = false;
  (void)call([&] {
    for (const auto& a : (*q)->answers)
      if (auto it = peer_by_node.find(a.peer); !a.answered && it != peer_by_node.end() && it->second->alive)
        silent = a.peer;
    arrived = stores.count((*q)->id) != 0 || records.count((*q)->id) != 0;
  });
  if (silent != 0)
    return fail(Errc::kUnavailable, "node ", std::to_string(silent), " is alive but did not say what it holds of ",
                name, "; not starting it afresh (try again)");
  if (arrived) {
    if (!again) return open_locked(name, size, false, true);
    return fail(Errc::kUnavailable, "segment ", name, " is arriving at this node; try again");
  }
  auto seg = create_fresh(name, size);
  if (!seg) return tl::unexpected(seg.error());
  return OpenResult{*seg, OpenOutcome::kCreated, 0};
}

Result<OpenResult> Engine::reopen(Segment* segment) {
  std::lock_guard lock(impl_->control_mu);
  Segment* seg = impl_->find_handle(segment);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  if (!seg->fenced.load()) {
    // While the application was gone the node may have been cut off (or
    // stopped) and another taken over: ask a quorum before trusting the
    // local copy. A newer epoch anywhere, or another live owner, fences it.
    if (auto ok = impl_->require_quorum("confirm ownership"); !ok) return tl::unexpected(ok.error());
    auto q = impl_->query(seg->name);
    if (!q) return tl::unexpected(q.error());
    const uint64_t epoch = seg->epoch.load();
    bool superseded = false;
    for (const auto& a : (*q)->answers)
      superseded |= a.record.epoch > epoch || (a.found && a.epoch > epoch) || (a.found && a.owner);
    if (superseded) (void)impl_->call([this, seg] { impl_->fence(*seg); });
  }
  if (seg->fenced.load()) return impl_->open_locked(std::string(seg->name), seg->size, false);
  const uint64_t generation = impl_->restore_committed(*seg);
  return OpenResult{seg, generation > 0 ? OpenOutcome::kRestored : OpenOutcome::kCreated, generation};
}

uint64_t Engine::Impl::restore_committed(Segment& seg) {
  // The stage of the newest generation is complete once commit() returned
  // (the snapshot is taken under the poll token); it stays while the
  // replicas receive it, and until the next commit.
  acquire_token();
  uint64_t generation = 0;
  if (seg.current_stage >= 0) {
    const Stage& stage = seg.stages[seg.current_stage];
    std::memcpy(seg.mem.data(), stage.mem.data(), seg.size);
    generation = stage.generation;
  } else {
    std::memset(seg.mem.data(), 0, seg.size);
  }
  release_token();
  return generation;
}

Segment* Engine::Impl::find_handle(Segment* seg) { return handles.count(seg) != 0 ? seg : nullptr; }

std::span<std::byte> Engine::data(Segment* segment) const noexcept {
  std::lock_guard lock(impl_->control_mu);
  Segment* seg = impl_->find_handle(segment);
  return seg == nullptr ? std::span<std::byte>() : seg->mem.bytes();
}

int Engine::memory_fd(Segment* segment) const noexcept {
  std::lock_guard lock(impl_->control_mu);
  Segment* seg = impl_->find_handle(segment);
  return seg == nullptr ? -1 : seg->mem.fd();
}

Result<uint64_t> Engine::commit(Segment* segment) {
  std::lock_guard lock(impl_->control_mu);
  Segment* seg = impl_->find_handle(segment);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  if (seg->fenced.load()) return fail(Errc::kFenced, "segment ", seg->name, " moved to a newer owner");
  if (auto ok = impl_->snapshot(*seg, seg->committed + 1); !ok) return tl::unexpected(ok.error());
  return seg->committed;
}

Result<void> Engine::Impl::snapshot(Segment& seg, uint64_t generation) {
  // The caller takes the poll token and acts as the transfer processor: it
  // snapshots chunk by chunk and, every few chunks, runs a poll iteration
  // that sends what is ready while it is still in cache. Replication thus
  // overlaps the snapshot; the call returns once the snapshot is complete
  // (S5), and the worker carries on with the rest. Copy-on-write snapshots
  // will replace the copy (S14).
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
  seg.committed = generation;
  stage->ready = 0;
  stage->state.store(Stage::kPosted, std::memory_order_release);
  start_replication(seg, *stage, clock_ns());
  for (uint32_t i = 0; i < chunks; ++i) {
    const uint64_t off = uint64_t{i} * cs;
    const uint32_t len = wire::chunk_len(seg.size, cs, i);
    // memcpy moves 64 bytes per instruction; the CRC then reads the chunk
    // back from cache, faster than one fused 8-byte loop.
    std::memcpy(stage->mem.data() + off, seg.mem.data() + off, len);
    stage->chunk_crcs[i] = crc32c(stage->mem.data() + off, len);
    if (i + 1 == chunks) stage->gen_crc = wire::generation_crc(stage->chunk_crcs);
    stage->ready = i + 1;
    if (i % kChunksPerPoll == kChunksPerPoll - 1 || i + 1 == chunks) poll_once(clock_ns());
  }
  release_token();
  return {};
}

Result<void> Engine::wait_replicated(Segment* segment, uint64_t generation, uint32_t k,
                                     std::chrono::milliseconds timeout) {
  Segment* seg;
  {
    std::lock_guard lock(impl_->control_mu);
    seg = impl_->find_handle(segment);
    if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
    if (k != kDurable && k > seg->replicas.size())
      return fail(Errc::kInvalidArgument, "asked for ", std::to_string(k), " replicas; the segment has ",
                  std::to_string(seg->replicas.size()));
    if (generation > seg->committed) return fail(Errc::kInvalidArgument, "generation not committed yet");
  }
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
  std::lock_guard lock(impl_->control_mu);
  Segment* seg = impl_->find_handle(segment);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  return impl_->remove_segment(seg);
}

Result<void> Engine::Impl::remove_segment(Segment* seg) {
  auto removed = call([this, seg] {
    owned.erase(seg->id);
    seg->current_stage = -1;
  });
  if (!removed) return removed;
  handles.erase(seg);
  segments.erase(seg->name);
  return {};
}

Result<SegmentStatus> Engine::status(Segment* segment) const {
  std::lock_guard lock(impl_->control_mu);
  Segment* seg = impl_->find_handle(segment);
  if (seg == nullptr) return fail(Errc::kInvalidArgument, "unknown segment handle");
  SegmentStatus st{seg->name, seg->id, seg->size, seg->committed, seg->epoch.load(), seg->fenced.load(), {}};
  for (auto& r : seg->replicas) st.replicas.emplace_back(r->node.load(), r->held.load());
  st.durable = seg->durable.load();
  return st;
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
    for (const auto& p : impl_->peer_states)
      out.push_back(PeerStatus{p.node, p.alive, p.ever_heard,
                               p.ever_heard ? (now - std::min(now, p.last_heard_ns)) / 1000 : 0});
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
  for (size_t i = 0; i < c.decode.size(); ++i) s.decode_errors[i] = c.decode[i].load();
  return s;
}

}  // namespace baton
