// Copy-on-write snapshots (issue #10 item 1, S14): a commit returns once
// the written pages are write-protected; the worker copies the snapshot
// while the application writes on, and a write to a page not copied yet
// copies it aside first. Every replicated generation must be exactly the
// memory at its commit, however the writer's writes race the worker.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "../../common/cluster.h"
#include "../../common/mapping.h"
#include "../../common/ok.h"
#include "../../common/writer_gate.h"
#include "replication/transfer.h"
#include "segment/copy_on_write.h"

namespace baton {
namespace {

using namespace std::chrono_literals;
using test::Cluster;

constexpr uint64_t kPage = CopyOnWrite::kPage;

#define SKIP_WITHOUT_COW()                                 \
  if (!CopyOnWrite::unavailable_reason().empty())          \
  GTEST_SKIP() << "no copy-on-write here: " << CopyOnWrite::unavailable_reason()

/// A shared memfd mapping, every page populated.
struct Mapping : test::SharedMapping {
  explicit Mapping(size_t len) : test::SharedMapping(len, true) {}
};

using Runs = std::vector<std::pair<uint64_t, uint64_t>>;

Runs freeze(CopyOnWrite& cow, std::byte* aside, const ChunkBitmap& pend) {
  Runs runs;
  CopyOnWrite::Freeze f(cow);
  f.take_written([&](uint64_t off, uint64_t len) { runs.emplace_back(off, len); });
  f.pend(aside, pend);
  EXPECT_TRUE(test::ok(f.protect()));
  return runs;
}

TEST(CopyOnWrite, AWriteToAPendingPageCopiesItAsideFirst) {
  SKIP_WITHOUT_COW();
  Mapping m(64 * kPage);
  std::vector<std::byte> aside(64 * kPage);
  std::memset(m.p, 1, m.len);
  auto cow = test::must(CopyOnWrite::attach(m.p, m.len, false));
  ChunkBitmap pend;
  pend.reset(64);
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{0, 64 * kPage}})) << "everything counts as written at first";

  m.p[3 * kPage] = std::byte{2};
  m.p[4 * kPage + 9] = std::byte{2};  // joins page 3's run
  m.p[40 * kPage] = std::byte{2};
  EXPECT_EQ(cow->faults(), 3u) << "one fault per first write to a page";
  m.p[3 * kPage + 1] = std::byte{2};
  EXPECT_EQ(cow->faults(), 3u) << "a page written once is writable until the next freeze";

  // The commit point: pages 3, 4 and 40 (written) and 10 (say, written
  // before the previous commit: still protected) belong to the snapshot.
  pend.set(3);
  pend.set(4);
  pend.set(10);
  pend.set(40);
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{3 * kPage, 2 * kPage}, {40 * kPage, kPage}}));
  EXPECT_TRUE(cow->pending(3) && cow->pending(10) && !cow->pending(5));
  m.p[10 * kPage + 5] = std::byte{9};  // copied aside before it changes
  m.p[3 * kPage] = std::byte{9};
  m.p[20 * kPage] = std::byte{9};  // not in the snapshot: only noted
  EXPECT_EQ(cow->copied_aside(), 2u);
  EXPECT_FALSE(cow->pending(10));
  EXPECT_EQ(aside[10 * kPage + 5], std::byte{1});
  EXPECT_EQ(aside[3 * kPage], std::byte{2}) << "the snapshot's byte, not the one written after";
  EXPECT_EQ(aside[3 * kPage + 1], std::byte{2});
  EXPECT_EQ(aside[20 * kPage], std::byte{0}) << "not pending: never copied";
  // The settler copies what no writer touched.
  cow->settle(4);
  cow->settle(40);
  EXPECT_FALSE(cow->pending(4) || cow->pending(40));
  EXPECT_EQ(aside[4 * kPage + 9], std::byte{2});
  EXPECT_EQ(aside[40 * kPage], std::byte{2});
  pend.clear_all();
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{3 * kPage, kPage}, {10 * kPage, kPage}, {20 * kPage, kPage}}));

  // Gone: the protection is lifted, writes go straight through.
  cow.reset();
  m.p[10 * kPage] = std::byte{7};
  EXPECT_EQ(m.p[10 * kPage], std::byte{7});
}

// Tags (the engine's own regions, tag_writes): a fault marks its page as
// written in the page's state byte, so a freeze whose stage needs only
// the pages it took makes them pending without a store per page
// (pend_tagged), exactly as pend() with those pages would. Pages past the
// stage are not pending; a freeze after a lift in bulk (every page at
// once) has incomplete tags and pends with pend(), which also drops the
// tags of pages not in its set; a freeze that never pends has its tags
// dropped by the next.
TEST(CopyOnWrite, TaggedPagesArePendingExactlyAsTheFreezeTookThem) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 128, kLimit = 100;  // the stage: the first 100 pages
  Mapping m(kPages * kPage);
  std::vector<std::byte> aside(kPages * kPage);
  std::memset(m.p, 1, m.len);
  auto cow = test::must(CopyOnWrite::attach(m.p, m.len, false));
  cow->tag_writes();
  auto freeze_tagged = [&](const std::vector<uint32_t>& want_taken) {
    CopyOnWrite::Freeze f(*cow);
    f.take_lists();
    const auto taken = f.taken_pages();
    EXPECT_EQ(std::vector<uint32_t>(taken.begin(), taken.end()), want_taken);
    EXPECT_TRUE(f.tags_complete());
    f.pend_tagged(aside.data(), kLimit);
    EXPECT_TRUE(test::ok(f.protect()));
  };
  ChunkBitmap none;
  none.reset(kLimit);
  {
    CopyOnWrite::Freeze f(*cow);  // the first: every page, none tagged
    f.take_lists();
    EXPECT_EQ(f.taken_pages().size(), kPages);
    EXPECT_EQ(f.taken_words().size(), 2u);
    EXPECT_FALSE(f.tags_complete()) << "counted as written in bulk, not by faults";
    f.pend(aside.data(), none);
    ASSERT_TRUE(test::ok(f.protect()));
  }
  for (uint32_t p : {3u, 64u, 65u, 99u, 100u, 127u}) m.p[p * kPage] = std::byte{2};
  freeze_tagged({3, 64, 65, 99, 100, 127});
  for (uint32_t p = 0; p < kPages; ++p) {
    const bool want = p == 3 || p == 64 || p == 65 || p == 99;
    EXPECT_EQ(cow->pending(p), want) << "page " << p;
  }
  m.p[64 * kPage] = std::byte{9};  // copied aside before it changes
  m.p[100 * kPage] = std::byte{9};  // past the stage: only noted
  m.p[7 * kPage] = std::byte{9};    // not in the snapshot: only noted
  EXPECT_EQ(cow->copied_aside(), 1u);
  EXPECT_EQ(aside[64 * kPage], std::byte{2});
  EXPECT_EQ(aside[100 * kPage], std::byte{0}) << "never copied past the stage";
  EXPECT_FALSE(cow->pending(64));
  EXPECT_FALSE(cow->pending(7)) << "tagged for the next freeze, not pending in this one";
  for (uint32_t p : {3u, 65u, 99u}) cow->settle(p);
  for (uint32_t p : {3u, 65u, 99u}) EXPECT_EQ(aside[p * kPage], std::byte{2}) << "page " << p;
  for (uint32_t p = 0; p < kPages; ++p) EXPECT_FALSE(cow->pending(p)) << "page " << p;

  // The next freeze: the pages written since, by their tags alone.
  freeze_tagged({7, 64, 100});
  EXPECT_TRUE(cow->pending(7) && cow->pending(64));
  EXPECT_FALSE(cow->pending(100) || cow->pending(3));
  cow->settle(7);
  cow->settle(64);
  EXPECT_EQ(aside[7 * kPage], std::byte{9});

  // pend() with a set that leaves a taken page out: it is not pending.
  m.p[10 * kPage] = std::byte{3};
  m.p[11 * kPage] = std::byte{3};
  ChunkBitmap only11;
  only11.reset(kLimit);
  only11.set(11);
  {
    CopyOnWrite::Freeze f(*cow);
    f.take_lists();
    f.pend(aside.data(), only11);
    ASSERT_TRUE(test::ok(f.protect()));
  }
  EXPECT_FALSE(cow->pending(10)) << "taken, tagged, but not in pend()'s set";
  EXPECT_TRUE(cow->pending(11));
  cow->settle(11);
  for (int i = 0; i < 2; ++i) {  // its tag comes round again: still nothing pending
    freeze_tagged({});
    EXPECT_FALSE(cow->pending(10)) << "freeze " << i;
  }

  // A freeze that never pends: its tags are gone at the next one.
  m.p[20 * kPage] = std::byte{4};
  {
    CopyOnWrite::Freeze f(*cow);
    f.take_lists();
    ASSERT_TRUE(test::ok(f.protect()));
  }
  m.p[21 * kPage] = std::byte{4};
  freeze_tagged({21});
  EXPECT_FALSE(cow->pending(20)) << "a tag of a freeze that did not pend";
  EXPECT_TRUE(cow->pending(21));
  cow->settle(21);
  freeze_tagged({});  // its tag comes round again
  EXPECT_FALSE(cow->pending(20));

  // A release lifts every page in bulk: the next freeze's tags are not
  // complete, and pend() makes its set pending.
  ASSERT_TRUE(test::ok(cow->release_all()));
  m.p[30 * kPage] = std::byte{5};
  ChunkBitmap all;
  all.reset(kLimit);
  all.set_all();
  {
    CopyOnWrite::Freeze f(*cow);
    f.take_lists();
    EXPECT_EQ(f.taken_pages().size(), kPages);
    EXPECT_FALSE(f.tags_complete());
    f.pend(aside.data(), all);
    ASSERT_TRUE(test::ok(f.protect()));
  }
  for (uint32_t p = 0; p < kPages; ++p) EXPECT_EQ(cow->pending(p), p < kLimit) << "page " << p;
  for (uint32_t p = 0; p < kLimit; ++p) cow->settle(p);
  EXPECT_EQ(aside[30 * kPage], std::byte{5});
}

