// Replication over memif between two processes: this test's process is node 1
// (memif server), a baton-peer process is node 2 (client, replica). Each size
// goes out, the local copy is dropped, and it is loaded back from node 2:
// byte-exact both ways.

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>

#include "../common/cluster.h"
#include "../common/ok.h"
#include "../common/memif_node.h"

namespace baton {
namespace {

using namespace std::chrono_literals;

TEST(Memif, TwoProcessesRoundTripByteExact) {
  auto node = test::start_memif_node("net_memif0", "server");
  ASSERT_TRUE(node) << node.error().to_string();
  Engine& e = *node->engine;
  test::Process peer(node->peer_command());
  ASSERT_GT(peer.pid(), 0);
  // Two nodes: the cluster is quorate once each has seen the other.
  ASSERT_TRUE(test::eventually([&] { return e.view().quorate; })) << e.view().to_string();

  for (uint64_t size : {uint64_t{4096}, uint64_t{1} << 20, uint64_t{64} << 20}) {
    const std::string name = "memif-" + std::to_string(size);
    auto seg = e.create(name, size);
    ASSERT_TRUE(seg) << seg.error().to_string();
    auto mem = e.data(*seg);
    test::fill_pattern(mem, static_cast<uint32_t>(size) ^ 0x5a5a);
    std::vector<std::byte> want(mem.begin(), mem.end());
    auto gen = e.commit(*seg);
    ASSERT_TRUE(gen);
    ASSERT_TRUE(test::ok(e.wait_replicated(*seg, *gen, 1, 120s))) << "size " << size;
    ASSERT_TRUE(e.close(*seg));
    auto back = e.load(name);  // only node 2 has it now
    ASSERT_TRUE(back) << back.error().to_string();
    auto got = e.data(back->segment);
    ASSERT_EQ(got.size(), size);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin())) << "size " << size;
  }
  peer.kill(SIGTERM);
  EXPECT_EQ(peer.wait(), 0);
  unlink(node->socket.c_str());
}

}  // namespace
}  // namespace baton
