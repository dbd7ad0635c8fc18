// Hostile applications against a real batond (issue #9, S1, S3, S11): each
// attack comes from a permitted client, on the public C API or the raw
// socket protocol, and afterwards the daemon is alive, serves every other
// application, and holds no more descriptors than before.

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../common/batond.h"
#include "../common/raw_request.h"
#include "../common/recv_reply.h"
#include "baton/baton.h"
#include "ipc/messages.h"
#include "segment/copy_on_write.h"

namespace {

using baton::ipc::CommitChannel;
using baton::ipc::Op;
using baton::ipc::Reply;
using baton::ipc::Request;
using baton::test::Batond;
using baton::test::request;
using baton::test::TempDir;

size_t fd_count(pid_t pid) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) (void)e, ++n;
  return n;
}

/// Waits until the daemon's descriptor count is back to `want` (sessions of
/// clients that left wind down asynchronously); returns the last count.
size_t settle_fds(pid_t pid, size_t want) {
  size_t now = fd_count(pid);
  for (int i = 0; i < 300 && now > want; ++i) {
    usleep(10000);
    now = fd_count(pid);
  }
  return now;
}

/// A client on the raw socket protocol: it can do what the library never would.
struct Raw {
  int fd = -1;
  explicit Raw(const std::string& path) {
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd);
      fd = -1;
    }
  }
  ~Raw() {
    if (fd >= 0) close(fd);
  }
  bool send_request(const Request& r) { return send(fd, &r, sizeof r, MSG_NOSIGNAL) == sizeof r; }
  /// Receives one reply (and any descriptors) within `timeout_ms`; status 1 if none came.
  Reply receive(std::vector<int>* fds = nullptr, int timeout_ms = 30000) {
    Reply rep{};
    rep.status = 1;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return rep;
    std::vector<char> buf(baton::ipc::kMaxReply);
    std::vector<int> got;
    const ssize_t n = baton::test::recv_with_fds(fd, buf, got);
    for (int f : got) {
      if (fds != nullptr) fds->push_back(f);
      else close(f);
    }
    if (n < static_cast<ssize_t>(sizeof rep)) return rep;
    std::memcpy(&rep, buf.data(), sizeof rep);
    return rep;
  }
  Reply call(const Request& r, std::vector<int>* fds = nullptr) {
    if (!send_request(r)) {
      Reply rep{};
      rep.status = 1;
      return rep;
    }
    return receive(fds);
  }
};

/// Runs `ask` in a child process dropped to nobody (uid and gid 65534, no
/// groups) and returns what it returned; a failure if the child could not
/// drop its privileges or report.
std::string as_nobody(const std::function<std::string()>& ask) {
  int p[2];
  if (pipe(p) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return "";
  }
  const pid_t child = fork();
  if (child < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return "";
  }
  if (child == 0) {
    close(p[0]);
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
    const std::string out = ask();
    _exit(write(p[1], out.data(), out.size()) == static_cast<ssize_t>(out.size()) ? 0 : 4);
  }
  close(p[1]);
  std::string got;
  char buf[512];
  for (ssize_t n; (n = read(p[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int status = 0;
  EXPECT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the unprivileged client could not ask: " << status;
  return got;
}

/// Another application, on the public API, opens and commits: the daemon serves.
void expect_serves(const Batond& d, const std::string& name) {
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, name.c_str(), 65536, &s, nullptr, nullptr), 0) << baton_last_error();
  std::memset(baton_segment_data(s), 0x5a, 65536);
  uint64_t g = 0;
  EXPECT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  EXPECT_GE(g, 1u);
  EXPECT_EQ(baton_wait(s, g, 0, 5000), 0) << baton_last_error();  // (a posted commit: taken)
  baton_stop(b);
}

bool alive(const Batond& d) { return kill(d.pid(), 0) == 0; }

/// Commits through a mapped channel as the client library would (post the
/// claim, bump the request, ring the doorbell), waits up to 3 s for
/// batond's answer and returns its status. `post = false` leaves the claim
/// as the previous commit left it.
int32_t commit_through(CommitChannel* ch, int doorbell, bool post = true) {
  const uint32_t seq = ch->request.load() + 1;
  if (post) ch->claim.store(baton::ipc::claim_of(seq, baton::ipc::kPosted));
  ch->request.store(seq);
  const uint64_t one = 1;
  EXPECT_EQ(write(doorbell, &one, sizeof one), static_cast<ssize_t>(sizeof one));
  for (int i = 0; i < 3000 && ch->done.load() != seq; ++i) usleep(1000);
  EXPECT_EQ(ch->done.load(), seq) << "batond did not answer the commit";
  return ch->status.load();
}

TEST(Hostile, ResizingTheSharedMemoryIsRefusedAndCannotFaultTheDaemon) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw evil(d.socket());
  std::vector<int> fds;
  Reply rep = evil.call(request(Op::kOpen, "victim", 1 << 20), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  ASSERT_EQ(fds.size(), 3u);
  // The segment and its commit channel are sealed against any size change
  // (a shrink made batond die of SIGBUS on its next commit).
  for (int fd : {fds[0], fds[1]}) {
    EXPECT_EQ(ftruncate(fd, 0), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(ftruncate(fd, 64 << 20), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_NE(fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK, 0);
  }
  // Punching holes is allowed (the pages read back as zeros): only the
  // client's own bytes suffer.
  (void)fallocate(fds[0], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 20);
  // Commit through the channel, as the library would.
  auto* ch = static_cast<CommitChannel*>(
      mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0));
  ASSERT_NE(ch, MAP_FAILED);
  EXPECT_EQ(commit_through(ch, fds[2]), 0);
  munmap(ch, sizeof(CommitChannel));
  for (int fd : fds) close(fd);
  EXPECT_TRUE(alive(d));
  expect_serves(d, "bystander");
}

// Each holder gets a doorbell of its own. With one eventfd for every
// application, a client that read it in a loop swallowed the others'
// rings, and their waiting commits took up to the commit thread's 100 ms
// nap each (an adversarial client's find). Now a thief silences only itself.
TEST(Hostile, ReadingItsDoorbellSilencesOnlyTheReader) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw thief(d.socket()), honest(d.socket());
  std::vector<int> tf, hf;
  ASSERT_EQ(thief.call(request(Op::kOpen, "thief", 65536), &tf).status, 0);
  ASSERT_EQ(honest.call(request(Op::kOpen, "honest", 65536), &hf).status, 0);
  ASSERT_EQ(tf.size(), 3u);
  ASSERT_EQ(hf.size(), 3u);
  // Not the same open file: kcmp (where the kernel has it) says so.
  const long same = syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, tf[2], hf[2]);
  if (same >= 0) {
    EXPECT_NE(same, 0) << "two applications were handed one doorbell";
  }
  // And the thief's reads never see the honest client's rings.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> stolen{0};
  std::thread steal([&] {
    const int flags = fcntl(tf[2], F_GETFL);
    fcntl(tf[2], F_SETFL, flags | O_NONBLOCK);
    while (!stop.load()) {
      uint64_t v = 0;
      if (read(tf[2], &v, sizeof v) == static_cast<ssize_t>(sizeof v)) stolen += v;
    }
  });
  auto* ch = static_cast<CommitChannel*>(
      mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, hf[1], 0));
  ASSERT_NE(ch, MAP_FAILED);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(commit_through(ch, hf[2]), 0);
  stop = true;
  steal.join();
  EXPECT_EQ(stolen.load(), 0u) << "the thief read the honest client's doorbell";
  munmap(ch, sizeof(CommitChannel));
  for (int fd : tf) close(fd);
  for (int fd : hf) close(fd);
  EXPECT_TRUE(alive(d));
}

