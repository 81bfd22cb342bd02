// The model and its flat buffers: gradients against finite differences,
// deterministic initialisation, the flat layout, gradient buckets, AdamW
// against LibTorch's own implementation, and the learning-rate schedule.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>

#include "train/cpu_kernels.hpp"
#include "train/fused_ops.hpp"
#include "train/flat_adamw.hpp"
#include "train/gpt_model.hpp"
#include "train/grad_buckets.hpp"

namespace braid::train {
namespace {

ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 11;
  m.context = 5;
  m.layers = 2;
  m.width = 8;
  m.heads = 2;
  m.mlp_ratio = 2;
  m.init_std = 0.3;  // large enough that every path carries signal
  return m;
}

torch::Tensor ids(std::vector<int64_t> v, int64_t rows) {
  auto cols = static_cast<int64_t>(v.size()) / rows;
  return torch::tensor(v, torch::kInt64).view({rows, cols});
}

TEST(TrainModel, GradientsMatchFiniteDifferences) {
  torch::manual_seed(0);
  GptModel model(tiny_model(), /*seed=*/7, torch::kFloat64);
  // Biases and LayerNorm parameters start at 0/1; perturb them so the check
  // does not pass on symmetric special cases.
  {
    torch::NoGradGuard g;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
    model.params().params().add_(torch::randn({model.num_parameters()}, gen, torch::kFloat64) * 0.05);
  }
  auto x = ids({1, 4, 7, 2, 9, 3, 3, 10, 0, 5}, 2);
  auto y = ids({4, 7, 2, 9, 1, 3, 10, 0, 5, 6}, 2);

  model.params().zero_grads();
  model.loss(x, y).backward();
  auto analytic = model.params().grads().clone();
  ASSERT_GT(analytic.abs().max().item<double>(), 1e-4);

  torch::NoGradGuard no_grad;
  auto flat = model.params().params();
  const double h = 1e-6;
  double worst = 0;
  std::string worst_at;
  for (const auto& slot : model.params().slots()) {
    for (int64_t i = 0; i < slot.numel; ++i) {
      int64_t k = slot.offset + i;
      double orig = flat[k].item<double>();
      flat[k].fill_(orig + h);
      double up = model.loss(x, y).item<double>();
      flat[k].fill_(orig - h);
      double down = model.loss(x, y).item<double>();
      flat[k].fill_(orig);
      double numeric = (up - down) / (2 * h);
      double a = analytic[k].item<double>();
      double err = std::abs(a - numeric) / std::max(1e-3, std::abs(a) + std::abs(numeric));
      if (err > worst) {
        worst = err;
        worst_at = slot.name + "[" + std::to_string(i) + "] autograd " + std::to_string(a) +
                   " numeric " + std::to_string(numeric);
      }
    }
  }
  EXPECT_LT(worst, 1e-5) << worst_at;
}

struct AttentionShape {
  int64_t batch, seq, heads, head_dim;
};

TEST(TrainModel, FusedAttentionMatchesTheCompositeFormulation) {
  // Odd sizes (head_dim not a multiple of the vector width, one token, one
  // head) besides the usual ones.
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (auto s : {AttentionShape{2, 7, 3, 5}, AttentionShape{1, 1, 1, 8}, AttentionShape{2, 33, 2, 16},
                   AttentionShape{3, 16, 4, 32}, AttentionShape{1, 40, 2, 64}, AttentionShape{2, 9, 1, 24}}) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(s.seq * 31 + s.heads);
      auto base = torch::randn({s.batch, s.seq, 3 * s.heads * s.head_dim}, gen, dtype);
      auto a = base.clone().requires_grad_(true), b = base.clone().requires_grad_(true);
      auto ya = causal_self_attention(a, s.heads);
      auto yb = causal_self_attention_reference(b, s.heads);
      auto dy = torch::randn(ya.sizes(), gen, dtype);
      (ya * dy).sum().backward();
      (yb * dy).sum().backward();
      const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
      std::string what = fmt::format("{} B{} T{} H{} D{} ({})", dtype == torch::kFloat64 ? "f64" : "f32", s.batch,
                                     s.seq, s.heads, s.head_dim, cpu_kernel_isa());
      EXPECT_TRUE(torch::allclose(ya, yb, tol, tol)) << what << " forward " << (ya - yb).abs().max().item<double>();
      EXPECT_TRUE(torch::allclose(a.grad(), b.grad(), tol, tol))
          << what << " backward " << (a.grad() - b.grad()).abs().max().item<double>();
    }
  }
}

