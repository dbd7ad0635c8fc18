// The failover manager's notes (failover/codec.h).

#include "failover/codec.h"

#include <nlohmann/json.hpp>

#include "protocol/wire.h"

namespace baton::failover {

using nlohmann::json;

namespace {

constexpr size_t kMaxText = 63;     // group names, tags
constexpr size_t kMaxReason = 640;  // an assignment's reason (cut): with the rest, within a note

std::string cut(const std::string& s, size_t n) { return s.size() <= n ? s : s.substr(0, n); }

}  // namespace

Result<std::string> encode_report(const NodeReport& r) {
  json runs = json::array();
  for (const auto& run : r.runs)
    runs.push_back(json::array({run.group, run.seq, static_cast<int>(run.state), cut(run.why, 120)}));
  json j = {{"t", "r"},
            {"n", r.node},
            {"h", r.groups_hash},
            {"c", r.caps.cores},
            {"m", r.caps.memory_mib},
            {"s", r.caps.spare},
            {"tg", r.caps.tags},
            {"g", runs}};
  if (r.ask != 0) j["a"] = r.ask;
  if (r.answer != 0) j["k"] = r.answer;
  std::string out = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (out.size() > wire::kMaxNote)
    return fail(Errc::kInvalidArgument, "this node's report takes ", std::to_string(out.size()),
                " bytes; a note carries ", std::to_string(wire::kMaxNote), " (fewer or shorter tags)");
  return out;
}

std::string encode_assignment(const Assignment& a) {
  json j = {{"t", "a"}, {"g", a.group}, {"n", a.node}, {"q", a.seq}, {"c", a.coordinator}};
  if (!a.reason.empty()) {
    j["r"] = cut(a.reason, kMaxReason);
    std::string out = j.dump(-1, ' ', false, json::error_handler_t::replace);
    if (out.size() <= wire::kMaxNote) return out;
    j.erase("r");  // escaped past a note's size: the decision goes without its reason
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<Message> decode_note(std::string_view bytes) {
  if (bytes.size() > wire::kMaxNote) return fail(Errc::kInvalidArgument, "note too long");
  const json j = json::parse(bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(Errc::kInvalidArgument, "not a JSON object");
  auto bad = [](const char* what) { return fail(Errc::kInvalidArgument, "bad or missing field ", what); };
  auto node_id = [](const json& v) { return v.is_number_unsigned() && v.get<uint64_t>() >= 1 && v.get<uint64_t>() <= 65534; };
  auto text = [](const json& v) { return v.is_string() && !v.get_ref<const std::string&>().empty() && v.get_ref<const std::string&>().size() <= kMaxText; };
  const auto t = j.find("t");
  if (t == j.end() || !t->is_string()) return bad("t");
  if (*t == "a") {
    Assignment a;
    if (!j.contains("g") || !text(j["g"])) return bad("g");
    if (!j.contains("n") || !node_id(j["n"])) return bad("n");
    if (!j.contains("c") || !node_id(j["c"])) return bad("c");
    if (!j.contains("q") || !j["q"].is_number_unsigned() || j["q"].get<uint64_t>() == 0) return bad("q");
    a.group = j["g"].get<std::string>();
    a.node = j["n"].get<uint16_t>();
    a.coordinator = j["c"].get<uint16_t>();
    a.seq = j["q"].get<uint64_t>();
    if (j.contains("r")) {
      if (!j["r"].is_string() || j["r"].get_ref<const std::string&>().size() > kMaxReason) return bad("r");
      a.reason = j["r"].get<std::string>();
    }
    return Message{a};
  }
  if (*t != "r") return fail(Errc::kInvalidArgument, "unknown note kind");
  NodeReport r;
  if (!j.contains("n") || !node_id(j["n"])) return bad("n");
  if (!j.contains("h") || !j["h"].is_number_unsigned()) return bad("h");
  if (!j.contains("c") || !j["c"].is_number_unsigned() || j["c"].get<uint64_t>() > 1'000'000) return bad("c");
  if (!j.contains("m") || !j["m"].is_number_unsigned()) return bad("m");
  if (!j.contains("s") || !j["s"].is_boolean()) return bad("s");
  if (!j.contains("tg") || !j["tg"].is_array()) return bad("tg");
  if (!j.contains("g") || !j["g"].is_array()) return bad("g");
  for (const char* f : {"a", "k"})
    if (j.contains(f) && !j[f].is_number_unsigned()) return bad(f);
  r.node = j["n"].get<uint16_t>();
  r.groups_hash = j["h"].get<uint64_t>();
  r.ask = j.value("a", uint64_t{0});
  r.answer = j.value("k", uint64_t{0});
  r.caps.cores = j["c"].get<uint32_t>();
  r.caps.memory_mib = j["m"].get<uint64_t>();
  r.caps.spare = j["s"].get<bool>();
  for (const auto& tag : j["tg"]) {
    if (!text(tag)) return bad("tg");
    r.caps.tags.push_back(tag.get<std::string>());
  }
  for (const auto& run : j["g"]) {
    if (!run.is_array() || run.size() != 4 || !text(run[0]) || !run[1].is_number_unsigned() ||
        run[1].get<uint64_t>() == 0 || !run[2].is_number_unsigned() || run[2].get<uint64_t>() > 4 ||
        !run[3].is_string())
      return bad("g");
    r.runs.push_back(GroupRun{run[0].get<std::string>(), run[1].get<uint64_t>(),
                              static_cast<RunState>(run[2].get<int>()), run[3].get<std::string>()});
  }
  return Message{r};
}

}  // namespace baton::failover
