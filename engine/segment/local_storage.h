#pragma once
// Local storage (S2): memory only this node addresses, shareable with an
// application process through its file descriptor. A memfd, on huge pages when
// the size allows and the kernel has them, bound to one NUMA node, its size
// sealed (F_SEAL_SHRINK | F_SEAL_GROW): whoever holds the descriptor may
// write the bytes but cannot truncate the file under this node's mapping.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "baton/result.h"

namespace baton {

class LocalStorage {
 public:
  LocalStorage() = default;
  LocalStorage(LocalStorage&& o) noexcept { *this = std::move(o); }
  LocalStorage& operator=(LocalStorage&& o) noexcept;
  LocalStorage(const LocalStorage&) = delete;
  LocalStorage& operator=(const LocalStorage&) = delete;
  ~LocalStorage();

  /// Creates `size` bytes of zeroed, faulted-in memory named `name` (for
  /// /proc/<pid>/fd), bound to `numa_node` (-1: the calling thread's node).
  /// Errors: kInvalidArgument (size 0), kNoMemory, kIo. Thread: control.
  ///
  /// kSmall: 4 KiB pages even where huge ones would fit, for memory whose
  /// writes are tracked page by page (a written huge page is 2 MiB dirty).
  ///
  /// kLater: 4 KiB pages are left to fault in on first touch, or to
  /// populate() on another thread (at 4 KiB, faulting in 64 MiB takes
  /// ~40 ms here, against ~11 ms on huge pages); huge pages are always
  /// faulted in here, where a short pool shows as kNoMemory, not later
  /// as SIGBUS.
  enum class Pages : uint8_t { kAny, kSmall };
  enum class Populate : uint8_t { kNow, kLater };
  static Result<LocalStorage> create(const std::string& name, uint64_t size, int numa_node,
                                     Pages pages = Pages::kAny, Populate populate = Populate::kNow);

  /// A second mapping of this storage's memory (its descriptor
  /// duplicated): the bytes are the same, each mapping lives on its own,
  /// and the memory goes back when both are gone. Errors: kIo.
  /// Thread: any.
  Result<LocalStorage> share() const;

  /// Whether every page is faulted in (create() with kNow, or huge pages).
  bool populated() const noexcept { return populated_; }
  /// Faults in what is not yet. It changes no byte, so it may run on any
  /// thread while others read and write the memory; the caller keeps the
  /// storage alive until it returns.
  void populate() const noexcept;

  std::byte* data() const noexcept { return data_; }
  uint64_t size() const noexcept { return size_; }
  /// The mapping's length: size() rounded up to the page size.
  uint64_t mapped_size() const noexcept { return mapped_; }
  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  int fd() const noexcept { return fd_; }
  bool huge_pages() const noexcept { return huge_; }
  int numa_node() const noexcept { return node_; }

 private:
  bool map_memfd(const std::string& label, uint64_t size, int node, bool huge, bool populate);

  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t mapped_ = 0;
  int fd_ = -1;
  int node_ = -1;
  bool huge_ = false;
  bool populated_ = false;
};

}  // namespace baton
