// Wire format: round trip, and rejection of each class of malformed frame.

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "common/crc32c.h"
#include "protocol/wire.h"

namespace baton::wire {
namespace {

std::vector<std::byte> bytes_of(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
  return v;
}

Frame data_frame(std::span<const std::byte> payload) {
  Frame f;
  f.type = MsgType::kData;
  f.src = 1;
  f.dst = 2;
  f.name = "orders";
  f.seg_id = segment_id(f.name);
  f.epoch = 3;
  f.generation = 7;
  f.total_len = 10000;
  f.chunk_size = 4096;
  f.chunk_count = 3;
  f.chunk_index = 2;
  f.gen_crc = 0xabcdef01;
  f.payload = payload;
  return f;
}

std::vector<std::byte> encoded(const Frame& f) {
  std::vector<std::byte> out(kMaxFrameSize);
  size_t n = encode(f, out);
  out.resize(n);
  return out;
}

// Rewrites the checksum after a deliberate mutation, so decode reaches the
// field check under test instead of stopping at the CRC.
void reseal(std::vector<std::byte>& frame) {
  uint8_t name_len = static_cast<uint8_t>(frame[76]);
  size_t head = std::min<size_t>(kHeaderSize + name_len, frame.size());
  std::memset(frame.data() + 12, 0, 4);
  uint32_t state = crc32c_extend(crc32c_init(), frame.data() + head, frame.size() - head);
  uint32_t crc = crc32c_final(crc32c_extend(state, frame.data(), head));
  std::memcpy(frame.data() + 12, &crc, 4);
}

template <typename T>
void poke(std::vector<std::byte>& frame, size_t off, T v) {
  std::memcpy(frame.data() + off, &v, sizeof v);
  reseal(frame);
}

TEST(Crc32c, KnownVector) {
  // RFC 3720 B.4: 32 bytes of zeros.
  std::vector<std::byte> zeros(32);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  const char* text = "123456789";
  EXPECT_EQ(crc32c(text, 9), 0xE3069283u);
}

// Bit-at-a-time CRC32C (reflected polynomial 0x82F63B78): slow, obviously right.
uint32_t reference_crc32c(const std::byte* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= static_cast<uint8_t>(p[i]);
    for (int b = 0; b < 8; ++b) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

TEST(Crc32c, MatchesReferenceAtEveryShape) {
  auto data = bytes_of(20000, 5);
  std::vector<std::byte> dst(20000);
  // Below, at and around the folding threshold and the three-stream block
  // boundaries, odd offsets too.
  for (size_t len : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{255}, size_t{256}, size_t{257}, size_t{1535},
                     size_t{1536}, size_t{1537},
                     size_t{3072}, size_t{4099}, size_t{16384}, size_t{19990}})
    for (size_t off : {size_t{0}, size_t{3}}) {
      const uint32_t want = reference_crc32c(data.data() + off, len);
      EXPECT_EQ(crc32c(data.data() + off, len), want) << len << "+" << off;
      EXPECT_EQ(crc32c_final(copy_crc32c(dst.data() + off, data.data() + off, len, crc32c_init())), want)
          << len << "+" << off;
      EXPECT_EQ(std::memcmp(dst.data() + off, data.data() + off, len), 0);
      // Extending in two pieces equals one pass.
      const size_t cut = len / 3;
      uint32_t st = crc32c_extend(crc32c_init(), data.data() + off, cut);
      EXPECT_EQ(crc32c_final(crc32c_extend(st, data.data() + off + cut, len - cut)), want) << len;
    }
}

TEST(Crc32c, StreamingCopyFromAMisalignedSource) {
  // From 8 KiB up, an 8-byte aligned destination takes non-temporal stores;
  // the source may sit anywhere.
  auto data = bytes_of(40000, 11);
  std::vector<uint64_t> room(40000 / 8 + 2);
  auto* dst = reinterpret_cast<std::byte*>(room.data());
  for (size_t len : {size_t{8192}, size_t{8199}, size_t{16384}, size_t{33333}})
    for (size_t soff : {size_t{0}, size_t{1}, size_t{5}}) {
      std::memset(dst, 0, room.size() * 8);
      const uint32_t want = reference_crc32c(data.data() + soff, len);
      EXPECT_EQ(crc32c_final(copy_crc32c(dst, data.data() + soff, len, crc32c_init())), want) << len << "+" << soff;
      EXPECT_EQ(std::memcmp(dst, data.data() + soff, len), 0) << len << "+" << soff;
      EXPECT_EQ(dst[len], std::byte{0}) << "wrote past the end";
    }
}

TEST(Crc32c, CopyMatchesSeparatePasses) {
  auto src = bytes_of(12345, 9);
  std::vector<std::byte> dst(src.size());
  uint32_t c = crc32c_final(copy_crc32c(dst.data(), src.data(), src.size(), crc32c_init()));
  EXPECT_EQ(c, crc32c(src.data(), src.size()));
  EXPECT_EQ(dst, src);
}

TEST(Wire, DataRoundTrip) {
  auto payload = bytes_of(10000 - 8192, 1);
  Frame in = data_frame(payload);
  auto buf = encoded(in);
  ASSERT_EQ(buf.size(), kHeaderSize + 6 + payload.size());
  Frame out;
  ASSERT_EQ(decode(buf, out), DecodeError::kNone);
  EXPECT_EQ(out.type, MsgType::kData);
  EXPECT_EQ(out.src, 1);
  EXPECT_EQ(out.dst, 2);
  EXPECT_EQ(out.name, "orders");
  EXPECT_EQ(out.seg_id, segment_id("orders"));
  EXPECT_EQ(out.epoch, 3u);
  EXPECT_EQ(out.generation, 7u);
  EXPECT_EQ(out.chunk_index, 2u);
  EXPECT_EQ(out.gen_crc, 0xabcdef01u);
  ASSERT_EQ(out.payload.size(), payload.size());
  EXPECT_EQ(std::memcmp(out.payload.data(), payload.data(), payload.size()), 0);
  EXPECT_EQ(out.payload_crc, crc32c(payload.data(), payload.size()));
}

TEST(Wire, HeaderOnlyEncodingMatchesWholeFrame) {
  auto payload = bytes_of(4096, 3);
  Frame f = data_frame(payload);
  f.chunk_index = 0;
  auto whole = encoded(f);
  std::vector<std::byte> head(kHeaderSize + kMaxNameLen);
  uint32_t state = crc32c_extend(crc32c_init(), payload.data(), payload.size());
  size_t h = encode_header(f, state, static_cast<uint32_t>(payload.size()), head);
  ASSERT_EQ(h, kHeaderSize + 6);
  EXPECT_EQ(std::memcmp(whole.data(), head.data(), h), 0);
}

TEST(Wire, AckAndControlRoundTrip) {
  Frame ack;
  ack.type = MsgType::kAck;
  ack.src = 9;
  ack.dst = 4;
  ack.seg_id = 77;
  ack.generation = 5;
  ack.chunk_count = 100;
  ack.chunk_index = 40;
  ack.sack = 0x8000000000000005ull;
  ack.flags = kFlagComplete;
  Frame out;
  ASSERT_EQ(decode(encoded(ack), out), DecodeError::kNone);
  EXPECT_EQ(out.sack, ack.sack);
  EXPECT_EQ(out.chunk_index, 40u);
  EXPECT_EQ(out.flags, kFlagComplete);

  Frame err;
  err.type = MsgType::kError;
  err.code = static_cast<uint16_t>(ErrorCode::kStaleEpoch);
  err.epoch = 12;
  ASSERT_EQ(decode(encoded(err), out), DecodeError::kNone);
  EXPECT_EQ(out.epoch, 12u);
  // A refusal names the epoch of what it refuses (which claim or tombstone
  // it answers) and whether an owner above the tombstone refused it.
  err.flags = kFlagOwner;
  set_aux_epoch(err, 0x100000009ull);
  ASSERT_EQ(decode(encoded(err), out), DecodeError::kNone);
  EXPECT_EQ(aux_epoch(out), 0x100000009ull);
  EXPECT_EQ(out.flags, kFlagOwner);
  EXPECT_EQ(out.epoch, 12u);

  Frame hb;
  hb.type = MsgType::kHeartbeat;
  hb.src = 3;
  hb.generation = 77;  // sequence
  hb.epoch = 123456;   // incarnation
  ASSERT_EQ(decode(encoded(hb), out), DecodeError::kNone);
  EXPECT_EQ(out.type, MsgType::kHeartbeat);
  EXPECT_EQ(out.generation, 77u);
  hb.flags = kFlagComplete;  // heartbeats carry only QUORATE
  EXPECT_EQ(decode(encoded(hb), out), DecodeError::kBadField);
  hb.flags = kFlagQuorate;
  hb.seg_id = 0xfeedULL;  // view digest
  hb.total_len = 9;       // view id
  ASSERT_EQ(decode(encoded(hb), out), DecodeError::kNone);
  EXPECT_EQ(out.seg_id, 0xfeedULL);
  EXPECT_EQ(out.total_len, 9u);
}

TEST(Wire, NoteRoundTripAndRejects) {
  std::vector<std::byte> body(kMaxNote, std::byte{0x5a});
  Frame note;
  note.type = MsgType::kNote;
  note.src = 2;
  note.dst = 3;
  note.payload = body;
  Frame out;
  const auto bytes = encoded(note);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  EXPECT_EQ(out.type, MsgType::kNote);
  EXPECT_EQ(out.src, 2u);
  ASSERT_EQ(out.payload.size(), kMaxNote);
  EXPECT_TRUE(std::equal(body.begin(), body.end(), out.payload.begin()));
  // One byte more than a note carries; none; a name; any other field set.
  std::vector<std::byte> big(kMaxNote + 1);
  note.payload = big;
  EXPECT_EQ(decode(encoded(note), out), DecodeError::kBadLength);
  note.payload = {};
  EXPECT_EQ(decode(encoded(note), out), DecodeError::kBadLength);
  note.payload = body;
  note.generation = 1;
  EXPECT_EQ(decode(encoded(note), out), DecodeError::kBadField);
  note.generation = 0;
  note.flags = kFlagComplete;
  EXPECT_EQ(decode(encoded(note), out), DecodeError::kBadField);
  note.flags = 0;
  note.seg_id = 7;
  EXPECT_EQ(decode(encoded(note), out), DecodeError::kBadField);
}

// Records for a node that started: a question (no payload), and answers
// carrying whole, well-formed entries only.
TEST(Wire, RecordsFramesRoundTripAndRejects) {
  Frame out;
  Frame ask;
  ask.type = MsgType::kRecords;
  ask.flags = kFlagQuery;
  ask.src = 1;
  ask.dst = 2;
  ask.epoch = ~uint64_t{0} >> 1;  // the asker's incarnation, not an owner epoch
  ask.generation = 0x1234;        // from this segment id on
  ASSERT_EQ(decode(encoded(ask), out), DecodeError::kNone);
  EXPECT_EQ(out.generation, 0x1234u);
  ask.flags = kFlagQuery | kFlagComplete;
  EXPECT_EQ(decode(encoded(ask), out), DecodeError::kBadField);
  ask.flags = kFlagQuery | kFlagDeleted;
  EXPECT_EQ(decode(encoded(ask), out), DecodeError::kBadField);
  ask.flags = kFlagQuery;
  ask.seg_id = 5;
  EXPECT_EQ(decode(encoded(ask), out), DecodeError::kBadField);
  ask.seg_id = 0;
  std::vector<std::byte> one(4);
  ask.payload = one;  // a question carries nothing
  EXPECT_EQ(decode(encoded(ask), out), DecodeError::kBadLength);

  std::vector<std::byte> body(kMaxNote);
  size_t len = 0;
  const RecordEntry set{"seg-a", 3, 2, pack_nodes(std::vector<uint16_t>{2, 4}), 1, false};
  const RecordEntry tomb{"seg-b", 9, 1, 0, 3, true};
  len = put_record_entry(body, len, set);
  len = put_record_entry(body, len, tomb);
  ASSERT_EQ(len, 2 * kRecordEntryHead + 10);
  EXPECT_EQ(put_record_entry(body, len, RecordEntry{"bad name", 1, 1, 0, 1, false}), len);
  EXPECT_EQ(put_record_entry(body, len, RecordEntry{"seg-c", 1, 1, 7, 1, true}), len) << "a tombstone has no set";
  EXPECT_EQ(put_record_entry(std::span(body).first(len + 10), len, set), len) << "does not fit";
  Frame answer;
  answer.type = MsgType::kRecords;
  answer.flags = kFlagComplete;
  answer.payload = std::span(body).first(len);
  const auto bytes = encoded(answer);  // `out` views into it
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  std::vector<RecordEntry> got;
  std::vector<std::string> names;
  ASSERT_TRUE(parse_record_entries(out.payload, [&](const RecordEntry& e) {
    got.push_back(e);
    names.emplace_back(e.name);
  }));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(names[0], "seg-a");
  EXPECT_EQ(got[0].epoch, 3u);
  EXPECT_EQ(got[0].version, 2u);
  EXPECT_EQ(unpack_set(got[0].set)[1], 4u);
  EXPECT_EQ(got[0].owner, 1u);
  EXPECT_FALSE(got[0].deleted);
  EXPECT_EQ(names[1], "seg-b");
  EXPECT_TRUE(got[1].deleted);
  EXPECT_EQ(got[1].owner, 3u);
  // Anything short of whole, well-formed entries is refused as a whole,
  // before any entry is handed on.
  int calls = 0;
  auto count = [&](const RecordEntry&) { ++calls; };
  EXPECT_FALSE(parse_record_entries(std::span(body).first(len - 1), count)) << "cut short";
  std::vector<std::byte> bad(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(len));
  bad[kRecordEntryHead + 5 + 26] = std::byte{2};  // the second entry's flags
  EXPECT_FALSE(parse_record_entries(bad, count));
  bad = std::vector<std::byte>(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(len));
  bad[27] = std::byte{64};  // the first name's length, past the end
  EXPECT_FALSE(parse_record_entries(bad, count));
  bad = std::vector<std::byte>(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(len));
  bad[24] = std::byte{0};  // the first owner: none
  EXPECT_FALSE(parse_record_entries(bad, count));
  EXPECT_EQ(calls, 0);
  // An answer may be empty (nothing recorded), never larger than a note.
  answer.payload = {};
  EXPECT_EQ(decode(encoded(answer), out), DecodeError::kNone);
  std::vector<std::byte> big(kMaxNote + 1);
  answer.payload = big;
  EXPECT_EQ(decode(encoded(answer), out), DecodeError::kBadLength);
}

// Direct reads (issue #11): a request for a lent slot, the slot lent (its
// process, descriptor and inode), and the loader's done; each exactly so.
TEST(Wire, DirectReadFramesRoundTripAndRejects) {
  Frame out;
  Frame req;
  req.type = MsgType::kFetchRequest;
  req.name = "seg";
  req.seg_id = segment_id("seg");
  req.flags = kFlagDirect;
  ASSERT_EQ(decode(encoded(req), out), DecodeError::kNone);
  EXPECT_EQ(out.flags, kFlagDirect);
  req.flags = kFlagDirect | kFlagQuery;  // a query lends nothing
  EXPECT_EQ(decode(encoded(req), out), DecodeError::kBadField);

  Frame lent;
  lent.type = MsgType::kFetchMeta;
  lent.name = "seg";
  lent.seg_id = segment_id("seg");
  lent.flags = kFlagDirect | kFlagFound | kFlagGenCrc;
  lent.epoch = 3;
  lent.generation = 9;
  lent.total_len = 1 << 20;
  lent.chunk_size = 16384;
  lent.gen_crc = 0xabcdef01;
  set_direct(lent, 4242, 17, 0x123456789ull);
  ASSERT_EQ(decode(encoded(lent), out), DecodeError::kNone);
  EXPECT_EQ(direct_pid(out), 4242u);
  EXPECT_EQ(direct_fd(out), 17u);
  EXPECT_EQ(direct_inode(out), 0x123456789ull);
  EXPECT_EQ(out.gen_crc, 0xabcdef01u);
  auto rejects = [&](auto change, DecodeError want) {
    Frame bad = lent;
    change(bad);
    EXPECT_EQ(decode(encoded(bad), out), want);
  };
  rejects([](Frame& f) { f.flags &= ~kFlagGenCrc; }, DecodeError::kBadField);       // no checksum to check against
  rejects([](Frame& f) { f.flags |= kFlagRecord; }, DecodeError::kBadField);        // a record is a query's answer
  rejects([](Frame& f) { f.flags |= kFlagGranted; }, DecodeError::kBadField);
  rejects([](Frame& f) { f.generation = 0; }, DecodeError::kBadField);
  rejects([](Frame& f) { f.sack = 0; }, DecodeError::kBadField);                     // no inode
  rejects([](Frame& f) { f.chunk_index = 0; }, DecodeError::kBadField);              // no process
  rejects([](Frame& f) { f.chunk_index = 0x80000000u; }, DecodeError::kBadField);    // not a pid
  rejects([](Frame& f) { f.chunk_count = 0x80000000u; }, DecodeError::kBadField);    // not a descriptor
  rejects([](Frame& f) { f.total_len = 0; }, DecodeError::kOffsetOverflow);
  rejects([](Frame& f) { f.total_len = kMaxSegmentSize + 1; }, DecodeError::kOffsetOverflow);
  rejects([](Frame& f) { f.chunk_size = 100; }, DecodeError::kOffsetOverflow);

  Frame done;
  done.type = MsgType::kAck;
  done.seg_id = 5;
  done.generation = 9;
  done.flags = kFlagDirect | kFlagFetch | kFlagComplete;
  ASSERT_EQ(decode(encoded(done), out), DecodeError::kNone);
  done.flags = kFlagDirect | kFlagFetch;
  EXPECT_EQ(decode(encoded(done), out), DecodeError::kBadField);
  done.flags = kFlagDirect | kFlagComplete;
  EXPECT_EQ(decode(encoded(done), out), DecodeError::kBadField);

  // No other message says it.
  Frame hb;
  hb.type = MsgType::kHeartbeat;
  hb.flags = kFlagDirect;
  EXPECT_EQ(decode(encoded(hb), out), DecodeError::kBadField);
  Frame claim;
  claim.type = MsgType::kClaim;
  claim.name = "seg";
  claim.seg_id = segment_id("seg");
  claim.epoch = 2;
  claim.flags = kFlagDirect;
  EXPECT_EQ(decode(encoded(claim), out), DecodeError::kBadField);
}

TEST(Wire, ClaimAndSetRecordRoundTripAndRejects) {
  Frame claim;
  claim.type = MsgType::kClaim;
  claim.src = 3;
  claim.dst = 2;
  claim.name = "orders";
  claim.seg_id = segment_id("orders");
  claim.epoch = 5;
  Frame out;
  const auto claim_bytes = encoded(claim);  // `out` views into these bytes
  ASSERT_EQ(decode(claim_bytes, out), DecodeError::kNone);
  EXPECT_EQ(out.type, MsgType::kClaim);
  EXPECT_EQ(out.epoch, 5u);
  EXPECT_EQ(out.name, "orders");
  claim.epoch = 1;  // epoch 1 is the creator's: nobody claims it
  EXPECT_EQ(decode(encoded(claim), out), DecodeError::kBadField);
  claim.epoch = 5;
  claim.flags = kFlagQuery;
  EXPECT_EQ(decode(encoded(claim), out), DecodeError::kBadField);
  claim.flags = 0;
  claim.seg_id ^= 1;  // id not derived from the name
  EXPECT_EQ(decode(encoded(claim), out), DecodeError::kBadName);

  Frame rec;
  rec.type = MsgType::kSetRecord;
  rec.name = "orders";
  rec.seg_id = segment_id("orders");
  rec.epoch = 2;
  rec.generation = 3;  // version
  rec.sack = pack_set({4, 7, 0, 0});
  ASSERT_EQ(decode(encoded(rec), out), DecodeError::kNone);
  EXPECT_EQ(unpack_set(out.sack), (ReplicaSet{4, 7, 0, 0}));
  rec.flags = kFlagComplete;  // the ack
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kNone);
  rec.flags = kFlagRestart;  // a withdrawal
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kNone);
  rec.flags = kFlagGranted;
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);
  rec.flags = 0;
  rec.generation = 0;  // versions start at 1
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);
  rec.generation = 1;
  rec.epoch = 0;
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);
  rec.epoch = 4;
  rec.flags = kFlagRelease;  // a recorded set: non-members drop their copies
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kNone);
  rec.flags = kFlagRelease | kFlagComplete;  // never acknowledged
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);
  rec.flags = kFlagDeleted;  // a tombstone carries no set
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);
  rec.sack = 0;
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kNone);
  rec.flags = kFlagDeleted | kFlagComplete;  // its ack
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kNone);
  rec.flags = kFlagDeleted | kFlagRestart;
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);
  rec.flags = kFlagDeleted | kFlagRelease;
  EXPECT_EQ(decode(encoded(rec), out), DecodeError::kBadField);

  Frame meta;  // an answer carrying a record and a second epoch
  meta.type = MsgType::kFetchMeta;
  meta.name = "orders";
  meta.seg_id = segment_id("orders");
  meta.flags = kFlagFound | kFlagRecord;
  set_aux_epoch(meta, (uint64_t{7} << 32) | 9);
  ASSERT_EQ(decode(encoded(meta), out), DecodeError::kNone);
  EXPECT_EQ(aux_epoch(out), (uint64_t{7} << 32) | 9);
  RecordEntry got;
  EXPECT_FALSE(claim_record(out, got)) << "a query's answer carries its record in the header";
  std::vector<std::byte> body(64);  // a query's answer has no payload
  meta.payload = std::span<const std::byte>(body.data(), kRecordEntryHead + 6);
  EXPECT_EQ(decode(encoded(meta), out), DecodeError::kBadLength);
}

