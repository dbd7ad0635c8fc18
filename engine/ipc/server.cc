#include "ipc/server.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <tuple>
#include <new>
#include <utility>

#include <nlohmann/json.hpp>

#include "baton/baton.h"
#include "common/log.h"
#include "common/messages.h"
#include "ipc/server_impl.h"
#include "protocol/wire.h"
#include "runtime/futex.h"
#include "runtime/proc_stat.h"

namespace baton::ipc {

namespace {

/// `path` as a unix socket's address (the caller checked its length).
sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  return addr;
}

/// The name start() binds and listens on before renaming it to `path`.
std::string bind_name(const std::string& path) { return path + ".~"; }

/// Whether the application on `fd` hung up (looks, never waits).
bool hung_up(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0;
}

/// Whether `pid` is `ancestor` or runs under it (its parent, or theirs, up
/// to a few generations: a start command may be a shell that did not exec).
bool descends_from(pid_t pid, pid_t ancestor) {
  for (int depth = 0; depth < 8 && pid > 1; ++depth) {
    if (pid == ancestor) return true;
    const auto st = read_proc_stat("/proc/" + std::to_string(pid));
    if (!st) return false;
    pid = st->ppid;
  }
  return false;
}

Reply reply_error(int status, const std::string& message) {
  Reply r{};
  r.magic = kMagic;
  r.status = status;
  std::snprintf(r.message, sizeof r.message, "%s", message.c_str());
  return r;
}
Reply reply_error(const Error& e) { return reply_error(-static_cast<int>(e.code), e.message); }

/// The refusal of a segment kept for another user.
Reply belongs_to(const std::string& name, uid_t owner) {
  return reply_error(BATON_EPERM, "segment " + name + " belongs to uid " + std::to_string(owner));
}

void send_reply(int fd, const Reply& r, const std::vector<int>& fds = {}, const std::string& text = {}) {
  iovec iov[2] = {{const_cast<Reply*>(&r), sizeof r}, {const_cast<char*>(text.data()), text.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = text.empty() ? 1 : 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  // A client that stopped reading loses its reply; it never blocks the daemon.
  (void)sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

// Refuses a connection and says why. Shut down first and drain what the
// client already sent: closing a unix socket with unread requests resets the
// connection, and the client would read ECONNRESET instead of the reason.
void refuse(int fd, const Reply& r) {
  send_reply(fd, r);
  shutdown(fd, SHUT_RDWR);
  char drain[kMaxMessage];
  while (recv(fd, drain, sizeof drain, MSG_DONTWAIT) > 0) {
  }
  close(fd);
}

}  // namespace

bool Server::log_refusal(uint32_t* more) noexcept {
  const uint64_t now = now_ns();
  if (refusal_logged_ns_ != 0 && now - refusal_logged_ns_ < 1'000'000'000) {
    ++refusals_unlogged_;
    return false;
  }
  refusal_logged_ns_ = now;
  *more = std::exchange(refusals_unlogged_, 0);
  return true;
}

void Server::refuse_busy(int fd, pid_t pid, uid_t uid, const std::string& logged, const std::string& told) {
  ++counters_.refused_limit;
  if (uint32_t more = 0; log_refusal(&more))
    BT_WARN("refused client pid %d uid %u: %s (%u more refused since)", pid, uid, logged.c_str(), more);
  refuse(fd, reply_error(BATON_EBUSY, told));
}

Server::Server(Engine& engine, const ServerConfig& config)
    : engine_(engine), config_(config), dropping_(std::make_unique<Session>()) {}

Result<void> socket_path_usable(const std::string& path, bool try_bind) {
  if (path.empty() || path.size() + 2 >= sizeof(sockaddr_un::sun_path))
    return fail(Errc::kInvalidArgument, "socket path empty or too long: ", path);
  // batond replaces a stale socket of its own (a batond killed), nothing
  // else: not a file, a directory or a link someone put there, nor another
  // program's live socket.
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return fail(Errc::kExists, path, " exists and is not a socket (batond replaces only a stale socket)");
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return fail(Errc::kIo, "socket: ", std::strerror(errno));
    const sockaddr_un addr = unix_address(path);
    // A listener accepts (or its backlog is full: EAGAIN); a stale file
    // refuses (ECONNREFUSED); a live socket of another type says
    // EPROTOTYPE.
    const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN)
      return fail(Errc::kExists, "a batond already serves ", path,
                  " (the same config started twice, or two configs naming one socket)");
    if (err == EPROTOTYPE) return fail(Errc::kExists, "another program listens on ", path);
    if (err != ECONNREFUSED) return fail(Errc::kIo, "cannot tell whether ", path, " is in use: ", std::strerror(err));
  } else if (errno != ENOENT) {
    return fail(Errc::kIo, path, ": ", std::strerror(errno));
  }
  if (!try_bind) return {};
  // What start() does first: bind its temporary name beside it.
  const std::string temp = bind_name(path);
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kIo, "socket: ", std::strerror(errno));
  const sockaddr_un addr = unix_address(temp);
  unlink(temp.c_str());
  const int rc = bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  close(fd);
  if (rc != 0) return fail(Errc::kIo, "cannot make a socket beside ", path, ": bind ", temp, ": ", std::strerror(err));
  unlink(temp.c_str());
  return {};
}

