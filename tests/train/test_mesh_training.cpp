// The parallel dimensions composed on a 4-rank mesh (ranks as threads):
// dp2 x tp2, dp2 x pp2 and tp2 x pp2 each train like one process with the
// same global batch.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "test_mesh_util.hpp"
#include "train/training_job.hpp"

namespace braid::train {
namespace {

using namespace mesh_test;

// One mesh shape with its memory modes; each trains like one process.
struct MeshCase {
  const char* name;
  int dp = 1, tp = 1, pp = 1;
  int microbatches = 0, grad_accum = 1;
  const char* schedule = "1f1b";
  bool sequence_parallel = false;
  const char* recompute = "none";
  int zero = 0;
};
void PrintTo(const MeshCase& c, std::ostream* os) { *os << c.name; }

TrainConfig config_of(const MeshCase& c) {
  auto cfg = tiny_config();
  cfg.parallel.dp = c.dp;
  cfg.parallel.tp = c.tp;
  cfg.parallel.pp = c.pp;
  cfg.parallel.microbatches = c.microbatches;
  cfg.train.grad_accum = c.grad_accum;
  cfg.parallel.schedule = c.schedule;
  cfg.parallel.sequence_parallel = c.sequence_parallel;
  cfg.parallel.recompute = c.recompute;
  cfg.parallel.zero = c.zero;
  return cfg;
}

class MeshEquivalence : public ::testing::TestWithParam<MeshCase> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_P(MeshEquivalence, EqualsOneProcess) { expect_mesh_equals_single(config_of(GetParam()), 3); }

// The pairs of dimensions; sequence parallelism (the tp collectives cut on
// the sequence, the pipeline's messages halved); recomputation (a block's
// forward, tp collectives included, re-run inside backward in the same order
// on every tp rank); ZeRO-1 on the mesh (moments sharded over dp:
// reduce-scatter, own update, all-gather); ZeRO-2/3 on the mesh (a
// reduce-scatter per block and micro-batch, stage 3 gathering each block's
// parameters around its forward and backward; the tied embedding and the
// sequence-parallel partial sums added shard by shard).
INSTANTIATE_TEST_SUITE_P(
    Modes, MeshEquivalence,
    ::testing::Values(MeshCase{.name = "dp2tp2", .dp = 2, .tp = 2},
                      MeshCase{.name = "dp2pp2", .dp = 2, .pp = 2, .microbatches = 2},
                      MeshCase{.name = "tp2pp2_gpipe", .tp = 2, .pp = 2, .microbatches = 3, .schedule = "gpipe"},
                      MeshCase{.name = "tp2_sp", .tp = 2, .grad_accum = 2, .sequence_parallel = true},
                      MeshCase{.name = "tp2pp2_sp_full", .tp = 2, .pp = 2, .microbatches = 3,
                               .sequence_parallel = true, .recompute = "full"},
                      MeshCase{.name = "dp2tp2_selective", .dp = 2, .tp = 2, .recompute = "selective"},
                      MeshCase{.name = "dp2pp2_full", .dp = 2, .pp = 2, .microbatches = 2, .recompute = "full"},
                      MeshCase{.name = "dp2tp2_zero1", .dp = 2, .tp = 2, .grad_accum = 2, .zero = 1},
                      MeshCase{.name = "dp2pp2_zero1", .dp = 2, .pp = 2, .microbatches = 3, .zero = 1},
                      MeshCase{.name = "dp2tp2_zero2", .dp = 2, .tp = 2, .grad_accum = 2, .zero = 2},
                      MeshCase{.name = "dp2tp2_zero3_sp_selective", .dp = 2, .tp = 2, .sequence_parallel = true,
                               .recompute = "selective", .zero = 3},
                      MeshCase{.name = "dp2pp2_zero2", .dp = 2, .pp = 2, .microbatches = 3, .zero = 2},
                      MeshCase{.name = "dp2pp2_zero3_interleaved", .dp = 2, .pp = 2, .microbatches = 2,
                               .schedule = "interleaved", .zero = 3},
                      MeshCase{.name = "tp2pp2_zero3_full", .tp = 2, .pp = 2, .microbatches = 3, .recompute = "full",
                               .zero = 3}),
    [](const auto& info) { return std::string(info.param.name); });

class MeshTraining : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_F(MeshTraining, Zero1HoldsHalfTheMomentsOnEachDpRank) {
  for (const auto& r : run_mesh(config_of(MeshCase{.name = "dp2tp2_zero1", .dp = 2, .tp = 2, .zero = 1}), 1))
    EXPECT_EQ(r.optimizer_numel, r.coords.dp == 0 ? (r.local_numel + 1) / 2 : r.local_numel / 2)
        << "dp rank " << r.coords.dp << " of a stage with " << r.local_numel << " elements";
}

// ZeRO-3 on the mesh: each dp rank keeps its half of the stage's parameters,
// gradients and moments between steps (the flat buffers are released).
TEST_F(MeshTraining, Zero3HoldsHalfTheStageOnEachDpRank) {
  auto cfg = config_of(MeshCase{.name = "dp2pp2_zero3", .dp = 2, .pp = 2, .microbatches = 2, .zero = 3});
  const MeshShape shape{2, 1, 2};
  comm::run_in_process(shape.world(), [&](comm::Communicator& comm) {
    ParallelMesh mesh(&comm, shape);
    PipelineTrainer t(cfg, pangram_corpus(), mesh);
    t.train_step();
    ASSERT_NE(t.zero(), nullptr);
    const int64_t local = t.zero()->layout().units().back().end;  // the stage's elements
    const int64_t shard = static_cast<int64_t>(t.zero()->shard_params().size());
    EXPECT_GE(2 * shard, local);
    EXPECT_LE(2 * shard, local + 2 * static_cast<int64_t>(t.zero()->layout().units().size()));  // padding
    EXPECT_EQ(t.optimizer().numel(), shard);
    EXPECT_EQ(t.model().params().params().numel(), 0) << "the flat parameter buffer is released";
    const auto& mem = t.zero()->memory();
    EXPECT_EQ(mem.params.current, 4 * shard) << "only the own shard stays gathered after the step";
  });
}

// The dp all-reduce of a pipeline stage's gradients runs in buckets launched
// from the gradient hooks of the stage's last backward (overlapping it); with
// parallel.overlap = false they all wait for the end of the pipeline. Both
// give one process's math (Dp2Pp2EqualsOneProcess covers the default).
TEST_F(MeshTraining, Dp2Pp2BucketsOverlapTheLastBackward) {
  auto cfg = tiny_config();
  cfg.parallel.dp = 2;
  cfg.parallel.pp = 2;
  cfg.parallel.microbatches = 2;
  cfg.parallel.bucket_bytes = 4096;  // several buckets per stage
  for (bool overlap : {true, false}) {
    cfg.parallel.overlap = overlap;
    for (const auto& r : run_mesh(cfg, 1)) {
      const auto& m = r.metrics.at(0);
      std::map<std::string, double> extra(m.extra.begin(), m.extra.end());
      ASSERT_TRUE(extra.count("dp_buckets_overlapped"));
      EXPECT_GT(extra["dp_buckets"], 1);
      if (overlap)
        EXPECT_GT(extra["dp_buckets_overlapped"], 0) << "stage " << r.coords.pp;
      else
        EXPECT_EQ(extra["dp_buckets_overlapped"], 0);
    }
  }
  cfg.parallel.overlap = false;
  expect_mesh_equals_single(cfg, 2);
}

// What `braid train` runs with tp/pp set: run_training_job hands the config
// to the mesh engine, which trains, validates and writes the run directory
// with the mesh and the bubble fields; fault tolerance is refused under tp/pp
// (checkpoints under tp/pp: test_mesh_checkpoint.cpp).
TEST_F(MeshTraining, TrainingJobRunsTheMeshEngine) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("braid_mesh_job_{}", ::getpid());
  std::filesystem::create_directories(dir);
  {
    std::ofstream text(dir / "corpus.txt");
    for (int i = 0; i < 300; ++i) text << "sphinx of black quartz, judge my vow. pack my box with five dozen jugs! ";
  }
  auto cfg = tiny_config();
  cfg.data.paths = std::vector<std::string>{(dir / "corpus.txt").string()};
  cfg.train.steps = 4;
  cfg.train.eval_every = 2;
  cfg.train.sample_tokens = 24;
  cfg.parallel.tp = 2;
  cfg.parallel.pp = 2;
  cfg.parallel.microbatches = 2;
  cfg.run.dir = (dir / "run").string();
  const int world = 4;
  auto summaries = run_jobs(cfg, world);
  for (const auto& s : summaries) {
    EXPECT_EQ(s.steps, 4);
    ASSERT_TRUE(s.final_val_loss.has_value());
    EXPECT_EQ(*s.final_val_loss, *summaries[0].final_val_loss);
    EXPECT_EQ(s.final_loss, summaries[0].final_loss);
  }
  std::ifstream metrics(dir / "run" / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_TRUE(j.contains("pp_bubble_share")) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 4);
  std::ifstream summary_file(dir / "run" / "summary.json");
  auto summary = nlohmann::json::parse(summary_file);
  EXPECT_EQ(summary["mesh"]["tp"], 2);
  EXPECT_EQ(summary["mesh"]["pp"], 2);
  EXPECT_EQ(summary["mesh"]["dp"], 1);

  // The end-of-run sample comes from the whole model put together from the
  // ranks' slices: the same text one process samples after the same steps
  // (parameters equal to ~1e-6, far from flipping a draw of 24 tokens).
  ASSERT_FALSE(summaries[0].sample.empty());
  EXPECT_TRUE(std::filesystem::exists(dir / "run" / "sample.txt"));
  auto single_cfg = cfg;
  single_cfg.parallel.tp = 1;
  single_cfg.parallel.pp = 1;
  single_cfg.parallel.microbatches = 0;
  single_cfg.train.grad_accum = 2;
  single_cfg.run.dir = (dir / "single").string();
  const auto single = run_jobs(single_cfg, 1);
  EXPECT_EQ(summaries[0].sample, single[0].sample);

  auto with_fault = cfg;
  with_fault.fault.enabled = true;
  EXPECT_THROW(run_training_job(with_fault, nullptr, JobOptions{}), ConfigError);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace braid::train
