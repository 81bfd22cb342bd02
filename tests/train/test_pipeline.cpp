// Pipeline parallelism: the GPipe and 1F1B schedules (order of sends and
// receives checked for deadlock by simulation for pp in {2,3,4} and
// micro-batches in {1, pp-1, pp, 2pp+1}), the interleaved schedule (pp in
// {2,3,4}, chunks in {2,3}, micro-batches in {pp, 2pp, 3pp}), then real
// pipelines of threads whose K steps equal one process.
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
  EXPECT_THROW(parse_pipeline_schedule("zigzag"), ConfigError);
}

struct InterleavedCase {
  int stages, chunks, microbatches;
};
std::vector<InterleavedCase> interleaved_cases() {
  std::vector<InterleavedCase> out;
  for (int p : {2, 3, 4})
    for (int v : {2, 3})
      for (int m : {p, 2 * p, 3 * p}) out.push_back({p, v, m});
  return out;
}
std::string name_of(const InterleavedCase& c) {
  return fmt::format("interleaved pp={} chunks={} M={}", c.stages, c.chunks, c.microbatches);
}

TEST(InterleavedSchedule, EveryStageRunsEachChunkOfEachMicroBatchForwardThenBackwardOnce) {
  for (const auto& c : interleaved_cases()) {
    for (int s = 0; s < c.stages; ++s) {
      auto plan = pipeline_schedule(PipelineScheduleKind::Interleaved, c.stages, s, c.microbatches, c.chunks);
      ASSERT_EQ(plan.size(), 2u * static_cast<size_t>(c.microbatches * c.chunks)) << name_of(c);
      std::map<std::pair<int, int>, int> forwarded, backwarded;
      for (const auto& a : plan) {
        ASSERT_GE(a.chunk, 0);
        ASSERT_LT(a.chunk, c.chunks);
        const auto key = std::make_pair(a.chunk, a.microbatch);
        if (a.kind == PipelineAction::Forward) {
          ++forwarded[key];
        } else {
          EXPECT_EQ(forwarded[key], 1) << name_of(c) << " stage " << s << ": backward before forward";
          ++backwarded[key];
        }
      }
      EXPECT_EQ(forwarded.size(), static_cast<size_t>(c.microbatches * c.chunks)) << name_of(c);
      for (const auto& [key, n] : forwarded) EXPECT_EQ(n, 1) << name_of(c);
      for (const auto& [key, n] : backwarded) EXPECT_EQ(n, 1) << name_of(c);
      EXPECT_EQ(backwarded.size(), forwarded.size()) << name_of(c);
    }
  }
}

// Chunks cost (f + b)/V each. The bubble shrinks against 1F1B with the same
// pp and M; with M > pp it is Megatron's (P - 1)·(f + b)/V exactly.
TEST(InterleavedSchedule, NoDeadlockAndASmallerBubbleThan1F1B) {
  const double f = 1, b = 2;
  for (const auto& c : interleaved_cases()) {
    PipelineSimulation sim;
    ASSERT_NO_THROW(sim = simulate_pipeline(PipelineScheduleKind::Interleaved, c.stages, c.microbatches, f, b,
                                            c.chunks))
        << name_of(c);
    const auto plain = simulate_pipeline(PipelineScheduleKind::OneFOneB, c.stages, c.microbatches, f, b);
    EXPECT_LT(sim.makespan, plain.makespan) << name_of(c);
    if (c.microbatches > c.stages) {
      EXPECT_DOUBLE_EQ(sim.makespan, c.microbatches * (f + b) + (c.stages - 1) * (f + b) / c.chunks) << name_of(c);
    }
  }
}

TEST(InterleavedSchedule, ShapesItCannotRunAreConfigErrors) {
  EXPECT_THROW(pipeline_schedule(PipelineScheduleKind::Interleaved, 2, 0, 3, 2), ConfigError);  // M % pp
  EXPECT_THROW(pipeline_schedule(PipelineScheduleKind::Interleaved, 2, 0, 2, 1), ConfigError);  // one chunk
  EXPECT_THROW(pipeline_schedule(PipelineScheduleKind::Interleaved, 1, 0, 2, 2), ConfigError);  // one stage
  EXPECT_THROW(pipeline_schedule(PipelineScheduleKind::OneFOneB, 2, 0, 2, 2), ConfigError);     // chunks without it
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

// The interleaved schedule on real pipelines: layers go round the stages
// twice (pp2, 2 chunks of 1 block) or three times (pp2 with 3 chunks, and
// tp2 x pp2 with sequence parallelism).
TEST_F(Pipeline, InterleavedEqualsOneProcess) {
  struct Shape {
    int tp, pp, chunks, microbatches, layers;
    bool sp;
  };
  for (const auto& sh : {Shape{1, 2, 2, 2, 4, false}, Shape{1, 2, 3, 4, 6, false}, Shape{2, 2, 2, 4, 4, true},
                         Shape{1, 3, 2, 3, 6, false}}) {
    SCOPED_TRACE(fmt::format("tp={} pp={} chunks={} M={}", sh.tp, sh.pp, sh.chunks, sh.microbatches));
    auto cfg = tiny_config();
    cfg.model.layers = sh.layers;
    cfg.parallel.tp = sh.tp;
    cfg.parallel.pp = sh.pp;
    cfg.parallel.schedule = "interleaved";
    cfg.parallel.chunks = sh.chunks;
    cfg.parallel.microbatches = sh.microbatches;
    cfg.parallel.sequence_parallel = sh.sp;
    expect_mesh_equals_single(cfg, 2);
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

// Interleaved with 2 chunks: the ideal bubble is (P-1)/(V·M+P-1), and each
// stage sends twice the activation messages of 1F1B.
TEST_F(Pipeline, InterleavedHalvesTheIdealBubbleForTwiceTheMessages) {
  auto cfg = tiny_config();
  cfg.parallel.pp = 2;
  cfg.parallel.microbatches = 2;
  const auto plain = run_mesh(cfg, 1);
  cfg.parallel.schedule = "interleaved";
  const auto interleaved = run_mesh(cfg, 1);
  for (size_t r = 0; r < interleaved.size(); ++r) {
    const auto& m = interleaved[r].metrics.at(0);
    std::map<std::string, double> extra(m.extra.begin(), m.extra.end());
    EXPECT_DOUBLE_EQ(extra["pp_bubble_ideal"], 1.0 / 5.0);
    // Stage 0 sends activations of both chunks (and gradients of chunk 1),
    // stage 1 the same mirrored: twice 1F1B's point-to-point bytes.
    EXPECT_GT(m.bytes_sent, plain[r].metrics.at(0).bytes_sent) << "rank " << r;
  }
}

}  // namespace
}  // namespace braid::train
