// The training step: determinism, learning, accumulation, and data
// parallelism equal to one process with N times the batch (ranks are threads
// joined by the in-process transport).
#include <gtest/gtest.h>

#include <functional>
#include <mutex>
#include <thread>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/compute_threads.hpp"
#include "train/trainer.hpp"
#include "tests/train/pangram_corpus.hpp"

namespace braid::train {
namespace {

using test::pangram_corpus;

TrainConfig tiny_config() {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 2;
  c.model.width = 32;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;  // large, so that three steps move the weights well away from the init
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 0;
  c.train.steps = 3;
  c.train.batch_size = 2;
  c.train.eval_batches = 2;
  c.train.seed = 1234;
  return c;
}

class TrainLoop : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_F(TrainLoop, SameSeedGivesBitIdenticalLosses) {
  auto cfg = tiny_config();
  cfg.train.grad_accum = 2;
  std::vector<double> first, second;
  for (auto* out : {&first, &second}) {
    Trainer t(cfg, pangram_corpus(), nullptr);
    for (int i = 0; i < 6; ++i) out->push_back(t.train_step().loss);
    out->push_back(*t.evaluate());
  }
  EXPECT_EQ(first, second);  // exact, not approximate
  cfg.train.seed = 4321;
  Trainer other(cfg, pangram_corpus(), nullptr);
  EXPECT_NE(other.train_step().loss, first[0]);
}

TEST_F(TrainLoop, LossFallsOnLearnableText) {
  auto cfg = tiny_config();
  cfg.train.steps = 60;
  cfg.train.batch_size = 8;
  Trainer t(cfg, pangram_corpus(), nullptr);
  double start = *t.evaluate();
  StepMetrics m;
  for (int i = 0; i < 60; ++i) m = t.train_step();
  double end = *t.evaluate();
  EXPECT_NEAR(start, std::log(256.0), 0.2);
  EXPECT_LT(end, start - 2.0) << "validation loss " << start << " -> " << end;
  EXPECT_GT(m.tokens_per_s, 0);
  EXPECT_GT(m.grad_norm, 0);
  EXPECT_EQ(m.step, 60);
  EXPECT_EQ(m.comm_s, 0);  // one process: nothing communicated
}

TEST_F(TrainLoop, ObserverCanVetoAnUpdate) {
  struct Veto : StepObserver {
    int befores = 0, after_backwards = 0, afters = 0;
    void before_step(Trainer&) override { ++befores; }
    void after_backward(Trainer&) override { ++after_backwards; }
    bool before_optimizer_apply(Trainer& t, const StepMetrics&) override { return t.step() != 0; }
    void after_step(Trainer&, const StepMetrics&) override { ++afters; }
  } veto;
  Trainer t(tiny_config(), pangram_corpus(), nullptr);
  t.add_observer(&veto);
  auto before = t.model().params().params().clone();
  auto m = t.train_step();
  EXPECT_FALSE(m.applied);
  EXPECT_TRUE(torch::equal(before, t.model().params().params()));
  EXPECT_TRUE(t.train_step().applied);
  EXPECT_FALSE(torch::equal(before, t.model().params().params()));
  EXPECT_EQ(veto.befores, 2);
  EXPECT_EQ(veto.after_backwards, 2);
  EXPECT_EQ(veto.afters, 2);
}

// Keeps a copy of the gradients of the first step (the after_backward seam
// sees them averaged over the ranks, before the optimizer).
struct FirstGradients : StepObserver {
  torch::Tensor grads;
  void after_backward(Trainer& t) override {
    if (!grads.defined()) grads = t.model().params().grads().clone();
  }
};

struct RankResult {
  torch::Tensor params;
  torch::Tensor first_grads;
  std::vector<double> losses;
  double val_loss = 0;
  std::vector<StepMetrics> metrics;
};

// Runs `world` ranks as threads over the in-process transport; `inspect`
// sees each rank's trainer at the end.
std::vector<RankResult> run_ranks(const TrainConfig& cfg, int world, int steps,
                                  const std::function<void(Trainer&)>& inspect = {}) {
  auto hub = net::make_inproc_hub(world);
  std::vector<RankResult> results(static_cast<size_t>(world));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        comm::Communicator comm(net::connect_inproc(hub, r));
        Trainer t(cfg, pangram_corpus(), &comm);
        FirstGradients first;
        t.add_observer(&first);
        auto& out = results[static_cast<size_t>(r)];
        for (int s = 0; s < steps; ++s) {
          out.metrics.push_back(t.train_step());
          out.losses.push_back(out.metrics.back().loss);
        }
        out.val_loss = *t.evaluate();
        out.params = t.model().params().params().clone();
        out.first_grads = first.grads;
        if (inspect) inspect(t);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return results;
}

RankResult run_single(const TrainConfig& cfg, int steps) {
  Trainer t(cfg, pangram_corpus(), nullptr);
  FirstGradients first;
  t.add_observer(&first);
  RankResult out;
  for (int s = 0; s < steps; ++s) out.losses.push_back(t.train_step().loss);
  out.val_loss = *t.evaluate();
  out.params = t.model().params().params().clone();
  out.first_grads = first.grads;
  return out;
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).norm() / want.norm()).item<double>();
}

// The gradient that data parallelism produces must be the N-times-batch
// gradient: checked per parameter tensor, relative L2 error below 1e-5 (fp32
// summation order differs, so bit equality cannot be asked for).
void expect_same_gradients(const torch::Tensor& got, const torch::Tensor& want) {
  GptModel layout(tiny_config().model, 1);
  for (const auto& s : layout.params().slots()) {
    double err = relative_error(got.narrow(0, s.offset, s.numel), want.narrow(0, s.offset, s.numel));
    EXPECT_LT(err, 1e-5) << "gradient of " << s.name;
  }
}