// The commit protects runs of written pages that lie close together in
// one call, across the pages between them (already protected): every
// written page is protected again, those between stay protected, and only
// the written ones count.
TEST(CopyOnWrite, ScatteredWritesAreAllProtectedAgainAndOnlyTheyCount) {
  SKIP_WITHOUT_COW();
  Mapping m(512 * kPage);
  std::vector<std::byte> aside(512 * kPage);
  auto cow = test::must(CopyOnWrite::attach(m.p, m.len, false));
  ChunkBitmap pend;
  pend.reset(512);
  freeze(*cow, aside.data(), pend);  // everything, at first
  const uint64_t counted = cow->protected_at_commit();
  // Gaps of 1, 0, 3, 4, 5, 10, 0, 68, 99, 15, 16, 17 and 259 pages: some
  // joined, some not.
  const std::vector<uint32_t> written = {1, 3, 4, 8, 13, 19, 30, 31, 100, 200, 216, 233, 251, 511};
  for (uint32_t p : written) m.p[p * kPage] = std::byte{1};
  EXPECT_EQ(cow->faults(), written.size());
  Runs want;
  for (uint32_t p : written) {
    if (!want.empty() && want.back().first + want.back().second == p * kPage) want.back().second += kPage;
    else want.emplace_back(p * kPage, kPage);
  }
  EXPECT_EQ(freeze(*cow, aside.data(), pend), want) << "the written runs themselves, not joined";
  EXPECT_EQ(cow->protected_at_commit() - counted, written.size()) << "only the pages that were writable count";
  for (uint32_t p : written) m.p[p * kPage + 1] = std::byte{2};
  EXPECT_EQ(cow->faults(), 2 * written.size()) << "every written page was protected again";
  const std::vector<uint32_t> between = {2, 5, 9, 12, 15, 25, 150, 225, 240, 300};
  for (uint32_t p : between) m.p[p * kPage] = std::byte{3};
  EXPECT_EQ(cow->faults(), 2 * written.size() + between.size()) << "the pages between them stayed protected";
}

// protect_all() (a segment with a period): from then on only writes
// count, each page's first one a fault.
TEST(CopyOnWrite, ProtectAllCountsOnlyWhatIsWrittenAfterIt) {
  SKIP_WITHOUT_COW();
  Mapping m(16 * kPage);
  std::vector<std::byte> aside(16 * kPage);
  auto cow = test::must(CopyOnWrite::attach(m.p, m.len, false));
  EXPECT_TRUE(cow->any_written()) << "every page, before anything is protected";
  ASSERT_TRUE(test::ok(cow->protect_all()));
  EXPECT_FALSE(cow->any_written());
  m.p[5 * kPage] = std::byte{1};
  EXPECT_EQ(cow->faults(), 1u);
  EXPECT_TRUE(cow->any_written());
  ChunkBitmap pend;
  pend.reset(16);
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{5 * kPage, kPage}}));
}

// The write that faulted lands only after its handler returns: for
// kWriteLandsNs after a fault a write counts as in flight, and a periodic
// commit waits it out (else it froze the page without the write, and the
// write faulted again: two generations for one write, one run in ten of
// APeriodCommitsOnlyWhatIsWritten).
TEST(CopyOnWrite, AWriteThatJustFaultedIsInFlight) {
  SKIP_WITHOUT_COW();
  Mapping m(16 * kPage);
  auto cow = test::must(CopyOnWrite::attach(m.p, m.len, false));
  ASSERT_TRUE(test::ok(cow->protect_all()));
  EXPECT_FALSE(cow->write_in_flight()) << "no write yet";
  const auto before = std::chrono::steady_clock::now();
  m.p[3 * kPage] = std::byte{1};
  const bool in_flight = cow->write_in_flight();
  const auto took = std::chrono::steady_clock::now() - before;
  ASSERT_EQ(cow->faults(), 1u);
  if (took < std::chrono::nanoseconds(CopyOnWrite::kWriteLandsNs)) {  // else descheduled meanwhile: no verdict
    EXPECT_TRUE(in_flight);
  }
  std::this_thread::sleep_for(std::chrono::nanoseconds(2 * CopyOnWrite::kWriteLandsNs));
  EXPECT_FALSE(cow->write_in_flight());
  m.p[3 * kPage + 1] = std::byte{2};  // unprotected now: no fault, nothing in flight
  EXPECT_FALSE(cow->write_in_flight());
}

/// `pages` pages under copy-on-write (`ahead`: protected ahead of the
/// commits), past their first freeze (every page protected, none pending),
/// and a buffer to copy pages aside into.
struct Armed {
  explicit Armed(uint32_t pages, bool ahead = false) : m(pages * kPage), aside(pages * kPage) {
    cow = test::must(CopyOnWrite::attach(m.p, m.len, ahead));
    pend.reset(pages);
    freeze(*cow, aside.data(), pend);
  }
  Mapping m;
  std::vector<std::byte> aside;
  std::unique_ptr<CopyOnWrite> cow;
  ChunkBitmap pend;
};

TEST(CopyOnWrite, ReleaseAllLiftsEveryPageAndCountsItWritten) {
  SKIP_WITHOUT_COW();
  Armed a(8);
  auto& [m, aside, cow, pend] = a;
  ASSERT_TRUE(test::ok(cow->release_all()));
  std::memset(m.p, 3, m.len);
  EXPECT_EQ(cow->faults(), 0u);
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{0, 8 * kPage}}));
}

/// Waits (up to 5 s) until the protector has protected `pages` pages of
/// `cow` ahead.
bool protected_ahead_reaches(const CopyOnWrite& cow, uint64_t pages) {
  for (int i = 0; i < 5000 && cow.protected_ahead() < pages; ++i) std::this_thread::sleep_for(1ms);
  return cow.protected_ahead() >= pages;
}

// Protection ahead: written pages are protected again while the
// application writes on, so the commit protects at most a few itself; they
// still count as written (their delta travels), and a write after the
// commit to one that is in the snapshot copies it aside first, as always.
TEST(CopyOnWrite, TheProtectorProtectsWrittenPagesAheadOfTheCommit) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 256, kWritten = 32;
  Armed a(kPages, true);  // the first commit protected everything at once
  auto& [m, aside, cow, pend] = a;
  EXPECT_EQ(cow->protected_ahead(), 0u) << "nothing to protect ahead before the first freeze";

  Runs written;
  for (uint32_t p = 0; p < kPages; p += kPages / kWritten) {  // scattered pages
    m.p[p * kPage] = std::byte{1};
    written.emplace_back(uint64_t{p} * kPage, kPage);
  }
  // It may leave the last few (fewer than kAheadAfter) if it fell asleep
  // before they were written.
  ASSERT_TRUE(protected_ahead_reaches(*cow, kWritten - (CopyOnWrite::kAheadAfter - 1))) << cow->protected_ahead();
  m.p[8 * kPage + 1] = std::byte{2};  // written again: faults again if it was protected ahead
  {
    CopyOnWrite::Freeze f(*cow);  // the protector is out meanwhile
    Runs runs;
    f.take_written([&](uint64_t off, uint64_t len) { runs.emplace_back(off, len); });
    EXPECT_EQ(runs, written) << "protected ahead, still written";
    // Left to the commit: the pages it did not protect, and each that
    // faulted twice (page 8, if it was protected, and any whose writing
    // thread lost its core between the handler and the write's retry for
    // longer than a pass: protected under it).
    const uint64_t ahead = cow->protected_ahead(), faults = cow->faults();
    EXPECT_LE(ahead, kWritten) << "at most once per page between two commits";
    EXPECT_EQ(f.to_protect(), (kWritten - ahead) + (faults - kWritten));
    for (uint32_t p = 0; p < kPages; p += kPages / kWritten) pend.set(p);
    f.pend(aside.data(), pend);
    ASSERT_TRUE(test::ok(f.protect()));
  }
  m.p[16 * kPage] = std::byte{3};  // pending: copied aside before it changes
  m.p[8 * kPage + 1] = std::byte{4};
  EXPECT_EQ(aside[16 * kPage], std::byte{1});
  EXPECT_EQ(aside[8 * kPage + 1], std::byte{2});
  for (uint32_t p = 0; p < kPages; p += kPages / kWritten) cow->settle(p);
  for (uint32_t p = 0; p < kPages; p += kPages / kWritten) EXPECT_EQ(aside[p * kPage], std::byte{1}) << "page " << p;
}

