#pragma once
// Helpers shared by the frame fuzz targets.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/crc32c.h"
#include "protocol/wire.h"

namespace baton::fuzz {

/// Makes mutated bytes pass the decoder's framing checks so that the field
/// checks and the handlers behind them see them: magic, version, a length
/// that matches, a segment id derived from the name, and a correct
/// checksum. `keep_route`: leave src/dst as they are (else 2 -> 1).
inline void mend_frame(std::vector<std::byte>& b, bool keep_route) {
  using namespace baton::wire;
  if (b.size() < kHeaderSize) b.resize(kHeaderSize);
  if (b.size() > kMaxFrameSize) b.resize(kMaxFrameSize);
  auto put16 = [&](size_t off, uint16_t v) { std::memcpy(b.data() + off, &v, 2); };
  auto put32 = [&](size_t off, uint32_t v) { std::memcpy(b.data() + off, &v, 4); };
  put16(0, kMagic);
  b[2] = std::byte{kVersion};
  b[3] = std::byte{static_cast<uint8_t>(1 + static_cast<uint8_t>(b[3]) % kMaxMsgType)};
  if (!keep_route) {
    put16(4, 2);
    put16(6, 1);
  }
  size_t name_len = static_cast<uint8_t>(b[76]) % (kMaxNameLen + 1);
  if (kHeaderSize + name_len > b.size()) name_len = b.size() - kHeaderSize;
  b[76] = std::byte{static_cast<uint8_t>(name_len)};
  const std::string_view name(reinterpret_cast<const char*>(b.data() + kHeaderSize), name_len);
  const uint64_t id = segment_id(name);
  std::memcpy(b.data() + 16, &id, 8);
  put32(8, static_cast<uint32_t>(b.size()));
  const size_t head = kHeaderSize + name_len;
  uint32_t st = crc32c_extend(crc32c_init(), b.data() + head, b.size() - head);
  put32(kOffCrc, 0);
  st = crc32c_extend(st, b.data(), head);
  put32(kOffCrc, crc32c_final(st));
}

/// Splits fuzz input into frames: each is a 2-byte length and that many bytes.
inline std::vector<std::vector<std::byte>> split_frames(const uint8_t* data, size_t size) {
  std::vector<std::vector<std::byte>> out;
  while (size >= 2 && out.size() < 64) {
    size_t len = (size_t{data[0]} | size_t{data[1]} << 8) % (baton::wire::kMaxFrameSize + 1);
    data += 2;
    size -= 2;
    if (len > size) len = size;
    out.emplace_back(reinterpret_cast<const std::byte*>(data), reinterpret_cast<const std::byte*>(data) + len);
    data += len;
    size -= len;
  }
  return out;
}

}  // namespace baton::fuzz