Result<std::unique_ptr<Server>> Server::start(Engine& engine, const ServerConfig& config) {
  if (auto usable = socket_path_usable(config.socket_path, false); !usable) return tl::unexpected(usable.error());
  if (config.max_clients == 0 || config.max_segments == 0 || config.max_bytes == 0)
    return fail(Errc::kInvalidArgument, "client limits must be at least 1");
  std::unique_ptr<Server> s(new Server(engine, config));
  s->listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s->listen_fd_ < 0) return fail(Errc::kIo, "socket: ", std::strerror(errno));
  // Bound and listening under a temporary name, then renamed into place: a
  // client that sees the socket can connect to it (no ECONNREFUSED window
  // between bind and listen), and a stale socket of a daemon that died is
  // replaced in one step.
  // (socket_path_usable checked that this name fits.)
  const std::string temp = bind_name(config.socket_path);
  const sockaddr_un addr = unix_address(temp);
  unlink(temp.c_str());
  if (bind(s->listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    return fail(Errc::kIo, "bind ", temp, ": ", std::strerror(errno));
  if (chmod(temp.c_str(), config.socket_mode) != 0 || listen(s->listen_fd_, 64) != 0 ||
      rename(temp.c_str(), config.socket_path.c_str()) != 0) {
    const int err = errno;
    unlink(temp.c_str());
    return fail(Errc::kIo, "socket ", config.socket_path, ": ", std::strerror(err));
  }
  struct stat st{};
  if (stat(config.socket_path.c_str(), &st) == 0) {
    s->socket_dev_ = st.st_dev;
    s->socket_ino_ = st.st_ino;
  }
  for (auto& lane : s->lanes_) {
    lane.event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (lane.event_fd < 0) return fail(Errc::kIo, "eventfd: ", std::strerror(errno));
    lane.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLET;  // never read, as the applications' doorbells (commit_loop)
    ev.data.fd = lane.event_fd;
    if (lane.epoll_fd < 0 || epoll_ctl(lane.epoll_fd, EPOLL_CTL_ADD, lane.event_fd, &ev) != 0)
      return fail(Errc::kIo, "epoll: ", std::strerror(errno));
  }
  return s;
}

Server::~Server() {
  shutdown();
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    // Not another batond's that replaced it meanwhile (an operator who
    // removed this one's file and started another).
    struct stat st{};
    if (stat(config_.socket_path.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_)
      unlink(config_.socket_path.c_str());
  }
  for (auto& lane : lanes_) {
    if (lane.event_fd >= 0) close(lane.event_fd);
    if (lane.epoll_fd >= 0) close(lane.epoll_fd);
  }
}

void Server::shutdown() {
  stopping_.store(true);
  for (auto& s : sessions_)
    if (s->thread.joinable()) s->thread.join();
  sessions_.clear();
  drop_pledges(true);
  for (auto& lane : lanes_)
    if (lane.thread.joinable()) {
      const uint64_t one = 1;
      (void)!write(lane.event_fd, &one, sizeof one);
      lane.thread.join();
    }
}

ServerCounters Server::counters() const noexcept {
  return ServerCounters{counters_.accepted.load(),      counters_.refused_credentials.load(),
                        counters_.refused_limit.load(), counters_.bad_requests.load(),
                        counters_.commits.load(),       counters_.disconnects.load(),
                        counters_.withdrawn_commits.load(), counters_.posted_commits.load(),
                        counters_.refused_posts.load(), counters_.dropped_fenced.load(),
                        counters_.handed_over.load(),   counters_.posted_cow_commits.load(),
                        counters_.refused_cow_posts.load()};
}

bool Server::allowed(uid_t uid, gid_t gid) const {
  if (uid == 0 || uid == geteuid()) return true;
  if (config_.allow_uid && uid == *config_.allow_uid) return true;
  if (config_.allow_gid && gid == *config_.allow_gid) return true;
  return false;
}

void Server::accept_clients() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || !allowed(cred.uid, cred.gid)) {
      ++counters_.refused_credentials;
      if (uint32_t more = 0; log_refusal(&more))
        BT_WARN("refused client pid %d uid %u: not allowed by client.user/client.group (%u more refused since)",
                cred.pid, cred.uid, more);
      refuse(fd, reply_error(BATON_EPERM, "uid " + std::to_string(cred.uid) +
                                              " is not let in by this batond (client.user / client.group)"));
      continue;
    }
    // At the limit, sessions of applications that just left may still be
    // winding down: give them a moment before refusing.
    // Only if one is winding down: at the limit with every application
    // still there, each refusal waited 100 ms for nothing, and a burst of
    // connects stalled every other one's accept behind it.
    for (int i = 0; i < 20 && sessions_.size() >= config_.max_clients; ++i) {
      reap_sessions();
      if (sessions_.size() < config_.max_clients) break;
      bool winding_down = false;
      for (const auto& other : sessions_) winding_down |= other->done.load() || hung_up(other->fd);
      if (!winding_down) break;
      usleep(5000);
    }
    // One process cannot take every slot (batond's own failover manager,
    // which loads over connections of its own, excepted).
    uint32_t of_process = 0;
    for (const auto& other : sessions_) of_process += other->pid == cred.pid && !other->done.load();
    // (A client in a pid namespace batond cannot see reports pid 0: no
    // process to count it against.)
    if (cred.pid != 0 && cred.pid != getpid() && of_process >= config_.max_clients_per_process) {
      refuse_busy(fd, cred.pid, cred.uid,
                  "it has " + std::to_string(of_process) + " connections (client.max_clients_per_process)",
                  "this process has " + std::to_string(of_process) +
                      " connections to batond already (client.max_clients_per_process = " +
                      std::to_string(config_.max_clients_per_process) + ")");
      continue;
    }
    // Nor one user's many processes (root and batond's own user, who may
    // do anything here anyway, excepted).
    uint32_t of_user = 0;
    for (const auto& other : sessions_) of_user += other->uid == cred.uid && !other->done.load();
    if (cred.uid != 0 && cred.uid != geteuid() && cred.pid != getpid() && of_user >= config_.max_clients_per_user) {
      refuse_busy(fd, cred.pid, cred.uid,
                  "that user has " + std::to_string(of_user) + " connections (client.max_clients_per_user)",
                  "uid " + std::to_string(cred.uid) + " has " + std::to_string(of_user) +
                      " connections to batond already (client.max_clients_per_user = " +
                      std::to_string(config_.max_clients_per_user) + ")");
      continue;
    }
    if (sessions_.size() >= config_.max_clients) {
      refuse_busy(fd, cred.pid, cred.uid,
                  std::to_string(config_.max_clients) + " applications connected (client.max_clients)",
                  "too many applications connected (client.max_clients = " + std::to_string(config_.max_clients) +
                      ")");
      continue;
    }
    auto session = std::make_unique<Session>();
    session->fd = fd;
    session->uid = cred.uid;
    session->pid = cred.pid;
    Session& s = *session;
    try {
      s.thread = std::thread([this, &s] { run_session(s); });
    } catch (const std::system_error& e) {
      refuse_busy(fd, cred.pid, cred.uid, std::string("cannot start its session: ") + e.what(),
                  "batond cannot start a session now");
      continue;
    }
    sessions_.push_back(std::move(session));
    ++counters_.accepted;
  }
}

