#include "baton/ethdev.h"

#include <rte_alarm.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_version.h>
#include <immintrin.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/devargs.h"
#include "common/log.h"
#include "ethdev/memif_guard.h"
#include "runtime/peer_lock.h"
#include "runtime/futex.h"

namespace baton::ethdev {
namespace {

constexpr uint16_t kBurst = 32;
constexpr uint64_t kLinkPollNs = 1'000'000;
constexpr uint64_t kReconnectNs = 100'000'000;  // a failed connect is cheap; the peer may be starting
/// The longest a memif client lets a handshake it started run before it
/// restarts the port (the wait doubles from kReconnectNs while handshakes
/// do not finish: on a starved machine one can take longer than 100 ms, and
/// a restart cuts it, again and again).
constexpr uint64_t kMaxHandshakeNs = 1'600'000'000;
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

/// mbufs for every memif and af_packet port of a frame size: they allocate
/// one per frame received and free one per frame sent within the burst
/// call, and the engine releases a received burst before its next one, so
/// at most a few bursts per worker are ever out (no worker is an EAL lcore:
/// no per-lcore caches hold any). 2047 mbufs of the default frame size take
/// 34 MiB of huge pages, where the 4095 per queue pair sized for a NIC's
/// descriptor rings took 140 MiB a blade: two chassis of four such blades
/// did not fit in 1 GiB of huge pages.
constexpr uint32_t kCopyingPortMbufs = 2047;

/// Whether the PMD copies frames in and out of its own rings (memif in copy
/// mode, af_packet), holding no mbufs between bursts.
bool copies_frames(const char* driver) {
  return std::strcmp(driver, "net_memif") == 0 || std::strcmp(driver, "net_af_packet") == 0;
}

/// mbufs per queue pair for other PMDs: a NIC keeps its rx ring filled,
/// and net_ring holds what was sent until the peer's queue reads it.
constexpr uint32_t kQueuePairMbufs = 4095;

/// How a port uses its pool's mbufs.
enum class PoolKind : char {
  kCopying = 'c',    ///< memif in copy mode, af_packet: none held between bursts
  kHolding = 's',    ///< a NIC or net_ring: its rings hold them
  kZeroCopy = 'z',   ///< a memif zero-copy client: its rings hold them, and its peer reads them
};

/// memif's ring size when `rsize` is not given (log2: 1024 slots).
constexpr uint32_t kMemifDefaultLog2Ring = 10;

/// How many mbufs a port's pool needs: `mbufs` per queue pair when given;
/// else for a copying PMD, kCopyingPortMbufs for all of them; for a memif
/// zero-copy client, its rx rings full (the server copies into them) and
/// its tx rings full (each frame is held until the server has read it),
/// and a margin for the bursts out; else kQueuePairMbufs per queue pair.
uint32_t pool_mbufs(const PortConfig& c, PoolKind kind) {
  if (c.mbufs != 0) return c.mbufs * c.queues;
  switch (kind) {
    case PoolKind::kCopying: return kCopyingPortMbufs;
    case PoolKind::kZeroCopy: {
      uint32_t log2 = kMemifDefaultLog2Ring;
      if (auto r = devarg(c.device, "rsize")) log2 = static_cast<uint32_t>(std::strtoul(r->c_str(), nullptr, 10));
      return (2u * (1u << std::min<uint32_t>(log2, 14)) + 128) * c.queues;
    }
    case PoolKind::kHolding: break;
  }
  return kQueuePairMbufs * c.queues;
}

// One pool per (socket, frame size, kind), shared by every port that fits
// it; a memif zero-copy client's is its own (`owner`: the port's name),
// as its rings hold a pool's worth.
rte_mempool* pool_for(int socket, uint32_t room, PoolKind kind, uint32_t mbufs, const std::string& owner) {
  static std::mutex mu;
  static std::map<std::tuple<int, uint32_t, char, std::string>, rte_mempool*> pools;
  std::lock_guard lock(mu);
  const std::string key = kind == PoolKind::kZeroCopy ? owner : std::string();
  auto& p = pools[{socket, room, static_cast<char>(kind), key}];
  if (p == nullptr) {
    static int zero_copy_pools = 0;
    std::string name = std::string("baton_") + static_cast<char>(kind) +
                       (kind == PoolKind::kZeroCopy ? std::to_string(zero_copy_pools++) + "_" : std::string()) +
                       std::to_string(socket < 0 ? 0 : socket) + "_" + std::to_string(room);
    // No per-lcore cache in a zero-copy pool: reset_pool() finds every
    // free mbuf in the pool's own ring.
    const unsigned cache = kind == PoolKind::kZeroCopy ? 0 : 256;
    p = rte_pktmbuf_pool_create(name.c_str(), mbufs, cache, 0, static_cast<uint16_t>(room), socket);
  }
  return p;
}

/// rte_eth_dev_start for a memif client: its connect to the server's
/// socket fails at once instead of waiting on a full backlog
/// (MemifGuard::NoWaitConnect), and the start is retried like one whose
/// server is not there yet.
int start_memif_client(uint16_t port) {
  MemifGuard::NoWaitConnect no_wait;
  return rte_eth_dev_start(port);
}

/// Keeps the EAL's memory-list files open (MemifGuard::keep_open): a memif
/// zero-copy client hands them to its server at every connection.
void keep_memory_files_open() {
  rte_memseg_walk(
      [](const rte_memseg_list*, const rte_memseg* ms, void*) {
        MemifGuard::keep_open(rte_memseg_get_fd_thread_unsafe(ms));
        return 0;
      },
      nullptr);
}

/// DPDK's first memory list that holds any (null: none): what memif's
/// zero-copy client shares with its server as its region 1.
const rte_memseg_list* first_memory_list() {
  const rte_memseg_list* first = nullptr;
  rte_memseg_list_walk(
      [](const rte_memseg_list* msl, void* arg) {
        if (msl->memseg_arr.count == 0 || msl->external) return 0;
        *static_cast<const rte_memseg_list**>(arg) = msl;
        return 1;
      },
      &first);
  return first;
}

/// Whether all of `pool`'s memory lies in first_memory_list(): the client
/// describes every buffer by its offset there (the PMD does not look up
/// the region of a buffer).
bool pool_in_first_memory_list(rte_mempool* pool) {
  struct Check {
    const rte_memseg_list* first;
    bool ok = true;
  } check{first_memory_list()};
  rte_mempool_mem_iter(
      pool,
      [](rte_mempool*, void* arg, rte_mempool_memhdr* hdr, unsigned) {
        auto* c = static_cast<Check*>(arg);
        c->ok = c->ok && c->first != nullptr && rte_mem_virt2memseg_list(hdr->addr) == c->first;
      },
      &check);
  return check.ok;
}

/// Whether first_memory_list() has no hole below its last page in use.
/// The PMD sizes that region as the sum of its pages, and its server maps
/// that much of the file from its start: with a hole, buffers past the sum
/// lie beyond the server's mapping, and it dies reading them. batond frees
/// no DPDK memory once started, so there is none; this checks.
bool first_memory_list_whole() {
  const rte_memseg_list* first = first_memory_list();
  if (first == nullptr) return true;
  auto* arr = const_cast<rte_fbarray*>(&first->memseg_arr);
  return rte_fbarray_find_prev_used(arr, arr->len - 1) + 1 == static_cast<int>(arr->count);
}

/// Puts every mbuf of `pool` back in it. For a memif zero-copy client's own
/// pool between two connections: the PMD (DPDK 22.11 to this day) never
/// frees the mbufs its rings held when a connection ends, and allocates a
/// fresh ring's worth at the next, so without this each reconnection lost
/// about 500 and the third found the pool empty. The caller makes sure
/// nothing else holds any (Port::hold).
void reset_pool(rte_mempool* pool) {
  // Empty the pool's ring: every object, free or not, goes back below once.
  for (void* obj; rte_mempool_get(pool, &obj) == 0;) continue;
  std::vector<void*> all;
  all.reserve(pool->size);
  rte_mempool_obj_iter(
      pool, [](rte_mempool*, void* arg, void* obj, unsigned) { static_cast<std::vector<void*>*>(arg)->push_back(obj); },
      &all);
  for (void* obj : all) {
    auto* m = static_cast<rte_mbuf*>(obj);
    rte_pktmbuf_reset(m);
    rte_mbuf_refcnt_set(m, 1);
  }
  rte_mempool_put_bulk(pool, all.data(), static_cast<unsigned>(all.size()));
}

/// Holds the EAL interrupt thread in an alarm callback of ours while a port
/// opens, so that no memif handler runs meanwhile. A memif zero-copy
/// client, on its server's hello (a handler on that thread), walks DPDK's
/// memory lists under their read lock and allocates from DPDK's heap
/// inside the walk (memif_region_init_zc, DPDK 22.11 to this day). An
/// allocation on another thread that grows the heap holds the heap's lock
/// and then waits for the lists' write lock: each thread waits for the
/// other, for good. Opening a port allocates (the device, its queues, its
/// mbuf pool: a zero-copy client's own 11 MiB grows the heap), and the
/// ports opened before it handshake meanwhile: a restarted blade of the
/// kill campaign hung so, in rte_pktmbuf_pool_create, 1 start in about 20
/// with three zero-copy links. (Freeing can shrink the heap and take the
/// locks in the same order: a port that is not memif's closes under one
/// too; memif's close on that thread.) Gives up waiting for the thread after 5 s
/// (a handler stuck elsewhere) and says so. Thread: any; on the interrupt
/// thread itself (a restart) there is nothing to hold.
class InterruptThreadHeld {
 public:
  InterruptThreadHeld() {
    // Held already by this thread (a port closed while another opens): as is.
    if (held_here || MemifGuard::on_interrupt_thread() || rte_eal_alarm_set(1, &park, this) != 0) return;
    armed_ = true;
    held_here = true;
    const uint64_t until = now_ns() + 5'000'000'000ull;
    while (state_.load() == kWaiting && now_ns() < until) futex_wait(state_, kWaiting, 10'000'000);
    if (state_.load() != kParked)
      BT_WARN("the EAL interrupt thread did not come within 5 s: a port opens or closes while memif handlers may run");
  }
  ~InterruptThreadHeld() {
    if (!armed_) return;
    held_here = false;
    state_.store(kReleased);
    futex_wake_all(state_);
    // Removes the callback had it not run; else waits until it returned.
    rte_eal_alarm_cancel(&park, this);
  }
  InterruptThreadHeld(const InterruptThreadHeld&) = delete;
  InterruptThreadHeld& operator=(const InterruptThreadHeld&) = delete;

