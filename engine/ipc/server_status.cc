// What batond reports of itself (ipc/server.h): the status document that
// `batonctl status` and the telemetry socket show, and the event log.
//
// Thread: any session thread; reads the engine's and the server's state
// under their own locks.

#include <algorithm>

#include <nlohmann/json.hpp>

#include "baton/baton.h"
#include "ipc/server_impl.h"
#include "runtime/futex.h"

namespace baton::ipc {

nlohmann::json Server::status_json(size_t limit) const {
  using nlohmann::json;
  const EngineStats stats = engine_.stats();
  const ServerCounters counters = this->counters();
  json out;
  const NodePlace place = engine_.place();
  auto or_null = [](int v) { return v < 0 ? json(nullptr) : json(v); };
  out["node"] = {{"id", engine_.node_id()},
                 {"name", config_.node_name},
                 {"package", or_null(place.package)},
                 {"numa_node", or_null(place.numa_node)},
                 {"memory_node", or_null(place.memory_node)},
                 {"stalls", stats.stalls},
                 {"longest_stall_ms", stats.longest_stall_us / 1000},
                 // null: no stall since batond started
                 {"last_stall_s_ago", stats.last_stall_age_ms == 0 ? json(nullptr) : json(stats.last_stall_age_ms / 1000)},
                 {"telemetry", config_.telemetry_prefix.empty() ? json(nullptr) : json(config_.telemetry_prefix)}};
  // Per-core shards: where each one's memory lives.
  out["node"]["shards"] = json::array();
  for (size_t k = 0; k < engine_.shards(); ++k) {
    const NodePlace p = engine_.place(k);
    out["node"]["shards"].push_back(
        {{"shard", k},
         {"package", or_null(p.package)},
         {"numa_node", or_null(p.numa_node)},
         {"memory_node", or_null(p.memory_node)}});
  }
  out["clients"] = {{"accepted", counters.accepted},
                    {"refused_credentials", counters.refused_credentials},
                    {"refused_limit", counters.refused_limit},
                    {"bad_requests", counters.bad_requests},
                    {"commits", counters.commits},
                    {"withdrawn_commits", counters.withdrawn_commits},
                    // commits posted to a log slot (no wait for batond), and slots refused
                    {"posted_commits", counters.posted_commits},
                    {"refused_posts", counters.refused_posts},
                    // copy-on-write commits the library pended itself and posted, and those refused
                    {"posted_cow_commits", counters.posted_cow_commits},
                    {"refused_cow_posts", counters.refused_cow_posts},
                    {"disconnects", counters.disconnects},
                    // segments another node took over, closed here once no application held them
                    {"dropped_fenced", counters.dropped_fenced},
                    // opens that took a load made for them (a promoted standby instance's)
                    {"handed_over", counters.handed_over},
                    // chunks commits copied, and left alone as unchanged (what the applications wrote)
                    {"chunks_copied", stats.snapshot_chunks_copied},
                    {"chunks_skipped", stats.snapshot_chunks_skipped},
                    // commits that copied nothing (copy-on-write: the worker settled them)
                    {"cow_snapshots", stats.cow_snapshots}};
  // What replication did (this node as owner and as replica), summed over shards.
  out["replication"] = {{"wholes_sent", stats.wholes_sent},
                        {"deltas_sent", stats.deltas_sent},
                        {"retransmits", stats.retransmits},
                        {"published", stats.published},
                        {"deltas_published", stats.deltas_published},
                        {"restamped", stats.restamped},
                        {"fenced_copies_kept", stats.fenced_copies_kept},
                        {"loads_outside_set", stats.loads_outside_set},
                        {"corrupt_generations", stats.corrupt_generations},
                        {"stale_epoch", stats.stale_epoch},
                        {"standby_promotions", stats.standby_promotions},
                        {"replica_promotions", stats.replica_promotions},
                        {"replica_promotions_chained", stats.replica_promotions_chained},
                        {"slots_lent", stats.slots_lent},
                        {"direct_reads", stats.direct_reads},
                        {"direct_read_failures", stats.direct_read_failures}};
  // The frames on every link: what was refused or lost is counted here.
  out["frames"] = {{"rx", stats.frames_rx},
                   {"tx", stats.frames_tx},
                   // control frames (heartbeats, notes, acks, claims...) dropped: their link did
                   // not take them, or (heartbeats) the queue to the data path was full
                   {"tx_dropped", stats.tx_dropped},
                   {"decode_errors", stats.decode_errors_total()},
                   {"misdirected", stats.misdirected},
                   {"bad_input", stats.bad_input},
                   {"duplicates", stats.duplicates},
                   // daemon notes (the failover managers' reports and assignments)
                   {"notes_rx", stats.notes_rx},
                   {"notes_dropped", stats.notes_dropped}};
  // Global storage (S7): null when it is off.
  if (const auto st = engine_.storage()) {
    out["storage"] = {{"dir", st->dir},
                      {"written", st->written},
                      {"failed", st->failed},
                      {"skipped", st->skipped},
                      {"dropped_deleted", st->dropped},
                      {"failing", st->failing},
                      {"failing_for_s", st->failing_for_ms / 1000},
                      {"last_error", st->last_error.empty() ? json(nullptr) : json(st->last_error)},
                      {"last_error_s_ago", st->last_error_age_ms == 0 ? json(nullptr) : json(st->last_error_age_ms / 1000)},
                      {"last_write_s_ago",
                       st->last_write_age_ms == UINT64_MAX ? json(nullptr) : json(st->last_write_age_ms / 1000)}};
  } else {
    out["storage"] = nullptr;
  }
  const auto peers = engine_.peers();
  auto peer = [&](uint16_t node) {
    for (const auto& p : peers)
      if (p.node == node) return p;
    return PeerStatus{node};
  };
  auto alive = [&](uint16_t node) { return peer(node).alive; };
  const View v = engine_.view();
  out["view"] = {{"id", v.id},
                 {"members", v.members},
                 {"votes", v.members.size()},
                 {"expected", v.expected_votes},
                 {"quorate", v.quorate},
                 {"agreed", v.agreed},
                 {"source", v.source}};
  out["links"] = json::array();
  for (const auto& l : engine_.link_status()) {
    const PeerStatus p = peer(l.peer);
    out["links"].push_back({{"peer", l.peer},
                            {"alive", p.alive},
                            {"silent_ms", p.silent_us / 1000},
                            // The peer's incarnation (its start time) and how long this node has
                            // known it: a young one is a restart.
                            {"incarnation", p.incarnation},
                            {"incarnation_age_s", p.incarnation_age_us / 1'000'000},
                            // Whether this node has the peer's set records (asked for once after
                            // its start): a new name waits for them.
                            {"records", p.records_had},
                            {"package", or_null(p.package)},
                            {"numa_node", or_null(p.numa_node)},
                            {"up", l.up},
                            {"rx", l.counters.rx_frames},
                            {"tx", l.counters.tx_frames},
                            {"reconnects", l.counters.reconnects},
                            {"shard", l.shard},
                            {"name", l.name.substr(0, l.name.find(' '))}});
  }
  // The registry is copied out first: the engine's answers may wait behind
  // a long open on another session, and the registry must not.
  std::vector<std::tuple<std::string, baton::Segment*, bool>> held;
  {
    std::lock_guard lock(registry_mu_);
    for (const auto& [name, seg] : segments_)
      if (seg->handle != nullptr) held.emplace_back(name, seg->handle, seg->holder != nullptr);
  }
  std::sort(held.begin(), held.end());
  out["segments"] = json::array();
  // What a reply can carry: segments past the limit are counted, not listed.
  size_t size = to_text(out).size(), omitted = 0;
  for (const auto& [name, handle, app] : held) {
    auto st = engine_.status(handle);
    if (!st) continue;
    json seg = {{"name", name},       {"size", st->size},   {"generation", st->generation},
                {"durable", st->durable}, {"epoch", st->epoch}, {"held", app},
                {"fenced", st->fenced},   {"durable_age_ms", st->durable_age_us / 1000},
                {"snapshots", st->copy_on_write ? "copy-on-write" : "stage-copy"}};
    if (st->copy_on_write) {  // as the application's client library counts them
      seg["cow_faults"] = st->cow_faults;
      seg["cow_copied_aside"] = st->cow_copied_aside;
      seg["cow_protected_ahead"] = st->cow_protected_ahead;
      seg["cow_protected_at_commit"] = st->cow_protected_at_commit;
      seg["cow_lifted_whole"] = st->cow_lifted_whole;
      seg["cow_copied_at_commit"] = st->cow_copied_at_commit;
    }
    // batond's own count, shown whatever the client says of itself.
    if (st->copy_on_write || st->cow_settler_gave_up != 0) seg["cow_settler_gave_up"] = st->cow_settler_gave_up;
    seg["replicas"] = json::array();
    for (auto& [node, gen] : st->replicas)
      seg["replicas"].push_back({{"node", node},
                                 {"generation", gen},
                                 {"lag", st->generation - std::min(gen, st->generation)},
                                 {"alive", alive(node)},
                                 {"standby", std::find(st->standbys.begin(), st->standbys.end(), node) !=
                                                 st->standbys.end()}});
    const size_t more = to_text(seg).size() + 1;
    if (size + more + 64 > limit) {
      ++omitted;
      continue;
    }
    size += more;
    out["segments"].push_back(std::move(seg));
  }
  out["segments_omitted"] = omitted;
  // Every replica copy this node holds (its owner elsewhere), and among
  // them the hot standbys (S16): how far each ready copy is behind the
  // newest generation this node holds of it.
  out["copies"] = json::array();
  out["standbys"] = json::array();
  const auto held_here = engine_.replicas();
  if (held_here)
    for (const auto& r : *held_here) {
      json copy = {{"name", r.name},
                   {"size", r.size},
                   {"owner", r.owner},
                   {"epoch", r.epoch},
                   {"generation", r.generations.empty() ? 0 : r.generations.front()},
                   {"standby", r.standby}};
      const size_t more = to_text(copy).size() + 1;
      if (size + more + 64 > limit) {
        out["copies_omitted"] = out.value("copies_omitted", 0) + 1;
        continue;
      }
      size += more;
      out["copies"].push_back(std::move(copy));
    }
  if (held_here)
    for (const auto& r : *held_here) {
      if (!r.standby) continue;
      const uint64_t newest = r.generations.empty() ? 0 : r.generations.front();
      json sb = {{"name", r.name},
                 {"owner", r.owner},
                 {"epoch", r.epoch},
                 {"newest", newest},
                 {"ready", r.standby_generation},
                 {"lag", newest - std::min(newest, r.standby_generation)},
                 {"behind_bytes", r.standby_behind_bytes}};
      const size_t more = to_text(sb).size() + 1;
      if (size + more + 64 > limit) break;
      size += more;
      out["standbys"].push_back(std::move(sb));
    }
  return out;
}

std::string Server::events() const {
  std::string s;
  for (const auto& e : engine_.events()) s += std::to_string(e.unix_us) + " " + e.text + "\n";
  return s.size() > kMaxReply - sizeof(Reply) ? s.substr(s.size() - (kMaxReply - sizeof(Reply))) : s;
}

}  // namespace baton::ipc
