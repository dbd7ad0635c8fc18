#pragma once
// C++ wrapper over the C API (baton.h): RAII handles, errors as Result.
// Programs that embed the engine directly can use engine.h instead.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "baton/baton.h"
#include "baton/result.h"

namespace baton::c {

namespace detail {
inline tl::unexpected<Error> error(int rc) {
  return tl::unexpected<Error>(Error{static_cast<Errc>(-rc), baton_last_error()});
}
struct StopBaton {
  void operator()(baton_t* b) const noexcept { baton_stop(b); }
};
}  // namespace detail

class Segment {
 public:
  explicit Segment(baton_segment_t* s) : s_(s) {}
  Segment(Segment&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  Segment& operator=(Segment&&) = delete;
  ~Segment() {
    if (s_ != nullptr) baton_unregister(s_);
  }
  std::span<std::byte> data() const noexcept {
    return {static_cast<std::byte*>(baton_segment_data(s_)), static_cast<size_t>(baton_segment_size(s_))};
  }
  Result<uint64_t> commit() {
    uint64_t g = 0;
    if (int rc = baton_commit(s_, &g); rc != 0) return detail::error(rc);
    return g;
  }
  /// commit() when the application knows what it wrote since its previous
  /// commit (baton_commit_ranges).
  Result<uint64_t> commit(std::span<const baton_range_t> written) {
    uint64_t g = 0;
    if (int rc = baton_commit_ranges(s_, written.data(), written.size(), &g); rc != 0) return detail::error(rc);
    return g;
  }
  Result<void> wait(uint64_t generation, uint32_t k, uint32_t timeout_ms) {
    if (int rc = baton_wait(s_, generation, k, timeout_ms); rc != 0) return detail::error(rc);
    return {};
  }

 private:
  baton_segment_t* s_;
};

/// A standby instance waits here until promoted (baton_await_promotion):
/// at once outside one; `timeout_ms` < 0 waits without limit.
inline Result<void> await_promotion(int timeout_ms = -1) {
  if (int rc = baton_await_promotion(timeout_ms); rc != 0) return detail::error(rc);
  return {};
}

class Node {
 public:
  static Result<Node> start(const baton_config_t& config, const std::vector<std::string>& links) {
    std::vector<const char*> ptrs;
    for (auto& l : links) ptrs.push_back(l.c_str());
    baton_t* b = nullptr;
    if (int rc = baton_start(&config, ptrs.data(), ptrs.size(), &b); rc != 0) return detail::error(rc);
    return Node(b);
  }
  Result<Segment> create(const std::string& name, uint64_t size) {
    baton_segment_t* s = nullptr;
    if (int rc = baton_register(b_.get(), name.c_str(), size, &s); rc != 0) return detail::error(rc);
    return Segment(s);
  }
  /// S11: the segment, and whether it was restored.
  Result<std::pair<Segment, bool>> open(const std::string& name, uint64_t size) {
    baton_segment_t* s = nullptr;
    int restored = 0;
    if (int rc = baton_open(b_.get(), name.c_str(), size, &s, &restored, nullptr); rc != 0) return detail::error(rc);
    return std::pair<Segment, bool>(Segment(s), restored != 0);
  }

 private:
  explicit Node(baton_t* b) : b_(b) {}
  std::unique_ptr<baton_t, detail::StopBaton> b_;
};

}  // namespace baton::c
