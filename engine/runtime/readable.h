#pragma once
// Waiting for one descriptor to have input, up to a deadline.

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include "runtime/futex.h"

namespace baton {

enum class Readable { kYes, kTimeout, kError };

/// Polls `fd` for input (or a hang-up, which reads as input) until
/// `deadline_ns` (now_ns() time; 0: no limit). It looks at least once,
/// even past the deadline, and polls again after EINTR; kError leaves
/// errno as poll(2) set it. Thread: any.
inline Readable wait_readable(int fd, uint64_t deadline_ns) noexcept {
  for (;;) {
    int wait_ms = -1;
    if (deadline_ns != 0) {
      const uint64_t now = now_ns();
      wait_ms = now >= deadline_ns
                    ? 0
                    : static_cast<int>(std::min<uint64_t>((deadline_ns - now + 999'999) / 1'000'000, 1'000'000));
    }
    pollfd p{fd, POLLIN, 0};
    const int n = poll(&p, 1, wait_ms);
    if (n > 0) return Readable::kYes;
    if (n < 0 && errno != EINTR) return Readable::kError;
    if (n == 0 && deadline_ns != 0 && now_ns() >= deadline_ns) return Readable::kTimeout;
  }
}

}  // namespace baton
