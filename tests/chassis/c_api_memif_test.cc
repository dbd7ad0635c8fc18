// The C API end to end between two processes over memif: register, commit,
// wait for the replica, drop the local copy, load it back byte-exact. First,
// local processes connect to the embedded memif server and hang up at once:
// the application (whose SIGPIPE is at its default) lives on.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "../common/cluster.h"
#include "../common/process.h"
#include "baton/baton.h"

namespace {

TEST(CApiMemif, RoundTripThroughAPeerProcess) {
  const std::string sock = "/tmp/baton-capi-" + std::to_string(getpid()) + ".sock";
  unlink(sock.c_str());
  const std::string link = "2=ethdev:net_memif0,role=server,socket=" + sock;
  const char* links[] = {link.c_str()};
  baton_config_t c;
  baton_config_init(&c);
  c.node_id = 1;
  baton_t* b = nullptr;
  ASSERT_EQ(baton_start(&c, links, 1, &b), 0) << baton_last_error();
  ASSERT_EQ(signal(SIGPIPE, SIG_DFL), SIG_DFL) << "the test must run with SIGPIPE at its default";
  sockaddr_un sun{};  // a file (the engine asks memif for one unless told socket-abstract=yes)
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, sock.c_str(), sock.size());
  const socklen_t len = sizeof sun;
  int connected = 0;
  for (int i = 0; i < 300; ++i) {
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    ASSERT_GE(fd, 0);
    connected += connect(fd, reinterpret_cast<sockaddr*>(&sun), len) == 0;
    close(fd);
  }
  EXPECT_GT(connected, 0);
  usleep(300000);  // the EAL interrupt thread greets, and meets their ends of file
  baton::test::Process peer({baton::test::helper("BATON_PEER"), "--node", "2", "--peer", "1", "--device",
                             "net_memif0,role=client,socket=" + sock});

  baton_segment_t* s = nullptr;
  // Two nodes: no quorum (BATON_EUNAVAIL) until each has seen the other.
  int rc = BATON_EUNAVAIL;
  for (int i = 0; i < 50 && rc == BATON_EUNAVAIL; ++i) rc = baton_register(b, "c-app", 3 << 20, &s);
  ASSERT_EQ(rc, 0) << baton_last_error();
  auto* mem = static_cast<std::byte*>(baton_segment_data(s));
  baton::test::fill_pattern({mem, size_t{3} << 20}, 77);
  std::vector<std::byte> want(mem, mem + (3 << 20));
  uint64_t gen = 0;
  ASSERT_EQ(baton_commit(s, &gen), 0);
  ASSERT_EQ(baton_wait(s, gen, 1, 60000), 0) << baton_last_error();
  ASSERT_EQ(baton_unregister(s), 0);

  uint64_t loaded_gen = 0;
  ASSERT_EQ(baton_load(b, "c-app", &s, &loaded_gen), 0) << baton_last_error();
  EXPECT_EQ(loaded_gen, gen);
  ASSERT_EQ(baton_segment_size(s), want.size());
  EXPECT_EQ(std::memcmp(baton_segment_data(s), want.data(), want.size()), 0);
  baton_stop(b);
  unlink(sock.c_str());
  unlink((sock + ".alive").c_str());  // the ends' peer lock (its ports close at exit, not before)
}

}  // namespace
