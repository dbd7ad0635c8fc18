#include "ipc/server.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "baton/baton.h"
#include "common/log.h"
#include "protocol/wire.h"
#include "runtime/futex.h"

namespace baton::ipc {

struct Server::Segment {
  std::string name;
  baton::Segment* handle = nullptr;  ///< the engine's
  uint32_t id = 0;                   ///< the handle applications use
  int holder_fd = -1;                ///< the application holding it, -1 if none
  LocalStorage channel_mem;          ///< the CommitChannel page
  CommitChannel* channel = nullptr;
  uint32_t seen = 0;                 ///< last request answered
};

namespace {

Reply reply_error(int status, const std::string& message) {
  Reply r{};
  r.magic = kMagic;
  r.status = status;
  std::snprintf(r.message, sizeof r.message, "%s", message.c_str());
  return r;
}
Reply reply_error(const Error& e) { return reply_error(-static_cast<int>(e.code), e.message); }

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

}  // namespace

Server::Server(Engine& engine, const ServerConfig& config) : engine_(engine), config_(config) {}

Result<std::unique_ptr<Server>> Server::start(Engine& engine, const ServerConfig& config) {
  if (config.socket_path.empty() || config.socket_path.size() >= sizeof(sockaddr_un::sun_path))
    return fail(Errc::kInvalidArgument, "socket path empty or too long");
  std::unique_ptr<Server> s(new Server(engine, config));
  s->listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s->listen_fd_ < 0) return fail(Errc::kIo, "socket: ", std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, config.socket_path.c_str(), sizeof addr.sun_path - 1);
  unlink(config.socket_path.c_str());  // a stale socket from a daemon that died
  if (bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return fail(Errc::kIo, "bind ", config.socket_path, ": ", std::strerror(errno));
  if (chmod(config.socket_path.c_str(), config.socket_mode) != 0)
    return fail(Errc::kIo, "chmod ", config.socket_path, ": ", std::strerror(errno));
  if (listen(s->listen_fd_, 64) != 0) return fail(Errc::kIo, "listen: ", std::strerror(errno));
  s->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  s->event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->epoll_fd_ < 0 || s->event_fd_ < 0) return fail(Errc::kIo, "epoll/eventfd: ", std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = s->listen_fd_;
  epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->listen_fd_, &ev);
  ev.data.fd = s->event_fd_;
  epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->event_fd_, &ev);
  return s;
}

Server::~Server() {
  for (auto& [fd, c] : clients_) close(fd);
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    unlink(config_.socket_path.c_str());
  }
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (event_fd_ >= 0) close(event_fd_);
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
      BT_WARN("refused client pid %d uid %u: not allowed by client.user/client.group", cred.pid, cred.uid);
      send_reply(fd, reply_error(BATON_EINVAL, "permission denied: uid not allowed by this daemon"));
      close(fd);
      continue;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    clients_[fd] = Client{fd, cred.uid, cred.pid};
    ++counters_.accepted;
  }
}

void Server::drop_client(int fd) {
  // The application is gone (exit, crash, disconnect): its segments stay
  // here with their replicas (S3) and can be opened again.
  for (auto& [name, seg] : segments_)
    if (seg->holder_fd == fd) seg->holder_fd = -1;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  clients_.erase(fd);
  ++counters_.disconnects;
}

