// Regression tests for the failover bugs a kill campaign found (issue #8):
// each fails on the code before its fix. Real engines and worker threads on
// loopback links; kills drop a node's memory, restarts bring a new
// incarnation on the same wires.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../../common/cluster.h"
#include "../../common/ok.h"
#include "baton/loopback.h"
#include "protocol/wire.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;
using test::eventually;
using test::fast_detector;
using test::peer_alive;

// Content derived from the generation, so a restore can be checked against
// the generation it claims to be.
void write_generation(Engine& e, Segment* seg, uint64_t gen) {
  test::fill_pattern(e.data(seg), static_cast<uint32_t>(gen * 7919));
}

std::vector<std::byte> content_of(uint64_t gen, size_t size) {
  std::vector<std::byte> v(size);
  test::fill_pattern(v, static_cast<uint32_t>(gen * 7919));
  return v;
}

bool equals_generation(Engine& e, Segment* seg, uint64_t gen) {
  auto mem = e.data(seg);
  const auto want = content_of(gen, mem.size());
  return std::memcmp(mem.data(), want.data(), mem.size()) == 0;
}

// Commits generations until `last`, each durable.
void commit_durable(Engine& e, Segment* seg, uint64_t last) {
  for (;;) {
    auto st = test::must(e.status(seg));
    if (st.generation >= last) return;
    write_generation(e, seg, st.generation + 1);
    auto g = test::must(e.commit(seg));
    ASSERT_TRUE(test::ok(e.wait_replicated(seg, g, kDurable, 10s)));
  }
}

std::vector<uint16_t> replica_set(Engine& e, Segment* seg) {
  std::vector<uint16_t> set;
  for (auto& [n, held] : test::must(e.status(seg)).replicas) set.push_back(n);
  return set;
}

EngineConfig config(uint32_t rf) {
  EngineConfig c = fast_detector();
  c.query_timeout_ms = 300;
  c.replication_factor = rf;
  return c;
}

// Bug 1: an agent moves the segment, then the new owner dies. The old owner
// is a replica of the new owner's set; it must answer the next claim from
// its replica store (it answered "no such segment" and wedged the segment),
// and must never hand out its own stale copy.
TEST(Durability, AgentMoveThenNewOwnerDeathLosesNothing) {
  Cluster cl(3, config(2));
  constexpr size_t kSize = 64 * 1024;
  Segment* old_handle = test::must(cl.node(1).create("seg1", kSize));
  commit_durable(cl.node(1), old_handle, 5);
  // The writer on node 1 is gone; an agent loads the segment on node 2.
  auto moved = test::must(cl.node(2).load("seg1"));
  ASSERT_EQ(moved.generation, 5u);
  ASSERT_TRUE(equals_generation(cl.node(2), moved.segment, 5));
  commit_durable(cl.node(2), moved.segment, 12);
  const auto set = replica_set(cl.node(2), moved.segment);
  ASSERT_NE(std::find(set.begin(), set.end(), 1), set.end()) << "node 1 should be a replica of the new owner";
  // Both replicas hold generation 12 (durable may rest on a set recorded
  // while one of them was briefly suspected).
  ASSERT_TRUE(test::ok(cl.node(2).wait_replicated(moved.segment, 12, 2, 10s)));

  cl.kill(2);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(3), 2) && !peer_alive(cl.node(1), 2); }));
  auto loaded = cl.node(3).load("seg1");
  ASSERT_TRUE(test::ok(loaded)) << cl.events();
  EXPECT_EQ(loaded->generation, 12u) << cl.events();
  EXPECT_TRUE(equals_generation(cl.node(3), loaded->segment, loaded->generation));
  EXPECT_LE(test::must(cl.node(3).status(loaded->segment)).epoch, 3u) << "epochs ran away" << cl.events();

  // The old owner's application comes back on node 1: it must not get
  // generation 5 back. Node 3 owns the segment now.
  auto back = cl.node(1).reopen(old_handle);
  ASSERT_FALSE(back) << "restored generation " << back->generation << " from a superseded local copy";
  EXPECT_EQ(back.error().code, Errc::kExists) << back.error().to_string();
}

// Bug 2: an application that dies while writing the next generation in
// place; its restart on the same node gets exactly the last commit.
TEST(Durability, RestartAfterCrashGetsTheCommittedGenerationNotTheWorkingCopy) {
  Cluster cl(3, config(2));
  constexpr size_t kSize = 256 * 1024;
  Segment* seg = test::must(cl.node(1).create("crash", kSize));
  // Nothing committed yet: a restart starts fresh (zeroed), even if the
  // application had written.
  std::memset(cl.node(1).data(seg).data(), 0x5a, 4096);
  auto fresh = test::must(cl.node(1).reopen(seg));
  EXPECT_EQ(fresh.outcome, OpenOutcome::kCreated);
  EXPECT_EQ(fresh.segment, seg);
  auto mem = cl.node(1).data(seg);
  EXPECT_TRUE(std::all_of(mem.begin(), mem.end(), [](std::byte b) { return b == std::byte{0}; }));

  commit_durable(cl.node(1), seg, 3);
  // Half of generation 4 written when the application dies.
  test::fill_pattern(cl.node(1).data(seg).first(kSize / 2), 4 * 7919);
  auto back = test::must(cl.node(1).reopen(seg));
  EXPECT_EQ(back.outcome, OpenOutcome::kRestored);
  EXPECT_EQ(back.generation, 3u);
  EXPECT_EQ(back.segment, seg) << "still the owner: the same handle";
  EXPECT_TRUE(equals_generation(cl.node(1), back.segment, 3)) << "restored bytes are not generation 3";
  // And the application carries on from there.
  write_generation(cl.node(1), seg, 4);
  auto g = test::must(cl.node(1).commit(seg));
  EXPECT_EQ(g, 4u);
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 10s)));
}

