#pragma once
// What batond's server files share (ipc/server.cc: accepting and sessions;
// ipc/commit_thread.cc: the commit lanes; ipc/server_status.cc: status):
// the records behind Server's opaque Segment and Session.

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipc/messages.h"
#include "ipc/server.h"
#include "segment/local_storage.h"

namespace baton::ipc {

inline constexpr uid_t kNoUser = static_cast<uid_t>(-1);

struct Server::Segment {
  std::string name;
  baton::Segment* handle = nullptr;  ///< the engine's; registry_mu_
  uint32_t id = 0;                   ///< the handle applications use
  uint64_t size = 0;
  Session* holder = nullptr;         ///< the application holding it; registry_mu_
  /// A take-over (batonctl load, the failover manager's load) holds it,
  /// leaving it free for the application to come: an open waits for it
  /// (Server::loading_for). registry_mu_.
  bool taking_over = false;
  /// Its last holder's user: what batond keeps for a user that nobody
  /// holds is bounded (over_kept). kNoUser: loaded by an agent for an
  /// application to come. registry_mu_.
  uid_t uid = kNoUser;
  LocalStorage channel_mem;          ///< the CommitChannel page
  CommitChannel* channel = nullptr;
  /// The holder's doorbell: an eventfd of its own (a doorbell shared by
  /// every application let one that read it swallow the others' rings),
  /// in its commit lane's epoll set from attach to detach. Made by the
  /// open (session thread), closed by detach.
  int bell_fd = -1;
  ~Segment() {
    if (bell_fd >= 0) ::close(bell_fd);
  }
  uint32_t seen = 0;                 ///< last request answered; its commit lane's thread (lane mutex)
  /// Posted commits (CommitLog), its commit lane's thread (lane mutex):
  /// slots taken so far, and the segment as last committed, onto which
  /// they apply (empty for a segment above kLogMaxSegment: it posts
  /// nothing). `shadow_stale`: a commit from it failed after it changed,
  /// so only a post of the whole segment or a waiting commit (which
  /// refreshes it from the memory) may post again.
  uint32_t log_tail = 0;
  std::vector<std::byte> shadow;
  bool shadow_stale = false;
  /// A post was refused and none taken since: later refusals keep the
  /// first one's status in the log (it is the cause).
  bool refusing = false;
};

struct Server::Session {
  int fd = -1;
  uid_t uid = 0;
  pid_t pid = 0;
  bool internal = false;    ///< batond's own (a pledge's holder): not bounded by what is kept for a user
  /// Root, batond's own user, or batond itself (its failover manager's
  /// loads): may open, load or delete a segment kept for another user.
  bool administrator() const noexcept { return internal || pid == getpid() || uid == 0 || uid == geteuid(); }
  /// Whether it may open, load or delete a segment kept for `owner`
  /// (kNoUser: loaded for no user, whoever comes for it).
  bool may_use(uid_t owner) const noexcept { return owner == kNoUser || owner == uid || administrator(); }
  /// A pledge's holder whose load is not exclusive (Pledge::exclusive):
  /// any open of the name waits for its load, as for a take-over.
  bool for_anyone = false;
  uint32_t held = 0;        ///< segments it holds; registry_mu_
  uint64_t held_bytes = 0;  ///< their bytes; registry_mu_
  std::atomic<bool> done{false};  ///< its thread has finished (the accept thread joins it)
  std::thread thread;
};

/// A segment batond's failover manager loaded for a standby instance it is
/// about to promote (Op::kLoadFor), opened in that instance's name: the
/// open's reply and descriptors wait for the instance's own open of the
/// name. `holder` holds the segment meanwhile, as a session would.
/// registry_mu_ (Server::pledges_).
struct Server::Pledge {
  pid_t pid = 0;  ///< the instance (or a process it started: a shell that did not exec) may take it
  std::string name;
  std::unique_ptr<Session> holder;
  Reply reply{};
  std::vector<int> fds;  ///< the last of four, the copy-on-write share, is this pledge's own (a dup)
  uint64_t at_ns = 0;    ///< when the load ended
  uint64_t view = 0;     ///< the membership view's id when the load began
  /// Only `pid` and its descendants may take it (a standby instance, which
  /// asked for it by waiting). Else (an application started with its
  /// loads, perhaps through a container runtime that is not its parent)
  /// another process's open lets go of it and opens afresh.
  bool exclusive = true;
};

/// JSON as text; a string that is not UTF-8 is replaced, never thrown on.
inline std::string to_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace baton::ipc
