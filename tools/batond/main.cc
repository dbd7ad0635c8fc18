// batond: the checkpoint service of one node (blade). Runs the engine over
// the configured links and serves applications on a unix socket.
//
//   batond --config /etc/baton/blade1.toml [--check]
//
// --check validates the config and exits. SIGTERM or SIGINT stop it cleanly:
// applications are disconnected, the socket is removed, the engine stops.

#include <malloc.h>
#include <signal.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "baton/engine.h"
#include "baton/ethdev.h"
#include "baton/shm.h"
#include "common/log.h"
#include "daemon/config.h"
#include "failover/manager.h"
#include "ipc/server.h"
#include "runtime/topology.h"
#include "startup_watch.h"
#include "telemetry.h"

int main(int argc, char** argv) {
  std::string config_path;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) config_path = argv[++i];
    else if (a == "--check") check = true;
    else {
      std::fprintf(stderr, "usage: batond --config FILE [--check]\n");
      return 64;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "usage: batond --config FILE [--check]\n");
    return 64;
  }
  auto cfg = baton::load_daemon_config(config_path);
  if (!cfg) {
    std::fprintf(stderr, "batond: %s\n", cfg.error().message.c_str());
    return 2;
  }
  if (auto host = baton::check_daemon_host(*cfg, config_path); !host) {
    std::fprintf(stderr, "batond: %s\n", host.error().message.c_str());
    return 2;
  }
  // Before anything starts (links, a second engine of this node): a
  // batond that serves this socket already keeps it, and batond replaces
  // nothing but a stale socket there.
  if (auto usable = baton::ipc::socket_path_usable(cfg->socket_path, check); !usable) {
    std::fprintf(stderr, "batond: %s: client.socket: %s\n", config_path.c_str(), usable.error().message.c_str());
    return 2;
  }
  const bool ethdev = std::any_of(cfg->links.begin(), cfg->links.end(),
                                  [](const baton::LinkSpec& l) { return l.driver == "ethdev"; });
  if (!cfg->eal_args.empty() && !ethdev)
    cfg->warnings.push_back("eal.args: no link is a DPDK device, so the EAL does not run and they are not used");
  if (check && ethdev && !cfg->eal_args.empty()) {
    if (auto ok = baton::ethdev::check_eal_args(cfg->eal_args); !ok) {
      std::fprintf(stderr, "batond: %s: eal.args: %s\n", config_path.c_str(), ok.error().message.c_str());
      return 2;
    }
  }
  if (check) {
    for (const auto& w : cfg->warnings) std::fprintf(stderr, "batond: %s: warning: %s\n", config_path.c_str(), w.c_str());
    std::printf("%s: ok (node %u \"%s\", %zu links)\n", config_path.c_str(), cfg->engine.node_id, cfg->name.c_str(),
                cfg->links.size());
    return 0;
  }
  // Applications come and go, each with a session thread: bound malloc's
  // per-thread arenas so that memory stays flat however many have come.
  mallopt(M_ARENA_MAX, 2);
  baton::set_log_level(cfg->log_level);
  if (cfg->syslog) {
    openlog("batond", LOG_PID, LOG_DAEMON);
    baton::set_log_syslog(true);
  }
  for (const auto& w : cfg->warnings) BT_WARN("%s: %s", config_path.c_str(), w.c_str());

  // A write to a pipe nobody reads any more (a standby instance that
  // closed its promotion pipe, a hook's) fails with EPIPE instead of
  // killing the daemon: SIGPIPE's default action ended batond, found by
  // failover_deaf_standby. (Sockets already send with MSG_NOSIGNAL; the
  // processes batond starts get SIGPIPE's default back, runner.cc.)
  signal(SIGPIPE, SIG_IGN);
  // Signals are taken by sigwait below, not by handlers.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);  // a closed terminal, or a "reload": not a stop (its default ended batond unlogged)
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  // Opening links (a memif client connects, a server's peer may be slow to
  // answer) and starting the engine can block: if start-up takes long, say
  // where it is.
  baton::batond::StartupWatch watch(std::chrono::seconds(5));

  // With links, DPDK's EAL runs, and with it the telemetry socket, under a
  // prefix unique to this process (two blades of one node id may share a
  // machine): `batonctl status` names it for dpdk-telemetry.py -f.
  std::string telemetry_prefix;
  if (ethdev) {
    telemetry_prefix = "batond" + std::to_string(cfg->engine.node_id) + "-" + std::to_string(getpid());
    if (auto ok = baton::ethdev::init_eal(cfg->eal_args, telemetry_prefix); !ok) {
      BT_ERROR("%s%s", ok.error().to_string().c_str(),
               cfg->eal_args.empty() ? "" : " (with eal.args: `batond --check` names what DPDK refused)");
      return 1;
    }
  }
  // No workers named: one per NUMA node that has a link (issue #11), pinned
  // to a CPU of it; a single floating worker when the links sit on one
  // node or none in particular (memif, af_packet, shm).
  if (cfg->engine.workers.empty() && cfg->engine.worker_cpu < 0) {
    std::vector<int> link_nodes;
    for (const auto& spec : cfg->links)
      if (spec.driver == "ethdev")
        if (auto n = baton::ethdev::device_numa_node(spec.device)) link_nodes.push_back(*n);
    if (std::any_of(link_nodes.begin(), link_nodes.end(), [](int n) { return n >= 0; }))
      if (auto topology = baton::Topology::load(cfg->engine.topology)) {
        cfg->engine.workers = baton::default_workers(*topology, link_nodes);
        if (!cfg->engine.workers.empty())
          BT_INFO("links on %zu NUMA nodes: one worker on each", cfg->engine.workers.size());
      }
  }
  // Per-core shards: each gets a queue pair of every device (memif,
  // net_ring), a region of its own (shm: `device`, then `device`.K for shard
  // K), or the devices the config gives it alone (`shard = K`).
  const size_t shards = std::max<size_t>(1, cfg->engine.workers.size());
  std::vector<std::vector<std::unique_ptr<baton::Link>>> links(shards);
  // The lower node id is side 0 of a shm region; ethdev devices are DPDK's.
  auto open_link = [&](const baton::LinkSpec& spec,
                       uint16_t queues) -> baton::Result<std::vector<std::unique_ptr<baton::Link>>> {
    if (spec.driver == "shm") {
      std::vector<std::unique_ptr<baton::Link>> out;
      for (uint16_t q = 0; q < queues; ++q) {
        baton::shm::Config sc;
        sc.path = spec.device + (q == 0 ? "" : "." + std::to_string(q));
        sc.side = cfg->engine.node_id < spec.peer ? 0 : 1;
        sc.peer = spec.peer;
        if (spec.max_frame != 0) sc.max_frame = spec.max_frame;
        auto l = baton::shm::open(sc);
        if (!l) return tl::unexpected(l.error());
        out.push_back(std::move(*l));
      }
      return out;
    }
    baton::ethdev::PortConfig pc;
    pc.device = spec.device;
    pc.peer = spec.peer;
    pc.queues = queues;
    if (spec.max_frame != 0) pc.max_frame = spec.max_frame;
    return baton::ethdev::open_port_queues(pc);
  };
  for (const auto& spec : cfg->links) {
    auto opened = open_link(spec, spec.shard >= 0 ? 1 : static_cast<uint16_t>(shards));
    if (!opened) {
      BT_ERROR("link to node %u: %s", spec.peer, opened.error().to_string().c_str());
      return 1;
    }
    for (size_t q = 0; q < opened->size(); ++q)
      links[spec.shard >= 0 ? static_cast<size_t>(spec.shard) : q].push_back(std::move((*opened)[q]));
  }
  // Every segment's memory is handed to an application, whose writes the
  // engine cannot see: the application's client library tracks them and
  // says what it wrote with each commit (docs/architecture.md, Daemon mode).
  cfg->engine.track_writes = false;
  cfg->engine.shared_with_clients = true;  // and snapshots it, for a copy-on-write segment
  auto engine = baton::Engine::start_sharded(cfg->engine, std::move(links));
  if (!engine) {
    BT_ERROR("%s", engine.error().to_string().c_str());
    return 1;
  }
  baton::ipc::ServerConfig sc;
  sc.node_name = cfg->name;
  sc.socket_path = cfg->socket_path;
  sc.socket_mode = cfg->socket_mode;
  sc.allow_uid = cfg->allow_uid;
  sc.allow_gid = cfg->allow_gid;
  sc.max_clients = cfg->max_clients;
  sc.max_clients_per_process = cfg->max_clients_per_process;
  sc.max_clients_per_user = cfg->max_clients_per_user;
  sc.max_segments = cfg->max_segments;
  sc.max_bytes = cfg->max_client_bytes;
  sc.max_wait_ms = cfg->max_wait_ms;
  sc.telemetry_prefix = telemetry_prefix;
  // idle = "spin" (dedicated cores): the commit thread never sleeps either,
  // so no application ever pays a wake-up.
  if (cfg->engine.idle == baton::IdlePolicy::kSpin) sc.idle_spin_us = UINT32_MAX;
  // Service groups (issue #12): the failover manager, if the config has any.
  std::unique_ptr<baton::failover::Manager> failover;
  // Its loads run inside batond once the server is up (before that, and
  // while it stops, through the socket).
  auto local_loads = std::make_shared<baton::failover::LocalLoads>();
  if (!cfg->groups.empty()) {
    baton::failover::ManagerConfig mc;
    mc.node = cfg->engine.node_id;
    mc.caps = baton::failover::NodeCaps{cfg->cores, cfg->memory_mib, cfg->tags, cfg->spare};
    mc.groups = cfg->groups;
    mc.socket = cfg->socket_path;
    mc.local = local_loads;
    auto m = baton::failover::Manager::start(**engine, std::move(mc));
    if (!m) {
      BT_ERROR("%s", m.error().to_string().c_str());
      return 1;
    }
    failover = std::move(*m);
    sc.groups = [&failover] { return failover->status().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); };
    sc.metric = [&failover](pid_t pid, const std::string& name, double value) { failover->metric(pid, name, value); };
  }
  auto server = baton::ipc::Server::start(**engine, sc);
  if (!server) {
    BT_ERROR("%s", server.error().to_string().c_str());
    return 1;
  }
  if (!telemetry_prefix.empty()) baton::batond::register_telemetry(**server, **engine, sc.groups);
  local_loads->set([&srv = **server](const std::string& name, pid_t instance,
                                     bool exclusive) { return srv.load_here(name, instance, exclusive); },
                   [&srv = **server] { srv.prepare_open(); },
                   [&srv = **server](const std::string& name, bool on, uint64_t for_ns) {
                     srv.hold(name, on, for_ns);
                   });
  watch.serving();
  BT_INFO("batond node %u \"%s\" serving %s", cfg->engine.node_id, cfg->name.c_str(), cfg->socket_path.c_str());
  std::atomic<bool> stop{false};
  std::thread accept([&] { (*server)->serve(stop); });
  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGHUP) break;
    BT_WARN("batond: SIGHUP ignored: batond does not reload its config (a change takes a restart; "
            "docs/operations.md)");
  }
  BT_INFO("batond: %s, stopping", strsignal(sig));
  stop.store(true);
  accept.join();
  local_loads->set(nullptr, nullptr, nullptr);  // waits for the loads inside the server
  server->reset();
  failover.reset();  // stops the groups running here
  engine->reset();
  return 0;
}