// Bug 3: a replica that acknowledged a generation, died and came back empty
// must not count towards durability; and it must get the latest
// generation again, from the first chunk.
TEST(Durability, AReplicaThatRestartedEmptyDoesNotCount) {
  EngineConfig c = config(2);
  c.expected_votes = 4;
  Cluster cl(4, c);
  constexpr size_t kSize = 1024 * 1024;
  Segment* seg = test::must(cl.node(1).create("restart", kSize));
  commit_durable(cl.node(1), seg, 1);
  const auto set = replica_set(cl.node(1), seg);
  ASSERT_EQ(set.size(), 2u);
  const int a = set[0], b = set[1];
  int spare = 2;
  while (spare == a || spare == b) ++spare;
  cl.kill(spare);
  // B stalls; generation 2 reaches A only.
  cl.isolate(b, true);
  write_generation(cl.node(1), seg, 2);
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s)));
  // A dies and comes back with nothing; then B comes back.
  cl.kill(a);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(1), static_cast<uint16_t>(a)); }));
  cl.restart(a);
  cl.isolate(b, false);
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 20s))) << cl.events();
  // Durable means a majority of the set holds it now: here, both.
  for (int n : {a, b}) {
    auto held = cl.node(n).read_replica("restart");
    ASSERT_TRUE(test::ok(held)) << "node " << n << " holds nothing, yet generation 2 was acknowledged durable"
                                << cl.events();
    EXPECT_EQ(test::must(cl.node(n).replica_status("restart")).generations.front(), 2u);
    EXPECT_EQ(*held, content_of(2, kSize));
  }
}

// Two of three nodes die at once, the owner and one replica, and come back
// empty: a quorum of the three that knows nothing. The third node holds
// the durable generation, and they have not heard from it yet (its link is
// not back: here cut). An open on a restarted node must not start the name
// afresh (a session 37 embedded trial: it did, and the third node then
// dropped its copy for the new history): it says to try again, and once
// the third node is heard it restores the durable generation. After
// fresh_start_wait_ms a node that never comes back stops nothing.
TEST(Durability, NodesThatRestartedTogetherWaitForThePeerTheyHaveNotHeard) {
  EngineConfig c = config(2);
  c.fresh_start_wait_ms = 6000;  // room for a loaded (sanitizer) run's restarts and queries
  Cluster cl(3, c);
  constexpr size_t kSize = 64 * 1024;
  Segment* seg = test::must(cl.node(1).create("amnesia", kSize));
  commit_durable(cl.node(1), seg, 3);
  const auto set = replica_set(cl.node(1), seg);
  ASSERT_EQ(set.size(), 2u);
  const int lost = set[0], keeper = set[1];
  cl.isolate(keeper, true);
  cl.kill(1);
  cl.kill(lost);
  cl.restart(1);
  cl.restart(lost);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), static_cast<uint16_t>(lost)); }));
  auto early = cl.node(1).open("amnesia", kSize);
  ASSERT_FALSE(early) << "started afresh while node " << keeper << " held generation 3";
  EXPECT_EQ(early.error().code, Errc::kUnavailable);
  EXPECT_NE(early.error().message.find("has not heard from node " + std::to_string(keeper)), std::string::npos)
      << early.error().message;
  auto load = cl.node(lost).load("amnesia");
  ASSERT_FALSE(load);
  EXPECT_EQ(load.error().code, Errc::kUnavailable) << "not ENOENT: the unheard node may hold it";
  cl.isolate(keeper, false);
  Result<OpenResult> r = tl::unexpected(Error{});
  ASSERT_TRUE(eventually([&] { return (r = cl.node(1).open("amnesia", kSize)).has_value(); })) << r.error().to_string();
  EXPECT_EQ(r->outcome, OpenOutcome::kRestored);
  EXPECT_EQ(r->generation, 3u);
  EXPECT_TRUE(equals_generation(cl.node(1), r->segment, 3));
  // A name nobody holds, with a peer gone for good: refused at first, made
  // once the wait is over.
  cl.kill(keeper);
  cl.kill(lost);
  cl.restart(lost);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(lost), 1); }));
  auto fresh = cl.node(lost).create("brand-new", 4096);
  ASSERT_FALSE(fresh);
  EXPECT_EQ(fresh.error().code, Errc::kUnavailable);
  ASSERT_TRUE(eventually([&] { return test::ok(cl.node(lost).create("brand-new", 4096)); }, 20s));
}

// The same two nodes restart together, and this time hear the third before
// it falls silent (cut off right after: a stall, a partition). Heard is not
// enough: they know nothing of what it holds unless it handed them its set
// records. Before, the open on a restarted node found the name nowhere
// among the nodes it could hear, counted every peer heard, and started it
// afresh; the third node's durable generation lost to the new history once
// it came back. Now each asks every peer for its records after a start (in
// batches: forty more names here than one frame carries), so the record
// names the silent member: the open waits for it, and a create is refused.
TEST(Durability, NodesThatRestartedTogetherKnowWhatAPeerHeardOnceHolds) {
  EngineConfig c = config(2);
  c.fresh_start_wait_ms = 6000;
  Cluster cl(3, c);
  constexpr size_t kSize = 64 * 1024;
  Segment* seg = test::must(cl.node(1).create("amnesia", kSize));
  commit_durable(cl.node(1), seg, 3);
  std::vector<std::string> others;
  for (int i = 0; i < 40; ++i) {
    others.push_back("other-segment-" + std::to_string(i));
    (void)test::must(cl.node(1).create(others.back(), 4096));
  }
  const auto set = replica_set(cl.node(1), seg);
  ASSERT_EQ(set.size(), 2u);
  const int lost = set[0], keeper = set[1];
  cl.kill(1);
  cl.kill(lost);
  cl.restart(1);
  cl.restart(lost);
  // Both hear the keeper, and have its records, before it falls silent.
  for (int n : {1, lost})
    ASSERT_TRUE(eventually([&] {
      if (!peer_alive(cl.node(n), static_cast<uint16_t>(keeper))) return false;
      for (const auto& name : others)
        if (!cl.node(n).record(name)) return false;
      return cl.node(n).record("amnesia").has_value();
    })) << "node " << n << " was not handed node " << keeper << "'s records" << cl.events();
  EXPECT_TRUE(eventually([&] {
    const auto peers = cl.node(1).peers();
    return std::all_of(peers.begin(), peers.end(), [](const PeerStatus& p) { return p.records_had; });
  })) << "node 1 has the records, yet says it lacks some";
  cl.isolate(keeper, true);
  ASSERT_TRUE(eventually([&] {
    return !peer_alive(cl.node(1), static_cast<uint16_t>(keeper)) &&
           !peer_alive(cl.node(lost), static_cast<uint16_t>(keeper));
  }));
  auto early = cl.node(1).open("amnesia", kSize);
  ASSERT_FALSE(early) << "started afresh while node " << keeper << " held generation 3";
  EXPECT_EQ(early.error().code, Errc::kNotFound) << early.error().to_string();
  EXPECT_NE(early.error().message.find("node " + std::to_string(keeper) + " of its replica set did not answer"),
            std::string::npos)
      << early.error().message;
  auto made = cl.node(lost).create("amnesia", kSize);
  ASSERT_FALSE(made) << "created again while node " << keeper << " held it";
  EXPECT_EQ(made.error().code, Errc::kExists) << made.error().to_string();
  cl.isolate(keeper, false);
  Result<OpenResult> r = tl::unexpected(Error{});
  ASSERT_TRUE(eventually([&] { return (r = cl.node(1).open("amnesia", kSize)).has_value(); })) << r.error().to_string();
  EXPECT_EQ(r->outcome, OpenOutcome::kRestored);
  EXPECT_EQ(r->generation, 3u);
  EXPECT_TRUE(equals_generation(cl.node(1), r->segment, 3));
}

