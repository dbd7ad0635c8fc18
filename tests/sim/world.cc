#include "world.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <tuple>
#include <span>

#include "common/log.h"
#include "segment/copy_on_write.h"

namespace baton::sim {

void Stats::add(const Stats& o) {
  seeds += o.seeds;
  steps += o.steps;
  commits += o.commits;
  durable_acks += o.durable_acks;
  restores += o.restores;
  fresh_starts += o.fresh_starts;
  kills += o.kills;
  restarts += o.restarts;
  partitions += o.partitions;
  stalls += o.stalls;
  failed_opens += o.failed_opens;
  lost_with_every_copy += o.lost_with_every_copy;
  acks_in_detection_window += o.acks_in_detection_window;
  past_tolerance += o.past_tolerance;
  partial_snapshots += o.partial_snapshots;
  delta_generations += o.delta_generations;
  deltas_published_later += o.deltas_published_later;
  standby_promotions += o.standby_promotions;
  replica_promotions += o.replica_promotions;
  replica_promotions_chained += o.replica_promotions_chained;
  cow_snapshots += o.cow_snapshots;
  cow_pended_by_tags += o.cow_pended_by_tags;
  restamped += o.restamped;
  fenced_copies_kept += o.fenced_copies_kept;
  loads_outside_set += o.loads_outside_set;
  direct_reads += o.direct_reads;
  client_cow_opens += o.client_cow_opens;
  client_cow_posts += o.client_cow_posts;
  client_cow_posts_refused += o.client_cow_posts_refused;
  records_lost += o.records_lost;
  races += o.races;
  start_races += o.start_races;
  zombie_commits += o.zombie_commits;
  zombie_durable += o.zombie_durable;
  deletes += o.deletes;
  failed_deletes += o.failed_deletes;
}

std::string Stats::to_string() const {
  char b[1400];
  std::snprintf(b, sizeof b,
                "seeds=%lu steps=%lu commits=%lu durable_acks=%lu restores=%lu fresh_starts=%lu kills=%lu "
                "restarts=%lu partitions=%lu stalls=%lu failed_opens=%lu lost_with_every_copy=%lu "
                "acks_in_detection_window=%lu past_tolerance=%lu records_lost=%lu deletes=%lu failed_deletes=%lu "
                "partial_snapshots=%lu delta_generations=%lu deltas_published_later=%lu standby_promotions=%lu replica_promotions=%lu replica_promotions_chained=%lu cow_snapshots=%lu cow_pended_by_tags=%lu client_cow_opens=%lu client_cow_posts=%lu client_cow_posts_refused=%lu restamped=%lu fenced_copies_kept=%lu loads_outside_set=%lu direct_reads=%lu races=%lu start_races=%lu zombie_commits=%lu zombie_durable=%lu",
                (unsigned long)seeds, (unsigned long)steps, (unsigned long)commits, (unsigned long)durable_acks,
                (unsigned long)restores, (unsigned long)fresh_starts, (unsigned long)kills, (unsigned long)restarts,
                (unsigned long)partitions, (unsigned long)stalls, (unsigned long)failed_opens,
                (unsigned long)lost_with_every_copy, (unsigned long)acks_in_detection_window,
                (unsigned long)past_tolerance, (unsigned long)records_lost, (unsigned long)deletes,
                (unsigned long)failed_deletes, (unsigned long)partial_snapshots,
                (unsigned long)delta_generations, (unsigned long)deltas_published_later, (unsigned long)standby_promotions, (unsigned long)replica_promotions,
                (unsigned long)replica_promotions_chained,
                (unsigned long)cow_snapshots, (unsigned long)cow_pended_by_tags, (unsigned long)client_cow_opens,
                (unsigned long)client_cow_posts, (unsigned long)client_cow_posts_refused, (unsigned long)restamped,
                (unsigned long)fenced_copies_kept, (unsigned long)loads_outside_set,
                (unsigned long)direct_reads, (unsigned long)races, (unsigned long)start_races,
                (unsigned long)zombie_commits, (unsigned long)zombie_durable);
  return b;
}

namespace {

using namespace std::chrono_literals;

uint64_t content_hash(std::span<const std::byte> b) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte x : b) {
    h ^= static_cast<uint8_t>(x);
    h *= 0x100000001b3ull;
  }
  return h;
}

struct Violation {
  std::string what;
};

/// Daemon mode's application side of a copy-on-write segment: its own
/// mapping of the memory, protected by a kClient CopyOnWrite whose handler
/// runs in the world's thread when a write faults (deterministic: the
/// settler never finds a page mid-copy).
struct ClientView {
  std::byte* mem = nullptr;
  uint64_t len = 0;
  std::unique_ptr<CopyOnWrite> cow;
  ~ClientView() {
    cow.reset();  // lifts its protection before the mapping goes
    if (mem != nullptr) munmap(mem, len);
  }
};

/// One application, using one segment, wherever it runs now.
struct App {
  std::string name;
  int node = 0;  ///< where it runs; 0: not running (crashed, or its node died)
  Segment* handle = nullptr;
  /// Set when it runs as a daemon-mode client would (ClientView), on
  /// copy-on-write segments picked from the seed.
  std::unique_ptr<ClientView> client;
  std::map<uint64_t, std::set<uint64_t>> committed;  ///< every commit ever: generation -> content hashes
  std::map<uint64_t, uint64_t> mine;                 ///< this run's commits: generation -> hash
  uint64_t last = 0;                                 ///< this run's newest commit
  uint64_t durable = 0, durable_hash = 0;            ///< newest generation acknowledged durable
  std::map<uint64_t, std::pair<int, uint64_t>> epoch_owner;  ///< epoch -> (node acked under it, when first)
  uint64_t attempts = 0;                             ///< ownership attempts (opens, loads)
  std::map<uint64_t, uint64_t> committed_at;         ///< generation -> when it was last committed
  std::set<uint64_t> deleted_content;                ///< hashes of every commit before a successful delete
  uint64_t deleted_at = 0;                           ///< when the last successful delete returned (0: never)
  /// When ownership of the deleted history was last taken before it: if
  /// more nodes than a quorum tolerates lost their memory since, its set
  /// record may be gone, and the delete can neither see that owner's copies
  /// nor pick an epoch above it.
  uint64_t deleted_history_taken_at = 0;
  uint64_t delete_tried_at = 0;                      ///< when the last delete that failed returned (0: never)
  uint64_t durable_epoch = 0;                        ///< the owner epoch `durable` was acknowledged under
  std::map<uint64_t, uint64_t> taken_at;             ///< owner epoch -> when ownership was first taken at it
  std::vector<int> record_holders;                   ///< nodes holding the set record at the last durable ack
  /// The records of its history were lost past what they tolerate (counted
  /// in records_lost): a second history of the name may have started at
  /// the same epoch, and the two may meet.
  bool forked = false;
  uint64_t record_holders_at = 0;                    ///< when that was
};

