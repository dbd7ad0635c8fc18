// A failover engine must outlive its peers. The peer process is killed with
// SIGKILL in the middle of a 16 MiB transfer, again and again; this process
// must keep running (a crash here fails the test), see the link go down, and
// replicate again once a new peer comes. Both memif roles: a surviving server
// reconnects by itself; a surviving client needs the driver's stop/start.

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "../common/cluster.h"
#include "../common/memif_node.h"

namespace baton {
namespace {

using namespace std::chrono_literals;

bool link_up(Engine& e) { return e.link_status().at(0).up; }

// Polls until the link reports `up` (the driver looks every millisecond).
bool eventually_link(Engine& e, bool up) {
  for (int i = 0; i < 3000; ++i) {
    if (link_up(e) == up) return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

void survive_kills(bool survivor_is_server, int kills, const std::string& client_args = {}) {
  static int port_seq = 0;
  const std::string my_role = survivor_is_server ? "server" : "client";
  const std::string name = "survivor-" + my_role + (client_args.empty() ? "" : "-zero-copy");
  EngineConfig c;
  c.fetch_timeout_ms = 500;
  auto node = test::start_memif_node("net_memif" + std::to_string(port_seq++), my_role, c, client_args);
  ASSERT_TRUE(node) << node.error().to_string();
  Engine& e = *node->engine;
  const std::vector<std::string> peer_cmd = node->peer_command();
  Result<Segment*> seg = tl::unexpected(Error{});
  {
    // Two nodes: the cluster is quorate (may create) once each has seen the
    // other; it stays so when the peer dies (votequorum's two_node).
    test::Process first(peer_cmd);
    ASSERT_TRUE(test::eventually([&] { return e.view().quorate; })) << e.view().to_string();
    seg = e.create(name, 16 << 20);
    ASSERT_TRUE(seg) << seg.error().to_string();
    first.kill(SIGKILL);
    first.wait();
  }
  auto mem = e.data(*seg);
  std::mt19937 rng(survivor_is_server ? 1 : 2);
  for (int k = 0; k < kills; ++k) {
    test::Process peer(peer_cmd);
    ASSERT_GT(peer.pid(), 0);
    // Keep a transfer in flight and kill the peer somewhere inside it.
    test::fill_pattern(mem, static_cast<uint32_t>(k));
    ASSERT_TRUE(e.commit(*seg));
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 200));
    peer.kill(SIGKILL);
    EXPECT_EQ(peer.wait(), 128 + SIGKILL);
    EXPECT_TRUE(eventually_link(e, false)) << "link still up after kill " << k;
    ASSERT_TRUE(e.commit(*seg)) << "engine unusable after kill " << k;
  }
  // A new peer comes: the link comes back and replication reaches it, byte-exact.
  test::Process peer(peer_cmd);
  EXPECT_TRUE(eventually_link(e, true)) << "no reconnect";
  test::fill_pattern(mem, 12345);
  auto gen = e.commit(*seg);
  ASSERT_TRUE(gen);
  auto held = e.wait_replicated(*seg, *gen, 1, 60s);
  ASSERT_TRUE(held) << held.error().to_string();
  std::vector<std::byte> want(mem.begin(), mem.end());
  ASSERT_TRUE(e.close(*seg));
  auto back = e.load(name);
  ASSERT_TRUE(back) << back.error().to_string();
  auto got = e.data(back->segment);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), got.end()));
  unlink(node->socket.c_str());
}

TEST(MemifKill, ServerSurvivesPeerKills) { survive_kills(true, 30); }
TEST(MemifKill, ClientSurvivesPeerKillsAndReconnects) { survive_kills(false, 10); }
// The client end in memif's zero-copy mode: its server copies into, and
// reads from, the client's own mbufs, which each reconnection shares anew.
TEST(MemifKill, ServerSurvivesZeroCopyClientKills) { survive_kills(true, 30, ",zero-copy=yes"); }
TEST(MemifKill, ZeroCopyClientSurvivesPeerKillsAndReconnects) { survive_kills(false, 10, ",zero-copy=yes"); }

}  // namespace
}  // namespace baton