// A link that also delivers frames the test queues, as if its peer had
// sent them.
class TapLink final : public Link {
 public:
  explicit TapLink(std::unique_ptr<Link> inner) : inner_(std::move(inner)) {}
  const std::string& name() const noexcept override { return inner_->name(); }
  uint16_t peer() const noexcept override { return inner_->peer(); }
  LinkCaps caps() const noexcept override { return inner_->caps(); }
  bool up() noexcept override { return inner_->up(); }
  uint16_t rx_burst(RxFrame* out, uint16_t n) noexcept override {
    uint16_t k = 0;
    while (k < n && !queue.empty()) {
      held_.push_back(std::move(queue.front()));
      queue.pop_front();
      out[k++] = RxFrame{held_.back(), &held_};
    }
    return k + inner_->rx_burst(out + k, static_cast<uint16_t>(n - k));
  }
  void release_rx(RxFrame* frames, uint16_t n) noexcept override {
    for (uint16_t i = 0; i < n; ++i) {
      if (frames[i].token == &held_) held_.pop_front();
      else inner_->release_rx(&frames[i], 1);
    }
  }
  uint16_t tx_burst(const TxFrame* frames, uint16_t n) noexcept override {
    for (uint16_t i = 0; i < n; ++i) {
      auto& b = sent.emplace_back();
      for (auto part : {frames[i].head, frames[i].payload}) b.insert(b.end(), part.begin(), part.end());
    }
    return inner_->tx_burst(frames, n);
  }
  bool service(uint64_t now_ns) noexcept override { return inner_->service(now_ns); }
  LinkCounters counters() const noexcept override { return inner_->counters(); }
  std::deque<std::vector<std::byte>> queue;
  std::vector<std::vector<std::byte>> sent;  ///< every frame node 1 sent node 2, as sent

 private:
  std::unique_ptr<Link> inner_;
  std::deque<std::vector<std::byte>> held_;
};

// Two engines on a simulated clock of their own, node 1's link to node 2
// a TapLink: a test queues frames there as if node 2 had sent them.
// `stall_from_2`: node 2's frames wait on the wire until the test lets
// them go (wire->set_stalled(1, false)), so queued ones come first.
struct TappedPair {
  explicit TappedPair(bool stall_from_2 = false) {
    hooks->now = [this] { return now; };
    hooks->step = [this] {
      now += 50'000;
      n1->poll();
      n1->poll_control();
      n2->poll();
      n2->poll_control();
    };
    auto pair = loopback::make_pair(1, 2, 16384, 1024, 1, hooks->now);
    wire = pair.wire;
    if (stall_from_2) wire->set_stalled(1, true);
    auto t = std::make_unique<TapLink>(std::move(pair.a));
    tap = t.get();
    std::vector<std::unique_ptr<Link>> l1, l2;
    l1.push_back(std::move(t));
    l2.push_back(std::move(pair.b));
    n1 = test::must(Engine::start(config(1), std::move(l1)));
    n2 = test::must(Engine::start(config(2), std::move(l2)));
  }
  EngineConfig config(uint16_t id) const {
    EngineConfig c;
    c.node_id = id;
    c.replication_factor = 1;
    c.heartbeat_interval_us = 1000;
    c.failure_timeout_us = 10'000;
    c.simulation = hooks;
    return c;
  }
  /// A frame from node 2 to node 1 about segment `name` (the frame views
  /// it: a literal, or a string that outlives the frame).
  static wire::Frame from_2(wire::MsgType type, std::string_view name, uint64_t epoch, uint64_t generation) {
    wire::Frame f;
    f.type = type;
    f.src = 2;
    f.dst = 1;
    f.name = name;
    f.seg_id = wire::segment_id(name);
    f.epoch = epoch;
    f.generation = generation;
    return f;
  }
  static std::vector<std::byte> encoded(const wire::Frame& f) {
    std::vector<std::byte> b(wire::kHeaderSize + wire::kMaxNote + wire::kMaxNameLen);
    b.resize(wire::encode(f, b));
    return b;
  }
  /// Queues `f`, encoded, as if node 2 had sent it to node 1.
  void queue(const wire::Frame& f) { tap->queue.push_back(encoded(f)); }
  uint64_t now = 1'000'000'000;
  std::shared_ptr<SimulationHooks> hooks = std::make_shared<SimulationHooks>();
  std::shared_ptr<loopback::Wire> wire;
  TapLink* tap = nullptr;
  std::unique_ptr<Engine> n1, n2;
};

