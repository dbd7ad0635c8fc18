#include "protocol/wire.h"

#include <bit>
#include <cstring>

#include "common/crc32c.h"

namespace baton::wire {
namespace {

static_assert(std::endian::native == std::endian::little, "the wire is little-endian; add byte swaps");

template <typename T>
void put(std::byte* base, size_t off, T v) noexcept {
  std::memcpy(base + off, &v, sizeof v);
}
template <typename T>
T get(const std::byte* base, size_t off) noexcept {
  T v;
  std::memcpy(&v, base + off, sizeof v);
  return v;
}

bool has_name(MsgType t) noexcept {
  return t == MsgType::kData || t == MsgType::kFetchData || t == MsgType::kFetchRequest ||
         t == MsgType::kFetchMeta || t == MsgType::kClaim || t == MsgType::kSetRecord;
}
bool has_payload(MsgType t) noexcept {
  return t == MsgType::kData || t == MsgType::kFetchData || t == MsgType::kNote || t == MsgType::kRecords ||
         t == MsgType::kFetchMeta;  // a claim's answer: the answerer's set record (one RecordEntry)
}

constexpr uint16_t kKnownFlags =
    kFlagComplete | kFlagRestart | kFlagQuery | kFlagFound | kFlagFetch | kFlagOwner | kFlagGenCrc | kFlagGranted |
    kFlagQuorate | kFlagRecord | kFlagDeleted | kFlagRelease | kFlagDelta | kFlagNeedFull | kFlagDirect;

// Bytes after the name: a delta's extension.
size_t ext_len(MsgType t, uint16_t flags) noexcept {
  return t == MsgType::kData && (flags & kFlagDelta) != 0 ? kDeltaExtSize : 0;
}

// Type-specific checks on an already length-checked frame.
DecodeError validate_fields(const Frame& f) noexcept {
  if ((f.flags & ~kKnownFlags) != 0) return DecodeError::kBadField;
  if ((f.flags & (kFlagDelta | kFlagNeedFull)) != 0 && f.type != MsgType::kData && f.type != MsgType::kAck)
    return DecodeError::kBadField;
  if ((f.flags & kFlagDirect) != 0 && f.type != MsgType::kFetchRequest && f.type != MsgType::kFetchMeta &&
      f.type != MsgType::kAck)
    return DecodeError::kBadField;
  // Owner epochs stay far from overflow (a heartbeat's field is its
  // sender's incarnation, not an epoch).
  // (A RECORDS frame's is its asker's incarnation.)
  if (f.type != MsgType::kHeartbeat && f.type != MsgType::kRecords && f.epoch > kMaxEpoch) return DecodeError::kBadField;
  if (f.type == MsgType::kFetchMeta && (f.flags & kFlagDirect) == 0 && aux_epoch(f) > kMaxEpoch)
    return DecodeError::kBadField;
  if (has_name(f.type)) {
    if (!valid_name(f.name)) return DecodeError::kBadName;
    if (segment_id(f.name) != f.seg_id) return DecodeError::kBadName;
  }
  switch (f.type) {
    case MsgType::kData:
    case MsgType::kFetchData: {
      if (f.generation == 0) return DecodeError::kBadField;
      if ((f.flags & ~(kFlagGenCrc | (f.type == MsgType::kData ? kFlagDelta : 0))) != 0) return DecodeError::kBadField;
      if (f.total_len == 0 || f.total_len > kMaxSegmentSize) return DecodeError::kOffsetOverflow;
      if (f.chunk_size < kMinChunkSize || f.chunk_size > kMaxChunkSize) return DecodeError::kOffsetOverflow;
      const uint32_t chunks = chunk_count_for(f.total_len, f.chunk_size);
      if ((f.flags & kFlagDelta) != 0) {
        // Positions 0..count-1 of a delta of at most every chunk, on an older base.
        if (f.chunk_count == 0 || f.chunk_count > chunks) return DecodeError::kOffsetOverflow;
        if (f.delta_base == 0 || f.delta_base >= f.generation) return DecodeError::kBadField;
        if (f.delta_chunk >= chunks) return DecodeError::kOffsetOverflow;
      } else if (f.chunk_count != chunks) {
        return DecodeError::kOffsetOverflow;
      }
      if (f.chunk_index >= f.chunk_count) return DecodeError::kOffsetOverflow;
      if (f.payload.size() != chunk_len(f.total_len, f.chunk_size, f.chunk())) return DecodeError::kBadLength;
      return DecodeError::kNone;
    }
    case MsgType::kAck:
      if (f.generation == 0 || f.chunk_index > f.chunk_count) return DecodeError::kBadField;
      if ((f.flags & kFlagNeedFull) != 0 && (f.flags & kFlagDelta) == 0) return DecodeError::kBadField;
      // A loader done with a lent slot says only that.
      if ((f.flags & kFlagDirect) != 0 && f.flags != (kFlagDirect | kFlagFetch | kFlagComplete))
        return DecodeError::kBadField;
      return DecodeError::kNone;
    case MsgType::kFetchRequest:
      if ((f.flags & ~(kFlagQuery | kFlagDirect)) != 0) return DecodeError::kBadField;
      return f.flags == (kFlagQuery | kFlagDirect) ? DecodeError::kBadField : DecodeError::kNone;
    case MsgType::kFetchMeta:
      if ((f.flags & kFlagDirect) != 0) {
        // A lent slot: exactly the generation it holds and where it is.
        if (f.flags != (kFlagDirect | kFlagFound | kFlagGenCrc)) return DecodeError::kBadField;
        if (!f.payload.empty()) return DecodeError::kBadLength;
        if (f.generation == 0 || f.epoch == 0 || f.sack == 0) return DecodeError::kBadField;
        if (direct_pid(f) == 0 || direct_pid(f) > uint32_t{INT32_MAX} || direct_fd(f) > uint32_t{INT32_MAX})
          return DecodeError::kBadField;
        if (f.total_len == 0 || f.total_len > kMaxSegmentSize) return DecodeError::kOffsetOverflow;
        if (f.chunk_size < kMinChunkSize || f.chunk_size > kMaxChunkSize) return DecodeError::kOffsetOverflow;
        return DecodeError::kNone;
      }
      // A tombstone is a kind of set record.
      if ((f.flags & kFlagDeleted) != 0 && (f.flags & kFlagRecord) == 0) return DecodeError::kBadField;
      // A claim's answer carries the answerer's record as its payload (one
      // entry, checked once the CRC is: claim_record()); nothing else has one.
      if ((f.flags & kFlagGranted) != 0) {
        if ((f.flags & (kFlagDeleted | kFlagOwner)) != 0) return DecodeError::kBadField;
        if (((f.flags & kFlagRecord) != 0) != !f.payload.empty()) return DecodeError::kBadLength;
        if (f.payload.size() > kRecordEntryHead + kMaxNameLen) return DecodeError::kBadLength;
        // Found: it granted with a copy; not: it promised, holding none.
        if ((f.flags & kFlagFound) == 0 && (f.generation != 0 || f.total_len != 0 || aux_epoch(f) != 0))
          return DecodeError::kBadField;
      } else if (!f.payload.empty()) {
        return DecodeError::kBadLength;
      }
      return (f.flags & (kFlagRelease | kFlagQuery | kFlagFetch | kFlagQuorate)) == 0 ? DecodeError::kNone
                                                                                       : DecodeError::kBadField;
    case MsgType::kError:
      if (f.code == 0 || f.code > static_cast<uint16_t>(ErrorCode::kMaxErrorCode)) return DecodeError::kBadField;
      return DecodeError::kNone;
    case MsgType::kHeartbeat:
      return (f.flags & ~kFlagQuorate) == 0 ? DecodeError::kNone : DecodeError::kBadField;
    case MsgType::kClaim:
      // Epoch 0 is never an owner's; epoch 1 belongs to the creator.
      return f.epoch >= 2 && f.flags == 0 ? DecodeError::kNone : DecodeError::kBadField;
    case MsgType::kSetRecord:
      // generation = the record's version, sack = the set.
      // kFlagRestart: the owner withdraws a record that did not reach a quorum.
      // kFlagDeleted: a tombstone (no set); kFlagRelease: a recorded set,
      // telling former holders to drop their copies (never acknowledged).
      if ((f.flags & ~(kFlagComplete | kFlagRestart | kFlagDeleted | kFlagRelease)) != 0) return DecodeError::kBadField;
      if ((f.flags & kFlagDeleted) != 0 && ((f.flags & (kFlagRestart | kFlagRelease)) != 0 || f.sack != 0))
        return DecodeError::kBadField;
      if ((f.flags & kFlagRelease) != 0 && (f.flags & (kFlagComplete | kFlagRestart)) != 0) return DecodeError::kBadField;
      return f.epoch >= 1 && f.generation >= 1 ? DecodeError::kNone : DecodeError::kBadField;
    case MsgType::kRecords:
      // A question (QUERY, no payload) or an answer (a batch, COMPLETE on the
      // last); the batch is checked entry by entry once its CRC is
      // (parse_record_entries). `epoch`: the asker's incarnation, echoed.
      if ((f.flags & ~(kFlagQuery | kFlagComplete)) != 0 || f.flags == (kFlagQuery | kFlagComplete))
        return DecodeError::kBadField;
      if ((f.flags & kFlagQuery) != 0 && !f.payload.empty()) return DecodeError::kBadLength;
      if (f.payload.size() > kMaxNote) return DecodeError::kBadLength;
      return f.seg_id == 0 && f.chunk_index == 0 && f.chunk_count == 0 && f.chunk_size == 0 && f.gen_crc == 0 &&
                     f.sack == 0 && f.code == 0
                 ? DecodeError::kNone
                 : DecodeError::kBadField;
    case MsgType::kNote:
      if (f.payload.empty() || f.payload.size() > kMaxNote) return DecodeError::kBadLength;
      return f.flags == 0 && f.seg_id == 0 && f.epoch == 0 && f.generation == 0 && f.total_len == 0 &&
                     f.chunk_index == 0 && f.chunk_count == 0 && f.chunk_size == 0 && f.gen_crc == 0 &&
                     f.sack == 0 && f.code == 0
                 ? DecodeError::kNone
                 : DecodeError::kBadField;
  }
  return DecodeError::kUnknownType;
}

}  // namespace

const char* decode_error_name(DecodeError e) noexcept {
  switch (e) {
    case DecodeError::kNone: return "none";
    case DecodeError::kTruncated: return "truncated";
    case DecodeError::kBadMagic: return "bad_magic";
    case DecodeError::kBadVersion: return "bad_version";
    case DecodeError::kUnknownType: return "unknown_type";
    case DecodeError::kBadLength: return "bad_length";
    case DecodeError::kBadName: return "bad_name";
    case DecodeError::kOffsetOverflow: return "offset_overflow";
    case DecodeError::kBadField: return "bad_field";
    case DecodeError::kChecksum: return "checksum";
    case DecodeError::kCount: break;
  }
  return "unknown";
}

size_t put_record_entry(std::span<std::byte> out, size_t at, const RecordEntry& e) noexcept {
  if (!valid_name(e.name) || e.epoch == 0 || e.version == 0 || e.owner == 0 || (e.deleted && e.set != 0)) return at;
  const size_t len = kRecordEntryHead + e.name.size();
  if (at > out.size() || out.size() - at < len) return at;
  std::byte* b = out.data() + at;
  put<uint64_t>(b, 0, e.epoch);
  put<uint64_t>(b, 8, e.version);
  put<uint64_t>(b, 16, e.set);
  put<uint16_t>(b, 24, e.owner);
  put<uint8_t>(b, 26, e.deleted ? 1 : 0);
  put<uint8_t>(b, 27, static_cast<uint8_t>(e.name.size()));
  std::memcpy(b + kRecordEntryHead, e.name.data(), e.name.size());
  return at + len;
}

namespace {
// One entry at `at`, or false if what is there is not one.
bool get_record_entry(std::span<const std::byte> p, size_t& at, RecordEntry& e) noexcept {
  if (p.size() - at < kRecordEntryHead) return false;
  const std::byte* b = p.data() + at;
  e.epoch = get<uint64_t>(b, 0);
  e.version = get<uint64_t>(b, 8);
  e.set = get<uint64_t>(b, 16);
  e.owner = get<uint16_t>(b, 24);
  const uint8_t flags = get<uint8_t>(b, 26);
  const size_t name_len = get<uint8_t>(b, 27);
  if (flags > 1 || p.size() - at - kRecordEntryHead < name_len) return false;
  e.deleted = flags == 1;
  e.name = std::string_view(reinterpret_cast<const char*>(b + kRecordEntryHead), name_len);
  if (!valid_name(e.name) || e.epoch == 0 || e.epoch > kMaxEpoch || e.version == 0 || e.owner == 0 ||
      e.owner == kBroadcast || (e.deleted && e.set != 0))
    return false;
  at += kRecordEntryHead + name_len;
  return true;
}
}  // namespace

bool parse_record_entries(std::span<const std::byte> payload, const std::function<void(const RecordEntry&)>& each) {
  RecordEntry e;
  for (size_t at = 0; at < payload.size();)
    if (!get_record_entry(payload, at, e)) return false;
  for (size_t at = 0; at < payload.size();) {
    (void)get_record_entry(payload, at, e);
    each(e);
  }
  return true;
}

bool claim_record(const Frame& f, RecordEntry& out) noexcept {
  if (f.type != MsgType::kFetchMeta || (f.flags & (kFlagGranted | kFlagRecord)) != (kFlagGranted | kFlagRecord))
    return false;
  size_t at = 0;
  return get_record_entry(f.payload, at, out) && at == f.payload.size() && out.name == f.name;
}

uint64_t segment_id(std::string_view name) noexcept {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxNameLen) return false;
  for (unsigned char c : name)
    if (c <= 0x20 || c >= 0x7f) return false;
  return true;
}

