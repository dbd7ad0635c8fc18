#pragma once
// Control-plane error handling: Result<T> carries a value or an Error with a
// code (the same numbers the C API returns, negated) and a message.

#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace baton {

/// Error codes shared by the C++ and the C API (baton.h negates them).
enum class Errc : int {
  kOk = 0,
  kInvalidArgument = 1,  ///< null, empty, too long, out of range
  kNotFound = 2,         ///< no such segment (locally, or anywhere)
  kExists = 3,           ///< the name is owned by another application or node
  kNoMemory = 4,
  kTimeout = 5,
  kUnavailable = 6,      ///< no live peer, link down, engine stopped
  kIo = 7,               ///< a system or DPDK call failed
  kCorrupt = 8,          ///< checksum mismatch on data that was to be loaded
  kFenced = 9,           ///< a newer owner epoch exists: this node lost ownership
  kBusy = 10,            ///< the resource is in use; try again
  kInternal = 11,
  kPermission = 12,      ///< this user may not: batond's client.user / client.group, or an administrator's request
};

/// A short name for an error code ("invalid argument").
const char* errc_name(Errc code) noexcept;

struct Error {
  Errc code = Errc::kInternal;
  std::string message;

  std::string to_string() const { return std::string(errc_name(code)) + ": " + message; }
};

template <typename T>
using Result = tl::expected<T, Error>;

/// Builds the error side of a Result: `return fail(Errc::kNotFound, "no segment ", name);`
template <typename... Parts>
tl::unexpected<Error> fail(Errc code, Parts&&... parts) {
  std::string message;
  (message.append(std::forward<Parts>(parts)), ...);
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

}  // namespace baton
