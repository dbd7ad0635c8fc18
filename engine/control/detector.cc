#include "control/detector.h"

#include <algorithm>
#include <cstdio>
#include <string>

namespace baton {

namespace {

// "12", "1.4", "0.35": what a silence in ns was, in ms, to two significant
// digits below 10 ms (sub-millisecond timeouts are the spinning default).
std::string ms_string(uint64_t ns) {
  char b[32];
  if (ns >= 10'000'000) std::snprintf(b, sizeof b, "%lu", static_cast<unsigned long>(ns / 1'000'000));
  else if (ns >= 1'000'000) std::snprintf(b, sizeof b, "%.1f", static_cast<double>(ns) / 1e6);
  else std::snprintf(b, sizeof b, "%.2f", static_cast<double>(ns) / 1e6);
  return b;
}

}  // namespace

Detector::Detector(const DetectorConfig& config, std::vector<LinkInfo> links, EventSink event,
                   std::unique_ptr<MembershipSource> membership)
    : config_(config),
      membership_(membership ? std::move(membership) : make_heartbeat_membership(config.self, config.expected_votes)),
      event_(std::move(event)) {
  // Several links may reach one peer: it is dead only when all are silent.
  for (size_t i = 0; i < links.size(); ++i) {
    auto it = std::find_if(peers_.begin(), peers_.end(), [&](const PeerLive& p) { return p.node == links[i].peer; });
    if (it == peers_.end()) {
      peers_.push_back(PeerLive{links[i].peer});
      peers_.back().via = i;
      it = peers_.end() - 1;
    }
    it->links.push_back(i);
    links_.push_back(LinkLive{std::move(links[i]), static_cast<size_t>(it - peers_.begin())});
  }
}

uint64_t Detector::next_due_ns() const noexcept {
  uint64_t due = UINT64_MAX;
  for (const auto& l : links_) due = std::min(due, l.last_sent_ns + config_.heartbeat_ns);
  return due;
}

bool Detector::alive(uint16_t node) const noexcept {
  return std::any_of(peers_.begin(), peers_.end(), [node](const PeerLive& p) { return p.node == node && p.alive; });
}

bool Detector::reachable(uint16_t node) const noexcept {
  for (const auto& p : peers_) {
    if (p.node != node) continue;
    if (p.alive) return true;
    if (p.ever_heard) return false;
    return std::any_of(p.links.begin(), p.links.end(), [&](size_t k) { return links_[k].up; });
  }
  return false;
}

void Detector::on_heartbeat(const HeartbeatSeen& hb, std::vector<ControlMsg>& out) {
  if (hb.link >= links_.size()) return;
  PeerLive& p = peers_[links_[hb.link].peer];
  if (hb.restarted)
    event_("node " + std::to_string(p.node) + " restarted: a new incarnation, holding nothing it held before");
  p.digest = hb.view_digest;
  // A report about a view this node does not share yet is news only once
  // the failure detector catches up; agreement is rechecked then.
  if (!membership_->reported(p.node, hb.view_digest)) return;
  emit_view(out);
  const View& v = membership_->view();
  if (v.agreed && v.members.size() > 1) event_("view " + std::to_string(v.id) + " agreed by every member");
}

void Detector::step(uint64_t now, uint64_t polled_ns, std::span<const LinkObservation> obs,
                    std::vector<ControlMsg>& out) {
  const View& v = membership_->view();
  for (size_t i = 0; i < links_.size() && i < obs.size(); ++i) {
    LinkLive& l = links_[i];
    PeerLive& p = peers_[l.peer];
    l.up = obs[i].up;
    if (obs[i].heard_ns > l.last_heard_ns) {  // any valid frame is a sign of life
      l.last_heard_ns = obs[i].heard_ns;
      p.last_heard_ns = std::max(p.last_heard_ns, l.last_heard_ns);
      if (!l.alive) {
        l.alive = true;
        if (p.alive) event_("link " + l.info.name + " up");
      }
      if (!p.alive) {
        p.alive = true;
        p.ever_heard = true;
        dirty_ = true;
        event_("node " + std::to_string(p.node) + " up");
      }
    }
    if (now - std::min(now, l.last_sent_ns) >= config_.heartbeat_ns) {
      ControlMsg hb;
      hb.kind = ControlMsg::Kind::kHeartbeat;
      hb.link = static_cast<uint16_t>(i);
      hb.seq = ++l.seq;
      hb.view_digest = v.digest();
      hb.view_id = v.id;
      hb.quorate = v.quorate;
      out.push_back(hb);
      l.last_sent_ns = now;
    }
    const uint64_t silent = polled_ns - std::min(polled_ns, l.last_heard_ns);
    if (l.alive && (silent >= config_.failure_ns || !obs[i].up)) {
      l.alive = false;
      const bool others = std::any_of(p.links.begin(), p.links.end(), [&](size_t k) { return links_[k].alive; });
      // A link failure is not a node failure while another link still hears it.
      if (others)
        event_("link " + l.info.name + " down (" + (obs[i].up ? "silent" : "device down") + "); node " +
               std::to_string(p.node) + " still reachable over another link");
    }
  }
  for (auto& p : peers_) {
    const auto live = std::find_if(p.links.begin(), p.links.end(), [&](size_t k) { return links_[k].alive; });
    if (live != p.links.end()) {
      if (!links_[p.via].alive) p.via = *live;  // frames go over a link that works
    } else if (p.alive) {
      // Dead: every link to it is silent or down.
      p.alive = false;
      dirty_ = true;
      const bool any_up = std::any_of(p.links.begin(), p.links.end(), [&](size_t k) { return obs[k].up; });
      event_("node " + std::to_string(p.node) + " down (" +
             (any_up ? "silent for " + ms_string(polled_ns - std::min(polled_ns, p.last_heard_ns)) + " ms"
                     : std::string(p.links.size() > 1 ? "every link down" : "link down")) +
             ")");
    }
    if (!p.told || p.told_alive != p.alive || p.told_via != p.via) {
      ControlMsg m;
      m.kind = ControlMsg::Kind::kPeer;
      m.node = p.node;
      m.link = static_cast<uint16_t>(p.via);
      m.alive = p.alive;
      m.ever_heard = p.ever_heard;
      out.push_back(m);
      p.told = true;
      p.told_alive = p.alive;
      p.told_via = p.via;
    }
  }
  if (dirty_) update_view(out);
}

void Detector::poll_membership(uint64_t now, std::vector<ControlMsg>& out) {
  if (membership_->poll(now)) view_changed(out);
}

void Detector::update_view(std::vector<ControlMsg>& out) {
  dirty_ = false;
  std::vector<uint16_t> alive;
  for (const auto& p : peers_)
    if (p.alive) alive.push_back(p.node);
  if (membership_->update(alive)) view_changed(out);
}

void Detector::view_changed(std::vector<ControlMsg>& out) {
  // The membership forgets reports of nodes that left the view; a node that
  // is back reports again only when its view changes, so feed it the last.
  for (const auto& p : peers_)
    if (p.alive && p.digest != 0) membership_->reported(p.node, p.digest);
  // Tell every peer the new view now, not at its next heartbeat: the view
  // is agreed (and a coordinator may act) once each member has heard every
  // other's, which took up to a heartbeat interval (5 ms adaptive) after
  // the last member saw the change.
  for (auto& l : links_) l.last_sent_ns = 0;
  emit_view(out);
  event_(membership_->view().to_string());
}

void Detector::emit_view(std::vector<ControlMsg>& out) {
  ControlMsg m;
  m.kind = ControlMsg::Kind::kView;
  m.view = new View(membership_->view());
  out.push_back(m);
}

}  // namespace baton