TEST(TrainModel, VectorAndScalarAttentionLoopsAgree) {
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (auto s : {AttentionShape{2, 37, 2, 8}, AttentionShape{1, 70, 3, 48}, AttentionShape{2, 128, 4, 32}}) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(s.seq);
      auto base = torch::randn({s.batch, s.seq, 3 * s.heads * s.head_dim}, gen, dtype);
      auto dy = torch::randn({s.batch, s.seq, s.heads * s.head_dim}, gen, dtype);
      torch::Tensor out[2], grad[2];
      for (int scalar = 0; scalar < 2; ++scalar) {
        force_scalar_attention(scalar == 1);
        auto x = base.clone().requires_grad_(true);
        out[scalar] = causal_self_attention(x, s.heads);
        (out[scalar] * dy).sum().backward();
        grad[scalar] = x.grad();
      }
      force_scalar_attention(false);
      const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
      EXPECT_TRUE(torch::allclose(out[0], out[1], tol, tol)) << "T" << s.seq << " D" << s.head_dim;
      EXPECT_TRUE(torch::allclose(grad[0], grad[1], tol, tol)) << "T" << s.seq << " D" << s.head_dim;
    }
  }
}

TEST(TrainModel, FusedGeluMatchesLibTorch) {
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    // Every regime of erf: tails, the middle, exact zeros; odd length for the tail loop.
    auto x0 = torch::cat({torch::linspace(-12, 12, 4001, dtype), torch::randn({777}, dtype) * 3,
                          torch::zeros({3}, dtype)});
    auto a = x0.clone().requires_grad_(true), b = x0.clone().requires_grad_(true);
    auto ya = train::gelu(a), yb = torch::gelu(b);
    auto dy = torch::randn(ya.sizes(), dtype);
    (ya * dy).sum().backward();
    (yb * dy).sum().backward();
    const double tol = dtype == torch::kFloat64 ? 1e-12 : 1e-6;
    EXPECT_TRUE(torch::allclose(ya, yb, tol, tol)) << (ya - yb).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(a.grad(), b.grad(), tol, tol)) << (a.grad() - b.grad()).abs().max().item<double>();
  }
}

TEST(TrainModel, FusedOpsAndReferenceOpsGiveTheSameModelGradients) {
  auto cfg = tiny_model();
  GptModel fused(cfg, 3), reference(cfg, 3);
  reference.use_reference_ops(true);
  auto x = ids({1, 4, 7, 2, 9, 3, 3, 10, 0, 5}, 2), y = ids({4, 7, 2, 9, 1, 3, 10, 0, 5, 6}, 2);
  for (auto* m : {&fused, &reference}) {
    m->params().zero_grads();
    m->loss(x, y).backward();
  }
  EXPECT_TRUE(torch::allclose(fused.params().grads(), reference.params().grads(), 1e-4, 1e-6));
}

TEST(TrainModel, SameSeedSameWeightsOtherSeedOtherWeights) {
  GptModel a(tiny_model(), 42), b(tiny_model(), 42), c(tiny_model(), 43);
  EXPECT_TRUE(torch::equal(a.params().params(), b.params().params()));
  EXPECT_FALSE(torch::equal(a.params().params(), c.params().params()));
}

TEST(TrainModel, InitialisationFollowsTheScheme) {
  auto cfg = tiny_model();
  cfg.width = 64;
  cfg.heads = 4;
  cfg.layers = 8;
  cfg.init_std = 0.02;
  GptModel m(cfg, 1);
  for (const auto& s : m.params().slots()) {
    auto t = s.param.detach();
    if (s.name.find("ln") != std::string::npos) {
      double expect = s.name.ends_with(".weight") ? 1.0 : 0.0;
      EXPECT_TRUE(torch::all(t == expect).item<bool>()) << s.name;
    } else if (s.name.ends_with(".bias")) {
      EXPECT_TRUE(torch::all(t == 0).item<bool>()) << s.name;
    } else {
      double expect = s.name.ends_with("proj.weight") ? 0.02 / std::sqrt(16.0) : 0.02;
      EXPECT_NEAR(t.std().item<double>(), expect, expect * 0.15) << s.name;
    }
  }
}

