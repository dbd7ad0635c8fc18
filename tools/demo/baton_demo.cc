// baton-demo: an embedded three-node chassis in one process. Node 1 runs an
// "application" (an order book in a segment), commits batches, and dies;
// node 3 loads the latest generation from a replica and resumes. Prints a
// timeline and verifies the restored state byte-exact.

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "baton/engine.h"
#include "demo_links.h"

using namespace std::chrono;
using baton::Engine;

namespace {

struct Timeline {
  steady_clock::time_point t0 = steady_clock::now();
  void at(const char* what, const std::string& detail = {}) const {
    double ms = duration<double, std::milli>(steady_clock::now() - t0).count();
    std::printf("  %9.3f ms  %-10s %s\n", ms, what, detail.c_str());
    std::fflush(stdout);
  }
};

// The application's state: a tiny order book, laid out in the segment.
struct Order {
  uint64_t id;
  uint32_t price;
  uint32_t qty;
};
struct Book {
  uint64_t batches;
  uint64_t orders;
  Order slots[4096];
};

int fail(const char* what, const baton::Error& e) {
  std::fprintf(stderr, "baton-demo: %s: %s\n", what, e.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string transport = argc > 1 ? argv[1] : "ring";
  const int kNodes = 3;
  auto mesh = baton::demo::make_mesh(transport, kNodes);
  if (!mesh) return fail("links", mesh.error());

  std::printf("Baton demo: %d nodes over %s links, replication factor 2\n", kNodes, transport.c_str());
  std::vector<std::unique_ptr<Engine>> nodes;
  for (int i = 0; i < kNodes; ++i) {
    baton::EngineConfig c;
    c.node_id = static_cast<uint16_t>(i + 1);
    c.replication_factor = 2;
    auto e = Engine::start(c, std::move((*mesh)[i]));
    if (!e) return fail("start", e.error());
    nodes.push_back(std::move(*e));
  }
  Timeline tl;

  // Node 1: first run of the application — nothing exists yet (S11).
  auto opened = nodes[0]->open("orderbook", sizeof(Book));
  if (!opened) return fail("open on node 1", opened.error());
  tl.at("open", opened->outcome == baton::OpenOutcome::kCreated ? "node 1: no state anywhere, fresh order book"
                                                                 : "node 1: restored");
  auto* book = reinterpret_cast<Book*>(nodes[0]->data(opened->segment).data());
  uint64_t gen = 0;
  for (int batch = 1; batch <= 50; ++batch) {
    for (int i = 0; i < 64; ++i) {
      Order& o = book->slots[book->orders % 4096];
      o = Order{book->orders + 1, 1000u + static_cast<uint32_t>(batch), static_cast<uint32_t>(i + 1)};
      ++book->orders;
    }
    book->batches = batch;
    auto g = nodes[0]->commit(opened->segment);
    if (!g) return fail("commit", g.error());
    gen = *g;
  }
  tl.at("commit", "node 1: 50 batches, 3200 orders, generation " + std::to_string(gen));
  auto held = nodes[0]->wait_replicated(opened->segment, gen, baton::kDurable, seconds(10));
  if (!held) return fail("wait for replicas", held.error());
  auto st = nodes[0]->status(opened->segment);
  std::string where;
  for (auto& [node, g] : st->replicas) where += " node " + std::to_string(node);
  tl.at("durable", "generation " + std::to_string(gen) + " held by" + where);
  std::vector<std::byte> committed(nodes[0]->data(opened->segment).begin(), nodes[0]->data(opened->segment).end());

  // Node 1 fails: its engine and the application's memory are gone.
  nodes[0].reset();
  tl.at("kill", "node 1 stopped (engine, segment and application gone)");

  // Node 3 runs the application now: the same start-up call restores it.
  auto t_load = steady_clock::now();
  auto restored = nodes[2]->open("orderbook", sizeof(Book));
  if (!restored) return fail("open on node 3", restored.error());
  double load_ms = duration<double, std::milli>(steady_clock::now() - t_load).count();
  tl.at("load", "node 3: restored generation " + std::to_string(restored->generation) + " in " +
                    std::to_string(load_ms) + " ms");
  auto mem = nodes[2]->data(restored->segment);
  if (mem.size() != committed.size() || std::memcmp(mem.data(), committed.data(), mem.size()) != 0) {
    std::fprintf(stderr, "baton-demo: restored state differs from what was committed\n");
    return 1;
  }
  tl.at("verify", "byte-exact: " + std::to_string(mem.size()) + " bytes match generation " + std::to_string(gen));
  auto* book3 = reinterpret_cast<Book*>(mem.data());
  book3->batches++;
  book3->orders++;
  auto g3 = nodes[2]->commit(restored->segment);
  if (!g3) return fail("commit on node 3", g3.error());
  tl.at("resume", "node 3: batch " + std::to_string(book3->batches) + " committed as generation " +
                      std::to_string(*g3) + " (epoch " + std::to_string(nodes[2]->status(restored->segment)->epoch) +
                      ")");
  std::printf("demo: ok\n");
  return 0;
}
