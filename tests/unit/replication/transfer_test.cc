// Sender/assembler pair driven by hand: windows, acks, loss, reordering,
// duplication, and a generation that never publishes torn.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <vector>

#include "common/crc32c.h"
#include "replication/replica_store.h"
#include "replication/transfer.h"

namespace baton {
namespace {

struct Source {
  std::vector<std::byte> data;
  std::vector<uint32_t> crcs;
  uint32_t gen_crc = 0;
  uint32_t chunk_size;
  Source(size_t n, uint32_t cs, uint8_t seed) : data(n), chunk_size(cs) {
    std::mt19937 rng(seed);
    for (auto& b : data) b = std::byte(static_cast<uint8_t>(rng()));
    uint32_t count = wire::chunk_count_for(n, cs);
    for (uint32_t i = 0; i < count; ++i)
      crcs.push_back(crc32c(data.data() + uint64_t{i} * cs, wire::chunk_len(n, cs, i)));
    gen_crc = wire::generation_crc(crcs);
  }
  SendSource src(uint64_t gen) const { return {data.data(), data.size(), chunk_size, crcs, gen_crc, gen}; }
  /// A copy with each of `chunks` (whole ones) filled with `v`.
  Source with(const std::vector<uint32_t>& chunks, uint8_t v) const {
    Source g = *this;
    for (uint32_t c : chunks) {
      std::fill_n(g.data.begin() + uint64_t{c} * chunk_size, chunk_size, std::byte{v});
      g.crcs[c] = crc32c(g.data.data() + uint64_t{c} * chunk_size, chunk_size);
    }
    g.gen_crc = wire::generation_crc(g.crcs);
    return g;
  }
  wire::Frame frame(uint64_t gen, uint32_t i) const {
    wire::Frame f;
    f.type = wire::MsgType::kData;
    f.name = "seg";
    f.seg_id = wire::segment_id("seg");
    f.src = 1;
    f.epoch = 1;
    f.generation = gen;
    f.total_len = data.size();
    f.chunk_size = chunk_size;
    f.chunk_count = wire::chunk_count_for(data.size(), chunk_size);
    f.chunk_index = i;
    f.gen_crc = gen_crc;
    f.flags = wire::kFlagGenCrc;
    f.payload = {data.data() + uint64_t{i} * chunk_size, wire::chunk_len(data.size(), chunk_size, i)};
    f.payload_crc = crcs[i];
    return f;
  }
};

TEST(ChunkBitmap, NextClear) {
  ChunkBitmap b;
  b.reset(130);
  EXPECT_EQ(b.next_clear(0), 0u);
  for (uint32_t i = 0; i < 100; ++i) b.set(i);
  EXPECT_EQ(b.next_clear(0), 100u);
  for (uint32_t i = 100; i < 130; ++i) b.set(i);
  EXPECT_EQ(b.next_clear(0), 130u);
  EXPECT_EQ(b.next_clear(200), 130u);
}

TEST(ChunkSender, RespectsWindowAndCompletesOnAcks) {
  Source s(100 * 1024, 1024, 1);
  ChunkSender tx;
  SenderTuning t;
  t.window = 8;
  tx.start(s.src(1), t, 0);
  uint32_t idx[32];
  uint16_t n = tx.plan(0, idx, 32);
  EXPECT_EQ(n, 8);  // window
  tx.sent(idx, n, 0);
  EXPECT_EQ(tx.plan(1, idx, 32), 0);  // window full, no timeout yet
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.generation = 1;
  ack.chunk_index = 4;  // 0..3 arrived
  EXPECT_TRUE(tx.on_ack(ack, 2));
  EXPECT_EQ(tx.plan(2, idx, 32), 4);
  ack.flags = wire::kFlagComplete;
  EXPECT_TRUE(tx.on_ack(ack, 3));
  EXPECT_TRUE(tx.complete());
}

TEST(ChunkSender, RetransmitsOnlyHolesAfterTimeout) {
  Source s(16 * 1024, 1024, 2);
  ChunkSender tx;
  SenderTuning t;
  t.window = 16;
  t.rto_min_ns = 1000;
  tx.start(s.src(1), t, 0);
  uint32_t idx[32];
  uint16_t n = tx.plan(0, idx, 32);
  ASSERT_EQ(n, 16);
  tx.sent(idx, n, 0);
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.generation = 1;
  ack.chunk_index = 2;           // 0,1 received
  ack.sack = (1ull << 1) | (1ull << 5);  // 3 and 7 too
  tx.on_ack(ack, 10);
  n = tx.plan(10 + 1000, idx, 32);
  std::vector<uint32_t> got(idx, idx + n);
  std::vector<uint32_t> want = {2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15};
  EXPECT_EQ(got, want);
  tx.sent(idx, n, 1010);
  EXPECT_EQ(tx.retransmits(), want.size());
}

// Drives a sender and a replica store through a lossy, reordering,
// duplicating channel; checks that no generation is ever published torn.
TEST(ReplicaStore, NeverPublishesTornUnderFaults) {
  std::mt19937 rng(7);
  const uint32_t cs = 1024;
  Source g1(50 * cs + 100, cs, 11), g2(50 * cs + 100, cs, 12);
  std::unique_ptr<ReplicaStore> store;
  for (auto [src, gen] : {std::pair{&g1, 1ull}, std::pair{&g2, 2ull}}) {
    ChunkSender tx;
    SenderTuning t;
    t.window = 16;
    t.rto_min_ns = 5;
    tx.start(src->src(gen), t, 0);
    std::vector<wire::Frame> in_flight;
    uint64_t now = 0;
    while (!tx.complete() && now < 100000) {
      ++now;
      uint32_t idx[8];
      uint16_t n = tx.plan(now, idx, 8);
      tx.sent(idx, n, now);
      for (uint16_t i = 0; i < n; ++i) {
        if (rng() % 5 == 0) continue;  // 20% loss
        in_flight.push_back(src->frame(gen, idx[i]));
        if (rng() % 10 == 0) in_flight.push_back(src->frame(gen, idx[i]));  // duplicate
      }
      std::shuffle(in_flight.begin(), in_flight.end(), rng);  // reorder
      size_t deliver = in_flight.size() / 2 + 1;
      for (size_t i = 0; i < deliver && !in_flight.empty(); ++i) {
        wire::Frame f = in_flight.back();
        in_flight.pop_back();
        if (!store) store = std::move(*ReplicaStore::create(f, 1, -1));
        auto r = store->accept(f);
        ASSERT_NE(r, ReplicaStore::Accept::kCorrupt);
        // Whatever is published is always a whole generation.
        if (auto* latest = store->latest()) {
          const Source& want = latest->generation == 1 ? g1 : g2;
          ASSERT_TRUE(std::equal(want.data.begin(), want.data.end(), latest->mem.data()))
              << "torn generation " << latest->generation;
        }
        wire::Frame ack;
        store->fill_ack(ack);
        if (rng() % 5 != 0) tx.on_ack(ack, now);  // acks get lost too
      }
    }
    ASSERT_TRUE(tx.complete()) << "generation " << gen << " did not converge";
  }
  EXPECT_EQ(store->latest()->generation, 2u);
  EXPECT_EQ(store->generations(), (std::vector<uint64_t>{2, 1}));  // retain = 1
}

// Encodes a frame to bytes and decodes it the way the engine does: fields
// checked, payload CRC deferred to the copy.
struct WireFrame {
  std::vector<std::byte> bytes;
  wire::Frame f;
  explicit WireFrame(const wire::Frame& in) : bytes(wire::kMaxFrameSize) {
    bytes.resize(wire::encode(in, bytes));
    EXPECT_EQ(wire::decode(bytes, f, false), wire::DecodeError::kNone);
  }
};

TEST(ReplicaStore, StreamedGenerationCompletesOnlyOnceTheChecksumIsKnown) {
  const uint32_t cs = 512;
  Source s(4 * cs, cs, 9);
  std::unique_ptr<ReplicaStore> store;
  for (uint32_t i = 0; i < 4; ++i) {
    wire::Frame f = s.frame(1, i);
    if (i < 3) {  // snapshot still running: no checksum yet
      f.flags = 0;
      f.gen_crc = 0;
    }
    WireFrame w(f);
    if (!store) store = std::move(*ReplicaStore::create(w.f, 0, -1));
    auto r = store->accept(w.f);
    EXPECT_EQ(r, i < 3 ? ReplicaStore::Accept::kStored : ReplicaStore::Accept::kPublished) << i;
  }
  ASSERT_NE(store->latest(), nullptr);
  EXPECT_TRUE(std::equal(s.data.begin(), s.data.end(), store->latest()->mem.data()));
}

TEST(ReplicaStore, CorruptFrameNeitherLandsNorAbandonsTheGenerationInProgress) {
  const uint32_t cs = 512;
  Source g1(3 * cs, cs, 1), g2(3 * cs, cs, 2);
  WireFrame first(g1.frame(1, 0));
  auto store = std::move(*ReplicaStore::create(first.f, 0, -1));
  EXPECT_EQ(store->accept(first.f), ReplicaStore::Accept::kStored);
  // A corrupted frame that claims a newer generation must not move the store.
  WireFrame evil(g2.frame(2, 0));
  evil.bytes[evil.bytes.size() - 1] ^= std::byte{1};
  EXPECT_EQ(store->accept(evil.f), ReplicaStore::Accept::kBadFrame);
  // A corrupted chunk of the current generation does not count as received.
  WireFrame bad(g1.frame(1, 1));
  bad.bytes[bad.bytes.size() - 7] ^= std::byte{0x40};
  EXPECT_EQ(store->accept(bad.f), ReplicaStore::Accept::kBadFrame);
  wire::Frame ack;
  store->fill_ack(ack);
  EXPECT_EQ(ack.generation, 1u);
  EXPECT_EQ(ack.chunk_index, 1u);  // only chunk 0 held
  for (uint32_t i = 1; i < 3; ++i) {
    WireFrame w(g1.frame(1, i));
    store->accept(w.f);
  }
  ASSERT_NE(store->latest(), nullptr);
  EXPECT_EQ(store->latest()->generation, 1u);
  EXPECT_TRUE(std::equal(g1.data.begin(), g1.data.end(), store->latest()->mem.data()));
}

// A retransmission walk that acks finish early must not leave the sender
// unable to time out again (it once stalled a lossy transfer for good).
TEST(ChunkSender, TimesOutAgainAfterAWalkThatAcksCutShort) {
  Source s(8 * 1024, 1024, 6);
  ChunkSender tx;
  SenderTuning t;
  t.window = 8;
  t.rto_min_ns = 100;
  t.rto_max_ns = 100;
  tx.start(s.src(1), t, 0);
  uint32_t idx[8];
  tx.sent(idx, tx.plan(0, idx, 8), 0);  // chunks 0..7 out, all lost
  ASSERT_EQ(tx.plan(100, idx, 2), 2);   // timeout: resend 0 and 1 (room for two)
  tx.sent(idx, 2, 100);
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.generation = 1;
  ack.chunk_index = 0;
  ack.sack = 0xFE;  // 1..7 arrived; 0 lost again
  tx.on_ack(ack, 150);
  EXPECT_EQ(tx.plan(160, idx, 8), 0);  // the walk finds nothing more before the timeout
  ASSERT_EQ(tx.plan(400, idx, 8), 1);  // ... and the next timeout resends chunk 0
  EXPECT_EQ(idx[0], 0u);
}

// The retransmit timeout follows the round trip the acks show: a receiver
// that always answers 5 us after a send (a loaded peer, a full window
// ahead of the chunk) is not timed out at the 1 us floor, so nothing is
// resent while it is merely slow; one that goes silent is, after the
// measured timeout, and a resend's ack is not taken for a round trip.
TEST(ChunkSender, TheTimeoutFollowsTheMeasuredRoundTrip) {
  Source s(64 * 1024, 1024, 7);
  ChunkSender tx;
  SenderTuning t;
  t.window = 4;
  t.rto_min_ns = 1000;
  t.rto_max_ns = 1'000'000;
  tx.start(s.src(1), t, 0);
  EXPECT_EQ(tx.rto_ns(), 1000u) << "no round trip measured yet: the floor";
  uint32_t idx[8];
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.generation = 1;
  uint64_t now = 0;
  for (uint32_t acked = 4; acked <= 32; acked += 4) {  // four chunks a round, acked 5 us after they went
    ASSERT_EQ(tx.plan(now, idx, 8), 4);
    tx.sent(idx, 4, now);
    now += 5000;
    ack.chunk_index = acked;
    ASSERT_TRUE(tx.on_ack(ack, now));
  }
  EXPECT_EQ(tx.srtt_ns(), 5000u);
  EXPECT_GE(tx.rto_ns(), 5000u);
  ASSERT_EQ(tx.plan(now, idx, 8), 4);
  tx.sent(idx, 4, now);
  EXPECT_EQ(tx.plan(now + 3000, idx, 8), 0) << "resent within the measured round trip";
  EXPECT_EQ(tx.retransmits(), 0u);
  // Silence: the timeout fires, and the resends' late ack is no sample.
  const uint64_t fire = now + tx.rto_ns();
  ASSERT_EQ(tx.plan(fire, idx, 8), 4);
  tx.sent(idx, 4, fire);
  EXPECT_EQ(tx.retransmits(), 4u);
  ack.chunk_index = 36;
  ASSERT_TRUE(tx.on_ack(ack, fire + 900'000));
  EXPECT_EQ(tx.srtt_ns(), 5000u) << "an ack after a resend measured a round trip";
}

TEST(ChunkSender, ResendsTheLastChunkWhenAllAckedButNotComplete) {
  Source s(4 * 1024, 1024, 3);
  ChunkSender tx;
  SenderTuning t;
  t.rto_min_ns = 100;
  tx.start(s.src(1), t, 0);
  uint32_t idx[8];
  uint16_t n = tx.plan(0, idx, 8);
  tx.sent(idx, n, 0);
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.generation = 1;
  ack.chunk_index = 4;  // all held, no completion: the checksum frame was lost
  tx.on_ack(ack, 10);
  EXPECT_EQ(tx.plan(50, idx, 8), 0);  // not before the timeout
  ASSERT_EQ(tx.plan(200, idx, 8), 1);
  EXPECT_EQ(idx[0], 3u);
}

TEST(ChunkSender, SendsOnlyWhatTheSnapshotMadeReady) {
  Source s(8 * 1024, 1024, 4);
  std::atomic<uint32_t> ready{3};
  SendSource src = s.src(1);
  src.ready = &ready;
  ChunkSender tx;
  tx.start(src, SenderTuning{}, 0);
  uint32_t idx[16];
  EXPECT_EQ(tx.plan(0, idx, 16), 3);
  tx.sent(idx, 3, 0);
  EXPECT_FALSE(tx.has_unsent());
  ready = 8;
  EXPECT_TRUE(tx.has_unsent());
  EXPECT_EQ(tx.plan(0, idx, 16), 5);
}

TEST(ReplicaStore, RetentionKeepsNOlderGenerations) {
  const uint32_t cs = 512;
  std::unique_ptr<ReplicaStore> store;
  for (uint64_t gen = 1; gen <= 6; ++gen) {
    Source s(3 * cs, cs, static_cast<uint8_t>(gen));
    for (uint32_t i = 0; i < 3; ++i) {
      auto f = s.frame(gen, i);
      if (!store) store = std::move(*ReplicaStore::create(f, 2, -1));
      store->accept(f);
    }
  }
  EXPECT_EQ(store->generations(), (std::vector<uint64_t>{6, 5, 4}));
  EXPECT_EQ(store->find(3), nullptr);
}

TEST(ReplicaStore, GenerationChecksumMismatchIsNotPublished) {
  const uint32_t cs = 512;
  Source s(4 * cs, cs, 5);
  auto store = std::move(*ReplicaStore::create(s.frame(1, 0), 0, -1));
  for (uint32_t i = 0; i < 4; ++i) {
    auto f = s.frame(1, i);
    if (i == 3) f.payload_crc ^= 1;  // as if the sender lied about one chunk
    auto r = store->accept(f);
    if (i == 3) {
      EXPECT_EQ(r, ReplicaStore::Accept::kCorrupt);
    }
  }
  EXPECT_EQ(store->latest(), nullptr);
}

TEST(ReplicaStore, StaleGenerationIsAcknowledgedAsHeld) {
  const uint32_t cs = 512;
  Source s(cs, cs, 5);
  auto store = std::move(*ReplicaStore::create(s.frame(2, 0), 0, -1));
  auto g2 = s.frame(2, 0), g1 = s.frame(1, 0);
  EXPECT_EQ(store->accept(g2), ReplicaStore::Accept::kPublished);
  EXPECT_EQ(store->accept(g1), ReplicaStore::Accept::kStale);
  wire::Frame ack;
  store->fill_ack(ack);
  EXPECT_EQ(ack.generation, 2u);
  EXPECT_TRUE(ack.flags & wire::kFlagComplete);
}

wire::Frame delta_frame(const Source& s, uint64_t gen, uint64_t base, uint32_t pos, uint32_t chunk, uint32_t count) {
  wire::Frame f = s.frame(gen, chunk);
  f.flags |= wire::kFlagDelta;
  f.delta_base = base;
  f.delta_chunk = chunk;
  f.chunk_index = pos;
  f.chunk_count = count;
  return f;
}

// A frame as node 2 sends it, owner at epoch 2 since it took over.
wire::Frame from_new_owner(wire::Frame f) {
  f.src = 2;
  f.epoch = 2;
  return f;
}

/// Runs the worker's poll between generations (advance_background with
/// `budget`) until the store publishes the delta it is building: the
/// number of polls it took, or 100 if it never did.
int polls_to_publish(ReplicaStore& store, uint64_t budget) {
  bool published = false;
  int polls = 0;
  while (!published && polls < 100) {
    ++polls;
    store.advance_background(budget, &published);
  }
  return published ? polls : 100;
}

// A takeover re-replicates the newest generation under the new owner's
// epoch. A replica that holds it already relabels it on the first frame
// (number, generation checksum and that chunk's bytes agree) instead of
// receiving it again; anything else is received as before.
TEST(ReplicaStore, TheSameGenerationUnderANewEpochIsRelabelledNotReceivedAgain) {
  const uint32_t cs = 512;
  Source s(4 * cs, cs, 21);
  // A hot standby's store: its ready copy stays ready through the relabel.
  ReplicaStore::Origin origin = ReplicaStore::Origin::of(s.frame(3, 0));
  origin.hot = true;
  auto store = std::move(*ReplicaStore::create(origin, 0, -1));
  for (uint32_t i = 0; i < 4; ++i) {
    auto f = s.frame(3, i);
    store->accept(f);
  }
  ASSERT_NE(store->latest(), nullptr);
  ASSERT_EQ(store->latest()->epoch, 1u);
  while (!store->advance_hot(UINT64_MAX)) {
  }
  ASSERT_EQ(store->hot_status().generation, 3u);

  store->adopt_epoch(2, 2);  // node 2 took over at epoch 2
  auto again = from_new_owner(s.frame(3, 2));
  again.sack = 0x55;
  EXPECT_EQ(store->accept(again), ReplicaStore::Accept::kRestamped);
  const ReplicaStore::Slot* held = store->latest();
  ASSERT_NE(held, nullptr);
  EXPECT_EQ(held->generation, 3u);
  EXPECT_EQ(held->epoch, 2u);
  EXPECT_EQ(held->set, 0x55u);
  EXPECT_TRUE(std::equal(s.data.begin(), s.data.end(), held->mem.data()));
  wire::Frame ack;
  store->fill_ack(ack);
  EXPECT_EQ(ack.generation, 3u);
  EXPECT_TRUE(ack.flags & wire::kFlagComplete);
  auto rest = from_new_owner(s.frame(3, 0));  // the rest of the sender's window
  EXPECT_EQ(store->accept(rest), ReplicaStore::Accept::kStale);
  // The next generation may be a delta on it: it is of this epoch now.
  Source next = s;
  next.data[cs] = std::byte{0x42};
  next.crcs[1] = crc32c(next.data.data() + cs, cs);
  next.gen_crc = wire::generation_crc(next.crcs);
  auto d = from_new_owner(delta_frame(next, 4, 3, 0, 1, 1));  // chunk 1 only
  EXPECT_EQ(store->accept(d), ReplicaStore::Accept::kPublished);
  ASSERT_EQ(store->latest()->generation, 4u);
  EXPECT_TRUE(std::equal(next.data.begin(), next.data.end(), store->latest()->mem.data()));
  // The hot copy followed the delta chunk by chunk and is handed over exact.
  EXPECT_EQ(store->hot_status().behind_bytes, cs) << "only the delta's chunk, not everything";
  auto hot = store->take_hot(4, 2);
  ASSERT_TRUE(hot.has_value());
  EXPECT_TRUE(std::equal(next.data.begin(), next.data.end(), hot->data()));
}

// A fenced owner's last snapshot becomes a replica store of its epoch
// (Engine's keep_fenced_copy): its two stages, mapped again, are the
// store's slots, so nothing is copied; the memory outlives the owner's
// mappings; the new owner's re-replication of the same generation is a
// relabel, and its next generation lands in the other stage's memory.
TEST(ReplicaStore, AFencedOwnersStagesBecomeItsSlotsWithoutACopy) {
  const uint32_t cs = 512;
  Source s(4 * cs, cs, 23);
  auto stage = std::move(*LocalStorage::create("seg@stage", s.data.size(), -1, LocalStorage::Pages::kSmall));
  auto other = std::move(*LocalStorage::create("seg@stage", s.data.size(), -1, LocalStorage::Pages::kSmall));
  std::copy(s.data.begin(), s.data.end(), stage.data());
  auto latest = stage.share();
  auto spare = other.share();
  ASSERT_TRUE(latest && spare);
  EXPECT_NE(latest->data(), stage.data()) << "a mapping of its own";
  ReplicaStore::Origin origin = ReplicaStore::Origin::of(s.frame(3, 0));
  origin.owner = 1;  // this node, the old owner
  auto store = ReplicaStore::from_owner(
      origin, ReplicaStore::Kept{std::move(*latest), std::move(*spare), 3, 1, 0x22, s.gen_crc, cs, s.crcs});
  ASSERT_NE(store->latest(), nullptr);
  EXPECT_EQ(store->latest()->generation, 3u);
  EXPECT_EQ(store->latest()->epoch, 1u);
  EXPECT_EQ(store->latest()->set, 0x22u);
  stage.data()[7] = std::byte{0x5a};
  EXPECT_EQ(store->latest()->mem.data()[7], std::byte{0x5a}) << "the same memory, not a copy";
  stage.data()[7] = s.data[7];
  stage = LocalStorage{};  // the fenced segment's mapping goes; the memory stays
  EXPECT_TRUE(std::equal(s.data.begin(), s.data.end(), store->latest()->mem.data()));

  store->adopt_epoch(2, 2);  // node 2 took over at epoch 2
  auto same = from_new_owner(s.frame(3, 1));
  EXPECT_EQ(store->accept(same), ReplicaStore::Accept::kRestamped);
  EXPECT_EQ(store->latest()->epoch, 2u);
  Source next = s.with({0, 2}, 0x77);
  for (uint32_t i = 0; i < 4; ++i) {
    auto f = from_new_owner(next.frame(4, i));
    const auto r = store->accept(f);
    EXPECT_EQ(r, i == 3 ? ReplicaStore::Accept::kPublished : ReplicaStore::Accept::kStored) << i;
  }
  ASSERT_EQ(store->latest()->generation, 4u);
  EXPECT_TRUE(std::equal(next.data.begin(), next.data.end(), store->latest()->mem.data()));
  EXPECT_TRUE(std::equal(next.data.begin(), next.data.end(), other.data()))
      << "built in the other stage's memory itself";
  EXPECT_EQ(store->generations(), std::vector<uint64_t>{4});
}

// A slot the copy ahead brought up to the newest generation is relabelled
// with it when a new owner's re-replication relabels the generation: the
// new owner's first delta then finds its shadow current (published with its
// one frame, not after a copy of the whole base a slice per poll), and a
// takeover here copies nothing into its first stage.
TEST(ReplicaStore, ARelabelledGenerationKeepsTheSlotBroughtUpToIt) {
  const uint32_t cs = 512, chunks = 8;
  const Source g3(chunks * cs, cs, 23);
  const Source g4 = g3.with({5}, 0x44), g5 = g4.with({2}, 0x55);
  for (const bool take_over : {false, true}) {
    SCOPED_TRACE(take_over ? "a takeover" : "the next delta");
    auto store = std::move(*ReplicaStore::create(g3.frame(3, 0), 0, -1));
    store->set_copy_slice(cs);
    for (uint32_t i = 0; i < chunks; ++i) store->accept(*std::make_unique<wire::Frame>(g3.frame(3, i)));
    auto d4 = delta_frame(g4, 4, 3, 0, 5, 1);
    // The first delta after a whole generation copies its base: a slice per poll.
    EXPECT_EQ(store->accept(d4), ReplicaStore::Accept::kCompleting);
    bool published = false;
    for (int polls = 0; !store->advance_background(cs, &published) || store->latest()->generation != 4; ++polls)
      ASSERT_LT(polls, 100);
    EXPECT_FALSE(store->behind()) << "the slot that held 3 holds 4 now";
    store->adopt_epoch(2, 2);
    auto again = from_new_owner(g4.frame(4, 0));
    ASSERT_EQ(store->accept(again), ReplicaStore::Accept::kRestamped);
    if (take_over) {
      auto p = store->promote(4, 2, ReplicaStore::Hand::kInPlace);
      ASSERT_TRUE(p);
      EXPECT_TRUE(p->stage_chained);
      EXPECT_EQ(p->fill_stage(p->app), 0u);
      EXPECT_TRUE(std::equal(g4.data.begin(), g4.data.end(), p->stage.data()));
      continue;
    }
    auto d5 = from_new_owner(delta_frame(g5, 5, 4, 0, 2, 1));
    EXPECT_EQ(store->accept(d5), ReplicaStore::Accept::kPublished) << "no base to copy first";
    EXPECT_TRUE(std::equal(g5.data.begin(), g5.data.end(), store->latest()->mem.data()));
  }
}

TEST(ReplicaStore, AnotherGenerationOfTheSameNumberIsReceivedWhole) {
  const uint32_t cs = 512;
  Source old_history(4 * cs, cs, 21), new_history(4 * cs, cs, 22);
  auto store = std::move(*ReplicaStore::create(old_history.frame(3, 0), 0, -1));
  for (uint32_t i = 0; i < 4; ++i) {
    auto f = old_history.frame(3, i);
    store->accept(f);
  }
  store->adopt_epoch(2, 2);
  // Same number, other bytes: a copy begins.
  auto other = from_new_owner(new_history.frame(3, 0));
  EXPECT_EQ(store->accept(other), ReplicaStore::Accept::kStored);
  // Same checksum claimed, but this chunk's bytes differ: received, not relabelled.
  auto liar = from_new_owner(new_history.frame(3, 1));
  liar.gen_crc = old_history.gen_crc;
  EXPECT_NE(liar.gen_crc, new_history.gen_crc);
  EXPECT_NE(store->accept(liar), ReplicaStore::Accept::kRestamped);
  // A corrupt frame of the held generation relabels nothing either.
  WireFrame corrupt(from_new_owner(old_history.frame(3, 2)));
  corrupt.bytes[corrupt.bytes.size() - 1] ^= std::byte{1};
  EXPECT_EQ(store->accept(corrupt.f), ReplicaStore::Accept::kBadFrame);
  EXPECT_EQ(store->latest()->epoch, 1u);
}

TEST(ChunkBitmap, SetRangeSetsExactlyTheRange) {
  ChunkBitmap b;
  b.reset(200);
  b.set_range(3, 3);
  b.set_range(60, 130);
  for (uint32_t i = 0; i < 200; ++i) EXPECT_EQ(b.test(i), i == 3 || (i >= 60 && i <= 130)) << i;
  b.clear_all();
  EXPECT_EQ(b.next_clear(0), 0u);
  b.set_all();
  EXPECT_EQ(b.next_clear(0), 200u);
}

// A delta frame: the generation `gen` of `s`, position `pos` carrying chunk
// `chunk`, over base `base`, with `count` chunks in all.
TEST(Delta, FramesRoundTripAndBadOnesAreRefused) {
  Source s(10 * 1024, 1024, 3);
  std::vector<std::byte> buf(wire::kMaxFrameSize);
  wire::Frame f = delta_frame(s, 5, 4, 1, 7, 2);
  const size_t n = wire::encode(f, buf);
  ASSERT_EQ(n, wire::kHeaderSize + 3 + wire::kDeltaExtSize + 1024);
  wire::Frame g;
  ASSERT_EQ(wire::decode({buf.data(), n}, g), wire::DecodeError::kNone);
  EXPECT_EQ(g.delta_base, 4u);
  EXPECT_EQ(g.delta_chunk, 7u);
  EXPECT_EQ(g.chunk(), 7u);
  EXPECT_EQ(g.chunk_index, 1u);
  EXPECT_EQ(g.payload_crc, s.crcs[7]);
  auto refused = [&](wire::Frame bad) {
    std::vector<std::byte> b(wire::kMaxFrameSize);
    const size_t m = wire::encode(bad, b);
    wire::Frame out;
    return m == 0 || wire::decode({b.data(), m}, out) != wire::DecodeError::kNone;
  };
  EXPECT_TRUE(refused(delta_frame(s, 5, 5, 0, 1, 1))) << "base not older";
  EXPECT_TRUE(refused(delta_frame(s, 5, 0, 0, 1, 1))) << "no base";
  EXPECT_TRUE(refused(delta_frame(s, 5, 4, 2, 1, 2))) << "position past the count";
  EXPECT_TRUE(refused(delta_frame(s, 5, 4, 0, 1, 11))) << "more chunks than the segment has";
  wire::Frame wrong_len = delta_frame(s, 5, 4, 0, 9, 2);
  wrong_len.delta_chunk = 10;  // past the last chunk
  EXPECT_TRUE(refused(wrong_len));
  wire::Frame fetch = delta_frame(s, 5, 4, 0, 1, 2);
  fetch.type = wire::MsgType::kFetchData;
  EXPECT_TRUE(refused(fetch)) << "fetches are never deltas";
  // The extension's reserved word must be zero.
  std::vector<std::byte> b(buf.begin(), buf.begin() + n);
  b[wire::kHeaderSize + 3 + 12] = std::byte{1};
  EXPECT_NE(wire::decode(b, g), wire::DecodeError::kNone);
}

TEST(Delta, AStoreBuildsAGenerationFromItsBaseAndRefusesAnotherBase) {
  constexpr uint32_t kCs = 1024;
  Source g1(16 * kCs, kCs, 1);
  Source g2 = g1;  // generation 2: chunks 3 and 9 changed
  for (uint32_t c : {3u, 9u}) {
    for (uint32_t i = 0; i < kCs; ++i) g2.data[c * kCs + i] = std::byte(static_cast<uint8_t>(i * 7 + c));
    g2.crcs[c] = crc32c(g2.data.data() + uint64_t{c} * kCs, kCs);
  }
  g2.gen_crc = wire::generation_crc(g2.crcs);
  auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
  // A delta on a base the store does not hold: it asks for the whole.
  wire::Frame early = delta_frame(g2, 2, 1, 0, 3, 2);
  EXPECT_EQ(store->accept(early), ReplicaStore::Accept::kNeedFull);
  for (uint32_t i = 0; i < 16; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_NE(store->latest(), nullptr);
  ASSERT_EQ(store->latest()->generation, 1u);
  wire::Frame a = delta_frame(g2, 2, 1, 0, 3, 2), b = delta_frame(g2, 2, 1, 1, 9, 2);
  EXPECT_EQ(store->accept(a), ReplicaStore::Accept::kStored);
  EXPECT_EQ(store->accept(b), ReplicaStore::Accept::kPublished);
  ASSERT_EQ(store->latest()->generation, 2u);
  EXPECT_TRUE(std::equal(g2.data.begin(), g2.data.end(), store->latest()->mem.data()));
  EXPECT_EQ(store->latest()->delta_of, 1u);
  // Generation 3 is a delta of 2 (one chunk changed back), built in the slot
  // that held 1: only generation 2's changes are copied into it first.
  Source g3 = g2;
  for (uint32_t i = 0; i < kCs; ++i) g3.data[5 * kCs + i] = std::byte{0x33};
  g3.crcs[5] = crc32c(g3.data.data() + 5 * kCs, kCs);
  g3.gen_crc = wire::generation_crc(g3.crcs);
  wire::Frame c = delta_frame(g3, 3, 2, 0, 5, 1);
  EXPECT_EQ(store->accept(c), ReplicaStore::Accept::kPublished);
  EXPECT_TRUE(std::equal(g3.data.begin(), g3.data.end(), store->latest()->mem.data()));
  // A delta whose base content differs from what the sender had: the
  // generation checksum catches it, and the store asks for the whole.
  Source g4 = g3;
  g4.crcs[0] ^= 1;  // the sender's view of chunk 0 differs from the store's
  g4.gen_crc = wire::generation_crc(g4.crcs);
  wire::Frame d = delta_frame(g4, 4, 3, 0, 5, 1);
  EXPECT_EQ(store->accept(d), ReplicaStore::Accept::kNeedFull);
  EXPECT_EQ(store->latest()->generation, 3u);
}

// A delta whose shadow must first become a copy of the whole base (nothing
// to chain from: a fresh store), on a segment of several preparation
// slices: no frame is dropped meanwhile, chunks that arrive ahead of the
// copy are not overwritten by it, and three frames copy three slices, all
// of it, so the last one publishes. (Fewer frames than slices: the poll
// copies the rest, ADeltaCompleteBeforeItsBaseIsCopiedIsPublishedByThePoll.)
TEST(Delta, AShadowPreparedFromTheWholeBaseKeepsEveryFrame) {
  constexpr uint32_t kCs = 64 << 10;
  constexpr uint32_t kChunks = 144;  // 9 MiB: three slices of ReplicaStore::kPrepareSlice
  static_assert(uint64_t{kChunks} * kCs > 2 * ReplicaStore::kPrepareSlice);
  Source g1(uint64_t{kChunks} * kCs, kCs, 4);
  auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);
  // Chunk 100 arrives before the copy reaches it, 2 after, 140 last.
  const Source g2 = g1.with({100, 2, 140}, 0x22);
  const uint32_t order[] = {100, 2, 140};
  for (uint32_t pos = 0; pos < 3; ++pos) {
    wire::Frame f = delta_frame(g2, 2, 1, pos, order[pos], 3);
    EXPECT_EQ(store->accept(f), pos < 2 ? ReplicaStore::Accept::kStored : ReplicaStore::Accept::kPublished) << pos;
  }
  ASSERT_EQ(store->latest()->generation, 2u);
  EXPECT_TRUE(std::equal(g2.data.begin(), g2.data.end(), store->latest()->mem.data()));
  // One frame: the shadow (the slot that held 1) chains to the base, so
  // only 2's chunks are copied, and it is published with the frame.
  const Source g3 = g2.with({143}, 0x33);
  wire::Frame one = delta_frame(g3, 3, 2, 0, 143, 1);
  EXPECT_EQ(store->accept(one), ReplicaStore::Accept::kPublished);
  EXPECT_TRUE(std::equal(g3.data.begin(), g3.data.end(), store->latest()->mem.data()));
  // A delta of every chunk copies nothing of the base.
  std::vector<uint32_t> all(kChunks);
  for (uint32_t c = 0; c < kChunks; ++c) all[c] = c;
  const Source g4 = g3.with(all, 0x44);
  for (uint32_t c = 0; c < kChunks; ++c) {
    wire::Frame f = delta_frame(g4, 4, 3, c, c, kChunks);
    EXPECT_EQ(store->accept(f), c + 1 < kChunks ? ReplicaStore::Accept::kStored : ReplicaStore::Accept::kPublished);
  }
  EXPECT_TRUE(std::equal(g4.data.begin(), g4.data.end(), store->latest()->mem.data()));
}

// The frames of one poll share one slice for copying their delta's base
// (the worker's budget): a burst of 47 frames copies at most that much
// between them, where each used to copy a slice of its own (32 frames, 128
// MiB in one poll, 130-260 ms on this VM: live peers suspected). The rest
// is copied a slice per poll, and the delta is exact.
TEST(Delta, TheFramesOfOnePollCopyOneSliceOfTheBaseBetweenThem) {
  constexpr uint32_t kCs = 64 << 10, kChunks = 144;  // 9 MiB
  constexpr uint64_t kBudget = 1 << 20;              // 16 chunks a poll
  Source g1(uint64_t{kChunks} * kCs, kCs, 6);
  auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);
  std::vector<uint32_t> chunks;
  for (uint32_t c = 3; c < kChunks; c += 3) chunks.push_back(c);  // 47 chunks, spread over the base
  const Source g2 = g1.with(chunks, 0x2A);
  const auto n = static_cast<uint32_t>(chunks.size());
  uint64_t budget = kBudget;  // one poll's
  for (uint32_t pos = 0; pos < n; ++pos) {
    wire::Frame f = delta_frame(g2, 2, 1, pos, chunks[pos], n);
    EXPECT_EQ(store->accept(f, budget), pos + 1 < n ? ReplicaStore::Accept::kStored : ReplicaStore::Accept::kCompleting)
        << pos;
  }
  EXPECT_EQ(budget, 0u) << "the burst used the poll's slice";
  EXPECT_TRUE(store->preparing()) << "and no more of the base: 8 of 9 MiB are left";
  const int polls = polls_to_publish(*store, kBudget);
  ASSERT_LT(polls, 100) << "never published";
  EXPECT_GE(polls, 7) << "a slice per poll";
  ASSERT_EQ(store->latest()->generation, 2u);
  EXPECT_TRUE(std::equal(g2.data.begin(), g2.data.end(), store->latest()->mem.data()));
}

// The poll copies a delta's base while its frames are still coming
// (preparing()), not only once the last one is in: frames that arrive
// behind the copy are laid over it, frames ahead of it are kept from it,
// and the store stays behind until the delta is published.
TEST(Delta, ThePollCopiesTheBaseWhileTheFramesAreStillComing) {
  constexpr uint32_t kCs = 1024, kChunks = 64;
  Source g1(uint64_t{kChunks} * kCs, kCs, 12);
  auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);
  const std::vector<uint32_t> chunks = {50, 5, 60, 10, 33};  // in the order they arrive
  const Source g2 = g1.with(chunks, 0x3C);
  const auto n = static_cast<uint32_t>(chunks.size());
  auto frame = [&](uint32_t pos) { return delta_frame(g2, 2, 1, pos, chunks[pos], n); };
  uint64_t none = 0;  // a poll whose frames may copy nothing
  wire::Frame f0 = frame(0);
  EXPECT_EQ(store->accept(f0, none), ReplicaStore::Accept::kStored);
  ASSERT_TRUE(store->preparing());
  EXPECT_TRUE(store->behind());
  bool published = false;
  for (int poll = 0; poll < 20; ++poll) {  // chunks 0..19 copied: 5 and 10 are behind the copy now
    EXPECT_FALSE(store->advance_background(kCs, &published)) << "still preparing";
    EXPECT_FALSE(published);
  }
  for (uint32_t pos = 1; pos + 1 < n; ++pos) {
    wire::Frame f = frame(pos);
    EXPECT_EQ(store->accept(f, none), ReplicaStore::Accept::kStored) << pos;
  }
  EXPECT_FALSE(store->advance_background(kCs, &published));
  wire::Frame last = frame(n - 1);
  EXPECT_EQ(store->accept(last, none), ReplicaStore::Accept::kCompleting);
  EXPECT_TRUE(store->behind());
  EXPECT_EQ(polls_to_publish(*store, kCs), 64 - 21) << "a chunk per poll, the rest of the base";
  ASSERT_EQ(store->latest()->generation, 2u);
  EXPECT_TRUE(std::equal(g2.data.begin(), g2.data.end(), store->latest()->mem.data()));
}

// A store's background copying draws on one budget (the engine's poll
// shares one among all its stores): a delta's base first, then what is
// left for the hot copy (a chunk at least, so it never waits for the
// base), where each used to copy a budget of its own.
TEST(Delta, ABaseAndAHotCopyShareOneBudget) {
  constexpr uint32_t kCs = 1024, kChunks = 64;
  constexpr uint64_t kBudget = 8 * kCs;
  Source g1(uint64_t{kChunks} * kCs, kCs, 14);
  ReplicaStore::Origin origin = ReplicaStore::Origin::of(g1.frame(1, 0));
  origin.hot = true;
  auto store = std::move(*ReplicaStore::create(origin, 1, -1));
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);
  ASSERT_EQ(store->hot_status().behind_bytes, uint64_t{kChunks} * kCs);
  const std::vector<uint32_t> chunks = {7, 40};
  const Source g2 = g1.with(chunks, 0x5A);
  uint64_t none = 0;
  wire::Frame f0 = delta_frame(g2, 2, 1, 0, chunks[0], 2);
  ASSERT_EQ(store->accept(f0, none), ReplicaStore::Accept::kStored);
  ASSERT_TRUE(store->preparing());
  uint64_t budget = kBudget;
  bool published = false;
  EXPECT_FALSE(store->advance_within(budget, &published));
  EXPECT_EQ(budget, 0u) << "the base took it all";
  EXPECT_TRUE(store->preparing());
  EXPECT_EQ(store->hot_status().behind_bytes, uint64_t{kChunks - 1} * kCs) << "and the hot copy one chunk";
  // Once the base is copied, the hot copy has the budget.
  while (store->preparing()) {
    budget = kBudget;
    store->advance_within(budget, &published);
  }
  const uint64_t behind = store->hot_status().behind_bytes;
  budget = kBudget;
  store->advance_within(budget, &published);
  EXPECT_EQ(budget, 0u);
  EXPECT_EQ(store->hot_status().behind_bytes, behind - kBudget);
  wire::Frame f1 = delta_frame(g2, 2, 1, 1, chunks[1], 2);
  store->accept(f1, none);
  ASSERT_EQ(store->latest()->generation, 2u);
  EXPECT_TRUE(std::equal(g2.data.begin(), g2.data.end(), store->latest()->mem.data()));
}

// A delta complete before its base is copied (copy_slice of one chunk, as
// the simulator runs two nodes in three) is not published, nor acked as
// published, until the copy is done a slice per poll; a frame sent again
// meanwhile is a duplicate; a newer generation that arrives meanwhile
// takes the shadow over and is exact; a delta waiting when the segment
// moves to a new owner epoch is not published at all.
TEST(Delta, ADeltaCompleteBeforeItsBaseIsCopiedIsPublishedByThePoll) {
  constexpr uint32_t kCs = 1024, kChunks = 32;
  Source g1(uint64_t{kChunks} * kCs, kCs, 9);
  auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
  store->set_copy_slice(kCs);
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);

