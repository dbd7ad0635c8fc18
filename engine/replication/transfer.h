#pragma once
// Reliable transfer of one generation between two nodes, independent of the
// link: the sender plans which chunks go next (new ones inside a window,
// retransmissions after a timeout), the assembler places chunks, tracks what
// arrived and builds acks. Replication (primary -> replica) and fetch
// (replica -> loader) both use this pair.
//
// Thread: worker (both classes are owned by one worker and never shared).

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "protocol/wire.h"

namespace baton {

/// Bit set over chunk indices, sized once and reused (no allocation per generation
/// unless a larger segment appears).
class ChunkBitmap {
 public:
  void reset(uint32_t count);
  bool test(uint32_t i) const noexcept { return (words_[i >> 6] >> (i & 63)) & 1; }
  /// Sets bit i; returns true if it was clear.
  bool set(uint32_t i) noexcept {
    uint64_t bit = uint64_t{1} << (i & 63);
    bool was_clear = (words_[i >> 6] & bit) == 0;
    words_[i >> 6] |= bit;
    return was_clear;
  }
  /// Clears bit i; returns true if it was set.
  bool clear(uint32_t i) noexcept {
    uint64_t bit = uint64_t{1} << (i & 63);
    bool was_set = (words_[i >> 6] & bit) != 0;
    words_[i >> 6] &= ~bit;
    return was_set;
  }
  /// Sets bits [first, last] (last < count()).
  void set_range(uint32_t first, uint32_t last) noexcept;
  void set_all() noexcept { set_range(0, count_ - 1); }
  void clear_all() noexcept { std::fill(words_.begin(), words_.end(), 0); }
  /// How many bits are set.
  uint32_t popcount() const noexcept;
  /// First set index at or after `from` (count() if none).
  uint32_t next_set(uint32_t from) const noexcept { return next_where(from, 0); }
  /// First clear index at or after `from` (count() if none).
  uint32_t next_clear(uint32_t from) const noexcept { return next_where(from, ~uint64_t{0}); }
  uint32_t count() const noexcept { return count_; }
  /// Word w of the set (bits 64 w to 64 w + 63), and setting bits in it:
  /// for walks a word at a time. w < (count() + 63) / 64; bits past
  /// count() must not be set.
  uint64_t word(uint32_t w) const noexcept { return words_[w]; }
  void or_word(uint32_t w, uint64_t bits) noexcept { words_[w] |= bits; }
  /// Calls fn(i) for each set bit, in order.
  template <typename Fn>
  void for_each_set(Fn&& fn) const {
    for (uint32_t w = 0; w < (count_ + 63) / 64; ++w)
      for (uint64_t bits = words_[w]; bits != 0; bits &= bits - 1)
        fn(w * 64 + static_cast<uint32_t>(std::countr_zero(bits)));
  }

 private:
  uint32_t next_where(uint32_t from, uint64_t flip) const noexcept;
  std::vector<uint64_t> words_;
  uint32_t count_ = 0;
};

/// What a generation looks like to its sender.
struct SendSource {
  const std::byte* data = nullptr;
  uint64_t total_len = 0;
  uint32_t chunk_size = 0;
  std::span<const uint32_t> chunk_crcs;  ///< final CRC32C of each chunk's payload
  uint32_t gen_crc = 0;
  uint64_t generation = 0;
  /// Chunks [0, *ready) may be sent (a snapshot still being taken, perhaps
  /// by another thread: it stores `ready` after the chunk and its CRC, with
  /// release); null: all.
  const std::atomic<uint32_t>* ready = nullptr;
  /// A delta: only these chunks (ascending), for a receiver that holds
  /// generation `base`. Empty: every chunk.
  std::span<const uint32_t> delta;
  uint64_t base = 0;
  bool is_delta() const noexcept { return base != 0; }
};

/// The retransmit timeout follows the measured round trip (RFC 6298:
/// srtt + 4 rttvar, one chunk timed at a time, never one that was resent),
/// kept within [rto_min_ns, rto_max_ns], doubled after each timeout and,
/// until a first round trip is measured, kept doubled. A fixed
/// 2 ms resent whole windows whenever a receiver on a shared vCPU was
/// preempted for longer: 2 035 and 8 936 duplicate frames in two 64 MiB
/// fetches of 4 096 chunks (docs/performance.md).
struct SenderTuning {
  uint32_t window = 256;          ///< chunks in flight (sent, not yet acked)
  uint64_t rto_min_ns = 2'000'000;
  uint64_t rto_max_ns = 100'000'000;
};

class ChunkSender {
 public:
  /// Starts sending `src` from scratch. Thread: worker.
  void start(const SendSource& src, const SenderTuning& tuning, uint64_t now_ns);
  void stop() noexcept { active_ = false; }
  bool active() const noexcept { return active_; }
  bool complete() const noexcept { return complete_; }
  const SendSource& source() const noexcept { return src_; }
  /// Started and not yet acknowledged whole: chunks to send, or acks to wait for.
  bool in_flight() const noexcept { return active_ && !complete_; }
  /// Chunks that could go out now (new and ready, or being resent); acks
  /// and timeouts alone do not count.
  bool has_unsent() const noexcept {
    if (!active_ || complete_) return false;
    return resending_ || next_new_ < ready_limit();
  }
  /// The chunk of the segment at position `i` of what is sent.
  uint32_t chunk_at(uint32_t i) const noexcept { return src_.is_delta() ? src_.delta[i] : i; }

