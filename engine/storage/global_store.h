#pragma once
// Global storage (S7): replicas also write each published generation to a
// directory (a shared file system in production), so the state survives the
// loss of every replica's memory. One file per (segment, epoch, generation,
// node): written to a temp file, fsynced, renamed, and the directory fsynced;
// the newest `keep` per segment and node are kept. A reader takes the newest
// file whose checksum matches; temp files (a write killed half-way) are never
// read.
//
// A delete leaves a marker, `deleted-e<epoch>`, written the same way before
// any copy is removed: copies at or below that owner epoch are never read
// again, even once every node (and its in-memory tombstone) is gone, and a
// write that was still in flight removes its own file when it lands under
// the marker. A new history of the name starts above the marker's epoch.
//
// Writes happen on the store's own thread, never on the poll loop: the poll
// loop submits a pinned replica slot and the thread releases the pin when the
// file is safe.

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "baton/result.h"

namespace baton {

struct GlobalCopy {
  std::string path;
  uint64_t epoch = 0;
  uint64_t generation = 0;
  uint64_t size = 0;
  std::string name;  ///< the segment's (newest() sets it): read() checks the file's header says so
};

class GlobalStore {
 public:
  /// One write. Plain data (the name in place): submitting allocates nothing.
  struct Job {
    char name_buf[64] = {};  ///< a segment name (wire::kMaxNameLen = 63)
    uint8_t name_len = 0;
    uint64_t epoch = 0, generation = 0, size = 0;
    const std::byte* data = nullptr;
    std::atomic<uint32_t>* pin = nullptr;  ///< decremented once the bytes are no longer needed

    std::string_view name() const noexcept { return {name_buf, name_len}; }
    /// False (and nothing set) for a name longer than 63 bytes.
    bool set_name(std::string_view n) noexcept;
  };
  static constexpr size_t kMaxQueued = 16;  ///< writes waiting; more are skipped

  /// Creates `dir` if needed and starts the writer. Errors: kIo. Thread: control.
  static Result<std::unique_ptr<GlobalStore>> open(const std::string& dir, uint32_t keep, uint16_t node);
  ~GlobalStore();  ///< finishes queued writes, then stops

  /// Queues a write; the job's pin is released when done. Returns false (and
  /// releases nothing) when the writer is far behind: that generation is
  /// skipped, the next one will be written. Thread: poll-token holder.
  bool submit(Job job);

  /// The newest intact copy of `name` in `dir`, written by any node.
  /// Thread: any (reads the directory).
  /// Only copies written under owner epoch `min_epoch` or later, and above
  /// the name's delete marker, count (a deleted history's files are older
  /// than its tombstone's epoch).
  static std::optional<GlobalCopy> newest(const std::string& dir, std::string_view name, uint64_t max_size,
                                          uint64_t min_epoch = 0);
  /// Deletes `name` at owner epoch `epoch`: durably marks it so, then
  /// removes every copy written under that epoch or below. Errors: kIo,
  /// kInvalidArgument. Thread: any.
  static Result<void> remove(const std::string& dir, std::string_view name, uint64_t epoch);
  /// The owner epoch of the newest delete marker of `name` (0: none).
  /// Thread: any.
  static uint64_t deleted_epoch(const std::string& dir, std::string_view name);
  /// Reads a copy into `dest` (exactly its size), verifying its checksum.
  /// Errors: kIo, kCorrupt. Thread: any.
  static Result<void> read(const GlobalCopy& copy, std::span<std::byte> dest);

  uint64_t written() const noexcept { return written_.load(); }
  uint64_t failed() const noexcept { return failed_.load(); }
  /// Writes dropped because the name was deleted at or above their epoch.
  uint64_t dropped() const noexcept { return dropped_.load(); }

 private:
  GlobalStore(std::string dir, uint32_t keep, uint16_t node) : dir_(std::move(dir)), keep_(keep), node_(node) {}
  void run();
  /// Writes the job's file; false (nothing left behind) when the name was
  /// deleted at or above the job's epoch, before or while it was written.
  Result<bool> write(const Job& job);
  void prune(std::string_view name);

  std::string dir_;
  uint32_t keep_;
  uint16_t node_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::array<Job, kMaxQueued> queue_{};  ///< a ring: head_ is the oldest, count_ queued
  size_t head_ = 0, count_ = 0;
  bool stopping_ = false;
  std::thread thread_;
  std::atomic<uint64_t> written_{0}, failed_{0}, dropped_{0};
};

}  // namespace baton
