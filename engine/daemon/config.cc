#include "daemon/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>
#include <cstring>
#include <unistd.h>

#include "common/devargs.h"
#include "protocol/wire.h"
#include "runtime/topology.h"

namespace baton {
namespace {

/// What is wrong with an ethdev link's DPDK virtual device string, as far
/// as can be told before DPDK starts (empty: nothing): a name DPDK takes
/// once per process, a memif end without its role (the default, client,
/// at both ends links nothing, and says nothing), a memif server twice on
/// one socket and id, an af_packet port without its interface. Devices
/// that are not virtual (a PCI address) are DPDK's to judge.
std::string vdev_problem(const std::string& device, std::set<std::string>& names, std::set<std::string>& servers) {
  const std::string name = port_name(device);
  if (name.rfind("net_", 0) != 0) return {};
  if (!names.insert(name).second)
    return "names DPDK device " + name + ", which another link's device names already (each is one port)";
  if (name.rfind("net_memif", 0) == 0) {
    const auto role = devarg(device, "role");
    if (!role)
      return "a memif device needs role=server or role=client (one end of the link each; both would default to "
             "client, and the link would never come up)";
    if (*role != "server" && *role != "client") return "role=" + *role + ": a memif role is server or client";
    if (*role == "server") {
      const std::string key =
          devarg(device, "socket").value_or("/run/memif.sock") + " id " + devarg(device, "id").value_or("0");
      if (!servers.insert(key).second)
        return "is a memif server on socket " + key + ", as another link's device is already (give each its own "
               "socket or id)";
    }
  }
  if (name.rfind("net_af_packet", 0) == 0 && !devarg(device, "iface"))
    return "an af_packet device needs iface=<network interface>";
  return {};
}

class Reader {
 public:
  explicit Reader(std::string_view source) : source_(source) {}

  Error error(const std::string& field, const std::string& reason) const {
    return Error{Errc::kInvalidArgument, std::string(source_) + ": " + field + ": " + reason};
  }

  // An integer in [lo, hi]; absent -> fallback (or an error if required).
  Result<int64_t> integer(const toml::node_view<const toml::node>& n, const std::string& field, int64_t lo, int64_t hi,
                          std::optional<int64_t> fallback) const {
    if (!n) {
      if (fallback) return *fallback;
      return tl::unexpected(error(field, "is required"));
    }
    auto v = n.value<int64_t>();
    if (!n.is_integer() || !v) return tl::unexpected(error(field, "must be an integer"));
    if (*v < lo || *v > hi)
      return tl::unexpected(error(field, "must be " + std::to_string(lo) + ".." + std::to_string(hi) + " (got " +
                                             std::to_string(*v) + ")"));
    return *v;
  }

  Result<std::string> string(const toml::node_view<const toml::node>& n, const std::string& field,
                             std::optional<std::string> fallback) const {
    if (!n) {
      if (fallback) return *fallback;
      return tl::unexpected(error(field, "is required"));
    }
    if (!n.is_string()) return tl::unexpected(error(field, "must be a string"));
    return std::string(*n.value<std::string_view>());
  }

  Result<std::vector<std::string>> strings(const toml::node_view<const toml::node>& n, const std::string& field) const {
    std::vector<std::string> out;
    if (!n) return out;
    const toml::array* arr = n.as_array();
    if (arr == nullptr) return tl::unexpected(error(field, "must be an array of strings"));
    for (const auto& e : *arr) {
      if (!e.is_string()) return tl::unexpected(error(field, "must be an array of strings"));
      out.emplace_back(*e.value<std::string_view>());
    }
    return out;
  }

  // [engine] workers: CPUs (-1: float), one shard each.
  Result<std::vector<int>> cpus(const toml::node_view<const toml::node>& n, const std::string& field) const {
    std::vector<int> out;
    if (!n) return out;
    const toml::array* arr = n.as_array();
    if (arr == nullptr || arr->empty() || arr->size() > 64)
      return tl::unexpected(error(field, "must be an array of 1..64 CPU numbers (-1: the worker floats)"));
    for (const auto& e : *arr) {
      auto v = e.value<int64_t>();
      if (!e.is_integer() || !v || *v < -1 || *v > 4095)
        return tl::unexpected(error(field, "must be an array of CPU numbers (0..4095, or -1: the worker floats)"));
      out.push_back(static_cast<int>(*v));
    }
    return out;
  }

  // An array of node ids (1..65534), each once.
  Result<std::vector<uint16_t>> nodes(const toml::node_view<const toml::node>& n, const std::string& field) const {
    std::vector<uint16_t> out;
    if (!n) return out;
    const toml::array* arr = n.as_array();
    if (arr == nullptr) return tl::unexpected(error(field, "must be an array of node ids"));
    for (const auto& e : *arr) {
      auto v = e.value<int64_t>();
      if (!e.is_integer() || !v || *v < 1 || *v > 65534)
        return tl::unexpected(error(field, "must be an array of node ids (1..65534)"));
      if (std::find(out.begin(), out.end(), *v) != out.end())
        return tl::unexpected(error(field, "names node " + std::to_string(*v) + " twice"));
      out.push_back(static_cast<uint16_t>(*v));
    }
    return out;
  }

