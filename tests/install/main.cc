// Built by tools/check-install.sh against an installed Baton: the public
// headers and the pkg-config file are enough to embed the engine.
#include <baton/engine.h>
#include <baton/loopback.h>
#include <cstdio>
#include <cstring>
int main() {
  auto p = baton::loopback::make_pair(1, 2);
  std::vector<std::unique_ptr<baton::Link>> a, b;
  a.push_back(std::move(p.a));
  b.push_back(std::move(p.b));
  baton::EngineConfig c;
  auto e1 = baton::Engine::start(c, std::move(a));
  c.node_id = 2;
  auto e2 = baton::Engine::start(c, std::move(b));
  auto seg = (*e1)->create("consumer", 4096);
  std::memcpy((*e1)->data(*seg).data(), "linked statically", 17);
  auto g = (*e1)->commit(*seg);
  bool ok = (*e1)->wait_replicated(*seg, *g, 1, std::chrono::seconds(5)).has_value();
  std::printf("replicated: %s\n", ok ? "yes" : "no");
  return ok ? 0 : 1;
}
