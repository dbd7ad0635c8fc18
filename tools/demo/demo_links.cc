#include "demo_links.h"

#include "loopback/loopback.h"

namespace baton::demo {

Result<std::vector<std::vector<std::unique_ptr<Link>>>> make_mesh(const std::string& transport, int nodes) {
  std::vector<std::vector<std::unique_ptr<Link>>> links(nodes);
  for (int a = 0; a < nodes; ++a)
    for (int b = a + 1; b < nodes; ++b) {
      if (transport == "loopback") {
        auto p = loopback::make_pair(a + 1, b + 1);
        links[a].push_back(std::move(p.a));
        links[b].push_back(std::move(p.b));
      } else {
        return fail(Errc::kInvalidArgument, "unknown transport '", transport, "' (loopback)");
      }
    }
  return links;
}

}  // namespace baton::demo