TEST(Wire, ClaimAnswersCarryTheAnswerersRecord) {
  Frame grant;  // granted with a copy, and the set record held there
  grant.type = MsgType::kFetchMeta;
  grant.src = 2;
  grant.dst = 3;
  grant.name = "orders";
  grant.seg_id = segment_id("orders");
  grant.epoch = 5;
  grant.generation = 12;
  grant.total_len = 4096;
  grant.sack = pack_set({2, 4, 0, 0});
  set_aux_epoch(grant, 4);
  grant.flags = kFlagGranted | kFlagFound | kFlagRecord;
  std::byte body[kRecordEntryHead + kMaxNameLen + 1];
  const RecordEntry rec{"orders", 4, 2, pack_set({2, 4, 6, 0}), 7, false};
  size_t len = put_record_entry(body, 0, rec);
  ASSERT_EQ(len, kRecordEntryHead + 6);
  grant.payload = std::span<const std::byte>(body, len);
  Frame out;
  auto bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  RecordEntry got;
  ASSERT_TRUE(claim_record(out, got));
  EXPECT_EQ(got.epoch, 4u);
  EXPECT_EQ(got.version, 2u);
  EXPECT_EQ(unpack_set(got.set), (ReplicaSet{2, 4, 6, 0}));
  EXPECT_EQ(got.owner, 7);
  EXPECT_FALSE(got.deleted);
  EXPECT_EQ(aux_epoch(out), 4u);

  // A promise from a node that holds no copy: no copy's fields.
  grant.flags = kFlagGranted | kFlagRecord;
  EXPECT_EQ(decode(encoded(grant), out), DecodeError::kBadField);
  grant.generation = grant.total_len = 0;
  set_aux_epoch(grant, 0);
  bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  ASSERT_TRUE(claim_record(out, got));
  // ... and without a record: no payload.
  grant.flags = kFlagGranted;
  grant.payload = {};
  bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  EXPECT_FALSE(claim_record(out, got));

  // A record flag and the payload go together.
  grant.flags = kFlagGranted | kFlagRecord;
  EXPECT_EQ(decode(encoded(grant), out), DecodeError::kBadLength);
  grant.flags = kFlagGranted;
  grant.payload = std::span<const std::byte>(body, len);
  EXPECT_EQ(decode(encoded(grant), out), DecodeError::kBadLength);
  // A grant is no tombstone and no owner's answer.
  grant.flags = kFlagGranted | kFlagRecord | kFlagDeleted;
  EXPECT_EQ(decode(encoded(grant), out), DecodeError::kBadField);
  grant.flags = kFlagGranted | kFlagRecord | kFlagOwner;
  EXPECT_EQ(decode(encoded(grant), out), DecodeError::kBadField);
  // The record must be of the frame's name, and exactly one entry.
  grant.flags = kFlagGranted | kFlagRecord;
  len = put_record_entry(body, 0, RecordEntry{"other", 4, 2, 0, 7, false});
  grant.payload = std::span<const std::byte>(body, len);
  bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  EXPECT_FALSE(claim_record(out, got)) << "another name's record";
  len = put_record_entry(body, 0, rec);
  grant.payload = std::span<const std::byte>(body, len + 1);
  bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  EXPECT_FALSE(claim_record(out, got)) << "a byte after the entry";
  body[26] = std::byte{2};  // flags: only bit 0 (a tombstone) is defined
  grant.payload = std::span<const std::byte>(body, len);
  bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  EXPECT_FALSE(claim_record(out, got));
  body[26] = std::byte{1};  // a tombstone with a set
  bytes = encoded(grant);
  ASSERT_EQ(decode(bytes, out), DecodeError::kNone);
  EXPECT_FALSE(claim_record(out, got));
  // Corrupted in flight: the checksum covers the record.
  len = put_record_entry(body, 0, rec);
  bytes = encoded(grant);
  bytes[bytes.size() - 3] ^= std::byte{1};
  EXPECT_EQ(decode(bytes, out), DecodeError::kChecksum);
}

