#include "health/straggler_detector.hpp"

#include <algorithm>

namespace braid::health {

double median_of(std::span<const double> values) {
  if (values.empty()) return 0;
  std::vector<double> v(values.begin(), values.end());
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int> find_stragglers(std::span<const double> per_rank, double factor) {
  std::vector<int> slow;
  if (per_rank.size() < 2) return slow;
  const double med = median_of(per_rank);
  if (!(med > 0)) return slow;
  for (size_t r = 0; r < per_rank.size(); ++r)
    if (per_rank[r] > factor * med) slow.push_back(static_cast<int>(r));
  return slow;
}

}  // namespace braid::health
