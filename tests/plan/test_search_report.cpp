#include <gtest/gtest.h>

#include "core/error.hpp"
#include "plan/plan_report.hpp"
#include "plan/plan_search.hpp"

using namespace braid;
using namespace braid::plan;

TEST(PlanSearch, RanksFittingLayoutsByStepTime) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 64);
  ParallelPlan base;
  base.global_batch = 512;  // 4Mi tokens
  auto r = search_plans(m, c, base, 10);
  ASSERT_EQ(r.best.size(), 10u);
  EXPECT_GE(r.considered - r.invalid - r.too_big, static_cast<int64_t>(r.best.size()));
  EXPECT_GT(r.invalid, 0);  // e.g. micro-batches that do not split the batch
  for (size_t i = 0; i < r.best.size(); ++i) {
    EXPECT_TRUE(r.best[i].memory.fits);
    EXPECT_EQ(r.best[i].gpus, 64);
    EXPECT_EQ(r.best[i].plan.global_batch, 512);
    if (i > 0) {
      EXPECT_LE(r.best[i - 1].step_time, r.best[i].step_time);
    }
  }
  // The winner is at least as fast as a hand-written plan that fits.
  ParallelPlan hand = base;
  hand.tp = 8;
  hand.dp = 8;
  auto e = estimate_step(m, c, hand);
  ASSERT_TRUE(e.memory.fits);
  EXPECT_LE(r.best.front().step_time, e.step_time);
}

TEST(PlanSearch, NothingFitsOnTooFewGpus) {
  auto m = load_model("llama3-405b");
  auto c = default_cluster(hardware_preset("h100"), 8);
  ParallelPlan base;
  base.global_batch = 64;
  auto r = search_plans(m, c, base, 5);
  EXPECT_TRUE(r.best.empty());
  EXPECT_GT(r.too_big, 0);
  EXPECT_NE(format_search(r, m, c).find("no layout fits"), std::string::npos);
}

TEST(PlanSearch, NeedsAFixedBatch) {
  auto c = default_cluster(hardware_preset("h100"), 8);
  try {
    search_plans(load_model("llama3-8b"), c, ParallelPlan{}, 5);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(e.hint().find("--batch-tokens"), std::string::npos);
  }
}

TEST(PlanReport, TextAndJsonCarryTheSameNumbers) {
  auto m = load_model("llama3-70b");
  auto c = load_cluster("meta-h100-24k");
  ParallelPlan p;
  p.dp = 128;
  p.tp = 8;
  p.pp = 4;
  p.global_batch = 1024;
  auto e = estimate_step(m, c, p);
  auto budget = budget_for_tokens(e, 15e12);
  auto text = format_report(e, budget, std::nullopt);
  for (const char* part : {"step time", "compute", "pipeline bubble", "tensor parallel", "data parallel",
                           "MFU", "tokens/s", "memory per GPU", "optimizer", "activations", "GPU-hours",
                           "dp 128 × tp 8 × pp 4"})
    EXPECT_NE(text.find(part), std::string::npos) << part;
  auto j = report_json(e, budget, std::nullopt);
  EXPECT_DOUBLE_EQ(j["step"]["time_s"].get<double>(), e.step_time);
  EXPECT_DOUBLE_EQ(j["throughput"]["mfu"].get<double>(), e.mfu);
  EXPECT_DOUBLE_EQ(j["memory"]["total_bytes"].get<double>(), e.memory.total);
  EXPECT_EQ(j["memory"]["fits"].get<bool>(), e.memory.fits);
  EXPECT_EQ(j["plan"]["dp"].get<int64_t>(), 128);
  EXPECT_EQ(j["step"]["comm"].size(), e.comm.size());
  EXPECT_DOUBLE_EQ(j["budget"]["gpu_hours"].get<double>(), budget.gpu_hours);
  // The parts of the step add up to the step.
  double sum = j["step"]["compute_s"].get<double>() + j["step"]["bubble_s"].get<double>();
  for (auto& r : j["step"]["comm"]) sum += r["exposed_s"].get<double>();
  EXPECT_NEAR(sum, e.step_time, 1e-12 * e.step_time);
}

TEST(PlanReport, TableAlignsColumns) {
  auto t = format_table({{"a", "1"}, {"long name", "1000"}}, {false, true}, "");
  EXPECT_EQ(t, "a             1\nlong name  1000\n");
  // Multi-byte characters count as one column.
  auto u = format_table({{"τ", "1"}, {"ab", "2"}}, {false, true}, "");
  EXPECT_EQ(u, "τ   1\nab  2\n");
}
