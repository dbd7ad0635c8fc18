#include "telemetry.h"

#include <rte_telemetry.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace baton::batond {
namespace {

using nlohmann::json;

ipc::Server* g_server = nullptr;  // set once before the first command can arrive
Engine* g_engine = nullptr;
std::function<std::string()> g_groups;  // the failover manager's status (JSON text); empty: no groups

constexpr size_t kSegmentsPerPage = 40;

/// One scalar (or list of numbers) of a status object into a telemetry dict.
void put(rte_tel_data* d, const std::string& key, const json& v) {
  if (v.is_boolean()) {
    rte_tel_data_add_dict_int(d, key.c_str(), v.get<bool>() ? 1 : 0);
  } else if (v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0)) {
    rte_tel_data_add_dict_u64(d, key.c_str(), v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    rte_tel_data_add_dict_int(d, key.c_str(), static_cast<int>(v.get<int64_t>()));
  } else if (v.is_string()) {
    rte_tel_data_add_dict_string(d, key.c_str(), v.get<std::string>().c_str());
  } else if (v.is_array()) {
    rte_tel_data* list = rte_tel_data_alloc();
    if (list == nullptr) return;
    rte_tel_data_start_array(list, RTE_TEL_U64_VAL);
    for (const auto& x : v)
      if (x.is_number_unsigned()) rte_tel_data_add_array_u64(list, x.get<uint64_t>());
    rte_tel_data_add_dict_container(d, key.c_str(), list, 0);
  }
}

/// A flat object (its nested objects and object lists skipped) as a container.
rte_tel_data* container(const json& obj) {
  rte_tel_data* c = rte_tel_data_alloc();
  if (c == nullptr) return nullptr;
  rte_tel_data_start_dict(c);
  for (const auto& [k, v] : obj.items())
    if (!v.is_object() && !(v.is_array() && !v.empty() && v.front().is_object())) put(c, k, v);
  return c;
}

int status(const char*, const char*, rte_tel_data* d) {
  const json j = g_server->status_json(8 * 1024);
  rte_tel_data_start_dict(d);
  for (const char* part : {"node", "view", "clients"})
    for (const auto& [k, v] : j[part].items()) put(d, std::string(part) + "_" + k, v);
  put(d, "segments", j["segments"].size() + j.value("segments_omitted", size_t{0}));
  return 0;
}

int segments(const char*, const char* params, rte_tel_data* d) {
  const json j = g_server->status_json();
  const json& all = j["segments"];
  const size_t pages = std::max<size_t>(1, (all.size() + kSegmentsPerPage - 1) / kSegmentsPerPage);
  const size_t page = params != nullptr && *params != '\0' ? std::strtoul(params, nullptr, 10) : 0;
  if (page >= pages) return -1;  // dpdk-telemetry.py shows the command as failed
  rte_tel_data_start_dict(d);
  rte_tel_data_add_dict_u64(d, "page", page);
  rte_tel_data_add_dict_u64(d, "pages", pages);
  rte_tel_data_add_dict_u64(d, "total", all.size());
  for (size_t i = page * kSegmentsPerPage; i < std::min(all.size(), (page + 1) * kSegmentsPerPage); ++i) {
    json seg = all[i];
    size_t dead = 0;
    for (const auto& r : seg["replicas"]) dead += !r.value("alive", false);
    seg["replicas_alive"] = seg["replicas"].size() - dead;
    seg["under_replicated"] = dead != 0 || seg["replicas"].empty();
    if (rte_tel_data* c = container(seg)) rte_tel_data_add_dict_container(d, ("segment_" + std::to_string(i)).c_str(), c, 0);
  }
  return 0;
}

int peers(const char*, const char*, rte_tel_data* d) {
  const json j = g_server->status_json(4 * 1024);
  rte_tel_data_start_dict(d);
  for (const auto& l : j["links"])
    if (rte_tel_data* c = container(l))
      rte_tel_data_add_dict_container(d, ("peer_" + std::to_string(l.value("peer", 0))).c_str(), c, 0);
  return 0;
}

int stats(const char*, const char*, rte_tel_data* d) {
  const EngineStats s = g_engine->stats();
  const ipc::ServerCounters c = g_server->counters();
  rte_tel_data_start_dict(d);
  const std::pair<const char*, uint64_t> values[] = {
      {"frames_rx", s.frames_rx},           {"frames_tx", s.frames_tx},
      {"misdirected", s.misdirected},       {"retransmits", s.retransmits},
      {"duplicates", s.duplicates},         {"stale_epoch", s.stale_epoch},
      {"published", s.published},           {"corrupt_generations", s.corrupt_generations},
      {"tx_dropped", s.tx_dropped},         {"no_slot", s.no_slot},
      {"bad_input", s.bad_input},           {"stalls", s.stalls},
      {"longest_stall_us", s.longest_stall_us}, {"clients_accepted", c.accepted},
      {"clients_refused_credentials", c.refused_credentials}, {"clients_refused_limit", c.refused_limit},
      {"client_bad_requests", c.bad_requests}, {"client_commits", c.commits},
      {"client_disconnects", c.disconnects},
      // Replication: what travelled whole or as a delta, generations a
      // takeover's kept replicas relabelled instead of receiving again,
      // and loads that took a local copy over (a hot standby's, or a
      // replica's slot mapped in place).
      {"deltas_sent", s.deltas_sent},       {"wholes_sent", s.wholes_sent},
      {"deltas_published", s.deltas_published}, {"restamped", s.restamped},
      {"standby_promotions", s.standby_promotions}, {"replica_promotions", s.replica_promotions},
      {"replica_promotions_chained", s.replica_promotions_chained},
      {"slots_lent", s.slots_lent}, {"direct_reads", s.direct_reads},
      {"direct_read_failures", s.direct_read_failures},
      // Fenced owners' last snapshots kept as replica copies, and loads
      // that took one because every member of the set had lost its own.
      {"fenced_copies_kept", s.fenced_copies_kept}, {"loads_outside_set", s.loads_outside_set}};
  for (const auto& [k, v] : values) rte_tel_data_add_dict_u64(d, k, v);
  rte_tel_data_add_dict_u64(d, "decode_errors", s.decode_errors_total());
  return 0;
}

/// A list of strings as one comma-separated string (telemetry has no
/// string arrays in a dict).
std::string joined(const json& list) {
  std::string out;
  for (const auto& x : list)
    if (x.is_string()) out += (out.empty() ? "" : ",") + x.get<std::string>();
    else if (x.is_number()) out += (out.empty() ? "" : ",") + x.dump();
  return out;
}

int groups(const char*, const char*, rte_tel_data* d) {
  const json j = g_groups ? json::parse(g_groups(), nullptr, false) : json::object();
  if (j.is_discarded()) return -1;
  rte_tel_data_start_dict(d);
  rte_tel_data_add_dict_u64(d, "coordinator", j.value("coordinator", uint64_t{0}));
  const json gs = j.value("groups", json::array());
  const json standby = j.value("standby_instances", json::object());  // this node's, by group
  rte_tel_data_add_dict_u64(d, "groups", gs.size());
  // Keys are indices: a group's name may hold characters a telemetry key
  // may not. At most 16 groups and a chassis of nodes: far below 16 KiB.
  for (size_t i = 0; i < gs.size(); ++i) {
    rte_tel_data* c = rte_tel_data_alloc();
    if (c == nullptr) return -1;
    rte_tel_data_start_dict(c);
    for (const char* k : {"name", "node", "assignment", "state", "priority"})
      if (gs[i].contains(k)) put(c, k, gs[i][k]);
    put(c, "why", gs[i].value("why", std::string()).substr(0, 200));
    put(c, "segments", joined(gs[i].value("segments", json::array())));
    if (auto it = standby.find(gs[i].value("name", std::string())); it != standby.end())
      put(c, "standby_instance_here", *it);
    rte_tel_data_add_dict_container(d, ("group_" + std::to_string(i)).c_str(), c, 0);
  }
  for (const auto& p : j.value("pool", json::array())) {
    rte_tel_data* c = rte_tel_data_alloc();
    if (c == nullptr) return -1;
    rte_tel_data_start_dict(c);
    for (const char* k : {"spare", "cores", "memory_mib", "same_groups", "heard_ms_ago"})
      if (p.contains(k)) put(c, k, p[k]);
    put(c, "runs", joined(p.value("runs", json::array())));
    put(c, "tags", joined(p.value("tags", json::array())));
    rte_tel_data_add_dict_container(d, ("node_" + std::to_string(p.value("node", 0))).c_str(), c, 0);
  }
  const json decisions = j.value("decisions", json::array());
  if (!decisions.empty() && decisions.back().is_string())
    put(d, "last_decision", decisions.back().get<std::string>().substr(0, 400));
  return 0;
}

}  // namespace

void register_telemetry(ipc::Server& server, Engine& engine, std::function<std::string()> groups_json) {
  g_server = &server;
  g_engine = &engine;
  g_groups = std::move(groups_json);
  rte_telemetry_register_cmd("/baton/status", status, "Node, membership view and client counters. No parameters");
  rte_telemetry_register_cmd("/baton/segments", segments,
                             "Segments held here, 40 per page. Parameter: page number (default 0)");
  rte_telemetry_register_cmd("/baton/peers", peers, "Per peer: alive, link up, frames, reconnects. No parameters");
  rte_telemetry_register_cmd("/baton/stats", stats, "Engine and client counters. No parameters");
  rte_telemetry_register_cmd("/baton/groups", groups,
                             "Service groups (group_N), the pool (node_N), the coordinator and its last decision. "
                             "No parameters");
}

}  // namespace baton::batond