void Server::serve(const std::atomic<bool>& stop) {
  for (auto& lane : lanes_) lane.written.reserve(kMaxWritten + 1);  // no allocation per commit
  lanes_[0].thread = std::thread([this] { commit_loop(lanes_[0], "baton-commit"); });
  lanes_[1].thread = std::thread([this] {
    // Copying a large snapshot is bulk work: at a lower priority, the
    // scheduler runs a woken small-commit thread (or an application) at
    // once instead of after this copy's timeslice.
    if (setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kLargeLaneNice) != 0)
      BT_WARN("cannot lower the large-commit thread's priority: %s", std::strerror(errno));
    commit_loop(lanes_[1], "baton-commit-l");
  });
  make_spare_channel();
  while (!stop.load(std::memory_order_relaxed)) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) == 1) accept_clients();
    reap_sessions();
    drop_pledges(false);
    if (const uint64_t now = now_ns(); now - dropped_at_ns_ >= 1'000'000'000) {
      dropped_at_ns_ = now;
      drop_fenced();
    }
  }
  shutdown();
}

Result<LocalStorage> Server::make_channel() {
  // Faulted in as used: most of it is the log's slots, of which a small
  // segment's posts touch a page or two each. Default-initialised: the
  // memfd is zeros already, and the slots' bytes are left untouched; the
  // constructor still writes (and so faults in) each slot's header, 36
  // pages, 0.7-6.7 ms of an open on two busy vCPUs when made there.
  auto channel = LocalStorage::create("commit-channel", sizeof(CommitChannel), -1, LocalStorage::Pages::kSmall,
                                      LocalStorage::Populate::kLater);
  if (channel) new (channel->data()) CommitChannel;
  return channel;
}

void Server::make_spare_channel() {
  bool channel, shadow;
  {
    std::lock_guard lock(registry_mu_);
    channel = !spare_channel_;
    shadow = spare_shadow_.capacity() < kLogMaxSegment;
  }
  std::optional<LocalStorage> made;
  if (channel)
    if (auto c = make_channel()) made = std::move(*c);  // else an open makes its own, and says why if it cannot
  std::vector<std::byte> buffer;
  if (shadow) {
    buffer.resize(kLogMaxSegment);  // written: its pages are faulted in now
    buffer.clear();                 // and kept (the capacity stays)
  }
  std::lock_guard lock(registry_mu_);
  if (made && !spare_channel_) spare_channel_ = std::move(made);
  if (shadow && spare_shadow_.capacity() < kLogMaxSegment) spare_shadow_.swap(buffer);
}

std::unique_ptr<Server::Segment> Server::reserved(const std::string& name, Session* holder) {
  auto seg = std::make_unique<Segment>();
  seg->name = name;
  seg->holder = holder;
  if (holder != nullptr) seg->uid = holder->uid;
  seg->id = next_handle_++;
  return seg;
}

std::optional<Reply> Server::over_kept(const Session& s, uint64_t bytes) const {
  // batond's own failover manager is not bounded here (nor are agents'
  // loads: what they leave is kept for no user, kNoUser).
  if (s.internal || s.pid == getpid()) return std::nullopt;
  // Segments no application holds stay here for their user's next open
  // (S3). Without a bound, a client that hung up after each open made
  // batond keep any number of them. They count against a new name as if
  // the opener held them: a user keeps at most max_segments / max_mib
  // worth that nobody holds.
  uint32_t kept = 0;
  uint64_t kept_bytes = 0;
  // (One whose holder hung up counts already: its session lets go of it
  // a moment later, and an open right after must not slip in meanwhile.)
  for (const auto& [name, seg] : segments_)
    if (seg->uid == s.uid && seg->holder != &s &&
        (seg->holder == nullptr || seg->holder == dropping_.get() || hung_up(seg->holder->fd))) {
      ++kept;
      kept_bytes += seg->size;
    }
  // Bounded on their own (what each application holds has its own
  // limits): a user may leave behind one application's worth.
  (void)bytes;
  if (kept < config_.max_segments && kept_bytes < config_.max_bytes) return std::nullopt;
  // (kept may pass the bound: several holders of the user's hung up at once.)
  return reply_error(BATON_EBUSY, "batond keeps " + std::to_string(kept) + " segments (" +
                                      std::to_string(kept_bytes >> 20) + " MiB) of this user that no application "
                                      "holds, and keeps at most client.max_segments = " +
                                      std::to_string(config_.max_segments) + " (client.max_mib = " +
                                      std::to_string(config_.max_bytes >> 20) +
                                      "): open or delete one of them first");
}

void Server::drop_fenced() {
  std::vector<std::pair<std::string, baton::Segment*>> unheld;
  {
    std::lock_guard lock(registry_mu_);
    for (const auto& [name, seg] : segments_)
      if (seg->holder == nullptr && seg->handle != nullptr) unheld.emplace_back(name, seg->handle);
  }
  for (const auto& [name, handle] : unheld) {
    auto st = engine_.status(handle);
    if (!st || !st->fenced) continue;
    // Take it out of the registry unless someone opened it meanwhile; its
    // name stays reserved (held by dropping_) while the engine closes it.
    std::unique_ptr<Segment> gone;
    {
      std::lock_guard lock(registry_mu_);
      auto it = segments_.find(name);
      if (it == segments_.end() || it->second->holder != nullptr || it->second->handle != handle) continue;
      gone = std::move(it->second);
      it->second = reserved(name, dropping_.get());
    }
    auto closed = engine_.close(handle);
    {
      std::lock_guard lock(registry_mu_);
      segments_.erase(name);
      registry_cv_.notify_all();
    }
    if (closed) {
      ++counters_.dropped_fenced;
      BT_INFO("segment %s: fenced here and held by no application: dropped (its memory goes back; fenced by a newer "
              "owner, not a delete, its last generation stays as a replica copy until that owner's set holds it)",
              name.c_str());
    } else {
      // The engine stops, or the handle went meanwhile: an open of the name
      // finds whatever is left and loads it afresh.
      BT_WARN("segment %s: fenced here, dropping it: %s", name.c_str(), closed.error().message.c_str());
    }
  }
}