class World {
 public:
  World(uint64_t seed, const Options& o) : o_(o), rng_(seed), race_rng_(seed ^ 0x5bd1e9955bd1e995ull) {
    hooks_ = std::make_shared<SimulationHooks>();
    // Hot standbys (S16) on some seeds: segment i's standby is a node
    // picked from the seed (its own generator: the schedule stays the
    // seed's), so that agent loads there take the ready copy over.
    if (o.standbys) {
      std::mt19937_64 pick(seed ^ 0x9e3779b97f4a7c15ull);
      for (int i = 0; i < o.segments; ++i)
        if (pick() % 2 == 0)
          standbys_.push_back(EngineConfig::Standby{"seg" + std::to_string(i),
                                                    {static_cast<uint16_t>(1 + pick() % o.nodes)}});
    }
    // Copy-on-write snapshots (S14) for some segments, picked likewise:
    // the engines' workers then settle those snapshots in their polls
    // while the world's writes race them.
    client_pick_.seed(seed ^ 0x2545f4914f6cdd1dull);
    prefer_pick_.seed(seed ^ 0x4cf5ad432745937full);
    chunk_pick_.seed(seed ^ 0x94d049bb133111ebull);
    if (o.cow) {
      std::mt19937_64 pick(seed ^ 0x632be59bd9b4e019ull);
      for (int i = 0; i < o.segments; ++i)
        if (pick() % 2 == 0)
          cow_modes_.push_back({"seg" + std::to_string(i), EngineConfig::SnapshotMode::kCopyOnWrite});
    }
    // Replicas that keep an older generation (retain 1) on half the
    // seeds, picked likewise: a load from a node's own replica then takes
    // the store's third slot as its second stage.
    retain_ = static_cast<uint32_t>(std::mt19937_64(seed ^ 0xd6e8feb86659fd93ull)() % 2);
    hooks_->now = [this] { return now_; };
    hooks_->step = [this] { step(); };
    if (o.token_waits) {
      token_pick_.seed(seed ^ 0xbf58476d1ce4e5b9ull);
      hooks_->while_waiting_for_token = [this] { wait_for_token(); };
    }
    engines_.resize(o.nodes);
    held_.resize(o.nodes);
    stalled_.assign(o.nodes, false);
    killed_at_.assign(o.nodes, 0);
    links_.resize(o.nodes);
    for (auto& l : links_) l.resize(static_cast<size_t>(o.shards));
    // Node pairs that share memory (a CC-NUMA server's nodes), picked
    // without drawing from the world's generator, so the rest of a seed's
    // schedule stays what it was.
    std::mt19937_64 shared_memory(seed ^ 0x853c49e6748fea9bull);
    for (int a = 1; a <= o.nodes; ++a)
      for (int b = a + 1; b <= o.nodes; ++b)
        for (int k = 0; k < o.shards; ++k) {
          auto p = loopback::make_pair(a, b, 16384, 1024, rng_(), hooks_->now);
          if (o.direct && shared_memory() % 2 == 0) p.wire->set_direct_read(true);
          links_[a - 1][k].push_back(std::move(p.a));
          links_[b - 1][k].push_back(std::move(p.b));
          wires_[{a, b, k}] = p.wire;
        }
    for (int n = 1; n <= o.nodes; ++n) start(n, std::move(links_[n - 1]));
    for (int i = 0; i < o.segments; ++i) apps_.push_back(App{"seg" + std::to_string(i)});
  }

  Outcome run() {
    Outcome out;
    try {
      note("start: " + std::to_string(o_.nodes) + " nodes, replication factor " +
           std::to_string(o_.replication_factor));
      run_for(50'000'000);  // the cluster forms
      for (int i = 0; i < o_.actions; ++i) act();
      finish();
    } catch (const Violation& v) {
      out.ok = false;
      out.violation = v.what;
      // What every live node recorded, for the reader of a failing seed.
      for (int n = 1; n <= o_.nodes; ++n)
        if (alive(n))
          for (const auto& e : engine(n)->events()) schedule_ += "  events of node " + std::to_string(n) + ": " + e.text + "\n";
    }
    for (int n = 1; n <= o_.nodes; ++n)
      if (alive(n)) count_stats(*engine(n));
    stats_.seeds = 1;
    out.stats = stats_;
    out.schedule = schedule_;
    return out;
  }

 private:
  // --- the world -------------------------------------------------------------

  EngineConfig config(int n, uint32_t chunk_size) const {
    EngineConfig c;
    c.node_id = static_cast<uint16_t>(n);
    c.replication_factor = o_.replication_factor;
    c.chunk_size = chunk_size;
    c.window = 16;
    c.max_segment_size = 1 << 20;
    c.query_timeout_ms = 20;
    c.fetch_timeout_ms = 100;
    c.heartbeat_interval_us = 1000;
    c.failure_timeout_us = 10'000;
    c.expected_votes = static_cast<uint32_t>(o_.nodes);
    c.simulation = hooks_;
    c.standbys = standbys_;
    c.snapshot_modes = cow_modes_;
    c.retain = retain_;
    // Slot copies a chunk or two per poll on two nodes in three (a delta
    // then often completes before its base is copied: published from the
    // worker's poll), the default (the whole of these small segments at
    // once) on the third.
    if (n % 3 != 0) c.copy_slice = uint64_t{chunk_size} * static_cast<uint64_t>(n % 3);
    if (o_.shards > 1) c.workers.assign(static_cast<size_t>(o_.shards), -1);
    return c;
  }

  void count_stats(const Engine& e) {
    const EngineStats st = e.stats();
    stats_.delta_generations += st.deltas_published;
    stats_.deltas_published_later += st.deltas_published_later;
    stats_.standby_promotions += st.standby_promotions;
    stats_.replica_promotions += st.replica_promotions;
    stats_.replica_promotions_chained += st.replica_promotions_chained;
    stats_.cow_snapshots += st.cow_snapshots;
    stats_.cow_pended_by_tags += st.cow_pended_by_tags;
    stats_.restamped += st.restamped;
    stats_.fenced_copies_kept += st.fenced_copies_kept;
    stats_.loads_outside_set += st.loads_outside_set;
    stats_.direct_reads += st.direct_reads;
  }

  /// Chunk sizes an incarnation may take (Options::mixed_chunks): below,
  /// at and above a page, not all page multiples, one that holds the whole
  /// default segment, one larger than it. Nodes that disagree stand for a
  /// cluster whose `chunk_kib` is changed one batond at a time.
  uint32_t pick_chunk_size() {
    static constexpr uint32_t kSizes[] = {512, 1536, 4096, 5120, 12288, 16384};
    if (!o_.mixed_chunks) return 4096;
    return kSizes[chunk_pick_() % std::size(kSizes)];
  }

  void start(int n, std::vector<std::vector<std::unique_ptr<Link>>> links) {
    const uint32_t chunk_size = pick_chunk_size();
    if (o_.mixed_chunks) note("node " + std::to_string(n) + " runs with " + std::to_string(chunk_size) + "-byte chunks");
    auto e = Engine::start_sharded(config(n, chunk_size), std::move(links));
    if (!e) throw Violation{"engine " + std::to_string(n) + " did not start: " + e.error().to_string()};
    // batond's failover manager names its spare pool (Engine::prefer_replicas_on):
    // a random one per incarnation, from a generator of its own.
    std::vector<uint16_t> preferred;
    for (int p = 1; p <= o_.nodes; ++p)
      if (prefer_pick_() % 3 == 0) preferred.push_back(static_cast<uint16_t>(p));
    (*e)->prefer_replicas_on(std::move(preferred));
    engines_[n - 1] = std::move(*e);
  }

  Engine* engine(int n) { return engines_[n - 1].get(); }
  bool alive(int n) const { return engines_[n - 1] != nullptr; }

  /// One tick: maybe a fault, every running engine's data path and control
  /// thread poll (in a random order), the clock moves 20-120 us.
  void step() {
    if (++stats_.steps > 20'000'000) throw Violation{"livelock: over 20M steps"};
    if (o_.faults_in_calls && !checking_ && !finishing_ && on_stack_ != 0 && rng_() % 2000 == 0) fault(true);
    if (race_in_ != 0 && !checking_ && --race_in_ == 0) race();
    // Every engine's data path (n) and control thread (-n) as separate
    // components, in a random order; a control thread sometimes lags a step.
    order_.clear();
    for (int n = 1; n <= o_.nodes; ++n) {
      if (!alive(n) || stalled_[n - 1]) continue;
      order_.push_back(n);
      if (rng_() % 8 != 0) order_.push_back(-n);
    }
    std::shuffle(order_.begin(), order_.end(), rng_);
    for (int n : order_) {
      if (n > 0) engine(n)->poll();
      else engine(-n)->poll_control();
    }
    now_ += 20'000 + rng_() % 100'000;
  }

