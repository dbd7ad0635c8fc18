// batond's DPDK telemetry commands (tools/batond/telemetry.h) and typed
// `batonctl status --json`, on a real chassis, read with the field's own
// tool: dpdk-telemetry.py.

#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "../common/chassis.h"
#include "baton/baton.h"

namespace {

using baton::test::App;
using baton::test::Chassis;
using baton::test::eventually;
using baton::test::run;
using nlohmann::json;

/// One telemetry command's answer, parsed; null if it failed.
json telemetry(const std::string& prefix, const std::string& command) {
  const std::string out = run("echo '" + command + "' | timeout 20 dpdk-telemetry.py -f " + prefix);
  // The tool prints a banner, then one JSON object per command.
  const auto at = out.rfind("{\"" + command.substr(0, command.find(',')) + "\"");
  if (at == std::string::npos) return nullptr;
  auto j = json::parse(out.substr(at, out.find('\n', at) - at), nullptr, false);
  return j.is_discarded() ? json(nullptr) : j[command.substr(0, command.find(','))];
}

TEST(Telemetry, BatondAnswersDpdkTelemetryAndTypedJson) {
  if (run("command -v dpdk-telemetry.py").empty()) GTEST_SKIP() << "dpdk-telemetry.py is not installed";
  Chassis ch(3, "memif", 2);
  ASSERT_TRUE(ch.up) << ch.out;
  App a(ch.socket(1));
  ASSERT_EQ(a.open("ledger"), 0) << baton_last_error();
  uint64_t gen = 0;
  for (int i = 1; i <= 3; ++i) ASSERT_EQ(a.write(i, &gen), std::make_pair(0, 0)) << baton_last_error();

  // Typed JSON: numbers, booleans and lists, not strings.
  const json st = ch.status_json(1);
  ASSERT_TRUE(st.contains("node")) << ch.status(1);
  EXPECT_TRUE(st["node"]["id"].is_number_integer()) << st.dump();
  EXPECT_TRUE(st["view"]["quorate"].is_boolean()) << st.dump();
  EXPECT_TRUE(st["view"]["members"].is_array()) << st.dump();
  ASSERT_EQ(st["segments"].size(), 1u) << st.dump();
  EXPECT_EQ(st["segments"][0]["name"], "ledger");
  EXPECT_EQ(st["segments"][0]["generation"], gen);
  EXPECT_TRUE(st["segments"][0]["held"].get<bool>());
  EXPECT_TRUE(st["segments"][0]["durable_age_ms"].is_number_integer()) << st.dump();
  // Each link says how long its peer has been silent and since when this
  // node knows the peer's incarnation (a restart would make that young).
  ASSERT_EQ(st["links"].size(), 2u) << st.dump();
  for (const auto& l : st["links"]) {
    EXPECT_TRUE(l["alive"].get<bool>()) << l.dump();
    EXPECT_LT(l["silent_ms"].get<uint64_t>(), 1000u) << l.dump();
    EXPECT_NE(l["incarnation"].get<uint64_t>(), 0u) << "its heartbeats name it: " << l.dump();
    EXPECT_TRUE(l["incarnation_age_s"].is_number_integer()) << l.dump();
    EXPECT_TRUE(l["records"].get<bool>()) << "handed the peer's set records after the start: " << l.dump();
  }
  // A replica node lists the copy it keeps for node 1 (batonctl status
  // listed only segments owned here: a replica node looked empty).
  for (int blade : {2, 3}) {
    json copy;
    EXPECT_TRUE(eventually([&] {
      const json rs = ch.status_json(blade);
      for (const auto& c : rs.value("copies", json::array()))
        if (c.value("name", "") == "ledger") copy = c;
      return copy.is_object() && copy["generation"] == gen;
    })) << ch.status(blade);
    EXPECT_EQ(copy["owner"], 1) << copy.dump();
    EXPECT_TRUE(copy["size"].is_number_integer()) << copy.dump();
    EXPECT_FALSE(copy["standby"].get<bool>()) << copy.dump();
    const std::string text = run(ch.ctl + " segments --socket " + ch.socket(blade));
    EXPECT_NE(text.find("COPY HELD HERE OF"), std::string::npos) << text;
    EXPECT_NE(text.find("ledger"), std::string::npos) << text;
  }
  EXPECT_TRUE(ch.status_json(1)["copies"].empty()) << "the owner keeps no copy of its own";
  ASSERT_TRUE(st["node"]["telemetry"].is_string()) << st.dump();
  const std::string prefix = st["node"]["telemetry"];

  const json status = telemetry(prefix, "/baton/status");
  ASSERT_TRUE(status.is_object()) << prefix;
  EXPECT_EQ(status["node_id"], 1);
  EXPECT_EQ(status["view_quorate"], 1);
  EXPECT_EQ(status["view_members"], json::array({1, 2, 3}));
  EXPECT_EQ(status["segments"], 1);

  const json segments = telemetry(prefix, "/baton/segments,0");
  ASSERT_TRUE(segments.is_object());
  EXPECT_EQ(segments["total"], 1);
  ASSERT_TRUE(segments.contains("segment_0")) << segments.dump();
  EXPECT_EQ(segments["segment_0"]["name"], "ledger");
  EXPECT_EQ(segments["segment_0"]["generation"], gen);
  EXPECT_EQ(segments["segment_0"]["replicas_alive"], 2);
  EXPECT_TRUE(telemetry(prefix, "/baton/segments,7").is_null()) << "a page past the last is an error";

  const json peers = telemetry(prefix, "/baton/peers");
  ASSERT_TRUE(peers.is_object());
  EXPECT_EQ(peers["peer_2"]["alive"], 1) << peers.dump();
  EXPECT_EQ(peers["peer_3"]["alive"], 1) << peers.dump();

  const json stats = telemetry(prefix, "/baton/stats");
  ASSERT_TRUE(stats.is_object());
  EXPECT_GE(stats["client_commits"].get<uint64_t>(), 3u) << stats.dump();
  EXPECT_GT(stats["frames_tx"].get<uint64_t>(), 0u);
  // The replication counters are there, as numbers; the commits went somewhere.
  for (const char* k : {"deltas_sent", "wholes_sent", "deltas_published", "restamped", "standby_promotions",
                        "replica_promotions"})
    EXPECT_TRUE(stats.contains(k) && stats[k].is_number_unsigned()) << k << ": " << stats.dump();
  EXPECT_GT(stats["deltas_sent"].get<uint64_t>() + stats["wholes_sent"].get<uint64_t>(), 0u) << stats.dump();

  // A blade that dies shows as dead to its peers, in both views.
  ::kill(ch.pid(3), SIGKILL);
  ASSERT_TRUE(eventually([&] { return ch.sees_dead(1, 3); })) << ch.status(1);
  EXPECT_TRUE(eventually([&] { return telemetry(prefix, "/baton/peers")["peer_3"]["alive"] == 0; }));
}

}  // namespace