// A peer's batch of records can hold one its writer withdrew (a create
// that lost its race) after the batch was read and before it arrived: the
// withdrawal reached this node first. Taken then, the record of a name
// never created would live on here, make creates of it fail with kExists,
// and be handed to every node that starts later (a review of the hand-off).
// Frames from node 2 are queued by hand: its withdrawal of "gone", then a
// batch that still holds "gone", and "kept", which nobody withdrew.
TEST(Durability, ARecordItsWriterWithdrewIsNotTakenFromALaterBatch) {
  TappedPair p(true);  // node 2's own answer waits: the queued one comes first
  auto& n1 = p.n1;
  wire::Frame withdraw = TappedPair::from_2(wire::MsgType::kSetRecord, "gone", 1, 1);  // version 1 withdrawn
  withdraw.flags = wire::kFlagRestart;
  p.queue(withdraw);
  std::vector<std::byte> entries(wire::kMaxNote);
  size_t len = wire::put_record_entry(entries, 0, {"gone", 1, 1, wire::pack_nodes(std::vector<uint16_t>{1}), 2, false});
  len = wire::put_record_entry(entries, len, {"kept", 1, 1, wire::pack_nodes(std::vector<uint16_t>{1}), 2, false});
  wire::Frame batch;
  batch.type = wire::MsgType::kRecords;
  batch.flags = wire::kFlagComplete;
  batch.src = 2;
  batch.dst = 1;
  batch.epoch = n1->incarnation();  // answers node 1's first question (from segment id 0)
  batch.payload = std::span(entries).first(len);
  p.queue(batch);
  for (int i = 0; i < 100; ++i) p.hooks->step();
  p.wire->set_stalled(1, false);
  EXPECT_TRUE(eventually([&] { return n1->record("kept").has_value(); })) << "the batch was not taken";
  EXPECT_FALSE(n1->record("gone")) << "a withdrawn record came back with a batch read before the withdrawal";
  const auto peers = n1->peers();
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_TRUE(peers[0].records_had);
}

// A commit that finds its segment fenced once it holds the poll token is
// refused, and the fenced owner keeps its last generation as a copy. The
// commit checks the fence first, then waits for the token; the worker's
// poll under way meanwhile may fence it (a newer owner's ack here, queued
// by hand and taken in that poll: the simulation's token wait). The
// commit went ahead and took a stage, and the fenced owner then kept no
// copy of the generation its replicas might have lost since (session 50,
// found by reading; the simulator now runs such polls too).
TEST(Durability, ACommitFencedWhileItWaitsForTheTokenIsRefusedAndTheCopyKept) {
  TappedPair p;
  auto& n1 = p.n1;
  std::function<void()> on_token_wait;
  p.hooks->while_waiting_for_token = [&] {
    if (auto f = std::exchange(on_token_wait, nullptr)) f();
  };
  for (int i = 0; i < 200; ++i) p.hooks->step();  // heard each other, records exchanged
  Segment* seg = test::must(n1->open("waits", 8192)).segment;
  std::memset(n1->data(seg).data(), 0x11, 8192);
  const uint64_t g1 = test::must(n1->commit(seg));
  ASSERT_TRUE(n1->wait_replicated(seg, g1, kDurable, 1000ms)) << "generation 1 durable on node 2";
  const uint64_t epoch = test::must(n1->status(seg)).epoch;
  on_token_wait = [&] {
    // A newer owner's ack, taken by the poll the commit waits out.
    p.queue(TappedPair::from_2(wire::MsgType::kAck, "waits", epoch + 1, 1));
    n1->poll();
  };
  std::memset(n1->data(seg).data(), 0x22, 8192);
  auto g2 = n1->commit(seg);
  EXPECT_EQ(on_token_wait, nullptr) << "the commit never waited for the token";
  EXPECT_FALSE(g2) << "a commit of a segment fenced while it waited was taken as generation " << *g2;
  if (!g2) {
    EXPECT_EQ(g2.error().code, Errc::kFenced);
  }
  EXPECT_TRUE(test::must(n1->status(seg)).fenced);
  for (int i = 0; i < 50; ++i) p.hooks->step();
  EXPECT_EQ(n1->stats().fenced_copies_kept, 1u) << "the fenced owner kept no copy of generation " << g1;
}

// A claim is a promise: a node that took one stores no set record of an
// older epoch from then on, and its answer says which record it held. A
// load that queried before a new set was recorded and claimed after (the
// set's quorum and the claim's grants apart) went by the old set, while
// the old owner made a generation durable through the new one, which the
// load then lost (simulation seed 790287 with token waits). Frames from
// "node 2" are queued by hand: its set record of epoch 2, a claim of
// epoch 3 from it, and a newer record of epoch 2 after that; node 1 holds
// no copy and, before claims were promises, answered "no such segment"
// and stored the late record.
TEST(Durability, AClaimIsAPromiseThatRefusesOlderRecordsAndNamesTheRecordHeld) {
  TappedPair p;
  auto& n1 = p.n1;
  for (int i = 0; i < 200; ++i) p.hooks->step();  // heard each other, records exchanged
  const std::string name = "promised";
  auto frame = [&](wire::MsgType type, uint64_t epoch, uint64_t version) {
    wire::Frame f = TappedPair::from_2(type, name, epoch, version);
    f.sack = type == wire::MsgType::kSetRecord ? wire::pack_nodes(std::vector<uint16_t>{1}) : 0;
    return f;
  };
  auto settle = [&] {
    for (int i = 0; i < 5; ++i) p.hooks->step();
  };
  p.queue(frame(wire::MsgType::kSetRecord, 2, 1));
  settle();
  ASSERT_EQ(test::must(n1->record(name)).epoch, 2u);
  p.tap->sent.clear();
  p.queue(frame(wire::MsgType::kClaim, 3, 0));
  settle();
  // The answer: a promise (no copy here), carrying record (2, 1) of node 2.
  bool answered = false;
  for (const auto& b : p.tap->sent) {
    wire::Frame f;
    if (wire::decode(b, f) != wire::DecodeError::kNone || f.type == wire::MsgType::kHeartbeat) continue;
    ASSERT_EQ(f.type, wire::MsgType::kFetchMeta) << "the claim was refused or not promised";
    EXPECT_EQ(f.flags & (wire::kFlagGranted | wire::kFlagFound), wire::kFlagGranted);
    EXPECT_EQ(f.epoch, 3u);
    wire::RecordEntry r;
    ASSERT_TRUE(wire::claim_record(f, r)) << "the answer does not name the record held";
    EXPECT_EQ(r.epoch, 2u);
    EXPECT_EQ(r.version, 1u);
    EXPECT_EQ(r.owner, 2);
    answered = true;
  }
  EXPECT_TRUE(answered) << "no answer to the claim";
  // A newer version of epoch 2's record, after the promise: refused.
  const uint64_t stale_before = n1->stats().stale_epoch;
  p.queue(frame(wire::MsgType::kSetRecord, 2, 2));
  settle();
  EXPECT_EQ(test::must(n1->record(name)).version, 1u) << "a record below the promised epoch was stored";
  EXPECT_EQ(n1->stats().stale_epoch, stale_before + 1);
  // A claim below the promise is refused too; the claimant's own record
  // of the promised epoch is stored.
  p.queue(frame(wire::MsgType::kClaim, 2, 0));
  p.queue(frame(wire::MsgType::kSetRecord, 3, 1));
  settle();
  EXPECT_EQ(n1->stats().stale_epoch, stale_before + 2);
  const RecordStatus r = test::must(n1->record(name));
  EXPECT_EQ(r.epoch, 3u);
  EXPECT_EQ(r.owner, 2);
}

