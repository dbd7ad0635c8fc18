#pragma once
// Error texts that more than one layer says (the engine and batond's
// server), so that an application reads the same words whichever refused.

#include <cstdint>
#include <string>
#include <string_view>

namespace baton {

/// An open (S11) of a segment committed in another size than it asks for.
inline std::string size_differs_text(std::string_view name, uint64_t held, uint64_t asked) {
  return "segment " + std::string(name) + " was committed with " + std::to_string(held) + " bytes, not the " +
         std::to_string(asked) + " asked for: open it with its size, or delete it to start afresh";
}

}  // namespace baton