class WireReject : public ::testing::Test {
 protected:
  std::vector<std::byte> payload = bytes_of(10000 - 8192, 1);
  std::vector<std::byte> good = encoded(data_frame(payload));
  DecodeError decode_it(const std::vector<std::byte>& b) {
    Frame f;
    return decode(b, f);
  }
};

TEST_F(WireReject, Truncated) {
  for (size_t n : {size_t{0}, size_t{1}, kHeaderSize - 1, good.size() - 1}) {
    std::vector<std::byte> b(good.begin(), good.begin() + static_cast<long>(n));
    EXPECT_EQ(decode_it(b), DecodeError::kTruncated) << n;
  }
}

TEST_F(WireReject, BadMagicAndVersion) {
  auto b = good;
  poke<uint16_t>(b, 0, 0x1234);
  EXPECT_EQ(decode_it(b), DecodeError::kBadMagic);
  for (uint8_t v : {uint8_t{kVersion - 1}, uint8_t{kVersion + 1}}) {  // 1: claims answered without records
    b = good;
    poke<uint8_t>(b, 2, v);
    EXPECT_EQ(decode_it(b), DecodeError::kBadVersion) << int(v);
  }
}

TEST_F(WireReject, UnknownType) {
  for (uint8_t t : {uint8_t{0}, uint8_t{kMaxMsgType + 1}, uint8_t{255}}) {
    auto b = good;
    poke<uint8_t>(b, 3, t);
    EXPECT_EQ(decode_it(b), DecodeError::kUnknownType) << int(t);
  }
}

