#include "plan/collective_cost.hpp"

#include <fmt/format.h>

#include <cmath>

#include "plan/units.hpp"

namespace braid::plan {

double ring_reduce_scatter_time(double bytes, double n, double bw, double lat) {
  if (n <= 1) return 0;
  return (n - 1) / n * bytes / bw + (n - 1) * lat;
}

double ring_all_gather_time(double bytes, double n, double bw, double lat) {
  return ring_reduce_scatter_time(bytes, n, bw, lat);
}

double ring_all_reduce_time(double bytes, double n, double bw, double lat) {
  return 2 * ring_reduce_scatter_time(bytes, n, bw, lat);
}

double tree_all_reduce_time(double bytes, double n, double bw, double lat) {
  if (n <= 1) return 0;
  return 2 * bytes / bw + 2 * std::ceil(std::log2(n)) * lat;
}

double point_to_point_time(double bytes, double bw, double lat) { return bytes / bw + lat; }

std::string CollectiveCost::describe() const {
  if (levels.empty()) return "none";
  if (levels.size() == 1)
    return fmt::format("{} over {} ({})", levels[0].algorithm, format_sig3(levels[0].members),
                       levels[0].tier);
  std::string s = "hierarchical: ";
  for (size_t i = 0; i < levels.size(); ++i)
    s += fmt::format("{}{} {}", i ? " × " : "", format_sig3(levels[i].members), levels[i].tier);
  return s;
}

namespace {

// Levels that actually have more than one member.
std::vector<GroupLevel> active(const std::vector<GroupLevel>& levels) {
  std::vector<GroupLevel> out;
  for (auto& l : levels)
    if (l.members > 1 + 1e-9) out.push_back(l);
  return out;
}

}  // namespace

CollectiveCost hierarchical_all_reduce(double bytes, const std::vector<GroupLevel>& all_levels) {
  CollectiveCost cost;
  auto levels = active(all_levels);
  double share = bytes;  // what each member holds entering a level
  for (size_t i = 0; i < levels.size(); ++i) {
    const auto& l = levels[i];
    LevelCost lc{l.tier, l.members, 0, 0, "ring"};
    if (i + 1 < levels.size()) {
      // reduce-scatter going up and all-gather coming down
      lc.time = 2 * ring_reduce_scatter_time(share, l.members, l.bandwidth, l.latency);
      lc.bytes_sent = 2 * (l.members - 1) / l.members * share;
      share /= l.members;
    } else {
      double ring = ring_all_reduce_time(share, l.members, l.bandwidth, l.latency);
      double tree = tree_all_reduce_time(share, l.members, l.bandwidth, l.latency);
      lc.algorithm = tree < ring ? "tree" : "ring";
      lc.time = std::min(ring, tree);
      lc.bytes_sent = tree < ring ? 2 * share : 2 * (l.members - 1) / l.members * share;
    }
    cost.time += lc.time;
    cost.levels.push_back(lc);
  }
  return cost;
}

CollectiveCost hierarchical_reduce_scatter(double bytes, const std::vector<GroupLevel>& all_levels) {
  CollectiveCost cost;
  auto levels = active(all_levels);
  double share = bytes;
  for (const auto& l : levels) {
    LevelCost lc{l.tier, l.members, (l.members - 1) / l.members * share,
                 ring_reduce_scatter_time(share, l.members, l.bandwidth, l.latency), "ring"};
    share /= l.members;
    cost.time += lc.time;
    cost.levels.push_back(lc);
  }
  return cost;
}

}  // namespace braid::plan
