#pragma once
// A shared memfd mapping for tests of write tracking and copy-on-write:
// `populate` faults every page in now (else none is populated yet).

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>

#include <gtest/gtest.h>

namespace baton::test {

struct SharedMapping {
  explicit SharedMapping(size_t len, bool populate = false) : len(len) {
    fd = memfd_create("baton-test", MFD_CLOEXEC);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(len)), 0);
    p = static_cast<std::byte*>(
        mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0));
    EXPECT_NE(p, MAP_FAILED);
  }
  ~SharedMapping() {
    munmap(p, len);
    close(fd);
  }
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  size_t len;
  int fd;
  std::byte* p;
};

}  // namespace baton::test