TEST(TrainModel, ParametersAndGradientsLiveInTheFlatBuffers) {
  GptModel model(tiny_model(), 3);
  auto& p = model.params();
  const auto* base = p.params().data_ptr<float>();
  const auto* gbase = p.grads().data_ptr<float>();
  int64_t expect_offset = 0;
  for (const auto& s : p.slots()) {
    EXPECT_EQ(s.offset, expect_offset) << s.name;
    expect_offset += s.numel;
    EXPECT_TRUE(s.param.is_leaf()) << s.name;
    EXPECT_TRUE(s.param.requires_grad()) << s.name;
    EXPECT_EQ(s.param.data_ptr<float>(), base + s.offset) << s.name;
    EXPECT_EQ(s.param.grad().data_ptr<float>(), gbase + s.offset) << s.name;
  }
  EXPECT_EQ(expect_offset, p.numel());

  auto x = ids({1, 2, 3, 4, 5}, 1), y = ids({2, 3, 4, 5, 6}, 1);
  p.zero_grads();
  model.loss(x, y).backward();
  // Autograd accumulated into the flat buffer (the views were not replaced).
  for (const auto& s : p.slots()) EXPECT_EQ(s.param.grad().data_ptr<float>(), gbase + s.offset);
  EXPECT_GT(p.grads().abs().sum().item<double>(), 0.0);
  // A second backward accumulates (gradient accumulation relies on this).
  auto once = p.grads().clone();
  model.loss(x, y).backward();
  EXPECT_TRUE(torch::allclose(p.grads(), once * 2, 1e-5, 1e-7));
  // Writing the flat buffer changes the model.
  double before = model.loss(x, y).item<double>();
  {
    torch::NoGradGuard g;
    p.params().mul_(0.5);
  }
  EXPECT_NE(before, model.loss(x, y).item<double>());
}

TEST(TrainModel, UntrainedLossIsNearUniform) {
  auto cfg = tiny_model();
  cfg.vocab_size = 256;
  cfg.init_std = 0.02;
  GptModel model(cfg, 5);
  auto x = torch::randint(0, 256, {4, 5}, torch::kInt64);
  auto y = torch::randint(0, 256, {4, 5}, torch::kInt64);
  EXPECT_NEAR(model.loss(x, y).item<double>(), std::log(256.0), 0.1);
}

TEST(TrainModel, CausalNoPeekingAtTheFuture) {
  GptModel model(tiny_model(), 11);
  torch::NoGradGuard g;
  auto a = model.logits(ids({1, 2, 3, 4, 5}, 1));
  auto b = model.logits(ids({1, 2, 3, 9, 0}, 1));
  // Positions 0..2 see the same prefix, so their logits must be identical.
  EXPECT_TRUE(torch::equal(a.narrow(1, 0, 3), b.narrow(1, 0, 3)));
  EXPECT_FALSE(torch::equal(a.narrow(1, 3, 1), b.narrow(1, 3, 1)));
}

TEST(TrainModel, GenerateIsDeterministicAndInVocabulary) {
  GptModel model(tiny_model(), 2);
  auto g1 = at::make_generator<at::CPUGeneratorImpl>(5);
  auto g2 = at::make_generator<at::CPUGeneratorImpl>(5);
  auto a = model.generate({1, 2}, 12, 1.0, 3, g1);
  auto b = model.generate({1, 2}, 12, 1.0, 3, g2);
  ASSERT_EQ(a.size(), 12u);  // longer than the context: the window slides
  EXPECT_EQ(a, b);
  for (auto t : a) EXPECT_TRUE(t >= 0 && t < 11);
}

TEST(TrainModel, FlopsPerTokenFollowsPaLM) {
  auto cfg = tiny_model();
  GptModel m(cfg, 1);
  double n = static_cast<double>(m.num_parameters() - cfg.context * cfg.width);
  EXPECT_DOUBLE_EQ(m.flops_per_token(), 6 * n + 12.0 * cfg.layers * cfg.heads * cfg.head_dim() * cfg.context);
}

void check_cover(const std::vector<GradBucket>& buckets, const FlatParameters& p) {
  // Buckets tile the buffer from the end to the start without gaps.
  int64_t expect_end = p.numel();
  for (const auto& b : buckets) {
    EXPECT_EQ(b.end, expect_end);
    EXPECT_LT(b.begin, b.end);
    expect_end = b.begin;
    for (int s : b.slots) {
      const auto& slot = p.slots()[static_cast<size_t>(s)];
      EXPECT_GE(slot.offset, b.begin);
      EXPECT_LE(slot.offset + slot.numel, b.end);
    }
  }
  EXPECT_EQ(expect_end, 0);
}

