#pragma once
// Baton wire format, version 2. Encode, decode, validate; no I/O.
//
// Every frame starts with the same 80-byte little-endian header, followed by
// the segment name (DATA, FETCH_*) and then the payload (DATA, FETCH_DATA):
//
//   0  u16 magic 0xBA70      2 u8 version    3 u8 type
//   4  u16 src node          6 u16 dst node
//   8  u32 frame length (header + name + payload)
//  12  u32 crc               16 u64 segment id
//  24  u64 owner epoch       32 u64 generation     40 u64 total length
//  48  u32 chunk index (ACK: cumulative count)     52 u32 chunk count
//  56  u32 chunk size        60 u32 generation checksum
//  64  u64 selective-ack bitmap (chunks cum .. cum+63)
//  72  u16 flags             74 u16 error code     76 u8 name length  77 pad[3] (zero)
//
// crc = CRC32C over the payload, continued over header+name with the crc field
// zero. A sender computes each chunk's payload CRC once per generation and
// only extends it over the header per frame; a receiver gets the payload CRC
// it needs for the generation checksum from the same pass.
//
// A DATA frame of a delta (kFlagDelta: only the chunks that changed since
// the generation the receiver holds) carries a 16-byte extension after the
// name, covered by the frame checksum like the header:
//
//   0  u64 base generation (the one the delta applies to)
//   8  u32 chunk index in the segment (the header's chunk index and count
//      number positions in the delta: acks count those)
//  12  u32 reserved (zero)
//
// The generation checksum is CRC32C over the little-endian array of every
// chunk's payload CRC (index order): it binds each chunk's content to its place.
// A sender that streams a generation while still snapshotting it does not know
// the checksum for the first chunks; frames carry it (kFlagGenCrc) once known,
// and the last chunk is always sent after it is known.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

