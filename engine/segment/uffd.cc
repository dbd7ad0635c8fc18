#include "segment/uffd.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace baton::uffd {

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

Result<int> open_write_protect(std::byte* base, uint64_t len, uint64_t features, const char* feature_names) {
  const int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (fd < 0) {
    std::string why = errno_text("userfaultfd");
    if (errno == EPERM) why += " (vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE)";
    return fail(Errc::kUnavailable, why);
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = features;
  std::string why;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    why = errno_text((std::string("UFFDIO_API with ") + feature_names).c_str());
  } else {
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uintptr_t>(base);
    reg.range.len = len;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) why = errno_text("UFFDIO_REGISTER for write-protect");
  }
  if (!why.empty()) {
    close(fd);
    return fail(Errc::kUnavailable, why);
  }
  return fd;
}

}  // namespace baton::uffd