void Server::reap_sessions() {
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (!(*it)->done.load()) {
      ++it;
      continue;
    }
    (*it)->thread.join();
    it = sessions_.erase(it);
  }
}

// ---------------------------------------------------------------------------
// Sessions: one thread per application.

void Server::run_session(Session& s) {
  alignas(Request) char buf[kMaxMessage];
  while (!stopping_.load(std::memory_order_relaxed)) {
    pollfd p{s.fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    // Requests queued before a hang-up are still answered (or at least
    // taken in: an open registers the segment even if nobody reads the reply).
    if ((p.revents & POLLIN) == 0 && (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) != 0) break;
    const ssize_t n = recv(s.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EINTR) break;
    // 0 is the end of the stream, or an empty datagram (SOCK_SEQPACKET
    // reads both alike): only a client that has not hung up sent one, and
    // it is answered as the malformed request it is.
    if (n == 0 && hung_up(s.fd)) break;
    if (n >= 0) on_request(s, buf, static_cast<size_t>(n));
  }
  release(s);
  close(s.fd);
  ++counters_.disconnects;
  s.done.store(true);
}

Result<void> Server::load_here(const std::string& name, pid_t instance, bool exclusive) {
  if (name.size() > kMaxName) return fail(Errc::kInvalidArgument, "segment name too long: ", name);
  if (instance < 0) return fail(Errc::kInvalidArgument, "not a process id: ", std::to_string(instance));
  Request r{};
  r.magic = kMagic;
  r.version = kVersion;
  r.op = static_cast<uint16_t>(instance > 0 ? Op::kLoadFor : Op::kTakeOver);
  r.name_len = static_cast<uint8_t>(name.size());
  std::memcpy(r.name, name.data(), name.size());
  r.size = static_cast<uint64_t>(instance);
  Session s;  // batond's user; it holds nothing once the call returns
  s.uid = geteuid();
  s.pid = getpid();
  s.internal = true;
  std::vector<int> fds;  // a take-over hands none out
  const Reply rep = instance > 0 ? load_for(s, r, exclusive) : open_segment(s, r, fds);
  for (int fd : fds) ::close(fd);
  if (rep.status != 0) return tl::unexpected(error_of(rep));
  return {};
}

void Server::prepare_open() { make_spare_channel(); }

void Server::hold(const std::string& name, bool on, uint64_t for_ns) {
  {
    std::lock_guard lock(registry_mu_);
    if (on) {
      Hold& h = holds_[name];
      ++h.count;
      h.until_ns = std::max(h.until_ns, now_ns() + for_ns);
    } else if (auto it = holds_.find(name); it != holds_.end() && --it->second.count == 0) {
      holds_.erase(it);
    }
  }
  if (!on) registry_cv_.notify_all();  // opens waiting for the name go on
}

bool Server::held(const std::string& name) const {
  const auto it = holds_.find(name);
  return it != holds_.end() && now_ns() < it->second.until_ns;
}

void Server::answer_once(int fd, const char* request, size_t n) {
  Session s;
  s.fd = fd;
  on_request(s, request, n);
  release(s);
  drop_pledges(true);
}

void Server::release(Session& s) {
  // The application is gone (exit, crash, disconnect): its segments stay
  // here with their replicas (S3) and can be opened again. Detaching takes
  // what it posted (engine commits): outside the registry, the segments
  // still held meanwhile, so that nobody opens, closes or deletes them.
  std::vector<Segment*> held;
  {
    std::lock_guard lock(registry_mu_);
    for (auto& [name, seg] : segments_)
      if (seg->holder == &s && seg->handle != nullptr) held.push_back(seg.get());
  }
  for (Segment* seg : held) detach(*seg);
  std::lock_guard lock(registry_mu_);
  for (auto& [name, seg] : segments_)
    if (seg->holder == &s) seg->holder = nullptr;
  s.held = 0;
  s.held_bytes = 0;
  registry_cv_.notify_all();
}

void Server::on_request(Session& s, const char* buf, size_t n) {
  Request r;
  if (n != sizeof r) {
    ++counters_.bad_requests;
    send_reply(s.fd, reply_error(BATON_EINVAL, "malformed request (size " + std::to_string(n) + ")"));
    return;
  }
  std::memcpy(&r, buf, sizeof r);
  if (r.magic == kMagic && r.version != kVersion) {
    ++counters_.bad_requests;
    send_reply(s.fd, reply_error(BATON_EINVAL, "the application's libbaton speaks protocol version " +
                                                   std::to_string(r.version) + ", this batond " +
                                                   std::to_string(kVersion) + ": use the library batond came with"));
    return;
  }
  if (r.magic != kMagic || r.name_len > kMaxName) {
    ++counters_.bad_requests;
    send_reply(s.fd, reply_error(BATON_EINVAL, "malformed request (magic, version or name length)"));
    return;
  }
  std::vector<int> fds;
  std::string text;
  Reply rep;
  switch (static_cast<Op>(r.op)) {
    case Op::kOpen:
    case Op::kCreate:
    case Op::kLoad: rep = open_segment(s, r, fds); break;
    case Op::kTakeOver:
      // An agent's load (batonctl load): the segment moves here and stays,
      // held by no application and counted for no user, so only an
      // administrator (root, batond's user) may ask for one.
      if (s.uid != 0 && s.uid != geteuid()) {
        ++counters_.bad_requests;
        rep = reply_error(BATON_EPERM, "only an administrator (root or batond's user) takes a segment over for an "
                                        "application (batonctl load); an application loads with baton_load");
      } else {
        rep = open_segment(s, r, fds);
      }
      break;
    case Op::kLoadFor: rep = load_for(s, r); break;
    case Op::kHello:
      rep = Reply{};
      rep.magic = kMagic;
      break;
    case Op::kWait: rep = wait(s, r); break;
    case Op::kClose: rep = close_segment(s, r); break;
    case Op::kDelete: rep = delete_segment(s, r); break;
    case Op::kStatus:
    case Op::kEvents:
      rep = Reply{};
      rep.magic = kMagic;
      text = static_cast<Op>(r.op) == Op::kStatus ? to_text(status_json(kMaxReply - sizeof(Reply))) : events();
      rep.text_len = static_cast<uint32_t>(text.size());
      break;
    case Op::kMetric: {
      double value;
      std::memcpy(&value, &r.generation, sizeof value);
      const std::string name(r.name, r.name_len);
      bool printable = !name.empty();
      for (unsigned char ch : name) printable &= ch > 0x20 && ch < 0x7f;
      if (!printable || !std::isfinite(value)) {
        ++counters_.bad_requests;
        rep = reply_error(BATON_EINVAL, "a metric needs a printable name and a finite value");
        break;
      }
      if (config_.metric) config_.metric(s.pid, name, value);
      rep = Reply{};
      rep.magic = kMagic;
      break;
    }
    case Op::kGroups:
      rep = Reply{};
      rep.magic = kMagic;
      text = config_.groups ? config_.groups() : std::string(R"({"groups":[],"pool":[],"decisions":[]})");
      if (text.size() > kMaxReply - sizeof(Reply)) text = R"({"error":"too large for one reply"})";
      rep.text_len = static_cast<uint32_t>(text.size());
      break;
    default:
      ++counters_.bad_requests;
      rep = reply_error(BATON_EINVAL, "unknown request " + std::to_string(r.op));
  }
  send_reply(s.fd, rep, rep.status == 0 ? fds : std::vector<int>{}, text);
  if (fds.size() == 4) ::close(fds[3]);  // the copy-on-write share: a dup of the engine's
  // The open took the channel made ahead (if it handed one out): the next
  // is made now, after the answer, so that one is ready whenever no open
  // is under way.
  const Op op = static_cast<Op>(r.op);
  if (rep.status == 0 && (op == Op::kOpen || op == Op::kCreate || op == Op::kLoad || op == Op::kLoadFor))
    make_spare_channel();
}

namespace {
/// An open (S11) of a segment committed in another size than it asks for
/// (Engine::open says the same of a restore from the cluster).
Reply size_differs(const std::string& name, uint64_t held, uint64_t asked) {
  return reply_error(BATON_EINVAL, size_differs_text(name, held, asked));
}
}  // namespace

Reply Server::open_segment(Session& s, const Request& r, std::vector<int>& fds) {
  const std::string name(r.name, r.name_len);
  if (!wire::valid_name(name)) return reply_error(BATON_EINVAL, "bad segment name");
  const Op op = static_cast<Op>(r.op);
  // kTakeOver is a load for an agent (batonctl load): nothing is handed
  // out, and the segment stays here, free, for the application.
  const bool load = op == Op::kLoad || op == Op::kTakeOver;
  // The size is checked the same way whether or not this blade holds the
  // name (a load takes the recorded size and ignores it).
  const uint64_t max_size = engine_.max_segment_size();
  if (!load && (r.size == 0 || r.size > max_size))
    return reply_error(BATON_EINVAL, "size must be 1.." + std::to_string(max_size));
  auto over_limit = [&](uint64_t bytes) -> std::optional<Reply> {
    if (s.held + 1 > config_.max_segments)
      return reply_error(BATON_EBUSY, "this application holds " + std::to_string(s.held) +
                                          " segments (client.max_segments)");
    if (s.held_bytes + bytes > config_.max_bytes)
      return reply_error(BATON_EBUSY, "this application would hold " + std::to_string(s.held_bytes + bytes) +
                                          " bytes of segments; client.max_mib allows " +
                                          std::to_string(config_.max_bytes));
    return std::nullopt;
  };

  std::unique_lock lock(registry_mu_);
  // An open of what the failover manager loaded in this application's
  // name (a standby instance promoted, an application started with its
  // loads: load_for). One that comes while a take-over of the name
  // (batonctl load, the failover manager's load) is still under way, or
  // while the failover manager holds the name (hold(): its loads and their
  // retries), waits for it, then opens what it left: before, it was
  // refused with EEXIST although the take-over leaves the name for it, or
  // ran a round of its own between two tries of a load and failed.
  // batond's own loads (internal sessions) neither wait for the holds
  // they run under nor take a pledge.
  if (op == Op::kOpen || op == Op::kLoad || op == Op::kCreate) {
    const uint64_t deadline = now_ns() + kLoadWaitNs;
    for (;;) {
      if (op != Op::kCreate && !s.internal)
        if (auto pledged = take_pledge(s, name, op == Op::kOpen ? r.size : 0, fds, lock)) return *pledged;
      // A hold bounds its wait itself (the group's start timeout, which
      // may be longer than kLoadWaitNs for a large segment).
      const auto loading = segments_.find(name);
      const bool for_hold = !s.internal && held(name);
      const bool waits = for_hold || (op != Op::kCreate && loading != segments_.end() &&
                                      loading_for(s, *loading->second) && now_ns() < deadline);
      if (!waits || stopping_.load() || hung_up(s.fd)) break;
      registry_cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
  }
  auto it = segments_.find(name);
  if (it != segments_.end() && it->second->holder != nullptr && it->second->holder != &s) {
    // The holder may be gone already, its session not yet done: give it a
    // moment to let go. (Its descriptor stays open until it has.)
    if (it->second->holder == dropping_.get() || hung_up(it->second->holder->fd))
      registry_cv_.wait_for(lock, std::chrono::seconds(2), [&] {
        it = segments_.find(name);
        return it == segments_.end() || it->second->holder == nullptr;
      });
  }
  Reply rep{};
  rep.magic = kMagic;
  if (it != segments_.end()) {
    Segment& seg = *it->second;
    if (seg.holder != nullptr)
      return reply_error(BATON_EEXIST, "segment " + name + " is " +
                                           (seg.holder == &s ? "already open in this application"
                                                             : "held by another application"));
    if (op == Op::kCreate) return reply_error(BATON_EEXIST, "segment " + name + " already exists on this node");
    // Kept for a user (its application left, S3): that user's again, or
    // an administrator's (root, batond's user). Loaded for no user (an
    // agent's load, the failover manager's): whoever batond lets in.
    if (!s.may_use(seg.uid)) return belongs_to(name, seg.uid);
    if (op == Op::kOpen && r.size != seg.size) return size_differs(name, seg.size, r.size);
    if (op != Op::kTakeOver)
      if (auto refused = over_limit(seg.size)) return *refused;
    // The application restarted: it gets its segment back as last committed
    // (not as it left it: bytes written after the last commit are no
    // generation), or, if ownership moved meanwhile, the newer state from
    // the cluster under a new engine handle. The name is held meanwhile, so
    // no other application can take it; the engine call runs unlocked.
    seg.holder = &s;
    if (op != Op::kTakeOver) seg.uid = s.uid;
    seg.taking_over = op == Op::kTakeOver;
    baton::Segment* const handle = seg.handle;
    lock.unlock();
    // A load (an agent moving the segment here) takes it over from a live
    // owner elsewhere if ownership moved away meanwhile; an open does not.
    auto reopened = engine_.reopen(handle, load);
    lock.lock();
    if (!reopened) {
      seg.holder = nullptr;
      seg.taking_over = false;
      registry_cv_.notify_all();
      if (!engine_.status(handle)) segments_.erase(name);  // the fenced local copy is gone
      return reply_error(reopened.error());
    }
    seg.handle = reopened->segment;
    rep.restored = reopened->outcome == OpenOutcome::kRestored ? 1 : 0;
    rep.generation = reopened->generation;
  } else {
    if (!load)
      if (auto refused = over_limit(r.size)) return *refused;
    if (op != Op::kTakeOver)
      if (auto refused = over_kept(s, load ? 0 : r.size)) return *refused;
    // Reserve the name (no handle yet) while the engine opens it unlocked.
    segments_.emplace(name, reserved(name, &s));
    if (op == Op::kTakeOver) {  // loaded for an application to come
      segments_[name]->uid = kNoUser;
      segments_[name]->taking_over = true;
    }
    lock.unlock();
    Result<OpenResult> opened = fail(Errc::kInternal, "");
    if (op == Op::kCreate) {
      auto created = engine_.create(name, r.size);
      if (created) opened = OpenResult{*created, OpenOutcome::kCreated, 0};
      else opened = tl::unexpected(created.error());
    } else if (load) {
      opened = engine_.load(name);
    } else {
      opened = engine_.open(name, r.size);
    }
    lock.lock();
    it = segments_.find(name);  // still ours: a reserved name is held
    if (!opened) {
      segments_.erase(it);
      registry_cv_.notify_all();
      return reply_error(opened.error());
    }
    it->second->handle = opened->segment;
    it->second->size = engine_.size(opened->segment);
    rep.restored = opened->outcome == OpenOutcome::kRestored ? 1 : 0;
    rep.generation = opened->generation;
    if (op == Op::kLoad)
      if (auto refused = over_limit(it->second->size)) {
        // Loaded (this blade owns it now) but not handed to this application.
        it->second->holder = nullptr;
        registry_cv_.notify_all();
        return *refused;
      }
  }
  Segment& seg = *it->second;
  seg.size = engine_.size(seg.handle);
  if (op == Op::kOpen && r.size != seg.size) {
    // Newer state of another size came from the cluster at the reopen:
    // it stays on this blade, free, as a load leaves it.
    seg.holder = nullptr;
    registry_cv_.notify_all();
    return size_differs(name, seg.size, r.size);
  }
  if (op == Op::kTakeOver) {
    seg.holder = nullptr;
    seg.taking_over = false;
    registry_cv_.notify_all();
    rep.size = seg.size;
    return rep;
  }
  // A commit channel of its own for each application that holds the
  // segment: one that held it before and kept its mapping of the old
  // channel can post or request nothing in the new holder's name. The one
  // made ahead if there is one.
  std::optional<LocalStorage> channel = std::exchange(spare_channel_, std::nullopt);
  if (!channel) {
    auto made = make_channel();
    if (!made) {
      seg.holder = nullptr;
      registry_cv_.notify_all();
      return reply_error(made.error());
    }
    channel = std::move(*made);
  }
  if (seg.bell_fd >= 0) {  // (detach closes a holder's; none should be left)
    CommitLane& lane = lane_of(seg);
    std::lock_guard lane_lock(lane.mu);  // lock order: registry, lane (as detach's readers assume)
    epoll_ctl(lane.epoll_fd, EPOLL_CTL_DEL, seg.bell_fd, nullptr);
    ::close(seg.bell_fd);
  }
  seg.bell_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (seg.bell_fd < 0) {
    const int err = errno;
    seg.holder = nullptr;
    registry_cv_.notify_all();
    return reply_error(Error{Errc::kIo, std::string("eventfd: ") + std::strerror(err)});
  }
  seg.channel_mem = std::move(*channel);
  seg.channel = std::launder(reinterpret_cast<CommitChannel*>(seg.channel_mem.data()));
  seg.holder = &s;
  seg.uid = s.uid;
  ++s.held;
  s.held_bytes += seg.size;
  rep.handle = seg.id;
  rep.size = seg.size;
  fds = {engine_.memory_fd(seg.handle), seg.channel_mem.fd(), seg.bell_fd};
  // A copy-on-write segment: the library snapshots its own mapping (and
  // posts no commits: its snapshots are taken in place).
  if (auto cow = engine_.share_copy_on_write(seg.handle); !cow) {
    BT_WARN("segment %s: no copy-on-write, commits copy it: %s", name.c_str(), cow.error().message.c_str());
  } else if (cow->has_value()) {
    fds.push_back((*cow)->fd);  // a dup: closed once sent (on_request)
    rep.copy_on_write = 1;
    rep.commit_every_ms = (*cow)->commit_every_ms;
    rep.protect_ahead = (*cow)->protect_ahead ? 1 : 0;
  }
  // The posted commits' shadow (attach) of a segment of many pages goes
  // into memory made ahead too: a fresh 256 KiB vector faulted in page by
  // page took up to 7 ms here. (A small one is quick to make, and would
  // hold a megabyte for a few pages.)
  if (rep.copy_on_write == 0 && seg.size >= kSpareShadowMin && seg.size <= kLogMaxSegment &&
      seg.shadow.capacity() < seg.size)
    seg.shadow.swap(spare_shadow_);
  attach(seg, rep.copy_on_write == 0);
  return rep;
}

// A failover to a node where a standby instance of the application waits
// loads the segment, then promotes the instance, which opens it. Its open
// used to confirm ownership with a query round of its own right after the
// load's claim round had established it, and to make its commit channel:
// 3-12 ms of a 14 ms failover here. The load now opens the segment in the
// instance's name (the instance asked for it by waiting to be promoted),
// and the instance's open takes that open's result as it stands.
Reply Server::load_for(Session& s, const Request& r, bool exclusive) {
  // batond's own failover manager, or an administrator (root or batond's
  // user): an application may load only for itself.
  if (s.uid != 0 && s.uid != geteuid()) {
    ++counters_.bad_requests;
    return reply_error(BATON_EPERM, "only batond's failover manager or an administrator loads a segment for "
                                     "another application");
  }
  const std::string name(r.name, r.name_len);
  if (!wire::valid_name(name)) return reply_error(BATON_EINVAL, "bad segment name");
  if (r.size == 0 || r.size > INT_MAX) return reply_error(BATON_EINVAL, "not a process id: " + std::to_string(r.size));
  // A pledge of the name not taken yet (an earlier failover here) goes.
  for (auto& p : take_pledges([&](const Pledge& p) { return p.name == name; })) let_go(*p);
  auto p = std::make_unique<Pledge>();
  p->pid = static_cast<pid_t>(r.size);
  p->exclusive = exclusive;
  p->name = name;
  p->holder = std::make_unique<Session>();
  p->holder->pid = p->pid;
  p->holder->internal = true;  // batond's own load: not bounded by what is kept for a user
  p->holder->for_anyone = !exclusive;
  p->holder->uid = kNoUser;    // nor counted for one, if the instance never takes it
  Request load = r;
  load.op = static_cast<uint16_t>(Op::kLoad);
  load.size = 0;
  p->view = engine_.view().id;
  Reply rep = open_segment(*p->holder, load, p->fds);
  if (rep.status != 0) return rep;
  p->reply = rep;
  p->at_ns = now_ns();
  Reply loaded{};
  loaded.magic = kMagic;
  loaded.size = rep.size;
  loaded.generation = rep.generation;
  loaded.restored = rep.restored;
  {
    std::lock_guard lock(registry_mu_);
    pledges_.push_back(std::move(p));
  }
  registry_cv_.notify_all();  // the application's open may be waiting for it (open_segment)
  return loaded;
}

bool Server::loading_for(const Session& s, const Segment& seg) const {
  // Held by a take-over (it leaves the name free for any application), or
  // by a load_for in the name of this application or an ancestor of it
  // (the shell that started it) whose pledge is not made yet.
  if (seg.holder == nullptr || seg.holder == &s) return false;
  // A take-over, or a load for an application that any process may have
  // started (another one's open, or batond's next load of the name, waits
  // for it: an abandoned run's load may still be under way).
  if (seg.taking_over || (seg.holder->internal && seg.holder->for_anyone)) return true;
  return seg.holder->internal && seg.holder->pid > 0 && s.pid > 0 && descends_from(s.pid, seg.holder->pid);
}

std::optional<Reply> Server::take_pledge(Session& s, const std::string& name, uint64_t size, std::vector<int>& fds,
                                         std::unique_lock<std::mutex>& lock) {
  // Another process's open finds an exclusive pledge held for its
  // process (EEXIST, below); one that is not exclusive, let go of.
  bool theirs = false;
  auto it = std::find_if(pledges_.begin(), pledges_.end(), [&](const auto& p) {
    if (p->name != name) return false;
    theirs = descends_from(s.pid, p->pid);
    return theirs || !p->exclusive;
  });
  if (it == pledges_.end()) return std::nullopt;
  std::unique_ptr<Pledge> p = std::move(*it);
  pledges_.erase(it);
  auto seg = segments_.find(name);
  std::string why;
  const uint64_t age = now_ns() - p->at_ns;
  if (!theirs)
    why = "loaded for pid " + std::to_string(p->pid) + ", of which this process is no descendant";
  else if (seg == segments_.end() || seg->second->holder != p->holder.get() || seg->second->handle == nullptr)
    why = "no longer held for it";
  else if (age > kPledgeFreshNs)
    why = "opened " + std::to_string(age / 1'000'000) + " ms after its load";
  else if (auto st = engine_.status(seg->second->handle); !st || st->fenced)
    why = "another node took it over since its load";
  else if (engine_.view().id != p->view)
    why = "the membership view changed since its load";
  else if (size != 0 && size != seg->second->size)
    why = "it asks for another size";
  else if (s.held + 1 > config_.max_segments || s.held_bytes + seg->second->size > config_.max_bytes)
    why = "over this application's limits";
  if (why.empty()) {
    seg->second->holder = &s;
    seg->second->uid = s.uid;
    ++s.held;
    s.held_bytes += seg->second->size;
    fds = std::move(p->fds);
    ++counters_.handed_over;
    return p->reply;
  }
  // Opened as any open is (a query round first).
  BT_INFO("segment %s: the load for pid %d not handed over as it stands (%s): opened afresh", name.c_str(),
          static_cast<int>(s.pid), why.c_str());
  lock.unlock();
  let_go(*p);
  lock.lock();
  return std::nullopt;
}

void Server::let_go(Pledge& p) {
  release(*p.holder);
  if (p.fds.size() == 4) ::close(p.fds[3]);  // the copy-on-write share's dup
  p.fds.clear();
}

std::vector<std::unique_ptr<Server::Pledge>> Server::take_pledges(const std::function<bool(const Pledge&)>& which) {
  std::vector<std::unique_ptr<Pledge>> taken;
  std::lock_guard lock(registry_mu_);
  for (auto it = pledges_.begin(); it != pledges_.end();) {
    if (!which(**it)) {
      ++it;
      continue;
    }
    taken.push_back(std::move(*it));
    it = pledges_.erase(it);
  }
  return taken;
}

void Server::drop_pledges(bool all) {
  // The clock is read under the registry lock, which take_pledges holds,
  // never before it: a pledge made in between is younger than that time,
  // and its unsigned age wrapped to a huge one (a fresh pledge dropped at
  // once, about one standby open in thirty).
  auto gone = take_pledges([&](const Pledge& p) {
    return all || now_ns() - p.at_ns > kPledgeKeepNs || (::kill(p.pid, 0) != 0 && errno == ESRCH);
  });
  for (auto& p : gone) {
    if (!all)
      BT_INFO("segment %s: loaded for pid %d, never opened by it: free here", p->name.c_str(),
              static_cast<int>(p->pid));
    let_go(*p);
  }
}

Reply Server::wait(Session& s, const Request& r) {
  baton::Segment* handle = nullptr;
  {
    std::lock_guard lock(registry_mu_);
    for (auto& [name, seg] : segments_)
      if (seg->id == r.handle && seg->holder == &s) handle = seg->handle;
  }
  if (handle == nullptr) return reply_error(BATON_EINVAL, "unknown segment handle (or not held by this application)");
  // The daemon bounds every wait, and waits in slices so that an
  // application that hangs up, or a daemon that stops, ends it early.
  const uint64_t limit_ms = std::min<uint64_t>(r.timeout_ms, config_.max_wait_ms);
  const uint64_t deadline = now_ns() + limit_ms * 1'000'000;
  for (;;) {
    const uint64_t now = now_ns();
    const uint64_t left_ms = deadline > now ? (deadline - now + 999'999) / 1'000'000 : 0;
    auto ok = engine_.wait_replicated(handle, r.generation, r.k,
                                      std::chrono::milliseconds(std::min<uint64_t>(left_ms, 50)));
    if (ok) {
      Reply rep{};
      rep.magic = kMagic;
      rep.generation = r.generation;
      return rep;
    }
    if (ok.error().code != Errc::kTimeout || now_ns() >= deadline) {
      if (ok.error().code == Errc::kTimeout && r.timeout_ms > config_.max_wait_ms)
        return reply_error(BATON_ETIMEDOUT, ok.error().message + " (waits are cut to client.max_wait_ms = " +
                                                std::to_string(config_.max_wait_ms) + ")");
      return reply_error(ok.error());
    }
    if (hung_up(s.fd)) return reply_error(BATON_EUNAVAIL, "the application hung up");
    if (stopping_.load()) return reply_error(BATON_EUNAVAIL, "batond is stopping");
  }
}

Reply Server::close_segment(Session& s, const Request& r) {
  std::unique_ptr<Segment> gone;
  Segment* closing = nullptr;
  {
    std::lock_guard lock(registry_mu_);
    for (auto& [name, seg] : segments_) {
      if (seg->id != r.handle || seg->handle == nullptr) continue;
      if (seg->holder != &s) return reply_error(BATON_EINVAL, "segment not held by this application");
      closing = seg.get();
      break;
    }
  }
  if (closing == nullptr) return reply_error(BATON_EINVAL, "unknown segment handle");
  // Outside the registry (it takes what was posted: engine commits); the
  // segment stays held meanwhile, so nobody else touches it.
  detach(*closing);
  {
    std::lock_guard lock(registry_mu_);
    auto it = segments_.find(closing->name);
    --s.held;
    s.held_bytes -= closing->size;
    gone = std::move(it->second);
    segments_.erase(it);
  }
  auto ok = engine_.close(gone->handle);
  if (!ok) return reply_error(ok.error());
  Reply rep{};
  rep.magic = kMagic;
  return rep;
}

Reply Server::delete_segment(Session& s, const Request& r) {
  const std::string name(r.name, r.name_len);
  if (!wire::valid_name(name)) return reply_error(BATON_EINVAL, "bad segment name");
  // The name is reserved for this session while the engine deletes it
  // (unlocked): a concurrent open here waits its turn with EEXIST.
  std::unique_ptr<Segment> kept;  // a segment kept for a crashed application's restart
  {
    std::lock_guard lock(registry_mu_);
    auto it = segments_.find(name);
    if (it != segments_.end()) {
      if (it->second->holder != nullptr)
        return reply_error(BATON_EBUSY, "segment " + name + " is open in " +
                                            (it->second->holder == &s ? "this application" : "another application") +
                                            " on this node; unregister it first");
      if (!s.may_use(it->second->uid)) return belongs_to(name, it->second->uid);
      kept = std::move(it->second);
      segments_.erase(it);
    }
    segments_.emplace(name, reserved(name, &s));
  }
  Result<void> ok{};
  const bool had_copy = kept && kept->handle != nullptr;
  if (had_copy) ok = engine_.close(kept->handle);
  if (ok) ok = engine_.remove(name);
  // The copy kept here was the last one (a node without replicas): gone now.
  if (!ok && ok.error().code == Errc::kNotFound && had_copy) ok = {};
  {
    std::lock_guard lock(registry_mu_);
    segments_.erase(name);
    registry_cv_.notify_all();
  }
  if (!ok) return reply_error(ok.error());
  Reply rep{};
  rep.magic = kMagic;
  return rep;
}

}  // namespace baton::ipc