  /// An API call waits for its engine's poll token (Options::token_waits):
  /// a quarter of the time, the worker that holds it polls 1-3 more times
  /// first, while the other nodes' data paths run on. Control threads do
  /// not run here (the caller may hold a segment's lock, which theirs
  /// take); nor do faults (a call's own faults strike in step()).
  void wait_for_token() {
    const uint64_t r = token_pick_();
    if (r % 4 != 0) return;
    for (uint32_t k = 1 + static_cast<uint32_t>((r >> 8) % 3); k > 0; --k) {
      std::vector<int> order;  // (not order_: a step may be under way further up)
      for (int n = 1; n <= o_.nodes; ++n)
        if (alive(n) && !stalled_[n - 1]) order.push_back(n);
      std::shuffle(order.begin(), order.end(), token_pick_);
      for (int n : order) engine(n)->poll();
      now_ += 5'000 + token_pick_() % 50'000;
    }
  }

  void run_for(uint64_t ns) {
    const uint64_t until = now_ + ns;
    while (now_ < until) step();
  }

  void note(const std::string& s) {
    char t[32];
    std::snprintf(t, sizeof t, "%10.3f ms  ", static_cast<double>(now_) / 1e6);
    schedule_ += t + s + "\n";
    if (o_.print) std::fprintf(stderr, "%s%s\n", t, s.c_str());
  }

  int pick_alive(int except = 0, int except_too = 0) {
    std::vector<int> c;
    for (int n = 1; n <= o_.nodes; ++n)
      if (alive(n) && n != except && n != except_too) c.push_back(n);
    return c.empty() ? 0 : c[rng_() % c.size()];
  }

  // --- faults ----------------------------------------------------------------

  /// A fault. `in_call`: while node on_stack_ waits in an API call, which
  /// must neither die nor stop polling under it.
  void fault(bool in_call) {
    const std::string when = in_call ? " (during a call on node " + std::to_string(on_stack_) + ")" : "";
    switch (rng_() % 7) {
      case 0: {  // SIGKILL a node
        const int n = pick_alive(in_call ? on_stack_ : 0, outer_stack_);
        if (n == 0 || live_count() <= 1) return;
        kill(n, when);
        return;
      }
      case 6: {  // SIGKILL a node and restart it at once (a supervisor's
                 // restart): back, empty, before its peers notice it died
        const int n = pick_alive(in_call ? on_stack_ : 0, outer_stack_);
        if (n == 0 || live_count() <= 1) return;
        kill(n, when);
        restart(n, when);
        return;
      }
      case 1: {  // restart a dead one
        for (int n = 1; n <= o_.nodes; ++n)
          if (!alive(n)) return restart(n, when);
        return;
      }
      case 2: {  // cut or heal one wire
        auto it = std::next(wires_.begin(), static_cast<long>(rng_() % wires_.size()));
        const bool cut = rng_() % 2 == 0;
        loopback::Faults f;
        f.partitioned = cut;
        it->second->set_faults(f);
        if (cut) ++stats_.partitions;
        note(std::string(cut ? "cut" : "heal") + " wire " + wire_name(it->first) + when);
        return;
      }
      case 3: {  // stall (SIGSTOP) or resume a node
        const int n = 1 + static_cast<int>(rng_() % o_.nodes);
        if (n == on_stack_ || n == outer_stack_) return;
        stalled_[n - 1] = !stalled_[n - 1];
        if (stalled_[n - 1]) ++stats_.stalls;
        note(std::string(stalled_[n - 1] ? "stall" : "resume") + " node " + std::to_string(n) + when);
        return;
      }
      case 4: {  // a lossy, duplicating, reordering wire
        auto it = std::next(wires_.begin(), static_cast<long>(rng_() % wires_.size()));
        loopback::Faults f;
        f.drop = 0.05;
        f.duplicate = 0.05;
        f.reorder = 0.1;
        f.reorder_delay_us = 200;
        it->second->set_faults(f);
        note("lossy wire " + wire_name(it->first) + when);
        return;
      }
      default: {  // heal everything
        for (auto& [k, w] : wires_) w->set_faults({});
        stalled_.assign(o_.nodes, false);
        note("heal all" + when);
        return;
      }
    }
  }

  int live_count() const {
    int k = 0;
    for (int n = 1; n <= o_.nodes; ++n) k += alive(n);
    return k;
  }

  void kill(int n, const std::string& when) {
    if (engines_[n - 1] != nullptr) count_stats(*engines_[n - 1]);
    engines_[n - 1].reset();
    killed_at_[n - 1] = now_;
    kills_.emplace_back(now_, n);
    held_[n - 1].clear();
    stalled_[n - 1] = false;
    for (auto& a : apps_)
      if (a.node == n) {
        stop(a);
      }
    ++stats_.kills;
    note("kill node " + std::to_string(n) + when);
  }

  void restart(int n, const std::string& when) {
    std::vector<std::vector<std::unique_ptr<Link>>> links(static_cast<size_t>(o_.shards));
    for (auto& [k, w] : wires_)
      if (k.first == n || k.second == n)
        links[static_cast<size_t>(k.shard)].push_back(w->reconnect(static_cast<uint16_t>(n)));
    start(n, std::move(links));
    ++stats_.restarts;
    note("restart node " + std::to_string(n) + " (empty)" + when);
  }

  // --- the applications ------------------------------------------------------

  void act() {
    App& a = apps_[rng_() % apps_.size()];
    const uint32_t r = rng_() % 100;
    // An application whose batond is stopped (SIGSTOP) blocks in its calls:
    // nothing it does reaches the engine until the node resumes.
    if (a.node != 0 && stalled_[a.node - 1]) {
      run_for(1'000'000 + rng_() % 10'000'000);
      return;
    }
    if (a.node != 0) {
      if (r < 35) return commit(a);
      if (r < 60) {
        (void)wait_durable(a);
        return;
      }
      if (r < 65) return scribble(a);
      if (r < 70) {
        note("app " + a.name + " on node " + std::to_string(a.node) + " crashes");
        stop(a);
        return;
      }
      if (r < 72) return delete_segment(a, a.node);  // a clean exit: "start fresh next time"
    } else if (r < 40) {
      return start_app(a, rng_() % 4 == 0);
    } else if (r < 42) {
      return delete_segment(a, pick_alive());  // an operator's batonctl delete
    }
    if (r < 85) {
      run_for(1'000'000 + rng_() % 30'000'000);
      return;
    }
    fault(false);
  }

  /// Calls `fn` as node `n`'s API call (faults in the world spare that node).
  template <typename F>
  auto call_on(int n, F fn) {
    const int caller = on_stack_;  // a race's second call runs inside the first's wait
    on_stack_ = n;
    auto r = fn(*engine(n));
    on_stack_ = caller;
    return r;
  }

  /// Maybe lets a race join the open or load (or delete) of `a` about to start:
  /// some steps into its wait, the other call runs on another node.
  /// Returns whether it did (the caller disarms it when its call returns).
  bool arm_race(App& a, bool load) {
    if (!o_.races || racing_ != nullptr || finishing_ || race_rng_() % 4 != 0) return false;
    racing_ = &a;
    racing_load_ = load;
    race_in_ = 1 + race_rng_() % 60;  // through the query, the claim or tombstone, and the fetch
    return true;
  }
  void disarm_race(bool armed) {
    if (!armed) return;
    racing_ = nullptr;
    race_in_ = 0;
    if (deferred_) {
      const Violation v = *deferred_;
      deferred_.reset();
      throw v;
    }
  }

