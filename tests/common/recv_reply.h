#pragma once
// Receiving one batond reply, with the descriptors it passes, on the raw
// socket protocol (hostile-client tests, the IPC fuzzer).

#include <sys/socket.h>

#include <cstring>
#include <vector>

namespace baton::test {

/// recvmsg() of one message into `buf`, appending any SCM_RIGHTS
/// descriptors to `fds` (the caller owns them). Returns recvmsg's result.
inline ssize_t recv_with_fds(int sock, std::vector<char>& buf, std::vector<int>& fds, int flags = 0) {
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  return n;
}

}  // namespace baton::test
