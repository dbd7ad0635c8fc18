#pragma once
// Order statistics the benchmarks report: one definition for all of them.

#include <sys/types.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace baton::bench {

/// The p-quantile (0..1) of `v`, by rank; 0 for no samples.
inline double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

/// The median of `v` (the upper one of an even count); 0 for no samples.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// CPU time (ns) so far of the threads named `comm` of process `pid` (0:
/// this one), by thread id (ascending: threads started earlier first),
/// from /proc/.../task/*/schedstat. Thread: any.
inline std::vector<uint64_t> thread_cpu_ns(std::string_view comm, pid_t pid = 0) {
  std::vector<std::pair<long, uint64_t>> found;
  std::error_code ec;
  const std::string dir = pid == 0 ? "/proc/self/task" : "/proc/" + std::to_string(pid) + "/task";
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream c(e.path() / "comm");
    std::string name;
    if (!std::getline(c, name) || name != comm) continue;
    std::ifstream s(e.path() / "schedstat");
    uint64_t ns = 0;
    if (s >> ns) found.emplace_back(std::stol(e.path().filename().string()), ns);
  }
  std::sort(found.begin(), found.end());
  std::vector<uint64_t> out;
  for (const auto& [tid, ns] : found) out.push_back(ns);
  return out;
}

}  // namespace baton::bench