// Copy-on-write in daemon mode hands each client a share of page states
// and an aside buffer that batond reads while it settles a snapshot. A
// client that resizes it, scribbles on every byte of it, marks pages
// "being copied" forever and claims its commits are frozen (or posted,
// pended by itself, under numbers right or wrong) harms only its own
// snapshots: batond waits for it at most 2 ms per snapshot, and refuses a
// posted commit it was not ready for.
TEST(Hostile, ACopyOnWriteShareCannotHarmTheDaemon) {
  TempDir dir;
  Batond d(1, dir.path, "", "[snapshots]\nmode = \"copy-on-write\"\n");
  Raw evil(d.socket());
  std::vector<int> fds;
  constexpr uint64_t kSize = 4 << 20;
  Reply rep = evil.call(request(Op::kOpen, "cowvictim", kSize), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  ASSERT_EQ(rep.copy_on_write, 1);
  ASSERT_EQ(fds.size(), 4u);
  struct stat st{};
  ASSERT_EQ(fstat(fds[3], &st), 0);
  EXPECT_EQ(ftruncate(fds[3], 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(fds[3], st.st_size * 2), -1);
  EXPECT_EQ(errno, EPERM);
  auto* share = static_cast<uint8_t*>(mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[3], 0));
  ASSERT_NE(share, MAP_FAILED);
  auto* ch = static_cast<CommitChannel*>(
      mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0));
  ASSERT_NE(ch, MAP_FAILED);
  std::mt19937 rng(3);
  constexpr size_t kStates = baton::CowShare::kStatesOffset;
  const size_t states = kStates + kSize / 4096;
  uint64_t generation = 0;
  for (int round = 0; round < 30; ++round) {
    ch->written_count.store(round % 2 == 0 ? baton::ipc::kWrittenAll : 0);
    // A lie either way: nothing is protected. Every third is posted, as
    // pended by the client, under the next number, a wrong one or none.
    const bool posted = round % 3 == 2;
    ch->frozen.store(posted ? 2 : round % 3 == 0 ? 7 : 1);
    ch->expect_generation.store(round % 2 == 0 ? generation + 1 : rng());
    const auto start = std::chrono::steady_clock::now();
    const int32_t status = commit_through(ch, fds[2]);
    if (!posted) {
      EXPECT_EQ(status, 0) << "round " << round;
    } else if (round % 2 == 1) {
      EXPECT_NE(status, 0) << "round " << round << ": a number that does not follow";
    }
    if (status == 0) generation = ch->generation.load();
    // Every page pending now: mark them all "being copied", or garbage.
    for (size_t i = kStates; i < states; ++i) share[i] = round % 2 == 0 ? 2 : static_cast<uint8_t>(rng());
    std::memset(share, static_cast<int>(rng()), kStates);  // the header too
    if (round == 10) (void)fallocate(fds[3], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, st.st_size);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2)) << "round " << round;
  }
  // Settling the last one, and the next open's new share, wait no longer.
  munmap(ch, sizeof(CommitChannel));
  munmap(share, st.st_size);
  for (int fd : fds) close(fd);
  close(evil.fd);  // the hostile application leaves
  evil.fd = -1;
  EXPECT_TRUE(alive(d));
  expect_serves(d, "bystander");
  // The segment itself serves the next, honest application: its share is
  // a new one, and what it commits comes back exactly.
  std::vector<unsigned char> want(kSize);
  for (int session = 0; session < 2; ++session) {
    baton_t* b = nullptr;
    ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
    baton_segment_t* seg = nullptr;
    ASSERT_EQ(baton::test::open_when_free(b, "cowvictim", kSize, &seg, nullptr, nullptr), 0) << baton_last_error();
    auto* mem = static_cast<unsigned char*>(baton_segment_data(seg));
    if (session == 1) {
      EXPECT_EQ(std::memcmp(mem, want.data(), kSize), 0) << "the honest application's generation came back torn";
    } else {
      for (auto& byte : want) byte = static_cast<unsigned char>(rng());
      std::memcpy(mem, want.data(), kSize);
      ASSERT_EQ(baton_commit(seg, nullptr), 0) << baton_last_error();
      mem[12345] ^= 0xff;  // after the commit: no generation
    }
    baton_stop(b);
  }
}

TEST(Hostile, GarbageInTheCommitChannelHarmsOnlyItsWriter) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw evil(d.socket());
  std::vector<int> fds;
  Reply rep = evil.call(request(Op::kOpen, "scribbler", 4096), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  ASSERT_EQ(fds.size(), 3u);
  auto* words = static_cast<uint32_t*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0));
  ASSERT_NE(words, MAP_FAILED);
  std::mt19937 rng(7);
  const uint64_t one = 1;
  for (int i = 0; i < 20000; ++i) {
    words[rng() % 1024] = rng();  // every field of the channel, and past it
    if (i % 16 == 0) (void)!write(fds[2], &one, sizeof one);
  }
  munmap(words, 4096);
  for (int fd : fds) close(fd);
  EXPECT_TRUE(alive(d));
  expect_serves(d, "bystander");
}

