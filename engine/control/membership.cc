#include "control/membership.h"

#include <algorithm>

namespace baton {

uint64_t View::digest() const noexcept {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the sorted ids
  for (uint16_t m : members) {
    h ^= m;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string View::to_string() const {
  std::string s = "view " + std::to_string(id) + " {";
  for (size_t i = 0; i < members.size(); ++i) s += (i ? "," : "") + std::to_string(members[i]);
  s += "} ";
  s += std::to_string(members.size()) + " of " + std::to_string(expected_votes) + " votes, ";
  s += quorate ? "quorate" : "NO QUORUM";
  s += agreed ? ", agreed" : "";
  if (std::string_view(source) != "backplane") s += std::string(" (") + source + ")";
  return s;
}

bool Agreement::report(uint16_t peer, uint64_t digest) {
  auto it = std::find_if(reports_.begin(), reports_.end(), [peer](auto& r) { return r.first == peer; });
  if (it == reports_.end()) reports_.emplace_back(peer, digest);
  else if (it->second == digest) return false;
  else it->second = digest;
  return true;
}

void Agreement::keep_only(const std::vector<uint16_t>& members) {
  std::erase_if(reports_, [&](auto& r) { return !std::binary_search(members.begin(), members.end(), r.first); });
}

bool Agreement::agreed(const View& v, uint16_t self) const noexcept {
  const uint64_t mine = v.digest();
  for (uint16_t m : v.members) {
    if (m == self) continue;
    auto it = std::find_if(reports_.begin(), reports_.end(), [m](auto& r) { return r.first == m; });
    if (it == reports_.end() || it->second != mine) return false;
  }
  return true;
}

namespace {

class HeartbeatMembership final : public MembershipSource {
 public:
  HeartbeatMembership(uint16_t self, uint32_t expected) : self_(self) {
    view_.expected_votes = expected;
    view_.quorum = expected == 2 ? 1 : expected / 2 + 1;
    view_.members = {self};
    view_.agreed = expected == 1;
    view_.quorate = quorum(view_.members.size());
  }

  const char* name() const noexcept override { return "backplane"; }
  const View& view() const noexcept override { return view_; }

  bool update(std::span<const uint16_t> alive) override {
    members_.assign(alive.begin(), alive.end());
    members_.push_back(self_);
    std::sort(members_.begin(), members_.end());
    members_.erase(std::unique(members_.begin(), members_.end()), members_.end());
    if (members_ == view_.members) return false;
    view_.members.swap(members_);
    ++view_.id;
    if (view_.members.size() == view_.expected_votes) seen_all_ = true;
    view_.quorate = quorum(view_.members.size());
    // Reports about the old member set say nothing about the new one.
    agreement_.keep_only(view_.members);
    view_.agreed = agreement_.agreed(view_, self_);
    return true;
  }

  bool reported(uint16_t peer, uint64_t digest) override {
    if (!agreement_.report(peer, digest)) return false;
    const bool before = view_.agreed;
    view_.agreed = agreement_.agreed(view_, self_);
    return before != view_.agreed;
  }

 private:
  bool quorum(size_t members) const noexcept {
    if (view_.expected_votes == 2) return seen_all_ || members == 2;  // two_node + wait_for_all
    return members * 2 > view_.expected_votes;
  }
  uint16_t self_;
  bool seen_all_ = false;
  View view_;
  std::vector<uint16_t> members_;                     // scratch
  Agreement agreement_;
};

}  // namespace

std::unique_ptr<MembershipSource> make_heartbeat_membership(uint16_t self, uint32_t expected_votes) {
  return std::make_unique<HeartbeatMembership>(self, expected_votes);
}

}  // namespace baton