  /// The second call of a race, on a node other than the waiting one. A
  /// violation it finds waits for the first call to return: thrown from
  /// here, it would unwind through that call's engine frames.
  void race() {
    App& a = *racing_;
    const int n = pick_alive(on_stack_);
    if (n == 0 || deferred_) return;
    ++stats_.races;
    outer_stack_ = on_stack_;
    // Against an open or a load: a delete, or a second open or load (two
    // agents taking the name over at once, or an agent and a restarted
    // application). Of two starts, the one that returns last is where the
    // application runs; the other's handle stays on its node, fenced by
    // the winner's epoch or fencing it, as after any takeover.
    const bool deletes = racing_load_ && race_rng_() % 2 == 0;
    try {
      note("race: while node " + std::to_string(on_stack_) + (racing_load_ ? " opens " : " deletes ") + a.name +
           ", node " + std::to_string(n) + (deletes ? " deletes it" : " opens it"));
      if (deletes) {
        delete_segment(a, n);
      } else {
        if (racing_load_) ++stats_.start_races;
        start_app(a, race_rng_() % 2 == 0, n);  // an agent's load, or the application's open
      }
    } catch (const Violation& v) {
      deferred_ = v;
    }
    outer_stack_ = 0;
  }

  /// The application is gone from its node (crashed, exited, fenced, or
  /// the node died): its mapping and protection with it.
  void stop(App& a) {
    a.client.reset();
    a.node = 0;
    a.handle = nullptr;
  }

  /// Where the application writes: its own mapping in daemon mode, else
  /// the engine's.
  std::span<std::byte> app_memory(App& a) {
    Engine& e = *engine(a.node);
    if (a.client != nullptr) return {a.client->mem, e.size(a.handle)};
    return e.data(a.handle);
  }

  /// Half of the copy-on-write segments' applications run as batond's
  /// clients do (picked from the seed, on their own generator): the engine
  /// shares the page states (share_copy_on_write) and settles what the
  /// application's own CopyOnWrite freezes at each commit.
  void attach_client(App& a, int n) {
    if (std::none_of(cow_modes_.begin(), cow_modes_.end(), [&](const auto& m) { return m.segment == a.name; }))
      return;
    if (client_pick_() % 2 != 0) return;
    Engine& e = *engine(n);
    const int fd = e.memory_fd(a.handle);
    auto share = e.share_copy_on_write(a.handle);
    if (fd < 0 || !share || !share->has_value()) return;  // the engine could not: a stage copy
    struct stat st{};
    auto view = std::make_unique<ClientView>();
    if (fstat(fd, &st) != 0) throw Violation{"fstat of a segment's memory failed"};
    view->len = static_cast<uint64_t>(st.st_size);
    void* p = mmap(nullptr, view->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) throw Violation{"cannot map a segment's memory as a client would"};
    view->mem = static_cast<std::byte*>(p);
    auto mapped = CowShare::map((*share)->fd, view->len);
    if (!mapped) throw Violation{"the engine's copy-on-write share: " + mapped.error().message};
    // Every other client protects ahead of its commits (no draw from the
    // schedule's random numbers: seeds replay as before).
    auto cow = CopyOnWrite::attach_client(view->mem, view->len, std::move(*mapped), stats_.client_cow_opens % 2 == 0);
    if (!cow) {
      note("app " + a.name + ": no client copy-on-write here: " + cow.error().message);
      return;
    }
    view->cow = std::move(*cow);
    a.client = std::move(view);
    ++stats_.client_cow_opens;
  }

  /// The commit call as the client library makes it: frozen (copy-on-write
  /// in the application's mapping), or a plain engine commit. When the
  /// share says the last generation's snapshot is settled and the next
  /// stage needs only the pages written since, the client pends its pages
  /// itself and the commit is a posted one (CommitOptions::pended), as
  /// the library's is; a posted commit the engine refuses is no
  /// generation, and the client counts every page as written again.
  Result<uint64_t> commit_call(App& a, Engine& en) {
    if (a.client == nullptr) return en.commit(a.handle);
    std::vector<std::pair<uint64_t, uint64_t>> written;
    const uint64_t size = en.size(a.handle);
    CopyOnWrite::Freeze freeze(*a.client->cow);
    freeze.take_written([&](uint64_t off, uint64_t len) {
      if (off < size) written.emplace_back(off, std::min(len, size - off));
    });
    if (auto ok = freeze.protect(); !ok) throw Violation{"client write-protect failed: " + ok.error().message};
    const uint64_t ready = a.client->cow->ready();
    const bool posted = ready != 0 && ready == a.last &&
                        freeze.taken_pages().size() <= std::max<uint64_t>(64, size / CopyOnWrite::kPage / 8);
    if (written.empty()) written.emplace_back(0, 0);  // nothing written: a range of nothing
    if (posted) freeze.pend_taken();
    // Every 16th posts under a number that does not follow (as a client
    // that lost count would): the engine refuses it and makes its pages
    // idle again (no draw from the schedule's numbers: seeds replay).
    const bool miscounted = posted && content_ % 16 == 15;
    auto g = en.commit(a.handle, CommitOptions{.written = written, .frozen = true, .pended = posted,
                                               .expect_generation = posted ? a.last + (miscounted ? 2 : 1) : 0});
    if (miscounted && g) throw Violation{"a posted commit under a number that does not follow was taken"};
    if (posted) ++stats_.client_cow_posts;
    if (posted && !g) ++stats_.client_cow_posts_refused;
    if (!g) freeze.untake();
    return g;
  }

  void commit(App& a) {
    Engine& e = *engine(a.node);
    write_next(app_memory(a), ++content_);
    const uint64_t h = content_hash(e.data(a.handle));
    const uint64_t skipped = e.stats().snapshot_chunks_skipped;
    auto g = call_on(a.node, [&](Engine& en) { return commit_call(a, en); });
    if (engine(a.node) == &e && e.stats().snapshot_chunks_skipped > skipped) ++stats_.partial_snapshots;
    if (!g) {
      note("app " + a.name + " on node " + std::to_string(a.node) + ": commit failed: " + g.error().to_string());
      if (g.error().code == Errc::kFenced) {  // the application learns it lost the segment and exits
        stop(a);
      }
      return;
    }
    ++stats_.commits;
    a.committed[*g].insert(h);
    a.mine[*g] = h;
    a.committed_at[*g] = now_;
    a.last = *g;
    note("app " + a.name + " on node " + std::to_string(a.node) + ": commit generation " + std::to_string(*g));
  }

  void scribble(App& a) {  // writes part of the next generation in place, uncommitted
    auto mem = app_memory(a);
    test_fill(mem.first(mem.size() / 2), ++content_);
    note("app " + a.name + " on node " + std::to_string(a.node) + " writes half of its next generation");
  }

