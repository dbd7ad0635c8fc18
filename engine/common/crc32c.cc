#include "common/crc32c.h"

#include <nmmintrin.h>

#include <cstring>

namespace baton {
namespace {

inline uint64_t load64(const unsigned char* p) noexcept {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t len) noexcept {
  auto* p = static_cast<const unsigned char*>(data);
  uint64_t c = crc;
  while (len >= 8) {
    c = _mm_crc32_u64(c, load64(p));
    p += 8;
    len -= 8;
  }
  crc = static_cast<uint32_t>(c);
  while (len--) crc = _mm_crc32_u8(crc, *p++);
  return crc;
}

uint32_t copy_crc32c(void* dst, const void* src, size_t len, uint32_t crc) noexcept {
  auto* d = static_cast<unsigned char*>(dst);
  auto* s = static_cast<const unsigned char*>(src);
  uint64_t c = crc;
  while (len >= 8) {
    uint64_t v = load64(s);
    std::memcpy(d, &v, 8);
    c = _mm_crc32_u64(c, v);
    s += 8;
    d += 8;
    len -= 8;
  }
  crc = static_cast<uint32_t>(c);
  while (len--) {
    *d++ = *s;
    crc = _mm_crc32_u8(crc, *s++);
  }
  return crc;
}

}  // namespace baton
