// batonctl: look at and drive Baton nodes.
//
//   batonctl status   [--socket PATH] [--json]     a node: links, segments, replicas, replication lag
//   batonctl segments [--socket PATH] [--json]     its segments only
//   batonctl events   [--socket PATH] [--json]     membership changes and failures, timestamped
//   batonctl groups   [--socket PATH] [--json]     service groups, the spare pool, the last failover decisions
//   batonctl load NAME [--socket PATH]             S9: load NAME onto this node (agent for a cluster manager)
//   batonctl chassis up [--blades N] [--replicas K] [--dir D] [--transport memif|af_packet|shm|mixed] [--workers N]
//                       [--membership backplane|corosync] [--groups FILE] [--spares 3,4] [--cores 2,2,2,8]
//   batonctl chassis status [--dir D] [--json]
//   batonctl chassis down [--dir D]
//   batonctl chassis restart --blade N [--dir D]
//   batonctl demo [--blades N] [--batches N] [--transport memif|af_packet|shm|mixed]   the failover demo
//
// Tables for people, --json for scripts (typed JSON: numbers are numbers,
// booleans booleans, lists lists); errors on stderr with a non-zero status.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "baton/baton.h"
#include "chassis.h"
#include "demo.h"
#include "ipc/client.h"

namespace {

using baton::Errc;
using baton::Result;
using baton::fail;

/// JSON as text; a string that is not UTF-8 is replaced, never thrown on.
std::string to_text(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

int die(const std::string& what) {
  // What a caller typed comes back in messages: control bytes are shown, not sent to the terminal.
  std::string shown;
  for (unsigned char c : what) {
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      shown += hex;
    } else {
      shown += static_cast<char>(c);
    }
  }
  std::fprintf(stderr, "batonctl: %s\n", shown.c_str());
  return 1;
}

using nlohmann::json;

// The daemon's status as JSON (engine/ipc/server.h, Server::status_json).
Result<json> fetch_status(const std::string& socket) {
  auto c = baton::ipc::Client::connect(socket);
  if (!c) return tl::unexpected(c.error());
  auto text = (*c)->status();
  if (!text) return tl::unexpected(text.error());
  auto j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(Errc::kInternal, "batond sent a status that is not JSON");
  return j;
}

std::string members_text(const json& members) {
  std::string out;
  for (const auto& m : members) out += (out.empty() ? "" : ",") + std::to_string(m.get<int>());
  return "{" + out + "}";
}

/// What counts as recent for a stall or a storage failure in `status`.
constexpr unsigned long long kRecentS = 300;

// Global storage (S7): what the replicas wrote there, and a warning while it fails.
void print_storage(const json& st) {
  auto num = [&](const char* key) { return st.value(key, 0ull); };
  // (A key another batond's version lacks is missing, not null.)
  auto is = [&](const char* key, auto test) { return st.contains(key) && test(st[key]); };
  std::printf("global storage %s: %llu generations written", st.value("dir", "").c_str(), num("written"));
  if (is("last_write_s_ago", [](const json& v) { return v.is_number(); }))
    std::printf(" (the last %llu s ago)", num("last_write_s_ago"));
  std::printf(", %llu failed, %llu skipped (the writer behind)\n", num("failed"), num("skipped"));
  const bool failing = st.value("failing", false);
  if (!is("last_error", [](const json& v) { return v.is_string(); })) return;
  const std::string error = st["last_error"].get<std::string>();
  if (failing)
    std::printf("  WARNING: failing for %llu s: %s\n  generations committed meanwhile are only in memory: a "
                "restore after every node lost its memory may be older\n",
                num("failing_for_s"), error.c_str());
  else if (num("last_error_s_ago") < kRecentS)
    std::printf("  the last failure %llu s ago, writing again since: %s\n", num("last_error_s_ago"), error.c_str());
}

int status(const std::string& socket, bool as_json, bool segments_only) {
  auto got = fetch_status(socket);
  if (!got) return die(got.error().message);
  const json& j = *got;
  if (as_json) {
    std::printf("%s\n", to_text(segments_only ? j.value("segments", json::array()) : j).c_str());
    return 0;
  }
  if (!segments_only) {
    const json& node = j["node"];
    std::printf("node %d (%s)\n", node.value("id", 0), node.value("name", "").c_str());
    // Polls that came late enough for peers to start suspecting this node:
    // a warning while they are recent, a note once they are past.
    if (node.value("stalls", 0) != 0) {
      const bool known = node.contains("last_stall_s_ago") && node["last_stall_s_ago"].is_number();
      const unsigned long long secs = known ? node["last_stall_s_ago"].get<unsigned long long>() : 0;
      if (!known || secs < kRecentS)
        std::printf("  WARNING: %llu poll stalls, longest %llu ms%s: this node looks dead to its peers meanwhile\n",
                    node.value("stalls", 0ull), node.value("longest_stall_ms", 0ull),
                    known ? (", the last " + std::to_string(secs) + " s ago").c_str() : "");
      else
        std::printf("  %llu poll stalls since batond started, longest %llu ms, none in the last %llu s\n",
                    node.value("stalls", 0ull), node.value("longest_stall_ms", 0ull), secs);
    }
    if (node.contains("telemetry") && node["telemetry"].is_string())
      std::printf("  telemetry: dpdk-telemetry.py -f %s\n", node["telemetry"].get<std::string>().c_str());
    const json& v = j["view"];
    std::printf("view %llu: members %s (%zu of %u votes), %s%s\n", v.value("id", 0ull),
                members_text(v.value("members", json::array())).c_str(), v.value("votes", size_t{0}),
                v.value("expected", 0u),
                v.value("quorate", false) ? "quorate" : "NO QUORUM: no ownership or placement changes here",
                v.value("agreed", false) ? ", agreed" : ", not yet agreed");
    const json& cl = j["clients"];
    std::printf("clients: %llu accepted, %llu refused, %llu bad requests, %llu commits\n",
                cl.value("accepted", 0ull), cl.value("refused_credentials", 0ull) + cl.value("refused_limit", 0ull),
                cl.value("bad_requests", 0ull), cl.value("commits", 0ull));
    if (j.contains("replication") && j["replication"].is_object()) {
      const json& r = j["replication"];
      std::printf("replication: sent %llu generations whole, %llu as deltas (%llu chunks resent); held %llu "
                  "(%llu from deltas, %llu relabelled); loads that took this node's copy over: %llu standby, %llu "
                  "replica (%llu with a stage kept current)\n",
                  r.value("wholes_sent", 0ull), r.value("deltas_sent", 0ull), r.value("retransmits", 0ull),
                  r.value("published", 0ull), r.value("deltas_published", 0ull), r.value("restamped", 0ull),
                  r.value("standby_promotions", 0ull), r.value("replica_promotions", 0ull),
                  r.value("replica_promotions_chained", 0ull));
      if (r.value("slots_lent", 0ull) + r.value("direct_reads", 0ull) != 0)
        std::printf("  direct reads (shared memory): %llu slots lent to loaders, %llu loads read a lent slot "
                    "(%llu failed and were streamed)\n",
                    r.value("slots_lent", 0ull), r.value("direct_reads", 0ull), r.value("direct_read_failures", 0ull));
      if (r.value("fenced_copies_kept", 0ull) + r.value("loads_outside_set", 0ull) != 0)
        std::printf("  fenced owners' last snapshots kept as replica copies: %llu; loads that took one (every member "
                    "of the set had lost its copy): %llu\n",
                    r.value("fenced_copies_kept", 0ull), r.value("loads_outside_set", 0ull));
      if (r.value("corrupt_generations", 0ull) != 0)
        std::printf("  WARNING: %llu received generations failed their checksum (sent again)\n",
                    r.value("corrupt_generations", 0ull));
    }
    if (j.contains("frames") && j["frames"].is_object()) {
      const json& f = j["frames"];
      std::printf("frames: %llu received, %llu sent; %llu control frames dropped, %llu refused "
                  "(%llu undecodable, %llu misdirected, %llu bad); notes %llu received, %llu dropped\n",
                  f.value("rx", 0ull), f.value("tx", 0ull), f.value("tx_dropped", 0ull),
                  f.value("decode_errors", 0ull) + f.value("misdirected", 0ull) + f.value("bad_input", 0ull),
                  f.value("decode_errors", 0ull), f.value("misdirected", 0ull), f.value("bad_input", 0ull),
                  f.value("notes_rx", 0ull), f.value("notes_dropped", 0ull));
    }
    if (j.contains("storage") && j["storage"].is_object()) print_storage(j["storage"]);
    const size_t shards = node.value("shards", json::array()).size();
    if (shards > 1) std::printf("shards: %zu (per-core workers; the SHARD column says whose link)\n", shards);
    std::printf("\n");
    std::printf("%-16s %-5s %-5s %-6s %-6s %10s %10s %10s %10s %10s  %s\n", "LINK", "SHARD", "PEER", "NODE", "LINK", "RX",
                "TX", "RECONNECTS", "SILENT ms", "STARTED s", "RECORDS");
    for (const auto& l : j.value("links", json::array())) {
      // How long ago this node first heard the peer's current incarnation:
      // small after the peer restarted (it lost what it held).
      const std::string started =
          l.value("incarnation", 0ull) != 0 ? std::to_string(l.value("incarnation_age_s", 0ull)) : "-";
      // Whether this node was handed the peer's set records since its start.
      std::printf("%-16s %-5d %-5d %-6s %-6s %10llu %10llu %10llu %10llu %10s  %s\n", l.value("name", "").c_str(),
                  l.value("shard", 0), l.value("peer", 0), l.value("alive", false) ? "alive" : "dead", l.value("up", false) ? "up" : "down",
                  l.value("rx", 0ull), l.value("tx", 0ull), l.value("reconnects", 0ull), l.value("silent_ms", 0ull),
                  started.c_str(), l.value("records", false) ? "had" : "asking");
    }
    std::printf("\n");
  }
  std::printf("%-20s %12s %10s %8s %6s %-5s %s\n", "SEGMENT", "SIZE", "GENERATION", "DURABLE", "EPOCH", "APP",
              "REPLICAS node:generation (lag)");
  for (const auto& seg : j.value("segments", json::array())) {
    std::string reps;
    bool under = false;
    for (const auto& rep : seg.value("replicas", json::array())) {
      const bool dead = !rep.value("alive", false);
      under |= dead;
      if (rep.value("node", 0) == 0) reps += "(empty)  ";  // no live peer to hold it yet
      else
        reps += std::to_string(rep.value("node", 0)) + ":" + std::to_string(rep.value("generation", 0ull)) + " (" +
                std::to_string(rep.value("lag", 0ull)) + ")" + (rep.value("standby", false) ? " standby" : "") +
                (dead ? " DEAD" : "") + "  ";
    }
    if (reps.empty() || under) reps += "UNDER-REPLICATED";
    std::printf("%-20s %12llu %10llu %8llu %6llu %-5s %s%s\n", seg.value("name", "").c_str(),
                seg.value("size", 0ull), seg.value("generation", 0ull), seg.value("durable", 0ull),
                seg.value("epoch", 0ull), seg.value("held", false) ? "held" : "free", reps.c_str(),
                seg.value("fenced", false) ? "  FENCED" : "");
  }
  if (j.value("segments_omitted", 0) != 0)
    std::printf("(%d more segments: the reply has no room for them)\n", j.value("segments_omitted", 0));
  // The copies this node keeps for owners elsewhere: what a load here, or
  // a restart of every other node, would start from.
  const json copies = j.value("copies", json::array());
  if (!copies.empty() || j.value("copies_omitted", 0) != 0) {
    std::printf("\n%-20s %12s %10s %6s %6s %s\n", "COPY HELD HERE OF", "SIZE", "GENERATION", "EPOCH", "OWNER", "");
    for (const auto& c : copies)
      std::printf("%-20s %12llu %10llu %6llu %6d %s\n", c.value("name", "").c_str(), c.value("size", 0ull),
                  c.value("generation", 0ull), c.value("epoch", 0ull), c.value("owner", 0),
                  c.value("standby", false) ? "hot standby" : "");
    if (j.value("copies_omitted", 0) != 0)
      std::printf("(%d more copies: the reply has no room for them)\n", j.value("copies_omitted", 0));
  }
  const json standbys = j.value("standbys", json::array());
  if (!segments_only && !standbys.empty()) {
    std::printf("\n%-20s %6s %6s %10s %10s %6s %12s\n", "HOT STANDBY OF", "OWNER", "EPOCH", "NEWEST", "READY", "LAG",
                "BEHIND BYTES");
    for (const auto& sb : standbys)
      std::printf("%-20s %6d %6llu %10llu %10llu %6llu %12llu\n", sb.value("name", "").c_str(), sb.value("owner", 0),
                  sb.value("epoch", 0ull), sb.value("newest", 0ull), sb.value("ready", 0ull), sb.value("lag", 0ull),
                  sb.value("behind_bytes", 0ull));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"batonctl: look at and drive Baton nodes"};
  app.require_subcommand(1);
  std::string socket = "/run/baton/batond.sock";
  bool json_out = false;

  auto* st = app.add_subcommand("status", "a node's links, segments and replicas");
  st->add_option("--socket", socket, "batond's socket");
  st->add_flag("--json", json_out, "machine-readable output");

  auto* segs = app.add_subcommand("segments", "a node's segments, generations and replicas");
  segs->add_option("--socket", socket, "batond's socket");
  segs->add_flag("--json", json_out, "machine-readable output");

  auto* grp = app.add_subcommand("groups", "service groups: where each runs, the spare pool, the last decisions");
  grp->add_option("--socket", socket, "batond's socket");
  grp->add_flag("--json", json_out, "machine-readable output");
  auto* ev = app.add_subcommand("events", "recent membership changes and failures, with timestamps");
  ev->add_option("--socket", socket, "batond's socket");
  ev->add_flag("--json", json_out, "machine-readable output");

  std::string name;
  auto* load = app.add_subcommand(
      "load", "load a segment onto this node from a replica (S9); exit 3: no copy anywhere, 4: already here");
  load->add_option("name", name, "segment name")->required();
  load->add_option("--socket", socket, "batond's socket");

  auto* del = app.add_subcommand("delete", "delete a segment everywhere; the next open of the name starts fresh");
  del->add_option("name", name, "segment name")->required();
  del->add_option("--socket", socket, "batond's socket");

  baton::ctl::ChassisConfig chassis;
  auto* ch = app.add_subcommand("chassis", "a simulated chassis of batond processes on this machine");
  ch->require_subcommand(1);
  auto* up = ch->add_subcommand("up", "start the blades");
  up->add_option("--blades", chassis.blades, "number of blades (2..16)");
  auto* replicas = up->add_option("--replicas", chassis.replication_factor, "replication factor (default 2, 1 with two blades)");
  up->add_option("--retain", chassis.retain, "older generations each replica keeps (0..64, default 0)")
      ->check(CLI::Range(0, 64));
  up->add_option("--dir", chassis.dir, "where configs, sockets, pids and logs go")->capture_default_str();
  up->add_option("--transport", chassis.transport,
                 "memif, af_packet (veth pairs between network namespaces), shm (regions in /dev/shm), or mixed "
                 "(blades two by two one server: shm inside, memif between)");
  up->add_option("--groups", chassis.groups_file,
                 "a TOML file appended to every blade's config: [[group]] tables (service groups), [snapshots], "
                 "[[standby]], ...");
  up->add_option("--spares", chassis.spares, "blades in the spare pool")->delimiter(',');
  up->add_option("--cores", chassis.cores, "each blade's cores, for service groups' minimums")->delimiter(',');
  up->add_option("--chunk-kib", chassis.chunk_kib,
                 "chunk size in KiB (1..60): one for every blade, or one per blade (default: the daemons' 16)")
      ->delimiter(',');
  up->add_option("--membership", chassis.membership,
                 "where views come from: backplane (heartbeats, default) or corosync (this host's corosync)");
  up->add_option("--backplanes", chassis.backplanes, "af_packet: 1 or 2 veth pairs (links) per pair of blades");
  up->add_option("--workers", chassis.workers,
                 "per-core shards per blade (1..8; memif, shm or mixed): a queue pair or region per shard");
  up->add_flag("--spin", chassis.spin,
               "workers never sleep, blade N's pinned to CPU N-1 (a CPU per blade; detector 100 us / 500 us)");
  bool memif_zero_copy = false;
  up->add_flag("--memif-zero-copy", memif_zero_copy,
               "memif links' client ends (the higher node id) in zero-copy mode (default: copy mode at both ends)");
  bool stream_fetches = false;
  up->add_flag("--stream-fetches", stream_fetches,
               "shm links: stream every fetch through the rings instead of reading a peer's lent slot directly");
  auto* down = ch->add_subcommand("down", "stop the blades and remove their files");
  down->add_option("--dir", chassis.dir, "the chassis directory")->capture_default_str();
  int fault_blade = 0, loss = 100, backplane = 0;
  std::vector<int> fault_peers;
  auto* cfault = ch->add_subcommand("fault", "drop frames between a blade and its peers (af_packet chassis; nftables)");
  cfault->add_option("--dir", chassis.dir, "the chassis directory")->capture_default_str();
  cfault->add_option("--blade", fault_blade, "the blade whose links fail")->required();
  cfault->add_option("--peer", fault_peers, "only the links to these blades (default: all)");
  cfault->add_option("--loss", loss, "percent of frames dropped each way; 100 (default) partitions");
  cfault->add_option("--backplane", backplane, "only this backplane (1 or 2; default: every one)");
  int restart_blade = 0;
  auto* crestart = ch->add_subcommand("restart", "start a blade whose batond died (a new, empty incarnation)");
  crestart->add_option("--dir", chassis.dir, "the chassis directory")->capture_default_str();
  crestart->add_option("--blade", restart_blade, "the blade to start")->required();
  auto* cheal = ch->add_subcommand("heal", "remove every fault");
  cheal->add_option("--dir", chassis.dir, "the chassis directory")->capture_default_str();
  auto* cst = ch->add_subcommand("status", "which blades run");
  cst->add_option("--dir", chassis.dir, "the chassis directory")->capture_default_str();
  cst->add_flag("--json", json_out, "machine-readable output");

  baton::ctl::DemoConfig demo;
  auto* dm = app.add_subcommand("demo", "chassis failover demo: kill a blade, resume on another");
  dm->add_option("--blades", demo.blades, "number of blades (3..16)");
  dm->add_option("--batches", demo.batches, "batches committed before the kill");
  dm->add_option("--transport", demo.transport,
                 "memif, af_packet (veth pairs between network namespaces), shm (regions in /dev/shm), or mixed "
                 "(blades two by two one server: shm inside, memif between)");
  dm->add_option("--workers", demo.workers, "per-core shards per blade (1..8; memif, shm or mixed)");

  // An unknown command: CLI11 says nothing at all for one where a
  // subcommand is required (exit 106, no message).
  if (argc > 1 && argv[1][0] != '-') {
    std::string known;
    bool found = false;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      found |= sub->get_name() == argv[1];
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (!found) {
      std::fprintf(stderr, "batonctl: no command \"%s\" (the commands: %s; --help says more)\n", argv[1],
                   known.c_str());
      return 2;
    }
  }
  CLI11_PARSE(app, argc, argv);
  // A chassis directory given relative to where batonctl runs: the blades'
  // configs name their sockets and files by absolute path.
  if (!chassis.dir.empty()) {
    std::error_code ec;
    const auto abs = std::filesystem::absolute(chassis.dir, ec);
    if (ec) return die("--dir " + chassis.dir + ": " + ec.message());
    chassis.dir = abs.lexically_normal().string();
    if (chassis.dir.size() > 1 && chassis.dir.back() == '/') chassis.dir.pop_back();
  }

  if (*st) return status(socket, json_out, false);
  if (*segs) return status(socket, json_out, true);
  if (*grp) {
    auto c = baton::ipc::Client::connect(socket);
    if (!c) return die(c.error().message);
    auto text = (*c)->groups();
    if (!text) return die(text.error().message);
    const json j = json::parse(*text, nullptr, false);
    if (j.is_discarded()) return die("batond's reply is not JSON");
    if (json_out) {
      std::printf("%s\n", to_text(j).c_str());
      return 0;
    }
    // No coordinator: no quorate, agreed view, or no groups to decide on
    // (the failover manager does not run then).
    const int coordinator = j.value("coordinator", 0);
    const std::string who = coordinator != 0 ? "node " + std::to_string(coordinator)
                            : j.value("groups", json::array()).empty()
                                ? "none (no [[group]] tables in this node's config)"
                                : "none (no quorate, agreed view)";
    std::printf("coordinator: %s\n", who.c_str());
    std::printf("%-16s %-6s %-14s %-10s %-8s %s\n", "group", "node", "assignment", "state", "priority", "why");
    for (const auto& g : j.value("groups", json::array()))
      std::printf("%-16s %-6d %-14llu %-10s %-8d %s\n", g.value("name", "").c_str(), g.value("node", 0),
                  static_cast<unsigned long long>(g.value("assignment", uint64_t{0})), g.value("state", "").c_str(),
                  g.value("priority", 0), g.value("why", "").c_str());
    std::printf("\n%-6s %-5s %-6s %-6s %-10s %-12s %s\n", "node", "up", "spare", "cores", "memory_mib", "runs", "tags");
    for (const auto& p : j.value("pool", json::array())) {
      std::string runs, tags;
      for (const auto& r : p.value("runs", json::array())) runs += (runs.empty() ? "" : ",") + r.get<std::string>();
      for (const auto& t : p.value("tags", json::array())) tags += (tags.empty() ? "" : ",") + t.get<std::string>();
      const bool up = p.value("up", true);
      // A node that is down shows what it last reported running.
      if (!up && !runs.empty()) runs = "(" + runs + ")";
      if (!p.value("same_groups", true)) tags += "  [its [[group]] tables differ from this node's: not eligible]";
      std::printf("%-6d %-5s %-6s %-6d %-10llu %-12s %s\n", p.value("node", 0), up ? "yes" : "DOWN",
                  p.value("spare", false) ? "yes" : "no", p.value("cores", 0),
                  static_cast<unsigned long long>(p.value("memory_mib", uint64_t{0})), runs.empty() ? "-" : runs.c_str(),
                  tags.c_str());
    }
    const auto standbys = j.value("standby_instances", json::object());
    if (!standbys.empty()) std::printf("\nstandby instances on this node:\n");
    for (const auto& [group, state] : standbys.items())
      std::printf("  %-16s %s\n", group.c_str(), state.is_string() ? state.get<std::string>().c_str() : "?");
    const auto decisions = j.value("decisions", json::array());
    if (!decisions.empty()) std::printf("\nlast decisions (this node's, as coordinator):\n");
    for (const auto& d : decisions) std::printf("  %s\n", d.get<std::string>().c_str());
    return 0;
  }
  if (*ev) {
    auto c = baton::ipc::Client::connect(socket);
    if (!c) return die(c.error().message);
    auto events = (*c)->events();
    if (!events) return die(events.error().message);
    json list = json::array();
    for (const auto& [us, what] : *events) {
      if (json_out) {
        list.push_back({{"unix_us", us}, {"event", what}});
      } else {
        const time_t secs = static_cast<time_t>(us / 1'000'000);
        char when[32];
        std::strftime(when, sizeof when, "%F %T", std::localtime(&secs));
        std::printf("%s.%06llu  %s\n", when, static_cast<unsigned long long>(us % 1'000'000), what.c_str());
      }
    }
    if (json_out) std::printf("%s\n", to_text(list).c_str());
    return 0;
  }
  if (*load) {
    // Ownership moves here and batond keeps the segment for the
    // application; nothing is mapped into this process, so the
    // application's open finds the memory exactly as loaded.
    auto c = baton::ipc::Client::connect(socket);
    if (!c) return die(c.error().message);
    auto got = (*c)->take_over(name);
    if (!got) {
      die("load " + name + ": " + got.error().message);
      // Distinct exit codes for what a cluster manager's agent acts on
      // (tools/ocf/baton): nothing to load, or it is already here.
      const baton::Errc code = got.error().code;
      return code == baton::Errc::kNotFound ? 3 : code == baton::Errc::kExists ? 4 : 1;
    }
    std::printf("loaded %s generation %llu (%llu bytes) onto this node\n", name.c_str(),
                static_cast<unsigned long long>(got->generation), static_cast<unsigned long long>(got->size));
    return 0;
  }
  if (*del) {
    baton_t* b = nullptr;
    if (baton_connect(socket.c_str(), &b) != 0) return die(baton_last_error());
    const int rc = baton_delete(b, name.c_str());
    const std::string e = baton_last_error();
    baton_stop(b);
    if (rc != 0) return die("delete " + name + ": " + e);
    std::printf("deleted %s everywhere\n", name.c_str());
    return 0;
  }
  if (*up) {
    // Two blades hold one replica each of the other's: the default factor
    // of 2 needs three.
    if (replicas->count() == 0 && chassis.blades == 2) chassis.replication_factor = 1;
    chassis.batond = baton::ctl::sibling("batond");
    chassis.direct_reads = !stream_fetches;
    chassis.memif_zero_copy = memif_zero_copy;
    auto blades = baton::ctl::chassis_up(chassis);
    if (!blades) return die(blades.error().message);
    std::printf("%-6s %-8s %s\n", "blade", "pid", "socket");
    for (auto& b : *blades) std::printf("%-6d %-8d %s\n", b.id, b.pid, b.socket.c_str());
    return 0;
  }
  if (*down) {
    if (std::error_code ec; !std::filesystem::exists(chassis.dir, ec)) {
      std::fprintf(stderr, "batonctl: no chassis in %s: nothing to stop\n", chassis.dir.c_str());
      return 0;  // down stays safe to run twice
    }
    auto ok = baton::ctl::chassis_down(chassis.dir);
    return ok ? 0 : die(ok.error().message);
  }
  if (*cfault) {
    auto ok = baton::ctl::chassis_fault(chassis.dir, fault_blade, fault_peers, loss, backplane);
    return ok ? 0 : die(ok.error().message);
  }
  if (*crestart) {
    auto pid = baton::ctl::chassis_restart(chassis.dir, restart_blade);
    if (!pid) return die(pid.error().message);
    std::printf("blade %d restarted: pid %d\n", restart_blade, *pid);
    return 0;
  }
  if (*cheal) {
    auto ok = baton::ctl::chassis_heal(chassis.dir);
    return ok ? 0 : die(ok.error().message);
  }
  if (*cst) {
    auto blades = baton::ctl::chassis_blades(chassis.dir);
    if (blades.empty()) return die("no chassis in " + chassis.dir);
    if (json_out) {
      json list = json::array();
      for (const auto& b : blades)
        list.push_back({{"blade", b.id}, {"pid", b.pid}, {"alive", b.alive}, {"socket", b.socket}});
      std::printf("%s\n", to_text(list).c_str());
    } else {
      std::printf("%-6s %-8s %-6s %s\n", "blade", "pid", "state", "socket");
      for (auto& b : blades) std::printf("%-6d %-8d %-6s %s\n", b.id, b.pid, b.alive ? "up" : "DOWN", b.socket.c_str());
    }
    return 0;
  }
  if (*dm) {
    if (demo.blades < 3 || demo.blades > 16) return die("--blades must be 3..16");
    if (demo.batches < 1) return die("--batches must be at least 1");
    return baton::ctl::run_demo(demo);
  }
  return 1;
}