TEST_F(WireReject, LengthPastTheEndOrInconsistent) {
  auto b = good;
  poke<uint32_t>(b, 8, static_cast<uint32_t>(good.size() + 100));  // claims more than there is
  EXPECT_EQ(decode_it(b), DecodeError::kTruncated);
  b = good;
  poke<uint32_t>(b, 8, 10);  // shorter than a header
  EXPECT_EQ(decode_it(b), DecodeError::kBadLength);
  b = good;
  b.push_back(std::byte{0});
  poke<uint32_t>(b, 8, static_cast<uint32_t>(b.size()));  // payload one byte longer than the chunk
  EXPECT_EQ(decode_it(b), DecodeError::kBadLength);
}

TEST_F(WireReject, PayloadOnControlFrame) {
  Frame ack;
  ack.type = MsgType::kAck;
  ack.generation = 1;
  auto b = encoded(ack);
  b.resize(b.size() + 16);
  poke<uint32_t>(b, 8, static_cast<uint32_t>(b.size()));
  EXPECT_EQ(decode_it(b), DecodeError::kBadLength);
}

TEST_F(WireReject, OffsetOverflow) {
  auto b = good;
  poke<uint32_t>(b, 48, 3);  // chunk index == count
  EXPECT_EQ(decode_it(b), DecodeError::kOffsetOverflow);
  b = good;
  poke<uint32_t>(b, 48, 0xFFFFFFFF);
  EXPECT_EQ(decode_it(b), DecodeError::kOffsetOverflow);
  b = good;
  poke<uint32_t>(b, 52, 99);  // count disagrees with total/chunk size
  EXPECT_EQ(decode_it(b), DecodeError::kOffsetOverflow);
  b = good;
  poke<uint64_t>(b, 40, ~uint64_t{0});  // total length beyond any segment
  EXPECT_EQ(decode_it(b), DecodeError::kOffsetOverflow);
  b = good;
  poke<uint32_t>(b, 56, 0);  // chunk size 0
  EXPECT_EQ(decode_it(b), DecodeError::kOffsetOverflow);
}