// The writing thread's own handler protects ahead: each fault protects
// again the page the same thread lifted kTrailPages faults before, so
// right after the writes, before the protector has run at all, every page
// but the thread's last few is protected again, and a write to one faults
// once more.
TEST(CopyOnWrite, TheWritingThreadProtectsItsOwnPagesAheadAsItFaults) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 512, kWritten = 64;
  Armed a(kPages, true);
  auto& [m, aside, cow, pend] = a;
  const uint64_t faults = cow->faults();
  for (uint32_t i = 0; i < kWritten; ++i) m.p[i * (kPages / kWritten) * kPage] = std::byte{1};
  ASSERT_EQ(cow->faults() - faults, kWritten);
  // No wait: the handler did it, not the protector (asleep until its nap
  // ends, or a pass away from taking a page it saw).
  EXPECT_GE(cow->protected_ahead(), kWritten - CopyOnWrite::kTrailPages);
  m.p[0] = std::byte{2};  // the first page written: protected again, so it faults again
  EXPECT_EQ(cow->faults() - faults, kWritten + 1);
  CopyOnWrite::Freeze f(*cow);
  Runs runs;
  f.take_written([&](uint64_t off, uint64_t len) { runs.emplace_back(off, len); });
  EXPECT_EQ(runs.size(), kWritten) << "protected ahead, still written";
  EXPECT_LE(f.to_protect(), CopyOnWrite::kTrailPages + 1) << "the trail's last pages, and page 0 (hot now)";
  ASSERT_TRUE(test::ok(f.protect()));
}

// A page written again after it was protected ahead is protected ahead
// once more (a page written twice at random is no hot page); written again
// after that too within kHotFreezes freezes (a hot page), it is left to
// the commits: a hot set costs two extra faults per page, not one per
// commit. And memory a caller announced it rewrites whole (release_all)
// is not protected ahead at all.
TEST(CopyOnWrite, AHotPageIsLeftToTheCommitsAndAReleaseToTheNextFreeze) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 64, kHot = 8;
  Armed a(kPages, true);
  auto& [m, aside, cow, pend] = a;
  for (uint32_t p = 0; p < kHot; ++p) m.p[p * kPage] = std::byte{1};
  ASSERT_TRUE(protected_ahead_reaches(*cow, kHot - (CopyOnWrite::kAheadAfter - 1)));
  freeze(*cow, aside.data(), pend);  // every page protected again
  constexpr uint32_t kFreezes = CopyOnWrite::kHotFreezes - 3;  // none clears the hot pages
  const uint64_t ahead_before = cow->protected_ahead(), faults_before = cow->faults();
  for (uint32_t f = 0; f < kFreezes; ++f) {  // each period writes the pages twice
    for (uint32_t p = 0; p < kHot; ++p) m.p[p * kPage] = std::byte{2};
    std::this_thread::sleep_for(2ms);  // the protector's passes
    for (uint32_t p = 0; p < kHot; ++p) m.p[p * kPage] = std::byte{3};
    freeze(*cow, aside.data(), pend);
  }
  // Every page protected ahead in the first period faulted again, was
  // protected ahead once more, and faulted again in the second period
  // (hot): it is not protected ahead after that. Without that it would be
  // protected twice every period, and fault twice.
  EXPECT_LE(cow->protected_ahead() - ahead_before, 3 * kHot) << "hot pages are the commits'";
  EXPECT_GE(cow->faults() - faults_before, uint64_t{kHot} * kFreezes) << "each period's first writes";
  EXPECT_LE(cow->faults() - faults_before, uint64_t{kHot} * (kFreezes + 2)) << "and two more per page at most";

  const uint64_t ahead = cow->protected_ahead();
  ASSERT_TRUE(test::ok(cow->release_all()));
  std::memset(m.p, 5, m.len);
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(cow->protected_ahead(), ahead) << "a released region waits for the next freeze";
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{0, kPages * kPage}}));
}

/// Writes byte `b` at the start of every page in [from, to) and returns
/// the faults they took.
uint64_t write_pages(CopyOnWrite& cow, std::byte* mem, uint32_t from, uint32_t to, uint8_t b) {
  const uint64_t before = cow.faults();
  for (uint32_t p = from; p < to; ++p) mem[p * kPage] = std::byte{b};
  return cow.faults() - before;
}

// A writer that rewrites most of the memory between commits: once a
// snapshot has settled, its next fault lifts every page's protection in
// one pass, the writes after it run free, and the next freeze takes the
// whole memory (protected again in one pass) while every snapshot stays
// the memory at its freeze. After kDenseFreezes such freezes a cycle is
// counted page by page again; sparse, it stays so.
TEST(CopyOnWrite, ADenseWriterIsLiftedWholeOnceItsSnapshotSettled) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 256;
  Armed a(kPages);
  auto& [m, aside, cow, pend] = a;
  auto snapshot = [&](uint32_t pages) {  // a freeze that pends `pages` pages, and what they held
    pend.clear_all();
    pend.set_range(0, pages - 1);
    Runs runs = freeze(*cow, aside.data(), pend);
    return std::make_pair(runs, std::vector<std::byte>(m.p, m.p + m.len));
  };
  auto settle = [&](uint32_t pages) {
    for (uint32_t p = 0; p < pages; ++p) cow->settle(p);
  };

  EXPECT_EQ(write_pages(*cow, m.p, 0, kPages / 2, 1), kPages / 2) << "half is not dense: a fault per page";
  snapshot(kPages);
  settle(kPages);
  EXPECT_FALSE(cow->dense());
  EXPECT_EQ(write_pages(*cow, m.p, 0, kPages / 2 + 1, 2), kPages / 2 + 1);
  auto [runs, at_freeze] = snapshot(kPages);
  EXPECT_EQ(runs, (Runs{{0, (kPages / 2 + 1) * kPage}})) << "the pages the faults counted";
  EXPECT_TRUE(cow->dense()) << "more than half the pages written";

  // Pending pages are copied aside as always. The settler copies in
  // order: once the first 64 pages are in, a write to one of them lifts
  // them all; the pages above are still copied aside one by one.
  EXPECT_EQ(write_pages(*cow, m.p, 10, 12, 3), 2u);
  for (uint32_t p = 0; p < 64; ++p) cow->settle(p);
  EXPECT_EQ(write_pages(*cow, m.p, 0, 64, 4), 1u) << "the settled pages below, lifted in one pass";
  EXPECT_EQ(write_pages(*cow, m.p, 64, 66, 4), 2u) << "pending pages above";
  EXPECT_EQ(cow->lifted_whole(), 0u);
  settle(kPages);
  EXPECT_EQ(std::memcmp(aside.data(), at_freeze.data(), m.len), 0) << "the snapshot is the memory at its freeze";
  EXPECT_EQ(write_pages(*cow, m.p, 0, kPages, 5), 1u) << "the first write after it settled lifts the rest";
  EXPECT_EQ(cow->lifted_whole(), 1u);

  // Dense freezes: the whole memory, protected again, pending again.
  for (uint32_t f = 1; f <= CopyOnWrite::kDenseFreezes; ++f) {
    auto [taken, frozen] = snapshot(kPages);
    EXPECT_EQ(taken, (Runs{{0, kPages * kPage}})) << "freeze " << f << ": every page counts as written";
    EXPECT_EQ(cow->dense(), f < CopyOnWrite::kDenseFreezes) << "freeze " << f;
    EXPECT_EQ(write_pages(*cow, m.p, 0, 3, uint8_t(10 + f)), 3u) << "pending pages copied aside, one by one";
    settle(kPages);
    EXPECT_EQ(std::memcmp(aside.data(), frozen.data(), m.len), 0) << "freeze " << f;
    EXPECT_EQ(write_pages(*cow, m.p, 3, kPages, uint8_t(20 + f)), f < CopyOnWrite::kDenseFreezes ? 1u : kPages - 3)
        << "freeze " << f;
  }
  EXPECT_EQ(cow->lifted_whole(), uint64_t{CopyOnWrite::kDenseFreezes});

  // That last cycle was counted page by page and wrote every page: dense
  // again, for twice as long.
  snapshot(kPages);
  for (uint32_t f = 0; f < 2 * CopyOnWrite::kDenseFreezes; ++f) {
    EXPECT_TRUE(cow->dense()) << f;
    settle(kPages);
    write_pages(*cow, m.p, 0, 1, 5);
    snapshot(kPages);
  }
  EXPECT_FALSE(cow->dense());
  // A sparse cycle: counted, not dense; the next one is counted too.
  settle(kPages);
  EXPECT_EQ(write_pages(*cow, m.p, 0, 8, 6), 8u);
  EXPECT_EQ(snapshot(kPages).first, (Runs{{0, 8 * kPage}}));
  EXPECT_FALSE(cow->dense());
  settle(kPages);
  EXPECT_EQ(write_pages(*cow, m.p, 0, kPages, 7), kPages) << "counted page by page";
}

