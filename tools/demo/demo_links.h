#pragma once
// Builds a full mesh of links between N in-process nodes for the demo.

#include <memory>
#include <string>
#include <vector>

#include "baton/driver_sdk.h"
#include "baton/result.h"

namespace baton::demo {

/// links[i] are node i+1's links. transport: "ring" (DPDK net_ring ports) or "loopback".
Result<std::vector<std::vector<std::unique_ptr<Link>>>> make_mesh(const std::string& transport, int nodes);

}  // namespace baton::demo