// A node of another release (wire version 1: claims answered without
// records) is not half understood: each of its frames is counted as
// another version's and dropped, and nothing in it is taken.
TEST(Durability, AFrameOfAnotherWireVersionIsCountedAndDropped) {
  TappedPair p;
  auto& n1 = p.n1;
  for (int i = 0; i < 200; ++i) p.hooks->step();
  wire::Frame rec = TappedPair::from_2(wire::MsgType::kSetRecord, "older", 2, 1);
  rec.sack = wire::pack_nodes(std::vector<uint16_t>{1});
  std::vector<std::byte> b = TappedPair::encoded(rec);
  b[2] = std::byte{wire::kVersion - 1};
  const uint64_t before = n1->stats().decode_errors[static_cast<size_t>(wire::DecodeError::kBadVersion)];
  p.tap->queue.push_back(b);
  for (int i = 0; i < 5; ++i) p.hooks->step();
  EXPECT_EQ(n1->stats().decode_errors[static_cast<size_t>(wire::DecodeError::kBadVersion)], before + 1);
  EXPECT_FALSE(n1->record("older")) << "a record in a frame of another version was stored";
  b[2] = std::byte{wire::kVersion};  // the same frame in this version (its checksum covers the byte)
  p.tap->queue.push_back(b);
  for (int i = 0; i < 5; ++i) p.hooks->step();
  EXPECT_EQ(n1->stats().decode_errors[static_cast<size_t>(wire::DecodeError::kBadVersion)], before + 1);
  EXPECT_TRUE(n1->record("older")) << "the frame was refused for more than its version";
}

// A new name right after a node started, while a peer is not heard yet
// (its first heartbeat on the way; here its links come back 300 ms
// later): the create, and an open that finds the name nowhere, wait for
// the peer and go ahead, instead of refusing with "try again".
TEST(Durability, ANewNameRightAfterAStartWaitsForAPeerAboutToBeHeard) {
  EngineConfig c = config(2);
  c.fresh_start_wait_ms = 6000;
  Cluster cl(3, c);
  for (const bool by_open : {false, true}) {
    SCOPED_TRACE(by_open ? "open" : "create");
    cl.isolate(3, true);
    cl.kill(1);
    cl.restart(1);
    ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 2); }));
    std::thread heal([&] {
      std::this_thread::sleep_for(300ms);
      cl.isolate(3, false);
    });
    const char* name = by_open ? "opened-early" : "created-early";
    Result<Segment*> seg = tl::unexpected(Error{});
    if (by_open) {
      auto r = cl.node(1).open(name, 4096);
      if (r) seg = r->segment;
      else seg = tl::unexpected(r.error());
      if (r) {
        EXPECT_EQ(r->outcome, OpenOutcome::kCreated);
      }
    } else {
      seg = cl.node(1).create(name, 4096);
    }
    heal.join();
    ASSERT_TRUE(seg) << seg.error().to_string();
  }
}

// Found by a campaign (session 29): a replica stalled (SIGSTOP) while the
// owner committed. On SIGCONT its acknowledgement reached the owner's data
// path before its heartbeat had made the control thread count it alive
// again, so it counted for nothing; and nothing counted it once the replica
// was back. The durable wait timed out saying "2 of 2 replicas hold it".
TEST(Durability, AnAcknowledgementReadWhileItsSenderWasSuspectedCountsOnceItIsBack) {
  // Sparse heartbeats: few wait in the stalled lane ahead of the
  // acknowledgement, so the owner reads it before it counts b alive again.
  EngineConfig c = config(2);
  c.heartbeat_interval_us = 20'000;
  c.failure_timeout_us = 60'000;
  Cluster cl(3, c);
  Segment* seg = test::must(cl.node(1).create("late", 64 * 1024));
  commit_durable(cl.node(1), seg, 1);
  const auto set = replica_set(cl.node(1), seg);
  ASSERT_EQ(set.size(), 2u);
  const int b = set[0] != 1 ? set[0] : set[1];
  // b stops: nothing reaches it, and it sends nothing the owner reads.
  cl.wire(1, b).set_stalled(static_cast<uint16_t>(b), true);
  cl.wire(1, b).set_stalled(1, true);
  write_generation(cl.node(1), seg, 2);
  auto g = test::must(cl.node(1).commit(seg));
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(1), static_cast<uint16_t>(b)); }));
  // It continues: it takes generation 2 and acknowledges it, and the owner
  // reads that acknowledgement in the same bursts as b's first heartbeats.
  cl.wire(1, b).set_stalled(static_cast<uint16_t>(b), false);
  ASSERT_TRUE(eventually([&] {
    auto st = cl.node(b).replica_status("late");
    return st && !st->generations.empty() && st->generations.front() == g;
  }));
  std::this_thread::sleep_for(20ms);  // its acknowledgement is sent
  cl.wire(1, b).set_stalled(1, false);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), static_cast<uint16_t>(b)); }));
  auto held = [&] {
    for (auto& [n, h] : test::must(cl.node(1).status(seg)).replicas)
      if (n == b && h < g) return false;
    return true;
  };
  ASSERT_TRUE(eventually(held)) << cl.events();
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(seg, g, kDurable, 3s))) << cl.events();
}

