#include "baton/ethdev.h"

#include <rte_alarm.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <sched.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>

#include "common/log.h"
#include "ethdev/memif_guard.h"
#include "runtime/futex.h"

namespace baton::ethdev {
namespace {

constexpr uint16_t kBurst = 32;
constexpr uint64_t kLinkPollNs = 1'000'000;
constexpr uint64_t kReconnectNs = 100'000'000;  // a failed connect is cheap; the peer may be starting
constexpr size_t kAttachMinBytes = 8192;

std::mutex eal_mu;
bool eal_started = false;
bool eal_huge = false;
std::optional<Error> eal_error;

uint64_t free_huge_pages() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value;
  while (in >> key >> value) {
    if (key == "HugePages_Free:") return value;
    in.ignore(256, '\n');
  }
  return 0;
}

std::string allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return "0";
  std::string out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out += (out.empty() ? "" : ",") + std::to_string(c);
  return out.empty() ? "0" : out;
}

// One pool per (socket, frame size), shared by every port that fits it.
rte_mempool* pool_for(int socket, uint32_t room, uint32_t mbufs) {
  static std::mutex mu;
  static std::map<std::pair<int, uint32_t>, rte_mempool*> pools;
  std::lock_guard lock(mu);
  auto& p = pools[{socket, room}];
  if (p == nullptr) {
    std::string name = "baton_s" + std::to_string(socket < 0 ? 0 : socket) + "_" + std::to_string(room);
    p = rte_pktmbuf_pool_create(name.c_str(), mbufs, 256, 0, static_cast<uint16_t>(room), socket);
  }
  return p;
}

class EthdevLink final : public Link {
 public:
  EthdevLink(uint16_t port, uint16_t peer, uint32_t max_frame, rte_mempool* pool, std::string device, bool memif,
             bool memif_client, bool started, bool zero_copy)
      : started_(started),
        zero_copy_(zero_copy),
        port_(port), peer_(peer), max_frame_(max_frame), pool_(pool), memif_(memif), memif_client_(memif_client) {
    rte_eth_macaddr_get(port, &mac_);
    name_ = device + " -> node " + std::to_string(peer);
    down_since_ns_ = now_ns();
    // Payloads attached as external buffers belong to the engine: DPDK must
    // never free them. The base reference keeps the count above zero.
    shinfo_.free_cb = [](void*, void*) {};
    shinfo_.fcb_opaque = nullptr;
    rte_mbuf_ext_refcnt_set(&shinfo_, 1);
  }
  ~EthdevLink() override {
    // Cancel waits for a running callback, so none can touch a closed port.
    rte_eal_alarm_cancel(&EthdevLink::restart_on_interrupt_thread, this);
    rte_eth_dev_stop(port_);
    rte_eth_dev_close(port_);
  }

  const std::string& name() const noexcept override { return name_; }
  uint16_t peer() const noexcept override { return peer_; }
  LinkCaps caps() const noexcept override {
    // A vdev (memif, af_packet, net_ring) sits on no socket in particular: -1.
    return {max_frame_, zero_copy_, rte_eth_dev_socket_id(port_)};
  }
  bool up() noexcept override { return up_; }

  uint16_t rx_burst(RxFrame* out, uint16_t n) noexcept override {
    rte_mbuf* ms[kBurst];
    n = std::min<uint16_t>(n, kBurst);
    if (!started_.load(std::memory_order_relaxed)) return 0;
    uint16_t got;
    if (memif_) {
      if (!MemifGuard::enter()) return 0;
      got = rte_eth_rx_burst(port_, 0, ms, n);
      MemifGuard::exit();
    } else {
      got = rte_eth_rx_burst(port_, 0, ms, n);
    }
    uint16_t k = 0;
    for (uint16_t i = 0; i < got; ++i) {
      rte_mbuf* m = ms[i];
      // Baton frames are one segment (the pool's room holds a whole frame);
      // anything else is not ours or was cut.
      const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
      if (m->nb_segs != 1 || m->data_len <= sizeof(rte_ether_hdr) ||
          eth->ether_type != rte_cpu_to_be_16(kEtherType)) {
        ++counters_.rx_dropped;
        rte_pktmbuf_free(m);
        continue;
      }
      out[k++] = RxFrame{{reinterpret_cast<const std::byte*>(eth + 1), m->data_len - sizeof(rte_ether_hdr)}, m};
      counters_.rx_bytes += m->data_len;
    }
    counters_.rx_frames += k;
    return k;
  }

  void release_rx(RxFrame* frames, uint16_t n) noexcept override {
    rte_mbuf* ms[kBurst];
    for (uint16_t i = 0; i < n; ++i) ms[i] = static_cast<rte_mbuf*>(frames[i].token);
    rte_pktmbuf_free_bulk(ms, n);
  }

