#pragma once
// A same-host peer's death, seen as it happens.
//
// Two processes that share memory (a memif link's two ends, an shm
// region's two sides) each hold a robust, process-shared mutex there. The
// kernel marks a robust mutex's owner dead while the holding thread exits,
// before the process's memory is torn down; everything else a peer can
// see of a death comes after that teardown: memif's control socket closes
// and /proc shows a zombie only once the last thread has unmapped
// everything, which for a batond takes milliseconds (5 ms of memif's
// detection on this project's machines). The other side reads the lock's
// word: a load, cheap enough for every poll of a link.
//
// The lock is an accelerator, not the detector: a link whose lock could
// not be taken (another user's file, an old build on the other side) still
// goes down the way it did, through the device or the peer's process.

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "baton/result.h"

namespace baton {

/// Two robust, process-shared mutexes, one per side, in memory both sides
/// map (a region's header, a small file beside a socket).
struct LockPair {
  pthread_mutex_t side[2];
};

/// Makes both mutexes (robust, process-shared). Only while neither side
/// uses the memory: under the region's own initialisation lock. Errors:
/// kIo.
Result<void> init_lock_pair(LockPair* pair) noexcept;

/// This side's hold on its mutex of a LockPair, and what the other side's
/// says. The mutex is taken and released by one thread of the process that
/// lives as long as the process (robust mutexes belong to a thread, and are
/// marked owner-dead when that thread ends), so any thread may create and
/// destroy a PeerLock. peer_gone(): any thread (a port's links on several
/// workers share one).
class PeerLock {
 public:
  /// Holds nothing; peer_gone() is always false.
  PeerLock() = default;
  /// Takes side `side`'s mutex (0 or 1). A mutex whose holder died is
  /// taken over. Errors: kInvalidArgument (a bad side, or the side is held
  /// by a live holder), kIo.
  static Result<PeerLock> hold(LockPair* pair, int side);
  ~PeerLock();
  PeerLock(PeerLock&& o) noexcept;
  PeerLock& operator=(PeerLock&& o) noexcept;
  PeerLock(const PeerLock&) = delete;
  PeerLock& operator=(const PeerLock&) = delete;

  /// Lets go of this side's mutex now (as the destructor does): the other
  /// side sees it gone. Before the memory is unmapped.
  void release() noexcept;

  /// Whether the other side's holder is gone: its mutex is marked
  /// owner-dead (the holding process died), or it was seen held and is free
  /// now (it detached). Never true of a side never seen held. False again
  /// once a successor holds it. A load of the other side's lock word.
  bool peer_gone() noexcept;

  /// Whether this side holds its mutex.
  bool holding() const noexcept { return pair_ != nullptr; }

 private:
  LockPair* pair_ = nullptr;
  int side_ = 0;
  std::atomic<bool> seen_held_{false};  ///< the other side was seen holding its mutex
};

/// A LockPair in a small file of its own, for a link whose two ends share
/// no memory of Baton's (memif: the PMD's regions are its own): the file
/// is `path`, made (0600) and set up by whichever end comes first, and
/// mapped by both. Holds this end's side while it lives; the last end to
/// let go removes the file.
class PeerLockFile {
 public:
  /// Errors: kIo (the file cannot be made, sized or mapped), and hold()'s.
  static Result<std::unique_ptr<PeerLockFile>> open(const std::string& path, int side);
  ~PeerLockFile();
  PeerLockFile(const PeerLockFile&) = delete;
  PeerLockFile& operator=(const PeerLockFile&) = delete;

  /// See PeerLock::peer_gone(). Thread: any.
  bool peer_gone() noexcept { return lock_.peer_gone(); }

 private:
  PeerLockFile() = default;
  std::string path_;
  ino_t inode_ = 0;  ///< the file mapped (the path may name another one later)
  void* map_ = nullptr;
  PeerLock lock_;
};

}  // namespace baton