// A freeze that comes after only part of a dense region was lifted counts
// nothing: the lifted pages count as written whether they were or not, so
// they say nothing of how much the writer wrote (counted, 200 lifted pages
// of 256 would have renewed and doubled the dense period).
TEST(CopyOnWrite, AFreezeAfterALiftInBulkIsNoCountOfWhatWasWritten) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 256;
  Armed a(kPages);
  auto& [m, aside, cow, pend] = a;
  pend.set_range(0, kPages - 1);
  EXPECT_EQ(write_pages(*cow, m.p, 0, 200, 1), 200u);
  freeze(*cow, aside.data(), pend);
  ASSERT_TRUE(cow->dense());
  for (uint32_t p = 0; p < 200; ++p) cow->settle(p);  // the settler is not done yet
  EXPECT_EQ(write_pages(*cow, m.p, 0, 1, 2), 1u);     // lifts pages 0-199 in bulk
  EXPECT_EQ(cow->lifted_whole(), 0u);
  EXPECT_EQ(freeze(*cow, aside.data(), pend), (Runs{{0, 200 * kPage}}));
  int dense_freezes = 0;
  while (cow->dense() && dense_freezes < 40) {
    for (uint32_t p = 0; p < kPages; ++p) cow->settle(p);
    write_pages(*cow, m.p, 0, kPages, 3);  // lifted whole: not counted either
    freeze(*cow, aside.data(), pend);
    ++dense_freezes;
  }
  EXPECT_EQ(dense_freezes, int{CopyOnWrite::kDenseFreezes} - 1) << "the period that was, not a new one";
}

// The kernel's own writes into a protected page (read(2) into the segment)
// cannot reach a signal handler: they fail with EFAULT. The documented
// trap, kept honest.
TEST(CopyOnWrite, AKernelWriteIntoAProtectedPageFailsWithEfault) {
  SKIP_WITHOUT_COW();
  Armed a(4);
  auto& m = a.m;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(write(fds[1], "kernel", 6), 6);
  EXPECT_EQ(read(fds[0], m.p + kPage, 6), -1);
  EXPECT_EQ(errno, EFAULT);
  m.p[kPage] = std::byte{1};  // a user write lifts it
  EXPECT_EQ(read(fds[0], m.p + kPage, 6), 6);
  close(fds[0]);
  close(fds[1]);
}

// A SIGBUS that is not a copy-on-write fault (here: touching a memfd page
// past the end of its file) still reaches the disposition the process had
// before: the default, which kills with SIGBUS (under a sanitizer, its
// handler, which reports and exits).
TEST(CopyOnWriteDeathTest, AnotherSigbusStillKills) {
  SKIP_WITHOUT_COW();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Mapping m(4 * kPage);
        auto cow = CopyOnWrite::attach(m.p, m.len, false);
        const int fd = memfd_create("short", MFD_CLOEXEC);
        (void)!ftruncate(fd, static_cast<off_t>(kPage));
        auto* p = static_cast<volatile char*>(mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        p[kPage] = 1;  // past the end of the file
        _exit(0);
      },
      // Killed by SIGBUS, or by the sanitizer's own SIGBUS handler that was
      // there before (a report, and exit status 1 for ASan, 66 for TSan).
      [](int status) {
        return (WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) ||
               (WIFEXITED(status) && (WEXITSTATUS(status) == 1 || WEXITSTATUS(status) == 66));
      },
      "");
}

/// The application's write. ThreadSanitizer records a store before the
/// instruction runs, so it cannot see that the fault the store takes
/// orders it after the worker's copy of the page (the handler waits for
/// it): the writer's stores are not instrumented, the engine's side is.
__attribute__((no_sanitize("thread"))) void app_write(std::byte* p, uint64_t len, uint8_t b) {
  for (uint64_t i = 0; i < len; ++i) p[i] = std::byte(static_cast<uint8_t>(b + i));
}

__attribute__((no_sanitize("thread"))) void app_write_u64(std::byte* p, uint64_t v) {
  std::memcpy(p, &v, sizeof v);
}

// Daemon mode's two sides in one process: the client library's
// CopyOnWrite protects one mapping and runs the handler; batond's settler
// copies from a second mapping of the same memory into a stage of its own.
// A writer hammers the client's mapping between commits; every stage must
// equal the memory at its commit. `dense`: it sweeps over the pages in
// order and writes more than half of them per commit, so the client lifts
// the protection whole once batond has settled (and the writes race that).
// `quiescent`: the commits come while the writer is paused, so the client
// copies the pages its protector had not reached aside once batond has
// marked them pending, and leaves them writable (copy_left).
void client_and_settler(bool protect_ahead, bool dense = false, bool quiescent = false) {
  constexpr uint32_t kPages = 512;
  Mapping m(kPages * kPage);
  auto* batond_view = static_cast<std::byte*>(mmap(nullptr, m.len, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0));
  ASSERT_NE(batond_view, MAP_FAILED);
  auto share = test::must(CowShare::create(m.len));
  auto client_share = test::must(CowShare::map(dup(share.fd()), m.len));
  auto client = test::must(CopyOnWrite::attach_client(m.p, m.len, std::move(client_share), protect_ahead));
  auto settler = test::must(CopyOnWrite::settler(batond_view, m.len, std::move(share)));
  std::vector<std::byte> stage(m.len), reference(m.len);
  ChunkBitmap stale;  // the stage's pages written since its last snapshot
  stale.reset(kPages);
  std::atomic<uint64_t> writes{0};
  std::atomic<bool> stop{false};
  // A dense writer stops at `limit` writes until the test moves it on:
  // each cycle it writes 3/4 of the pages before batond settles, and the
  // rest after, into pages settled and still protected (the lift). Left
  // to run, it wrote all of them before the test thread's first nap had
  // ended (a sanitizer's build under load), so nothing was ever lifted.
  std::atomic<uint64_t> limit{dense ? 0 : UINT64_MAX};
  test::WriterGate gate;
  std::thread writer([&] {
    std::mt19937_64 rng(7);
    uint64_t n = 0;
    while (!stop.load()) {
      gate.checkpoint(&stop);
      if (stop.load()) break;
      if (n >= limit.load()) {
        std::this_thread::sleep_for(20us);
        continue;
      }
      const uint64_t page = dense ? n % kPages : rng() % kPages;
      app_write(m.p + page * kPage + rng() % (kPage - 64), 64, static_cast<uint8_t>(++n));
      writes.store(n, std::memory_order_relaxed);
    }
  });
  const uint64_t kWritesPerCommit = dense ? kPages * 3 / 4 : 64;
  const int kGenerations = test::kSanitizerPatience > 1 ? 20 : 60;
  for (int g = 0; g < kGenerations; ++g) {
    gate.pause();
    {
      CopyOnWrite::Freeze f(*client);  // the client library's commit
      f.take_written([&](uint64_t off, uint64_t len) {
        stale.set_range(static_cast<uint32_t>(off / kPage), static_cast<uint32_t>((off + len) / kPage - 1));
      });
      const bool copy_left = quiescent && f.copy_left_pays();
      if (!copy_left) {
        ASSERT_TRUE(test::ok(f.protect()));
      }
      settler->pend(stage.data(), stale);  // batond, before it answers the commit
      if (copy_left) f.copy_left();
      std::memcpy(reference.data(), m.p, m.len);
    }
    const uint64_t from = writes.load();
    if (dense) limit.store(from + kWritesPerCommit);
    gate.resume();
    // The writer runs into pending pages: 200 us, and at least 64 writes
    // (on a loaded machine it may not run at all for a while: up to 100 ms,
    // 400 under a sanitizer).
    constexpr int kWaits = 1000 * static_cast<int>(test::kSanitizerPatience);
    std::this_thread::sleep_for(200us);
    for (int i = 0; i < kWaits && writes.load() < from + kWritesPerCommit; ++i) std::this_thread::sleep_for(100us);
    for (uint32_t p = stale.next_set(0); p < kPages; p = stale.next_set(p + 1)) settler->settle(p);
    stale.clear_all();
    ASSERT_EQ(std::memcmp(stage.data(), reference.data(), m.len), 0) << "generation " << g;
    if (dense) {  // and writes after it settled: the lift, then writes that run free
      const uint64_t settled_at = writes.load();
      limit.store(settled_at + 2 * kWritesPerCommit);
      for (int i = 0; i < kWaits && writes.load() < settled_at + 2 * kWritesPerCommit; ++i)
        std::this_thread::sleep_for(100us);
    }
  }
  stop.store(true);
  writer.join();
  // (With protection ahead the writer is slower, and on a loaded machine
  // may never run into a page before the settler: not asked for then.)
  if (!protect_ahead) {
    EXPECT_GT(settler->copied_aside(), 0u) << "the client's counters reach batond through the share";
  }
  EXPECT_EQ(settler->faults(), client->faults());
  EXPECT_EQ(settler->protected_ahead(), client->protected_ahead());
  if (protect_ahead && !dense) {
    EXPECT_GT(client->protected_ahead(), 0u);
  }
  if (dense && !quiescent) {  // (quiescent: its hot pages are copied at the commits, and fault no more)
    EXPECT_GT(client->lifted_whole(), 0u) << "a dense writer's protection was lifted whole";
    EXPECT_LT(client->faults(), writes.load() / 2) << "and most of its writes ran free";
  }
  EXPECT_EQ(settler->lifted_whole(), client->lifted_whole());
  EXPECT_EQ(settler->copied_at_commit(), client->copied_at_commit());
  if (quiescent && !dense) {
    EXPECT_GT(client->copied_at_commit(), 0u) << "no commit copied the pages left to it";
  }
  if (!quiescent) {
    EXPECT_EQ(client->copied_at_commit(), 0u);
  }
  client.reset();
  munmap(batond_view, m.len);
}