// Found by the simulator (seed 8474, session 30): the owner of a set of two
// dies, and both members load the name at once while the wire between them
// is cut. Each grants its own claim (R = 1 of a set of two) and owns the
// same epoch; at most one can get its new set recorded at a quorum. The
// other waited forever, its commits never durable. It steps down now, and
// its application hears it was fenced.
TEST(Durability, TwoLoadsAcrossACutOwnOneEpochAndOneStepsDown) {
  Cluster cl(5, config(2));
  constexpr size_t kSize = 64 * 1024;
  Segment* seg = test::must(cl.node(1).create("twice", kSize));
  commit_durable(cl.node(1), seg, 2);
  const auto set = replica_set(cl.node(1), seg);
  ASSERT_EQ(set.size(), 2u);
  const int a = set[0], b = set[1];
  cl.kill(1);
  cl.wire(a, b).set_partitioned(true);
  ASSERT_TRUE(eventually([&] {
    return !peer_alive(cl.node(a), 1) && !peer_alive(cl.node(b), 1) && !peer_alive(cl.node(a), b) &&
           !peer_alive(cl.node(b), a) && cl.node(a).view().quorate && cl.node(b).view().quorate;
  }));
  Result<OpenResult> got[2] = {fail(Errc::kTimeout, "not run"), fail(Errc::kTimeout, "not run")};
  {
    std::jthread ta([&] { got[0] = cl.node(a).load("twice"); });
    std::jthread tb([&] { got[1] = cl.node(b).load("twice"); });
  }
  const int nodes[2] = {a, b};
  // Each commits a generation of its own (at most one becomes durable; one
  // that stepped down already is refused).
  uint64_t gens[2] = {0, 0};
  int fenced = 0;
  for (int i = 0; i < 2; ++i) {
    if (!got[i]) continue;
    EXPECT_EQ(got[i]->generation, 2u);
    write_generation(cl.node(nodes[i]), got[i]->segment, 3);
    auto g = cl.node(nodes[i]).commit(got[i]->segment);
    if (g) {
      gens[i] = *g;
      continue;
    }
    EXPECT_EQ(g.error().code, Errc::kFenced) << g.error().to_string();
    ++fenced;
  }
  cl.wire(a, b).set_partitioned(false);
  int durable = 0;
  for (int i = 0; i < 2; ++i) {
    if (!got[i] || gens[i] == 0) continue;
    auto w = cl.node(nodes[i]).wait_replicated(got[i]->segment, gens[i], kDurable, 5s);
    if (w) {
      ++durable;
      continue;
    }
    EXPECT_EQ(w.error().code, Errc::kFenced) << "node " << nodes[i] << ": " << w.error().to_string() << cl.events();
    ++fenced;
  }
  EXPECT_LE(durable, 1);
  EXPECT_GE(fenced, 1) << "two owners of one epoch, neither stepped down" << cl.events();
  // Whoever owns it now serves generation 3 or 2, never a torn one; and
  // the name is usable: a node that loads it after gets a committed state.
  for (int i = 0; i < 2; ++i)
    if (got[i]) (void)cl.node(nodes[i]).close(got[i]->segment);
  int other = 2;
  while (other == a || other == b) ++other;
  Result<OpenResult> later = fail(Errc::kTimeout, "not run");
  ASSERT_TRUE(eventually([&] { return (later = cl.node(other).load("twice")).has_value(); })) << cl.events();
  EXPECT_EQ(later->generation, durable == 1 ? 3u : later->generation);
  EXPECT_TRUE(equals_generation(cl.node(other), later->segment, later->generation));
}

// Bug 4: the owner is cut off while its writer commits; another node takes
// over. The old owner must not restore its own divergent generation.
TEST(Durability, AFencedOwnerDoesNotRestoreItsDivergentHistory) {
  Cluster cl(3, config(2));
  constexpr size_t kSize = 64 * 1024;
  Segment* seg = test::must(cl.node(1).create("diverge", kSize));
  commit_durable(cl.node(1), seg, 3);
  cl.isolate(1, true);
  ASSERT_TRUE(eventually([&] { return cl.node(2).view().members.size() == 2 && !peer_alive(cl.node(2), 1); }));
  auto taken = test::must(cl.node(2).load("diverge"));
  EXPECT_EQ(taken.generation, 3u);
  // Meanwhile the old owner's writer commits generation 4, never durable.
  write_generation(cl.node(1), seg, 4);
  ASSERT_TRUE(test::ok(cl.node(1).commit(seg)));
  cl.isolate(1, false);
  ASSERT_TRUE(eventually([&] { return cl.node(1).view().members.size() == 3; }));
  auto back = cl.node(1).reopen(seg);
  ASSERT_FALSE(back) << "restored generation " << back->generation << " that only the fenced owner had";
  EXPECT_EQ(back.error().code, Errc::kExists) << back.error().to_string();
  // Once the new owner lets go, node 1 restores the new owner's state.
  ASSERT_TRUE(test::ok(cl.node(2).close(taken.segment)));
  auto reopened = cl.node(1).open("diverge", kSize);
  ASSERT_TRUE(test::ok(reopened)) << cl.events();
  EXPECT_EQ(reopened->outcome, OpenOutcome::kRestored);
  EXPECT_EQ(reopened->generation, 3u);
  EXPECT_TRUE(equals_generation(cl.node(1), reopened->segment, 3));
}

