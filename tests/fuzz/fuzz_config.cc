// libFuzzer target: batond's TOML config (engine/daemon/config.cc). Any text
// is either a config or a clear error; it never throws or crashes.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = baton::parse_daemon_config(text, "fuzz.toml");
  if (!c && c.error().message.empty()) __builtin_trap();  // every refusal says why
  return 0;
}
