#include "replication/transfer.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace baton {

void ChunkBitmap::reset(uint32_t count) {
  const size_t words = (size_t{count} + 63) / 64;
  if (words_.size() < words) words_.resize(words);
  std::fill_n(words_.begin(), words, 0);
  count_ = count;
}

void ChunkBitmap::set_range(uint32_t first, uint32_t last) noexcept {
  if (count_ == 0) return;
  for (uint32_t w = first >> 6; w <= last >> 6; ++w) {
    uint64_t mask = ~uint64_t{0};
    if (w == first >> 6) mask &= ~uint64_t{0} << (first & 63);
    if (w == last >> 6) mask &= ~uint64_t{0} >> (63 - (last & 63));
    words_[w] |= mask;
  }
}

uint32_t ChunkBitmap::popcount() const noexcept {
  uint32_t n = 0;
  const size_t words = (size_t{count_} + 63) / 64;
  for (size_t w = 0; w < words; ++w) n += static_cast<uint32_t>(std::popcount(words_[w]));
  return n;
}

uint32_t ChunkBitmap::next_where(uint32_t from, uint64_t flip) const noexcept {
  // `flip` all ones looks for a clear bit, zero for a set one.
  if (from >= count_) return count_;
  size_t w = from >> 6;
  uint64_t word = (words_[w] ^ flip) & (~uint64_t{0} << (from & 63));
  const size_t words = (size_t{count_} + 63) / 64;
  while (word == 0) {
    if (++w >= words) return count_;
    word = words_[w] ^ flip;
  }
  uint32_t i = static_cast<uint32_t>(w * 64 + std::countr_zero(word));
  return std::min(i, count_);
}

// --- sender ---------------------------------------------------------------

void ChunkSender::start(const SendSource& src, const SenderTuning& tuning, uint64_t now_ns) {
  src_ = src;
  tuning_ = tuning;
  chunk_count_ = src.is_delta() ? static_cast<uint32_t>(src.delta.size())
                                : wire::chunk_count_for(src.total_len, src.chunk_size);
  acked_.reset(chunk_count_);
  acked_count_ = 0;
  next_new_ = 0;
  cum_ = 0;
  resend_cursor_ = 0;
  resending_ = false;
  last_progress_ns_ = now_ns;
  timed_ = kNotTimed;
  rto_ns_ = base_rto();
  active_ = true;
  complete_ = false;
}

uint16_t ChunkSender::plan(uint64_t now_ns, uint32_t* out, uint16_t n) noexcept {
  if (!active_ || complete_) return 0;
  uint16_t k = 0;
  // Nothing acked for a whole RTO while chunks are out: resend the holes.
  if (!resending_ && next_new_ > acked_count_ && now_ns >= last_progress_ns_ + rto_ns_) {
    resending_ = true;
    resend_cursor_ = cum_;
    rto_ns_ = std::min(rto_ns_ * 2, tuning_.rto_max_ns);
    last_progress_ns_ = now_ns;
  }
  uint32_t cursor = resend_cursor_;
  while (resending_ && k < n) {
    cursor = acked_.next_clear(cursor);
    if (cursor >= next_new_) {
      // The walk is over (acks may have filled the rest). Ending it here,
      // not in sent(), matters: with nothing to send sent() is never called,
      // and a walk left open would keep the timer from ever firing again.
      resending_ = false;
      break;
    }
    out[k++] = cursor++;
  }
  // Everything acked but no completion: the receiver is missing the
  // generation checksum (a frame carrying it was lost); the last chunk has it.
  if (k == 0 && acked_count_ == chunk_count_ && chunk_count_ > 0 && now_ns >= last_progress_ns_ + rto_ns_) {
    last_progress_ns_ = now_ns;
    out[k++] = chunk_count_ - 1;
  }
  uint32_t next = next_new_;
  const uint32_t limit = ready_limit();
  const uint32_t in_flight = next_new_ - acked_count_;
  uint32_t room = in_flight < tuning_.window ? tuning_.window - in_flight : 0;
  while (k < n && room > 0 && next < limit) {
    out[k++] = next++;
    --room;
  }
  return k;
}