TEST_F(WireReject, BadName) {
  auto b = good;
  poke<uint8_t>(b, kHeaderSize, 0x07);  // non-printable
  EXPECT_EQ(decode_it(b), DecodeError::kBadName);
  b = good;
  poke<uint64_t>(b, 16, 42);  // id not derived from the name
  EXPECT_EQ(decode_it(b), DecodeError::kBadName);
  b = good;
  poke<uint8_t>(b, 76, 200);  // name longer than the limit
  EXPECT_EQ(decode_it(b), DecodeError::kBadName);
}

TEST_F(WireReject, BadFields) {
  auto b = good;
  poke<uint64_t>(b, 32, 0);  // generation 0
  EXPECT_EQ(decode_it(b), DecodeError::kBadField);
  b = good;
  poke<uint16_t>(b, 72, 0x8000);  // unknown flag
  EXPECT_EQ(decode_it(b), DecodeError::kBadField);
  b = good;
  poke<uint8_t>(b, 78, 1);  // reserved byte (found by fuzz_wire: decoded, then re-encoded differently)
  EXPECT_EQ(decode_it(b), DecodeError::kBadField);
  Frame err;
  err.type = MsgType::kError;
  err.code = 99;
  std::vector<std::byte> e(kMaxFrameSize);
  e.resize(encode(err, e));
  EXPECT_EQ(decode_it(e), DecodeError::kBadField);
}

