#pragma once
// The client protocol between applications (libbaton-client) and batond.
// No DPDK here: applications do not link it.
//
// Control messages are SOCK_SEQPACKET datagrams on the daemon's unix socket
// (one request, one reply). Opening a segment returns three descriptors with
// SCM_RIGHTS: the segment's memfd (the application maps it and writes its
// state there), a memfd holding this segment's CommitChannel, and the
// daemon's doorbell eventfd; a fourth, for a copy-on-write segment
// (Reply::copy_on_write), is the share of page states and aside buffer
// (segment/copy_on_write.h) with which the client library snapshots its
// own mapping.
//
// A commit does not use the socket: the application bumps `request` in the
// CommitChannel; the daemon's commit thread, which polls every held channel
// while it is awake, snapshots the segment and publishes `done`. Only when
// the daemon sleeps (`daemon_sleeping` set) does the application write the
// eventfd, and then it sleeps on `done` (a futex in shared memory) at once;
// otherwise it spins a while first. No system call on the fast path.
//
// With the request, the application says what it wrote since its previous
// commit (CommitChannel::written): batond cannot see writes through the
// application's mapping, so the client library tracks them (WriteWatch)
// and batond copies only those chunks.
//
// Posted copy-on-write commits: when the share says the snapshot of the
// library's last generation is settled whole and batond's next stage needs
// only the pages written since (CowShare::Header::ready), the library makes
// the pages it froze pending itself, posts the request with `frozen` 2 and
// the generation it numbered, and returns without waiting; its next commit,
// wait or close of the segment first waits for batond's answer, and reports
// a refusal there (the pages are then made idle again and counted as
// written). So a commit's pause has no round trip to batond in it.
//
// Posted commits (CommitLog): a commit of a small segment whose written
// bytes fit a log slot does not wait for batond at all. The library copies
// those bytes into the next slot of the channel's log, numbers the
// generation itself (one more than the last), publishes the slot and
// returns; batond's commit thread applies the slots in order onto a copy
// of the segment as last committed (its shadow, which no client can
// touch) and commits from there. A slot batond refuses (a bad range, a
// fenced owner, a generation that does not follow) is counted in
// `failures`: the library reports it at the next commit, wait or close of
// the segment and counts from batond's generation again. A wait, a close
// and a commit that takes the waiting path first wait until batond has
// taken every posted slot.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "baton/result.h"