  /// Waits for the newest commit to be durable (`timeout` 0: a short
  /// one drawn from the schedule) and checks the acknowledgement. False
  /// when it did not come, unless the application learnt it lost the
  /// segment (fenced).
  bool wait_durable(App& a, std::chrono::milliseconds timeout = {}) {
    if (a.last == 0) return true;
    const int n = a.node;
    const uint64_t g = a.last;
    if (timeout.count() == 0) timeout = std::chrono::milliseconds(2 + rng_() % 40);
    auto w = call_on(n, [&](Engine& en) { return en.wait_replicated(a.handle, g, kDurable, timeout); });
    if (!w) {
      note("app " + a.name + " on node " + std::to_string(n) + ": wait durable " + std::to_string(g) + ": " +
           w.error().to_string());
      if (w.error().code == Errc::kFenced) {
        stop(a);
        return true;
      }
      return false;
    }
    ++stats_.durable_acks;
    auto st = engine(n)->status(a.handle);
    if (!st) throw Violation{"status of a live handle failed: " + st.error().to_string()};
    note("app " + a.name + " on node " + std::to_string(n) + ": generation " + std::to_string(g) +
         " durable (epoch " + std::to_string(st->epoch) + ")");
    // I3: one owner per epoch gets durable acknowledgements. Accepted
    // epochs live in memory like set records: if more nodes than a quorum
    // tolerates lost theirs since the first owner's acknowledgement, the
    // cluster may hand the epoch out again (a new history; counted).
    auto [it, fresh] = a.epoch_owner.emplace(st->epoch, std::make_pair(n, now_));
    if (!fresh && it->second.first != n) {
      const int lost_memory = memory_lost_since(it->second.second);
      if (lost_memory <= tolerated_memory_losses())
        throw Violation{"I3: nodes " + std::to_string(it->second.first) + " and " + std::to_string(n) +
                        " both got durable acknowledgements for " + a.name + " at epoch " + std::to_string(st->epoch)};
      ++stats_.records_lost;
      note("  (epoch " + std::to_string(st->epoch) + " handed out again: " + std::to_string(lost_memory) +
           " nodes lost their memory since node " + std::to_string(it->second.first) + " was acknowledged under it)");
      it->second = {n, now_};
    }
    // The acknowledgement must rest on copies: a majority of the replica
    // set held it at some moment since the commit. Each of them still holds
    // it, or was killed since (unnoticed yet, perhaps). Asked again later,
    // the answer is the same (it was durable once): checked the first time.
    // A generation committed before a delete that failed part-way is
    // covered by it: the delete may have dropped its copies, which an owner
    // cut off from the deleter cannot know (its acknowledgement rests on
    // acks from before). Not protected, nor checked.
    if (auto c = a.committed_at.find(g); c != a.committed_at.end() && c->second <= a.delete_tried_at) {
      note("  (generation " + std::to_string(g) + " was committed before a delete that may have removed it)");
      return true;
    }
    if (g > a.durable) {
      // A majority of the replication factor, or of the peers the owner's
      // failure detector holds alive when fewer are (the engine degrades).
      checking_ = true;
      uint32_t reachable = 0;
      const auto peers = engine(n)->peers(a.name);  // its shard's detector, as update_durable counts
      for (const auto& p : peers) reachable += p.alive;
      checking_ = false;
      const uint32_t majority = std::min<uint32_t>(o_.replication_factor, reachable) / 2 + 1;
      const int holders = holders_of(a, g, st->epoch);
      // A node killed since the commit may have acknowledged it before it
      // died: that counts while the owner cannot know better (the detection
      // window). Not once the owner heard the node's new incarnation in a
      // poll before the one that made `g` durable (issue #8 bug 3): a
      // restarted node holds nothing it acknowledged before.
      int killed_since = 0;
      for (int m = 1; m <= o_.nodes; ++m) {
        if (m == n || killed_at_[m - 1] < a.committed_at[g]) continue;
        const auto p = std::find_if(peers.begin(), peers.end(), [m](const PeerStatus& s) { return s.node == m; });
        const bool restart_known = alive(m) && p != peers.end() && p->incarnation == engine(m)->incarnation() &&
                                   st->durable == g && p->incarnation_age_us > st->durable_age_us + 10;
        if (!restart_known) ++killed_since;
      }
      if (static_cast<uint32_t>(holders + killed_since) < majority)
        throw Violation{"I1: generation " + std::to_string(g) + " of " + a.name + " acknowledged durable, but " +
                        std::to_string(holders) + " live nodes hold it and " + std::to_string(killed_since) +
                        " were killed since its commit (and not yet known to have restarted): fewer than a "
                        "majority of the set could ever have held it"};
      if (static_cast<uint32_t>(holders) < majority) ++stats_.acks_in_detection_window;
    }
    if (g > a.durable) {
      a.durable = g;
      a.durable_hash = a.mine.at(g);
      a.durable_epoch = st->epoch;
      // Who holds the set record (its newest version, of this epoch) now:
      // the records that say where the copies are live in these nodes'
      // memory only. An older version of the same epoch names an older set,
      // which need not be where this generation's copies are (seed 9400120,
      // 3 nodes, RF 3: the owner's version 3, set {1}, lived on nodes 3 and
      // 1; node 2, cut off from the owner, kept version 2, set {2,1}. Node 1
      // restarted empty, and node 2's claim, on version 2, needed only its
      // own grant: counted as holding the record, node 2 hid the record's
      // loss to the quorum {1,2}).
      checking_ = true;
      a.record_holders.clear();
      const auto own = engine(n)->record(a.name);
      for (int m = 1; m <= o_.nodes; ++m)
        if (alive(m))
          if (auto r = engine(m)->record(a.name);
              r && (r->epoch > st->epoch ||
                    (r->epoch == st->epoch && (!own || own->epoch != st->epoch || r->version >= own->version))))
            a.record_holders.push_back(m);
      checking_ = false;
      a.record_holders_at = now_;
    }
    return true;
  }

  /// Live nodes whose replica store holds `g` or newer at `epoch`.
  int holders_of(const App& a, uint64_t g, uint64_t epoch) {
    checking_ = true;
    int k = 0;
    for (int n = 1; n <= o_.nodes; ++n) {
      if (!alive(n)) continue;
      auto st = engine(n)->replica_status(a.name);
      if (st && st->epoch >= epoch && !st->generations.empty() && st->generations.front() >= g) {
        ++k;
        continue;
      }
      // A replica that took the segment over since (its copy became the
      // new owner's first snapshot stage: a hot standby's or a plain
      // replica's promotion) holds it as that owner, whether or not an
      // application runs there now (seed 220526, 2 nodes: the old owner,
      // split off, asked after its replica had taken over).
      if (auto h = held_[n - 1].find(a.name); h != held_[n - 1].end())
        if (auto o = engine(n)->status(h->second); o && !o->fenced && o->epoch >= epoch && o->generation >= g) ++k;
    }
    checking_ = false;
    return k;
  }

  /// How many live nodes still hold generation `g` of `a` or a newer one
  /// (as a replica, or as its unfenced owner). `newest_epoch_only`: count
  /// only replicas at the newest epoch any live replica has (the members of
  /// the newest replica set; a former member keeps an older epoch's copy).
  int copies(App& a, uint64_t g, bool newest_epoch_only = false, bool running_only = false,
             const std::vector<bool>* only = nullptr) {
    checking_ = true;
    uint64_t newest = 0;
    for (int n = 1; n <= o_.nodes && newest_epoch_only; ++n)
      if (alive(n))
        if (auto st = engine(n)->replica_status(a.name); st && !st->generations.empty())
          newest = std::max(newest, st->epoch);
    int k = 0;
    holders_.clear();
    for (int n = 1; n <= o_.nodes; ++n) {
      if (!alive(n) || (running_only && stalled_[n - 1]) || (only != nullptr && !(*only)[n])) continue;
      bool held = false;
      auto st = engine(n)->replica_status(a.name);
      // A copy of the durable generation's number is that generation only
      // if its bytes are (another history of the name, e.g. one a failed
      // delete left behind, numbers its generations from 1 as well).
      auto same_content = [&](uint64_t gen) {
        if (gen != a.durable || a.durable_hash == 0) return true;
        auto bytes = engine(n)->read_replica(a.name, gen);
        return bytes && content_hash(*bytes) == a.durable_hash;
      };
      if (st && !st->generations.empty() && st->generations.front() >= g && st->epoch >= newest &&
          same_content(st->generations.front())) {
        held = true;
        holders_ += " node " + std::to_string(n) + " replica of generation " +
                    std::to_string(st->generations.front()) + " at epoch " + std::to_string(st->epoch) + ";";
      }
      if (auto h = held_[n - 1].find(a.name); h != held_[n - 1].end()) {
        auto s = engine(n)->status(h->second);
        // An owner's memory at the durable generation's number holds it
        // only if it is those bytes (the opener's own restore included).
        if (s && !s->fenced && s->generation >= g &&
            (s->generation != a.durable || a.durable_hash == 0 ||
             content_hash(engine(n)->data(h->second)) == a.durable_hash)) {
          held = true;
          holders_ += " node " + std::to_string(n) + " owner at generation " + std::to_string(s->generation) + ";";
        }
      }
      k += held;
    }
    checking_ = false;
    return k;
  }
  bool anyone_holds(App& a, uint64_t g) { return copies(a, g) > 0; }