Reply Server::open_segment(Client& c, const Request& r, std::vector<int>& fds) {
  const std::string name(r.name, r.name_len);
  if (!wire::valid_name(name)) return reply_error(BATON_EINVAL, "bad segment name");
  const Op op = static_cast<Op>(r.op);
  auto it = segments_.find(name);
  Reply rep{};
  rep.magic = kMagic;
  if (it != segments_.end()) {
    Segment& seg = *it->second;
    if (seg.holder_fd >= 0 && seg.holder_fd != c.fd) {
      // The holder may be gone already, its hang-up not yet taken in: look.
      pollfd p{seg.holder_fd, POLLRDHUP, 0};
      if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0) drop_client(seg.holder_fd);
    }
    if (seg.holder_fd >= 0) return reply_error(BATON_EEXIST, "segment " + name + " is held by another application");
    if (op == Op::kCreate) return reply_error(BATON_EEXIST, "segment " + name + " already exists on this node");
    // The application restarted: it gets its segment back as last committed
    // (not as it left it: bytes written after the last commit are no
    // generation), or, if ownership moved meanwhile, the newer state from
    // the cluster under a new engine handle.
    auto reopened = engine_.reopen(seg.handle);
    if (!reopened) {
      if (!engine_.status(seg.handle)) segments_.erase(it);  // the fenced local copy is gone
      return reply_error(reopened.error());
    }
    seg.handle = reopened->segment;
    rep.restored = reopened->outcome == OpenOutcome::kRestored ? 1 : 0;
    rep.generation = reopened->generation;
  } else {
    Result<OpenResult> opened = fail(Errc::kInternal, "");
    if (op == Op::kCreate) {
      auto seg = engine_.create(name, r.size);
      if (seg) opened = OpenResult{*seg, OpenOutcome::kCreated, 0};
      else opened = tl::unexpected(seg.error());
    } else if (op == Op::kLoad) {
      opened = engine_.load(name);
    } else {
      opened = engine_.open(name, r.size);
    }
    if (!opened) return reply_error(opened.error());
    auto seg = std::make_unique<Segment>();
    seg->name = name;
    seg->handle = opened->segment;
    seg->id = next_handle_++;
    auto mem = LocalStorage::create(name + "@channel", sizeof(CommitChannel), -1);
    if (!mem) return reply_error(mem.error());
    seg->channel_mem = std::move(*mem);
    seg->channel = new (seg->channel_mem.data()) CommitChannel();
    rep.restored = opened->outcome == OpenOutcome::kRestored ? 1 : 0;
    rep.generation = opened->generation;
    it = segments_.emplace(name, std::move(seg)).first;
  }
  Segment& seg = *it->second;
  seg.holder_fd = c.fd;
  seg.seen = seg.channel->request.load();
  seg.channel->done.store(seg.seen);
  rep.handle = seg.id;
  rep.size = engine_.data(seg.handle).size();
  fds = {engine_.memory_fd(seg.handle), seg.channel_mem.fd(), event_fd_};
  return rep;
}

Reply Server::wait(const Request& r) {
  for (auto& [name, seg] : segments_) {
    if (seg->id != r.handle) continue;
    auto ok = engine_.wait_replicated(seg->handle, r.generation, r.k, std::chrono::milliseconds(r.timeout_ms));
    if (!ok) return reply_error(ok.error());
    Reply rep{};
    rep.magic = kMagic;
    rep.generation = r.generation;
    return rep;
  }
  return reply_error(BATON_EINVAL, "unknown segment handle");
}

Reply Server::close_segment(Client& c, const Request& r) {
  for (auto it = segments_.begin(); it != segments_.end(); ++it) {
    Segment& seg = *it->second;
    if (seg.id != r.handle) continue;
    if (seg.holder_fd != c.fd) return reply_error(BATON_EINVAL, "segment not held by this application");
    auto ok = engine_.close(seg.handle);
    segments_.erase(it);
    if (!ok) return reply_error(ok.error());
    Reply rep{};
    rep.magic = kMagic;
    return rep;
  }
  return reply_error(BATON_EINVAL, "unknown segment handle");
}

std::string Server::status() const {
  const EngineStats stats = engine_.stats();
  std::string s = "node id=" + std::to_string(engine_.node_id()) + " name=" + config_.node_name +
                  " stalls=" + std::to_string(stats.stalls) +
                  " longest_stall_ms=" + std::to_string(stats.longest_stall_us / 1000) + "\n";
  const auto peers = engine_.peers();
  auto alive = [&](uint16_t node) {
    for (const auto& p : peers)
      if (p.node == node) return p.alive;
    return false;
  };
  const View v = engine_.view();
  std::string members;
  for (uint16_t m : v.members) members += (members.empty() ? "" : ",") + std::to_string(m);
  s += "view id=" + std::to_string(v.id) + " members=" + members + " votes=" + std::to_string(v.members.size()) +
       " expected=" + std::to_string(v.expected_votes) + " quorate=" + (v.quorate ? "yes" : "no") +
       " agreed=" + (v.agreed ? "yes" : "no") + "\n";
  for (const auto& l : engine_.link_status())
    s += "link peer=" + std::to_string(l.peer) + " node=" + (alive(l.peer) ? "alive" : "dead") + " state=" +
         (l.up ? "up" : "down") + " rx=" +
         std::to_string(l.counters.rx_frames) + " tx=" + std::to_string(l.counters.tx_frames) + " reconnects=" +
         std::to_string(l.counters.reconnects) + " name=" + l.name.substr(0, l.name.find(' ')) + "\n";
  for (const auto& [name, seg] : segments_) {
    auto st = engine_.status(seg->handle);
    if (!st) continue;
    s += "segment name=" + name + " size=" + std::to_string(st->size) + " generation=" +
         std::to_string(st->generation) + " durable=" + std::to_string(st->durable) + " epoch=" +
         std::to_string(st->epoch) + " app=" +
         (seg->holder_fd >= 0 ? "held" : "free") + (st->fenced ? " fenced=yes" : "") + "\n";
    for (auto& [node, gen] : st->replicas)
      s += "replica segment=" + name + " node=" + std::to_string(node) + " generation=" + std::to_string(gen) +
           " lag=" + std::to_string(st->generation - std::min(gen, st->generation)) +
           " alive=" + (alive(node) ? "yes" : "no") + "\n";
  }
  return s.size() > kMaxReply - sizeof(Reply) ? s.substr(0, kMaxReply - sizeof(Reply)) : s;
}