TEST(Hostile, LyingAboutWhatWasWrittenFailsOnlyThatCommit) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw evil(d.socket());
  std::vector<int> fds;
  Reply rep = evil.call(request(Op::kOpen, "liar", 1 << 20), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  ASSERT_EQ(fds.size(), 3u);
  auto* ch = static_cast<CommitChannel*>(
      mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0));
  ASSERT_NE(ch, MAP_FAILED);
  auto commit = [&](uint32_t count, uint64_t off, uint64_t len) {
    ch->written_count.store(count);
    for (uint32_t i = 0; i < std::min(count, baton::ipc::kMaxWritten); ++i) {
      ch->written[2 * i].store(off);
      ch->written[2 * i + 1].store(len);
    }
    return commit_through(ch, fds[2]);
  };
  EXPECT_EQ(commit(baton::ipc::kMaxWritten + 1, 0, 1), BATON_EINVAL) << "more ranges than the channel holds";
  EXPECT_EQ(commit(3, (1 << 20) - 1, 2), BATON_EINVAL) << "a range past the end";
  EXPECT_EQ(commit(1, UINT64_MAX, UINT64_MAX), BATON_EINVAL) << "a range that wraps";
  EXPECT_EQ(commit(baton::ipc::kMaxWritten, 4096, 1), 0) << "many ranges, all fine";
  EXPECT_EQ(commit(0, 0, 0), 0) << "nothing written";
  EXPECT_EQ(commit(baton::ipc::kWrittenAll, 0, 0), 0) << "everything written";
  // A request whose claim was not posted (still "taken" from the last
  // one) is not taken again: only this client's commit is lost.
  EXPECT_EQ(commit_through(ch, fds[2], false), BATON_EUNAVAIL);
  EXPECT_EQ(commit(baton::ipc::kWrittenAll, 0, 0), 0) << "posted properly again";
  munmap(ch, sizeof(CommitChannel));
  for (int fd : fds) close(fd);
  EXPECT_TRUE(alive(d));
  expect_serves(d, "bystander");
}

// Posted commits (CommitLog): the slots are the client's memory, and batond
// copies everything out and checks it before it uses any of it. Ranges
// past the segment, more ranges or bytes than a slot holds, bytes that do
// not add up, a generation that does not follow, a head moved far past
// the tail: each refuses that slot alone (counted in `failures`, the
// generation batond has in `committed`); after a refused commit that had
// already changed batond's copy, only a post of the whole segment is taken.
TEST(Hostile, LiesInPostedCommitsRefuseOnlyThoseCommits) {
  using baton::ipc::kLogSlots;
  TempDir dir;
  Batond d(1, dir.path);
  Raw evil(d.socket());
  std::vector<int> fds;
  constexpr uint64_t kSize = 64 * 1024;
  Reply rep = evil.call(request(Op::kOpen, "poster", kSize), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  ASSERT_EQ(fds.size(), 3u);
  auto* ch = static_cast<CommitChannel*>(
      mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0));
  ASSERT_NE(ch, MAP_FAILED);
  auto& log = ch->log;
  const uint64_t one = 1;
  // Posts one slot (or moves the head by `advance`) and waits for batond
  // to take it; returns whether it was refused.
  auto post = [&](uint64_t gen, std::vector<std::pair<uint64_t, uint64_t>> ranges, uint32_t bytes,
                  uint32_t advance = 1) {
    const uint32_t head = log.head.load();
    auto& slot = log.slots[head % kLogSlots];
    slot.generation.store(gen);
    slot.count.store(static_cast<uint32_t>(ranges.size()));
    for (size_t i = 0; i < ranges.size() && i < baton::ipc::kLogRanges; ++i) {
      slot.ranges[2 * i].store(ranges[i].first);
      slot.ranges[2 * i + 1].store(ranges[i].second);
    }
    slot.bytes.store(bytes);
    std::memset(slot.data, static_cast<int>(gen), std::min<uint64_t>(bytes, baton::ipc::kLogSlotBytes));
    const uint32_t failures = log.failures.load();
    log.head.store(head + advance);
    EXPECT_EQ(write(fds[2], &one, sizeof one), static_cast<ssize_t>(sizeof one));
    for (int i = 0; i < 3000 && log.tail.load() != head + advance; ++i) usleep(1000);
    EXPECT_EQ(log.tail.load(), head + advance) << "batond did not take the post";
    return log.failures.load() != failures;
  };
  EXPECT_FALSE(post(1, {{0, 4096}}, 4096)) << "a good post";
  EXPECT_EQ(log.committed.load(), 1u);
  EXPECT_TRUE(post(2, {{kSize - 1, 2}}, 2)) << "a range past the end";
  EXPECT_TRUE(post(2, {{UINT64_MAX, 2}}, 2)) << "a range that wraps";
  EXPECT_TRUE(post(2, {{0, 4096}}, 4000)) << "ranges longer than the bytes";
  EXPECT_TRUE(post(2, {{0, 4096}}, 8192)) << "bytes beyond the ranges";
  EXPECT_TRUE(post(2, std::vector<std::pair<uint64_t, uint64_t>>(baton::ipc::kLogRanges + 1, {0, 1}),
                   baton::ipc::kLogRanges + 1))
      << "more ranges than a slot holds";
  EXPECT_TRUE(post(2, {{0, kSize}}, UINT32_MAX)) << "more bytes than a slot holds";
  EXPECT_TRUE(post(2, {{0, 4096}}, 4096, 1000)) << "a head far past the tail";
  EXPECT_EQ(log.committed.load(), 1u) << "a refused post became a generation";
  EXPECT_FALSE(post(2, {{4096, 4096}}, 4096)) << "a good post after all that";
  EXPECT_TRUE(post(7, {{0, 4096}}, 4096)) << "a generation that does not follow";
  EXPECT_TRUE(post(3, {{0, 4096}}, 4096)) << "batond's copy took the refused bytes: only all of it now";
  EXPECT_FALSE(post(3, {{0, kSize}}, kSize)) << "the whole segment";
  EXPECT_EQ(log.committed.load(), 3u);
  // Garbage in every field of the log, while batond takes it.
  std::mt19937 rng(5);
  auto* words = reinterpret_cast<uint32_t*>(&log);
  for (int i = 0; i < 20000; ++i) {
    words[rng() % (sizeof log / 4)] = rng();
    if (i % 16 == 0) (void)!write(fds[2], &one, sizeof one);
  }
  munmap(ch, sizeof(CommitChannel));
  for (int fd : fds) close(fd);
  close(evil.fd);
  evil.fd = -1;
  EXPECT_TRUE(alive(d));
  expect_serves(d, "bystander");
  // The next, honest application gets generation 3 back, exactly (its
  // first 4 KiB from post 2, the rest from the whole post 3 ... all 3s).
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  baton_segment_t* seg = nullptr;
  uint64_t restored = 0;
  ASSERT_EQ(baton::test::open_when_free(b, "poster", kSize, &seg, nullptr, &restored), 0) << baton_last_error();
  EXPECT_GE(restored, 3u);
  if (restored == 3) {
    const auto* mem = static_cast<const unsigned char*>(baton_segment_data(seg));
    EXPECT_EQ(std::count(mem, mem + kSize, 3), static_cast<long>(kSize));
  }
  baton_stop(b);
}