 private:
  static void park(void* arg) {
    auto* self = static_cast<InterruptThreadHeld*>(arg);
    uint32_t waiting = kWaiting;
    if (!self->state_.compare_exchange_strong(waiting, kParked)) return;  // given up on already
    futex_wake_all(self->state_);
    while (self->state_.load() == kParked) futex_wait(self->state_, kParked, 100'000'000);
  }
  enum : uint32_t { kWaiting, kParked, kReleased };
  std::atomic<uint32_t> state_{kWaiting};
  bool armed_ = false;
  static thread_local bool held_here;  ///< this thread holds it (an armed one is in scope)
};
thread_local bool InterruptThreadHeld::held_here = false;

/// A started port: shared by the links of its queue pairs (one per shard);
/// stopped and closed with the last of them. Its start flag, restart and
/// reconnect count are the port's, whichever queue's link notices it down.
struct Port {
  Port(uint16_t id, bool memif, bool memif_client, bool started)
      : id(id), memif(memif), memif_client(memif_client), started(started) {}
  ~Port() {
    // Cancel waits for a running callback, so none can touch a closed port.
    rte_eal_alarm_cancel(&Port::restart_on_interrupt_thread, this);
    if (memif) {
      close_on_interrupt_thread();
    } else {
      // Closing frees DPDK memory, which can shrink the heap: the lock
      // order of a growing one (InterruptThreadHeld).
      InterruptThreadHeld held;
      close_here(this);
    }
  }
  static void close_here(void* arg) {
    auto* self = static_cast<Port*>(arg);
    MemifGuard::PortControl control;  // a memif stop unmaps: on the interrupt thread, or its fallback here
    rte_eth_dev_stop(self->id);
    rte_eth_dev_close(self->id);
    self->closed.store(1);
    futex_wake_all(self->closed);
  }
  /// A memif port is stopped and closed where its control channel runs:
  /// closed from another thread while the interrupt thread handled one of
  /// its messages (a handshake in flight), the PMD freed what that handler
  /// used, and batond died of SIGSEGV (seen on a start that failed on a
  /// later link, 7 times in 40, and at exit). As an alarm it runs between
  /// two of memif's handlers. Waits for it, 5 s at most; then the cancel
  /// either waits for the callback to return (it wakes `closed` after
  /// setting it, so the port must outlive that) or removes it, had the
  /// interrupt thread not run it (stuck, or gone), and the port closes here.
  void close_on_interrupt_thread() {
    if (rte_eal_alarm_set(1, &Port::close_here, this) != 0) return close_here(this);
    const uint64_t until = now_ns() + 5'000'000'000ull;
    while (closed.load() == 0 && now_ns() < until) futex_wait(closed, 0, 10'000'000);
    if (rte_eal_alarm_cancel(&Port::close_here, this) > 0) close_here(this);
  }
  /// A memif client's burst (a transmit, or `n` received frames until they
  /// are released) holds the port: its restart waits until none does, and
  /// no burst starts meanwhile (false: the burst does nothing). So no burst
  /// runs on a stopped port (DPDK's stand-in burst of a stopped port logs a
  /// stack trace), and none holds an mbuf of a zero-copy client's pool when
  /// it is reset. Dekker-style on two seq_cst atomics, as MemifGuard.
  /// Thread: worker.
  bool hold(int n) noexcept {
    if (!memif_client) return true;
    holding.fetch_add(n);
    if (!restarting.load()) return true;
    holding.fetch_sub(n);
    return false;
  }
  void let_go(int n) noexcept {
    if (memif_client) holding.fetch_sub(n);
  }
  /// Thread: EAL interrupt thread (alarm callback).
  static void restart_on_interrupt_thread(void* arg) {
    auto* self = static_cast<Port*>(arg);
    self->started = false;
    self->restarting.store(true);
    // A burst holds it for microseconds, unless its thread lost the CPU:
    // then give that thread the CPU rather than spin against it.
    for (int spins = 0; self->holding.load() > 0; ++spins) spins < 1000 ? _mm_pause() : (void)sched_yield();
    rte_eth_dev_stop(self->id);
    if (self->zero_copy_pool != nullptr) {
      reset_pool(self->zero_copy_pool);
      keep_memory_files_open();  // a memory list made since has a file of its own
      if (!first_memory_list_whole()) {
        // Connecting would kill the server: the link stays down, and says why.
        BT_ERROR("memif port %u: a hole in DPDK's first memory list; a zero-copy client cannot share it (the "
                 "link stays down: restart this batond, or run the link with zero-copy=no)",
                 self->id);
        self->restarting.store(false);
        self->retry_ns = kMaxHandshakeNs;
        self->restart_pending = false;
        return;
      }
    }
    struct Resume {
      Port* p;
      ~Resume() { p->restarting.store(false); }
    } resume{self};
    if (start_memif_client(self->id) == 0) {
      // Connected: a handshake is under way. Should the link still be down
      // at the next look, the next one gets twice as long.
      rte_eth_promiscuous_enable(self->id);
      self->reconnects.fetch_add(1);
      self->started = true;
      self->retry_ns = std::min(self->retry_ns.load() * 2, kMaxHandshakeNs);
    } else {
      self->retry_ns = kReconnectNs;  // nobody listens yet
    }
    self->restart_pending = false;
  }
  /// A memif zero-copy client's own pool (else null), set before any link
  /// exists; reset at each restart.
  rte_mempool* zero_copy_pool = nullptr;
  std::atomic<int> holding{0};        ///< bursts (and received frames) in flight: hold()
  std::atomic<bool> restarting{false};
  const uint16_t id;
  const bool memif, memif_client;
  std::atomic<bool> started;  // bursts on a stopped port only log noise
  std::atomic<bool> restart_pending{false};
  std::atomic<uint64_t> reconnects{0};
  /// How long a memif client's link may stay down before the port restarts.
  std::atomic<uint64_t> retry_ns{kReconnectNs};
  std::atomic<uint32_t> closed{0};  ///< set once stopped and closed (a futex word)
  /// memif on a file socket: this end's robust lock beside the socket
  /// (`<socket>.alive`; server side 0, client side 1), whose other side
  /// says the peer died before its memory is torn down and its control
  /// socket closes (runtime/peer_lock.h). Null elsewhere, or if it could
  /// not be had.
  std::unique_ptr<PeerLockFile> peer_lock;
};

/// One queue pair of a port. Thread: its shard's poll-token holder (the
/// port's other queues belong to other shards).
class EthdevLink final : public Link {
 public:
  EthdevLink(std::shared_ptr<Port> port, uint16_t queue, uint16_t peer, uint32_t max_frame, rte_mempool* pool,
             std::string name, bool zero_copy)
      : port_(std::move(port)), id_(port_->id), queue_(queue), zero_copy_(zero_copy), peer_(peer),
        max_frame_(max_frame), pool_(pool), name_(std::move(name)) {
    rte_eth_macaddr_get(id_, &mac_);
    down_since_ns_ = now_ns();
    // Payloads attached as external buffers belong to the engine: DPDK must
    // never free them. The base reference keeps the count above zero.
    shinfo_.free_cb = [](void*, void*) {};
    shinfo_.fcb_opaque = nullptr;
    rte_mbuf_ext_refcnt_set(&shinfo_, 1);
  }