  /// Fills `out` with up to `n` chunk indices to send now (retransmissions
  /// first). Only the retransmit timer changes; call sent() with how many of
  /// them the link took.
  uint16_t plan(uint64_t now_ns, uint32_t* out, uint16_t n) noexcept;
  /// Records that the first `k` planned chunks were handed to the link.
  void sent(const uint32_t* idx, uint16_t k, uint64_t now_ns) noexcept;

  /// Applies an ack for this generation (and mode: an ack of a delta's
  /// positions says nothing of a whole generation's chunks). Returns true
  /// if it made progress.
  bool on_ack(const wire::Frame& ack, uint64_t now_ns) noexcept;

  uint64_t retransmits() const noexcept { return retransmits_; }
  uint32_t acked() const noexcept { return acked_count_; }
  /// The retransmit timeout now, and the smoothed round trip it follows
  /// (0: none measured yet; kept across start(): it is the peer's).
  uint64_t rto_ns() const noexcept { return rto_ns_; }
  uint64_t srtt_ns() const noexcept { return srtt_ns_; }

 private:
  /// Positions [0, limit) are ready to send.
  uint32_t ready_limit() const noexcept {
    if (src_.ready == nullptr) return chunk_count_;
    const uint32_t ready = src_.ready->load(std::memory_order_acquire);
    if (!src_.is_delta()) return std::min(ready, chunk_count_);
    return static_cast<uint32_t>(std::lower_bound(src_.delta.begin(), src_.delta.end(), ready) - src_.delta.begin());
  }

  SendSource src_;
  SenderTuning tuning_;
  uint32_t chunk_count_ = 0;
  ChunkBitmap acked_;
  uint32_t acked_count_ = 0;
  uint32_t next_new_ = 0;     // first chunk never sent
  uint32_t cum_ = 0;          // every chunk below is acked
  uint32_t resend_cursor_ = 0;
  bool resending_ = false;    // walking [cum_, next_new_) after a timeout
  uint64_t last_progress_ns_ = 0;
  uint64_t rto_ns_ = 0;
  /// The timeout the round trip calls for (before any backoff).
  uint64_t base_rto() const noexcept;
  static constexpr uint32_t kNotTimed = UINT32_MAX;
  uint32_t timed_ = kNotTimed;  ///< the chunk whose round trip is being timed
  uint64_t timed_at_ = 0;
  uint64_t srtt_ns_ = 0, rttvar_ns_ = 0;
  uint64_t retransmits_ = 0;
  bool active_ = false;
  bool complete_ = false;
};

class ChunkAssembler {
 public:
  enum class Outcome : uint8_t {
    kStored,      ///< new chunk placed
    kDuplicate,   ///< already had it
    kComplete,    ///< that was the last chunk and the generation checksum matched
    kCorrupt,     ///< last chunk arrived but the generation checksum did not match: restarted
    kBadFrame,    ///< the frame's CRC did not match: nothing changed
  };

  /// Prepares to assemble the generation that `first` (any of its chunks,
  /// verified) belongs to into `dest` (at least first.total_len bytes). For
  /// a delta (kFlagDelta), `dest` already holds the base generation, whose
  /// chunk CRCs are `base_crcs`: only the delta's chunks arrive. Thread: worker.
  void begin(std::byte* dest, const wire::Frame& first, std::span<const uint32_t> base_crcs = {});
  bool active() const noexcept { return active_; }
  /// Every chunk is in and the generation checksum matched (accept()
  /// returned kComplete), and nothing restarted or stopped it since.
  bool complete() const noexcept { return active_ && gen_crc_known_ && have_count_ == chunk_count_; }
  void stop() noexcept { active_ = false; }
  /// Whether `f` belongs to the generation being assembled (same shape,
  /// and the same delta or whole).
  bool matches(const wire::Frame& f) const noexcept {
    return active_ && f.generation == generation_ && f.total_len == total_len_ && f.chunk_size == chunk_size_ &&
           f.delta_base == base_ && ((f.flags & wire::kFlagDelta) != 0) == (base_ != 0) &&
           f.chunk_count == chunk_count_;
  }
  bool is_delta() const noexcept { return base_ != 0; }
  uint64_t base() const noexcept { return base_; }
  /// Places a chunk of the current generation. Requires matches(f). An
  /// unverified frame is copied and verified in one pass.
  Outcome accept(wire::Frame& f) noexcept;

  /// Fills the ack fields (generation, cumulative count, selective bitmap).
  void fill_ack(wire::Frame& ack) const noexcept;

  uint64_t generation() const noexcept { return generation_; }
  uint64_t total_len() const noexcept { return total_len_; }
  uint32_t chunk_size() const noexcept { return chunk_size_; }
  uint32_t gen_crc() const noexcept { return gen_crc_; }
  /// Every chunk's CRC, delta or not.
  std::span<const uint32_t> chunk_crcs() const noexcept { return {crcs_.data(), total_chunks_}; }
  std::byte* dest() const noexcept { return dest_; }

 private:
  void restart() noexcept;

  std::byte* dest_ = nullptr;
  uint64_t generation_ = 0;
  uint64_t total_len_ = 0;
  uint32_t chunk_size_ = 0;
  uint32_t chunk_count_ = 0;   ///< positions to receive (a delta's chunks, or every chunk)
  uint32_t total_chunks_ = 0;  ///< chunks of the segment
  uint64_t base_ = 0;          ///< a delta's base generation; 0: whole
  uint32_t gen_crc_ = 0;
  bool gen_crc_known_ = false;
  ChunkBitmap have_;
  std::vector<uint32_t> crcs_;
  uint32_t have_count_ = 0;
  uint32_t cum_ = 0;
  bool active_ = false;
};

}  // namespace baton
