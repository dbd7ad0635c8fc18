#include "common/crc32c.h"

#include <emmintrin.h>
#include <nmmintrin.h>
#include <xmmintrin.h>

#include <algorithm>
#include <array>
#include <cstring>

// libbaton-client checksums nothing on a hot path and links no ISA-L.
#if defined(BATON_HAVE_ISAL) && !defined(BATON_CLIENT_ONLY)
#include <isa-l/crc.h>
#define BATON_CRC_FOLD 1
#endif

namespace baton {
namespace {

// Three independent crc32 streams over adjacent blocks hide the instruction's
// 3-cycle latency (one result per cycle instead of one per three). Because
// CRC is linear, the streams combine as crc(A|B|C) = shift(shift(a) ^ b) ^ c,
// where shift() advances a register over kBlock zero bytes; shift() is a
// linear map on 32 bits, tabulated bytewise once.
constexpr size_t kBlock = 512;
/// copy_crc32c streams (non-temporal stores) from this length up: a whole
/// bulk chunk. Below it (a 4 KiB commit) the copy stays in cache.
constexpr size_t kStreamMin = 8 << 10;

inline uint64_t load64(const unsigned char* p) noexcept {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

struct ShiftTables {
  std::array<std::array<uint32_t, 256>, 4> t{};
  ShiftTables() noexcept {
    for (int k = 0; k < 4; ++k)
      for (uint32_t v = 0; v < 256; ++v) {
        uint64_t c = uint64_t{v} << (8 * k);
        for (size_t i = 0; i < kBlock / 8; ++i) c = _mm_crc32_u64(c, 0);
        t[k][v] = static_cast<uint32_t>(c);
      }
  }
  uint32_t shift(uint32_t c) const noexcept {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
  }
};

const ShiftTables& tables() noexcept {
  static const ShiftTables tables;
  return tables;
}

/// With kStream, also stores every 8 bytes it checksums at `d`, with
/// non-temporal stores (movnti): the CRC is of exactly the values stored.
template <bool kStream>
uint32_t crc_impl(unsigned char* d, const unsigned char* s, size_t len, uint32_t crc) noexcept {
  auto store = [](unsigned char* to, uint64_t v) {
    if constexpr (kStream) _mm_stream_si64(reinterpret_cast<long long*>(to), static_cast<long long>(v));
  };
  if (len >= 3 * kBlock) {
    const ShiftTables& sh = tables();
    do {
      uint64_t a = crc, b = 0, c = 0;
      for (size_t i = 0; i < kBlock; i += 8) {
        const uint64_t va = load64(s + i), vb = load64(s + kBlock + i), vc = load64(s + 2 * kBlock + i);
        store(d + i, va);
        store(d + kBlock + i, vb);
        store(d + 2 * kBlock + i, vc);
        a = _mm_crc32_u64(a, va);
        b = _mm_crc32_u64(b, vb);
        c = _mm_crc32_u64(c, vc);
      }
      crc = sh.shift(sh.shift(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
      s += 3 * kBlock;
      if constexpr (kStream) d += 3 * kBlock;
      len -= 3 * kBlock;
    } while (len >= 3 * kBlock);
  }
  uint64_t c = crc;
  while (len >= 8) {
    const uint64_t v = load64(s);
    store(d, v);
    c = _mm_crc32_u64(c, v);
    s += 8;
    if constexpr (kStream) d += 8;
    len -= 8;
  }
  crc = static_cast<uint32_t>(c);
  while (len--) {
    if constexpr (kStream) *d++ = *s;
    crc = _mm_crc32_u8(crc, *s++);
  }
  return crc;
}

/// CRC32C state extended over [s, s + len), without a copy.
uint32_t crc_of(const unsigned char* s, size_t len, uint32_t crc) noexcept {
#ifdef BATON_CRC_FOLD
  // ISA-L folds 64 bytes at a time with carry-less multiplies (picked at
  // run time for this CPU: VPCLMULQDQ here) and reduces once at the end:
  // 4 KiB in ~86 ns against ~185 for three crc32 streams, 16 KiB at ~49
  // GB/s against ~22. Its fixed cost loses below kFoldMin (a frame
  // header: 80 bytes in 17 ns against 4), where the crc32 loop stays.
  // Same state convention as the crc32 instruction: no inversions inside.
  constexpr size_t kFoldMin = 256;
  constexpr size_t kFoldMax = size_t{1} << 30;  // its length is an int
  while (len >= kFoldMin) {
    const size_t n = std::min(len, kFoldMax);
    crc = crc32_iscsi(const_cast<unsigned char*>(s), static_cast<int>(n), crc);
    s += n;
    len -= n;
  }
#endif
  return crc_impl<false>(nullptr, s, len, crc);
}

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t len) noexcept {
  return crc_of(static_cast<const unsigned char*>(data), len, crc);
}

uint32_t copy_crc32c(void* dst, const void* src, size_t len, uint32_t crc) noexcept {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  if (len >= kStreamMin && reinterpret_cast<uintptr_t>(d) % 8 == 0) {
    // A bulk copy into memory nobody reads soon (a replica slot): the
    // stores bypass the cache, so the destination is not read for
    // ownership first, and the CRC is of the very registers stored. 16 KiB
    // chunks into 64 MiB, this machine: 7.4-7.9 ms, against 11.4-13.9 for
    // memcpy then the CRC in L1, and 8-15 for memcpy alone.
    crc = crc_impl<true>(d, s, len, crc);
    _mm_sfence();  // ordered before whatever publishes the copy
    return crc;
  }
  // Small: memcpy, then the CRC over what it wrote, still in L1 (libc's
  // vector copy beats a fused loop's 8-byte stores).
  constexpr size_t kPiece = 16 << 10;
  while (len > 0) {
    const size_t n = std::min(len, kPiece);
    std::memcpy(d, s, n);
    crc = crc_of(d, n, crc);
    d += n;
    s += n;
    len -= n;
  }
  return crc;
}

}  // namespace baton