  const std::string& name() const noexcept override { return name_; }
  uint16_t peer() const noexcept override { return peer_; }
  LinkCaps caps() const noexcept override {
    // A vdev (memif, af_packet, net_ring) sits on no socket in particular: -1.
    return {max_frame_, zero_copy_, rte_eth_dev_socket_id(id_)};
  }
  bool up() noexcept override { return up_ && (port_->peer_lock == nullptr || !port_->peer_lock->peer_gone()); }

  uint16_t rx_burst(RxFrame* out, uint16_t n) noexcept override {
    rte_mbuf* ms[kBurst];
    n = std::min<uint16_t>(n, kBurst);
    if (!port_->started.load(std::memory_order_relaxed)) return 0;
    if (!port_->hold(n)) return 0;
    uint16_t got;
    if (port_->memif) {
      if (!MemifGuard::enter()) {
        port_->let_go(n);
        return 0;
      }
      got = rte_eth_rx_burst(id_, queue_, ms, n);
      MemifGuard::exit();
    } else {
      got = rte_eth_rx_burst(id_, queue_, ms, n);
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
    port_->let_go(n - k);  // the frames handed out are let go as they are released
    return k;
  }

  void release_rx(RxFrame* frames, uint16_t n) noexcept override {
    rte_mbuf* ms[kBurst];
    for (uint16_t i = 0; i < n; ++i) ms[i] = static_cast<rte_mbuf*>(frames[i].token);
    rte_pktmbuf_free_bulk(ms, n);
    port_->let_go(n);
  }

  uint16_t tx_burst(const TxFrame* frames, uint16_t n) noexcept override {
    rte_mbuf* ms[kBurst];
    rte_mbuf* attached[kBurst];
    n = std::min<uint16_t>(n, kBurst);
    if (!port_->started.load(std::memory_order_relaxed)) return 0;
    // Second mbufs only for a burst that attaches a payload (a small
    // frame, an ack or a 4 KiB chunk, is copied: allocating and freeing
    // them unused cost every such burst ~100 ns).
    bool attaching = false;
    for (uint16_t i = 0; zero_copy_ && i < n && !attaching; ++i) attaching = frames[i].payload.size() >= kAttachMinBytes;
    if (n == 0 || !port_->hold(1)) return 0;
    struct LetGo {
      Port& p;
      ~LetGo() { p.let_go(1); }
    } let_go{*port_};
    if (rte_pktmbuf_alloc_bulk(pool_, ms, n) != 0) return 0;
    if (attaching && rte_pktmbuf_alloc_bulk(pool_, attached, n) != 0) {
      rte_pktmbuf_free_bulk(ms, n);
      return 0;
    }
    uint16_t built = 0;
    for (; built < n; ++built) {
      const TxFrame& f = frames[built];
      const size_t len = f.head.size() + f.payload.size();
      if (len > max_frame_) break;  // the engine sizes chunks to caps(); a bigger frame is refused
      // Attaching costs a second mbuf and a refcount; below a few KiB a copy is cheaper.
      const bool attach = attaching && f.payload.size() >= kAttachMinBytes;
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
    if (attaching)
      for (uint16_t i = 0; i < n; ++i)
        if (attached[i] != nullptr) rte_pktmbuf_free(attached[i]);
    uint16_t sent = 0;
    if (built > 0) {
      if (port_->memif) {
        if (MemifGuard::enter()) {
          sent = rte_eth_tx_burst(id_, queue_, ms, built);
          MemifGuard::exit();
        }
      } else {
        sent = rte_eth_tx_burst(id_, queue_, ms, built);
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
    if (rte_eth_link_get_nowait(id_, &link) != 0) return false;
    const bool up = link.link_status == RTE_ETH_LINK_UP;
    if (up != up_) {
      BT_INFO("%s: link %s", name_.c_str(), up ? "up" : "down");
      up_ = up;
      down_since_ns_ = now;
      if (up) port_->retry_ns = kReconnectNs;
    }
    // A memif client whose server went away never reconnects by itself: it
    // needs stop/start. That must not run here: memif's control channel is
    // driven by the EAL interrupt thread, and a stop from this thread while
    // that thread handles a message crashes the PMD. An alarm callback runs
    // on the interrupt thread, serialised with memif's own handlers.
    // The link of queue 0 alone restarts the port: each queue's link keeps
    // its own clock, and a second restart a millisecond after the first
    // cuts the handshake it started (the server's PMD then sees a broken
    // pipe, and its interrupt thread may panic on the fd it closed).
    if (!up_ && queue_ == 0 && port_->memif_client && now - down_since_ns_ >= port_->retry_ns.load() &&
        !port_->restart_pending.exchange(true)) {
      down_since_ns_ = now;
      if (rte_eal_alarm_set(1, &Port::restart_on_interrupt_thread, port_.get()) != 0) port_->restart_pending = false;
      return true;
    }
    return false;
  }

  LinkCounters counters() const noexcept override {
    LinkCounters c = counters_;
    c.reconnects = port_->reconnects.load();
    return c;
  }

 private:
  std::shared_ptr<Port> port_;
  uint16_t id_;     ///< port_->id
  uint16_t queue_;  ///< this link's rx/tx queue pair
  bool zero_copy_;
  rte_mbuf_ext_shared_info shinfo_{};
  uint16_t peer_;
  uint32_t max_frame_;
  rte_mempool* pool_;
  rte_ether_addr mac_{};
  std::string name_;
  bool up_ = false;
  uint64_t last_poll_ns_ = 0;
  uint64_t down_since_ns_ = 0;
  LinkCounters counters_;
};

/// Whether `device` is a virtual device (devargs, or a net_* name) that
/// is probed, not found.
bool is_vdev(const std::string& device) {
  return device.find(',') != std::string::npos || port_name(device).rfind("net_", 0) == 0;
}

/// devargs without any `key=` of it.
std::string without_devarg(const std::string& devargs, const std::string& key) {
  std::string out = devargs.substr(0, devargs.find(','));
  for (size_t at = devargs.find(','); at != std::string::npos;) {
    const size_t end = devargs.find(',', at + 1);
    const std::string part = devargs.substr(at, end - at);
    if (part.compare(1, key.size() + 1, key + "=") != 0) out += part;
    at = end;
  }
  return out;
}

/// Whether this DPDK's memif zero-copy receive is sound. Before 22.11.7
/// (24.07 on the main line) its refill wrote past the end of its array of
/// mbufs whenever it wrapped around the ring, handing out one mbuf twice
/// (DPDK b92b18b7, "net/memif: fix buffer overflow in zero copy Rx").
bool memif_zero_copy_sound() {
  int year = 0, month = 0, release = 0;
  if (std::sscanf(rte_version(), "DPDK %d.%d.%d", &year, &month, &release) < 2) return false;
  if (year == 22 && month == 11) return release >= 7;
  return year > 24 || (year == 24 && month >= 7);
}

/// A memif server on a file socket (`socket-abstract=no`) binds its path;
/// one left behind by a server that was killed makes the bind fail. Removes
/// it when nothing listens there; refuses when something does. (Abstract
/// sockets, DPDK's default, have no file, and no permissions either: any
/// local process can connect to them.)
Result<void> clear_stale_memif_socket(const std::string& devargs) {
  if (devarg(devargs, "role").value_or("server") != "server" || devarg(devargs, "socket-abstract") != "no")
    return {};
  const auto path = devarg(devargs, "socket");
  if (!path) return {};
  struct stat st{};
  if (lstat(path->c_str(), &st) != 0) return {};
  if (!S_ISSOCK(st.st_mode)) return fail(Errc::kInvalidArgument, "memif socket ", *path, " exists and is no socket");
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path->size() >= sizeof sun.sun_path) return fail(Errc::kInvalidArgument, "memif socket path too long: ", *path);
  std::memcpy(sun.sun_path, path->c_str(), path->size());
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kIo, "socket: ", std::strerror(errno));
  const bool listening = connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0;
  const int err = errno;
  close(fd);
  if (listening) return fail(Errc::kInvalidArgument, "a memif server already listens on ", *path);
  if (err != ECONNREFUSED) return {};  // let the bind report it
  if (unlink(path->c_str()) != 0 && errno != ENOENT)
    return fail(Errc::kIo, "remove stale memif socket ", *path, ": ", std::strerror(errno));
  BT_INFO("removed the stale memif socket %s (nothing listened on it)", path->c_str());
  return {};
}

Result<uint16_t> find_port(const std::string& name) {
  uint16_t port;
  if (rte_eth_dev_get_port_by_name(name.c_str(), &port) == 0) return port;
  return fail(Errc::kInvalidArgument, "no DPDK port named ", name);
}

Result<std::vector<std::unique_ptr<Link>>> start_port(uint16_t port, const PortConfig& c, const std::string& name) {
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(port, &info); rc != 0)
    return fail(Errc::kIo, name, ": dev_info: ", rte_strerror(-rc));
  const uint16_t queues = c.queues;
  if (queues > info.max_rx_queues || queues > info.max_tx_queues)
    return fail(Errc::kInvalidArgument, name, ": ", std::to_string(queues), " queue pairs asked, the device has ",
                std::to_string(std::min(info.max_rx_queues, info.max_tx_queues)));
  const bool af_packet = std::strcmp(info.driver_name, "net_af_packet") == 0;
  if (queues > 1 && af_packet)
    return fail(Errc::kInvalidArgument, name,
                ": af_packet spreads frames over its queues by flow hash, not by shard: give each shard a device "
                "of its own");
  const int socket = rte_eth_dev_socket_id(port);
  // Slack beyond the frame: af_packet wants each of its ring frames (the
  // frame plus its own header) to fit one mbuf.
  constexpr uint32_t kSlack = 256;
  const uint32_t room = c.max_frame + sizeof(rte_ether_hdr) + RTE_PKTMBUF_HEADROOM + kSlack;
  if (room > UINT16_MAX) return fail(Errc::kInvalidArgument, "max_frame too large for an mbuf");
  const bool memif = std::strcmp(info.driver_name, "net_memif") == 0;
  const bool client = memif && devarg(c.device, "role") == "client";
  // A memif client in zero-copy mode: its server copies frames straight
  // into this process's mbufs and reads the ones it sends, so a received
  // frame is not copied out of memif's ring (operations, "memif
  // zero-copy").
  const bool memif_zero_copy = client && devarg(c.device, "zero-copy") == "yes";
  const PoolKind kind = memif_zero_copy                    ? PoolKind::kZeroCopy
                        : copies_frames(info.driver_name) ? PoolKind::kCopying
                                                          : PoolKind::kHolding;
  rte_mempool* pool = pool_for(socket, room, kind, pool_mbufs(c, kind), name);
  if (pool == nullptr) return fail(Errc::kNoMemory, name, ": mbuf pool: ", rte_strerror(rte_errno));
  if (memif_zero_copy && !pool_in_first_memory_list(pool))
    return fail(Errc::kInvalidArgument, name,
                ": memif zero-copy needs its mbuf pool in DPDK's first memory list, and it is not there "
                "(drop zero-copy=yes)");
  if (memif_zero_copy && !first_memory_list_whole())
    return fail(Errc::kInvalidArgument, name,
                ": memif zero-copy cannot share DPDK's first memory list, which has a hole (drop zero-copy=yes)");
  if (memif_zero_copy) {
    keep_memory_files_open();
    reset_pool(pool);  // reopened: the port's last connection left its rings' mbufs out
  }
  rte_eth_conf conf{};
  if (int rc = rte_eth_dev_configure(port, queues, queues, &conf); rc != 0)
    return fail(Errc::kIo, name, ": configure: ", rte_strerror(-rc));
  uint16_t rxd = c.descriptors, txd = c.descriptors;
  rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
  for (uint16_t q = 0; q < queues; ++q) {
    if (int rc = rte_eth_rx_queue_setup(port, q, rxd, socket, nullptr, pool); rc != 0)
      return fail(Errc::kIo, name, ": rx queue ", std::to_string(q), ": ", rte_strerror(-rc));
    if (int rc = rte_eth_tx_queue_setup(port, q, txd, socket, nullptr); rc != 0)
      return fail(Errc::kIo, name, ": tx queue ", std::to_string(q), ": ", rte_strerror(-rc));
  }
  // Taken before the port connects: a successor's peer sees it hold the
  // lock by the time the link is up again.
  std::unique_ptr<PeerLockFile> peer_lock;
  if (const auto socket = devarg(c.device, "socket"); memif && socket && devarg(c.device, "socket-abstract") != "yes") {
    auto l = PeerLockFile::open(*socket + ".alive", client ? 1 : 0);
    if (l) peer_lock = std::move(*l);
    else BT_WARN("%s: %s; the peer sees this end die when its socket closes", name.c_str(), l.error().to_string().c_str());
  }
  // A memif client cannot start before its server's socket exists; the link
  // keeps trying from service() (as it does after the server dies).
  const int rc = client ? start_memif_client(port) : rte_eth_dev_start(port);
  if (rc != 0) {
    if (!client) return fail(Errc::kIo, name, ": start: ", rte_strerror(-rc));
    BT_INFO("%s: no memif server yet (%s); will retry", name.c_str(), rte_strerror(-rc));
  } else {
    rte_eth_promiscuous_enable(port);
    BT_INFO("%s: started%s", name.c_str(), memif_zero_copy ? " (memif zero-copy client)" : "");
  }
  // Zero-copy transmit only where the PMD copies the frame into its own ring
  // within tx_burst (memif in copy mode, af_packet): the payload must not be
  // referenced after the call. A NIC would DMA later and needs IOVAs; a
  // memif zero-copy client hands its server the mbuf itself, which must
  // lie in the memory it shares (so the frame is copied into it).
  const bool zero_copy = (memif && !memif_zero_copy) || af_packet;
  auto shared = std::make_shared<Port>(port, memif, client, rc == 0);
  if (memif_zero_copy) shared->zero_copy_pool = pool;
  shared->peer_lock = std::move(peer_lock);
  std::vector<std::unique_ptr<Link>> links;
  for (uint16_t q = 0; q < queues; ++q) {
    std::string link_name = name + (queues > 1 ? " q" + std::to_string(q) : "") + " -> node " + std::to_string(c.peer);
    links.push_back(
        std::make_unique<EthdevLink>(shared, q, c.peer, c.max_frame, pool, std::move(link_name), zero_copy));
  }
  return links;
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

namespace {

/// The EAL's arguments: Baton's own, then `extra` (the config's
/// `[eal] args`). `huge`: on huge pages (--in-memory), else plain memory.
std::vector<std::string> eal_arguments(const std::vector<std::string>& extra, const std::string& telemetry_prefix,
                                       bool huge) {
  std::vector<std::string> args = {"baton", "--no-pci", "--log-level=5", "--lcores=0@(" + allowed_cpus() + ")"};
  if (telemetry_prefix.empty()) {
    args.push_back("--no-telemetry");
    args.push_back("--file-prefix=baton" + std::to_string(getpid()));
  } else {
    args.push_back("--file-prefix=" + telemetry_prefix);
  }
  // No files of huge pages or shared config either way: --in-memory with
  // huge pages; --no-huge is already anonymous memory, and DPDK refuses it
  // beside --in-memory (it implies --legacy-mem), so with too few huge
  // pages free no daemon with a DPDK link could start.
  // One file per memory list: memif's zero-copy client shares its memory
  // with its server by that file (operations, "memif zero-copy").
  args.push_back("--single-file-segments");
  if (huge) {
    args.push_back("--in-memory");
  } else {
    args.push_back("--no-huge");
    args.push_back("-m");
    args.push_back("512");
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

/// Huge pages when the kernel has some free, else plain memory.
/// BATON_NO_HUGE_PAGES=1 asks for plain memory whatever is free.
bool eal_wants_huge_pages() {
  const char* no_huge = std::getenv("BATON_NO_HUGE_PAGES");
  return (no_huge == nullptr || std::string_view(no_huge) != "1") && free_huge_pages() >= 64;
}

int eal_init(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return rte_eal_init(static_cast<int>(args.size()), argv.data());
}

}  // namespace

Result<void> init_eal(const std::vector<std::string>& extra, const std::string& telemetry_prefix) {
  std::lock_guard lock(eal_mu);
  if (eal_started) return {};
  if (eal_error) return tl::unexpected(*eal_error);
  sweep_runtime_dirs();
  eal_huge = eal_wants_huge_pages();
  auto args = eal_arguments(extra, telemetry_prefix, eal_huge);
  if (eal_init(args) < 0) {
    eal_error = Error{Errc::kIo, std::string("rte_eal_init: ") + rte_strerror(rte_errno)};
    return tl::unexpected(*eal_error);
  }
  eal_started = true;
  BT_INFO("EAL started (%s)", eal_huge ? "huge pages" : "no huge pages");
  return {};
}

Result<void> check_eal_args(const std::vector<std::string>& extra) {
  // The EAL starts once per process and cannot be stopped and started
  // again: a child process starts it with the arguments a start would use
  // (plain memory, which may not hide a huge-page option's conflict), and
  // what it prints is the reason.
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return fail(Errc::kIo, "pipe: ", std::strerror(errno));
  auto args = eal_arguments(extra, {}, false);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    return fail(Errc::kIo, "fork: ", std::strerror(errno));
  }
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    const bool ok = eal_init(args) >= 0;
    if (ok) rte_eal_cleanup();
    std::error_code ec;  // its runtime directory, if it got as far as making one
    if (const std::string dir = rte_eal_get_runtime_dir(); !dir.empty()) std::filesystem::remove_all(dir, ec);
    _exit(ok ? 0 : 1);
  }
  ::close(out[1]);
  std::string printed;
  char buf[4096];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    if (printed.size() < 65536) printed.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  // The first line that says what is wrong (the EAL's usage text follows).
  std::string why;
  for (size_t at = 0; at < printed.size() && why.empty();) {
    const size_t end = std::min(printed.find('\n', at), printed.size());
    std::string line = printed.substr(at, end - at);
    at = end + 1;
    if (line.find("nrecognized") != std::string::npos || line.find("nvalid") != std::string::npos ||
        line.find("rror") != std::string::npos || line.find("ption") != std::string::npos)
      why = line;
  }
  if (why.empty()) why = WIFEXITED(status) ? "it refused them" : "it crashed on them";
  return fail(Errc::kInvalidArgument, "DPDK's EAL does not start with them: ", why);
}

bool eal_uses_huge_pages() noexcept { return eal_huge; }

Result<std::unique_ptr<Link>> open_port(const PortConfig& c) {
  if (c.queues != 1) return fail(Errc::kInvalidArgument, "open_port opens one queue pair: open_port_queues");
  auto links = open_port_queues(c);
  if (!links) return tl::unexpected(links.error());
  return std::move(links->front());
}

Result<int> device_numa_node(const std::string& device) {
  if (device.empty()) return fail(Errc::kInvalidArgument, "empty device");
  if (is_vdev(device)) return -1;
  if (auto ok = init_eal(); !ok) return tl::unexpected(ok.error());
  auto port = find_port(port_name(device));
  if (!port) return tl::unexpected(port.error());
  const int socket = rte_eth_dev_socket_id(*port);
  return socket < 0 ? -1 : socket;
}

Result<std::vector<std::unique_ptr<Link>>> open_port_queues(const PortConfig& c) {
  if (c.device.empty()) return fail(Errc::kInvalidArgument, "empty device");
  if (c.queues == 0 || c.queues > kMaxQueues)
    return fail(Errc::kInvalidArgument, "queues must be 1..", std::to_string(kMaxQueues));
  if (c.peer == 0 || c.peer == 0xFFFF) return fail(Errc::kInvalidArgument, "peer must be 1..65534");
  if (c.max_frame < 1024) return fail(Errc::kInvalidArgument, "max_frame below 1024");
  if (auto ok = init_eal(); !ok) return tl::unexpected(ok.error());
  InterruptThreadHeld held;  // until the port is open: it allocates
  const std::string name = port_name(c.device);
  std::string devargs = c.device;
  if (is_vdev(c.device)) {
    // memif's default 2 KiB buffers silently cut bigger frames: size them.
    if (name.rfind("net_memif", 0) == 0 && !devarg(devargs, "bsize"))
      devargs += ",bsize=" + std::to_string(c.max_frame + sizeof(rte_ether_hdr));
    // memif's default socket is abstract: no file, no permissions, any
    // local process may connect and pose as the peer. A file unless asked.
    if (name.rfind("net_memif", 0) == 0 && !devarg(devargs, "socket-abstract"))
      devargs += ",socket-abstract=no";
    // A zero-copy client's rings hold mbufs of its own pool, which is sized
    // to fill them twice: 256 slots a ring unless asked (4 MiB of frames in
    // flight) keeps it at 11 MiB a queue pair; memif's default of 1024
    // would take 37.
    if (name.rfind("net_memif", 0) == 0 && devarg(devargs, "zero-copy") == "yes") {
      if (!memif_zero_copy_sound()) {
        BT_WARN("%s: memif zero-copy asked, but %s's zero-copy receive can hand out one buffer twice (fixed in "
                "22.11.7 and 24.07): copy mode",
                name.c_str(), rte_version());
        devargs = without_devarg(devargs, "zero-copy");
      } else if (!devarg(devargs, "rsize")) {
        devargs += ",rsize=8";
      }
    }
    uint16_t existing;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &existing) != 0) {
      if (name.rfind("net_memif", 0) == 0) {
        if (auto ok = clear_stale_memif_socket(devargs); !ok) return tl::unexpected(ok.error());
      }
      if (int rc = rte_dev_probe(devargs.c_str()); rc != 0)
        return fail(Errc::kIo, "probe ", devargs, ": ", rte_strerror(-rc));
    }
  }
  auto port = find_port(name);
  if (!port) return tl::unexpected(port.error());
  PortConfig probed = c;
  probed.device = devargs;
  return start_port(*port, probed, name);
}

Result<std::pair<std::unique_ptr<Link>, std::unique_ptr<Link>>> ring_pair(uint16_t node_a, uint16_t node_b,
                                                                          uint32_t max_frame) {
  auto queues = ring_pair_queues(node_a, node_b, 1, max_frame);
  if (!queues) return tl::unexpected(queues.error());
  return std::pair{std::move(queues->first.front()), std::move(queues->second.front())};
}

Result<std::pair<std::vector<std::unique_ptr<Link>>, std::vector<std::unique_ptr<Link>>>> ring_pair_queues(
    uint16_t node_a, uint16_t node_b, uint16_t queues, uint32_t max_frame) {
  if (queues == 0 || queues > kMaxQueues)
    return fail(Errc::kInvalidArgument, "queues must be 1..", std::to_string(kMaxQueues));
  if (auto ok = init_eal(); !ok) return tl::unexpected(ok.error());
  InterruptThreadHeld held;  // as open_port_queues
  static std::atomic<int> seq{0};
  const int id = seq.fetch_add(1);
  // Queue q of a carries what queue q of b receives, and back.
  std::vector<rte_ring*> ab(queues), ba(queues);
  for (uint16_t q = 0; q < queues; ++q) {
    const std::string tag = "bt_r" + std::to_string(id) + "q" + std::to_string(q);
    ab[q] = rte_ring_create((tag + "ab").c_str(), 4096, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
    ba[q] = rte_ring_create((tag + "ba").c_str(), 4096, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
    if (ab[q] == nullptr || ba[q] == nullptr)
      return fail(Errc::kNoMemory, "ring_pair rings: ", rte_strerror(rte_errno));
  }
  const std::string na = "net_ring_bt" + std::to_string(id) + "a", nb = "net_ring_bt" + std::to_string(id) + "b";
  const int pa = rte_eth_from_rings(na.c_str(), ba.data(), queues, ab.data(), queues, SOCKET_ID_ANY);
  const int pb = rte_eth_from_rings(nb.c_str(), ab.data(), queues, ba.data(), queues, SOCKET_ID_ANY);
  if (pa < 0 || pb < 0) return fail(Errc::kIo, "rte_eth_from_rings: ", rte_strerror(rte_errno));
  PortConfig ca{na, node_b, max_frame};
  PortConfig cb{nb, node_a, max_frame};
  ca.queues = cb.queues = queues;
  auto la = start_port(static_cast<uint16_t>(pa), ca, na);
  if (!la) return tl::unexpected(la.error());
  auto lb = start_port(static_cast<uint16_t>(pb), cb, nb);
  if (!lb) return tl::unexpected(lb.error());
  return std::pair{std::move(*la), std::move(*lb)};
}

}  // namespace baton::ethdev