uint64_t ChunkSender::base_rto() const noexcept {
  if (srtt_ns_ == 0) return tuning_.rto_min_ns;
  return std::clamp(srtt_ns_ + 4 * rttvar_ns_, tuning_.rto_min_ns, tuning_.rto_max_ns);
}

void ChunkSender::sent(const uint32_t* idx, uint16_t k, uint64_t now_ns) noexcept {
  // The retransmit timer runs from the first send after an idle window.
  if (k > 0 && next_new_ == acked_count_) last_progress_ns_ = now_ns;
  for (uint16_t i = 0; i < k; ++i) {
    if (idx[i] < next_new_) {
      ++retransmits_;
      resend_cursor_ = idx[i] + 1;
      if (idx[i] == timed_) timed_ = kNotTimed;  // Karn: its ack would time neither send
    } else {
      next_new_ = idx[i] + 1;
      if (timed_ == kNotTimed) {
        timed_ = idx[i];
        timed_at_ = now_ns;
      }
    }
  }
  if (resending_ && acked_.next_clear(resend_cursor_) >= next_new_) resending_ = false;
}

bool ChunkSender::on_ack(const wire::Frame& ack, uint64_t now_ns) noexcept {
  if (!active_ || ack.generation != src_.generation) return false;
  const bool same_kind = ((ack.flags & wire::kFlagDelta) != 0) == src_.is_delta();
  if ((ack.flags & wire::kFlagRestart) != 0) {
    if (!same_kind) return false;
    start(src_, tuning_, now_ns);
    return true;
  }
  // Published, however it was sent: the ack of a delta's last frame comes
  // from the store that published it, which no longer says it was a
  // delta. (Until 2026-12-05 a delta's sender ignored it and resent its
  // last frame, backing off, until the next generation.)
  if ((ack.flags & wire::kFlagComplete) != 0) {
    complete_ = true;
    active_ = false;
    return true;
  }
  if (!same_kind) return false;
  const uint32_t cum = std::min(ack.chunk_index, next_new_);
  uint32_t before = acked_count_;
  for (uint32_t i = cum_; i < cum; ++i)
    if (acked_.set(i)) ++acked_count_;
  cum_ = std::max(cum_, cum);
  for (uint64_t bits = ack.sack; bits != 0; bits &= bits - 1) {
    uint64_t i = uint64_t{ack.chunk_index} + std::countr_zero(bits);
    if (i < next_new_ && acked_.set(static_cast<uint32_t>(i))) ++acked_count_;
  }
  cum_ = acked_.next_clear(cum_);
  if (acked_count_ == before) return false;
  if (timed_ != kNotTimed && timed_ < chunk_count_ && acked_.test(timed_)) {
    const uint64_t rtt = now_ns > timed_at_ ? now_ns - timed_at_ : 0;
    if (srtt_ns_ == 0) {
      srtt_ns_ = std::max<uint64_t>(rtt, 1);
      rttvar_ns_ = rtt / 2;
    } else {
      const uint64_t err = rtt > srtt_ns_ ? rtt - srtt_ns_ : srtt_ns_ - rtt;
      rttvar_ns_ = (3 * rttvar_ns_ + err) / 4;
      srtt_ns_ = std::max<uint64_t>((7 * srtt_ns_ + rtt) / 8, 1);
    }
    timed_ = kNotTimed;
  }
  last_progress_ns_ = now_ns;
  // Until a round trip is measured, a timeout's backoff stands (RFC 6298
  // 5.7): a floor below the true round trip would fire again at once.
  if (srtt_ns_ != 0) rto_ns_ = base_rto();
  return true;
}

// --- assembler ------------------------------------------------------------