std::string Server::events() const {
  std::string s;
  for (const auto& e : engine_.events()) s += std::to_string(e.unix_us) + " " + e.text + "\n";
  return s.size() > kMaxReply - sizeof(Reply) ? s.substr(s.size() - (kMaxReply - sizeof(Reply))) : s;
}

void Server::on_request(Client& c) {
  alignas(Request) char buf[kMaxMessage];
  const ssize_t n = recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    drop_client(c.fd);
    return;
  }
  if (n < 0) return;
  Request r;
  if (static_cast<size_t>(n) != sizeof r) {
    ++counters_.bad_requests;
    send_reply(c.fd, reply_error(BATON_EINVAL, "malformed request (size " + std::to_string(n) + ")"));
    return;
  }
  std::memcpy(&r, buf, sizeof r);
  if (r.magic != kMagic || r.version != kVersion || r.name_len > kMaxName) {
    ++counters_.bad_requests;
    send_reply(c.fd, reply_error(BATON_EINVAL, "malformed request (magic, version or name length)"));
    return;
  }
  std::vector<int> fds;
  std::string text;
  Reply rep;
  switch (static_cast<Op>(r.op)) {
    case Op::kOpen:
    case Op::kCreate:
    case Op::kLoad: rep = open_segment(c, r, fds); break;
    case Op::kWait: rep = wait(r); break;
    case Op::kClose: rep = close_segment(c, r); break;
    case Op::kStatus:
    case Op::kEvents:
      rep = Reply{};
      rep.magic = kMagic;
      text = static_cast<Op>(r.op) == Op::kStatus ? status() : events();
      rep.text_len = static_cast<uint32_t>(text.size());
      break;
    default:
      ++counters_.bad_requests;
      rep = reply_error(BATON_EINVAL, "unknown request " + std::to_string(r.op));
  }
  send_reply(c.fd, rep, rep.status == 0 ? fds : std::vector<int>{}, text);
}

bool Server::poll_commits() {
  bool busy = false;
  for (auto& [name, seg] : segments_) {
    CommitChannel& ch = *seg->channel;
    const uint32_t req = ch.request.load();  // seq_cst: pairs with the daemon_sleeping handshake
    if (req == seg->seen || seg->holder_fd < 0) continue;
    busy = true;
    seg->seen = req;
    auto g = engine_.commit(seg->handle);
    ch.status.store(g ? 0 : -static_cast<int32_t>(g.error().code), std::memory_order_relaxed);
    if (g) ch.generation.store(*g, std::memory_order_relaxed);
    ch.done.store(req, std::memory_order_release);
    if (ch.app_sleeping.load())  // shared memory between processes: not a private futex
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&ch.done), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
    ++counters_.commits;
  }
  return busy;
}

void Server::serve(const std::atomic<bool>& stop) {
  const uint64_t spin_ns = uint64_t{config_.idle_spin_us} * 1000;
  uint64_t idle_since = now_ns();
  while (!stop.load(std::memory_order_relaxed)) {
    if (poll_commits()) idle_since = now_ns();
    // Sockets: look without waiting while busy or spinning; sleep when idle,
    // telling every application to ring the doorbell.
    const bool spinning = now_ns() - idle_since < spin_ns;
    if (!spinning)
      for (auto& [name, seg] : segments_) seg->channel->daemon_sleeping.store(1);
    const bool pending = !spinning && poll_commits();  // a commit posted before it saw the flag
    epoll_event evs[32];
    const int n = epoll_wait(epoll_fd_, evs, 32, spinning || pending ? 0 : 100);
    if (!spinning)
      for (auto& [name, seg] : segments_) seg->channel->daemon_sleeping.store(0);
    if (pending) idle_since = now_ns();
    for (int i = 0; i < n; ++i) {
      const int fd = evs[i].data.fd;
      if (fd == listen_fd_) {
        accept_clients();
      } else if (fd == event_fd_) {
        uint64_t v;
        (void)read(event_fd_, &v, sizeof v);
        idle_since = now_ns();
      } else if (auto it = clients_.find(fd); it != clients_.end()) {
        if (evs[i].events & (EPOLLHUP | EPOLLERR)) drop_client(fd);
        else on_request(it->second);
        idle_since = now_ns();
      }
    }
    if (spinning && n <= 0) _mm_pause();
  }
}

}  // namespace baton::ipc