TEST(CopyOnWrite, ClientAndSettlerShareEachSnapshotExactly) {
  SKIP_WITHOUT_COW();
  client_and_settler(false);
}

TEST(CopyOnWrite, ClientAndSettlerShareEachSnapshotExactlyWhileTheClientProtectsAhead) {
  SKIP_WITHOUT_COW();
  client_and_settler(true);
}

TEST(CopyOnWrite, ClientAndSettlerShareEachSnapshotExactlyWhenQuiescentCommitsCopyWhatIsLeft) {
  SKIP_WITHOUT_COW();
  client_and_settler(true, false, true);
  client_and_settler(true, true, true);
}

TEST(CopyOnWrite, ClientAndSettlerShareEachSnapshotExactlyWhenTheClientLiftsADenseWriterWhole) {
  SKIP_WITHOUT_COW();
  client_and_settler(false, true);
  client_and_settler(true, true);
}

// batond trusts nothing in the share: a client that marks pages "being
// copied" and never finishes, or writes garbage, costs the settler at most
// its patience once per snapshot, and the pages come from the segment.
TEST(CopyOnWrite, ASettlerOutlastsAClientThatScribblesOnTheStates) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 256;
  Mapping m(kPages * kPage);
  std::memset(m.p, 5, m.len);
  auto share = test::must(CowShare::create(m.len));
  std::atomic<uint8_t>* states = share.states();
  auto settler = test::must(CopyOnWrite::settler(m.p, m.len, std::move(share)));
  std::vector<std::byte> stage(m.len);
  ChunkBitmap all;
  all.reset(kPages);
  all.set_all();
  settler->pend(stage.data(), all);
  for (uint32_t p = 0; p < kPages; ++p) states[p].store(p % 2 == 0 ? 2 /* copying */ : 77);
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t p = 0; p < kPages; ++p) settler->settle(p);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, 1s) << "waited more than its patience";
  EXPECT_EQ(std::memcmp(stage.data(), m.p, m.len), 0);
  for (uint32_t p = 0; p < kPages; ++p) EXPECT_FALSE(settler->pending(p));
  EXPECT_EQ(settler->settler_gave_up(), 1u) << "its patience ran out once, for the whole snapshot";
}