  /// Nodes killed (their memory gone) at or after simulated time `t`.
  /// Nodes that lost their memory in [from, to).
  int memory_lost_between(uint64_t from, uint64_t to) const {
    std::set<int> nodes;
    for (const auto& [at, n] : kills_)
      if (at >= from && at < to) nodes.insert(n);
    return static_cast<int>(nodes.size());
  }
  int memory_lost_since(uint64_t t) const {
    int n = 0;
    for (int m = 1; m <= o_.nodes; ++m) n += killed_at_[m - 1] >= t;
    return n;
  }
  /// Memory losses in-memory records survive: nodes - quorum.
  int tolerated_memory_losses() const { return o_.nodes - (o_.nodes / 2 + 1); }

  /// Set records live in memory at a quorum of nodes: they survive
  /// nodes - quorum memory losses. Past that (more nodes killed since the
  /// durable generation was committed), the cluster may no longer know where
  /// its copies are, and a copy held only by nodes the opener cannot hear
  /// (stopped, or cut off from it: to it, dead) is not required to be found.
  /// A copy on a node it hears always is.
  bool records_lost(App& a, int opener) {
    if (memory_lost_since(a.committed_at[a.durable]) <= tolerated_memory_losses() && !record_holders_lost(a))
      return false;
    // The holders the opener could have heard from: running, and held
    // alive by its own failure detector (not cut off from it).
    // A node it could hear only since the call began (a heal during it)
    // may have come too late for its query: it counts only if it was heard
    // at the start as well.
    std::vector<bool> heard = heard_by(opener, a.name);
    if (heard_before_node_ == opener)
      for (size_t m = 0; m < heard.size(); ++m) heard[m] = heard[m] && heard_before_[m];
    const int reachable = copies(a, a.durable, false, true, &heard);
    return reachable == 0;
  }

  /// The nodes `opener`'s failure detector holds alive now (and itself):
  /// the detector of the shard that owns segment `name` (each shard has
  /// wires of its own; one may be cut while another is not: seed 1202 with
  /// 2 shards took a holder for heard through the first shard's detector).
  std::vector<bool> heard_by(int opener, const std::string& name) {
    checking_ = true;
    std::vector<bool> heard(o_.nodes + 1, false);
    heard[opener] = true;
    for (const auto& p : engine(opener)->peers(name)) heard[p.node] = p.alive;
    checking_ = false;
    return heard;
  }
  /// What the opener of the call in progress heard when it began.
  int heard_before_node_ = 0;
  std::vector<bool> heard_before_;

  /// The set record reached only the nodes that were up (a quorum, perhaps
  /// no more): it is lost to some quorum once so many of those holders lost
  /// their memory that no more than nodes - quorum of them are left, fewer
  /// than the general count (nodes - quorum losses) assumes.
  bool record_holders_lost(const App& a) const {
    int left = 0;
    for (int m : a.record_holders) left += killed_at_[m - 1] < a.record_holders_at;
    return !a.record_holders.empty() && left <= tolerated_memory_losses();
  }

  /// Two histories: ownership was taken at an epoch above the one `durable`
  /// was acknowledged under, before `durable` was committed, and more nodes
  /// than a quorum tolerates lost their memory since. The acceptances of
  /// that epoch lived in memory only: with them gone, the old owner went
  /// on under its old epoch (unfenced: nobody it could hear knew better)
  /// while a copy of the newer epoch's history waited on a node it could
  /// not hear. Once both meet, the newer epoch wins, as it must for a
  /// fenced owner's divergent history (issue #8 bug 4): like Raft voters
  /// that forgot their votes, past what the records tolerate (counted).
  bool history_forked(const App& a) const {
    const uint64_t committed = a.committed_at.count(a.durable) ? a.committed_at.at(a.durable) : 0;
    for (auto it = a.taken_at.upper_bound(a.durable_epoch); it != a.taken_at.end(); ++it)
      if (it->second <= committed && memory_lost_since(it->second) > tolerated_memory_losses()) return true;
    return false;
  }

  /// Whether a majority of the newest recorded replica set (the newest
  /// record any live node has) is alive and holds `g` or newer: the
  /// condition under which the segment must load again.
  bool set_majority_holds(App& a, uint64_t g) {
    checking_ = true;
    std::optional<RecordStatus> newest;
    for (int n = 1; n <= o_.nodes; ++n)
      if (alive(n))
        if (auto r = engine(n)->record(a.name);
            r && (!newest || std::tie(r->epoch, r->version) > std::tie(newest->epoch, newest->version)))
          newest = *r;
    size_t holding = 0;
    if (newest)
      for (uint16_t m : newest->set)
        if (m <= o_.nodes && alive(m))
          if (auto st = engine(m)->replica_status(a.name);
              st && st->epoch >= newest->epoch && !st->generations.empty() && st->generations.front() >= g)
            ++holding;
    checking_ = false;
    return newest && holding * 2 > newest->set.size();
  }
  uint32_t majority() const { return std::min<uint32_t>(o_.replication_factor, o_.nodes - 1) / 2 + 1; }

  /// Deletes `a`'s segment from node `n`: the application's clean exit when
  /// it runs there (it closes its handle first), else an operator's. As
  /// batond does, a handle the node keeps for a crashed application's
  /// restart is closed first.
  void delete_segment(App& a, int n) {
    if (n == 0) return;
    const bool own = a.node == n;  // else it runs elsewhere, or not at all: the delete fences it
    ++a.attempts;                  // a delete takes an epoch too (I4's bound)
    if (auto h = held_[n - 1].find(a.name); h != held_[n - 1].end()) {
      (void)engine(n)->close(h->second);
      held_[n - 1].erase(h);
    }
    if (own) {
      stop(a);
    }
    const std::string who = own ? "app " + a.name + " on node " + std::to_string(n) + " exits and deletes it"
                                : "operator on node " + std::to_string(n) + ": delete " + a.name;
    const bool armed = arm_race(a, false);
    auto r = call_on(n, [&](Engine& e) { return e.remove(a.name); });
    disarm_race(armed);
    if (r) {
      ++stats_.deletes;
      note(who + ": deleted");
      // A load elsewhere that raced this delete and returned first took the
      // name before the delete did: the delete fences it, and the
      // application there stops. Its handle stays, as a crashed
      // application's does, so a reopen there is checked like any restore.
      if (a.node != 0) {
        note("  (app " + a.name + ", loaded on node " + std::to_string(a.node) +
             " while the delete ran, stops: the delete came after its load)");
        stop(a);
      }
      // Every generation committed so far belongs to a deleted history:
      // no restore may return one again.
      for (auto& [g, hashes] : a.committed) a.deleted_content.insert(hashes.begin(), hashes.end());
      a.committed.clear();
      a.committed_at.clear();
      a.mine.clear();
      a.last = 0;
      a.durable = 0;
      a.durable_hash = 0;
      a.deleted_at = now_;
      a.deleted_history_taken_at = 0;
      for (const auto& [epoch, at] : a.taken_at) a.deleted_history_taken_at = std::max(a.deleted_history_taken_at, at);
      a.forked = false;
      return;
    }
    ++stats_.failed_deletes;
    note(who + ": " + r.error().to_string());
    // A delete that failed part-way may have taken effect on some nodes:
    // what was durable before it need not survive it (nor is it gone).
    if (r.error().code != Errc::kNotFound && r.error().code != Errc::kInvalidArgument) {
      a.durable = 0;
      a.durable_hash = 0;
      a.delete_tried_at = now_;
    }
  }