// An application that held a segment and left keeps its mappings: its old
// commit channel is no longer the one batond reads, so what it posts or
// requests there after the next application opened the name never becomes
// a generation of that application's.
TEST(Hostile, AFormerHolderCannotCommitInTheNewHoldersName) {
  using baton::ipc::kLogSlots;
  TempDir dir;
  Batond d(1, dir.path);
  constexpr uint64_t kSize = 4096;
  CommitChannel* old = nullptr;
  int doorbell = -1;
  {
    Raw first(d.socket());
    std::vector<int> fds;
    Reply rep = first.call(request(Op::kOpen, "handed", kSize), &fds);
    ASSERT_EQ(rep.status, 0) << rep.message;
    ASSERT_EQ(fds.size(), 3u);
    old = static_cast<CommitChannel*>(
        mmap(nullptr, sizeof(CommitChannel), PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0));
    ASSERT_NE(old, MAP_FAILED);
    doorbell = fds[2];
    close(fds[0]);
    close(fds[1]);
  }  // the first application leaves (its connection closes), keeping the mapping
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  baton_segment_t* seg = nullptr;
  ASSERT_EQ(baton::test::open_when_free(b, "handed", kSize, &seg, nullptr, nullptr), 0) << baton_last_error();
  auto* mem = static_cast<unsigned char*>(baton_segment_data(seg));
  std::memset(mem, 0x11, kSize);
  uint64_t g = 0;
  ASSERT_EQ(baton_commit(seg, &g), 0) << baton_last_error();
  ASSERT_EQ(baton_wait(seg, g, 0, 5000), 0) << baton_last_error();
  // The former holder posts the next generation, and requests a commit.
  auto& log = old->log;
  auto& slot = log.slots[log.head.load() % kLogSlots];
  slot.generation.store(g + 1);
  slot.count.store(1);
  slot.ranges[0].store(0);
  slot.ranges[1].store(kSize);
  slot.bytes.store(kSize);
  std::memset(slot.data, 0x66, kSize);
  log.head.fetch_add(1);
  old->claim.store(baton::ipc::claim_of(old->request.load() + 1, baton::ipc::kPosted));
  old->written_count.store(baton::ipc::kWrittenAll);
  old->request.fetch_add(1);
  const uint64_t one = 1;
  (void)!write(doorbell, &one, sizeof one);
  usleep(100'000);
  // The new holder's next commit is the next generation, and its bytes.
  std::memset(mem, 0x22, kSize);
  ASSERT_EQ(baton_commit(seg, &g), 0) << baton_last_error();
  EXPECT_EQ(baton_wait(seg, g, 0, 5000), 0) << baton_last_error();
  baton_stop(b);
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0) << baton_last_error();
  uint64_t restored = 0;
  ASSERT_EQ(baton::test::open_when_free(b, "handed", kSize, &seg, nullptr, &restored), 0) << baton_last_error();
  EXPECT_EQ(restored, g);
  const auto* back = static_cast<const unsigned char*>(baton_segment_data(seg));
  EXPECT_EQ(std::count(back, back + kSize, 0x22), static_cast<long>(kSize)) << "the former holder's bytes came back";
  baton_stop(b);
  munmap(old, sizeof(CommitChannel));
  close(doorbell);
  EXPECT_TRUE(alive(d));
}

TEST(Hostile, AWaitDelaysNoOtherApplicationAndEndsWhenItsClientLeaves) {
  TempDir dir;
  Batond d(1, dir.path);
  // A single node has no replicas: nothing it commits becomes durable, so a
  // wait for durability lasts its whole timeout.
  baton_t* a = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &a), 0);
  baton_segment_t* sa = nullptr;
  ASSERT_EQ(baton_open(a, "waiter", 4096, &sa, nullptr, nullptr), 0) << baton_last_error();
  uint64_t g = 0;
  ASSERT_EQ(baton_commit(sa, &g), 0);
  baton_stop(a);  // the segment stays (S3); the raw client below takes it
  const size_t fds_before = settle_fds(d.pid(), fd_count(d.pid()));

  Raw waiter(d.socket());
  std::vector<int> fds;
  Reply rep = waiter.call(request(Op::kOpen, "waiter", 4096), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  for (int fd : fds) close(fd);
  Request w = request(Op::kWait);
  w.handle = rep.handle;
  w.generation = rep.generation;
  w.k = BATON_DURABLE;
  w.timeout_ms = 50'000;
  ASSERT_TRUE(waiter.send_request(w));

  // While that wait is outstanding, another application opens, commits,
  // asks for status and closes: all of it is answered.
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
  baton_segment_t* sb = nullptr;
  ASSERT_EQ(baton_open(b, "busy", 65536, &sb, nullptr, nullptr), 0) << baton_last_error();
  for (int i = 1; i <= 200; ++i) {
    std::memset(baton_segment_data(sb), i, 65536);
    ASSERT_EQ(baton_commit(sb, &g), 0) << baton_last_error();
    ASSERT_EQ(g, static_cast<uint64_t>(i));
  }
  ASSERT_EQ(baton_unregister(sb), 0) << baton_last_error();
  baton_stop(b);
  pollfd p{waiter.fd, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 0), 0) << "the wait was answered before its timeout: the test proves nothing";

  // The waiter hangs up: the daemon ends its wait and its session.
  close(waiter.fd);
  waiter.fd = -1;
  EXPECT_LE(settle_fds(d.pid(), fds_before), fds_before) << "the abandoned wait's session lingers";
  expect_serves(d, "after");
}