size_t encode_header(const Frame& f, uint32_t payload_crc_state, uint32_t payload_len,
                     std::span<std::byte> out) noexcept {
  const size_t name_len = has_name(f.type) ? f.name.size() : 0;
  const size_t ext = ext_len(f.type, f.flags);
  const size_t head = kHeaderSize + name_len + ext;
  if (out.size() < head || name_len > kMaxNameLen) return 0;
  std::byte* b = out.data();
  std::memset(b, 0, kHeaderSize);
  put<uint16_t>(b, 0, kMagic);
  put<uint8_t>(b, 2, kVersion);
  put<uint8_t>(b, 3, static_cast<uint8_t>(f.type));
  put<uint16_t>(b, 4, f.src);
  put<uint16_t>(b, 6, f.dst);
  put<uint32_t>(b, 8, static_cast<uint32_t>(head + payload_len));
  put<uint64_t>(b, 16, f.seg_id);
  put<uint64_t>(b, 24, f.epoch);
  put<uint64_t>(b, 32, f.generation);
  put<uint64_t>(b, 40, f.total_len);
  put<uint32_t>(b, 48, f.chunk_index);
  put<uint32_t>(b, 52, f.chunk_count);
  put<uint32_t>(b, 56, f.chunk_size);
  put<uint32_t>(b, 60, f.gen_crc);
  put<uint64_t>(b, 64, f.sack);
  put<uint16_t>(b, 72, f.flags);
  put<uint16_t>(b, 74, f.code);
  put<uint8_t>(b, 76, static_cast<uint8_t>(name_len));
  if (name_len) std::memcpy(b + kHeaderSize, f.name.data(), name_len);
  if (ext != 0) {
    put<uint64_t>(b, kHeaderSize + name_len, f.delta_base);
    put<uint32_t>(b, kHeaderSize + name_len + 8, f.delta_chunk);
    put<uint32_t>(b, kHeaderSize + name_len + 12, 0);
  }
  put<uint32_t>(b, kOffCrc, crc32c_final(crc32c_extend(payload_crc_state, b, head)));
  return head;
}