  uint16_t tx_burst(const TxFrame* frames, uint16_t n) noexcept override {
    rte_mbuf* ms[kBurst];
    rte_mbuf* attached[kBurst];
    n = std::min<uint16_t>(n, kBurst);
    if (!started_.load(std::memory_order_relaxed)) return 0;
    if (n == 0 || rte_pktmbuf_alloc_bulk(pool_, ms, n) != 0) return 0;
    if (zero_copy_ && rte_pktmbuf_alloc_bulk(pool_, attached, n) != 0) {
      rte_pktmbuf_free_bulk(ms, n);
      return 0;
    }
    uint16_t built = 0;
    for (; built < n; ++built) {
      const TxFrame& f = frames[built];
      const size_t len = f.head.size() + f.payload.size();
      if (len > max_frame_) break;  // the engine sizes chunks to caps(); a bigger frame is refused
      // Attaching costs a second mbuf and a refcount; below a few KiB a copy is cheaper.
      const bool attach = zero_copy_ && f.payload.size() >= kAttachMinBytes;
      const size_t copied = attach ? f.head.size() : len;
      auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(ms[built], sizeof(rte_ether_hdr) + copied));
      if (eth == nullptr) break;
      std::memset(&eth->dst_addr, 0xFF, sizeof eth->dst_addr);  // point to point: broadcast
      rte_ether_addr_copy(&mac_, &eth->src_addr);
      eth->ether_type = rte_cpu_to_be_16(kEtherType);
      auto* p = reinterpret_cast<std::byte*>(eth + 1);
      std::memcpy(p, f.head.data(), f.head.size());
      if (attach) {
        // Zero-copy: the payload rides as an external buffer in a second
        // segment. This device copies it into its ring inside tx_burst and
        // drops the mbuf there, so the engine's buffer is free on return.
        rte_mbuf* m = attached[built];
        attached[built] = nullptr;
        rte_mbuf_ext_refcnt_update(&shinfo_, 1);
        rte_pktmbuf_attach_extbuf(m, const_cast<std::byte*>(f.payload.data()), RTE_BAD_IOVA,
                                  static_cast<uint16_t>(f.payload.size()), &shinfo_);
        m->data_off = 0;
        m->data_len = static_cast<uint16_t>(f.payload.size());
        m->pkt_len = m->data_len;
        rte_pktmbuf_chain(ms[built], m);
      } else if (!f.payload.empty()) {
        std::memcpy(p + f.head.size(), f.payload.data(), f.payload.size());
      }
    }
    if (zero_copy_)
      for (uint16_t i = 0; i < n; ++i)
        if (attached[i] != nullptr) rte_pktmbuf_free(attached[i]);
    uint16_t sent = 0;
    if (built > 0) {
      if (memif_) {
        if (MemifGuard::enter()) {
          sent = rte_eth_tx_burst(port_, 0, ms, built);
          MemifGuard::exit();
        }
      } else {
        sent = rte_eth_tx_burst(port_, 0, ms, built);
      }
    }
    if (sent < n) rte_pktmbuf_free_bulk(ms + sent, n - sent);
    counters_.tx_frames += sent;
    for (uint16_t i = 0; i < sent; ++i) counters_.tx_bytes += frames[i].head.size() + frames[i].payload.size();
    return sent;
  }

  bool service(uint64_t now) noexcept override {
    if (now - last_poll_ns_ < kLinkPollNs) return false;
    last_poll_ns_ = now;
    rte_eth_link link{};
    if (rte_eth_link_get_nowait(port_, &link) != 0) return false;
    const bool up = link.link_status == RTE_ETH_LINK_UP;
    if (up != up_) {
      BT_INFO("%s: link %s", name_.c_str(), up ? "up" : "down");
      up_ = up;
      down_since_ns_ = now;
    }
    // A memif client whose server went away never reconnects by itself: it
    // needs stop/start. That must not run here: memif's control channel is
    // driven by the EAL interrupt thread, and a stop from this thread while
    // that thread handles a message crashes the PMD. An alarm callback runs
    // on the interrupt thread, serialised with memif's own handlers.
    if (!up_ && memif_client_ && now - down_since_ns_ >= kReconnectNs && !restart_pending_.exchange(true)) {
      down_since_ns_ = now;
      if (rte_eal_alarm_set(1, &EthdevLink::restart_on_interrupt_thread, this) != 0) restart_pending_ = false;
      return true;
    }
    return false;
  }

  /// Thread: EAL interrupt thread (alarm callback).
  static void restart_on_interrupt_thread(void* arg) {
    auto* self = static_cast<EthdevLink*>(arg);
    self->started_ = false;
    rte_eth_dev_stop(self->port_);
    if (rte_eth_dev_start(self->port_) == 0) {
      rte_eth_promiscuous_enable(self->port_);
      self->reconnects_.fetch_add(1);
      self->started_ = true;
    }
    self->restart_pending_ = false;
  }

  LinkCounters counters() const noexcept override {
    LinkCounters c = counters_;
    c.reconnects = reconnects_.load();
    return c;
  }

 private:
  std::atomic<bool> started_;  // bursts on a stopped port only log noise
  bool zero_copy_;
  rte_mbuf_ext_shared_info shinfo_{};
  uint16_t port_;
  uint16_t peer_;
  uint32_t max_frame_;
  rte_mempool* pool_;
  bool memif_;
  bool memif_client_;
  rte_ether_addr mac_{};
  std::string name_;
  bool up_ = false;
  uint64_t last_poll_ns_ = 0;
  uint64_t down_since_ns_ = 0;
  std::atomic<bool> restart_pending_{false};
  std::atomic<uint64_t> reconnects_{0};
  LinkCounters counters_;
};

