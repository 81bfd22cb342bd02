#pragma once
// Time of a collective over a group whose members sit in tiers of a cluster.
//
// Cost model (alpha-beta; S bytes per member, n members, B bytes/s per member
// per direction, alpha seconds per message; docs/plan.md "Collectives"):
//   ring reduce-scatter / all-gather   (n-1)/n · S/B + (n-1)·alpha
//   ring all-reduce                   2(n-1)/n · S/B + 2(n-1)·alpha   (Patarasuk & Yuan 2009)
//   tree all-reduce                   2 · S/B + 2·ceil(log2 n)·alpha  (NCCL's double binary tree)
//   hierarchical all-reduce           reduce-scatter up the tiers, all-reduce at the top,
//                                     all-gather back down: level i moves S / (n_1···n_{i-1}),
//                                     so the slow tiers carry only a 1/n share (Jia et al. 2018).
// The all-reduce at each level is the faster of ring and tree, as NCCL's tuner picks.
#include <string>
#include <vector>

namespace braid::plan {

// One level of a hierarchical group: `members` peers (a real number so that
// uneven tiers still give a sensible ring factor) joined by one kind of link.
struct GroupLevel {
  std::string tier;        // "scale-up", "scale-out", "between pods", "wan"
  double members = 1;
  double bandwidth = 0;    // bytes/s per member per direction
  double latency = 0;      // seconds per message
};

struct LevelCost {
  std::string tier;
  double members = 1;
  double bytes_sent = 0;   // per member, at this level
  double time = 0;
  std::string algorithm;   // "ring" or "tree"
};

struct CollectiveCost {
  double time = 0;
  std::vector<LevelCost> levels;
  // "ring over 8 (scale-up)", or "hierarchical: 8 scale-up × 16 scale-out".
  std::string describe() const;
};

double ring_reduce_scatter_time(double bytes, double members, double bandwidth, double latency);
double ring_all_gather_time(double bytes, double members, double bandwidth, double latency);
double ring_all_reduce_time(double bytes, double members, double bandwidth, double latency);
double tree_all_reduce_time(double bytes, double members, double bandwidth, double latency);
double point_to_point_time(double bytes, double bandwidth, double latency);

CollectiveCost hierarchical_all_reduce(double bytes, const std::vector<GroupLevel>& levels);
// Reduce-scatter (or all-gather, the same cost) of `bytes` per member.
CollectiveCost hierarchical_reduce_scatter(double bytes, const std::vector<GroupLevel>& levels);

}  // namespace braid::plan