// A settler out of patience copies a page from the segment itself while
// the client's handler, stalled until then, finishes: it puts its copy
// aside, lifts the protection, and the application writes the page during
// the settler's copy. The settler's swap then fails, and the handler's
// copy, the page as at the commit, must be the one taken. (The settler
// counted its waits as failed swaps and, past four, kept its own torn
// copy: a kill campaign restored one such generation, session 48.) The
// settler's copy is held in a userfaultfd fault on its view of the page
// while this test plays the client and the application.
TEST(CopyOnWrite, ASettlerOutOfPatienceTakesTheHandlersCopyWhenItsOwnIsTorn) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 4;
  constexpr uint32_t kTorn = 1;
  auto* seg = static_cast<std::byte*>(
      mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(seg, MAP_FAILED);
  std::memset(seg, 1, kTorn * kPage);  // every page populated but the one the settler will stop in
  std::memset(seg + (kTorn + 1) * kPage, 1, (kPages - kTorn - 1) * kPage);
  const int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  ASSERT_GE(uffd, 0) << std::strerror(errno);
  uffdio_api api{};
  api.api = UFFD_API;
  ASSERT_EQ(ioctl(uffd, UFFDIO_API, &api), 0) << std::strerror(errno);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(seg + kTorn * kPage);
  reg.range.len = kPage;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  ASSERT_EQ(ioctl(uffd, UFFDIO_REGISTER, &reg), 0) << std::strerror(errno);

  auto share = test::must(CowShare::create(kPages * kPage));
  std::atomic<uint8_t>* states = share.states();
  std::byte* handlers_aside = share.aside() + kTorn * kPage;
  auto settler = test::must(CopyOnWrite::settler(seg, kPages * kPage, std::move(share)));
  std::vector<std::byte> stage(kPages * kPage);
  ChunkBitmap pend;
  pend.reset(kPages);
  pend.set(kTorn);
  settler->pend(stage.data(), pend);
  states[kTorn].store(2 /* copying: the client's handler took it and stalls */);

  std::atomic<bool> stopped_in_copy{false};
  std::thread client([&] {
    pollfd pfd{uffd, POLLIN, 0};
    if (poll(&pfd, 1, 10'000) != 1) return;  // the settler never read the page (the test fails below)
    uffd_msg msg{};
    if (read(uffd, &msg, sizeof msg) != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) return;
    stopped_in_copy.store(true);
    std::memset(handlers_aside, 0xA5, kPage);  // the handler's copy: the page as at the commit
    states[kTorn].store(4 /* aside */);
    std::vector<std::byte> written(kPage, std::byte{0x5A});  // the application's write, once lifted
    uffdio_copy copy{};
    copy.dst = reinterpret_cast<uintptr_t>(seg + kTorn * kPage);
    copy.src = reinterpret_cast<uintptr_t>(written.data());
    copy.len = kPage;
    (void)ioctl(uffd, UFFDIO_COPY, &copy);  // and the settler's copy goes on, over the written page
  });
  settler->settle(kTorn);
  client.join();
  EXPECT_TRUE(stopped_in_copy.load()) << "the settler never copied the page from the segment";
  EXPECT_FALSE(settler->pending(kTorn));
  EXPECT_EQ(settler->settler_gave_up(), 1u);
  const std::vector<std::byte> at_commit(kPage, std::byte{0xA5});
  EXPECT_EQ(std::memcmp(stage.data() + kTorn * kPage, at_commit.data(), kPage), 0)
      << "the stage holds the settler's torn copy (first byte " << static_cast<int>(stage[kTorn * kPage])
      << "), not the handler's";
  close(uffd);
  munmap(seg, kPages * kPage);
}

// The other way round: the application never waits for batond. batond's
// settler runs in a process of its own here and is stopped (SIGSTOP) at a
// random moment while it copies a snapshot, as a stalled or descheduled
// batond is; the application then writes every page, and each write must
// go through at once. When batond goes on, its stage is still exactly the
// memory at the commit. (A settler that marked the page it was copying
// made the application's next write to that page wait until it ran again:
// a daemon test hung on that for ten minutes.)
TEST(CopyOnWrite, AStoppedSettlerNeverStopsTheApplicationsWrites) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kPages = 4096;  // 16 MiB: a millisecond or more of copying, where the stops land
  Mapping m(kPages * kPage);
  struct Control {
    std::atomic<uint32_t> go{0}, pended{0}, done{0};
  };
  auto* ctl = static_cast<Control*>(mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* stage = static_cast<std::byte*>(mmap(nullptr, m.len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(ctl, MAP_FAILED);
  ASSERT_NE(stage, MAP_FAILED);
  new (ctl) Control;
  auto share = test::must(CowShare::create(m.len));
  const int kGenerations = test::kSanitizerPatience > 1 ? 6 : 16;
  const pid_t batond = fork();
  ASSERT_GE(batond, 0);
  if (batond == 0) {  // batond's side: pend every page, then settle them all
    auto* view = static_cast<std::byte*>(mmap(nullptr, m.len, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0));
    auto settler = CopyOnWrite::settler(view, m.len, std::move(share));
    if (view == MAP_FAILED || !settler) _exit(2);
    ChunkBitmap all;
    all.reset(kPages);
    all.set_all();
    for (uint32_t g = 1; g <= static_cast<uint32_t>(kGenerations); ++g) {
      while (ctl->go.load() != g) sched_yield();
      (*settler)->pend(stage, all);  // the client holds its Freeze meanwhile
      ctl->pended.store(g);
      for (uint32_t p = 0; p < kPages; ++p) (*settler)->settle(p);
      ctl->done.store(g);
    }
    while (ctl->go.load() != 0) sched_yield();  // stopped and continued once more, then told to go
    _exit(0);
  }
  struct Reaper {  // an assertion that returns early leaves no process behind
    pid_t pid;
    ~Reaper() {
      if (pid > 0 && kill(pid, SIGKILL) == 0) waitpid(pid, nullptr, 0);
    }
  } reaper{batond};
  auto client = test::must(CopyOnWrite::attach_client(m.p, m.len, test::must(CowShare::map(dup(share.fd()), m.len)), true));
  share = CowShare{};
  // Spins (test::eventually looks every 10 ms, and a stop must land in the
  // copy that starts the moment the settler has pended).
  const auto wait_for = [](const std::atomic<uint32_t>& v, uint32_t want) {
    for (auto until = std::chrono::steady_clock::now() + 10s; v.load() != want;)
      if (std::chrono::steady_clock::now() > until) return false;
      else std::this_thread::yield();
    return true;
  };
  std::mt19937_64 rng(11);
  std::vector<std::byte> reference(m.len);
  int stopped_while_settling = 0;
  for (uint32_t g = 1; g <= static_cast<uint32_t>(kGenerations); ++g) {
    SCOPED_TRACE(g);
    std::memcpy(reference.data(), m.p, m.len);  // nothing writes until the commit is done
    {
      CopyOnWrite::Freeze f(*client);  // the client library's commit
      f.take_written([](uint64_t, uint64_t) {});
      ASSERT_TRUE(test::ok(f.protect()));
      ctl->go.store(g);
      ASSERT_TRUE(wait_for(ctl->pended, g)) << "the settler never pended the snapshot";
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
    ASSERT_EQ(kill(batond, SIGSTOP), 0);
    int status = 0;
    ASSERT_EQ(waitpid(batond, &status, WUNTRACED), batond);
    ASSERT_TRUE(WIFSTOPPED(status));
    stopped_while_settling += ctl->done.load() != g;
    std::atomic<bool> written{false};
    std::thread app([&] {
      for (uint32_t p = 0; p < kPages; ++p) app_write(m.p + p * kPage + (p * 131 + g) % (kPage - 8), 8, static_cast<uint8_t>(g));
      written.store(true);
    });
    bool went_through = false;
    for (auto until = std::chrono::steady_clock::now() + 5s; std::chrono::steady_clock::now() < until;)
      if ((went_through = written.load())) break;
      else std::this_thread::sleep_for(1ms);
    ASSERT_EQ(kill(batond, SIGCONT), 0);
    app.join();
    EXPECT_TRUE(went_through) << "a write waited for a stopped batond";
    ASSERT_TRUE(wait_for(ctl->done, g));
    ASSERT_EQ(std::memcmp(stage, reference.data(), m.len), 0) << "the stage is not the memory at the commit";
  }
  ctl->go.store(0);
  int status = 0;
  ASSERT_EQ(waitpid(batond, &status, 0), batond);
  reaper.pid = 0;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_GT(stopped_while_settling, 0) << "no stop landed while batond settled: the test proved nothing";
  std::printf("%d of %d stops landed while batond settled\n", stopped_while_settling, kGenerations);
  client.reset();
  munmap(stage, m.len);
  munmap(ctl, sizeof(Control));
}

TEST(CopyOnWrite, AShareIsCheckedBeforeAClientUsesIt) {
  auto share = test::must(CowShare::create(16 * kPage));
  auto wrong_len = CowShare::map(dup(share.fd()), 32 * kPage);
  ASSERT_FALSE(wrong_len);
  EXPECT_EQ(wrong_len.error().code, Errc::kInvalidArgument);
  EXPECT_NE(ftruncate(share.fd(), 0), 0) << "sealed against shrinking";
  test::SharedMapping unsealed(CowShare::size_for(16 * kPage));
  auto bad = CowShare::map(dup(unsealed.fd), 16 * kPage);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
}

EngineConfig cow_config(bool protect_ahead = false) {
  EngineConfig c;
  c.snapshot_mode = EngineConfig::SnapshotMode::kCopyOnWrite;
  c.cow_protect_ahead = protect_ahead;
  return c;
}

// The test's writer thread hammers random pages (single bytes, runs of
// pages, across chunk boundaries) all the time but for the instant of each
// commit, when the test takes its stop-the-world reference copy. The
// worker meanwhile copies the snapshot; the writers' faults copy pages
// aside. Each generation on the replica must equal its reference. With
// protection ahead, the protector also races the writer and every commit.
// `dense`: the writer sweeps over the pages in order, and each commit
// waits until it wrote most of them, so the protection is lifted whole
// once a snapshot has settled, in the middle of the writes. `quiescent`:
// the commits say the writer is paused (CommitOptions::quiescent), so the
// pages the protector had not reached are copied by the commit and left
// writable: the writes after it to them fault nowhere, and must still be
// in the next generation.
void hammer_generations(bool protect_ahead, bool dense = false, bool quiescent = false) {
  Cluster cl(2, cow_config(protect_ahead));
  constexpr uint64_t kSize = (4 << 20) + 1000;  // not a whole number of pages
  auto seg = test::must(cl.node(1).create("hammered", kSize));
  ASSERT_TRUE(test::must(cl.node(1).status(seg)).copy_on_write);
  auto mem = cl.node(1).data(seg);
  std::atomic<bool> stop{false};
  test::WriterGate gate;
  std::atomic<uint64_t> writes{0};
  std::thread writer([&] {
    std::mt19937_64 rng(11);
    while (!stop.load()) {
      gate.checkpoint(&stop);
      if (stop.load()) break;
      const uint64_t len = rng() % 4 == 0 ? 1 + rng() % (3 * kPage) : 1;
      const uint64_t n = writes.load(std::memory_order_relaxed);
      const uint64_t off = dense ? (n * kPage + rng() % kPage) % (kSize - len + 1) : rng() % (kSize - len + 1);
      const auto b = static_cast<uint8_t>(rng());
      app_write(mem.data() + off, len, b);
      writes.fetch_add(1, std::memory_order_relaxed);
      // Quiescent: a sparse writer, so that the commits find scattered
      // pages left to them, not a dense region protected whole (a sanitizer
      // build's few generations were all dense once, and copied nothing).
      if (quiescent) std::this_thread::sleep_for(20us);
    }
  });
  const auto before = cl.node(1).stats();
  const int kGenerations = test::kSanitizerPatience > 1 ? 25 : 60;  // a sanitizer build is 10-50x slower
  const uint64_t pages = (kSize + kPage - 1) / kPage;
  for (int g = 1; g <= kGenerations; ++g) {
    const uint64_t from = writes.load();
    std::this_thread::sleep_for(std::chrono::microseconds(200 + g * 37 % 900));
    for (int i = 0; dense && i < 20000 && writes.load() < from + pages * 3 / 4; ++i) std::this_thread::sleep_for(100us);
    gate.pause();
    // The last page is written, so this snapshot copies it; the worker
    // copies in order and gets there last, so the write straight after the
    // commit nearly always races it (the hammering writer may not: it
    // waits for the reference copy).
    app_write(mem.data() + kSize - 8, 8, static_cast<uint8_t>(g));
    const auto want = std::vector<std::byte>(mem.begin(), mem.end());
    const uint64_t gen = test::must(cl.node(1).commit(seg, {.quiescent = quiescent}));
    app_write(mem.data() + kSize - 8, 8, static_cast<uint8_t>(g + 100));
    gate.resume();
    ASSERT_EQ(gen, static_cast<uint64_t>(g));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, 1, 20s))) << "generation " << g;
    auto rep = test::must(cl.node(2).read_replica("hammered", gen));
    ASSERT_TRUE(rep == want) << "generation " << g << " differs on the replica";
  }
  stop.store(true);
  writer.join();
  const auto after = cl.node(1).stats();
  const auto st = test::must(cl.node(1).status(seg));
  EXPECT_EQ(after.cow_snapshots - before.cow_snapshots, static_cast<uint64_t>(kGenerations));
  EXPECT_GT(st.cow_faults, static_cast<uint64_t>(kGenerations)) << writes.load() << " writes";
  EXPECT_GT(after.cow_pages_settled - before.cow_pages_settled, 0u) << "the worker copied pages";
  EXPECT_GT(st.cow_copied_aside, 0u) << "and the writer raced it for some (a write before the worker got there)";
  if (protect_ahead && !dense) {
    EXPECT_GT(st.cow_protected_ahead, 0u) << "the protector protected written pages ahead";
  }

  if (!protect_ahead) {
    EXPECT_EQ(st.cow_protected_ahead, 0u);
  }
  if (dense) {
    EXPECT_GT(st.cow_lifted_whole, 0u) << "the dense writer's protection was lifted whole";
  }
  if (quiescent && protect_ahead) {
    EXPECT_GT(st.cow_copied_at_commit, 0u) << "no commit copied the pages left to it";
  } else {
    EXPECT_EQ(st.cow_copied_at_commit, 0u) << "only quiescent commits copy, and only with the protector";
  }
  std::printf("%llu writes, %llu faults, %llu pages settled by the worker, %llu copied aside by the writer, "
              "%llu protected ahead, %llu by the commits, lifted whole %llu times\n",
              static_cast<unsigned long long>(writes.load()), static_cast<unsigned long long>(st.cow_faults),
              static_cast<unsigned long long>(after.cow_pages_settled - before.cow_pages_settled),
              static_cast<unsigned long long>(st.cow_copied_aside),
              static_cast<unsigned long long>(st.cow_protected_ahead),
              static_cast<unsigned long long>(st.cow_protected_at_commit),
              static_cast<unsigned long long>(st.cow_lifted_whole));
}

// The engine's commits make the pages written since the last one pending
// by the tags their faults left (no store per page), once the stages have
// caught up: a few pages written between commits, from the committing
// thread (so the cycles are sparse however slow the build), then written
// again straight after each commit, before the worker settles them (they
// are copied aside first). Every generation is the memory at its commit.
TEST(CopyOnWrite, TheEnginesCommitsPendWrittenPagesByTheirTags) {
  SKIP_WITHOUT_COW();
  for (const bool ahead : {false, true}) {
    Cluster cl(2, cow_config(ahead));
    constexpr uint64_t kSize = 4 << 20;
    auto seg = test::must(cl.node(1).create("tagged", kSize));
    auto mem = cl.node(1).data(seg);
    std::mt19937_64 rng(ahead ? 3 : 4);
    const auto before = cl.node(1).stats();
    constexpr int kGenerations = 30;
    for (int g = 1; g <= kGenerations; ++g) {
      std::vector<uint64_t> pages;
      for (int i = 0; i < 8; ++i) pages.push_back(rng() % (kSize / kPage));
      for (uint64_t p : pages) app_write(mem.data() + p * kPage + rng() % kPage, 1, static_cast<uint8_t>(g));
      const auto want = std::vector<std::byte>(mem.begin(), mem.end());
      const uint64_t gen = test::must(cl.node(1).commit(seg));
      for (uint64_t p : pages) app_write(mem.data() + p * kPage, 16, static_cast<uint8_t>(g + 100));
      ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, 1, 20s))) << "generation " << g;
      ASSERT_TRUE(test::must(cl.node(2).read_replica("tagged", gen)) == want) << "generation " << g;
    }
    const auto after = cl.node(1).stats();
    EXPECT_GE(after.cow_pended_by_tags - before.cow_pended_by_tags, static_cast<uint64_t>(kGenerations / 2))
        << (ahead ? "protected ahead" : "protected at the commit");
    EXPECT_GT(test::must(cl.node(1).status(seg)).cow_copied_aside, 0u) << "no write raced the worker";
  }
}