Result<uint16_t> find_port(const std::string& name) {
  uint16_t port;
  if (rte_eth_dev_get_port_by_name(name.c_str(), &port) == 0) return port;
  return fail(Errc::kInvalidArgument, "no DPDK port named ", name);
}

Result<std::unique_ptr<Link>> start_port(uint16_t port, const PortConfig& c, const std::string& name) {
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(port, &info); rc != 0)
    return fail(Errc::kIo, name, ": dev_info: ", rte_strerror(-rc));
  const int socket = rte_eth_dev_socket_id(port);
  // Slack beyond the frame: af_packet wants each of its ring frames (the
  // frame plus its own header) to fit one mbuf.
  constexpr uint32_t kSlack = 256;
  const uint32_t room = c.max_frame + sizeof(rte_ether_hdr) + RTE_PKTMBUF_HEADROOM + kSlack;
  if (room > UINT16_MAX) return fail(Errc::kInvalidArgument, "max_frame too large for an mbuf");
  rte_mempool* pool = pool_for(socket, room, c.mbufs);
  if (pool == nullptr) return fail(Errc::kNoMemory, name, ": mbuf pool: ", rte_strerror(rte_errno));
  rte_eth_conf conf{};
  if (int rc = rte_eth_dev_configure(port, 1, 1, &conf); rc != 0)
    return fail(Errc::kIo, name, ": configure: ", rte_strerror(-rc));
  uint16_t rxd = c.descriptors, txd = c.descriptors;
  rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
  if (int rc = rte_eth_rx_queue_setup(port, 0, rxd, socket, nullptr, pool); rc != 0)
    return fail(Errc::kIo, name, ": rx queue: ", rte_strerror(-rc));
  if (int rc = rte_eth_tx_queue_setup(port, 0, txd, socket, nullptr); rc != 0)
    return fail(Errc::kIo, name, ": tx queue: ", rte_strerror(-rc));
  const bool memif = std::strcmp(info.driver_name, "net_memif") == 0;
  const bool client = memif && c.device.find("role=client") != std::string::npos;
  // A memif client cannot start before its server's socket exists; the link
  // keeps trying from service() (as it does after the server dies).
  const int rc = rte_eth_dev_start(port);
  if (rc != 0) {
    if (!client) return fail(Errc::kIo, name, ": start: ", rte_strerror(-rc));
    BT_INFO("%s: no memif server yet (%s); will retry", name.c_str(), rte_strerror(-rc));
  } else {
    rte_eth_promiscuous_enable(port);
  }
  // Zero-copy transmit only where the PMD copies the frame into its own ring
  // within tx_burst (memif in copy mode, af_packet): the payload must not be
  // referenced after the call. A NIC would DMA later and needs IOVAs.
  const bool zero_copy = memif || std::strcmp(info.driver_name, "net_af_packet") == 0;
  return std::unique_ptr<Link>(
      new EthdevLink(port, c.peer, c.max_frame, pool, name, memif, client, rc == 0, zero_copy));
}

// Each process's EAL leaves a runtime directory (/var/run/dpdk/PREFIX: its
// config, its telemetry socket) that DPDK never removes. Ours carry the
// owner's pid last ("baton123", "batond1-123"): remove those whose process
// is gone, so that thousands of test and chassis runs do not pile up.
void sweep_runtime_dirs() {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/var/run/dpdk", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("baton", 0) != 0) continue;
    const size_t digits = name.find_last_not_of("0123456789");
    if (digits == std::string::npos || digits + 1 == name.size()) continue;
    const long pid = std::strtol(name.c_str() + digits + 1, nullptr, 10);
    if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) fs::remove_all(e.path(), ec);
  }
}

}  // namespace