// An independent campaign (docs/reliability.md, session 48): a load moved
// a segment away, and the new owner and the other replica died before the
// old owner's copy was counted under the new owner: the old owner, alive
// and fenced, held the last copy and dropped it, and the next open started
// afresh. Now a fenced owner keeps its last snapshot as a replica copy, and
// a load takes a copy outside the newest set when every member of that set
// answered that it holds nothing. Here node 2, which cannot hear node 1,
// takes the segment with node 3 as its only replica; node 1's application,
// still running, commits generation 5 (a commit after the takeover: never
// durable), node 3 refuses it, and node 1 is fenced with generation 5 in its
// last snapshot. Then nodes 2 and 3 die, and with them every member of the
// newest set and every copy of generation 4 but node 1's newer one.
TEST(Durability, AFencedOwnersCopyOutlivesTheNewOwnerAndItsSet) {
  Cluster cl(3, config(2));
  constexpr size_t kSize = 64 * 1024;
  Segment* old_handle = test::must(cl.node(1).create("kept", kSize));
  commit_durable(cl.node(1), old_handle, 4);
  // Nodes 2 and 3 stop hearing node 1 (it still hears them); node 2 takes
  // the segment over.
  cl.wire(1, 2).set_stalled(2, true);
  cl.wire(1, 3).set_stalled(3, true);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(2), 1) && !peer_alive(cl.node(3), 1); }));
  auto moved = test::must(cl.node(2).load("kept"));
  ASSERT_EQ(moved.generation, 4u);
  ASSERT_TRUE(eventually([&] { return test::has_event(cl.node(2), "replica set {3} recorded"); })) << cl.events();
  // Node 3 hears node 1 again and refuses its next generation: fenced.
  cl.wire(1, 3).set_stalled(3, false);
  write_generation(cl.node(1), old_handle, 5);
  ASSERT_EQ(test::must(cl.node(1).commit(old_handle)), 5u);
  auto refused = cl.node(1).wait_replicated(old_handle, 5, kDurable, 10s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kFenced) << refused.error().to_string();
  ASSERT_TRUE(eventually([&] { return cl.node(1).stats().fenced_copies_kept == 1; })) << cl.events();
  const auto kept = cl.node(1).read_replica("kept");
  ASSERT_TRUE(kept) << kept.error().to_string();
  EXPECT_EQ(*kept, content_of(5, kSize));

  cl.kill(2);
  cl.kill(3);
  cl.wire(1, 2).set_stalled(2, false);
  cl.restart(2);
  cl.restart(3);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(1), 2) && peer_alive(cl.node(1), 3); }));
  auto back = cl.node(1).open("kept", kSize);
  ASSERT_TRUE(test::ok(back)) << cl.events();
  EXPECT_EQ(back->outcome, OpenOutcome::kRestored) << cl.events();
  EXPECT_EQ(back->generation, 5u) << cl.events();
  EXPECT_TRUE(equals_generation(cl.node(1), back->segment, 5));
  EXPECT_EQ(cl.node(1).stats().loads_outside_set, 1u) << cl.events();
  // It owns the segment again: its next commit becomes durable.
  write_generation(cl.node(1), back->segment, 6);
  auto g = test::must(cl.node(1).commit(back->segment));
  EXPECT_TRUE(test::ok(cl.node(1).wait_replicated(back->segment, g, kDurable, 10s))) << cl.events();
}

// The other side of a kept copy: an old owner that a takeover's query did
// not reach (it was cut off) gets no release when the new set is recorded,
// and its copy, kept once it is fenced, would stay for good. A peer back
// from a partition is released by every owner whose set it is not in:
// the old owner learns it is superseded, and keeps nothing.
/// Node 1 creates `name` and makes generations 1-3 durable; it is cut
/// off, and node 2 loads the segment (generation 3) and makes generation
/// 4 durable. Returns node 1's handle and node 2's load; node 1 stays cut
/// off.
std::pair<Segment*, OpenResult> move_away_from_cut_off_owner(Cluster& cl, const std::string& name) {
  Segment* old_handle = test::must(cl.node(1).create(name, 64 * 1024));
  commit_durable(cl.node(1), old_handle, 3);
  cl.isolate(1, true);
  EXPECT_TRUE(eventually([&] { return !peer_alive(cl.node(2), 1) && !peer_alive(cl.node(3), 1); }));
  auto moved = test::must(cl.node(2).load(name));
  EXPECT_EQ(moved.generation, 3u);
  commit_durable(cl.node(2), moved.segment, 4);
  return {old_handle, moved};
}

TEST(Durability, AnOldOwnerBackFromAPartitionIsReleasedAndKeepsNothing) {
  Cluster cl(4, config(2));
  const auto [old_handle, moved] = move_away_from_cut_off_owner(cl, "cut");
  const auto set = replica_set(cl.node(2), moved.segment);
  ASSERT_EQ(std::find(set.begin(), set.end(), 1), set.end()) << "node 1 was cut off: not in the new set";
  EXPECT_FALSE(test::must(cl.node(1).status(old_handle)).fenced) << "node 1 has heard nothing yet";

  cl.isolate(1, false);
  ASSERT_TRUE(eventually([&] { return test::must(cl.node(1).status(old_handle)).fenced; })) << cl.events();
  EXPECT_TRUE(test::has_event(cl.node(1), "fenced")) << cl.events();
  EXPECT_FALSE(cl.node(1).read_replica("cut")) << "node 1 kept a copy nobody will release";
  EXPECT_EQ(cl.node(1).stats().fenced_copies_kept, 0u) << cl.events();
  auto refused = cl.node(1).commit(old_handle);
  EXPECT_FALSE(refused) << "a fenced owner committed";
}

// A release is one control frame: when the one an old owner back from a
// partition was sent got lost, and a commit fenced it instead, it kept its
// last snapshot as a copy for good (older than the new set: no load takes
// it). The owner releases every live peer outside its set again now and
// then (release_again_ns: 4 s here), and the copy goes.
TEST(Durability, AKeptCopyGoesWhenTheReleaseWasLost) {
  Cluster cl(4, config(2));
  Segment* const old_handle = move_away_from_cut_off_owner(cl, "lost-release").first;

  std::atomic<bool> lose{true};
  std::atomic<int> lost{0};
  loopback::Faults f;  // (not partitioned: node 1 is back)
  f.drop_if = [&](std::span<const std::byte> head) {
    wire::Frame frame;
    if (!lose.load() || wire::decode(head, frame, false) != wire::DecodeError::kNone) return false;
    if (frame.type != wire::MsgType::kSetRecord || (frame.flags & wire::kFlagRelease) == 0) return false;
    ++lost;
    return true;
  };
  for (int n : {2, 3, 4}) cl.wire(1, n).set_faults(f);
  ASSERT_TRUE(eventually([&] { return lost.load() > 0; })) << "node 2 released node 1 on its return" << cl.events();
  // Its next commit reaches its old replicas, which refuse the old epoch:
  // fenced, and with no release heard it keeps its snapshot.
  (void)cl.node(1).commit(old_handle);
  ASSERT_TRUE(eventually([&] { return test::must(cl.node(1).status(old_handle)).fenced; })) << cl.events();
  ASSERT_TRUE(eventually([&] { return cl.node(1).stats().fenced_copies_kept == 1; })) << cl.events();
  EXPECT_TRUE(cl.node(1).read_replica("lost-release"));
  lose.store(false);
  EXPECT_TRUE(eventually([&] { return !cl.node(1).read_replica("lost-release"); }, 20s))
      << "the kept copy was never released" << cl.events();
  auto again = test::must(cl.node(3).load("lost-release"));
  EXPECT_EQ(again.generation, 4u) << "the release took nothing the set needed";
}