TEST(Hostile, TheDaemonBoundsEveryWait) {
  TempDir dir;
  Batond d(1, dir.path, "max_wait_ms = 300\n");
  expect_serves(d, "bounded");  // generation 1, never durable on a single node
  Raw c(d.socket());
  std::vector<int> fds;
  Reply rep = c.call(request(Op::kOpen, "bounded", 65536), &fds);  // the size expect_serves committed
  ASSERT_EQ(rep.status, 0) << rep.message;
  ASSERT_EQ(rep.generation, 1u);
  for (int fd : fds) close(fd);
  Request w = request(Op::kWait);
  w.handle = rep.handle;
  w.generation = 1;
  w.k = BATON_DURABLE;
  w.timeout_ms = UINT32_MAX;  // 49 days
  ASSERT_TRUE(c.send_request(w));
  Reply got = c.receive(nullptr, 20'000);
  EXPECT_EQ(got.status, BATON_ETIMEDOUT) << got.message;
  EXPECT_NE(std::string(got.message).find("max_wait_ms"), std::string::npos) << got.message;
}

TEST(Hostile, AnotherApplicationsHandleIsNotYours) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw owner(d.socket()), thief(d.socket());
  std::vector<int> fds;
  Reply rep = owner.call(request(Op::kOpen, "mine", 4096), &fds);
  ASSERT_EQ(rep.status, 0) << rep.message;
  for (int fd : fds) close(fd);
  Request w = request(Op::kWait);
  w.handle = rep.handle;
  w.k = BATON_DURABLE;
  w.timeout_ms = 10'000;
  Reply got = thief.call(w);
  EXPECT_EQ(got.status, BATON_EINVAL) << got.message;
  Request c = request(Op::kClose);
  c.handle = rep.handle;
  got = thief.call(c);
  EXPECT_EQ(got.status, BATON_EINVAL) << got.message;
  // Guessing handles gets nothing either.
  for (uint32_t h = 0; h < 64; ++h) {
    c.handle = h;
    got = thief.call(c);
    EXPECT_EQ(got.status, BATON_EINVAL) << h << ": " << got.message;
  }
  // Nor can it open the name while it is held.
  got = thief.call(request(Op::kOpen, "mine", 4096));
  EXPECT_EQ(got.status, BATON_EEXIST) << got.message;
  // The owner still holds it and closes it.
  c.handle = rep.handle;
  got = owner.call(c);
  EXPECT_EQ(got.status, 0) << got.message;
}

TEST(Hostile, BadMetricsAreRefusedAndHarmNothing) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw app(d.socket());
  auto metric = [&](const std::string& name, double value) {
    Request r = request(Op::kMetric, name);
    std::memcpy(&r.generation, &value, sizeof value);
    return app.call(r);
  };
  EXPECT_EQ(metric("latency_ms", 1.5).status, 0);  // no service groups here: taken and dropped
  EXPECT_EQ(metric("latency_ms", std::nan("")).status, BATON_EINVAL);
  EXPECT_EQ(metric("latency_ms", INFINITY).status, BATON_EINVAL);
  EXPECT_EQ(metric("", 1).status, BATON_EINVAL);
  EXPECT_EQ(metric("two words", 1).status, BATON_EINVAL);
  EXPECT_EQ(metric(std::string(1, '\x01'), 1).status, BATON_EINVAL);
  // The session and the daemon serve on.
  std::vector<int> fds;
  Reply rep = app.call(request(Op::kOpen, "after", 4096), &fds);
  EXPECT_EQ(rep.status, 0) << rep.message;
  for (int fd : fds) close(fd);
}

// A library of another protocol version (an application not rebuilt after
// batond was upgraded) hears which versions differ, and the session serves
// on for a request of the right one.
TEST(Hostile, AnotherProtocolVersionIsRefusedByName) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw app(d.socket());
  Request old = request(Op::kOpen, "versioned", 4096);
  old.version = baton::ipc::kVersion - 1;
  Reply rep = app.call(old);
  EXPECT_EQ(rep.status, BATON_EINVAL);
  EXPECT_NE(std::string(rep.message).find("protocol version " + std::to_string(baton::ipc::kVersion - 1)),
            std::string::npos)
      << rep.message;
  std::vector<int> fds;
  rep = app.call(request(Op::kOpen, "versioned", 4096), &fds);
  EXPECT_EQ(rep.status, 0) << rep.message;
  for (int fd : fds) close(fd);
}

// An agent's take-over (kTakeOver, batonctl load): bad names are refused,
// no descriptor is handed out, and the segment it took stays free for the
// application, whose open gets the same generation.
/// An application opens `name` (4 KiB), commits it once (`*gen`) and leaves.
void commit_once_and_leave(const Batond& d, const char* name, uint64_t* gen) {
  baton_t* a = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &a), 0);
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(a, name, 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  ASSERT_EQ(baton_commit(s, gen), 0) << baton_last_error();
  baton_stop(a);
}

/// A take-over of `name`, asked again every 10 ms (up to 2 s) while the
/// application that held it is still winding down (EEXIST).
Reply take_over_when_free(Raw& agent, const std::string& name, std::vector<int>* fds = nullptr) {
  Reply rep{};
  for (int i = 0; i < 200; ++i) {
    if (fds != nullptr) fds->clear();
    rep = agent.call(request(Op::kTakeOver, name), fds);
    if (rep.status != BATON_EEXIST) break;
    usleep(10000);
  }
  return rep;
}

TEST(Hostile, ATakeOverHandsOutNothingAndRefusesBadNames) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw agent(d.socket());
  for (const std::string& bad : {std::string(), std::string("two words"), std::string(1, '\x01')}) {
    std::vector<int> fds;
    const Reply rep = agent.call(request(Op::kTakeOver, bad), &fds);
    EXPECT_EQ(rep.status, BATON_EINVAL) << "\"" << bad << "\": " << rep.message;
    EXPECT_TRUE(fds.empty());
  }
  // A name nobody holds: nothing to take over (batonctl load's exit 3).
  std::vector<int> none;
  EXPECT_EQ(agent.call(request(Op::kTakeOver, "nowhere"), &none).status, BATON_ENOENT);
  EXPECT_TRUE(none.empty());
  // A segment this node holds, free: taken over, nothing handed out, and
  // still free for an application.
  uint64_t gen = 0;
  ASSERT_NO_FATAL_FAILURE(commit_once_and_leave(d, "kept", &gen));
  std::vector<int> fds;
  const Reply rep = take_over_when_free(agent, "kept", &fds);
  EXPECT_EQ(rep.status, 0) << rep.message;
  EXPECT_EQ(rep.generation, gen);
  EXPECT_TRUE(fds.empty()) << "a take-over maps nothing into the agent";
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
  baton_segment_t* s = nullptr;
  int restored = 0;
  uint64_t got = 0;
  EXPECT_EQ(baton_open(b, "kept", 4096, &s, &restored, &got), 0) << baton_last_error();
  EXPECT_EQ(got, gen);
  baton_stop(b);
}

