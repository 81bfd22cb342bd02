// Checkpoints of the mesh engine (train/mesh_state.hpp), ranks as threads
// over the in-process transport and a MemStore: a checkpoint written under
// one of plain data parallelism, tp, pp or tp x pp loads under another at
// another world size.
//   - right after loading, every element a rank holds (params, both AdamW
//     moments, through copy_to_full / gather_to_full) equals the saved full
//     state bit for bit: a wrong mapping of slices fails here;
//   - the resumed run ends like one process that never stopped (losses and
//     parameters to 1e-5 relative; the reductions run in another order
//     under each mode, so not bit for bit);
//   - a timer or stop signal seen by one rank is agreed by all through the
//     mesh step's world all-reduce;
//   - `braid train`'s job loop (run_training_job) saves under tp and resumes
//     under tp = 1.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include <fmt/format.h>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
#include "core/error.hpp"
#include "net/store.hpp"
#include "test_mesh_util.hpp"
#include "train/checkpointing.hpp"
#include "train/mesh_state.hpp"
#include "train/training_job.hpp"

namespace braid::train {
namespace {

namespace fs = std::filesystem;
using namespace mesh_test;

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/braid_test_mesh_checkpoint_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Two micro-batches (accumulation steps) of 2 sequences per step under
// every mode, so all modes train the same global batch.
TrainConfig ck_config(const std::string& dir) {
  TrainConfig c = tiny_config();
  c.model.layers = 2;
  c.train.steps = 4;
  c.train.grad_accum = 2;
  c.checkpoint.dir = dir;
  c.checkpoint.every_steps = 2;
  c.checkpoint.keep_last = 0;
  c.checkpoint.at_end = false;
  c.checkpoint.commit_timeout_s = 30;
  return c;
}

struct Mode {
  const char* name;
  int dp, tp, pp;
  int zero = 0;
  int world() const { return dp * tp * pp; }
  bool mesh() const { return tp > 1 || pp > 1; }
};

// One rank's view of a run; full-layout tensors hold NaN where the rank
// holds nothing.
struct RankOut {
  std::vector<double> losses;
  torch::Tensor params, adam_m, adam_v;
  torch::Tensor loaded_params, loaded_m, loaded_v;  // right after resume()
  int64_t step = 0, adam_step = 0;
  SamplerPosition position;
  std::optional<ckpt::LoadedCheckpoint> loaded;
  int64_t committed = 0;
  bool stopped = false;
};

torch::Tensor as_tensor(std::span<float> v) {
  return torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat32).clone();
}

void capture(Trainer& t, torch::Tensor& p, torch::Tensor& m, torch::Tensor& v) {
  p = t.model().params().params().clone();
  m = as_tensor(t.optimizer().exp_avg());
  v = as_tensor(t.optimizer().exp_avg_sq());
}

void capture(PipelineTrainer& t, torch::Tensor& p, torch::Tensor& m, torch::Tensor& v) {
  const int64_t n = t.model().full_numel(), local_n = t.model().params().numel();
  p = torch::full({n}, std::nan(""), torch::kFloat32);
  m = p.clone();
  v = p.clone();
  auto nan_local = [&] { return torch::full({local_n}, std::nan(""), torch::kFloat32); };
  torch::Tensor lp, lm = nan_local(), lv = nan_local();
  if (auto* zero = t.zero()) {
    // ZeRO-2/3: the moments (stage 3: the parameters too) are the pieces of
    // the dp shard: NaN elsewhere.
    lp = zero->stage() >= 3 ? nan_local() : t.model().params().params().clone();
    for (const auto& piece : zero->layout().pieces()) {
      const int64_t len = piece.flat_end - piece.flat_begin;
      auto fill = [&](torch::Tensor& local, std::span<float> shard) {
        local.narrow(0, piece.flat_begin, len)
            .copy_(as_tensor(shard.subspan(static_cast<size_t>(piece.shard_begin), static_cast<size_t>(len))));
      };
      if (zero->stage() >= 3) fill(lp, zero->shard_params());
      fill(lm, t.optimizer().exp_avg());
      fill(lv, t.optimizer().exp_avg_sq());
    }
  } else {
    // The moments cover optimizer_range() of the local elements (a dp shard
    // under ZeRO-1): NaN elsewhere.
    const auto [lo, hi] = t.optimizer_range();
    lp = t.model().params().params().clone();
    lm.narrow(0, lo, hi - lo).copy_(as_tensor(t.optimizer().exp_avg()));
    lv.narrow(0, lo, hi - lo).copy_(as_tensor(t.optimizer().exp_avg_sq()));
  }
  t.model().gather_to_full(lp, p);
  t.model().gather_to_full(lm, m);
  t.model().gather_to_full(lv, v);
}

StepMetrics one_step(Trainer& t, Checkpointing*) { return t.train_step(); }
StepMetrics one_step(PipelineTrainer& t, Checkpointing* ck) {
  if (ck) ck->before_mesh_step(t);
  StepMetrics m = t.train_step();
  if (ck) ck->after_mesh_step(t, m);
  return m;
}

template <class T>
void drive(T& t, std::unique_ptr<Checkpointing> ck, bool resume, int64_t until, RankOut& out) {
  if (ck && resume) {
    out.loaded = ck->resume();
    capture(t, out.loaded_params, out.loaded_m, out.loaded_v);
  }
  while (t.step() < until) {
    StepMetrics m = one_step(t, ck.get());
    out.losses.push_back(m.loss);
    if (ck && ck->stop_agreed()) {
      out.stopped = true;
      break;
    }
  }
  if (ck) {
    ck->wait();
    out.committed = ck->stats().committed;
  }
  capture(t, out.params, out.adam_m, out.adam_v);
  out.step = t.step();
  out.adam_step = t.optimizer().step();
  out.position = t.sampler().position();
}

std::vector<RankOut> run(const Mode& mode, TrainConfig cfg, int64_t until, bool checkpointing, bool resume,
                         std::function<void(int rank, CheckpointingHooks&)> set_hooks = {}) {
  cfg.train.batch_size = 2 / mode.dp;
  cfg.parallel.tp = mode.tp;
  cfg.parallel.pp = mode.pp;
  cfg.parallel.zero = mode.zero;
  const int world = mode.world();
  auto hub = net::make_inproc_hub(world);
  auto store = std::make_shared<net::MemStore>();
  std::vector<RankOut> out(static_cast<size_t>(world));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<comm::Communicator> comm;
        if (world > 1) comm = std::make_unique<comm::Communicator>(net::connect_inproc(hub, r));
        CheckpointingHooks hooks;
        hooks.durable = false;
        hooks.stop_requested = [] { return false; };
        if (set_hooks) set_hooks(r, hooks);
        auto& o = out[static_cast<size_t>(r)];
        auto st = world > 1 ? store : nullptr;
        if (mode.mesh()) {
          ParallelMesh mesh(comm.get(), MeshShape{mode.dp, mode.tp, mode.pp});
          PipelineTrainer t(cfg, pangram_corpus(), mesh);
          std::unique_ptr<Checkpointing> ck;
          if (checkpointing) ck = std::make_unique<Checkpointing>(t, cfg.checkpoint, cfg.to_toml(), st, hooks);
          drive(t, std::move(ck), resume, until, o);
        } else {
          Trainer t(cfg, pangram_corpus(), comm.get());
          std::unique_ptr<Checkpointing> ck;
          if (checkpointing) ck = std::make_unique<Checkpointing>(t, cfg.checkpoint, cfg.to_toml(), st, hooks);
          drive(t, std::move(ck), resume, until, o);
        }
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

// The full tensor from the ranks' pieces; every element must be held.
torch::Tensor assemble(const std::vector<RankOut>& ranks, torch::Tensor RankOut::*field) {
  torch::Tensor full;
  for (const auto& r : ranks) {
    const auto& t = r.*field;
    if (!full.defined()) full = t.clone();
    auto mine = ~torch::isnan(t);
    full.masked_scatter_(mine, t.masked_select(mine));
  }
  EXPECT_FALSE(torch::isnan(full).any().item<bool>()) << "some elements are held by no rank";
  return full;
}

// The elements `got` holds equal `want`'s, bit for bit.
void expect_held_equal(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  auto mine = ~torch::isnan(got);
  EXPECT_GT(mine.sum().item<int64_t>(), 0) << what << ": holds nothing";
  EXPECT_TRUE(torch::equal(got.masked_select(mine), want.masked_select(mine))) << what;
}

struct Case {
  Mode from, to;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.from.name << " -> " << c.to.name; }

class MeshCheckpoint : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

// Save at step 2 under `from`, resume under `to` until step 4.
TEST_P(MeshCheckpoint, LoadsUnderAnotherModeAndContinuesLikeOneProcess) {
  const Case c = GetParam();
  TempDir dir;
  const TrainConfig cfg = ck_config(dir.path);
  const Mode single{"single", 1, 1, 1};
  const auto reference = run(single, cfg, 4, /*checkpointing=*/false, false)[0];

  const auto saved = run(c.from, cfg, 2, true, false);
  ASSERT_EQ(saved[0].committed, 1);
  {
    ckpt::CheckpointReader rd(ckpt::CheckpointDir(dir.path).step_path(2));
    EXPECT_EQ(rd.manifest().world_size, c.from.world());
    EXPECT_TRUE(rd.verify().empty());
  }
  const auto want_p = assemble(saved, &RankOut::params);
  const auto want_m = assemble(saved, &RankOut::adam_m);
  const auto want_v = assemble(saved, &RankOut::adam_v);

  TrainConfig resume_cfg = cfg;
  resume_cfg.checkpoint.every_steps = 0;
  resume_cfg.train.seed = 999;  // weights, data position: everything must come from the checkpoint
  const auto resumed = run(c.to, resume_cfg, 4, true, true);

  for (size_t r = 0; r < resumed.size(); ++r) {
    const auto& got = resumed[r];
    const std::string who = fmt::format("{} rank {}", c.to.name, r);
    ASSERT_TRUE(got.loaded.has_value()) << who;
    EXPECT_EQ(got.loaded->step, 2) << who;
    EXPECT_EQ(got.loaded->saved_world, c.from.world()) << who;
    expect_held_equal(got.loaded_params, want_p, who + ": params right after loading");
    expect_held_equal(got.loaded_m, want_m, who + ": adam_m right after loading");
    expect_held_equal(got.loaded_v, want_v, who + ": adam_v right after loading");
    EXPECT_EQ(got.step, 4) << who;
    EXPECT_EQ(got.adam_step, reference.adam_step) << who;
    EXPECT_EQ(got.position, reference.position) << who;
    ASSERT_EQ(got.losses.size(), 2u) << who;
    for (size_t i = 0; i < 2; ++i)
      EXPECT_NEAR(got.losses[i], reference.losses[2 + i], 1e-5 * std::abs(reference.losses[2 + i]))
          << who << ", step " << 3 + i;
  }
  // Every element is loaded by some rank, and the run ends where one
  // process that never stopped ends.
  assemble(resumed, &RankOut::loaded_params);
  const auto final_params = assemble(resumed, &RankOut::params);
  EXPECT_LT(relative_error(final_params, reference.params), 1e-5);
  EXPECT_GT(relative_error(reference.params, want_p), 1e-4) << "steps 3 and 4 hardly moved the weights";
}

INSTANTIATE_TEST_SUITE_P(
    Modes, MeshCheckpoint,
    ::testing::Values(Case{{"tp2", 1, 2, 1}, {"single", 1, 1, 1}}, Case{{"tp2", 1, 2, 1}, {"dp2", 2, 1, 1}},
                      Case{{"dp2", 2, 1, 1}, {"pp2", 1, 1, 2}}, Case{{"dp2", 2, 1, 1}, {"tp2pp2", 1, 2, 2}},
                      Case{{"pp2", 1, 1, 2}, {"tp2", 1, 2, 1}}, Case{{"tp2pp2", 1, 2, 2}, {"dp2tp2", 2, 2, 1}},
                      Case{{"dp2tp2z1", 2, 2, 1, 1}, {"single", 1, 1, 1}},
                      Case{{"dp2", 2, 1, 1}, {"dp2pp2z1", 2, 1, 2, 1}},
                      Case{{"dp2tp2z3", 2, 2, 1, 3}, {"single", 1, 1, 1}},
                      Case{{"tp2", 1, 2, 1}, {"dp2pp2z2", 2, 1, 2, 2}}),
    [](const auto& info) { return std::string(info.param.from.name) + "_to_" + info.param.to.name; });

// Requests under the mesh engine are agreed through the step's world
// all-reduce: a timer due on rank 0 alone saves step 1 on every rank, a stop
// signal seen by rank 1 alone stops every rank after step 3 with that step
// committed.
TEST(MeshCheckpointRequests, OneRanksTimerAndStopSignalAreAgreedByAll) {
  set_compute_threads(1);
  TempDir dir;
  TrainConfig cfg = ck_config(dir.path);
  cfg.checkpoint.every_steps = 0;
  cfg.train.steps = 6;
  auto out = run(Mode{"tp2", 1, 2, 1}, cfg, 6, true, false, [](int rank, CheckpointingHooks& h) {
    auto calls = std::make_shared<int>(0);
    auto timer_calls = std::make_shared<int>(0);
    if (rank == 1) h.stop_requested = [calls] { return ++*calls >= 3; };
    h.time_due = [rank, timer_calls] { return rank == 0 && ++*timer_calls == 1; };
  });
  for (size_t r = 0; r < out.size(); ++r) {
    EXPECT_TRUE(out[r].stopped) << "rank " << r;
    EXPECT_EQ(out[r].step, 3) << "rank " << r;
    EXPECT_EQ(out[r].committed, 2) << "rank " << r;
  }
  const ckpt::CheckpointDir d(dir.path);
  EXPECT_TRUE(fs::exists(d.step_path(1)));
  EXPECT_TRUE(fs::exists(d.step_path(3)));
  EXPECT_FALSE(fs::exists(d.step_path(2)));
}

// The runs of the mapping: tp = pp = 1 holds each buffer whole in one run;
// under tp the row-parallel weights give one run per row and the loader
// stages them instead.
TEST(MeshStateRuns, MergedRunsCoverTheLocalBufferOnce) {
  set_compute_threads(1);
  TrainConfig cfg = ck_config("");
  for (int tp : {1, 2}) {
    cfg.parallel.tp = tp;
    std::vector<std::vector<ElementRun>> all(static_cast<size_t>(tp)), direct(static_cast<size_t>(tp));
    std::vector<int64_t> local_numel(static_cast<size_t>(tp));
    auto hub = net::make_inproc_hub(tp);
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(tp));
    for (int r = 0; r < tp; ++r)
      threads.emplace_back([&, r] {
        try {
          std::unique_ptr<comm::Communicator> comm;
          if (tp > 1) comm = std::make_unique<comm::Communicator>(net::connect_inproc(hub, r));
          ParallelMesh mesh(comm.get(), MeshShape{1, tp, 1});
          TensorParallelGpt model(cfg.model, 1, {r, tp, 0, 1}, mesh.tp(), 30);
          all[static_cast<size_t>(r)] = element_runs(model, true);
          direct[static_cast<size_t>(r)] = element_runs(model, false);
          local_numel[static_cast<size_t>(r)] = model.params().numel();
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    const int64_t full = GptModel(cfg.model, 0).params().numel();
    std::vector<int> covered(static_cast<size_t>(full), 0);
    for (int r = 0; r < tp; ++r) {
      std::vector<int> local(static_cast<size_t>(local_numel[static_cast<size_t>(r)]), 0);
      for (const auto& run : all[static_cast<size_t>(r)])
        for (int64_t i = 0; i < run.length; ++i) {
          ++local[static_cast<size_t>(run.local_begin + i)];
          covered[static_cast<size_t>(run.full_begin + i)] = 1;
        }
      for (size_t i = 0; i < local.size(); ++i) ASSERT_EQ(local[i], 1) << "tp " << tp << " rank " << r << " element " << i;
    }
    for (size_t i = 0; i < covered.size(); ++i) ASSERT_EQ(covered[i], 1) << "tp " << tp << ": full element " << i;
    if (tp == 1) {
      ASSERT_EQ(all[0].size(), 1u);
      EXPECT_EQ(all[0][0], (ElementRun{0, 0, full}));
      EXPECT_EQ(direct[0], all[0]);
    } else {
      // Two row-parallel weights per layer, one run per row of width C.
      EXPECT_GE(all[0].size(), static_cast<size_t>(2 * cfg.model.layers * cfg.model.width));
      EXPECT_LT(direct[0].size(), all[0].size());
    }
  }
}

// `braid train`'s job loop: a tp2 job saves its last step, a tp = 1 job
// resumes it and runs to the end; a --resume without a directory is refused.
TEST(MeshCheckpointJob, TrainingJobSavesUnderTpAndResumesWithoutIt) {
  set_compute_threads(1);
  TempDir tmp;
  const fs::path dir = tmp.path;
  {
    std::ofstream text(dir / "corpus.txt");
    for (int i = 0; i < 300; ++i) text << "sphinx of black quartz, judge my vow. pack my box with five dozen jugs! ";
  }
  TrainConfig cfg = ck_config((dir / "ckpt").string());
  cfg.data.paths = std::vector<std::string>{(dir / "corpus.txt").string()};
  cfg.train.steps = 2;
  cfg.train.sample_tokens = 0;
  cfg.checkpoint.every_steps = 0;
  cfg.checkpoint.at_end = true;
  cfg.parallel.tp = 2;
  const int world = 2;
  JobOptions saving;
  saving.write_run_dir = false;
  saving.store = std::make_shared<net::MemStore>();
  auto summaries = run_jobs(cfg, world, saving);
  for (const auto& s : summaries) EXPECT_EQ(s.last_checkpoint_step, 2);
  ASSERT_TRUE(fs::exists(ckpt::CheckpointDir(cfg.checkpoint.dir).step_path(2)));

  TrainConfig one = cfg;
  one.parallel.tp = 1;
  one.train.steps = 3;
  JobOptions options;
  options.progress = nullptr;
  options.print_sample = false;
  options.write_run_dir = false;
  options.resume = true;
  const JobSummary s = run_training_job(one, nullptr, options);
  ASSERT_TRUE(s.resumed_from.has_value());
  EXPECT_EQ(*s.resumed_from, 2);
  EXPECT_EQ(s.steps, 3);
  EXPECT_EQ(s.last_checkpoint_step, 3);

  TrainConfig no_dir = cfg;
  no_dir.checkpoint.dir.clear();
  JobOptions resume;
  resume.resume = true;
  EXPECT_THROW(run_training_job(no_dir, nullptr, resume), ConfigError);
}

}  // namespace
}  // namespace braid::train