  // Two frames: each copies one chunk of the base; 30 are left.
  const Source g2 = g1.with({20, 3}, 0x22);
  wire::Frame a = delta_frame(g2, 2, 1, 0, 20, 2), b = delta_frame(g2, 2, 1, 1, 3, 2);
  EXPECT_EQ(store->accept(a), ReplicaStore::Accept::kStored);
  EXPECT_EQ(store->accept(b), ReplicaStore::Accept::kCompleting);
  EXPECT_EQ(store->latest()->generation, 1u) << "not published before its base is copied";
  wire::Frame ack;
  store->fill_ack(ack);
  EXPECT_EQ(ack.generation, 2u);
  EXPECT_EQ(ack.flags & wire::kFlagComplete, 0) << "its sender must not count it held yet";
  EXPECT_EQ(ack.chunk_index, 2u) << "both positions in";
  wire::Frame again = delta_frame(g2, 2, 1, 1, 3, 2);
  EXPECT_EQ(store->accept(again), ReplicaStore::Accept::kDuplicate);
  const int polls = polls_to_publish(*store, kCs);
  ASSERT_LT(polls, 100) << "never published";
  EXPECT_GE(polls, 20) << "a chunk per poll (and one per frame)";
  ASSERT_EQ(store->latest()->generation, 2u);
  EXPECT_TRUE(std::equal(g2.data.begin(), g2.data.end(), store->latest()->mem.data()));
  EXPECT_EQ(store->latest()->delta_of, 1u);
  ack = wire::Frame{};
  store->fill_ack(ack);
  EXPECT_EQ(ack.generation, 2u);
  EXPECT_NE(ack.flags & wire::kFlagComplete, 0);
  bool published = false;
  while (!store->advance_background(kCs, &published)) EXPECT_FALSE(published);

