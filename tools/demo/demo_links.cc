#include "demo_links.h"

#include "baton/ethdev.h"
#include "baton/loopback.h"

namespace baton::demo {

Result<std::vector<std::vector<std::unique_ptr<Link>>>> make_mesh(const std::string& transport, int nodes) {
  if (transport != "ring" && transport != "loopback")
    return fail(Errc::kInvalidArgument, "unknown transport '", transport, "' (ring, loopback)");
  std::vector<std::vector<std::unique_ptr<Link>>> links(nodes);
  for (int a = 0; a < nodes; ++a)
    for (int b = a + 1; b < nodes; ++b) {
      const auto na = static_cast<uint16_t>(a + 1), nb = static_cast<uint16_t>(b + 1);
      if (transport == "ring") {
        auto p = ethdev::ring_pair(na, nb);
        if (!p) return tl::unexpected(p.error());
        links[a].push_back(std::move(p->first));
        links[b].push_back(std::move(p->second));
      } else {
        auto p = loopback::make_pair(na, nb);
        links[a].push_back(std::move(p.a));
        links[b].push_back(std::move(p.b));
      }
    }
  return links;
}

}  // namespace baton::demo
