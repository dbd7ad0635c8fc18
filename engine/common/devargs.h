#pragma once
// DPDK device strings ("net_memif0,role=server,socket=/run/x.sock"): what
// the ethdev driver and batond's config check read in them.

#include <optional>
#include <string>

namespace baton {

/// The port name in `device` (DPDK devargs or a port name): up to the first comma.
inline std::string port_name(const std::string& device) { return device.substr(0, device.find(',')); }

/// The value of `key=` in devargs (its first), or nullopt.
inline std::optional<std::string> devarg(const std::string& devargs, const std::string& key) {
  for (size_t at = devargs.find(','); at != std::string::npos; at = devargs.find(',', at + 1)) {
    if (devargs.compare(at + 1, key.size() + 1, key + "=") != 0) continue;
    const size_t from = at + key.size() + 2;
    return devargs.substr(from, devargs.find(',', from) - from);
  }
  return std::nullopt;
}

}  // namespace baton