  // Generation 3 (a whole one: the shadow chain is broken) then a delta of
  // it, complete before its base is copied, superseded by generation 5, a
  // delta of 3 as well, before the poll finishes it.
  const Source g3 = g2.with({0, 31}, 0x33);
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g3.frame(3, i)));
  ASSERT_EQ(store->latest()->generation, 3u);
  const Source g4 = g3.with({7}, 0x44);
  wire::Frame d4 = delta_frame(g4, 4, 3, 0, 7, 1);
  EXPECT_EQ(store->accept(d4), ReplicaStore::Accept::kCompleting);
  store->advance_background(kCs, &published);
  EXPECT_FALSE(published);
  const Source g5 = g3.with({9, 10}, 0x55);
  wire::Frame d5a = delta_frame(g5, 5, 3, 0, 9, 2), d5b = delta_frame(g5, 5, 3, 1, 10, 2);
  EXPECT_EQ(store->accept(d5a), ReplicaStore::Accept::kStored);
  EXPECT_EQ(store->accept(d5b), ReplicaStore::Accept::kCompleting);
  ASSERT_LT(polls_to_publish(*store, kCs), 100) << "never published";
  ASSERT_EQ(store->latest()->generation, 5u) << "4 was never published";
  EXPECT_TRUE(std::equal(g5.data.begin(), g5.data.end(), store->latest()->mem.data()))
      << "no chunk of 4 leaked into 5";
  while (!store->advance_background(kCs, &published)) EXPECT_FALSE(published);

  // A delta waiting for its base when a new owner takes the segment over:
  // the wait ends, and the poll publishes nothing.
  const Source g6 = g5.with({1}, 0x66), g7 = g6.with({2}, 0x77);
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(g6.frame(6, i)));
  ASSERT_EQ(store->latest()->generation, 6u);
  wire::Frame d7 = delta_frame(g7, 7, 6, 0, 2, 1);
  EXPECT_EQ(store->accept(d7), ReplicaStore::Accept::kCompleting);
  EXPECT_TRUE(store->behind());
  store->adopt_epoch(2, 5);
  EXPECT_FALSE(store->behind());
  EXPECT_TRUE(store->advance_background(kCs, &published));
  EXPECT_FALSE(published);
  EXPECT_EQ(store->latest()->generation, 6u);
}

