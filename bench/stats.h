#pragma once
// Order statistics the benchmarks report: one definition for all of them.

#include <algorithm>
#include <cstddef>
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

}  // namespace baton::bench