TEST_F(WireReject, ChecksumMismatch) {
  // Any flipped bit, in header, name or payload, is caught.
  for (size_t off : {size_t{20}, kHeaderSize + 1, good.size() - 1}) {
    auto b = good;
    b[off] ^= std::byte{0x10};
    EXPECT_EQ(decode_it(b), DecodeError::kChecksum) << off;
  }
}

TEST(Wire, NameRules) {
  EXPECT_TRUE(valid_name("a"));
  EXPECT_TRUE(valid_name(std::string(63, 'x')));
  EXPECT_FALSE(valid_name(""));
  EXPECT_FALSE(valid_name(std::string(64, 'x')));
  EXPECT_FALSE(valid_name("has space"));
  EXPECT_FALSE(valid_name("tab\t"));
  EXPECT_FALSE(valid_name("\x80high"));
}

// Issue #9: a 1-byte chunk size made a receiver allocate 4 bytes of chunk
// CRCs per byte of segment; epochs near 2^64 made "one above the newest" wrap.
TEST_F(WireReject, TinyChunksAndHugeEpochs) {
  const std::vector<std::byte> one = bytes_of(1, 3);
  Frame f = data_frame(one);
  f.total_len = 3 << 20;
  f.chunk_size = 1;
  f.chunk_count = 3 << 20;
  f.chunk_index = 0;
  EXPECT_EQ(decode_it(encoded(f)), DecodeError::kOffsetOverflow);
  const std::vector<std::byte> floor = bytes_of(kMinChunkSize, 3);
  f = data_frame(floor);
  f.total_len = 4 * kMinChunkSize;
  f.chunk_size = kMinChunkSize;
  f.chunk_count = 4;
  f.chunk_index = 0;
  Frame out;
  EXPECT_EQ(decode(encoded(f), out), DecodeError::kNone);  // the floor itself is fine

  f = data_frame(payload);
  f.epoch = kMaxEpoch + 1;
  EXPECT_EQ(decode_it(encoded(f)), DecodeError::kBadField);
  Frame claim;
  claim.type = MsgType::kClaim;
  claim.name = "orders";
  claim.seg_id = segment_id("orders");
  claim.epoch = ~uint64_t{0};
  EXPECT_EQ(decode_it(encoded(claim)), DecodeError::kBadField);
  Frame meta;
  meta.type = MsgType::kFetchMeta;
  meta.name = "orders";
  meta.seg_id = segment_id("orders");
  meta.flags = kFlagGranted;
  meta.epoch = 5;
  set_aux_epoch(meta, ~uint64_t{0});
  EXPECT_EQ(decode_it(encoded(meta)), DecodeError::kBadField);
  Frame hb;  // a heartbeat's epoch field is an incarnation: any value
  hb.type = MsgType::kHeartbeat;
  hb.epoch = ~uint64_t{0};
  EXPECT_EQ(decode(encoded(hb), out), DecodeError::kNone);
}

}  // namespace
}  // namespace baton::wire