// A hot standby's copy (S16) follows 300 generations, deltas and whole
// ones mixed, advanced by random slices (sometimes not at all before the
// next generation): whenever it says it is current it equals the newest
// generation byte for byte, and taking it over hands exactly that.
TEST(HotStandby, TheReadyCopyFollowsEveryGenerationAndIsHandedOverExact) {
  constexpr uint32_t kCs = 1024, kChunks = 40;
  std::mt19937 rng(7);
  Source cur(kChunks * kCs, kCs, 1);
  ReplicaStore::Origin origin = ReplicaStore::Origin::of(cur.frame(1, 0));
  origin.hot = true;
  auto store = std::move(*ReplicaStore::create(origin, 1, -1));
  EXPECT_TRUE(store->hot_status().on);
  EXPECT_EQ(store->hot_status().generation, 0u);
  for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(cur.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);
  EXPECT_TRUE(store->hot_behind());
  EXPECT_EQ(store->hot_status().behind_bytes, uint64_t{kChunks} * kCs);
  uint32_t deltas = 0;
  for (uint64_t gen = 2; gen <= 300; ++gen) {
    // Advance by a random slice (0: not at all) before the next generation.
    if (const uint64_t budget = rng() % 4 * 5 * kCs; budget != 0) store->advance_hot(budget);
    Source next = cur;
    std::vector<uint32_t> changed;
    for (uint32_t k = rng() % 4 + 1; k > 0; --k) changed.push_back(rng() % kChunks);
    std::sort(changed.begin(), changed.end());
    changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
    for (uint32_t c : changed) {
      for (uint32_t i = 0; i < kCs; ++i) next.data[c * kCs + i] = std::byte(static_cast<uint8_t>(rng()));
      next.crcs[c] = crc32c(next.data.data() + uint64_t{c} * kCs, kCs);
    }
    next.gen_crc = wire::generation_crc(next.crcs);
    if (rng() % 5 != 0) {  // a delta of the previous generation
      for (uint32_t pos = 0; pos < changed.size(); ++pos) {
        wire::Frame f = delta_frame(next, gen, gen - 1, pos, changed[pos], static_cast<uint32_t>(changed.size()));
        store->accept(f);
      }
      ++deltas;
    } else {  // whole
      for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(next.frame(gen, i)));
    }
    ASSERT_EQ(store->latest()->generation, gen);
    cur = next;
    if (rng() % 3 == 0) {
      while (!store->advance_hot(rng() % 3 * kCs)) {
      }
      const auto st = store->hot_status();
      ASSERT_EQ(st.generation, gen);
      ASSERT_EQ(st.behind_bytes, 0u);
    }
  }
  EXPECT_GT(deltas, 150u);
  // The wrong generation or epoch is not handed over; the right one is,
  // brought current first, and the store keeps no copy after.
  EXPECT_FALSE(store->take_hot(299, 1).has_value());
  EXPECT_FALSE(store->take_hot(300, 2).has_value());
  auto mem = store->take_hot(300, 1);
  ASSERT_TRUE(mem.has_value());
  ASSERT_EQ(mem->size(), cur.data.size());
  EXPECT_TRUE(std::equal(cur.data.begin(), cur.data.end(), mem->data()));
  EXPECT_FALSE(store->hot_status().on);
  EXPECT_FALSE(store->take_hot(300, 1).has_value());
}

