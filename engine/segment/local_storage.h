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
  enum class Pages : uint8_t { kAny, kSmall };
  static Result<LocalStorage> create(const std::string& name, uint64_t size, int numa_node,
                                     Pages pages = Pages::kAny);

  std::byte* data() const noexcept { return data_; }
  uint64_t size() const noexcept { return size_; }
  /// The mapping's length: size() rounded up to the page size.
  uint64_t mapped_size() const noexcept { return mapped_; }
  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  int fd() const noexcept { return fd_; }
  bool huge_pages() const noexcept { return huge_; }
  int numa_node() const noexcept { return node_; }

 private:
  bool map_memfd(const std::string& label, uint64_t size, int node, bool huge);

  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t mapped_ = 0;
  int fd_ = -1;
  int node_ = -1;
  bool huge_ = false;
};

}  // namespace baton
