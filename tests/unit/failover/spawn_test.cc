// What a process batond starts (an application, a standby instance, a
// hook, a probe) inherits: the two descriptors it is given, as 3 and 4, and
// nothing else of batond's. DPDK opens its memif sockets, memfds and
// eventfds without O_CLOEXEC; an application that inherited them could read
// other applications' frames and DPDK's memory, and one that outlived a
// killed batond held its memif listening socket, so the restarted batond
// could not bind it.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include "failover/runner.h"

namespace {

/// The descriptors the child's shell holds, and what 3 and 4 are.
std::set<std::string> child_fds(int pass_fd, int live_fd, std::string* fd3, std::string* fd4) {
  char tmpl[] = "/tmp/baton-spawn-XXXXXX";
  const int out = mkstemp(tmpl);
  EXPECT_GE(out, 0);
  close(out);
  const std::string script = std::string("exec >") + tmpl +
                             "; ls /proc/$$/fd; echo --; readlink /proc/$$/fd/3; echo --; readlink /proc/$$/fd/4";
  const pid_t pid = baton::failover::spawn_child({"/bin/sh", "-c", script}, {}, false, pass_fd, live_fd);
  EXPECT_GT(pid, 0);
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  std::ifstream in(tmpl);
  std::set<std::string> fds;
  std::string line;
  while (std::getline(in, line) && line != "--") fds.insert(line);
  std::getline(in, *fd3);
  if (*fd3 == "--") fd3->clear();
  else std::getline(in, line);
  std::getline(in, *fd4);
  unlink(tmpl);
  return fds;
}

TEST(Spawn, AChildInheritsWhatItIsGivenAndNothingElse) {
  // Descriptors batond might hold without O_CLOEXEC, as DPDK's are.
  int leaky[2];
  ASSERT_EQ(pipe(leaky), 0);
  const int leaky_event = eventfd(0, 0);
  ASSERT_GE(leaky_event, 0);
  const int pass = eventfd(0, EFD_CLOEXEC);
  int live_pipe[2];
  ASSERT_EQ(pipe2(live_pipe, O_CLOEXEC), 0);
  std::string fd3, fd4;
  const auto fds = child_fds(pass, live_pipe[0], &fd3, &fd4);
  EXPECT_EQ(fds, (std::set<std::string>{"0", "1", "2", "3", "4"}));
  EXPECT_EQ(fd3, "anon_inode:[eventfd]");
  EXPECT_NE(fd4.find("pipe:"), std::string::npos) << fd4;
  // Nothing to pass: nothing at 3 or 4 either, whatever batond has there.
  const auto none = child_fds(-1, -1, &fd3, &fd4);
  EXPECT_EQ(none, (std::set<std::string>{"0", "1", "2"}));
  for (int fd : {leaky[0], leaky[1], leaky_event, pass, live_pipe[0], live_pipe[1]}) close(fd);
}

}  // namespace