// A store that is not a standby keeps no copy and hands none over.
TEST(HotStandby, AnOrdinaryReplicaKeepsNoCopy) {
  Source s(4 * 1024, 1024, 2);
  auto store = std::move(*ReplicaStore::create(s.frame(1, 0), 0, -1));
  for (uint32_t i = 0; i < 4; ++i) store->accept(*std::make_unique<wire::Frame>(s.frame(1, i)));
  EXPECT_FALSE(store->hot_status().on);
  EXPECT_FALSE(store->hot_behind());
  EXPECT_FALSE(store->take_hot(1, 1).has_value());
}

TEST(Delta, TheSenderSendsOnlyTheDeltaAndIgnoresAcksOfTheOtherKind) {
  Source s(16 * 1024, 1024, 4);
  const std::vector<uint32_t> chunks = {2, 5, 11};
  SendSource src = s.src(7);
  src.delta = chunks;
  src.base = 6;
  std::atomic<uint32_t> ready{6};  // chunks 0..5 snapshotted: positions 0 and 1
  src.ready = &ready;
  ChunkSender tx;
  tx.start(src, SenderTuning{}, 0);
  uint32_t idx[8];
  uint16_t n = tx.plan(0, idx, 8);
  ASSERT_EQ(n, 2);
  EXPECT_EQ(tx.chunk_at(idx[0]), 2u);
  EXPECT_EQ(tx.chunk_at(idx[1]), 5u);
  tx.sent(idx, n, 0);
  ready = 16;
  n = tx.plan(1, idx, 8);
  ASSERT_EQ(n, 1);
  EXPECT_EQ(tx.chunk_at(idx[0]), 11u);
  tx.sent(idx, n, 1);
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  ack.generation = 7;
  ack.chunk_index = 3;
  EXPECT_FALSE(tx.on_ack(ack, 2)) << "an ack of whole-generation chunks says nothing of a delta";
  ack.flags = wire::kFlagDelta;
  EXPECT_TRUE(tx.on_ack(ack, 2));
  EXPECT_EQ(tx.acked(), 3u);
}