// A take-over keeps the segment on this node for no user, past every
// per-user bound: only an administrator may ask for one. The tests run as
// root, so the asking client drops to nobody first.
TEST(Hostile, OnlyAnAdministratorTakesASegmentOver) {
  TempDir dir;
  Batond d(1, dir.path, "user = \"nobody\"\n");  // an application may run as nobody
  uint64_t gen = 0;
  ASSERT_NO_FATAL_FAILURE(commit_once_and_leave(d, "kept", &gen));
  // Let nobody connect at all: through the directory, onto the socket.
  ASSERT_EQ(chmod(dir.path.c_str(), 0711), 0);
  ASSERT_EQ(chmod(d.socket().c_str(), 0666), 0);
  const std::string said = as_nobody([&] {
    Raw agent(d.socket());
    if (agent.fd < 0) _exit(3);
    std::vector<int> fds;
    const Reply rep = agent.call(request(Op::kTakeOver, "kept"), &fds);
    // As an application, it is served.
    std::vector<int> own_fds;
    const Reply own = agent.call(request(Op::kOpen, "its-own", 4096), &own_fds);
    const int32_t out[3] = {rep.status, static_cast<int32_t>(fds.size()), own.status};
    return std::string(reinterpret_cast<const char*>(out), sizeof out);
  });
  int32_t got[3] = {1, -1, 1};
  ASSERT_EQ(said.size(), sizeof got);
  std::memcpy(got, said.data(), sizeof got);
  EXPECT_EQ(got[0], BATON_EPERM) << "a take-over by nobody";
  EXPECT_EQ(got[1], 0) << "descriptors handed to nobody's take-over";
  EXPECT_EQ(got[2], 0) << "nobody's own open";
  // Root may: the segment is still there and free.
  Raw root(d.socket());
  const Reply rep = take_over_when_free(root, "kept");
  EXPECT_EQ(rep.status, 0) << rep.message;
  EXPECT_EQ(rep.generation, gen);
  EXPECT_TRUE(alive(d));
}

// A segment kept after its application left is its user's: another user
// batond lets in can neither open, load nor delete it (each gets
// BATON_EPERM with the owner's uid), and its owner finds it as committed.
// (It used to be anyone's: nobody read root's data and deleted it.)
TEST(Hostile, AnotherUsersKeptSegmentIsNotYours) {
  TempDir dir;
  Batond d(1, dir.path, "user = \"nobody\"\n");
  uint64_t gen = 0;
  ASSERT_NO_FATAL_FAILURE(commit_once_and_leave(d, "roots", &gen));
  ASSERT_EQ(chmod(dir.path.c_str(), 0711), 0);
  ASSERT_EQ(chmod(d.socket().c_str(), 0666), 0);
  const std::string said = as_nobody([&] {
    baton_t* b = nullptr;
    if (baton_connect(d.socket().c_str(), &b) != 0) _exit(3);
    baton_segment_t* s = nullptr;
    int32_t out[4] = {};
    for (int i = 0; i < 200 && (out[0] = baton_open(b, "roots", 4096, &s, nullptr, nullptr)) == BATON_EEXIST; ++i)
      usleep(10000);  // root's application still winding down
    uint64_t g = 0;
    out[1] = baton_load(b, "roots", &s, &g);
    out[2] = baton_delete(b, "roots");
    out[3] = std::string(baton_last_error()).find("uid 0") != std::string::npos;
    baton_stop(b);
    return std::string(reinterpret_cast<const char*>(out), sizeof out);
  });
  int32_t got[4] = {1, 1, 1, 0};
  ASSERT_EQ(said.size(), sizeof got);
  std::memcpy(got, said.data(), sizeof got);
  EXPECT_EQ(got[0], BATON_EPERM) << "nobody opened root's segment";
  EXPECT_EQ(got[1], BATON_EPERM) << "nobody loaded root's segment";
  EXPECT_EQ(got[2], BATON_EPERM) << "nobody deleted root's segment";
  EXPECT_EQ(got[3], 1) << "the refusal names the owner";
  baton_t* a = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &a), 0);
  baton_segment_t* s = nullptr;
  int restored = 0;
  uint64_t g = 0;
  ASSERT_EQ(baton_open(a, "roots", 4096, &s, &restored, &g), 0) << baton_last_error();
  EXPECT_EQ(restored, 1);
  EXPECT_EQ(g, gen);
  baton_stop(a);
  EXPECT_TRUE(alive(d));
}

// batond takes its socket's path only if nothing is there or a stale
// socket is: a file, a directory or another program's live socket there
// is refused (exit 2, at --check too) and left as it was. (It used to
// rename its socket over whatever was there: a user's file, gone.)
TEST(Hostile, BatondReplacesNothingButAStaleSocket) {
  TempDir dir;
  const std::string path = dir.path + "/taken";
  { std::ofstream(path) << "precious\n"; }
  const std::string config = dir.path + "/b.toml";
  { std::ofstream(config) << "[node]\nid = 7\n[client]\nsocket = \"" << path << "\"\n"; }
  auto run = [&](const char* extra) {
    // Bounded: a batond that took the path would serve until stopped.
    const std::string cmd = "timeout -s KILL 20 " + baton::test::helper("BATOND") + " --config " + config + " " +
                            extra + " > " + dir.path + "/out 2>&1";
    const int st = std::system(cmd.c_str());
    std::ifstream in(dir.path + "/out");
    std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return std::make_pair(WIFEXITED(st) ? WEXITSTATUS(st) : -1, said);
  };
  for (const char* extra : {"--check", ""}) {
    const auto [rc, said] = run(extra);
    EXPECT_EQ(rc, 2) << extra << ": " << said;
    EXPECT_NE(said.find("is not a socket"), std::string::npos) << said;
  }
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "precious") << "the file batond found there";
  // Another program's live socket (a stream listener): refused, kept.
  ASSERT_EQ(unlink(path.c_str()), 0);
  const int l = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(l, 1), 0);
  const auto [rc, said] = run("--check");
  EXPECT_EQ(rc, 2) << said;
  EXPECT_NE(said.find("another program listens"), std::string::npos) << said;
  const int c = socket(AF_UNIX, SOCK_STREAM, 0);
  EXPECT_EQ(connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << "its socket is still there";
  close(c);
  close(l);
  // Now stale (nobody listens): batond may take it.
  const auto [rc2, said2] = run("--check");
  EXPECT_EQ(rc2, 0) << said2;
}

// A user batond does not let in (client.user / client.group) is refused at
// connect, with its own code and the reason; root is served meanwhile.
TEST(Hostile, AUserNotLetInIsRefusedAtConnect) {
  TempDir dir;
  Batond d(1, dir.path);  // no client.user: root and batond's user only
  ASSERT_EQ(chmod(dir.path.c_str(), 0711), 0);
  ASSERT_EQ(chmod(d.socket().c_str(), 0666), 0);
  const std::string said = as_nobody([&] {
    baton_t* b = nullptr;
    const int rc = baton_connect(d.socket().c_str(), &b);
    return std::to_string(rc) + " " + std::to_string(b == nullptr) + " " + baton_last_error();
  });
  EXPECT_EQ(said.rfind(std::to_string(BATON_EPERM) + " 1 ", 0), 0u) << said;
  EXPECT_NE(said.find("client.user"), std::string::npos) << said;
  EXPECT_STREQ(baton_strerror(BATON_EPERM), "permission denied");
  expect_serves(d, "roots");
}