  /// The application starts on a node: reopen where that node still holds
  /// the segment (batond's path), else open; or an agent's load.
  void start_app(App& a, bool agent, int node = 0) {
    const int n = node != 0 ? node : pick_alive();
    if (n == 0) return;
    ++a.attempts;
    auto& held = held_[n - 1];
    auto it = held.find(a.name);
    const char* how = agent ? "agent load" : it != held.end() ? "reopen" : "open";
    Segment* old = it != held.end() ? it->second : nullptr;
    heard_before_node_ = n;
    heard_before_ = heard_by(n, a.name);
    const uint64_t started = now_;
    const bool armed = arm_race(a, true);
    auto r = call_on(n, [&](Engine& e) {
      if (agent) return e.load(a.name);
      if (old != nullptr) return e.reopen(old);
      return e.open(a.name, o_.segment_size);
    });
    disarm_race(armed);
    if (old != nullptr && !engine(n)->status(old)) held.erase(a.name);  // dropped as superseded
    if (!r) {
      ++stats_.failed_opens;
      note("app " + a.name + " on node " + std::to_string(n) + ": " + how + " failed: " + r.error().to_string());
      return;
    }
    if (a.deleted_at > started && r->outcome != OpenOutcome::kCreated) {
      // A delete that raced this load returned first, yet the load got the
      // name: it took it before the delete did, so it restored the history
      // the delete then removed (and the delete fenced it). Exactly one of
      // that history's commits (I2); the application does not run on, and
      // its handle stays for a reopen, which I5 checks. (A fresh start
      // came after the delete: the application runs on it.)
      const uint64_t h = content_hash(engine(n)->data(r->segment));
      note("app " + a.name + " on node " + std::to_string(n) + ": " + how + " -> restored generation " +
           std::to_string(r->generation) + ", taken before the delete that raced it");
      if (a.deleted_content.count(h) == 0)
        throw Violation{"I2: a load of " + a.name + " that raced a delete gave generation " +
                        std::to_string(r->generation) + ", which no commit before the delete wrote"};
      held[a.name] = r->segment;
      return;
    }
    held[a.name] = r->segment;
    // A start that raced this one returned first and left the application
    // running on its node: that instance, superseded in the model by this
    // one, commits once more, as a stale instance would before it learns.
    const int zombie = a.node != 0 && a.node != n ? a.node : 0;
    auto zombie_mine = a.mine;
    uint64_t zombie_last = a.last;
    check_restore(a, n, *r, how);
    if (zombie != 0) {
      std::swap(a.mine, zombie_mine);
      std::swap(a.last, zombie_last);
      const uint64_t before = now_;
      zombie_commit(a);
      a.mine = std::move(zombie_mine);
      a.last = zombie_last;
      if (killed_at_[n - 1] >= before) return;  // this node died meanwhile, and its instance with it
    }
    a.node = n;
    a.handle = r->segment;
    attach_client(a, n);
  }

  /// The instance of two racing starts that returned first commits and
  /// waits a little: acknowledged durable only if it is the owner (I3: one
  /// owner per epoch; I1 at a later restore: the winner's history holds
  /// it). Then it is no longer the model's application.
  void zombie_commit(App& a) {
    ++stats_.zombie_commits;
    note("app " + a.name + " on node " + std::to_string(a.node) + ": the start that raced it returned later; " +
         "this instance commits once more");
    commit(a);
    if (a.node != 0 && wait_durable(a, std::chrono::milliseconds(30))) ++stats_.zombie_durable;
    if (a.node != 0) stop(a);
  }

  void check_restore(App& a, int n, const OpenResult& r, const char* how) {
    auto mem = engine(n)->data(r.segment);
    const uint64_t h = content_hash(mem);
    const uint64_t g = r.outcome == OpenOutcome::kCreated ? 0 : r.generation;
    note("app " + a.name + " on node " + std::to_string(n) + ": " + how + " -> " +
         (g == 0 ? std::string("fresh start") : "restored generation " + std::to_string(g)));
    const auto st = engine(n)->status(r.segment);
    if (st && st->epoch > 3 * a.attempts + 1)
      throw Violation{"I4: epoch " + std::to_string(st->epoch) + " after " + std::to_string(a.attempts) +
                      " ownership attempts on " + a.name};
    if (g == 0) {
      ++stats_.fresh_starts;
      a.epoch_owner.clear();  // a new history: its epochs start again at 1
      // taken_at is kept: the old history's copies may live on (on nodes
      // the fresh start could not hear), and its epochs outrank the new
      // history's when the two meet (history_forked).
      if (!std::all_of(mem.begin(), mem.end(), [](std::byte b) { return b == std::byte{0}; }))
        throw Violation{"I2: a fresh start of " + a.name + " is not zeroed"};
    } else {
      ++stats_.restores;
      auto c = a.committed.find(g);
      if (a.deleted_content.count(h) != 0 && (c == a.committed.end() || c->second.count(h) == 0)) {
        // A tombstone lives in memory at a quorum of nodes, like a set
        // record: past the losses that tolerates, a copy that missed the
        // delete may come back (counted). So may one whose set record was
        // lost so between the last ownership take and the delete (seed
        // 100036: the record of the last owner's epoch lived on three
        // nodes of four, two of them restarted empty; the delete, on the
        // other three, saw an older epoch, its tombstone took the lost
        // owner's epoch, and that owner's copy on the fourth node, stopped
        // meanwhile, came back as the winner of a delete-load race at the
        // same epoch).
        if (memory_lost_since(a.deleted_at) <= tolerated_memory_losses() &&
            memory_lost_between(a.deleted_history_taken_at, a.deleted_at) <= tolerated_memory_losses())
          throw Violation{"I5: " + std::string(how) + " on node " + std::to_string(n) + " restored generation " +
                          std::to_string(g) + " of " + a.name + ", which was deleted"};
        ++stats_.records_lost;
        note("  (a copy that missed the delete came back: more nodes than a quorum tolerates lost their memory)");
        a.committed[g].insert(h);
      }
      c = a.committed.find(g);
      if (c == a.committed.end() || c->second.count(h) == 0)
        throw Violation{"I2: restored generation " + std::to_string(g) + " of " + a.name +
                        " is not what any commit of that generation wrote (torn or uncommitted bytes)"};
    }
    if (st) a.taken_at.emplace(st->epoch, now_);
    const bool older = g < a.durable || (g == a.durable && g != 0 && h != a.durable_hash);
    // Inside a race with a delete of the name still waiting: the delete
    // may already have taken effect where this open looked (it then comes
    // first), and if it fails, what was durable before it need not survive
    // it either (delete_segment). Not I1's to judge.
    const bool deleting = racing_ == &a && !racing_load_;
    if (older && deleting) {
      note("  (a delete of " + a.name + " is under way: generation " + std::to_string(a.durable) +
           ", durable before it, need not survive it)");
    } else if (older) {
      const bool held = anyone_holds(a, a.durable);
      const std::string holders = holders_;
      if (held && records_lost(a, n)) {
        ++stats_.records_lost;
        a.forked = true;
        note("  (the records of where durable generation " + std::to_string(a.durable) +
             " lives died with more nodes than they tolerate; its copies are only on nodes the opener cannot hear "
             "(stopped or cut off):" + holders + ")");
      } else if (held && history_forked(a)) {
        ++stats_.records_lost;
        a.forked = true;
        note("  (generation " + std::to_string(a.durable) + " was acknowledged under epoch " +
             std::to_string(a.durable_epoch) + " after a newer epoch was taken and more nodes than a quorum "
             "tolerates lost their memory: two histories, and the newer epoch's won)");
      } else if (held)
        throw Violation{"I1: " + std::string(how) + " on node " + std::to_string(n) + " gave generation " +
                        std::to_string(g) + " of " + a.name + "; generation " + std::to_string(a.durable) +
                        " was acknowledged durable and a live node still holds it:" + holders};
      else {
        ++stats_.lost_with_every_copy;  // every copy died: beyond what replication can survive
        note("  (every copy of durable generation " + std::to_string(a.durable) + " died with its nodes)");
      }
    }
    if (older) {
      a.durable = g;
      a.durable_hash = g == 0 ? 0 : h;
      a.durable_epoch = st ? st->epoch : 0;
    }
    a.mine.clear();
    if (g != 0) a.mine[g] = h;
    a.last = g;
  }

