// baton-lean-memif: the leanest memif program this machine can run, as the
// baseline Baton's own figures are measured against (issue #10). Two DPDK
// processes (this one, a memif server, and a copy of itself as the client),
// no Baton code at all: the application calls rte_eth_tx_burst and
// rte_eth_rx_burst itself.
//
//   latency     a 4 KiB frame out, a 64 B ack back (one mbuf each way)
//   throughput  N MiB of distinct memory in 8 KiB frames (memif's ring is the
//               credit window: tx_burst takes what fits), copied out by the
//               receiver into its own buffer (a replica must keep the bytes
//               somewhere), one ack at the end
//
// Usage: baton-lean-memif [--rounds N] [--iters N] [--mib N] [--zero-copy]
//   --zero-copy: the receiving end (the client) in memif's zero-copy mode:
//                its server copies into its mbufs, its receive copies nothing
// Prints JSON lines (medians over rounds; latency percentiles over all samples).

#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

constexpr uint16_t kPort = 0;
constexpr uint32_t kPing = 4096;
constexpr uint32_t kAck = 64;
constexpr uint32_t kChunk = 8192;
constexpr uint16_t kBurst = 32;

rte_mempool* pool = nullptr;
bool zero_copy = false;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "baton-lean-memif: %s: %s\n", what, rte_strerror(rte_errno));
  std::exit(1);
}

uint64_t free_huge_pages() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("HugePages_Free:", 0) == 0) return std::strtoull(line.c_str() + 15, nullptr, 10);
  return 0;
}

std::string allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  std::string out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out += (out.empty() ? "" : ",") + std::to_string(c);
  return out;
}

void start(const std::string& role, const std::string& sock) {
  std::vector<std::string> args = {"lean", "--no-pci", "--in-memory", "--no-telemetry", "--log-level=3",
                                   "--file-prefix=baton-lean" + std::to_string(getpid()),
                                   "--lcores=0@(" + allowed_cpus() + ")",
                                   "--vdev=net_memif0,role=" + role + ",socket=" + sock + ",bsize=9216" +
                                       (zero_copy && role == "client" ? ",zero-copy=yes" : "")};
  if (zero_copy) args.push_back("--single-file-segments");
  if (free_huge_pages() < 64) args.insert(args.end(), {"--no-huge", "-m", "512"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (rte_eal_init(static_cast<int>(args.size()), argv.data()) < 0) die("rte_eal_init");
  pool = rte_pktmbuf_pool_create("lean", 4095, 256, 0, 9216 + RTE_PKTMBUF_HEADROOM, rte_socket_id());
  if (pool == nullptr) die("mempool");
  rte_eth_conf conf{};
  if (rte_eth_dev_configure(kPort, 1, 1, &conf) != 0) die("configure");
  if (rte_eth_rx_queue_setup(kPort, 0, 1024, rte_socket_id(), nullptr, pool) != 0) die("rx queue");
  if (rte_eth_tx_queue_setup(kPort, 0, 1024, rte_socket_id(), nullptr) != 0) die("tx queue");
  if (rte_eth_dev_start(kPort) != 0) die("start");
}

void wait_link() {
  for (int i = 0; i < 10000; ++i) {
    rte_eth_link link{};
    rte_eth_link_get_nowait(kPort, &link);
    if (link.link_status == RTE_ETH_LINK_UP) return;
    usleep(1000);
  }
  std::fprintf(stderr, "baton-lean-memif: the memif link did not come up\n");
  std::exit(1);
}

void send(const void* data, uint32_t len) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool);
  while (m == nullptr) m = rte_pktmbuf_alloc(pool);
  std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(len)), data, len);
  while (rte_eth_tx_burst(kPort, 0, &m, 1) != 1) continue;
}

// One frame (the first that arrives), copied into `out`; returns its length.
uint32_t receive(void* out, uint32_t cap) {
  rte_mbuf* m = nullptr;
  while (rte_eth_rx_burst(kPort, 0, &m, 1) != 1) continue;
  const uint32_t len = std::min<uint32_t>(rte_pktmbuf_data_len(m), cap);
  std::memcpy(out, rte_pktmbuf_mtod(m, const void*), len);
  rte_pktmbuf_free(m);
  return len;
}