// A batond stopped (SIGSTOP) when an application connects: the connect
// goes ahead after a moment instead of waiting for it, and once batond
// runs again the connection serves (its late greeting is not taken for
// the first request's answer).
TEST(Hostile, AConnectToAStoppedBatondGoesAheadAndServesOnceItRuns) {
  TempDir dir;
  Batond d(1, dir.path);
  ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
  baton_t* b = nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = baton_connect(d.socket().c_str(), &b);
  const auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(kill(d.pid(), SIGCONT), 0);
  ASSERT_EQ(rc, 0) << baton_last_error();
  EXPECT_LT(waited, std::chrono::seconds(10)) << "the connect waited for the stopped batond";
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(b, "after-stop", 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  std::memset(baton_segment_data(s), 7, 4096);
  uint64_t g = 0;
  EXPECT_EQ(baton_commit(s, &g), 0) << baton_last_error();
  EXPECT_EQ(g, 1u);
  baton_stop(b);
}

// SOCK_SEQPACKET reads an empty message as it reads the end of the
// stream; batond tells them apart by whether the client hung up.
TEST(Hostile, AnEmptyMessageIsAnsweredNotTakenForAHangUp) {
  TempDir dir;
  Batond d(1, dir.path);
  Raw client(d.socket());
  ASSERT_GE(client.fd, 0);
  std::vector<int> fds;
  ASSERT_EQ(client.call(request(Op::kOpen, "mine", 4096), &fds).status, 0);
  for (int f : fds) close(f);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(send(client.fd, "", 0, MSG_NOSIGNAL), 0);
    const Reply rep = client.receive(nullptr, 5000);
    EXPECT_EQ(rep.status, BATON_EINVAL) << rep.message;
    EXPECT_NE(std::string(rep.message).find("size 0"), std::string::npos) << rep.message;
  }
  // Still its session: the segment is still held by it.
  fds.clear();
  const Reply again = client.call(request(Op::kOpen, "mine", 4096), &fds);
  for (int f : fds) close(f);
  EXPECT_EQ(again.status, BATON_EEXIST) << again.message;
  EXPECT_NE(std::string(again.message).find("already open in this application"), std::string::npos) << again.message;
  EXPECT_TRUE(alive(d));
}

TEST(Hostile, SizesAreCheckedTheSameWayWhateverTheBladeHolds) {
  TempDir dir;
  Batond d(1, dir.path);
  baton_t* a = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &a), 0);
  baton_segment_t* s = nullptr;
  ASSERT_EQ(baton_open(a, "held", 4096, &s, nullptr, nullptr), 0) << baton_last_error();
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
  for (const char* name : {"held", "fresh"})
    for (uint64_t size : {uint64_t{0}, UINT64_MAX, uint64_t{1} << 40}) {
      baton_segment_t* t = nullptr;
      EXPECT_EQ(baton_open(b, name, size, &t, nullptr, nullptr), BATON_EINVAL) << name << " size " << size;
    }
  // The daemon checks, not only the library.
  Raw raw(d.socket());
  for (const char* name : {"held", "fresh"})
    for (uint64_t size : {uint64_t{0}, UINT64_MAX}) {
      Reply got = raw.call(request(Op::kOpen, name, size));
      EXPECT_EQ(got.status, BATON_EINVAL) << name << " size " << size << ": " << got.message;
      got = raw.call(request(Op::kCreate, name, size));
      EXPECT_EQ(got.status, BATON_EINVAL) << name << " size " << size << ": " << got.message;
    }
  baton_stop(a);  // released: the same checks hold for a name the blade holds unheld
  for (uint64_t size : {uint64_t{0}, UINT64_MAX}) {
    baton_segment_t* t = nullptr;
    EXPECT_EQ(baton_open(b, "held", size, &t, nullptr, nullptr), BATON_EINVAL) << "size " << size;
  }
  baton_stop(b);
}

TEST(Hostile, PerApplicationLimitsGiveAClearError) {
  TempDir dir;
  Batond d(1, dir.path, "max_segments = 2\nmax_mib = 1\nmax_clients = 3\n");
  baton_t* a = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &a), 0);
  baton_segment_t* s1 = nullptr;
  baton_segment_t* s2 = nullptr;
  baton_segment_t* s3 = nullptr;
  ASSERT_EQ(baton_open(a, "one", 4096, &s1, nullptr, nullptr), 0) << baton_last_error();
  ASSERT_EQ(baton_open(a, "two", 4096, &s2, nullptr, nullptr), 0) << baton_last_error();
  EXPECT_EQ(baton_open(a, "three", 4096, &s3, nullptr, nullptr), BATON_EBUSY);
  EXPECT_NE(std::string(baton_last_error()).find("max_segments"), std::string::npos) << baton_last_error();
  ASSERT_EQ(baton_unregister(s2), 0);
  ASSERT_EQ(baton_open(a, "three", 4096, &s3, nullptr, nullptr), 0) << baton_last_error();

  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
  baton_segment_t* big = nullptr;
  EXPECT_EQ(baton_open(b, "big", 2 << 20, &big, nullptr, nullptr), BATON_EBUSY);
  EXPECT_NE(std::string(baton_last_error()).find("max_mib"), std::string::npos) << baton_last_error();

  baton_t* c = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &c), 0);
  baton_t* extra = nullptr;
  // The daemon refuses the connection, and the connect says so.
  EXPECT_EQ(baton_connect(d.socket().c_str(), &extra), BATON_EBUSY);
  EXPECT_EQ(extra, nullptr);
  EXPECT_NE(std::string(baton_last_error()).find("max_clients"), std::string::npos) << baton_last_error();
  baton_stop(c);
  // A slot freed is a slot usable (once batond has seen it go).
  baton_t* again = nullptr;
  baton_segment_t* u = nullptr;
  int rc = BATON_EBUSY;
  for (int i = 0; i < 100 && rc == BATON_EBUSY; ++i) {
    rc = baton_connect(d.socket().c_str(), &again);
    if (rc == 0) rc = baton_open(again, "four", 4096, &u, nullptr, nullptr);
    if (rc == BATON_EBUSY) {
      baton_stop(again);
      again = nullptr;
      usleep(10000);
    }
  }
  EXPECT_EQ(rc, 0) << baton_last_error();
  baton_stop(again);
  baton_stop(b);
  baton_stop(a);
}

