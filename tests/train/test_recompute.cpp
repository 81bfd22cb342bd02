// Activation recomputation (train/recompute.hpp): selective and full give
// the same losses and gradients as keeping every activation, with the fused
// and with the stock LibTorch operations; a training run is unchanged; and
// full recomputation keeps far fewer bytes alive between forward and backward.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "train/compute_threads.hpp"
#include "train/memory_accounting.hpp"
#include "train/recompute.hpp"
#include "train/trainer.hpp"

namespace braid::train {
namespace {

ModelConfig small_model() {
  ModelConfig m;
  m.context = 32;
  m.layers = 3;
  m.width = 32;
  m.heads = 4;
  return m;
}

struct LossAndGrads {
  double loss = 0;
  torch::Tensor grads;
};

LossAndGrads loss_and_grads(RecomputeMode mode, bool reference_ops) {
  GptModel model(small_model(), 7);
  model.use_reference_ops(reference_ops);
  RecomputeRunner runner(mode);
  if (mode != RecomputeMode::None) model.set_block_runner(&runner);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto tokens = torch::randint(0, 256, {3, 33}, gen, torch::kInt64);
  model.params().zero_grads();
  auto loss = model.loss(tokens.narrow(1, 0, 32), tokens.narrow(1, 1, 32));
  loss.backward();
  return {loss.item<double>(), model.params().grads().clone()};
}

class Recompute : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_P(Recompute, SameLossAndGradientsAsKeepingActivations) {
  const bool reference_ops = GetParam();
  auto plain = loss_and_grads(RecomputeMode::None, reference_ops);
  ASSERT_GT(plain.grads.abs().sum().item<double>(), 0);
  for (auto mode : {RecomputeMode::Selective, RecomputeMode::Full}) {
    auto got = loss_and_grads(mode, reference_ops);
    EXPECT_EQ(got.loss, plain.loss) << recompute_mode_name(mode);
    // The recomputed forward runs the same kernels on the same inputs, so the
    // gradients are the same bits.
    EXPECT_TRUE(torch::equal(got.grads, plain.grads))
        << recompute_mode_name(mode) << ": max difference " << (got.grads - plain.grads).abs().max().item<double>();
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, Recompute, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "reference_ops" : "fused_ops"; });

TEST(RecomputeModes, ParseAndReject) {
  EXPECT_EQ(parse_recompute_mode("none"), RecomputeMode::None);
  EXPECT_EQ(parse_recompute_mode("selective"), RecomputeMode::Selective);
  EXPECT_EQ(parse_recompute_mode("full"), RecomputeMode::Full);
  EXPECT_THROW(parse_recompute_mode("some"), ConfigError);
}

TEST(RecomputeModes, TrainingRunIsUnchanged) {
  set_compute_threads(1);
  std::string text;
  for (int i = 0; i < 300; ++i) text += "sphinx of black quartz, judge my vow. ";
  auto data = TokenDataset::from_tokens(std::vector<uint16_t>(text.begin(), text.end()), 0.1, 16, 256, "<t>");
  TrainConfig c;
  c.model = small_model();
  c.model.context = 16;
  c.data.paths = {"<memory>"};
  c.optim.warmup_steps = 0;
  c.train.batch_size = 2;
  c.train.grad_accum = 2;
  std::vector<double> want;
  for (const char* mode : {"none", "selective", "full"}) {
    c.parallel.recompute = mode;
    Trainer t(c, data, nullptr);
    std::vector<double> losses;
    for (int s = 0; s < 3; ++s) losses.push_back(t.train_step().loss);
    if (want.empty()) want = losses;
    EXPECT_EQ(losses, want) << mode;
  }
}

// Bytes allocated by the forward pass and still alive when backward starts
// (glibc's in-use heap + mmapped bytes), i.e. the activations kept for backward.
int64_t activation_bytes(RecomputeMode mode, int64_t context) {
  ModelConfig m = small_model();
  m.context = context;
  m.layers = 4;
  GptModel model(m, 3);
  RecomputeRunner runner(mode);
  model.set_block_runner(&runner);
  auto tokens = torch::randint(0, 256, {2, context + 1}, torch::kInt64);
  auto x = tokens.narrow(1, 0, context).contiguous(), y = tokens.narrow(1, 1, context).contiguous();
  const int64_t before = heap_bytes_in_use();
  auto loss = model.loss(x, y);
  const int64_t after = heap_bytes_in_use();
  loss.backward();
  return after - before;
}

TEST(RecomputeModes, FullRecomputationKeepsFarFewerActivations) {
  set_compute_threads(1);
  const int64_t none = activation_bytes(RecomputeMode::None, 128);
  const int64_t selective = activation_bytes(RecomputeMode::Selective, 128);
  const int64_t full = activation_bytes(RecomputeMode::Full, 128);
  EXPECT_GT(none, 0);
  EXPECT_LT(selective, none) << "selective " << selective << " none " << none;
  EXPECT_LT(full * 3, none) << "full " << full << " none " << none;
}

}  // namespace
}  // namespace braid::train