namespace baton::ipc {

inline constexpr uint32_t kMagic = 0xBA7017C0;
/// 4: batond no longer marks a copy-on-write page it is copying (the page
/// states in the share mean something else to a version-3 library).
/// 5: the commit channel carries a log of posted commits (CommitLog).
/// 6: the copy-on-write share's header counts whole lifts (lifted_whole),
/// which moved `declined`.
/// 7: CommitChannel::claim carries the request number it is for.
/// 8: posted copy-on-write commits (CommitChannel::frozen 2, with
/// `expect_generation`; the share's header says when, CowShare::Header::ready).
inline constexpr uint16_t kVersion = 8;
inline constexpr size_t kMaxMessage = 512;     ///< requests
inline constexpr size_t kMaxReply = 64 * 1024;  ///< a reply with its trailing text
inline constexpr size_t kMaxName = 63;

enum class Op : uint16_t {
  kOpen = 1,      ///< S11 flow: restore from any copy, else create
  kCreate = 2,    ///< S1: a new segment; error if the name exists anywhere
  kLoad = 3,      ///< S9: fetch from a replica and own it here (also for agents)
  kWait = 4,      ///< until k replicas hold a generation
  kClose = 5,     ///< unregister
  kStatus = 6,    ///< daemon status (batonctl): a JSON object after the Reply (Server::status_json)
  kEvents = 7,    ///< recent events: `unix_us text` lines after the Reply
  kDelete = 8,    ///< delete a segment everywhere (S11's clean exit); EBUSY while an application holds it here
  kGroups = 9,    ///< service groups, the spare pool and the last failover decisions: a JSON object after the Reply
  kMetric = 10,   ///< a performance metric of the application: `name`, the value (a double) in `generation`'s bits
  kTakeOver = 11, ///< kLoad for an agent (batonctl load): no memory handed out; the segment stays, free, for the application
  /// kLoad for the application whose pid is in `size`, a standby instance
  /// about to be promoted (batond's own failover manager, or a client of
  /// root or batond's user): its open of the name, when it comes soon,
  /// gets this one's result at once.
  kLoadFor = 12,
  /// A connection's first request (Client::connect): answered at once, so
  /// that a connection batond refuses (client.user / client.group, too
  /// many applications) fails at connect with the reason.
  kHello = 13,
};

struct Request {
  uint32_t magic;
  uint16_t version;
  uint16_t op;
  uint64_t size;        ///< kOpen/kCreate; kLoadFor: the pid of the application it loads for
  uint64_t generation;  ///< kWait; kMetric: the value's bits (a double)
  uint32_t k;           ///< kWait
  uint32_t timeout_ms;  ///< kWait
  uint32_t handle;      ///< kWait/kClose: from the open reply
  uint8_t name_len;
  char name[kMaxName + 1];
};

struct Reply {
  uint32_t magic;
  int32_t status;       ///< 0 or a negative BATON_E* code
  uint64_t size;
  uint64_t generation;  ///< restored/current generation
  uint32_t handle;
  uint8_t restored;     ///< kOpen: 1 if loaded from a copy
  uint8_t copy_on_write;  ///< kOpen: 1 if a fourth descriptor, the copy-on-write share, comes with it
  uint8_t protect_ahead;  ///< kOpen, copy-on-write: 1 to protect written pages ahead of commits (EngineConfig::cow_protect_ahead)
  uint8_t pad;
  uint32_t text_len;    ///< kStatus: bytes of text after this struct
  uint32_t commit_every_ms;  ///< kOpen, copy-on-write: the period the library commits at by itself (S5); 0: none
  char message[400];    ///< error text
};

/// The error a refusal carries: its status (a BATON_E* code: an Errc,
/// negated) and its message, read no further than the field (the sender
/// need not end it).
inline Error error_of(const Reply& r) {
  return Error{static_cast<Errc>(-r.status), std::string(r.message, strnlen(r.message, sizeof r.message))};
}

/// Ranges a commit request carries at most; more are coarsened to fit.
inline constexpr uint32_t kMaxWritten = 4096;
/// CommitChannel::written_count: the application wrote anything (copy all).
inline constexpr uint32_t kWrittenAll = UINT32_MAX;

/// CommitChannel::claim: the state, for the request numbered `seq`
/// (claim_of). A batond that read one request and took its claim only
/// after the application had withdrawn it and posted the next would have
/// taken the next one under the old number, and the application been told
/// it failed.
inline constexpr uint32_t kPosted = 0, kTaken = 1, kWithdrawn = 2;
constexpr uint32_t claim_of(uint32_t seq, uint32_t state) noexcept { return (seq << 2) | state; }

/// CommitChannel::daemon_sleeping.
inline constexpr uint32_t kAwake = 0, kAsleep = 1, kNapping = 2;
/// How soon a napping commit thread looks at its channels again.
inline constexpr uint64_t kNapNs = 500'000;

/// Posted commits: slots in the log, ranges and bytes one slot holds, and
/// the largest segment that posts (batond keeps a shadow copy of each).
inline constexpr uint32_t kLogSlots = 16;
inline constexpr uint32_t kLogRanges = 64;
inline constexpr uint64_t kLogSlotBytes = 64 * 1024;
inline constexpr uint64_t kLogMaxSegment = 1 << 20;

/// One posted commit: `count` (offset, length) ranges of the segment, whose
/// bytes follow each other in `data` (`bytes` in all), as generation
/// `generation`. Written by the application before it moves the log's
/// head past the slot; batond copies everything out before it trusts any
/// of it.
struct alignas(64) LogSlot {
  std::atomic<uint64_t> generation{0};
  std::atomic<uint32_t> count{0};
  std::atomic<uint32_t> bytes{0};
  std::atomic<uint64_t> ranges[2 * kLogRanges];
  alignas(64) std::byte data[kLogSlotBytes];
};

/// The posted commits of one segment (a ring of kLogSlots; indices only
/// grow). `head`: slots the application posted; `tail`: slots batond
/// took (applied or refused), a futex word the application sleeps on when
/// the log is full or it drains it.
struct alignas(64) CommitLog {
  std::atomic<uint32_t> head{0};
  alignas(64) std::atomic<uint32_t> tail{0};
  std::atomic<uint32_t> app_sleeping{0};  ///< the application sleeps on `tail`
  std::atomic<uint32_t> failures{0};      ///< slots batond refused, ever (set before `tail` passes them)
  std::atomic<int32_t> status{0};         ///< a refusal's negative BATON_E* code
  std::atomic<uint64_t> failed_generation{0};  ///< the generation the refused slot claimed
  std::atomic<uint64_t> committed{0};     ///< the segment's last committed generation, as of `tail`
  std::atomic<uint32_t> fenced{0};        ///< a post was refused as fenced: every later one will be
  /// `status` and `failed_generation` are those of the first refusal of a
  /// run of them (the later ones follow from it).
  LogSlot slots[kLogSlots];
};

/// One per open segment, in its own shared pages.
struct alignas(64) CommitChannel {
  std::atomic<uint32_t> request{0};          ///< bumped by the application
  alignas(64) std::atomic<uint32_t> done{0};  ///< set to `request` by the daemon; futex word
  std::atomic<int32_t> status{0};             ///< of the last commit
  std::atomic<uint64_t> generation{0};        ///< of the last commit
  std::atomic<uint32_t> app_sleeping{0};      ///< the application sleeps on `done`
  /// The commit thread sleeps: ring the eventfd (kAsleep); or it naps and
  /// looks again within kNapNs (kNapping): ring it for a waiting commit or
  /// a drain, not for a post.
  std::atomic<uint32_t> daemon_sleeping{0};
  /// What the application wrote since its previous commit: `written_count`
  /// (offset, length) pairs in `written`, or kWrittenAll. Stored before
  /// `request` is bumped (which publishes them); the daemon copies them
  /// out before it looks at them, and a range past the segment's end fails
  /// that commit (EINVAL): a client can only harm its own snapshots.
  alignas(64) std::atomic<uint32_t> written_count{kWrittenAll};
  /// 1: the library froze its mapping for this commit (copy-on-write: the
  /// written pages are protected and its handler waits until `done`);
  /// 2: it froze them and made them pending itself, and did not wait (a
  /// posted copy-on-write commit: CommitOptions::pended); 0: batond
  /// copies. Stored with `written_count`.
  std::atomic<uint32_t> frozen{0};
  /// With frozen 2: the generation the library told the application the
  /// commit is (one more than its last); another fails the commit.
  std::atomic<uint64_t> expect_generation{0};
  /// Who has the posted request in hand (kPosted, stored by the
  /// application before it bumps `request`): batond takes it (kTaken) by
  /// compare-and-swap before it commits, or the application withdraws it
  /// (kWithdrawn) when it stops waiting. So a commit the library reports
  /// as timed out never becomes a generation later. Each state is
  /// claim_of(request number, state): a swap for another request fails.
  std::atomic<uint32_t> claim{0};
  std::atomic<uint64_t> written[2 * kMaxWritten];
  CommitLog log;
};

static_assert(sizeof(Request) <= kMaxMessage && sizeof(Reply) <= kMaxMessage);
static_assert(std::atomic<uint32_t>::is_always_lock_free && std::atomic<uint64_t>::is_always_lock_free);

}  // namespace baton::ipc