  // An array of tables ([[field]]): each with its place for messages,
  // "field[i]"; none when absent.
  Result<std::vector<std::pair<std::string, const toml::table*>>> tables(const toml::node_view<const toml::node>& n,
                                                                        const std::string& field) const {
    std::vector<std::pair<std::string, const toml::table*>> out;
    if (!n) return out;
    const toml::array* arr = n.as_array();
    if (arr == nullptr) return tl::unexpected(error(field, "must be an array of tables ([[" + field + "]])"));
    for (size_t i = 0; i < arr->size(); ++i) {
      std::string where = field + "[" + std::to_string(i) + "]";
      const toml::table* t = (*arr)[i].as_table();
      if (t == nullptr) return tl::unexpected(error(where, "must be a table"));
      out.emplace_back(std::move(where), t);
    }
    return out;
  }

  // Unknown keys are mistakes (a typo would otherwise silently keep a default).
  Result<void> only(const toml::table& t, const std::string& where, std::initializer_list<std::string_view> keys) const {
    for (const auto& [k, v] : t) {
      bool known = false;
      for (auto key : keys) known |= k.str() == key;
      if (!known) return tl::unexpected(error(where.empty() ? std::string(k.str()) : where + "." + std::string(k.str()),
                                              "unknown key"));
    }
    return {};
  }

