#pragma once
// CRC32C (Castagnoli): ISA-L's carry-less-multiply folding from 256 bytes
// up where the build has it, the SSE4.2 crc32 instruction below that.

#include <cstddef>
#include <cstdint>
#include <span>

namespace baton {

/// Continues a CRC32C over `len` bytes. Start with crc32c_init(), finish with
/// crc32c_final(); crc32c() does all three. Thread: any.
uint32_t crc32c_extend(uint32_t state, const void* data, size_t len) noexcept;

constexpr uint32_t crc32c_init() noexcept { return 0xFFFFFFFFu; }
constexpr uint32_t crc32c_final(uint32_t state) noexcept { return state ^ 0xFFFFFFFFu; }

inline uint32_t crc32c(const void* data, size_t len) noexcept {
  return crc32c_final(crc32c_extend(crc32c_init(), data, len));
}

/// Copies `len` bytes and returns their CRC32C state extended from `state`.
/// The CRC is of what was written (the same registers, or the destination
/// read back): a source that another process changes meanwhile cannot make
/// the two disagree. From 8 KiB up the copy bypasses the cache
/// (non-temporal stores, fenced before returning): for bulk copies nobody
/// reads soon. Thread: any.
uint32_t copy_crc32c(void* dst, const void* src, size_t len, uint32_t state) noexcept;

}  // namespace baton
