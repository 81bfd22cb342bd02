// Pipeline parallelism: the GPipe and 1F1B schedules (order of sends and
// receives checked for deadlock by simulation for pp in {2,3,4} and
// micro-batches in {1, pp-1, pp, 2pp+1}), then real pipelines of threads
// whose K steps equal one process.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <map>

#include "core/error.hpp"
#include "test_mesh_util.hpp"
#include "train/pipeline_schedule.hpp"

namespace braid::train {
namespace {

using namespace mesh_test;

struct ScheduleCase {
  PipelineScheduleKind kind;
  int stages;
  int microbatches;
};

std::vector<ScheduleCase> schedule_cases() {
  std::vector<ScheduleCase> out;
  for (auto kind : {PipelineScheduleKind::GPipe, PipelineScheduleKind::OneFOneB})
    for (int p : {2, 3, 4})
      for (int m : {1, p - 1, p, 2 * p + 1}) out.push_back({kind, p, m});
  return out;
}

std::string name_of(const ScheduleCase& c) {
  return fmt::format("{} pp={} M={}", c.kind == PipelineScheduleKind::GPipe ? "gpipe" : "1f1b", c.stages,
                     c.microbatches);
}

TEST(PipelineSchedule, EveryStageRunsEachMicroBatchForwardThenBackwardOnce) {
  for (const auto& c : schedule_cases()) {
    for (int s = 0; s < c.stages; ++s) {
      auto plan = pipeline_schedule(c.kind, c.stages, s, c.microbatches);
      ASSERT_EQ(plan.size(), 2u * static_cast<size_t>(c.microbatches)) << name_of(c);
      std::vector<int> forwarded(static_cast<size_t>(c.microbatches), 0), backwarded = forwarded;
      for (const auto& a : plan) {
        auto mb = static_cast<size_t>(a.microbatch);
        if (a.kind == PipelineAction::Forward) {
          ++forwarded[mb];
        } else {
          EXPECT_EQ(forwarded[mb], 1) << name_of(c) << " stage " << s << ": backward before forward";
          ++backwarded[mb];
        }
      }
      for (int mb = 0; mb < c.microbatches; ++mb) {
        EXPECT_EQ(forwarded[static_cast<size_t>(mb)], 1) << name_of(c);
        EXPECT_EQ(backwarded[static_cast<size_t>(mb)], 1) << name_of(c);
      }
    }
  }
}

// With forward 1 and backward 2 time units, both schedules finish in
// (M + P - 1)·3, so each stage idles (P - 1)·3: the bubble share is
// (P - 1)/(M + P - 1). 1F1B holds at most P - s micro-batches on stage s,
// GPipe all M.
TEST(PipelineSchedule, NoDeadlockAndTheExpectedBubble) {
  for (const auto& c : schedule_cases()) {
    PipelineSimulation sim;
    ASSERT_NO_THROW(sim = simulate_pipeline(c.kind, c.stages, c.microbatches)) << name_of(c);
    const double f = 1, b = 2;
    EXPECT_DOUBLE_EQ(sim.makespan, (c.microbatches + c.stages - 1) * (f + b)) << name_of(c);
    for (int s = 0; s < c.stages; ++s) {
      EXPECT_DOUBLE_EQ(sim.idle[static_cast<size_t>(s)], (c.stages - 1) * (f + b)) << name_of(c) << " stage " << s;
      const int peak = sim.peak_in_flight[static_cast<size_t>(s)];
      if (c.kind == PipelineScheduleKind::GPipe)
        EXPECT_EQ(peak, c.microbatches) << name_of(c);
      else
        EXPECT_EQ(peak, std::min(c.stages - s, c.microbatches)) << name_of(c) << " stage " << s;
    }
  }
}

TEST(PipelineSchedule, TheSimulationCatchesADeadlock) {
  // Stage 0 waits for micro-batch 0's gradient before it sends the forward
  // activation that stage 1 needs to produce it.
  std::vector<std::vector<PipelineAction>> plans = {
      {{PipelineAction::Backward, 0}, {PipelineAction::Forward, 0}},
      {{PipelineAction::Forward, 0}, {PipelineAction::Backward, 0}}};
  try {
    simulate_pipeline(plans);
    ADD_FAILURE() << "a deadlock went unnoticed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deadlock"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pipeline_schedule(PipelineScheduleKind::OneFOneB, 2, 2, 1), ConfigError);
  EXPECT_THROW(parse_pipeline_schedule("interleaved"), ConfigError);
}

class Pipeline : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_F(Pipeline, TwoStagesBothSchedulesEqualOneProcess) {
  for (const char* schedule : {"gpipe", "1f1b"}) {
    SCOPED_TRACE(schedule);
    auto cfg = tiny_config();
    cfg.parallel.pp = 2;
    cfg.parallel.schedule = schedule;
    cfg.parallel.microbatches = 3;
    expect_mesh_equals_single(cfg, 3);
  }
}

// Real runs over the corners of the deadlock sweep (pp in {3, 4} with 1 and
// 2pp+1 micro-batches); one step each, parameters compared after it.
TEST_F(Pipeline, ThreeAndFourStagesEqualOneProcess) {
  for (int pp : {3, 4}) {
    for (int m : {1, 2 * pp + 1}) {
      SCOPED_TRACE(fmt::format("pp={} M={}", pp, m));
      auto cfg = tiny_config();
      cfg.model.layers = 12;
      cfg.model.width = 16;
      cfg.model.heads = 2;
      cfg.train.batch_size = 1;
      cfg.parallel.pp = pp;
      cfg.parallel.microbatches = m;
      expect_mesh_equals_single(cfg, 1);
    }
  }
}

TEST_F(Pipeline, StepMetricsReportTheBubble) {
  auto cfg = tiny_config();
  cfg.parallel.pp = 2;
  cfg.parallel.microbatches = 2;
  auto results = run_mesh(cfg, 1);
  for (const auto& r : results) {
    const auto& m = r.metrics.at(0);
    std::map<std::string, double> extra(m.extra.begin(), m.extra.end());
    ASSERT_TRUE(extra.count("pp_bubble_s") && extra.count("pp_bubble_share") && extra.count("pp_bubble_ideal"));
    EXPECT_GE(extra["pp_bubble_s"], 0);
    EXPECT_GE(extra["pp_bubble_share"], 0);
    EXPECT_LE(extra["pp_bubble_share"], 1);
    EXPECT_DOUBLE_EQ(extra["pp_bubble_ideal"], 1.0 / 3.0);
    EXPECT_GT(m.bytes_sent, 0u);
    EXPECT_GT(m.tokens_per_s, 0);
  }
}

}  // namespace
}  // namespace braid::train