Result<void> init_eal(const std::vector<std::string>& extra, const std::string& telemetry_prefix) {
  std::lock_guard lock(eal_mu);
  if (eal_started) return {};
  if (eal_error) return tl::unexpected(*eal_error);
  sweep_runtime_dirs();
  std::vector<std::string> args = {"baton", "--no-pci", "--in-memory", "--log-level=5",
                                   "--lcores=0@(" + allowed_cpus() + ")"};
  if (telemetry_prefix.empty()) {
    args.push_back("--no-telemetry");
    args.push_back("--file-prefix=baton" + std::to_string(getpid()));
  } else {
    args.push_back("--file-prefix=" + telemetry_prefix);
  }
  // Huge pages when the kernel has some free, else plain memory.
  eal_huge = free_huge_pages() >= 64;
  if (!eal_huge) {
    args.push_back("--no-huge");
    args.push_back("-m");
    args.push_back("512");
  }
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (rte_eal_init(static_cast<int>(args.size()), argv.data()) < 0) {
    eal_error = Error{Errc::kIo, std::string("rte_eal_init: ") + rte_strerror(rte_errno)};
    return tl::unexpected(*eal_error);
  }
  eal_started = true;
  BT_INFO("EAL started (%s)", eal_huge ? "huge pages" : "no huge pages");
  return {};
}

bool eal_uses_huge_pages() noexcept { return eal_huge; }

Result<std::unique_ptr<Link>> open_port(const PortConfig& c) {
  if (c.device.empty()) return fail(Errc::kInvalidArgument, "empty device");
  if (c.peer == 0 || c.peer == 0xFFFF) return fail(Errc::kInvalidArgument, "peer must be 1..65534");
  if (c.max_frame < 1024) return fail(Errc::kInvalidArgument, "max_frame below 1024");
  if (auto ok = init_eal(); !ok) return tl::unexpected(ok.error());
  const std::string name = c.device.substr(0, c.device.find(','));
  std::string devargs = c.device;
  const bool is_vdev = devargs.find(',') != std::string::npos || name.rfind("net_", 0) == 0;
  if (is_vdev) {
    // memif's default 2 KiB buffers silently cut bigger frames: size them.
    if (name.rfind("net_memif", 0) == 0 && devargs.find("bsize=") == std::string::npos)
      devargs += ",bsize=" + std::to_string(c.max_frame + sizeof(rte_ether_hdr));
    uint16_t existing;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &existing) != 0) {
      if (int rc = rte_dev_probe(devargs.c_str()); rc != 0)
        return fail(Errc::kIo, "probe ", devargs, ": ", rte_strerror(-rc));
    }
  }
  auto port = find_port(name);
  if (!port) return tl::unexpected(port.error());
  return start_port(*port, c, name);
}

Result<std::pair<std::unique_ptr<Link>, std::unique_ptr<Link>>> ring_pair(uint16_t node_a, uint16_t node_b,
                                                                          uint32_t max_frame) {
  if (auto ok = init_eal(); !ok) return tl::unexpected(ok.error());
  static std::atomic<int> seq{0};
  const int id = seq.fetch_add(1);
  const std::string ab = "bt_r" + std::to_string(id) + "ab", ba = "bt_r" + std::to_string(id) + "ba";
  rte_ring* r_ab = rte_ring_create(ab.c_str(), 4096, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
  rte_ring* r_ba = rte_ring_create(ba.c_str(), 4096, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
  if (r_ab == nullptr || r_ba == nullptr) return fail(Errc::kNoMemory, "ring_pair rings: ", rte_strerror(rte_errno));
  const std::string na = "net_ring_bt" + std::to_string(id) + "a", nb = "net_ring_bt" + std::to_string(id) + "b";
  const int pa = rte_eth_from_rings(na.c_str(), &r_ba, 1, &r_ab, 1, SOCKET_ID_ANY);
  const int pb = rte_eth_from_rings(nb.c_str(), &r_ab, 1, &r_ba, 1, SOCKET_ID_ANY);
  if (pa < 0 || pb < 0) return fail(Errc::kIo, "rte_eth_from_rings: ", rte_strerror(rte_errno));
  PortConfig ca{na, node_b, max_frame};
  PortConfig cb{nb, node_a, max_frame};
  auto la = start_port(static_cast<uint16_t>(pa), ca, na);
  if (!la) return tl::unexpected(la.error());
  auto lb = start_port(static_cast<uint16_t>(pb), cb, nb);
  if (!lb) return tl::unexpected(lb.error());
  return std::pair{std::move(*la), std::move(*lb)};
}

}  // namespace baton::ethdev
