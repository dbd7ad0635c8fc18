// batonctl: look at and drive Baton nodes.
//
//   batonctl status   [--socket PATH] [--json]     a node: links, segments, replicas, replication lag
//   batonctl segments [--socket PATH] [--json]     its segments only
//   batonctl events   [--socket PATH] [--json]     membership changes and failures, timestamped
//   batonctl load NAME [--socket PATH]             S9: load NAME onto this node (agent for a cluster manager)
//   batonctl chassis up [--blades N] [--replicas K] [--dir D] [--transport memif|af_packet]
//   batonctl chassis status [--dir D] [--json]
//   batonctl chassis down [--dir D]
//   batonctl chassis restart --blade N [--dir D]
//   batonctl demo [--blades N] [--batches N] [--transport memif|af_packet]   the failover demo
//
// Tables for people, --json for scripts; errors on stderr with a non-zero status.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <ctime>
#include <sstream>

#include "baton/baton.h"
#include "chassis.h"
#include "demo.h"
#include "ipc/client.h"

namespace {

int die(const std::string& what) {
  std::fprintf(stderr, "batonctl: %s\n", what.c_str());
  return 1;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

// One status line: a kind and key=value fields (values have no spaces, but
// the last field, name=, may: it runs to the end of the line).
struct Record {
  std::string kind;
  std::vector<std::pair<std::string, std::string>> fields;
  std::string get(const std::string& k) const {
    for (auto& [key, v] : fields)
      if (key == k) return v;
    return "";
  }
};

std::vector<Record> parse_status(const std::string& text) {
  std::vector<Record> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    Record r;
    ls >> r.kind;
    for (std::string kv; ls >> kv;) {
      const auto eq = kv.find('=');
      if (eq == std::string::npos) continue;
      r.fields.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
    out.push_back(std::move(r));
  }
  return out;
}

bool numeric(const std::string& v) { return !v.empty() && v.find_first_not_of("0123456789") == std::string::npos; }

std::string to_json(const Record& r, const std::string& extra = "") {
  std::string o = "{";
  for (size_t i = 0; i < r.fields.size(); ++i) {
    const auto& [k, v] = r.fields[i];
    o += (i ? "," : "") + std::string("\"") + k + "\":" + (numeric(v) ? v : "\"" + json_escape(v) + "\"");
  }
  return o + extra + "}";
}

int status(const std::string& socket, bool json, bool segments_only) {
  auto c = baton::ipc::Client::connect(socket);
  if (!c) return die(c.error().message);
  auto text = (*c)->status();
  if (!text) return die(text.error().message);
  const auto records = parse_status(*text);
  auto replicas_of = [&](const std::string& seg) {
    std::vector<const Record*> out;
    for (auto& r : records)
      if (r.kind == "replica" && r.get("segment") == seg) out.push_back(&r);
    return out;
  };
  if (json) {
    std::string node, view = "null", links, segs;
    for (auto& r : records) {
      if (r.kind == "node") node = to_json(r);
      if (r.kind == "view") view = to_json(r);
      if (r.kind == "link") links += (links.empty() ? "" : ",") + to_json(r);
      if (r.kind == "segment") {
        std::string reps;
        for (auto* rep : replicas_of(r.get("name"))) reps += (reps.empty() ? "" : ",") + to_json(*rep);
        segs += (segs.empty() ? "" : ",") + to_json(r, ",\"replicas\":[" + reps + "]");
      }
    }
    if (segments_only) std::printf("[%s]\n", segs.c_str());
    else
      std::printf("{\"node\":%s,\"view\":%s,\"links\":[%s],\"segments\":[%s]}\n", node.c_str(), view.c_str(),
                  links.c_str(), segs.c_str());
    return 0;
  }
  if (!segments_only) {
    for (auto& r : records)
      if (r.kind == "node") {
        std::printf("node %s (%s)\n", r.get("id").c_str(), r.get("name").c_str());
        // Polls that came late enough for peers to start suspecting this node.
        if (r.get("stalls") != "0" && !r.get("stalls").empty())
          std::printf("  WARNING: %s poll stalls, longest %s ms: this node looks dead to its peers meanwhile\n",
                      r.get("stalls").c_str(), r.get("longest_stall_ms").c_str());
      }
    for (auto& r : records)
      if (r.kind == "view")
        std::printf("view %s: members %s (%s of %s votes), %s%s\n", r.get("id").c_str(), r.get("members").c_str(),
                    r.get("votes").c_str(), r.get("expected").c_str(),
                    r.get("quorate") == "yes" ? "quorate" : "NO QUORUM: no ownership or placement changes here",
                    r.get("agreed") == "yes" ? ", agreed" : ", not yet agreed");
    std::printf("\n");
    std::printf("%-16s %-5s %-6s %-6s %10s %10s %10s\n", "LINK", "PEER", "NODE", "LINK", "RX", "TX", "RECONNECTS");
    for (auto& r : records)
      if (r.kind == "link")
        std::printf("%-16s %-5s %-6s %-6s %10s %10s %10s\n", r.get("name").c_str(), r.get("peer").c_str(),
                    r.get("node").c_str(), r.get("state").c_str(), r.get("rx").c_str(), r.get("tx").c_str(),
                    r.get("reconnects").c_str());
    std::printf("\n");
  }
  std::printf("%-20s %12s %10s %8s %6s %-5s %s\n", "SEGMENT", "SIZE", "GENERATION", "DURABLE", "EPOCH", "APP",
              "REPLICAS node:generation (lag)");
  for (auto& r : records) {
    if (r.kind != "segment") continue;
    std::string reps;
    bool under = false;
    for (auto* rep : replicas_of(r.get("name"))) {
      const bool dead = rep->get("alive") == "no";
      under |= dead;
      if (rep->get("node") == "0") reps += "(empty)  ";  // no live peer to hold it yet
      else reps += rep->get("node") + ":" + rep->get("generation") + " (" + rep->get("lag") + ")" + (dead ? " DEAD" : "") + "  ";
    }
    if (reps.empty() || under) reps += "UNDER-REPLICATED";
    std::printf("%-20s %12s %10s %8s %6s %-5s %s%s\n", r.get("name").c_str(), r.get("size").c_str(),
                r.get("generation").c_str(), r.get("durable").c_str(), r.get("epoch").c_str(), r.get("app").c_str(), reps.c_str(),
                r.get("fenced").empty() ? "" : "  FENCED");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"batonctl: look at and drive Baton nodes"};
  app.require_subcommand(1);
  std::string socket = "/run/baton/batond.sock";
  bool json = false;

  auto* st = app.add_subcommand("status", "a node's links, segments and replicas");
  st->add_option("--socket", socket, "batond's socket");
  st->add_flag("--json", json, "machine-readable output");

  auto* segs = app.add_subcommand("segments", "a node's segments, generations and replicas");
  segs->add_option("--socket", socket, "batond's socket");
  segs->add_flag("--json", json, "machine-readable output");

  auto* ev = app.add_subcommand("events", "recent membership changes and failures, with timestamps");
  ev->add_option("--socket", socket, "batond's socket");
  ev->add_flag("--json", json, "machine-readable output");

  std::string name;
  auto* load = app.add_subcommand("load", "load a segment onto this node from a replica (S9)");
  load->add_option("name", name, "segment name")->required();
  load->add_option("--socket", socket, "batond's socket");

  baton::ctl::ChassisConfig chassis;
  auto* ch = app.add_subcommand("chassis", "a simulated chassis of batond processes on this machine");
  ch->require_subcommand(1);
  auto* up = ch->add_subcommand("up", "start the blades");
  up->add_option("--blades", chassis.blades, "number of blades (2..16)");
  up->add_option("--replicas", chassis.replication_factor, "replication factor");
  up->add_option("--dir", chassis.dir, "where configs, sockets, pids and logs go");
  up->add_option("--transport", chassis.transport, "memif, or af_packet (veth pairs between network namespaces)");
  up->add_option("--backplanes", chassis.backplanes, "af_packet: 1 or 2 veth pairs (links) per pair of blades");
  auto* down = ch->add_subcommand("down", "stop the blades and remove their files");
  down->add_option("--dir", chassis.dir, "the chassis directory");
  int fault_blade = 0, loss = 100, backplane = 0;
  std::vector<int> fault_peers;
  auto* cfault = ch->add_subcommand("fault", "drop frames between a blade and its peers (af_packet chassis; nftables)");
  cfault->add_option("--dir", chassis.dir, "the chassis directory");
  cfault->add_option("--blade", fault_blade, "the blade whose links fail")->required();
  cfault->add_option("--peer", fault_peers, "only the links to these blades (default: all)");
  cfault->add_option("--loss", loss, "percent of frames dropped each way; 100 (default) partitions");
  cfault->add_option("--backplane", backplane, "only this backplane (1 or 2; default: every one)");
  int restart_blade = 0;
  auto* crestart = ch->add_subcommand("restart", "start a blade whose batond died (a new, empty incarnation)");
  crestart->add_option("--dir", chassis.dir, "the chassis directory");
  crestart->add_option("--blade", restart_blade, "the blade to start")->required();
  auto* cheal = ch->add_subcommand("heal", "remove every fault");
  cheal->add_option("--dir", chassis.dir, "the chassis directory");
  auto* cst = ch->add_subcommand("status", "which blades run");
  cst->add_option("--dir", chassis.dir, "the chassis directory");
  cst->add_flag("--json", json, "machine-readable output");

  baton::ctl::DemoConfig demo;
  auto* dm = app.add_subcommand("demo", "chassis failover demo: kill a blade, resume on another");
  dm->add_option("--blades", demo.blades, "number of blades (3..16)");
  dm->add_option("--batches", demo.batches, "batches committed before the kill");
  dm->add_option("--transport", demo.transport, "memif, or af_packet (veth pairs between network namespaces)");

  CLI11_PARSE(app, argc, argv);

  if (*st) return status(socket, json, false);
  if (*segs) return status(socket, json, true);
  if (*ev) {
    auto c = baton::ipc::Client::connect(socket);
    if (!c) return die(c.error().message);
    auto text = (*c)->events();
    if (!text) return die(text.error().message);
    std::istringstream in(*text);
    bool first = true;
    if (json) std::printf("[");
    for (std::string line; std::getline(in, line);) {
      const auto sp = line.find(' ');
      const uint64_t us = std::stoull(line.substr(0, sp));
      const std::string what = line.substr(sp + 1);
      if (json) {
        std::printf("%s{\"unix_us\":%llu,\"event\":\"%s\"}", first ? "" : ",", static_cast<unsigned long long>(us),
                    json_escape(what).c_str());
      } else {
        const time_t secs = static_cast<time_t>(us / 1'000'000);
        char when[32];
        std::strftime(when, sizeof when, "%F %T", std::localtime(&secs));
        std::printf("%s.%06llu  %s\n", when, static_cast<unsigned long long>(us % 1'000'000), what.c_str());
      }
      first = false;
    }
    if (json) std::printf("]\n");
    return 0;
  }
  if (*load) {
    baton_t* b = nullptr;
    baton_segment_t* s = nullptr;
    uint64_t gen = 0;
    if (baton_connect(socket.c_str(), &b) != 0) return die(baton_last_error());
    if (baton_load(b, name.c_str(), &s, &gen) != 0) {
      std::string e = baton_last_error();
      baton_stop(b);
      return die("load " + name + ": " + e);
    }
    std::printf("loaded %s generation %llu (%llu bytes) onto this node\n", name.c_str(),
                static_cast<unsigned long long>(gen), static_cast<unsigned long long>(baton_segment_size(s)));
    baton_stop(b);  // the daemon keeps the segment for the application
    return 0;
  }
  if (*up) {
    chassis.batond = baton::ctl::sibling("batond");
    auto blades = baton::ctl::chassis_up(chassis);
    if (!blades) return die(blades.error().message);
    std::printf("%-6s %-8s %s\n", "blade", "pid", "socket");
    for (auto& b : *blades) std::printf("%-6d %-8d %s\n", b.id, b.pid, b.socket.c_str());
    return 0;
  }
  if (*down) {
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
    if (json) {
      std::printf("[");
      for (size_t i = 0; i < blades.size(); ++i)
        std::printf("%s{\"blade\":%d,\"pid\":%d,\"alive\":%s,\"socket\":\"%s\"}", i ? "," : "", blades[i].id,
                    blades[i].pid, blades[i].alive ? "true" : "false", json_escape(blades[i].socket).c_str());
      std::printf("]\n");
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