void ChunkAssembler::begin(std::byte* dest, const wire::Frame& first, std::span<const uint32_t> base_crcs) {
  dest_ = dest;
  generation_ = first.generation;
  total_len_ = first.total_len;
  chunk_size_ = first.chunk_size;
  chunk_count_ = first.chunk_count;
  total_chunks_ = wire::chunk_count_for(first.total_len, first.chunk_size);
  base_ = (first.flags & wire::kFlagDelta) != 0 ? first.delta_base : 0;
  gen_crc_known_ = (first.flags & wire::kFlagGenCrc) != 0;
  gen_crc_ = gen_crc_known_ ? first.gen_crc : 0;
  have_.reset(chunk_count_);
  if (crcs_.size() < total_chunks_) crcs_.resize(total_chunks_);
  // A delta's unchanged chunks keep the base's CRCs (the caller checked
  // there is one per chunk).
  if (base_ != 0 && base_crcs.size() == total_chunks_) std::copy(base_crcs.begin(), base_crcs.end(), crcs_.begin());
  have_count_ = 0;
  cum_ = 0;
  active_ = true;
}

ChunkAssembler::Outcome ChunkAssembler::accept(wire::Frame& f) noexcept {
  if (have_.test(f.chunk_index)) {
    // A chunk we hold may still bring the one thing we lack: the generation
    // checksum (the sender re-sends the last chunk for exactly this).
    if (gen_crc_known_ || (f.flags & wire::kFlagGenCrc) == 0 || !wire::verify_payload(f))
      return Outcome::kDuplicate;
    gen_crc_ = f.gen_crc;
    gen_crc_known_ = true;
    if (have_count_ < chunk_count_) return Outcome::kDuplicate;
    if (wire::generation_crc(chunk_crcs()) == gen_crc_) return Outcome::kComplete;
    restart();
    return Outcome::kCorrupt;
  }
  // The chunk's bit stays clear until the frame is verified, so unverified
  // bytes in the shadow are overwritten by the retransmission, never published.
  if (!wire::copy_verify_payload(f, dest_ + uint64_t{f.chunk()} * chunk_size_)) return Outcome::kBadFrame;
  if ((f.flags & wire::kFlagGenCrc) != 0) {
    if (!gen_crc_known_) {
      gen_crc_ = f.gen_crc;
      gen_crc_known_ = true;
    } else if (gen_crc_ != f.gen_crc) {
      restart();  // two verified frames disagree about the whole: trust neither
      return Outcome::kCorrupt;
    }
  }
  crcs_[f.chunk()] = f.payload_crc;
  have_.set(f.chunk_index);
  ++have_count_;
  if (f.chunk_index == cum_) cum_ = have_.next_clear(cum_);
  if (have_count_ < chunk_count_ || !gen_crc_known_) return Outcome::kStored;
  if (wire::generation_crc(chunk_crcs()) == gen_crc_) return Outcome::kComplete;
  // Every frame passed its CRC yet the whole does not match the sender's
  // claim: start over rather than publish something we cannot vouch for.
  restart();
  return Outcome::kCorrupt;
}

void ChunkAssembler::restart() noexcept {
  have_.reset(chunk_count_);
  have_count_ = 0;
  cum_ = 0;
  gen_crc_known_ = false;
}

void ChunkAssembler::fill_ack(wire::Frame& ack) const noexcept {
  ack.generation = generation_;
  ack.total_len = total_len_;
  ack.chunk_count = chunk_count_;
  ack.chunk_size = chunk_size_;
  ack.chunk_index = cum_;
  if (base_ != 0) ack.flags |= wire::kFlagDelta;  // positions, not chunks
  uint64_t sack = 0;
  for (uint32_t b = 0; b < 64 && cum_ + b < chunk_count_; ++b)
    if (have_.test(cum_ + b)) sack |= uint64_t{1} << b;
  ack.sack = sack;
}

}  // namespace baton