 private:
  std::string_view source_;
};

#define TRY(var, expr)                                   \
  auto var##_r = (expr);                                 \
  if (!var##_r) return tl::unexpected(var##_r.error()); \
  auto var = *var##_r

}  // namespace

Result<DaemonConfig> parse_daemon_config(std::string_view text, std::string_view source) {
  toml::table parsed;
  try {
    parsed = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return fail(Errc::kInvalidArgument, std::string(source), ":", std::to_string(e.source().begin.line), ":",
                std::to_string(e.source().begin.column), ": ", std::string(e.description()));
  }
  const toml::table& root = parsed;  // const views all the way down
  Reader r(source);
  DaemonConfig c;
  if (auto ok = r.only(root, "", {"node", "engine", "client", "log", "eal", "link", "storage", "membership", "group", "standby", "snapshots"}); !ok)
    return tl::unexpected(ok.error());

  const auto node = root["node"];
  if (!node.is_table()) return tl::unexpected(r.error("node", "the [node] table is required"));
  if (auto ok = r.only(*node.as_table(), "node", {"id", "name", "cores", "memory_mib", "tags", "spare"}); !ok)
    return tl::unexpected(ok.error());
  TRY(id, r.integer(node["id"], "node.id", 1, 65534, std::nullopt));
  c.engine.node_id = static_cast<uint16_t>(id);
  TRY(name, r.string(node["name"], "node.name", "node" + std::to_string(id)));
  if (name.empty() || name.size() > 63 ||
      !std::all_of(name.begin(), name.end(), [](unsigned char ch) { return ch >= 0x20 && ch < 0x7f; }))
    return tl::unexpected(r.error("node.name", "must be 1..63 printable characters"));
  c.name = name;
  TRY(cores, r.integer(node["cores"], "node.cores", 0, 4096, 0));
  c.cores = static_cast<uint32_t>(cores);
  TRY(mem, r.integer(node["memory_mib"], "node.memory_mib", 0, int64_t{1} << 40, 0));
  c.memory_mib = static_cast<uint64_t>(mem);
  TRY(tags, r.strings(node["tags"], "node.tags"));
  c.tags = tags;
  for (const auto& tag : c.tags)
    if (tag.empty() || tag.size() > 63) return tl::unexpected(r.error("node.tags", "each tag must be 1..63 characters"));
  if (const auto spare = node["spare"]; spare) {
    if (!spare.is_boolean()) return tl::unexpected(r.error("node.spare", "must be true or false"));
    c.spare = *spare.value<bool>();
  }
  // Placement tags (S12): "blade=N" (or "slot=N") and "power=X" say which
  // failure domains this node shares with others; other tags are free-form.
  for (const auto& tag : c.tags) {
    const auto eq = tag.find('=');
    if (eq == std::string::npos || eq + 1 == tag.size()) continue;
    const std::string key = tag.substr(0, eq), value = tag.substr(eq + 1);
    if (key != "blade" && key != "slot" && key != "power") continue;
    uint32_t h = 2166136261u;  // FNV-1a: any name is a domain; never 0 (unknown)
    for (unsigned char ch : value) h = (h ^ ch) * 16777619u;
    (key == "power" ? c.engine.power_domain : c.engine.blade) = h | 1u;
  }

  if (const auto eng = root["engine"]; eng) {
    if (!eng.is_table()) return tl::unexpected(r.error("engine", "must be a table"));
    if (auto ok = r.only(*eng.as_table(), "engine",
                         {"replication_factor", "retain", "idle", "max_segment_mib", "worker_cpu", "workers",
                          "numa_node", "topology", "heartbeat_us", "failure_timeout_us", "expected_votes",
                          "direct_reads", "chunk_kib"});
        !ok)
      return tl::unexpected(ok.error());
    TRY(cpu, r.integer(eng["worker_cpu"], "engine.worker_cpu", -1, 4095, -1));
    c.engine.worker_cpu = static_cast<int>(cpu);
    TRY(workers, r.cpus(eng["workers"], "engine.workers"));
    if (!workers.empty() && eng["worker_cpu"])
      return tl::unexpected(
          r.error("engine.workers", "and engine.worker_cpu both given: workers names every worker's CPU"));
    c.engine.workers = workers;
    TRY(numa, r.integer(eng["numa_node"], "engine.numa_node", -1, 1023, -1));
    c.engine.numa_node = static_cast<int>(numa);
    TRY(topology, r.string(eng["topology"], "engine.topology", ""));
    c.engine.topology = topology;
    TRY(hb, r.integer(eng["heartbeat_us"], "engine.heartbeat_us", 0, 10'000'000, 0));
    c.engine.heartbeat_interval_us = static_cast<uint32_t>(hb);
    TRY(ft, r.integer(eng["failure_timeout_us"], "engine.failure_timeout_us", 0, 600'000'000, 0));
    c.engine.failure_timeout_us = static_cast<uint32_t>(ft);
    TRY(votes, r.integer(eng["expected_votes"], "engine.expected_votes", 0, 65534, 0));
    c.engine.expected_votes = static_cast<uint32_t>(votes);
    TRY(rf, r.integer(eng["replication_factor"], "engine.replication_factor", 1, 4, 1));
    c.engine.replication_factor = static_cast<uint32_t>(rf);
    TRY(retain, r.integer(eng["retain"], "engine.retain", 0, 64, 0));
    c.engine.retain = static_cast<uint32_t>(retain);
    TRY(idle, r.string(eng["idle"], "engine.idle", "adaptive"));
    if (idle == "spin") c.engine.idle = IdlePolicy::kSpin;
    else if (idle == "adaptive") c.engine.idle = IdlePolicy::kAdaptive;
    else return tl::unexpected(r.error("engine.idle", "must be \"spin\" or \"adaptive\" (got \"" + idle + "\")"));
    TRY(maxmib, r.integer(eng["max_segment_mib"], "engine.max_segment_mib", 1, 1 << 20, 1024));
    c.engine.max_segment_size = static_cast<uint64_t>(maxmib) << 20;
    TRY(chunk, r.integer(eng["chunk_kib"], "engine.chunk_kib", 1, 60, 16));
    c.engine.chunk_size = static_cast<uint32_t>(chunk) * 1024;
    if (const auto direct = eng["direct_reads"]; direct) {
      if (!direct.is_boolean()) return tl::unexpected(r.error("engine.direct_reads", "must be true or false"));
      c.engine.direct_reads = *direct.value<bool>();
    }
  }
  // As the engine takes them (0: by idle policy): a peer must be able to
  // miss a heartbeat before it counts as dead.
  if (c.engine.failure_us() < 2 * uint64_t{c.engine.heartbeat_us()})
    return tl::unexpected(r.error("engine.failure_timeout_us",
                                  "is " + std::to_string(c.engine.failure_us()) +
                                      " us; it must be at least twice engine.heartbeat_us (" +
                                      std::to_string(c.engine.heartbeat_us()) + " us)"));

  const auto client = root["client"];
  if (!client.is_table()) return tl::unexpected(r.error("client", "the [client] table is required"));
  if (auto ok = r.only(*client.as_table(), "client",
                       {"socket", "user", "group", "mode", "max_clients", "max_clients_per_process", "max_clients_per_user",
                        "max_segments",
                        "max_mib", "max_wait_ms"}); !ok)
    return tl::unexpected(ok.error());
  TRY(sock, r.string(client["socket"], "client.socket", std::nullopt));
  if (sock.empty() || sock[0] != '/' || sock.size() > 100)
    return tl::unexpected(r.error("client.socket", "must be an absolute path of at most 100 characters"));
  c.socket_path = sock;
  TRY(user, r.string(client["user"], "client.user", ""));
  if (!user.empty()) {
    const passwd* pw = getpwnam(user.c_str());
    if (pw == nullptr) return tl::unexpected(r.error("client.user", "no such user \"" + user + "\""));
    c.allow_uid = pw->pw_uid;
  }
  TRY(group, r.string(client["group"], "client.group", ""));
  if (!group.empty()) {
    const struct group* gr = getgrnam(group.c_str());
    if (gr == nullptr) return tl::unexpected(r.error("client.group", "no such group \"" + group + "\""));
    c.allow_gid = gr->gr_gid;
  }
  TRY(mode, r.string(client["mode"], "client.mode", "0660"));
  char* end = nullptr;
  const unsigned long m = std::strtoul(mode.c_str(), &end, 8);
  if (mode.empty() || *end != '\0' || m > 0777)
    return tl::unexpected(r.error("client.mode", "must be an octal mode like \"0660\" (got \"" + mode + "\")"));
  c.socket_mode = static_cast<mode_t>(m);
  // Per-application limits: one application cannot take the blade from the others.
  TRY(max_clients, r.integer(client["max_clients"], "client.max_clients", 1, 4096, 256));
  c.max_clients = static_cast<uint32_t>(max_clients);
  TRY(per_process, r.integer(client["max_clients_per_process"], "client.max_clients_per_process", 1, 4096, 16));
  c.max_clients_per_process = static_cast<uint32_t>(per_process);
  // Nor one user's many processes: a quarter of the slots by default.
  TRY(per_user, r.integer(client["max_clients_per_user"], "client.max_clients_per_user", 1, 4096,
                          std::max<int64_t>(1, max_clients / 4)));
  c.max_clients_per_user = static_cast<uint32_t>(per_user);
  TRY(max_segments, r.integer(client["max_segments"], "client.max_segments", 1, 65536, 64));
  c.max_segments = static_cast<uint32_t>(max_segments);
  TRY(max_mib, r.integer(client["max_mib"], "client.max_mib", 1, int64_t{1} << 30, 4096));
  c.max_client_bytes = static_cast<uint64_t>(max_mib) << 20;
  TRY(max_wait, r.integer(client["max_wait_ms"], "client.max_wait_ms", 1, 3'600'000, 60'000));
  c.max_wait_ms = static_cast<uint32_t>(max_wait);

  if (const auto log = root["log"]; log) {
    if (!log.is_table()) return tl::unexpected(r.error("log", "must be a table"));
    if (auto ok = r.only(*log.as_table(), "log", {"level", "syslog"}); !ok) return tl::unexpected(ok.error());
    TRY(level, r.string(log["level"], "log.level", "info"));
    if (level == "error") c.log_level = LogLevel::kError;
    else if (level == "warn") c.log_level = LogLevel::kWarn;
    else if (level == "info") c.log_level = LogLevel::kInfo;
    else if (level == "debug") c.log_level = LogLevel::kDebug;
    else return tl::unexpected(r.error("log.level", "must be error, warn, info or debug (got \"" + level + "\")"));
    if (const auto sl = log["syslog"]; sl) {
      if (!sl.is_boolean()) return tl::unexpected(r.error("log.syslog", "must be true or false"));
      c.syslog = *sl.value<bool>();
    }
  }

  if (const auto storage = root["storage"]; storage) {
    if (!storage.is_table()) return tl::unexpected(r.error("storage", "must be a table"));
    if (auto ok = r.only(*storage.as_table(), "storage", {"dir", "keep", "stop_wait_ms", "buffer_mib"}); !ok)
      return tl::unexpected(ok.error());
    TRY(dir, r.string(storage["dir"], "storage.dir", std::nullopt));
    if (dir.empty() || dir[0] != '/') return tl::unexpected(r.error("storage.dir", "must be an absolute path"));
    c.engine.global_dir = dir;
    TRY(keep, r.integer(storage["keep"], "storage.keep", 1, 1000, 2));
    c.engine.global_keep = static_cast<uint32_t>(keep);
    TRY(stop_wait, r.integer(storage["stop_wait_ms"], "storage.stop_wait_ms", 100, 3'600'000, 10'000));
    c.engine.global_stop_wait_ms = static_cast<uint32_t>(stop_wait);
    TRY(buffer, r.integer(storage["buffer_mib"], "storage.buffer_mib", 1, 1 << 20, 256));
    c.engine.global_buffer_mib = static_cast<uint32_t>(buffer);
  }

  if (const auto mem = root["membership"]; mem) {
    if (!mem.is_table()) return tl::unexpected(r.error("membership", "must be a table"));
    if (auto ok = r.only(*mem.as_table(), "membership", {"source", "group"}); !ok) return tl::unexpected(ok.error());
    TRY(source, r.string(mem["source"], "membership.source", "backplane"));
    if (source == "backplane") c.engine.membership = MembershipKind::kBackplane;
    else if (source == "corosync") c.engine.membership = MembershipKind::kCorosync;
    else
      return tl::unexpected(
          r.error("membership.source", "must be backplane or corosync (got \"" + source + "\")"));
    TRY(group, r.string(mem["group"], "membership.group", "baton"));
    if (group.empty() || group.size() > 128)
      return tl::unexpected(r.error("membership.group", "must be 1..128 bytes (a Corosync CPG group name)"));
    c.engine.corosync_group = group;
  }

  if (const auto eal = root["eal"]; eal) {
    if (!eal.is_table()) return tl::unexpected(r.error("eal", "must be a table"));
    if (auto ok = r.only(*eal.as_table(), "eal", {"args"}); !ok) return tl::unexpected(ok.error());
    TRY(args, r.strings(eal["args"], "eal.args"));
    c.eal_args = args;
  }

  // This node and every peer it has a link to: the nodes it can exchange
  // anything with (a vote, a replica, a group's start).
  std::set<uint16_t> linked{c.engine.node_id};
  {
    TRY(link_tables, r.tables(root["link"], "link"));
    std::set<std::string> devices;  // several links may reach one peer (two backplanes), each its own port
    std::set<std::string> vdev_names, memif_servers;  // what DPDK takes once per process
    for (const auto& [where, t] : link_tables) {
      if (auto ok = r.only(*t, where, {"peer", "driver", "device", "max_frame", "shard"}); !ok)
        return tl::unexpected(ok.error());
      const toml::node_view<const toml::node> lv(t);
      TRY(peer, r.integer(lv["peer"], where + ".peer", 1, 65534, std::nullopt));
      if (peer == id) return tl::unexpected(r.error(where + ".peer", "is this node's own id"));
      TRY(driver, r.string(lv["driver"], where + ".driver", "ethdev"));
      if (driver != "ethdev" && driver != "shm")
        return tl::unexpected(r.error(where + ".driver", "unknown driver \"" + driver + "\" (ethdev or shm)"));
      TRY(device, r.string(lv["device"], where + ".device", std::nullopt));
      if (device.empty()) return tl::unexpected(r.error(where + ".device", "is empty"));
      if (driver == "shm" && device.front() != '/')
        return tl::unexpected(r.error(where + ".device", "a shm link's region must be an absolute path (got \"" +
                                                             device + "\")"));
      if (!devices.insert(device).second)
        return tl::unexpected(r.error(where + ".device", "is already another link's device"));
      if (driver == "ethdev")
        if (auto bad = vdev_problem(device, vdev_names, memif_servers); !bad.empty())
          return tl::unexpected(r.error(where + ".device", bad));
      TRY(max_frame, r.integer(lv["max_frame"], where + ".max_frame", 1024, 65000, 0));
      const int64_t shards = std::max<int64_t>(1, static_cast<int64_t>(c.engine.workers.size()));
      TRY(shard, r.integer(lv["shard"], where + ".shard", -1, 63, -1));
      if (shard >= shards)
        return tl::unexpected(r.error(where + ".shard", "is " + std::to_string(shard) + "; engine.workers makes " +
                                                            std::to_string(shards) +
                                                            (shards == 1 ? " shard" : " shards")));
      c.links.push_back(LinkSpec{static_cast<uint16_t>(peer), driver, device, static_cast<uint32_t>(max_frame),
                                 static_cast<int>(shard)});
    }
    for (const auto& l : c.links) linked.insert(l.peer);
    if (c.engine.expected_votes != 0 && c.engine.expected_votes < linked.size())
      return tl::unexpected(r.error("engine.expected_votes", "is " + std::to_string(c.engine.expected_votes) +
                                                                 ", below the " + std::to_string(linked.size()) +
                                                                 " nodes this one links to (itself included)"));
  }
  {
    TRY(group_tables, r.tables(root["group"], "group"));
    for (const auto& [where, t] : group_tables) {
      if (auto ok = r.only(*t, where,
                           {"name", "segments", "start", "probe", "provision", "alert", "probe_interval_ms",
                            "probe_timeout_ms", "slow_ms", "slow_for_ms", "metric", "slow_above", "failover_on", "priority", "min_cores",
                            "min_memory_mib", "tags", "home", "standby", "standby_instances", "start_timeout_ms"});
          !ok)
        return tl::unexpected(ok.error());
      const toml::node_view<const toml::node> gv(t);
      failover::ServiceGroup g;
      TRY(name, r.string(gv["name"], where + ".name", std::nullopt));
      if (!wire::valid_name(name))
        return tl::unexpected(r.error(where + ".name", "must be 1..63 printable characters without spaces"));
      for (const auto& other : c.groups)
        if (other.name == name) return tl::unexpected(r.error(where + ".name", "\"" + name + "\" is used twice"));
      g.name = name;
      TRY(segments, r.strings(gv["segments"], where + ".segments"));
      for (size_t i = 0; i < segments.size(); ++i) {
        const std::string& seg = segments[i];
        if (!wire::valid_name(seg)) return tl::unexpected(r.error(where + ".segments", "\"" + seg + "\" is not a segment name"));
        if (std::find(segments.begin(), segments.begin() + static_cast<std::ptrdiff_t>(i), seg) !=
            segments.begin() + static_cast<std::ptrdiff_t>(i))
          return tl::unexpected(r.error(where + ".segments", "names \"" + seg + "\" twice"));
        // Two groups with one segment would take it from each other for ever.
        for (const auto& other : c.groups)
          if (std::find(other.segments.begin(), other.segments.end(), seg) != other.segments.end())
            return tl::unexpected(r.error(where + ".segments", "\"" + seg + "\" is group \"" + other.name +
                                                                   "\"'s already (a segment has one owner)"));
      }
      g.segments = segments;
      TRY(start, r.string(gv["start"], where + ".start", std::nullopt));
      if (start.empty()) return tl::unexpected(r.error(where + ".start", "is empty"));
      g.start = start;
      TRY(probe, r.string(gv["probe"], where + ".probe", ""));
      g.probe = probe;
      TRY(provision, r.string(gv["provision"], where + ".provision", ""));
      g.provision = provision;
      TRY(alert, r.string(gv["alert"], where + ".alert", ""));
      g.alert = alert;
      TRY(interval, r.integer(gv["probe_interval_ms"], where + ".probe_interval_ms", 10, 3'600'000, 1000));
      g.probe_interval_ms = static_cast<uint32_t>(interval);
      TRY(ptimeout, r.integer(gv["probe_timeout_ms"], where + ".probe_timeout_ms", 10, 3'600'000, 2000));
      g.probe_timeout_ms = static_cast<uint32_t>(ptimeout);
      TRY(slow, r.integer(gv["slow_ms"], where + ".slow_ms", 0, 3'600'000, 0));
      g.slow_ms = static_cast<uint32_t>(slow);
      TRY(slow_for, r.integer(gv["slow_for_ms"], where + ".slow_for_ms", 0, 86'400'000, 5000));
      g.slow_for_ms = static_cast<uint32_t>(slow_for);
      if (g.slow_ms > 0 && g.probe.empty())
        return tl::unexpected(r.error(where + ".slow_ms", "needs a probe (its response time is what is measured)"));
      TRY(metric, r.string(gv["metric"], where + ".metric", ""));
      if (metric.size() > 63) return tl::unexpected(r.error(where + ".metric", "must be 1..63 characters"));
      g.metric = metric;
      if (const auto above = gv["slow_above"]; above) {
        if (!above.is_number()) return tl::unexpected(r.error(where + ".slow_above", "must be a number"));
        g.slow_above = above.is_integer() ? static_cast<double>(*above.value<int64_t>()) : *above.value<double>();
        if (g.metric.empty()) return tl::unexpected(r.error(where + ".slow_above", "needs a metric"));
      }
      if (!g.metric.empty() && g.slow_ms > 0)
        return tl::unexpected(r.error(where + ".metric", "slowness is judged by slow_ms (the probe) or by a metric, not both"));
      TRY(on, r.string(gv["failover_on"], where + ".failover_on", "either"));
      if (on == "failure") g.failover_on = failover::ServiceGroup::On::kFailure;
      else if (on == "performance") g.failover_on = failover::ServiceGroup::On::kPerformance;
      else if (on == "either") g.failover_on = failover::ServiceGroup::On::kEither;
      else
        return tl::unexpected(r.error(where + ".failover_on", "must be failure, performance or either (got \"" + on + "\")"));
      if (g.failover_on == failover::ServiceGroup::On::kPerformance && g.slow_ms == 0 && g.metric.empty())
        return tl::unexpected(r.error(where + ".failover_on",
                                      "\"performance\" needs slow_ms (and a probe) or a metric: else the group never moves"));
      if (g.slow_ms > 0 && g.slow_ms >= g.probe_timeout_ms)
        c.warnings.push_back(where + ".slow_ms: " + std::to_string(g.slow_ms) + " ms is not below probe_timeout_ms (" +
                             std::to_string(g.probe_timeout_ms) +
                             " ms): a probe that slow times out and counts as a failure, never as slowness");
      if (g.slow_ms > 0 && g.slow_for_ms == 0)
        c.warnings.push_back(where + ".slow_for_ms: 0: one slow probe moves the group");
      TRY(priority, r.integer(gv["priority"], where + ".priority", -1'000'000, 1'000'000, 0));
      g.priority = static_cast<int32_t>(priority);
      TRY(min_cores, r.integer(gv["min_cores"], where + ".min_cores", 0, 4096, 0));
      g.min_cores = static_cast<uint32_t>(min_cores);
      TRY(min_mem, r.integer(gv["min_memory_mib"], where + ".min_memory_mib", 0, int64_t{1} << 40, 0));
      g.min_memory_mib = static_cast<uint64_t>(min_mem);
      TRY(gtags, r.strings(gv["tags"], where + ".tags"));
      g.tags = gtags;
      TRY(home, r.nodes(gv["home"], where + ".home"));
      g.home = home;
      for (uint16_t n : home)
        if (linked.count(n) == 0)
          c.warnings.push_back(where + ".home: node " + std::to_string(n) +
                               " is neither this node nor one it has a link to: the group never starts there");
      TRY(standby, r.nodes(gv["standby"], where + ".standby"));
      if (standby.size() > wire::kMaxReplicaSet)
        return tl::unexpected(r.error(where + ".standby", "at most " + std::to_string(wire::kMaxReplicaSet) + " nodes"));
      if (!standby.empty() && g.segments.empty())
        return tl::unexpected(r.error(where + ".standby", "needs segments (what a standby keeps ready)"));
      g.standby = standby;
      if (const auto si = gv["standby_instances"]; si) {
        if (!si.is_boolean()) return tl::unexpected(r.error(where + ".standby_instances", "must be true or false"));
        g.standby_instances = *si.value<bool>();
        if (g.standby_instances && g.standby.empty())
          return tl::unexpected(r.error(where + ".standby_instances", "needs standby nodes (where the instances wait)"));
      }
      TRY(st, r.integer(gv["start_timeout_ms"], where + ".start_timeout_ms", 100, 3'600'000, 15000));
      g.start_timeout_ms = static_cast<uint32_t>(st);
      c.groups.push_back(std::move(g));
    }
    if (c.groups.size() > 16) return tl::unexpected(r.error("group", "at most 16 service groups"));
  }
  // Hot standbys (S16): a group's standby nodes keep its segments ready;
  // [[standby]] tables name them for other segments.
  for (const auto& g : c.groups)
    for (const auto& seg : g.segments)
      if (!g.standby.empty()) c.engine.standbys.push_back(EngineConfig::Standby{seg, g.standby});
  {
    TRY(standby_tables, r.tables(root["standby"], "standby"));
    for (const auto& [where, t] : standby_tables) {
      if (auto ok = r.only(*t, where, {"segment", "nodes"}); !ok) return tl::unexpected(ok.error());
      const toml::node_view<const toml::node> sv(t);
      TRY(seg, r.string(sv["segment"], where + ".segment", std::nullopt));
      if (!wire::valid_name(seg)) return tl::unexpected(r.error(where + ".segment", "\"" + seg + "\" is not a segment name"));
      TRY(nodes, r.nodes(sv["nodes"], where + ".nodes"));
      if (nodes.empty() || nodes.size() > wire::kMaxReplicaSet)
        return tl::unexpected(r.error(where + ".nodes", "1.." + std::to_string(wire::kMaxReplicaSet) + " node ids"));
      for (const auto& other : c.engine.standbys)
        if (other.segment == seg)
          return tl::unexpected(r.error(where + ".segment", "\"" + seg + "\" has standbys already (here or in its group)"));
      c.engine.standbys.push_back(EngineConfig::Standby{seg, nodes});
    }
  }
  {
    // A standby receives every generation over a link: a node this one
    // has none to never could (nor could the config's other nodes, which
    // share these tables, be told apart from a typo).
    for (const auto& sb : c.engine.standbys) {
      for (uint16_t n : sb.nodes)
        if (linked.count(n) == 0)
          return tl::unexpected(r.error("standby", "segment \"" + sb.segment + "\": node " + std::to_string(n) +
                                                       " is neither this node nor one it has a link to"));
      if (sb.nodes.size() > c.engine.replication_factor)
        c.warnings.push_back("standby: segment \"" + sb.segment + "\" names " + std::to_string(sb.nodes.size()) +
                             " standby nodes, but engine.replication_factor is " +
                             std::to_string(c.engine.replication_factor) + ": at most " +
                             std::to_string(c.engine.replication_factor) + " of them keep a copy");
    }
  }
  // How commits take their snapshots (issue #10): a mode and a period for
  // every segment, and per segment name.
  if (const auto snaps = root["snapshots"]; snaps) {
    if (!snaps.is_table()) return tl::unexpected(r.error("snapshots", "must be a table"));
    if (auto ok = r.only(*snaps.as_table(), "snapshots", {"mode", "commit_every_ms", "protect_ahead", "segment"}); !ok)
      return tl::unexpected(ok.error());
    auto mode_of = [&r](const toml::node_view<const toml::node>& v, const std::string& where,
                        std::optional<std::string> fallback) -> Result<EngineConfig::SnapshotMode> {
      TRY(mode, r.string(v, where, std::move(fallback)));
      if (mode == "stage-copy") return EngineConfig::SnapshotMode::kStageCopy;
      if (mode == "copy-on-write") return EngineConfig::SnapshotMode::kCopyOnWrite;
      return tl::unexpected(r.error(where, "must be \"stage-copy\" or \"copy-on-write\" (got \"" + mode + "\")"));
    };
    TRY(mode, mode_of(snaps["mode"], "snapshots.mode", "stage-copy"));
    c.engine.snapshot_mode = mode;
    TRY(every, r.integer(snaps["commit_every_ms"], "snapshots.commit_every_ms", 0, 3'600'000, 0));
    c.engine.commit_every_ms = static_cast<uint32_t>(every);
    if (const auto ahead = snaps["protect_ahead"]; ahead) {
      if (!ahead.is_boolean()) return tl::unexpected(r.error("snapshots.protect_ahead", "must be true or false"));
      c.engine.cow_protect_ahead = ahead.value_or(false);
    }
    {
      TRY(segment_tables, r.tables(snaps["segment"], "snapshots.segment"));
      for (const auto& [where, t] : segment_tables) {
        if (auto ok = r.only(*t, where, {"name", "mode", "commit_every_ms"}); !ok) return tl::unexpected(ok.error());
        const toml::node_view<const toml::node> sv(t);
        EngineConfig::SegmentSnapshot m;
        TRY(name, r.string(sv["name"], where + ".name", std::nullopt));
        if (!wire::valid_name(name))
          return tl::unexpected(r.error(where + ".name", "\"" + name + "\" is not a segment name"));
        for (const auto& other : c.engine.snapshot_modes)
          if (other.segment == name) return tl::unexpected(r.error(where + ".name", "\"" + name + "\" appears twice"));
        m.segment = name;
        TRY(seg_mode, mode_of(sv["mode"], where + ".mode", mode == EngineConfig::SnapshotMode::kCopyOnWrite
                                                                ? "copy-on-write" : "stage-copy"));
        m.mode = seg_mode;
        if (sv["commit_every_ms"]) {
          TRY(seg_every, r.integer(sv["commit_every_ms"], where + ".commit_every_ms", 0, 3'600'000, 0));
          m.commit_every_ms = static_cast<uint32_t>(seg_every);
        }
        c.engine.snapshot_modes.push_back(std::move(m));
      }
    }
    // Periods are taken only by copy-on-write snapshots.
    if (mode == EngineConfig::SnapshotMode::kStageCopy && c.engine.commit_every_ms != 0)
      c.warnings.push_back("snapshots.commit_every_ms: stage-copy segments take no periodic commits (they need "
                           "mode = \"copy-on-write\")");
    for (const auto& m : c.engine.snapshot_modes)
      if (m.mode == EngineConfig::SnapshotMode::kStageCopy && m.commit_every_ms.value_or(0) != 0)
        c.warnings.push_back("snapshots.segment \"" + m.segment +
                             "\": commit_every_ms is ignored: a stage-copy segment takes no periodic commits");
  }
  return c;
}

Result<DaemonConfig> load_daemon_config(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return fail(Errc::kInvalidArgument, path, ": is a directory, not a config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(Errc::kIo, path, ": cannot read");
  // A config is a few KiB: read at most 1 MiB (a device such as /dev/zero
  // would otherwise be read until memory runs out).
  constexpr size_t kMaxConfig = 1 << 20;
  std::string text(kMaxConfig + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return fail(Errc::kIo, path, ": cannot read");
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfig) return fail(Errc::kInvalidArgument, path, ": longer than 1 MiB, not a config file");
  return parse_daemon_config(text, path);
}

Result<void> check_daemon_host(const DaemonConfig& c, std::string_view source) {
  auto error = [&](const std::string& field, const std::string& why) {
    return fail(Errc::kInvalidArgument, std::string(source), ": ", field, ": ", why);
  };
  auto topology = Topology::load(c.engine.topology);
  if (!topology)
    return error(c.engine.topology.empty() ? "engine" : "engine.topology",
                 "cannot read this machine's topology: " + topology.error().message);
  auto cpus = [&] {
    std::string s;
    for (const auto& n : topology->numa_nodes)
      for (int cpu : n.cpus) s += (s.empty() ? "" : ",") + std::to_string(cpu);
    return s;
  };
  for (int cpu : c.engine.workers)
    if (cpu >= 0 && !topology->has_cpu(cpu))
      return error("engine.workers", "CPU " + std::to_string(cpu) + " does not exist here (CPUs " + cpus() + ")");
  if (c.engine.worker_cpu >= 0 && !topology->has_cpu(c.engine.worker_cpu))
    return error("engine.worker_cpu",
                 "CPU " + std::to_string(c.engine.worker_cpu) + " does not exist here (CPUs " + cpus() + ")");
  if (c.engine.numa_node >= 0 && !topology->has_numa_node(c.engine.numa_node))
    return error("engine.numa_node", "NUMA node " + std::to_string(c.engine.numa_node) + " does not exist here (" +
                                         topology->summary() + ")");
  const std::filesystem::path dir = std::filesystem::path(c.socket_path).parent_path();
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return error("client.socket", "its directory " + dir.string() + " does not exist");
  if (access(dir.c_str(), W_OK | X_OK) != 0)
    return error("client.socket", "cannot make a socket in " + dir.string() + ": " + std::strerror(errno));
  // Global storage: a directory this batond can write, or one it can make.
  if (!c.engine.global_dir.empty()) {
    std::filesystem::path at = c.engine.global_dir;
    if (std::filesystem::exists(at, ec) && !std::filesystem::is_directory(at, ec))
      return error("storage.dir", at.string() + " is not a directory");
    while (!std::filesystem::exists(at, ec) && at.has_parent_path() && at != at.parent_path()) at = at.parent_path();
    const std::string what =
        at == c.engine.global_dir ? at.string() : "in " + at.string() + " to make " + c.engine.global_dir;
    if (access(at.c_str(), W_OK | X_OK) != 0)
      return error("storage.dir", "cannot write " + what + ": " + std::strerror(errno));
    // access() says yes to root where the file system says no (/proc,
    // /sys): a probe is made there and removed.
    const std::string probe = (at / (".baton-check-" + std::to_string(getpid()))).string();
    const bool made = at == c.engine.global_dir
                          ? [&] {
                              const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                              if (fd >= 0) ::close(fd);
                              return fd >= 0;
                            }()
                          : ::mkdir(probe.c_str(), 0700) == 0;
    if (!made) return error("storage.dir", "cannot write " + what + ": " + std::strerror(errno));
    if (at == c.engine.global_dir) ::unlink(probe.c_str());
    else ::rmdir(probe.c_str());
  }
  return {};
}

std::vector<int> default_workers(const Topology& topology, const std::vector<int>& link_nodes) {
  std::set<int> nodes;
  for (int n : link_nodes)
    if (topology.has_numa_node(n)) nodes.insert(n);
  std::vector<int> workers;
  if (nodes.size() < 2) return workers;
  for (int n : nodes)
    for (const auto& numa : topology.numa_nodes)
      if (numa.os_index == n && !numa.cpus.empty()) workers.push_back(numa.cpus.front());
  if (workers.size() < 2) workers.clear();
  return workers;
}

}  // namespace baton
#undef TRY