// Parameters after K AdamW steps: relative L2 error of the whole parameter
// vector below 1e-5. Not per element: Adam divides by sqrt(v) + eps, so a
// gradient that is zero in exact arithmetic (the key bias: softmax ignores a
// shift of every score) is fp32 round-off that Adam turns into updates of
// lr·noise/eps, and those differ between any two summation orders.
void expect_same_parameters(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  EXPECT_LT(relative_error(got, want), 1e-5) << what;
}

TEST_F(TrainLoop, AccumulationEqualsOneBigBatch) {
  auto cfg = tiny_config();
  cfg.train.grad_accum = 3;
  auto big = cfg;
  big.train.grad_accum = 1;
  big.train.batch_size = cfg.train.batch_size * 3;
  auto accumulated = run_single(cfg, 3), one_batch = run_single(big, 3);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(accumulated.losses[i], one_batch.losses[i], 1e-5 * one_batch.losses[i]);
  expect_same_gradients(accumulated.first_grads, one_batch.first_grads);
  expect_same_parameters(accumulated.params, one_batch.params, "accumulated vs one batch");
}

struct DpCase {
  int world;
  int accum;
  uint64_t bucket_bytes;
};

class DataParallelEquivalence : public ::testing::TestWithParam<DpCase> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_P(DataParallelEquivalence, NRanksEqualOneProcessWithNTimesTheBatch) {
  const auto p = GetParam();
  const int steps = 3;
  auto cfg = tiny_config();
  cfg.train.grad_accum = p.accum;
  cfg.parallel.bucket_bytes = p.bucket_bytes;
  auto ranks = run_ranks(cfg, p.world, steps);

  auto single_cfg = cfg;
  single_cfg.train.batch_size = cfg.train.batch_size * p.world;
  auto single = run_single(single_cfg, steps);

  for (int r = 0; r < p.world; ++r) {
    const auto& rr = ranks[static_cast<size_t>(r)];
    // Every rank holds the very same bits (all-reduce results are identical).
    EXPECT_TRUE(torch::equal(rr.params, ranks[0].params)) << "rank " << r;
    EXPECT_EQ(rr.losses, ranks[0].losses) << "rank " << r;
    EXPECT_EQ(rr.val_loss, ranks[0].val_loss) << "rank " << r;
  }
  expect_same_gradients(ranks[0].first_grads, single.first_grads);
  expect_same_parameters(ranks[0].params, single.params, "parameters after 3 steps");
  for (int s = 0; s < steps; ++s)
    EXPECT_NEAR(ranks[0].losses[static_cast<size_t>(s)], single.losses[static_cast<size_t>(s)],
                1e-5 * single.losses[static_cast<size_t>(s)]);
  EXPECT_NEAR(ranks[0].val_loss, single.val_loss, 1e-5 * single.val_loss);

  // Buckets were launched from the gradient hooks during backward, once per
  // optimizer step whatever the accumulation, and something was sent.
  const auto& m = ranks[0].metrics.back();
  EXPECT_GT(m.bytes_sent, 0u);
  EXPECT_GT(m.comm_s, 0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, DataParallelEquivalence,
                         ::testing::Values(DpCase{2, 1, 1}, DpCase{2, 1, 1ull << 30}, DpCase{2, 2, 1},
                                           DpCase{2, 2, 1ull << 30}, DpCase{4, 1, 1}, DpCase{4, 1, 1ull << 30},
                                           DpCase{4, 2, 1}, DpCase{4, 2, 1ull << 30}),
                         [](const auto& info) {
                           return "world" + std::to_string(info.param.world) + "_accum" +
                                  std::to_string(info.param.accum) +
                                  (info.param.bucket_bytes == 1 ? "_tiny_buckets" : "_one_bucket");
                         });

TEST_F(TrainLoop, BucketsLaunchFromHooksOncePerStepAndOnlyWithOverlap) {
  auto cfg = tiny_config();
  cfg.train.steps = 2;
  cfg.parallel.bucket_bytes = 1;  // one bucket per parameter
  auto accum1 = run_ranks(cfg, 2, 2);
  cfg.train.grad_accum = 3;
  auto accum3 = run_ranks(cfg, 2, 2);
  cfg.parallel.overlap = false;
  auto no_overlap = run_ranks(cfg, 2, 2);

  // Same bytes whether the step had 1 or 3 micro-steps: accumulation
  // micro-steps do not communicate.
  EXPECT_EQ(accum1[0].metrics[1].bytes_sent, accum3[0].metrics[1].bytes_sent);
  // Without overlap the update is the same, computed later.
  EXPECT_TRUE(torch::equal(no_overlap[0].params, accum3[0].params));

  // The hook-driven launch is visible in the DataParallel timing: with
  // overlap every bucket goes out during backward, without none does.
  GptModel probe(cfg.model, 1);
  const int n_params = static_cast<int>(probe.params().slots().size());
  for (bool overlap : {true, false}) {
    cfg.parallel.overlap = overlap;
    std::mutex mu;
    std::vector<CommTiming> timings;
    run_ranks(cfg, 2, 1, [&](Trainer& t) {
      std::lock_guard<std::mutex> lock(mu);
      timings.push_back(t.data_parallel().last_timing());
    });
    ASSERT_EQ(timings.size(), 2u);
    for (const auto& timing : timings) {
      EXPECT_EQ(timing.buckets, n_params);
      EXPECT_EQ(timing.launched_in_backward, overlap ? n_params : 0) << "overlap " << overlap;
    }
  }
}

}  // namespace
}  // namespace braid::train
