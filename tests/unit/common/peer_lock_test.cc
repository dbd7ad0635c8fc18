// Same-host peer locks (runtime/peer_lock.h): the other side's robust
// mutex says its holder is gone as the holder ends, whatever the rest of
// its process does.

#include <gtest/gtest.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "runtime/peer_lock.h"
#include "runtime/proc_stat.h"

namespace baton {
namespace {

/// A LockPair in a memfd a child process maps too.
struct SharedPair {
  SharedPair() {
    fd = memfd_create("peer-lock-test", 0);  // inherited across the child's exec
    if (fd < 0 || ftruncate(fd, sizeof(LockPair)) != 0) std::abort();
    void* m = mmap(nullptr, sizeof(LockPair), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) std::abort();
    pair = static_cast<LockPair*>(m);
    if (!init_lock_pair(pair)) std::abort();
  }
  ~SharedPair() {
    munmap(pair, sizeof(LockPair));
    close(fd);
  }
  int fd = -1;
  LockPair* pair;
};

char read_byte(int fd) {
  char c = 0;
  return read(fd, &c, 1) == 1 ? c : 0;
}

// The other side, a process of its own: this test binary run again with
// BATON_PEER_LOCK_CHILD=<mode>,<memfd>,<read fd>,<write fd>. (Not a plain
// fork: a child that starts threads after a multithreaded fork is not
// supported, and ThreadSanitizer kills it.)
//   thread-ends: a thread takes side 1, says 'L', waits, ends holding it;
//                then the process says 'E' and waits.
//   holds:       PeerLock::hold(side 1), says 'H', and waits to be killed.
[[noreturn]] void child_main(const char* spec) {
  char mode[32] = {};
  int mem = -1, rd = -1, wr = -1;
  if (std::sscanf(spec, "%31[^,],%d,%d,%d", mode, &mem, &rd, &wr) != 4) _exit(2);
  void* m = mmap(nullptr, sizeof(LockPair), PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
  if (m == MAP_FAILED) _exit(3);
  auto* pair = static_cast<LockPair*>(m);
  if (std::string(mode) == "thread-ends") {
    std::thread([&] {
      if (pthread_mutex_lock(&pair->side[1]) != 0) _exit(1);
      (void)!write(wr, "L", 1);
      read_byte(rd);
    }).join();
    (void)!write(wr, "E", 1);
    read_byte(rd);
    _exit(0);
  }
  if (std::string(mode) == "holds") {
    auto b = PeerLock::hold(pair, 1);  // this process's own holder thread
    (void)!write(wr, b ? "H" : "-", 1);
    for (;;) pause();
  }
  _exit(4);
}

[[maybe_unused]] const bool kIsChild = [] {
  if (const char* spec = std::getenv("BATON_PEER_LOCK_CHILD")) child_main(spec);
  return false;
}();

/// Starts the other side in `mode`; `to_child` / `to_parent` are this
/// process's ends of two pipes (the child's ends are closed here, so a child
/// that dies reads as the end of its pipe, not a hang).
pid_t spawn_child(const char* mode, const SharedPair& s, int* to_child, int* to_parent) {
  int down[2], up[2];
  if (pipe(down) != 0 || pipe(up) != 0) return -1;
  const std::string spec = "BATON_PEER_LOCK_CHILD=" + std::string(mode) + "," + std::to_string(s.fd) + "," +
                           std::to_string(down[0]) + "," + std::to_string(up[1]);
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return -1;
  self[n] = 0;
  char* argv[] = {self, nullptr};
  char* envp[] = {const_cast<char*>(spec.c_str()), nullptr};
  const pid_t pid = fork();
  if (pid == 0) {
    execve(self, argv, envp);
    _exit(127);
  }
  close(down[0]);
  close(up[1]);
  *to_child = down[1];
  *to_parent = up[0];
  return pid;
}

TEST(PeerLock, ASideNeverHeldSaysNothingAndOneLetGoIsGone) {
  SharedPair s;
  auto a = PeerLock::hold(s.pair, 0);
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_TRUE(a->holding());
  EXPECT_FALSE(a->peer_gone()) << "a side never held is no death: the peer may be an older build, or not started";
  {
    auto b = PeerLock::hold(s.pair, 1);
    ASSERT_TRUE(b) << b.error().to_string();
    EXPECT_FALSE(a->peer_gone());
    EXPECT_FALSE(b->peer_gone());
    auto again = PeerLock::hold(s.pair, 1);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, Errc::kInvalidArgument) << "a side is held once";
  }
  EXPECT_TRUE(a->peer_gone()) << "held, then let go: the peer detached";
  auto b = PeerLock::hold(s.pair, 1);
  ASSERT_TRUE(b) << "a side let go is taken again";
  EXPECT_FALSE(a->peer_gone()) << "a successor holds it";
  EXPECT_EQ(PeerLock::hold(s.pair, 2).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(PeerLock::hold(nullptr, 0).error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(PeerLock().peer_gone()) << "an empty lock holds nothing and says nothing";
}

// The point of the lock: the holder's end shows while its process still
// lives (a dying batond's memory takes milliseconds to go, and its sockets
// close, and /proc shows a zombie, only after that). Here the holding
// thread ends and the process goes on: gone all the same.
TEST(PeerLock, AHolderThatEndsIsGoneWhileItsProcessStillLives) {
  SharedPair s;
  auto a = PeerLock::hold(s.pair, 0);
  ASSERT_TRUE(a) << a.error().to_string();
  int to_child = -1, to_parent = -1;
  const pid_t pid = spawn_child("thread-ends", s, &to_child, &to_parent);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(read_byte(to_parent), 'L');
  EXPECT_FALSE(a->peer_gone()) << "held by a live thread";
  ASSERT_EQ(write(to_child, "1", 1), 1);
  ASSERT_EQ(read_byte(to_parent), 'E');
  EXPECT_TRUE(a->peer_gone()) << "its holder ended holding it";
  const auto st = read_proc_stat("/proc/" + std::to_string(pid));
  ASSERT_TRUE(st);
  EXPECT_NE(st->state, 'Z') << "and its process lives on";
  ASSERT_EQ(write(to_child, "2", 1), 1);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(to_child);
  close(to_parent);
}

TEST(PeerLock, AKilledHolderIsGoneAndItsSuccessorTakesTheSideOver) {
  SharedPair s;
  auto a = PeerLock::hold(s.pair, 0);
  ASSERT_TRUE(a) << a.error().to_string();
  int to_child = -1, to_parent = -1;
  const pid_t pid = spawn_child("holds", s, &to_child, &to_parent);
  ASSERT_GT(pid, 0);
  const char said = read_byte(to_parent);
  if (said != 'H') {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  ASSERT_EQ(said, 'H');
  EXPECT_FALSE(a->peer_gone());
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  EXPECT_TRUE(a->peer_gone()) << "the kernel marked the dead holder's mutex";
  auto successor = PeerLock::hold(s.pair, 1);
  ASSERT_TRUE(successor) << "a side whose holder died is taken over: " << successor.error().to_string();
  EXPECT_FALSE(a->peer_gone()) << "a successor holds it";
  EXPECT_FALSE(successor->peer_gone());
  close(to_child);
  close(to_parent);
}

TEST(PeerLockFile, TwoEndsShareAFileAndABadOneIsSetUpAfresh) {
  const std::string path = "/tmp/baton-peerlock-" + std::to_string(getpid()) + ".alive";
  {
    std::ofstream(path) << "not a lock file";
  }
  auto server = PeerLockFile::open(path, 0);
  ASSERT_TRUE(server) << server.error().to_string();
  EXPECT_FALSE((*server)->peer_gone());
  {
    auto client = PeerLockFile::open(path, 1);
    ASSERT_TRUE(client) << client.error().to_string();
    EXPECT_FALSE((*server)->peer_gone());
    EXPECT_FALSE((*client)->peer_gone());
    EXPECT_EQ(PeerLockFile::open(path, 1).error().code, Errc::kInvalidArgument) << "one holder per end";
  }
  EXPECT_TRUE((*server)->peer_gone()) << "the client end went away";
  auto again = PeerLockFile::open(path, 1);
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_FALSE((*server)->peer_gone());
  EXPECT_EQ(PeerLockFile::open(path, 2).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(PeerLockFile::open("/nonexistent-dir/x.alive", 0).error().code, Errc::kIo);
  {
    // Someone holding the file's flock for long does not hold an end up:
    // it goes on without the lock (the link then works as without one).
    const std::string held = path + ".held";
    const int fd = ::open(held.c_str(), O_RDWR | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(flock(fd, LOCK_EX), 0);
    auto refused = PeerLockFile::open(held, 0);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, Errc::kIo);
    flock(fd, LOCK_UN);
    auto taken = PeerLockFile::open(held, 0);
    ASSERT_TRUE(taken) << taken.error().to_string();
    close(fd);
    taken->reset();
    EXPECT_FALSE(std::filesystem::exists(held));
  }
  if (geteuid() == 0) {  // giving a file away takes root
    // Another user's file (one who could write the other end's word) is not used.
    const std::string theirs = path + ".theirs";
    std::ofstream(theirs) << "";
    ASSERT_EQ(chown(theirs.c_str(), 65534, 65534), 0);
    auto refused = PeerLockFile::open(theirs, 0);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, Errc::kIo);
    EXPECT_NE(refused.error().message.find("owned by uid 65534"), std::string::npos) << refused.error().message;
    unlink(theirs.c_str());
  }
  again->reset();
  EXPECT_TRUE(std::filesystem::exists(path)) << "the server end still holds it";
  server->reset();
  EXPECT_FALSE(std::filesystem::exists(path)) << "the last end to let go removes the file";
  // Removed under an end that still holds it (an operator's clean-up): the
  // end lets go without making it again, and the next ends make a new one.
  auto a = PeerLockFile::open(path, 0);
  ASSERT_TRUE(a) << a.error().to_string();
  unlink(path.c_str());
  a->reset();
  EXPECT_FALSE(std::filesystem::exists(path));
  auto b = PeerLockFile::open(path, 1);
  ASSERT_TRUE(b) << b.error().to_string();
  auto c = PeerLockFile::open(path, 0);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_FALSE((*c)->peer_gone());
  b->reset();
  EXPECT_TRUE((*c)->peer_gone());
  c->reset();
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace baton
