// libFuzzer target: the wire decoder (engine/protocol/wire.cc). Any bytes
// either decode to a frame that encodes back to the same bytes, or are
// refused with a DecodeError; nothing reads past the input.
//
// The checksum would refuse nearly every mutation before the field checks
// run, so the target mends it (and the length field) on odd-length inputs:
// both halves of the decoder get exercised.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_frames.h"
#include "protocol/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton::wire;
  std::vector<std::byte> bytes(size);
  if (size != 0) std::memcpy(bytes.data(), data, size);
  if (size % 2 == 1) baton::fuzz::mend_frame(bytes, /*keep_route=*/true);
  Frame f;
  if (decode(bytes, f) != DecodeError::kNone) return 0;
  // A frame that decodes re-encodes to the same bytes (up to its length).
  std::vector<std::byte> again(kMaxFrameSize);
  const size_t n = encode(f, again);
  if (n != f.raw.size() || std::memcmp(again.data(), f.raw.data(), n) != 0) std::abort();
  return 0;
}