size_t encode(const Frame& f, std::span<std::byte> out) noexcept {
  const size_t name_len = has_name(f.type) ? f.name.size() : 0;
  const size_t total = kHeaderSize + name_len + ext_len(f.type, f.flags) + f.payload.size();
  if (out.size() < total || f.payload.size() > kMaxChunkSize) return 0;
  const uint32_t state = crc32c_extend(crc32c_init(), f.payload.data(), f.payload.size());
  size_t head = encode_header(f, state, static_cast<uint32_t>(f.payload.size()), out);
  if (head == 0) return 0;
  if (!f.payload.empty()) std::memcpy(out.data() + head, f.payload.data(), f.payload.size());
  return total;
}

// Extends a payload CRC state over the header and name (crc field as zero)
// and compares with the frame's crc.
bool header_crc_matches(const std::byte* b, size_t head, uint32_t payload_state) noexcept {
  static constexpr std::byte kZeroCrc[4] = {};
  uint32_t st = crc32c_extend(payload_state, b, kOffCrc);
  st = crc32c_extend(st, kZeroCrc, 4);
  st = crc32c_extend(st, b + kOffCrc + 4, head - kOffCrc - 4);
  return crc32c_final(st) == get<uint32_t>(b, kOffCrc);
}

DecodeError decode(std::span<const std::byte> bytes, Frame& f, bool verify_payload) noexcept {
  if (bytes.size() < kHeaderSize) return DecodeError::kTruncated;
  const std::byte* b = bytes.data();
  if (get<uint16_t>(b, 0) != kMagic) return DecodeError::kBadMagic;
  if (get<uint8_t>(b, 2) != kVersion) return DecodeError::kBadVersion;
  const uint8_t type = get<uint8_t>(b, 3);
  if (type < static_cast<uint8_t>(MsgType::kData) || type > kMaxMsgType)
    return DecodeError::kUnknownType;
  f.type = static_cast<MsgType>(type);
  const uint32_t frame_len = get<uint32_t>(b, 8);
  if (frame_len > bytes.size()) return DecodeError::kTruncated;
  if (frame_len < kHeaderSize || frame_len > kMaxFrameSize) return DecodeError::kBadLength;
  // Bytes 77-79 are reserved: zero, so that a later version may use them.
  if (get<uint8_t>(b, 77) != 0 || get<uint8_t>(b, 78) != 0 || get<uint8_t>(b, 79) != 0) return DecodeError::kBadField;
  const size_t name_len = get<uint8_t>(b, 76);
  if (has_name(f.type) ? name_len > kMaxNameLen : name_len != 0) return DecodeError::kBadName;
  const size_t ext = ext_len(f.type, get<uint16_t>(b, 72));
  const size_t head = kHeaderSize + name_len + ext;
  if (head > frame_len) return DecodeError::kBadLength;
  if (ext != 0 && get<uint32_t>(b, kHeaderSize + name_len + 12) != 0) return DecodeError::kBadField;  // reserved
  const size_t payload_len = frame_len - head;
  if (payload_len != 0 && !has_payload(f.type)) return DecodeError::kBadLength;

  // The checksum covers payload then header+name (crc field as zero).
  const std::byte* payload = b + head;
  f.payload_verified = verify_payload || payload_len == 0;
  if (f.payload_verified) {
    const uint32_t pstate = crc32c_extend(crc32c_init(), payload, payload_len);
    if (!header_crc_matches(b, head, pstate)) return DecodeError::kChecksum;
    f.payload_crc = crc32c_final(pstate);
  }
  f.raw = bytes.first(frame_len);

  f.src = get<uint16_t>(b, 4);
  f.dst = get<uint16_t>(b, 6);
  f.seg_id = get<uint64_t>(b, 16);
  f.epoch = get<uint64_t>(b, 24);
  f.generation = get<uint64_t>(b, 32);
  f.total_len = get<uint64_t>(b, 40);
  f.chunk_index = get<uint32_t>(b, 48);
  f.chunk_count = get<uint32_t>(b, 52);
  f.chunk_size = get<uint32_t>(b, 56);
  f.gen_crc = get<uint32_t>(b, 60);
  f.sack = get<uint64_t>(b, 64);
  f.flags = get<uint16_t>(b, 72);
  f.code = get<uint16_t>(b, 74);
  f.name = std::string_view(reinterpret_cast<const char*>(b + kHeaderSize), name_len);
  f.delta_base = ext != 0 ? get<uint64_t>(b, kHeaderSize + name_len) : 0;
  f.delta_chunk = ext != 0 ? get<uint32_t>(b, kHeaderSize + name_len + 8) : 0;
  f.payload = std::span<const std::byte>(payload, payload_len);
  return validate_fields(f);
}

bool verify_payload(Frame& f) noexcept {
  if (f.payload_verified) return true;
  const uint32_t pstate = crc32c_extend(crc32c_init(), f.payload.data(), f.payload.size());
  if (!header_crc_matches(f.raw.data(), f.raw.size() - f.payload.size(), pstate)) return false;
  f.payload_crc = crc32c_final(pstate);
  f.payload_verified = true;
  return true;
}

bool copy_verify_payload(Frame& f, std::byte* dst) noexcept {
  if (f.payload_verified) {
    std::memcpy(dst, f.payload.data(), f.payload.size());
    return true;
  }
  const uint32_t pstate = copy_crc32c(dst, f.payload.data(), f.payload.size(), crc32c_init());
  if (!header_crc_matches(f.raw.data(), f.raw.size() - f.payload.size(), pstate)) return false;
  f.payload_crc = crc32c_final(pstate);
  f.payload_verified = true;
  return true;
}

uint32_t generation_crc(std::span<const uint32_t> chunk_crcs) noexcept {
  return crc32c(chunk_crcs.data(), chunk_crcs.size_bytes());
}

}  // namespace baton::wire