// A snapshot whose last written chunk uses up a poll's settling budget is
// whole in that same poll: 64 chunks of 8 KiB written are four polls of 16
// exactly. Were it whole only a poll later, the senders would send the
// last 16 (one burst) without the generation's checksum first, and the
// replica, holding every chunk but that, would wait out the sender's
// retransmit timeout for it (a frame resent, 2 ms at least).
TEST(CopyOnWrite, ASnapshotWholeAtTheEndOfASlicesBudgetGoesWithoutAResend) {
  SKIP_WITHOUT_COW();
  constexpr uint32_t kChunk = 8 << 10, kChunks = 512, kWritten = 64;
  EngineConfig config = cow_config();
  config.chunk_size = kChunk;       // (the test link's frames take it whole)
  config.copy_slice = 16 * kChunk;  // what a poll settles: less than a burst of frames
  Cluster cl(2, config);
  auto seg = test::must(cl.node(1).create("sliced", uint64_t{kChunks} * kChunk));
  auto mem = cl.node(1).data(seg);
  uint64_t copied = 0;
  int resent_in = 0;  // generations that resent a frame
  for (int g = 1; g <= 8; ++g) {
    for (uint32_t c = 0; c < kWritten; ++c)  // 64 chunks, spread over the segment, a page each
      app_write(mem.data() + (uint64_t{c} * (kChunks / kWritten) + g % 3) * kChunk + 100, 1, static_cast<uint8_t>(g));
    const auto want = std::vector<std::byte>(mem.begin(), mem.end());
    const auto before = cl.node(1).stats();
    const uint64_t gen = test::must(cl.node(1).commit(seg));
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, 1, 20s))) << "generation " << g;
    ASSERT_TRUE(test::must(cl.node(2).read_replica("sliced", gen)) == want) << "generation " << g;
    // From the third on, a delta of just those chunks (the free stage has
    // caught up with the last one by then).
    const auto after = cl.node(1).stats();
    if (g >= 3) {
      resent_in += after.retransmits != before.retransmits;
      copied += after.snapshot_chunks_copied - before.snapshot_chunks_copied;
    }
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(copied, uint64_t{6} * kWritten) << "each snapshot settled just the chunks written";
  // Before the fix every one of the six resent. A stall longer than the
  // retransmit timeout (a loaded machine, a sanitizer build) may resend
  // in one or two.
  EXPECT_LE(resent_in, 2) << "generations that resent a frame: their checksum came a poll late";
}

TEST(CopyOnWrite, EveryGenerationIsTheMemoryAtItsCommitWhileAWriterHammers) {
  SKIP_WITHOUT_COW();
  hammer_generations(false);
}

TEST(CopyOnWrite, EveryGenerationIsExactWhileTheProtectorRacesTheWriterAndTheCommits) {
  SKIP_WITHOUT_COW();
  hammer_generations(true);
}

TEST(CopyOnWrite, EveryGenerationIsExactWhenQuiescentCommitsCopyWhatTheProtectorLeft) {
  SKIP_WITHOUT_COW();
  hammer_generations(true, false, true);
}

TEST(CopyOnWrite, AQuiescentCommitWithoutTheProtectorProtects) {
  SKIP_WITHOUT_COW();
  hammer_generations(false, false, true);
}

TEST(CopyOnWrite, EveryGenerationIsExactWhileADenseWritersProtectionIsLiftedWhole) {
  SKIP_WITHOUT_COW();
  hammer_generations(false, true);
}

