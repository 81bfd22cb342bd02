#include <gtest/gtest.h>

#include <cmath>

#include "plan/collective_cost.hpp"

using namespace braid::plan;

TEST(CollectiveCost, RingAndTree) {
  const double S = 1e9, B = 100e9, a = 5e-6;
  EXPECT_DOUBLE_EQ(ring_all_reduce_time(S, 8, B, 0), 2.0 * 7 / 8 * S / B);
  EXPECT_DOUBLE_EQ(ring_all_reduce_time(S, 8, B, a), 2.0 * 7 / 8 * S / B + 2 * 7 * a);
  EXPECT_DOUBLE_EQ(ring_reduce_scatter_time(S, 8, B, a), 7.0 / 8 * S / B + 7 * a);
  EXPECT_DOUBLE_EQ(ring_all_gather_time(S, 8, B, a), ring_reduce_scatter_time(S, 8, B, a));
  EXPECT_DOUBLE_EQ(tree_all_reduce_time(S, 1000, B, a), 2 * S / B + 2 * 10 * a);
  EXPECT_DOUBLE_EQ(point_to_point_time(S, B, a), S / B + a);
  EXPECT_EQ(ring_all_reduce_time(S, 1, B, a), 0);
  EXPECT_EQ(tree_all_reduce_time(S, 1, B, a), 0);
}

TEST(CollectiveCost, OneLevelIsTheBetterOfRingAndTree) {
  // Large message: the ring's (n-1)/n wins.
  auto big = hierarchical_all_reduce(1e9, {{"scale-out", 64, 50e9, 5e-6}});
  EXPECT_DOUBLE_EQ(big.time, ring_all_reduce_time(1e9, 64, 50e9, 5e-6));
  EXPECT_EQ(big.levels.at(0).algorithm, "ring");
  // Tiny message over many ranks: latency dominates and the tree wins.
  auto tiny = hierarchical_all_reduce(1e3, {{"scale-out", 1024, 50e9, 5e-6}});
  EXPECT_DOUBLE_EQ(tiny.time, tree_all_reduce_time(1e3, 1024, 50e9, 5e-6));
  EXPECT_EQ(tiny.levels.at(0).algorithm, "tree");
}

TEST(CollectiveCost, HierarchicalSendsOnlyAShareOverSlowTiers) {
  const double S = 8e9;
  std::vector<GroupLevel> levels{{"scale-up", 8, 450e9, 0}, {"scale-out", 16, 50e9, 0}, {"wan", 1, 1e9, 0}};
  auto ar = hierarchical_all_reduce(S, levels);
  ASSERT_EQ(ar.levels.size(), 2u);  // the one-member WAN level is skipped
  double expect = 2 * (7.0 / 8) * S / 450e9 + 2 * (15.0 / 16) * (S / 8) / 50e9;
  EXPECT_DOUBLE_EQ(ar.time, expect);
  // The scale-out tier carries 1/8 of what a flat ring would send.
  EXPECT_DOUBLE_EQ(ar.levels[1].bytes_sent, 2 * (15.0 / 16) * S / 8);
  EXPECT_NE(ar.describe().find("hierarchical"), std::string::npos);

  auto rs = hierarchical_reduce_scatter(S, levels);
  EXPECT_DOUBLE_EQ(rs.time, (7.0 / 8) * S / 450e9 + (15.0 / 16) * (S / 8) / 50e9);
  // An all-reduce is a reduce-scatter and an all-gather.
  EXPECT_DOUBLE_EQ(2 * rs.time, ar.time);
}

TEST(CollectiveCost, EmptyGroupCostsNothing) {
  auto none = hierarchical_all_reduce(1e9, {{"scale-up", 1, 450e9, 1e-6}});
  EXPECT_EQ(none.time, 0);
  EXPECT_EQ(none.describe(), "none");
}
