#pragma once
// batond's side of the client protocol (engine/ipc/messages.h).
//
// One IPC thread runs serve(): it accepts applications on the unix socket
// (checking each one's credentials with SO_PEERCRED), answers their control
// requests, and polls the commit channel of every open segment. Segments
// belong to the daemon, not to the connection: when an application crashes
// or disconnects, its segments and their replicas stay (S3), and the next
// application that opens the name gets them back. One application holds a
// name at a time.

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "baton/engine.h"
#include "baton/result.h"
#include "ipc/messages.h"
#include "segment/local_storage.h"

namespace baton::ipc {

struct ServerConfig {
  std::string node_name;
  std::string socket_path;
  mode_t socket_mode = 0660;
  std::optional<uid_t> allow_uid;
  std::optional<gid_t> allow_gid;
  uint32_t idle_spin_us = 100;  ///< how long the IPC thread polls channels before it sleeps
};

struct ServerCounters {
  uint64_t accepted = 0, refused_credentials = 0, bad_requests = 0, commits = 0, disconnects = 0;
};

class Server {
 public:
  /// Binds the socket (replacing a stale one) with the configured mode.
  /// Errors: kIo, kInvalidArgument. Thread: control.
  static Result<std::unique_ptr<Server>> start(Engine& engine, const ServerConfig& config);
  ~Server();

  /// Serves until `stop` is set (checked at least every 100 ms). Thread: the IPC thread.
  void serve(const std::atomic<bool>& stop);

  ServerCounters counters() const noexcept { return counters_; }

 private:
  struct Segment;  // a segment this daemon owns locally, held or not
  struct Client {
    int fd = -1;
    uid_t uid = 0;
    pid_t pid = 0;
  };

  Server(Engine& engine, const ServerConfig& config);
  void accept_clients();
  bool allowed(uid_t uid, gid_t gid) const;
  void on_request(Client& c);
  void drop_client(int fd);
  Reply open_segment(Client& c, const Request& r, std::vector<int>& fds);
  Reply wait(const Request& r);
  Reply close_segment(Client& c, const Request& r);
  std::string status() const;
  std::string events() const;
  bool poll_commits();

  Engine& engine_;
  ServerConfig config_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int event_fd_ = -1;  ///< doorbell: applications ring it when the IPC thread sleeps
  std::unordered_map<int, Client> clients_;
  std::unordered_map<std::string, std::unique_ptr<Segment>> segments_;
  uint32_t next_handle_ = 1;
  ServerCounters counters_;
};

}  // namespace baton::ipc