TEST(TrainModel, BucketsTileTheGradientBufferInReverseOrder) {
  GptModel model(tiny_model(), 1);
  const auto& p = model.params();
  auto tiny = plan_grad_buckets(p, 1);  // smaller than any parameter: one bucket per parameter
  EXPECT_EQ(tiny.size(), p.slots().size());
  check_cover(tiny, p);
  EXPECT_EQ(tiny.front().slots.front(), static_cast<int>(p.slots().size()) - 1);  // last layer first
  auto huge = plan_grad_buckets(p, 1ull << 40);  // one bucket for everything
  ASSERT_EQ(huge.size(), 1u);
  check_cover(huge, p);
  auto mid = plan_grad_buckets(p, 1024);
  check_cover(mid, p);
  for (size_t i = 0; i + 1 < mid.size(); ++i) EXPECT_GE(mid[i].numel() * 4, 1024);
}

TEST(TrainModel, FlatAdamWMatchesTorchAdamW) {
  torch::manual_seed(1);
  const int64_t n = 1000;
  auto p0 = torch::randn({n});
  auto ours = p0.clone();
  auto ref = p0.clone().requires_grad_(true);
  AdamWHyper hyper{0.9, 0.95, 1e-8, 0.1};
  FlatAdamW opt(n, hyper);
  torch::optim::AdamW torch_opt({ref}, torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 5; ++step) {
    auto g = torch::randn({n});
    ref.mutable_grad() = g.clone();
    torch_opt.step();
    opt.begin_step();
    opt.update(ours.data_ptr<float>(), g.data_ptr<float>(), 0, n, 1e-2, 1.0, true);
  }
  EXPECT_TRUE(torch::allclose(ours, ref.detach(), 1e-5, 1e-6)) << (ours - ref.detach()).abs().max().item<double>();
}

TEST(TrainModel, FlatAdamWGradScaleAndNoDecay) {
  const int64_t n = 64;
  auto a = torch::randn({n}), b = a.clone();
  auto g = torch::randn({n});
  FlatAdamW o1(n, {}), o2(n, {});
  auto g_half = g * 0.5;
  o1.begin_step();
  o2.begin_step();
  o1.update(a.data_ptr<float>(), g.data_ptr<float>(), 0, n, 1e-3, 0.5, false);
  o2.update(b.data_ptr<float>(), g_half.data_ptr<float>(), 0, n, 1e-3, 1.0, false);
  EXPECT_TRUE(torch::equal(a, b));
  // Without decay a zero gradient leaves a parameter unchanged; with decay it shrinks.
  auto z = torch::zeros({n}), p = torch::ones({n}), q = torch::ones({n});
  FlatAdamW o3(n, {}), o4(n, {});
  o3.begin_step();
  o4.begin_step();
  o3.update(p.data_ptr<float>(), z.data_ptr<float>(), 0, n, 1e-2, 1.0, false);
  o4.update(q.data_ptr<float>(), z.data_ptr<float>(), 0, n, 1e-2, 1.0, true);
  EXPECT_TRUE(torch::all(p == 1).item<bool>());
  EXPECT_TRUE(torch::all(q < 1).item<bool>());
}

TEST(TrainModel, LearningRateWarmsUpThenDecaysToTheFloor) {
  const double lr = 1e-3, min_lr = 1e-4;
  EXPECT_DOUBLE_EQ(lr_at(0, 100, 10, lr, min_lr), lr / 11);
  EXPECT_DOUBLE_EQ(lr_at(9, 100, 10, lr, min_lr), lr * 10 / 11);
  EXPECT_DOUBLE_EQ(lr_at(10, 100, 10, lr, min_lr), lr);
  EXPECT_NEAR(lr_at(55, 100, 10, lr, min_lr), (lr + min_lr) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(100, 100, 10, lr, min_lr), min_lr);
  for (int s = 11; s < 100; ++s) EXPECT_LT(lr_at(s, 100, 10, lr, min_lr), lr_at(s - 1, 100, 10, lr, min_lr));
}

}  // namespace
}  // namespace braid::train
