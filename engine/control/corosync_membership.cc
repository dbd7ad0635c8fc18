// Membership from Corosync (control/corosync_membership.h): the decision
// (CpgMembership) and the adaptor that feeds it from libcpg and
// libvotequorum.
//
// Thread: control.

#include "control/corosync_membership.h"

#include <poll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/log.h"

#ifdef BATON_HAVE_COROSYNC
#include <corosync/corotypes.h>
#include <corosync/cpg.h>
#include <corosync/votequorum.h>
#endif

namespace baton {

namespace {
constexpr std::array<std::byte, 4> kMagic{std::byte{'B'}, std::byte{'T'}, std::byte{'N'}, std::byte{'M'}};
}  // namespace

CpgMembership::CpgMembership(uint16_t self, uint32_t expected) : self_(self) {
  view_.expected_votes = expected;
  view_.quorum = expected == 2 ? 1 : expected / 2 + 1;
  view_.members = {self};
  view_.quorate = false;  // until corosync says so
  view_.source = "corosync";
  view_.agreed = false;
}

bool CpgMembership::update(std::span<const uint16_t> alive) {
  alive_.assign(alive.begin(), alive.end());
  std::sort(alive_.begin(), alive_.end());
  return recompute();
}

bool CpgMembership::reported(uint16_t peer, uint64_t digest) {
  if (!agreement_.report(peer, digest)) return false;
  const bool before = view_.agreed;
  view_.agreed = agreement_.agreed(view_, self_);
  return before != view_.agreed;
}

bool CpgMembership::on_connected(CpgMember local) {
  connected_ = true;
  local_ = local;
  members_.clear();
  announced_.clear();
  cluster_quorate_ = false;
  return recompute();
}

bool CpgMembership::on_members(std::span<const CpgMember> members) {
  members_.assign(members.begin(), members.end());
  std::sort(members_.begin(), members_.end());
  std::erase_if(announced_,
                [&](const auto& a) { return !std::binary_search(members_.begin(), members_.end(), a.first); });
  return recompute();
}

bool CpgMembership::on_announce(CpgMember from, uint16_t node) {
  // Only members speak in a group; a message from a process that has since
  // left (delivered before its leave) would be forgotten at once anyway.
  if (!std::binary_search(members_.begin(), members_.end(), from)) return false;
  auto it = std::find_if(announced_.begin(), announced_.end(), [&](const auto& a) { return a.first == from; });
  if (it == announced_.end()) announced_.emplace_back(from, node);
  else it->second = node;
  return recompute();
}

bool CpgMembership::on_quorum(bool quorate) {
  cluster_quorate_ = quorate;
  return recompute();
}

bool CpgMembership::on_disconnected() {
  connected_ = false;
  cluster_quorate_ = false;
  members_.clear();
  announced_.clear();
  return recompute();
}

std::vector<uint16_t> CpgMembership::group_nodes() const {
  std::vector<uint16_t> nodes;
  for (const auto& [who, node] : announced_) nodes.push_back(node);
  std::sort(nodes.begin(), nodes.end());
  nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  return nodes;
}

bool CpgMembership::recompute() {
  std::vector<uint16_t> members{self_};
  for (const auto& [who, node] : announced_)
    if (node != self_ && std::binary_search(alive_.begin(), alive_.end(), node)) members.push_back(node);
  std::sort(members.begin(), members.end());
  members.erase(std::unique(members.begin(), members.end()), members.end());
  const bool in_group = connected_ && std::binary_search(members_.begin(), members_.end(), local_);
  const bool quorate = in_group && cluster_quorate_;
  if (members == view_.members && quorate == view_.quorate) return false;
  view_.members = std::move(members);
  view_.quorate = quorate;
  ++view_.id;
  agreement_.keep_only(view_.members);
  view_.agreed = agreement_.agreed(view_, self_);
  return true;
}

std::array<std::byte, 8> CpgMembership::announcement(uint16_t node) noexcept {
  std::array<std::byte, 8> m{};
  std::memcpy(m.data(), kMagic.data(), kMagic.size());
  m[4] = std::byte(node & 0xff);
  m[5] = std::byte(node >> 8);
  return m;
}

std::optional<uint16_t> CpgMembership::parse_announcement(std::span<const std::byte> msg) noexcept {
  if (msg.size() != 8 || std::memcmp(msg.data(), kMagic.data(), kMagic.size()) != 0) return std::nullopt;
  if (msg[6] != std::byte{0} || msg[7] != std::byte{0}) return std::nullopt;
  const uint16_t node = static_cast<uint16_t>(std::to_integer<unsigned>(msg[4]) |
                                              std::to_integer<unsigned>(msg[5]) << 8);
  if (node == 0 || node == 0xffff) return std::nullopt;
  return node;
}

#ifdef BATON_HAVE_COROSYNC

namespace {

/// The adaptor. libcpg and libvotequorum may block (connecting while
/// corosync shuts down took seconds here), and the control thread sends
/// the heartbeats, so they run on a thread of their own (`baton-corosync`):
/// it connects, reconnects every second while corosync does not answer,
/// waits on both handles' descriptors, dispatches, and announces this node
/// whenever a process joins the group. What they deliver travels to the
/// control thread as Delivery records; poll() applies them to the
/// CpgMembership there, which owns every decision.
class CorosyncMembership final : public CpgMembership {
 public:
  CorosyncMembership(uint16_t self, uint32_t expected, std::string group, MembershipEvents events)
      : CpgMembership(self, expected), self_(self), group_(std::move(group)), events_(std::move(events)) {
    thread_ = std::thread([this] { run(); });
  }
  ~CorosyncMembership() override {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

  bool poll(uint64_t) override {
    {
      std::lock_guard lock(mu_);
      taken_.swap(inbox_);
    }
    bool changed = false;
    for (Delivery& d : taken_) {
      switch (d.kind) {
        case Delivery::kConnected: changed |= on_connected(d.from); break;
        case Delivery::kMembers: changed |= on_members(d.members); break;
        case Delivery::kAnnounce: changed |= on_announce(d.from, d.node); break;
        case Delivery::kQuorum: changed |= on_quorum(d.quorate); break;
        case Delivery::kLost: changed |= on_disconnected(); break;
      }
    }
    taken_.clear();
    return changed;
  }

 private:
  /// What corosync delivered. Thread: produced by the corosync thread,
  /// consumed by the control thread (under mu_).
  struct Delivery {
    enum Kind : uint8_t { kConnected, kMembers, kAnnounce, kQuorum, kLost } kind;
    CpgMember from{};
    uint16_t node = 0;
    bool quorate = false;
    std::vector<CpgMember> members;
  };
  void post(Delivery d) {
    std::lock_guard lock(mu_);
    inbox_.push_back(std::move(d));
  }

  // Everything below runs on the corosync thread.
  static bool ok(cs_error_t e) noexcept { return e == CS_OK || e == CS_ERR_TRY_AGAIN; }

  void run() noexcept {
    prctl(PR_SET_NAME, "baton-corosync", 0, 0, 0);
    while (!stop_.load()) {
      if (cpg_ == 0 && !connect()) {
        for (int i = 0; i < 10 && !stop_.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      int cfd = -1, qfd = -1;
      cpg_fd_get(cpg_, &cfd);
      votequorum_fd_get(vq_, &qfd);
      pollfd fds[2] = {{cfd, POLLIN, 0}, {qfd, POLLIN, 0}};
      if (::poll(fds, 2, 100) < 0 && errno != EINTR) {
        lost(CS_ERR_LIBRARY);
        continue;
      }
      const cs_error_t c = cpg_dispatch(cpg_, CS_DISPATCH_ALL);
      const cs_error_t q = votequorum_dispatch(vq_, CS_DISPATCH_ALL);
      if (!ok(c) || !ok(q)) {
        lost(!ok(c) ? c : q);
        continue;
      }
      if (announce_) announce();
    }
    drop();
  }

  bool connect() {
    cpg_callbacks_t callbacks{};
    callbacks.cpg_deliver_fn = &CorosyncMembership::on_message;
    callbacks.cpg_confchg_fn = &CorosyncMembership::on_confchg;
    cs_error_t e = cpg_initialize(&cpg_, &callbacks);
    if (e != CS_OK) return failed("cpg_initialize", e);
    cpg_context_set(cpg_, this);
    uint32_t nodeid = 0;
    if (e = cpg_local_get(cpg_, &nodeid); e != CS_OK) return failed("cpg_local_get", e);
    me_ = CpgMember{nodeid, static_cast<uint32_t>(getpid())};
    post(Delivery{Delivery::kConnected, me_});
    votequorum_callbacks_t vcb{};
    vcb.votequorum_quorum_notify_fn = &CorosyncMembership::on_quorum_notify;
    if (e = votequorum_initialize(&vq_, &vcb); e != CS_OK) return failed("votequorum_initialize", e);
    if (e = votequorum_trackstart(vq_, reinterpret_cast<uint64_t>(this), CS_TRACK_CHANGES | CS_TRACK_CURRENT);
        e != CS_OK)
      return failed("votequorum_trackstart", e);
    cpg_name name{};
    name.length = static_cast<uint32_t>(std::min<size_t>(group_.size(), CPG_MAX_NAME_LENGTH));
    std::memcpy(name.value, group_.data(), name.length);
    if (e = cpg_join(cpg_, &name); e != CS_OK) return failed("cpg_join", e);
    failing_ = false;
    events_("corosync: joined process group " + group_ + " as node " + std::to_string(self_) + " (corosync node " +
            std::to_string(nodeid) + ")");
    return true;
  }

  bool failed(const char* what, cs_error_t e) {
    // Said once per outage, not every second.
    if (!failing_)
      events_(std::string("corosync: ") + what + " failed (" + cs_strerror(e) +
              "); alone without quorum, trying every second");
    failing_ = true;
    drop();
    post(Delivery{Delivery::kLost});
    return false;
  }

  void lost(cs_error_t e) {
    events_(std::string("corosync: connection lost (") + cs_strerror(e) +
            "); alone without quorum, trying every second");
    failing_ = true;
    drop();
    post(Delivery{Delivery::kLost});
  }

  void drop() noexcept {
    if (vq_ != 0) votequorum_finalize(vq_);
    if (cpg_ != 0) cpg_finalize(cpg_);
    vq_ = 0;
    cpg_ = 0;
    announce_ = false;
    said_quorate_.reset();
  }

  void announce() {
    auto msg = announcement(self_);
    iovec iov{msg.data(), msg.size()};
    const cs_error_t e = cpg_mcast_joined(cpg_, CPG_TYPE_AGREED, &iov, 1);
    // Corosync's queue full (a membership change under way): next time round.
    if (e == CS_OK) announce_ = false;
    else if (e != CS_ERR_TRY_AGAIN) lost(e);
  }

  static CorosyncMembership* of(cpg_handle_t h) {
    void* ctx = nullptr;
    cpg_context_get(h, &ctx);
    return static_cast<CorosyncMembership*>(ctx);
  }

  static void on_message(cpg_handle_t h, const cpg_name*, uint32_t nodeid, uint32_t pid, void* msg, size_t len) {
    CorosyncMembership* m = of(h);
    auto node = parse_announcement({static_cast<const std::byte*>(msg), len});
    if (m == nullptr || !node) return;  // not ours: ignored
    m->post(Delivery{Delivery::kAnnounce, CpgMember{nodeid, pid}, *node});
  }

  static void on_confchg(cpg_handle_t h, const cpg_name*, const cpg_address* members, size_t n, const cpg_address*,
                         size_t, const cpg_address*, size_t joined) {
    CorosyncMembership* m = of(h);
    if (m == nullptr) return;
    Delivery d{Delivery::kMembers};
    bool in = false;
    for (size_t i = 0; i < n; ++i) {
      d.members.push_back(CpgMember{members[i].nodeid, members[i].pid});
      in |= d.members.back() == m->me_;
    }
    // Whoever joined must learn who this process is (CPG delivers the
    // join before anything the joiner sends, and this after the join).
    if (joined > 0 && in) m->announce_ = true;
    m->post(std::move(d));
  }

  static void on_quorum_notify(votequorum_handle_t, uint64_t context, uint32_t quorate, uint32_t,
                               votequorum_node_t*) {
    auto* m = reinterpret_cast<CorosyncMembership*>(context);
    if (m->said_quorate_ != (quorate != 0))
      m->events_(quorate != 0 ? "corosync: the cluster is quorate" : "corosync: the cluster has no quorum");
    m->said_quorate_ = quorate != 0;
    m->post(Delivery{Delivery::kQuorum, {}, 0, quorate != 0});
  }

  const uint16_t self_;
  const std::string group_;
  const MembershipEvents events_;  ///< thread-safe (the engine's event log)
  std::atomic<bool> stop_{false};
  std::thread thread_;
  // The corosync thread's.
  cpg_handle_t cpg_ = 0;
  votequorum_handle_t vq_ = 0;
  CpgMember me_{};  ///< this process in the group
  bool failing_ = false;
  bool announce_ = false;
  std::optional<bool> said_quorate_;  ///< votequorum's verdict as last reported in an event
  // Between the two threads.
  std::mutex mu_;
  std::vector<Delivery> inbox_;  ///< mu_
  // The control thread's.
  std::vector<Delivery> taken_;
};

}  // namespace

Result<std::unique_ptr<MembershipSource>> make_corosync_membership(uint16_t self, uint32_t expected, std::string group,
                                                                  MembershipEvents events) {
  if (group.empty() || group.size() > CPG_MAX_NAME_LENGTH)
    return fail(Errc::kInvalidArgument, "corosync group name must be 1..", std::to_string(CPG_MAX_NAME_LENGTH),
                " bytes");
  return std::unique_ptr<MembershipSource>(
      std::make_unique<CorosyncMembership>(self, expected, std::move(group), std::move(events)));
}

#else

Result<std::unique_ptr<MembershipSource>> make_corosync_membership(uint16_t, uint32_t, std::string, MembershipEvents) {
  return fail(Errc::kInvalidArgument,
              "membership from Corosync needs a build with libcpg and libvotequorum (tools/setup.sh installs them)");
}

#endif

}  // namespace baton
