#include <gtest/gtest.h>

#include "core/error.hpp"
#include "plan/memory_model.hpp"

using namespace braid;
using namespace braid::plan;

namespace {

// Korthikanti et al.'s GPT layer: GELU MLP of 4h, multi-head, dropout.
ModelSpec gpt_like(int64_t h, int64_t a) {
  ModelSpec m;
  m.name = "gpt";
  m.layers = 1;
  m.d_model = h;
  m.heads = a;
  m.kv_heads = a;
  m.ffn = 4 * h;
  m.vocab = 51200;
  m.context = 2048;
  m.dropout = true;
  return m;
}

}  // namespace

// The paper's closed forms, written out by hand for GPT-3 175B's shape
// (h = 12288, a = 96, s = 2048, b = 1) at t = 8.
TEST(MemoryModel, KorthikantiClosedForms) {
  const double s = 2048, b = 1, h = 12288, a = 96, t = 8;
  EXPECT_DOUBLE_EQ(korthikanti_activation_bytes_per_layer(2048, 1, 12288, 96, 8, true, Recompute::None),
                   s * b * h * (34 / t + 5 * a * s / (h * t)));
  EXPECT_DOUBLE_EQ(korthikanti_activation_bytes_per_layer(2048, 1, 12288, 96, 8, false, Recompute::None),
                   s * b * h * (10 + 24 / t + 5 * a * s / (h * t)));
  EXPECT_DOUBLE_EQ(korthikanti_activation_bytes_per_layer(2048, 1, 12288, 96, 8, true, Recompute::Selective),
                   s * b * h * 34 / t);
  EXPECT_DOUBLE_EQ(korthikanti_activation_bytes_per_layer(2048, 1, 12288, 96, 8, true, Recompute::Full),
                   2 * s * b * h / t);
  // Sequence parallelism with selective recomputation: 34·sbh/t = 106,954,752 bytes.
  EXPECT_DOUBLE_EQ(korthikanti_activation_bytes_per_layer(2048, 1, 12288, 96, 8, true, Recompute::Selective),
                   106954752.0);
}

// The generalised count reduces to the paper's for its GPT layer, for every
// recompute mode, with and without sequence parallelism, at several t.
TEST(MemoryModel, GeneralFormulaMatchesKorthikantiForGpt) {
  auto m = gpt_like(12288, 96);
  for (int64_t t : {1, 2, 4, 8})
    for (bool sp : {true, false})
      for (auto r : {Recompute::None, Recompute::Selective, Recompute::Full}) {
        ActivationShape shape{2048, 2, t, sp, /*flash_attention=*/false, r};
        EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape),
                         korthikanti_activation_bytes_per_layer(2048, 2, 12288, 96, t, sp, r))
            << "t=" << t << " sp=" << sp << " recompute=" << to_string(r);
      }
}

// Llama-style layer: GQA, SwiGLU, no dropout, FlashAttention (no s² terms).
TEST(MemoryModel, LlamaLayerCountedTermByTerm) {
  ModelSpec m;
  m.name = "llama3-8b";
  m.layers = 32;
  m.d_model = 4096;
  m.heads = 32;
  m.kv_heads = 8;
  m.ffn = 14336;
  m.ffn_kind = FfnKind::SwiGlu;
  m.vocab = 128256;
  m.context = 8192;
  const double sbh = 8192.0 * 1 * 4096;
  // norms 4 + block inputs 4; Q 2, K and V 2·(8/32) each, out-proj input 2;
  // SwiGLU gate, up, product: 3 × 2 × 14336/4096.
  double per_sbh = 4 + 4 + 2 + 4 * 0.25 + 2 + 6 * 3.5;
  ActivationShape shape{8192, 1, 1, true, true, Recompute::Selective};
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape), sbh * per_sbh);
  shape.recompute = Recompute::None;  // FlashAttention stores no scores: same as selective
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape), sbh * per_sbh);
  shape.tp = 4;
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape), sbh * per_sbh / 4);
  shape.sequence_parallel = false;  // the 8 of norms and block inputs stay whole
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape), sbh * (8 + (per_sbh - 8) / 4));
  shape.flash_attention = false;  // eager attention keeps the softmax output: 2·a·s²·b/t
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape),
                   sbh * (8 + (per_sbh - 8) / 4) + 2.0 * 32 * 8192.0 * 8192 / 4);
  shape.recompute = Recompute::Full;
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(m, shape), 2 * sbh);
  EXPECT_DOUBLE_EQ(logits_bytes(m, 8192, 2, 4), 4.0 * 8192 * 2 * 128256 / 4);
}

// ZeRO paper, figure 1: 7.5B parameters on 64 GPUs with Adam (K = 12).
TEST(MemoryModel, ZeroStagesReproduceThePaper) {
  const double psi = 7.5e9;
  struct Row {
    int stage;
    double gb;
  } rows[] = {{0, 120}, {1, 31.4}, {2, 16.6}, {3, 1.9}};
  for (auto& r : rows)
    EXPECT_NEAR(zero_model_state_bytes(psi, r.stage, 64).total() / 1e9, r.gb, 0.05)  // paper rounds to 0.1 GB
        << "stage " << r.stage;
  auto s2 = zero_model_state_bytes(psi, 2, 64);
  EXPECT_DOUBLE_EQ(s2.weights, 2 * psi);
  EXPECT_DOUBLE_EQ(s2.gradients, 2 * psi / 64);
  EXPECT_DOUBLE_EQ(s2.optimizer, 12 * psi / 64);
  EXPECT_THROW(zero_model_state_bytes(psi, 4, 64), ConfigError);
}