// Limits once counted per connection only. One process that hung up after
// each open made batond keep any number of segments (40 x 16 MiB past a
// 4-segment limit), and one that opened connections took every client
// slot (an adversarial client's finds). Both are bounded now.
TEST(Hostile, HangingUpAfterEachOpenCannotMakeBatondKeepMore) {
  TempDir dir;
  Batond d(1, dir.path, "max_segments = 3\nmax_mib = 64\n");
  int refused_at = -1;
  for (int i = 0; i < 8 && refused_at < 0; ++i) {
    baton_t* b = nullptr;
    ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
    baton_segment_t* s = nullptr;
    const std::string name = "kept-" + std::to_string(i);
    const int rc = baton_open(b, name.c_str(), 1 << 20, &s, nullptr, nullptr);
    if (rc == BATON_EBUSY) {
      refused_at = i;
      EXPECT_NE(std::string(baton_last_error()).find("no application holds"), std::string::npos) << baton_last_error();
    } else {
      EXPECT_EQ(rc, 0) << baton_last_error();
    }
    baton_stop(b);  // hangs up: batond keeps the segment for the next open
  }
  EXPECT_EQ(refused_at, 3) << "batond kept more than max_segments segments nobody holds";
  // What is kept is still the user's: opening a kept name is no new one.
  baton_t* b = nullptr;
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
  baton_segment_t* s = nullptr;
  EXPECT_EQ(baton_open(b, "kept-0", 1 << 20, &s, nullptr, nullptr), 0) << baton_last_error();
  // And deleting one makes room for a new name.
  EXPECT_EQ(baton_unregister(s), 0);
  baton_stop(b);
  ASSERT_EQ(baton_connect(d.socket().c_str(), &b), 0);
  int rc = baton_delete(b, "kept-1");
  for (int i = 0; i < 100 && rc == BATON_EBUSY; ++i) {  // its last holder's session may be winding down
    usleep(20000);
    rc = baton_delete(b, "kept-1");
  }
  EXPECT_EQ(rc, 0) << baton_last_error();
  EXPECT_EQ(baton_open(b, "new-name", 1 << 20, &s, nullptr, nullptr), 0) << baton_last_error();
  baton_stop(b);
}

TEST(Hostile, OneProcessCannotTakeEveryConnection) {
  TempDir dir;
  Batond d(1, dir.path, "max_clients = 8\nmax_clients_per_process = 3\n");
  std::vector<std::unique_ptr<Raw>> hog;
  for (int i = 0; i < 6; ++i) hog.push_back(std::make_unique<Raw>(d.socket()));
  int refused = 0;
  for (auto& r : hog) {
    Reply rep = r->receive(nullptr, 500);  // a refused connection is told why at once
    if (rep.status == BATON_EBUSY) {
      ++refused;
      EXPECT_NE(std::string(rep.message).find("max_clients_per_process"), std::string::npos) << rep.message;
    }
  }
  EXPECT_EQ(refused, 3);
  // Another process is served meanwhile.
  const pid_t other = fork();
  if (other == 0) {
    baton_t* b = nullptr;
    baton_segment_t* s = nullptr;
    uint64_t g = 0;
    const bool ok = baton_connect(d.socket().c_str(), &b) == 0 &&
                    baton_open(b, "bystander", 4096, &s, nullptr, nullptr) == 0 && baton_commit(s, &g) == 0;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(other, &status, 0), other);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "another process was not served";
}

// Nor one user (session 48's hostile pass: one user's processes took
// every slot, max_clients_per_process notwithstanding). Root and batond's
// own user are not counted.
TEST(Hostile, OneUserCannotTakeEveryConnection) {
  TempDir dir;
  Batond d(1, dir.path, "user = \"nobody\"\nmax_clients = 8\nmax_clients_per_process = 16\nmax_clients_per_user = 3\n");
  ASSERT_EQ(chmod(dir.path.c_str(), 0711), 0);
  ASSERT_EQ(chmod(d.socket().c_str(), 0666), 0);
  const std::string said = as_nobody([&] {
    std::vector<std::unique_ptr<Raw>> hog;
    for (int i = 0; i < 5; ++i) hog.push_back(std::make_unique<Raw>(d.socket()));
    int refused = 0, named = 0;
    for (auto& r : hog) {
      Reply rep = r->receive(nullptr, 500);  // a refused connection is told why at once
      if (rep.status != BATON_EBUSY) continue;
      ++refused;
      named += std::string(rep.message).find("max_clients_per_user") != std::string::npos;
    }
    return std::to_string(refused) + " " + std::to_string(named);
  });
  EXPECT_EQ(said, "2 2") << "refused, and of those naming max_clients_per_user";
  // Root is served meanwhile, and not counted against any limit but max_clients.
  std::vector<std::unique_ptr<Raw>> roots;
  for (int i = 0; i < 4; ++i) roots.push_back(std::make_unique<Raw>(d.socket()));
  for (auto& r : roots) EXPECT_NE(r->receive(nullptr, 300).status, BATON_EBUSY);
  roots.clear();
  expect_serves(d, "bystander");
}

TEST(Hostile, FloodsAndSmuggledDescriptorsLeakNothing) {
  TempDir dir;
  Batond d(1, dir.path);
  expect_serves(d, "warm");
  const size_t fds_before = settle_fds(d.pid(), fd_count(d.pid()));
  {
    // Descriptors passed to the daemon with a request are not kept.
    Raw smuggler(d.socket());
    const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < 300; ++i) {
      Request r = request(Op::kStatus);
      iovec iov{&r, sizeof r};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 3)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * 3);
      int three[3] = {null_fd, null_fd, null_fd};
      std::memcpy(CMSG_DATA(c), three, sizeof three);
      if (sendmsg(smuggler.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) break;
      if (i % 8 == 0) (void)smuggler.receive(nullptr, 1000);
    }
    close(null_fd);
    // A flood of requests whose replies are never read.
    Raw flooder(d.socket());
    for (int i = 0; i < 20000; ++i) {
      Request r = request(i % 2 ? Op::kStatus : Op::kEvents);
      if (send(flooder.fd, &r, sizeof r, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) break;  // the socket is full
    }
    expect_serves(d, "warm");  // (a name it holds: a new one would add its own descriptors)
  }
  EXPECT_LE(settle_fds(d.pid(), fds_before), fds_before) << "file descriptors leak";
  EXPECT_TRUE(alive(d));
  expect_serves(d, "warm");
}

}  // namespace