namespace baton::wire {

inline constexpr uint16_t kMagic = 0xBA70;
inline constexpr uint8_t kVersion = 2;  ///< 2: a claim's answers carry records, and non-holders promise
inline constexpr size_t kHeaderSize = 80;
inline constexpr size_t kOffCrc = 12;  ///< where the frame checksum sits in the header
inline constexpr size_t kMaxNameLen = 63;
inline constexpr uint32_t kMaxChunkSize = 60 * 1024;  // payload of one frame
/// The smallest chunk a sender may cut a segment into: a receiver keeps one
/// CRC per chunk, so the floor caps that array at 1/128 of the segment.
inline constexpr uint32_t kMinChunkSize = 512;
/// Owner epochs above this are refused: a claim one above the newest never overflows.
inline constexpr uint64_t kMaxEpoch = uint64_t{1} << 62;
inline constexpr size_t kDeltaExtSize = 16;  ///< after the name of a kFlagDelta DATA frame
/// The most a frame carries besides its payload: chunk sizes leave room for it.
inline constexpr size_t kMaxHeadSize = kHeaderSize + kMaxNameLen + kDeltaExtSize;
inline constexpr size_t kMaxFrameSize = kMaxHeadSize + kMaxChunkSize;
inline constexpr uint64_t kMaxSegmentSize = 1ull << 40;
inline constexpr uint16_t kBroadcast = 0xFFFF;

enum class MsgType : uint8_t {
  kData = 1,          ///< primary -> replica: one chunk of a generation
  kAck = 2,           ///< receiver -> sender: cumulative + selective ack; kFlagComplete when published
  kFetchRequest = 3,  ///< loader -> replica: kFlagQuery (metadata) or data of a generation
  kFetchData = 4,     ///< replica -> loader: one chunk, same layout as kData
  kFetchMeta = 5,     ///< replica -> loader: what it holds of a name (kFlagFound or not)
  kError = 6,         ///< refusal: stale epoch, no such segment, no room
  kHeartbeat = 7,     ///< liveness and the sender's view; see the field table in docs/protocol.md
  kClaim = 8,         ///< new owner -> replica: accept owner epoch `epoch` for this name (S22)
  kSetRecord = 9,     ///< owner -> every node: the segment's replica set (epoch, version); kFlagComplete acks;
                      ///< kFlagDeleted: a tombstone; kFlagRelease: recorded, non-members drop their copy
  kNote = 10,         ///< daemon -> daemon: an opaque payload of at most kMaxNote bytes (the failover
                      ///< manager's states and assignments); no name, every other field zero
  kRecords = 11,      ///< a node that started -> each peer (kFlagQuery): hand me your set records and
                      ///< tombstones from segment id `generation` on; the answer carries a batch of
                      ///< them (RecordEntry) and where the next starts (`total_len`), kFlagComplete on the last
};
inline constexpr uint8_t kMaxMsgType = 11;
/// The most a NOTE carries: fits every link's smallest frame.
inline constexpr size_t kMaxNote = 1024;

// Flags.
inline constexpr uint16_t kFlagComplete = 1 << 0;  // ACK: generation published/loaded
inline constexpr uint16_t kFlagRestart = 1 << 1;   // ACK: checksum failed, send everything again
inline constexpr uint16_t kFlagQuery = 1 << 2;     // FETCH_REQUEST: metadata only
inline constexpr uint16_t kFlagFound = 1 << 3;     // FETCH_META: the name is held here
inline constexpr uint16_t kFlagFetch = 1 << 4;     // ACK: acknowledges kFetchData, not kData
inline constexpr uint16_t kFlagOwner = 1 << 5;     // FETCH_META: the sender owns the segment (live primary);
                                                   // ERROR refusing a tombstone: an owner above it refuses
inline constexpr uint16_t kFlagGenCrc = 1 << 6;    // DATA/FETCH_DATA: the generation checksum field is set
inline constexpr uint16_t kFlagGranted = 1 << 7;   // FETCH_META: answers a CLAIM; the replica accepted its epoch
inline constexpr uint16_t kFlagQuorate = 1 << 8;   // HEARTBEAT: the sender's view holds a majority
inline constexpr uint16_t kFlagRecord = 1 << 9;    // FETCH_META: carries the sender's set record for the name;
                                                   // ERROR kStaleEpoch of the refused frame's own epoch: the
                                                   // sender holds another owner's set record of that epoch
inline constexpr uint16_t kFlagDeleted = 1 << 10;  // SET_RECORD / FETCH_META's record: a tombstone (the name was deleted)
inline constexpr uint16_t kFlagRelease = 1 << 11;  // SET_RECORD: a set recorded at a quorum; non-members drop their copy
inline constexpr uint16_t kFlagDelta = 1 << 12;    // DATA: a delta (see the extension above); ACK: of a delta's positions
inline constexpr uint16_t kFlagNeedFull = 1 << 13; // ACK: the receiver lacks the delta's base: send the generation whole
// Direct reads (issue #11, links whose caps() say direct_read):
// FETCH_REQUEST: the loader can map a lent slot; FETCH_META (with FOUND and
// GEN_CRC): the slot is lent, where it is (direct_pid/fd/inode below);
// ACK (with FETCH and COMPLETE): the loader is done with the lent slot.
inline constexpr uint16_t kFlagDirect = 1 << 14;

/// The replica set of a segment travels in the 64-bit `sack` field of DATA
/// and FETCH_META frames: up to four node ids, 16 bits each, 0 = empty.
inline constexpr size_t kMaxReplicaSet = 4;
using ReplicaSet = std::array<uint16_t, kMaxReplicaSet>;
inline uint64_t pack_set(const ReplicaSet& s) noexcept {
  uint64_t v = 0;
  for (size_t i = 0; i < kMaxReplicaSet; ++i) v |= uint64_t{s[i]} << (16 * i);
  return v;
}
/// pack_set of a list of node ids (the first kMaxReplicaSet of them).
inline uint64_t pack_nodes(std::span<const uint16_t> nodes) noexcept {
  ReplicaSet s{};
  for (size_t i = 0; i < nodes.size() && i < kMaxReplicaSet; ++i) s[i] = nodes[i];
  return pack_set(s);
}
inline ReplicaSet unpack_set(uint64_t v) noexcept {
  ReplicaSet s{};
  for (size_t i = 0; i < kMaxReplicaSet; ++i) s[i] = static_cast<uint16_t>(v >> (16 * i));
  return s;
}

enum class ErrorCode : uint16_t {
  kStaleEpoch = 1,      ///< sender's owner epoch is older than the replica's
  kNoSuchSegment = 2,   ///< fetch of a name or generation not held
  kNoRoom = 3,          ///< replica cannot hold the segment (size limit, memory)
  kMaxErrorCode = 3,
};

/// Why a frame was refused; each reason has its own counter.
enum class DecodeError : uint8_t {
  kNone = 0,
  kTruncated,       ///< shorter than the header or than its own length field
  kBadMagic,
  kBadVersion,
  kUnknownType,
  kBadLength,       ///< length field disagrees with the bytes or with the type
  kBadName,         ///< empty/long/non-printable name, or id not derived from it
  kOffsetOverflow,  ///< chunk index/size/count place the chunk outside the segment
  kBadField,        ///< other field out of range (generation 0, unknown flag or code)
  kChecksum,        ///< CRC32C mismatch
  kCount,
};
const char* decode_error_name(DecodeError e) noexcept;

/// A decoded frame: plain values plus views into the frame's bytes.
struct Frame {
  MsgType type = MsgType::kData;
  uint16_t src = 0;
  uint16_t dst = 0;
  uint64_t seg_id = 0;
  uint64_t epoch = 0;
  uint64_t generation = 0;
  uint64_t total_len = 0;
  uint32_t chunk_index = 0;  ///< DATA/FETCH_DATA: index; ACK: cumulative count
  uint32_t chunk_count = 0;
  uint32_t chunk_size = 0;
  uint32_t gen_crc = 0;
  uint64_t sack = 0;
  uint16_t flags = 0;
  uint16_t code = 0;
  std::string_view name;
  std::span<const std::byte> payload;
  uint32_t payload_crc = 0;  ///< final CRC32C of the payload, once verified
  /// False after decode(..., false): the header and every field are checked,
  /// but the CRC (which covers the payload) is not yet. See verify_payload().
  bool payload_verified = true;
  std::span<const std::byte> raw;  ///< the whole frame (set by decode)
  /// kFlagDelta DATA: the generation the delta applies to, and where this
  /// chunk goes (chunk_index is its position in the delta).
  uint64_t delta_base = 0;
  uint32_t delta_chunk = 0;
  /// The chunk of the segment this frame carries.
  uint32_t chunk() const noexcept { return (flags & kFlagDelta) != 0 ? delta_chunk : chunk_index; }
};

/// FETCH_META carries a second epoch in the chunk index (low 32 bits) and
/// chunk count (high 32 bits) fields: answering a CLAIM (kFlagGranted), the
/// epoch its latest generation was written under (`epoch` is the claim's);
/// answering a query with kFlagRecord, the epoch of the set record, whose
/// version is in the generation checksum field and set in `sack`.
/// ERROR carries the epoch of the frame it answers there (a STALE_EPOCH
/// refusal's own `epoch` is the newer one the refuser holds), so that a late
/// refusal of an earlier claim or frame is not taken for this claim's.
inline void set_aux_epoch(Frame& f, uint64_t epoch) noexcept {
  f.chunk_index = static_cast<uint32_t>(epoch);
  f.chunk_count = static_cast<uint32_t>(epoch >> 32);
}
inline uint64_t aux_epoch(const Frame& f) noexcept { return f.chunk_index | (uint64_t{f.chunk_count} << 32); }

/// FETCH_META + kFlagDirect lends a published slot: the lender's process id
/// in the chunk index field, the slot's file descriptor there in the chunk
/// count field, and the file's inode number in `sack` (a reader that opens
/// /proc/PID/fd/FD and finds another inode has reached another file: a
/// process id reused, another pid namespace). The epoch, generation, total
/// length, chunk size and generation checksum are the slot's.
inline void set_direct(Frame& f, uint32_t pid, uint32_t fd, uint64_t inode) noexcept {
  f.chunk_index = pid;
  f.chunk_count = fd;
  f.sack = inode;
}
inline uint32_t direct_pid(const Frame& f) noexcept { return f.chunk_index; }
inline uint32_t direct_fd(const Frame& f) noexcept { return f.chunk_count; }
inline uint64_t direct_inode(const Frame& f) noexcept { return f.sack; }

/// One set record or tombstone as a RECORDS answer carries it (docs/
/// protocol.md, "Records for a node that started"): packed little-endian,
/// u64 epoch, u64 version, u64 set (pack_set), u16 owner, u8 flags (bit 0:
/// a tombstone, whose set is 0), u8 name length, the name. The segment id
/// is the name's.
struct RecordEntry {
  std::string_view name;
  uint64_t epoch = 0;
  uint64_t version = 0;
  uint64_t set = 0;
  uint16_t owner = 0;
  bool deleted = false;
};
inline constexpr size_t kRecordEntryHead = 28;
/// Appends `e` to `out` at `at`; returns the new end, or `at` unchanged if
/// it does not fit or `e` is not well formed. Thread: any.
size_t put_record_entry(std::span<std::byte> out, size_t at, const RecordEntry& e) noexcept;
/// Checks that a RECORDS payload is a whole number of well-formed entries
/// (a valid name, an epoch of 1..kMaxEpoch, a version of at least 1, an
/// owner that is a node id, no set on a tombstone, flags 0 or 1); then,
/// only if all are, calls `each` for every one in order. Thread: any.
bool parse_record_entries(std::span<const std::byte> payload, const std::function<void(const RecordEntry&)>& each);

/// The set record (or tombstone) a claim's answer carries: FETCH_META with
/// GRANTED and RECORD has one RecordEntry as its payload, whose name must
/// be the frame's. False if there is none or it is not exactly that. Only
/// on a frame whose checksum was verified. Thread: any.
bool claim_record(const Frame& f, RecordEntry& out) noexcept;

/// 64-bit segment id derived from the name (FNV-1a). Thread: any.
uint64_t segment_id(std::string_view name) noexcept;

/// True if `name` is a valid segment name: 1..63 printable ASCII, no spaces.
bool valid_name(std::string_view name) noexcept;

/// Chunks a segment of `total_len` bytes makes at `chunk_size`.
inline uint32_t chunk_count_for(uint64_t total_len, uint32_t chunk_size) noexcept {
  return static_cast<uint32_t>((total_len + chunk_size - 1) / chunk_size);
}
/// Length of chunk `index`.
inline uint32_t chunk_len(uint64_t total_len, uint32_t chunk_size, uint32_t index) noexcept {
  uint64_t off = uint64_t{index} * chunk_size;
  uint64_t rest = total_len - off;
  return static_cast<uint32_t>(rest < chunk_size ? rest : chunk_size);
}

/// Writes header+name (and a delta's extension) for `f` into `out` (at
/// least kMaxHeadSize) and returns the bytes written. `payload_crc_state` is the CRC32C state
/// (crc32c_extend, not finalised) over the payload that will follow, or
/// crc32c_init() for none; `payload_len` its length. Thread: any.
size_t encode_header(const Frame& f, uint32_t payload_crc_state, uint32_t payload_len,
                     std::span<std::byte> out) noexcept;

/// Encodes a whole frame (header, name, f.payload) into `out`; returns bytes
/// written or 0 if `out` is too small. Thread: any.
size_t encode(const Frame& f, std::span<std::byte> out) noexcept;

/// Decodes and validates `bytes`; on success fills `out` (views into `bytes`).
/// With verify_payload false, a DATA/FETCH_DATA frame's CRC is left to
/// verify_payload() or copy_verify_payload(): the receiver can then check it
/// in the same pass that copies the payload where it belongs. Nothing may act
/// on such a frame's fields before it is verified except to decide where the
/// payload goes. Thread: any.
DecodeError decode(std::span<const std::byte> bytes, Frame& out, bool verify_payload = true) noexcept;

/// The version byte of a frame that decode() refused with kBadVersion (0
/// if it is too short to say). Thread: any.
inline unsigned frame_version(std::span<const std::byte> bytes) noexcept {
  return bytes.size() > 2 ? std::to_integer<unsigned>(bytes[2]) : 0;
}

/// Checks the CRC of a frame decoded without it; sets payload_crc. Thread: any.
bool verify_payload(Frame& f) noexcept;

/// Copies the payload to `dst` and checks the CRC in one pass; sets
/// payload_crc. On false, `dst` holds unverified bytes. Thread: any.
bool copy_verify_payload(Frame& f, std::byte* dst) noexcept;

/// Generation checksum from the per-chunk payload CRCs. Thread: any.
uint32_t generation_crc(std::span<const uint32_t> chunk_crcs) noexcept;

}  // namespace baton::wire