// Deltas and copy-on-write across a replica restart and a new replica
// (whole generations for them, deltas after), a reopen that puts the
// committed generation back, and the memory handed out (copy-on-write
// stops; commits copy): byte-exact at every generation.
TEST(CopyOnWrite, GenerationsStayExactAcrossRestartsReopenAndHandingOut) {
  SKIP_WITHOUT_COW();
  EngineConfig c = cow_config();
  c.replication_factor = 2;
  Cluster cl(4, c);
  const uint64_t kSize = test::kSanitizerPatience > 1 ? 256 << 10 : 1 << 20;
  auto seg = test::must(cl.node(1).create("cow-deltas", kSize));
  auto mem = cl.node(1).data(seg);
  std::mt19937_64 rng(5);
  std::vector<std::byte> committed;
  std::byte* other = nullptr;
  for (int g = 1; g <= 160; ++g) {
    for (int w = 1 + static_cast<int>(rng() % 4); w > 0; --w) {
      const uint64_t len = 1 + rng() % (kSize / 50), off = rng() % (kSize - len);
      std::byte* dst = other != nullptr && rng() % 2 == 0 ? other : mem.data();
      for (uint64_t i = 0; i < len; i += 61) dst[off + i] = std::byte(static_cast<uint8_t>(rng()));
    }
    if (g == 70) {  // the application's writes since g 69 are dropped
      auto reopened = test::must(cl.node(1).reopen(seg));
      ASSERT_EQ(reopened.generation, 69u);
      ASSERT_TRUE(std::equal(committed.begin(), committed.end(), mem.begin()));
      mem[12345] = std::byte{0x42};
    }
    const auto want = std::vector<std::byte>(mem.begin(), mem.end());
    const uint64_t gen = test::must(cl.node(1).commit(seg));
    committed = want;
    ASSERT_TRUE(test::ok(cl.node(1).wait_replicated(seg, gen, 2, 20s))) << "generation " << g;
    for (const auto& [node, held] : test::must(cl.node(1).status(seg)).replicas) {
      auto rep = test::must(cl.node(node).read_replica("cow-deltas", gen));
      ASSERT_TRUE(rep == want) << "generation " << g << " differs on node " << node;
    }
    const auto replicas = test::must(cl.node(1).status(seg)).replicas;
    if (g == 40) cl.restart(replicas.at(0).first);
    if (g == 100) cl.kill(replicas.at(1).first);
    if (g == 130) {
      EXPECT_TRUE(test::must(cl.node(1).status(seg)).copy_on_write);
      const int fd = cl.node(1).memory_fd(seg);
      ASSERT_GE(fd, 0);
      other = static_cast<std::byte*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
      ASSERT_NE(other, MAP_FAILED);
      EXPECT_FALSE(test::must(cl.node(1).status(seg)).copy_on_write) << "another mapping would bypass it";
    }
  }
  munmap(other, kSize);
  const auto st = cl.node(1).stats();
  EXPECT_GT(st.cow_snapshots, 120u);
  EXPECT_GT(st.deltas_sent, 200u);
}

// Periodic commits (S5): the engine commits by itself every few ms while
// the application's writer never stops. The writer stamps a counter into
// 64 pages spread over the segment, always from the last to the first (the
// commit protects in ascending order: the writer runs into it), so at any
// instant the pages read k-1, ..., k-1, k, ..., k (one step, upwards). A
// snapshot of one instant has that shape; a copy taken while the writer
// runs (the stage copy would be one), or a commit point a write could
// cross, would not. And nothing is committed while nothing is written.
TEST(CopyOnWrite, PeriodicCommitsAreSnapshotsOfOneInstantWhileTheApplicationRuns) {
  SKIP_WITHOUT_COW();
  // A sanitizer build checksums an order of magnitude slower: a longer
  // period, fewer generations looked at.
  const bool slow = test::kSanitizerPatience > 1;
  const int kChecks = slow ? 3 : 20;
  EngineConfig c = cow_config();
  c.commit_every_ms = slow ? 60 : 3;
  c.retain = 8;
  Cluster cl(2, c);
  constexpr uint64_t kSize = 2 << 20;
  constexpr int kStamps = 64;
  auto seg = test::must(cl.node(1).create("periodic", kSize));
  auto mem = cl.node(1).data(seg);
  auto at = [&](int i) { return mem.data() + (kSize / kStamps) * static_cast<uint64_t>(i) + 40; };
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (uint64_t k = 1; !stop.load(std::memory_order_relaxed); ++k)
      for (int i = kStamps - 1; i >= 0; --i) app_write_u64(at(i), k);
  });
  int checked = 0;
  uint64_t last = 0;
  for (int spins = 0; checked < kChecks && spins < 2000; ++spins) {
    std::this_thread::sleep_for(2ms);
    const uint64_t g = test::must(cl.node(1).status(seg)).generation;
    if (g == last) continue;
    last = g;
    if (!test::ok(cl.node(1).wait_replicated(seg, g, 1, 10s))) continue;
    auto rep = cl.node(2).read_replica("periodic", g);
    if (!rep) continue;  // superseded and dropped meanwhile
    std::vector<uint64_t> k(kStamps);
    for (int i = 0; i < kStamps; ++i) std::memcpy(&k[i], rep->data() + (at(i) - mem.data()), 8);
    int steps = 0;
    for (int i = 1; i < kStamps; ++i) {
      ASSERT_TRUE(k[i] == k[i - 1] || k[i] == k[i - 1] + 1)
          << "generation " << g << ": stamp " << i << " is " << k[i] << " after " << k[i - 1];
      steps += k[i] != k[i - 1];
    }
    ASSERT_LE(steps, 1) << "generation " << g;
    ++checked;
  }
  stop.store(true);
  writer.join();
  EXPECT_GE(checked, kChecks);
  const uint64_t periodic = cl.node(1).stats().periodic_commits;
  EXPECT_GE(periodic, static_cast<uint64_t>(kChecks));
  // Quiet memory: no more generations.
  std::this_thread::sleep_for(std::chrono::milliseconds(7 * c.commit_every_ms));
  const uint64_t settled = test::must(cl.node(1).status(seg)).generation;
  std::this_thread::sleep_for(std::chrono::milliseconds(10 * c.commit_every_ms));
  EXPECT_EQ(test::must(cl.node(1).status(seg)).generation, settled) << "nothing written, nothing committed";
  // The application's own commits go on beside them (a periodic one may
  // take the write first: the commit is then the one after it).
  mem[5] = std::byte{1};
  const uint64_t own = test::must(cl.node(1).commit(seg));
  EXPECT_GE(own, settled + 1);
  EXPECT_LE(own, settled + 2);
}

// With a period, only writes make generations: none after the create
// while nothing is written, one once something is, and none after a
// reopen (the memory is the committed generation again) until the next
// write.
TEST(CopyOnWrite, APeriodCommitsOnlyWhatIsWritten) {
  SKIP_WITHOUT_COW();
  EngineConfig c = cow_config();
  c.commit_every_ms = 2;
  Cluster cl(2, c);
  auto seg = test::must(cl.node(1).create("quiet", 1 << 20));
  std::this_thread::sleep_for(250ms);  // the periodic thread notices a new segment within 100 ms
  EXPECT_EQ(test::must(cl.node(1).status(seg)).generation, 0u) << "nothing written since the create";
  cl.node(1).data(seg)[4096 * 7] = std::byte{7};
  for (int i = 0; i < 500 && test::must(cl.node(1).status(seg)).generation == 0; ++i)
    std::this_thread::sleep_for(2ms);
  // A write makes a generation. (Now and then two, the first of nothing
  // new: the periodic thread froze the page between the write's fault and
  // its landing. It waits for a write in flight, which took this from one
  // run in ten to one or two in a hundred: a write descheduled longer
  // than that still makes two. See reliability.md. So the count is taken
  // once it holds still.)
  uint64_t written = test::must(cl.node(1).status(seg)).generation;
  ASSERT_GE(written, 1u) << "a write, no generation";
  for (uint64_t was = 0; was != written;) {
    was = written;
    std::this_thread::sleep_for(60ms);  // 30 periods
    written = test::must(cl.node(1).status(seg)).generation;
  }
  auto again = test::must(cl.node(1).reopen(seg));
  EXPECT_EQ(again.generation, written);
  std::this_thread::sleep_for(250ms);
  EXPECT_EQ(test::must(cl.node(1).status(again.segment)).generation, written) << "nothing written since the reopen";
  EXPECT_EQ(cl.node(1).data(again.segment)[4096 * 7], std::byte{7});
  cl.node(1).data(again.segment)[0] = std::byte{1};
  for (int i = 0; i < 500 && test::must(cl.node(1).status(again.segment)).generation == written; ++i)
    std::this_thread::sleep_for(2ms);
  EXPECT_GT(test::must(cl.node(1).status(again.segment)).generation, written);
}

// A stage-copy segment cannot be snapshotted while it runs: a period asked
// for one is refused (logged) and only the application commits.
TEST(CopyOnWrite, NoPeriodicCommitsWithoutCopyOnWrite) {
  EngineConfig c;
  c.commit_every_ms = 2;
  Cluster cl(2, c);
  auto seg = test::must(cl.node(1).create("no-periodic", 1 << 20));
  cl.node(1).data(seg)[0] = std::byte{1};
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(test::must(cl.node(1).status(seg)).generation, 0u);
  EXPECT_EQ(cl.node(1).stats().periodic_commits, 0u);
}

TEST(CopyOnWrite, SnapshotModesAreValidated) {
  EngineConfig c;
  c.snapshot_modes = {{"bad name", EngineConfig::SnapshotMode::kCopyOnWrite, {}}};
  EXPECT_EQ(Engine::start(c, {}).error().code, Errc::kInvalidArgument);
  c.snapshot_modes = {{"a", EngineConfig::SnapshotMode::kCopyOnWrite, {}},
                      {"a", EngineConfig::SnapshotMode::kStageCopy, 5u}};
  auto e = Engine::start(c, {});
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("twice"), std::string::npos) << e.error().message;
}

}  // namespace
}  // namespace baton