  /// I4: with every fault healed and every node back, every application's
  /// state loads again (unless every copy died).
  void finish() {
    note("finish: heal everything, restart the dead");
    finishing_ = true;
    for (auto& [k, w] : wires_) w->set_faults({});
    stalled_.assign(o_.nodes, false);
    for (int n = 1; n <= o_.nodes; ++n)
      if (!alive(n)) restart(n, "");
    run_for(300'000'000);
    for (auto& a : apps_) {
      if (a.node != 0) {
        // I6: healed, a running application's commit becomes durable, or
        // it learns that it lost the segment (a newer owner fenced it).
        // Past what in-memory records tolerate, two histories may hold the
        // name at one epoch: not required.
        commit(a);
        if (a.node != 0 && !a.forked && a.last != 0 && !wait_durable(a, 3s))
          throw Violation{"I6: with every fault healed, generation " + std::to_string(a.last) + " of " + a.name +
                          " on node " + std::to_string(a.node) + " does not become durable"};
      }
      if (a.node != 0) {
        stop(a);
      }
      if (a.durable == 0) continue;
      // Loadable again only where a majority's worth of copies survived:
      // fewer (the owner and most of the set lost their memory) is past
      // what the replication factor tolerates, and the engine refuses to
      // guess which copy is newest. Counted, not failed.
      if (!set_majority_holds(a, a.durable)) {
        ++stats_.past_tolerance;
        note("  " + a.name + ": fewer than a majority's worth of copies survive: not required to load");
        continue;
      }
      bool loaded = false;
      for (int attempt = 0; attempt < 6 && !loaded; ++attempt) {
        // Where a node still holds the segment, the application restarts there.
        int n = 0;
        for (int m = 1; m <= o_.nodes && n == 0; ++m)
          if (held_[m - 1].count(a.name) != 0) n = m;
        if (n == 0) n = pick_alive();
        Segment* old = n != 0 && held_[n - 1].count(a.name) ? held_[n - 1][a.name] : nullptr;
        ++a.attempts;
        heard_before_node_ = n;
        heard_before_ = heard_by(n, a.name);
        auto r = call_on(n, [&](Engine& e) { return old ? e.reopen(old) : e.open(a.name, o_.segment_size); });
        if (old != nullptr && !engine(n)->status(old)) held_[n - 1].erase(a.name);
        if (r) {
          held_[n - 1][a.name] = r->segment;
          check_restore(a, n, *r, old ? "final reopen" : "final open");
          loaded = true;
        } else {
          note("app " + a.name + " on node " + std::to_string(n) + ": final open failed: " + r.error().to_string());
          run_for(100'000'000);
        }
      }
      // Two histories of one name at one epoch (records lost past
      // tolerance, then a fresh start the old history's survivors did not
      // hear of): the newest record may name the old history's set, most
      // of which lost its memory. Past what in-memory records tolerate:
      // counted, not failed.
      if (!loaded && a.forked) {
        ++stats_.past_tolerance;
        note("  " + a.name + ": two histories met after its records were lost: not required to load");
        continue;
      }
      if (!loaded)
        throw Violation{"I4: " + a.name + " does not load with every fault healed, though generation " +
                        std::to_string(a.durable) + " is held"};
    }
  }

  /// An application's writes before a commit: now and then it rewrites
  /// everything, mostly it changes a few words of one page (so incremental
  /// snapshots copy only some chunks). Drawn from `seed`, not the
  /// schedule's generator: the schedules of known seeds stay as they were.
  static void write_next(std::span<std::byte> s, uint32_t seed) {
    constexpr size_t kPage = 4096;
    if (seed % 8 == 0 || s.size() < 2 * kPage) return test_fill(s, seed);
    std::mt19937 r(seed);
    const size_t page = (r() % (s.size() / kPage)) * kPage;
    const int words = 1 + static_cast<int>(r() % 8);
    for (int i = 0; i < words; ++i) {
      const uint32_t v = r();
      std::memcpy(s.data() + page + (r() % (kPage - 3)), &v, 4);
    }
  }

  static void test_fill(std::span<std::byte> s, uint32_t seed) {
    std::mt19937 r(seed);
    for (size_t i = 0; i + 4 <= s.size(); i += 4) {
      const uint32_t v = r();
      std::memcpy(s.data() + i, &v, 4);
    }
  }

  Options o_;
  std::mt19937_64 rng_;
  std::mt19937_64 prefer_pick_;  ///< each incarnation's preferred replica holders
  std::mt19937_64 chunk_pick_;   ///< each incarnation's chunk size (Options::mixed_chunks)
  std::mt19937_64 token_pick_;   ///< polls of a worker a call waits out for the token (Options::token_waits)
  std::vector<EngineConfig::Standby> standbys_;
  std::vector<EngineConfig::SegmentSnapshot> cow_modes_;
  uint32_t retain_ = 0;
  std::mt19937_64 client_pick_;  ///< which starts run as a daemon-mode client (attach_client)
  uint64_t now_ = 1'000'000'000;
  std::shared_ptr<SimulationHooks> hooks_;
  std::vector<std::unique_ptr<Engine>> engines_;  ///< engines_[n-1] is node n; null while dead
  std::vector<std::vector<std::vector<std::unique_ptr<Link>>>> links_;  ///< by node, then shard
  /// A node pair's wire of one shard (shard 0 alone without shards).
  struct WireKey {
    int first, second, shard;
    auto operator<=>(const WireKey&) const = default;
  };
  std::string wire_name(const WireKey& k) const {
    return std::to_string(k.first) + "-" + std::to_string(k.second) +
           (o_.shards > 1 ? " of shard " + std::to_string(k.shard) : "");
  }
  std::map<WireKey, std::shared_ptr<loopback::Wire>> wires_;
  std::vector<std::map<std::string, Segment*>> held_;  ///< handles each engine has open, by name
  std::vector<bool> stalled_;
  std::vector<uint64_t> killed_at_;  ///< when each node was last killed (0: never)
  std::vector<std::pair<uint64_t, int>> kills_;  ///< every kill: when, which node
  std::vector<int> order_;
  std::vector<App> apps_;
  int on_stack_ = 0;       ///< the node whose API call is running (0: none)
  int outer_stack_ = 0;    ///< during a race's second call, the node whose first call waits
  std::mt19937_64 race_rng_;  ///< races' own generator: seeds whose calls never race keep their schedules
  App* racing_ = nullptr;     ///< the application whose load or delete a race may join
  bool racing_load_ = false;  ///< that call is an open or a load (else a delete)
  uint64_t race_in_ = 0;      ///< steps until the race joins it (0: none armed)
  std::optional<Violation> deferred_;  ///< found by a race's second call, thrown when the first returns
  bool checking_ = false;  ///< the checker is looking: no faults meanwhile
  std::string holders_;     ///< who copies() found holding the generation, for the message
  bool finishing_ = false; ///< every fault healed for the final check: no new ones
  uint32_t content_ = 0;
  Stats stats_;
  std::string schedule_;
};

}  // namespace

Outcome run_seed(uint64_t seed, const Options& options) {
  if (std::getenv("BATON_LOG") == nullptr) set_log_level(LogLevel::kError);  // BATON_LOG=info: events as they happen
  World w(seed, options);
  return w.run();
}

}  // namespace baton::sim