// The client: acks pings, keeps bulk frames, acks the end of a transfer
// with the byte count.
int run_peer(const std::string& sock, uint64_t bytes) {
  start("client", sock);
  wait_link();
  std::vector<std::byte> dst(bytes + kChunk);
  std::byte ack[kAck] = {};
  uint64_t got = 0;
  rte_mbuf* rx[kBurst];
  for (;;) {
    const uint16_t n = rte_eth_rx_burst(kPort, 0, rx, kBurst);
    for (uint16_t i = 0; i < n; ++i) {
      const uint32_t len = rte_pktmbuf_data_len(rx[i]);
      const auto* p = rte_pktmbuf_mtod(rx[i], const std::byte*);
      if (len == kChunk) {
        if (got + len <= dst.size()) std::memcpy(dst.data() + got, p, len);
        got += len;
      } else if (len == kPing) {
        send(ack, kAck);
      } else if (len == kAck && p[0] == std::byte{'F'}) {
        std::memcpy(ack, &got, sizeof got);
        send(ack, kAck);
        got = 0;
      } else if (len == kAck && p[0] == std::byte{'Q'}) {
        rte_pktmbuf_free_bulk(rx + i, n - i);
        return 0;
      }
      rte_pktmbuf_free(rx[i]);
    }
  }
}

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, iters = 2000;
  uint64_t mib = 64;
  std::string peer_sock;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string("0"); };
    if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--iters") iters = std::stoi(next());
    else if (a == "--mib") mib = std::stoull(next());
    else if (a == "--peer") peer_sock = next();
    else if (a == "--zero-copy") zero_copy = true;
    else {
      std::fprintf(stderr, "usage: baton-lean-memif [--rounds N] [--iters N] [--mib N] [--zero-copy]\n");
      return 64;
    }
  }
  if (rounds < 1 || iters < 1 || mib < 1 || mib > 1024) {
    std::fprintf(stderr, "baton-lean-memif: rounds, iters >= 1; mib in 1..1024\n");
    return 64;
  }
  const uint64_t bytes = mib << 20;
  if (!peer_sock.empty()) return run_peer(peer_sock, bytes);

  const std::string sock = "/tmp/baton-lean-" + std::to_string(getpid()) + ".sock";
  unlink(sock.c_str());
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = 0;
  const std::string mib_arg = std::to_string(mib);
  std::vector<std::string> args = {self, "--peer", sock, "--mib", mib_arg};
  if (zero_copy) args.push_back("--zero-copy");
  std::vector<char*> pargv;
  for (auto& a : args) pargv.push_back(a.data());
  pargv.push_back(nullptr);
  start("server", sock);
  pid_t peer = -1;
  if (posix_spawn(&peer, self, nullptr, nullptr, pargv.data(), environ) != 0) {
    std::fprintf(stderr, "baton-lean-memif: cannot start the peer\n");
    return 1;
  }
  wait_link();
  std::vector<std::byte> ping(kPing, std::byte{'L'}), src(bytes, std::byte{'T'}), ack(kAck);
  for (uint64_t i = 0; i < bytes; i += 4096) src[i] = static_cast<std::byte>(i >> 12);  // distinct pages
  // Frames sent before the client's queue runs are lost: ping until answered.
  for (bool up = false; !up;) {
    send(ping.data(), kPing);
    for (int spin = 0; spin < 1'000'000 && !up; ++spin) {
      rte_mbuf* m = nullptr;
      if (rte_eth_rx_burst(kPort, 0, &m, 1) == 1) {
        rte_pktmbuf_free(m);
        up = true;
      }
    }
  }

  using clk = std::chrono::steady_clock;
  auto us = [](clk::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  // Half a second of ping-pong first: two spinning processes started on two
  // vCPUs take a while to be spread over both (until then a round trip is
  // a scheduler time slice, ~20 us here, not a memif one).
  for (const auto until = clk::now() + std::chrono::milliseconds(500); clk::now() < until;) {
    send(ping.data(), kPing);
    receive(ack.data(), kAck);
  }
  std::vector<double> lat, tput;
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < iters; ++i) {
      const auto t0 = clk::now();
      send(ping.data(), kPing);
      receive(ack.data(), kAck);
      lat.push_back(us(clk::now() - t0));
    }
    const auto t0 = clk::now();
    rte_mbuf* tx[kBurst];
    for (uint64_t off = 0; off < bytes;) {
      const uint16_t k = static_cast<uint16_t>(std::min<uint64_t>(kBurst, (bytes - off) / kChunk));
      while (rte_pktmbuf_alloc_bulk(pool, tx, k) != 0) continue;
      for (uint16_t i = 0; i < k; ++i)
        std::memcpy(rte_pktmbuf_append(tx[i], kChunk), src.data() + off + uint64_t{i} * kChunk, kChunk);
      for (uint16_t sent = 0; sent < k;) sent += rte_eth_tx_burst(kPort, 0, tx + sent, k - sent);
      off += uint64_t{k} * kChunk;
    }
    std::byte fin[kAck] = {std::byte{'F'}};
    send(fin, kAck);
    receive(ack.data(), kAck);
    uint64_t counted = 0;
    std::memcpy(&counted, ack.data(), sizeof counted);
    const double secs = us(clk::now() - t0) / 1e6;
    if (counted != bytes) std::fprintf(stderr, "baton-lean-memif: %lu of %lu bytes arrived\n",
                                       static_cast<unsigned long>(counted), static_cast<unsigned long>(bytes));
    tput.push_back(static_cast<double>(bytes) / secs / 1e9);
  }
  std::byte quit[kAck] = {std::byte{'Q'}};
  send(quit, kAck);
  int status = 0;
  waitpid(peer, &status, 0);
  unlink(sock.c_str());
  const char* zc = zero_copy ? "_zero_copy" : "";
  std::printf("{\"metric\":\"latency_p50\",\"subject\":\"lean_memif%s_4k_ack\",\"value\":%.3f,\"unit\":\"us\"}\n", zc,
              pct(lat, 0.5));
  std::printf("{\"metric\":\"latency_p99\",\"subject\":\"lean_memif%s_4k_ack\",\"value\":%.3f,\"unit\":\"us\"}\n", zc,
              pct(lat, 0.99));
  std::printf("{\"metric\":\"latency_p999\",\"subject\":\"lean_memif%s_4k_ack\",\"value\":%.3f,\"unit\":\"us\"}\n", zc,
              pct(lat, 0.999));
  std::printf("{\"metric\":\"throughput\",\"subject\":\"lean_memif%s\",\"value\":%.3f,\"unit\":\"GB/s\"}\n", zc,
              pct(tput, 0.5));
  rte_eth_dev_stop(kPort);
  rte_eal_cleanup();
  return 0;
}
