#pragma once
// Helpers for the mesh tests: a small corpus and model, ranks as threads over
// the in-process transport, one-process reference runs, and the full model's
// parameters reassembled from the ranks' slices.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "comm/bootstrap.hpp"
#include "comm/communicator.hpp"
#include "net/mesh.hpp"
#include "train/compute_threads.hpp"
#include "train/parallel_mesh.hpp"
#include "train/pipeline_trainer.hpp"
#include "train/trainer.hpp"
#include "train/training_job.hpp"
#include "tests/train/pangram_corpus.hpp"

namespace braid::train::mesh_test {

using test::pangram_corpus;

inline TrainConfig tiny_config() {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 4;
  c.model.width = 32;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;  // large, so that a few steps move the weights well away from the init
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 0;
  c.train.steps = 3;
  c.train.batch_size = 2;
  c.train.eval_batches = 2;
  c.train.seed = 1234;
  return c;
}

struct MeshResult {
  std::vector<StepMetrics> metrics;
  std::vector<double> losses;
  double val_loss = 0;
  torch::Tensor params;  // full-model layout: this rank's elements, NaN elsewhere
  MeshCoords coords;
  int64_t local_numel = 0;      // the stage's flat buffer
  int64_t optimizer_numel = 0;  // elements whose AdamW moments this rank holds
};

// Runs dp*tp*pp ranks (config.parallel) as threads for `steps` steps.
inline std::vector<MeshResult> run_mesh(const TrainConfig& cfg, int steps) {
  validate_mesh_config(cfg.model, cfg.train, cfg.parallel);
  const MeshShape shape{static_cast<int>(cfg.parallel.dp ? cfg.parallel.dp : 1), static_cast<int>(cfg.parallel.tp),
                        static_cast<int>(cfg.parallel.pp)};
  const int world = shape.world();
  std::vector<MeshResult> results(static_cast<size_t>(world));
  comm::run_in_process(world, [&](comm::Communicator& comm) {
    ParallelMesh mesh(&comm, shape);
    PipelineTrainer t(cfg, pangram_corpus(), mesh);
    auto& out = results[static_cast<size_t>(comm.rank())];
    out.coords = mesh.coords();
    out.local_numel = t.model().params().numel();
    out.optimizer_numel = t.optimizer().numel();
    for (int s = 0; s < steps; ++s) {
      out.metrics.push_back(t.train_step());
      out.losses.push_back(out.metrics.back().loss);
    }
    out.val_loss = *t.evaluate();
    out.params = torch::full({t.model().full_numel()}, std::nan(""), torch::kFloat32);
    t.model().gather_to_full(t.local_parameters(), out.params);  // ZeRO-3: all-gathered over dp
  });
  return results;
}

// One process with the same global batch: batch_size·dp sequences, the
// pipeline's micro-batches as accumulation steps.
struct SingleResult {
  std::vector<double> losses;
  double val_loss = 0;
  torch::Tensor params;
};
// run_training_job on `world` ranks as threads (in-process transport), with
// `base` options plus the test defaults (no progress line, no sample).
inline std::vector<JobSummary> run_jobs(const TrainConfig& cfg, int world, JobOptions base = {}) {
  std::vector<JobSummary> summaries(static_cast<size_t>(world));
  comm::run_in_process(world, [&](comm::Communicator& comm) {
    JobOptions options = base;
    options.local_ranks = world;
    options.progress = nullptr;
    options.print_sample = false;
    summaries[static_cast<size_t>(comm.rank())] = run_training_job(cfg, &comm, options);
  });
  return summaries;
}

inline SingleResult run_single(TrainConfig cfg, int steps) {
  cfg.train.batch_size *= cfg.parallel.dp ? cfg.parallel.dp : 1;
  cfg.train.grad_accum = pipeline_microbatches(cfg.train, cfg.parallel);
  cfg.parallel = ParallelConfig{};
  Trainer t(cfg, pangram_corpus(), nullptr);
  SingleResult out;
  for (int s = 0; s < steps; ++s) out.losses.push_back(t.train_step().loss);
  out.val_loss = *t.evaluate();
  out.params = t.model().params().params().clone();
  return out;
}

// The full parameter vector put together from the ranks of dp rank `dp`;
// every element must be covered.
inline torch::Tensor assemble(const std::vector<MeshResult>& results, int dp) {
  torch::Tensor full;
  for (const auto& r : results) {
    if (r.coords.dp != dp) continue;
    if (!full.defined()) full = r.params.clone();
    auto mine = ~torch::isnan(r.params);
    full.masked_scatter_(mine, r.params.masked_select(mine));
  }
  EXPECT_FALSE(torch::isnan(full).any().item<bool>()) << "some parameters are held by no rank";
  return full;
}

inline double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).norm() / want.norm()).item<double>();
}

// K steps on the mesh equal one process: losses, validation loss and the
// final parameters (relative 1e-5; see test_train_loop.cpp on why the whole
// vector and not each element), and every dp replica ends bit-identical.
inline void expect_mesh_equals_single(const TrainConfig& cfg, int steps) {
  auto mesh = run_mesh(cfg, steps);
  auto single = run_single(cfg, steps);
  for (const auto& r : mesh) {
    ASSERT_EQ(r.losses.size(), single.losses.size());
    for (size_t i = 0; i < r.losses.size(); ++i)
      EXPECT_NEAR(r.losses[i], single.losses[i], 1e-5 * std::abs(single.losses[i])) << "step " << i;
    EXPECT_NEAR(r.val_loss, single.val_loss, 1e-5 * std::abs(single.val_loss));
  }
  const int dp = cfg.parallel.dp ? static_cast<int>(cfg.parallel.dp) : 1;
  auto first = assemble(mesh, 0);
  EXPECT_LT(relative_error(first, single.params), 1e-5);
  EXPECT_GT(relative_error(first, GptModel(cfg.model, cfg.train.seed).params().params()), 1e-3)
      << "the parameters hardly moved: the comparison would prove nothing";
  for (int d = 1; d < dp; ++d) EXPECT_TRUE(torch::equal(assemble(mesh, d), first)) << "dp replica " << d;
}

}  // namespace braid::train::mesh_test