// Bug 5: a two-node cluster split by a partition: each side is quorate
// (two_node), but only the tie-breaker (node 1) creates new names.
TEST(Durability, ATwoNodeSplitHasOneCreator) {
  EngineConfig c = config(1);
  Cluster cl(2, c);
  cl.isolate(1, true);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(1), 2) && !peer_alive(cl.node(2), 1); }));
  ASSERT_TRUE(cl.node(2).view().quorate);
  auto on2 = cl.node(2).open("split", 4096);
  ASSERT_FALSE(on2) << "node 2 created a name while split from the tie-breaker";
  EXPECT_EQ(on2.error().code, Errc::kUnavailable);
  auto on1 = cl.node(1).open("split", 4096);
  ASSERT_TRUE(test::ok(on1));
  EXPECT_EQ(on1->outcome, OpenOutcome::kCreated);
  cl.isolate(1, false);
  ASSERT_TRUE(eventually([&] { return cl.node(2).view().members.size() == 2 && cl.node(2).view().agreed; }));
  auto later = cl.node(2).open("split", 4096);
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().code, Errc::kExists);
}

// Both nodes of a two-node cluster that see each other create one name at
// the same moment: at most one gets it.
TEST(Durability, TwoNodesCreatingOneNameAtOnceMakeOneOwner) {
  Cluster cl(2, config(1));
  for (int round = 0; round < 6; ++round) {
    const std::string name = "race" + std::to_string(round);
    Result<Segment*> r1 = fail(Errc::kInternal, ""), r2 = fail(Errc::kInternal, "");
    std::thread t1([&] { r1 = cl.node(1).create(name, 4096); });
    std::thread t2([&] { r2 = cl.node(2).create(name, 4096); });
    t1.join();
    t2.join();
    EXPECT_FALSE(r1 && r2) << "two owners of " << name;
  }
}

// The owner dies and one replica of a set of two restarts empty: the other
// still holds every durable generation, and one acceptance of a set of two
// is enough (R + W > |S|), so the segment loads instead of wedging.
TEST(Durability, ASetOfTwoWithOneMemberRestartedEmptyStillLoads) {
  Cluster cl(4, config(2));
  Segment* seg = test::must(cl.node(1).create("amnesia", 32 * 1024));
  commit_durable(cl.node(1), seg, 4);
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, 4, 2, 10s)));
  const auto set = replica_set(cl.node(1), seg);
  cl.kill(1);
  cl.kill(set[0]);
  cl.restart(set[0]);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(set[1]), set[0]) && !peer_alive(cl.node(set[1]), 1); }));
  auto r = cl.node(set[0]).load("amnesia");
  ASSERT_TRUE(test::ok(r)) << cl.events();
  EXPECT_EQ(r->generation, 4u);
  EXPECT_TRUE(equals_generation(cl.node(set[0]), r->segment, 4));
}

// Failed loads do not raise the owner epoch without bound: a node retrying
// a claim it won at some replicas claims the same epoch again.
TEST(Durability, RepeatedFailedLoadsKeepTheEpochBounded) {
  EngineConfig c = config(3);
  Cluster cl(5, c);
  Segment* seg = test::must(cl.node(1).create("bounded", 16 * 1024));
  commit_durable(cl.node(1), seg, 2);
  ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, 2, 3, 10s)));
  const auto set = replica_set(cl.node(1), seg);
  const int a = set[0], b = set[1], d = set[2];
  cl.kill(1);
  // The loader reaches one of the three replicas (itself): two must accept.
  cl.wire(a, b).set_partitioned(true);
  cl.wire(a, d).set_partitioned(true);
  ASSERT_TRUE(eventually([&] { return !peer_alive(cl.node(a), 1) && !peer_alive(cl.node(a), b); }));
  for (int i = 0; i < 4; ++i) {
    auto r = cl.node(a).load("bounded");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::kUnavailable) << r.error().to_string();
  }
  cl.wire(a, b).set_partitioned(false);
  cl.wire(a, d).set_partitioned(false);
  ASSERT_TRUE(eventually([&] { return peer_alive(cl.node(a), b) && peer_alive(cl.node(a), d); }));
  auto r = cl.node(a).load("bounded");
  ASSERT_TRUE(test::ok(r)) << cl.events();
  EXPECT_EQ(r->generation, 2u);
  EXPECT_EQ(test::must(cl.node(a).status(r->segment)).epoch, 2u) << "failed claims raised the epoch" << cl.events();
}

}  // namespace
}  // namespace baton

namespace baton {
namespace {

// The calls this issue added refuse bad input with a clear error.
TEST(DurabilityApi, NewCallsRefuseBadInput) {
  Cluster cl(2, config(1));
  Engine& e = cl.node(1);
  auto bogus = e.reopen(reinterpret_cast<Segment*>(0x1234));
  ASSERT_FALSE(bogus);
  EXPECT_EQ(bogus.error().code, Errc::kInvalidArgument);
  auto none = e.reopen(nullptr);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, Errc::kInvalidArgument);
  auto bad_name = e.record("has space");
  ASSERT_FALSE(bad_name);
  EXPECT_EQ(bad_name.error().code, Errc::kInvalidArgument);
  auto missing = e.record("never-created");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::kNotFound);
  EXPECT_FALSE(e.poll()) << "a real engine's worker polls; poll() is for simulations only";
  // A created segment's record names its set.
  auto seg = test::must(e.create("recorded", 4096));
  (void)seg;
  auto rec = test::must(e.record("recorded"));
  EXPECT_EQ(rec.epoch, 1u);
  EXPECT_EQ(rec.owner, 1u);
  EXPECT_EQ(rec.set, std::vector<uint16_t>{2});
}

TEST(DurabilityApi, SimulationHooksMustBeComplete) {
  auto hooks = std::make_shared<SimulationHooks>();
  hooks->now = [] { return uint64_t{1}; };  // no step
  EngineConfig c;
  c.simulation = hooks;
  auto e = Engine::start(c, {});
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, Errc::kInvalidArgument);
  hooks->step = [] {};
  c.global_dir = "/tmp";
  auto g = Engine::start(c, {});
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code, Errc::kInvalidArgument) << "global storage has a thread of its own";
}

}  // namespace
}  // namespace baton