TEST(Delta, ASenderIsDoneWhenTheReplicaPublishedTheDelta) {
  // The receiving end as a replica runs it: the ack after the last frame
  // comes from the store, which has published the generation and says so
  // without saying it was a delta. The sender must stop there, not resend
  // its last frame until the next generation.
  constexpr uint32_t kCs = 1024;
  Source g1(16 * kCs, kCs, 1);
  Source g2 = g1;
  for (uint32_t c : {3u, 9u}) {
    for (uint32_t i = 0; i < kCs; ++i) g2.data[c * kCs + i] = std::byte(static_cast<uint8_t>(i * 5 + c));
    g2.crcs[c] = crc32c(g2.data.data() + uint64_t{c} * kCs, kCs);
  }
  g2.gen_crc = wire::generation_crc(g2.crcs);
  auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
  for (uint32_t i = 0; i < 16; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
  ASSERT_EQ(store->latest()->generation, 1u);
  const std::vector<uint32_t> chunks = {3, 9};
  SendSource src = g2.src(2);
  src.delta = chunks;
  src.base = 1;
  ChunkSender tx;
  tx.start(src, SenderTuning{}, 0);
  uint32_t idx[8];
  const uint16_t n = tx.plan(0, idx, 8);
  ASSERT_EQ(n, 2);
  tx.sent(idx, n, 0);
  for (uint16_t i = 0; i < n; ++i) {
    wire::Frame f = delta_frame(g2, 2, 1, idx[i], tx.chunk_at(idx[i]), n);
    store->accept(f);
  }
  ASSERT_EQ(store->latest()->generation, 2u);
  wire::Frame ack;
  ack.type = wire::MsgType::kAck;
  store->fill_ack(ack);
  EXPECT_TRUE(tx.on_ack(ack, 1));
  EXPECT_TRUE(tx.complete());
  EXPECT_FALSE(tx.in_flight());
  EXPECT_EQ(tx.plan(1'000'000'000, idx, 8), 0) << "nothing is resent once the replica published it";
}

// After a delta is published, the slot the next delta takes is brought up
// to it between generations (ReplicaStore::advance_background); the next
// delta is exact whether that copy finished, stopped half way, or never ran.
TEST(Delta, TheNextShadowIsBroughtUpToDateBetweenGenerations) {
  constexpr uint32_t kCs = 1024;
  auto change = [](Source g, std::initializer_list<uint32_t> chunks, uint8_t v) {
    for (uint32_t c : chunks) {
      for (uint32_t i = 0; i < kCs; ++i) g.data[c * kCs + i] = std::byte(static_cast<uint8_t>(v + i));
      g.crcs[c] = crc32c(g.data.data() + uint64_t{c} * kCs, kCs);
    }
    g.gen_crc = wire::generation_crc(g.crcs);
    return g;
  };
  for (const uint64_t budget : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 20}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    Source g1(16 * kCs, kCs, 1);
    auto store = std::move(*ReplicaStore::create(g1.frame(1, 0), 0, -1));
    for (uint32_t i = 0; i < 16; ++i) store->accept(*std::make_unique<wire::Frame>(g1.frame(1, i)));
    EXPECT_FALSE(store->behind()) << "a whole generation leaves nothing to copy ahead";
    // Generation 2 changes chunks 2, 4 and 6; 3 changes 4 and 7; 4 changes 2.
    Source g2 = change(g1, {2, 4, 6}, 20), g3 = change(g2, {4, 7}, 30), g4 = change(g3, {2}, 40);
    uint32_t pos = 0;
    for (uint32_t c : {2u, 4u, 6u}) {
      wire::Frame f = delta_frame(g2, 2, 1, pos++, c, 3);
      store->accept(f);
    }
    ASSERT_EQ(store->latest()->generation, 2u);
    EXPECT_TRUE(store->behind()) << "the slot that held 1 lacks 2's chunks";
    bool published = false;
    if (budget != 0) store->advance_background(budget, &published);
    EXPECT_FALSE(published);
    if (budget > 3 * kCs) {
      EXPECT_FALSE(store->behind());
    }
    pos = 0;
    for (uint32_t c : {4u, 7u}) {
      wire::Frame f = delta_frame(g3, 3, 2, pos++, c, 2);
      store->accept(f);
    }
    ASSERT_EQ(store->latest()->generation, 3u);
    EXPECT_TRUE(std::equal(g3.data.begin(), g3.data.end(), store->latest()->mem.data()));
    while (budget != 0 && !store->advance_background(budget, &published)) {
    }
    EXPECT_FALSE(published);
    wire::Frame f = delta_frame(g4, 4, 3, 0, 2, 1);
    EXPECT_EQ(store->accept(f), ReplicaStore::Accept::kPublished);
    EXPECT_TRUE(std::equal(g4.data.begin(), g4.data.end(), store->latest()->mem.data()));
  }
}

// A load that takes its own replica over in place (Hand::kInPlace) takes
// for the first stage the free slot closest to the generation. Over 300
// random histories (deltas and whole generations, retain 0-2, base copies
// in slices, the copy ahead advanced by random slices or barely), the
// stage that fill_stage() fills equals the generation byte for byte. When
// the newest generation came as a delta, the slot that held its base is
// free (nothing pins a slot here), so the stage is chained and copies at
// most that delta's chunks; a slot the copy ahead finished needs no copy.
TEST(Delta, ALoadInPlaceTakesTheSlotClosestToTheGenerationAsItsStage) {
  constexpr uint32_t kCs = 1024, kChunks = 24, kSize = kChunks * kCs;
  std::mt19937 rng(11);
  int chained = 0, current = 0, whole = 0;
  for (uint32_t trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    Source cur(kSize, kCs, static_cast<uint8_t>(trial));
    auto store = std::move(*ReplicaStore::create(cur.frame(1, 0), trial % 3, -1));
    store->set_copy_slice(uint64_t{1 + rng() % 8} * kCs);
    for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(cur.frame(1, i)));
    const uint64_t last = 1 + rng() % 8;
    uint64_t last_delta_bytes = 0;  // of the newest generation, if a delta (0: whole)
    for (uint64_t gen = 2; gen <= last; ++gen) {
      const auto v = static_cast<uint8_t>(gen * 37 + trial);
      if (rng() % 5 == 0) {
        cur = cur.with({static_cast<uint32_t>(rng() % kChunks)}, v);
        for (uint32_t i = 0; i < kChunks; ++i) store->accept(*std::make_unique<wire::Frame>(cur.frame(gen, i)));
        last_delta_bytes = 0;
      } else {
        std::vector<uint32_t> chunks;
        for (uint32_t n = 1 + rng() % 4; chunks.size() < n;)
          if (const uint32_t c = rng() % kChunks; std::find(chunks.begin(), chunks.end(), c) == chunks.end())
            chunks.push_back(c);
        const Source next = cur.with(chunks, v);
        for (uint32_t pos = 0; pos < chunks.size(); ++pos) {
          wire::Frame f = delta_frame(next, gen, gen - 1, pos, chunks[pos], static_cast<uint32_t>(chunks.size()));
          store->accept(f);
        }
        bool published = store->latest()->generation == gen;
        for (int polls = 0; !published; ++polls) {
          ASSERT_LT(polls, 100) << "generation " << gen << " never published";
          store->advance_background(kCs, &published);
        }
        cur = next;
        last_delta_bytes = uint64_t{kCs} * chunks.size();
      }
      ASSERT_EQ(store->latest()->generation, gen);
      // The worker's copy ahead between generations: a random slice, or none
      // (beyond the chunk a delta's publishing poll may have copied).
      bool published = false;
      if (const uint64_t budget = rng() % 3 * 2 * kCs; budget != 0) store->advance_background(budget, &published);
    }
    auto p = store->promote(last, 1, ReplicaStore::Hand::kInPlace);
    ASSERT_TRUE(p);
    ASSERT_TRUE(std::equal(cur.data.begin(), cur.data.end(), p->app.data())) << "the application's memory";
    const uint64_t copied = p->fill_stage(p->app);
    EXPECT_TRUE(std::equal(cur.data.begin(), cur.data.end(), p->stage.data())) << "the first stage";
    EXPECT_EQ(p->chunk_crcs, cur.crcs);
    if (last_delta_bytes != 0) {
      EXPECT_TRUE(p->stage_chained) << "the slot that held the delta's base chains to it";
      EXPECT_LE(copied, last_delta_bytes) << "at most what the last delta changed";
    }
    if (p->stage_chained) {
      ++chained;
      current += copied == 0;
      EXPECT_LT(copied, kSize);
    } else {
      ++whole;
      EXPECT_EQ(copied, kSize);
    }
  }
  EXPECT_GT(chained, 0);
  EXPECT_GT(current, 0);
  EXPECT_GT(whole, 0);
}

}  // namespace
}  // namespace baton
