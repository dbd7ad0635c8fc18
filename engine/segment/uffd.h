#pragma once
// What write tracking (dirty_tracker.h) and copy-on-write (copy_on_write.h)
// share: a userfaultfd with the features each asks for, registered for
// write-protect on one range.

#include <cstddef>
#include <cstdint>
#include <string>

#include "baton/result.h"

namespace baton::uffd {

/// UFFD_FEATURE_WP_UNPOPULATED (Linux 6.7): Debian 12's headers predate it;
/// the kernel is probed for it at run time.
inline constexpr uint64_t kWpUnpopulated = uint64_t{1} << 13;

/// "what: strerror(errno)".
std::string errno_text(const char* what);

/// Opens a userfaultfd (close-on-exec, non-blocking, user faults only) with
/// `features` (`feature_names` in the error) and registers
/// [base, base + len) for write-protect. Returns its descriptor, which the
/// caller closes. Errors: kUnavailable with the reason. Thread: any.
Result<int> open_write_protect(std::byte* base, uint64_t len, uint64_t features, const char* feature_names);

}  // namespace baton::uffd
