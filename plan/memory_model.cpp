#include "plan/memory_model.hpp"

#include <fmt/format.h>

#include "core/error.hpp"

namespace braid::plan {
namespace {

struct LayerTerms {
  double replicated;  // units of s·b·h bytes, kept whole on every TP rank without SP
  double sharded;     // units of s·b·h bytes, split over TP ranks
  double scores;      // units of a·s²·b bytes, split over TP ranks
};

// Counting what each op of one layer saves for backward (2-byte activations,
// 1-byte dropout masks), after Korthikanti et al. 2022 section 4.1:
//   attention   QKV input 2, Q 2, K and V 2·kv/h each, output-projection input 2,
//               dropout mask after the projection 1; scores: softmax output 2,
//               and with dropout its mask 1 and output 2
//   MLP         input 2, then per hidden unit (f = ffn/h): GELU input and output
//               2f + 2f, or SwiGLU gate, up and product 2f + 2f + 2f; dropout mask 1
//   norms       the input of each of the two norms, 2 + 2
// Without sequence parallelism the norms, the dropout masks and the inputs of
// the QKV and first MLP matmuls (10 for the paper's GPT) are replicated.
LayerTerms layer_terms(const ModelSpec& m, bool flash_attention) {
  double h = static_cast<double>(m.d_model);
  double kv_ratio = static_cast<double>(m.kv_dim()) / h;
  double f = static_cast<double>(m.ffn) / h;
  double dropout_mask = m.dropout ? 1.0 : 0.0;
  double norms = 4.0;
  double block_inputs = 2.0 + 2.0;  // QKV input, MLP input
  double replicated = norms + block_inputs + 2 * dropout_mask;
  double attention = 2.0 /*Q*/ + 4.0 * kv_ratio /*K, V*/ + 2.0 /*out-proj input*/;
  double mlp = m.ffn_kind == FfnKind::SwiGlu ? 6.0 * f : 4.0 * f;
  double scores = 0;
  if (!flash_attention) scores = m.dropout ? 5.0 : 2.0;
  return {replicated, attention + mlp, scores};
}

}  // namespace

double activation_bytes_per_layer(const ModelSpec& m, const ActivationShape& shape) {
  double s = static_cast<double>(shape.seq_len);
  double b = static_cast<double>(shape.micro_batch);
  double h = static_cast<double>(m.d_model);
  double a = static_cast<double>(m.heads);
  double t = static_cast<double>(shape.tp);
  double sbh = s * b * h;
  if (shape.recompute == Recompute::Full)
    return 2.0 * sbh / (shape.sequence_parallel ? t : 1.0);  // the layer's input only
  auto terms = layer_terms(m, shape.flash_attention);
  double linear = shape.sequence_parallel ? (terms.replicated + terms.sharded) / t
                                          : terms.replicated + terms.sharded / t;
  double bytes = sbh * linear;
  // Selective recomputation drops exactly the score terms (they are recomputed).
  if (shape.recompute == Recompute::None) bytes += terms.scores * a * s * s * b / t;
  return bytes;
}

double korthikanti_activation_bytes_per_layer(int64_t s_, int64_t b_, int64_t h_, int64_t a_,
                                              int64_t t_, bool sp, Recompute r) {
  double s = static_cast<double>(s_), b = static_cast<double>(b_), h = static_cast<double>(h_);
  double a = static_cast<double>(a_), t = static_cast<double>(t_);
  double sbh = s * b * h;
  switch (r) {
    case Recompute::None:
      return sp ? sbh * (34.0 / t + 5.0 * a * s / (h * t))
                : sbh * (10.0 + 24.0 / t + 5.0 * a * s / (h * t));
    case Recompute::Selective:
      return sp ? sbh * 34.0 / t : sbh * (10.0 + 24.0 / t);
    case Recompute::Full:
      return sp ? 2.0 * sbh / t : 2.0 * sbh;
  }
  return 0;
}

double recompute_working_bytes(const ModelSpec& m, const ActivationShape& shape) {
  ActivationShape none = shape;
  none.recompute = Recompute::None;
  return activation_bytes_per_layer(m, none);
}

double logits_bytes(const ModelSpec& m, int64_t seq_len, int64_t micro_batch, int64_t tp) {
  return 4.0 * static_cast<double>(seq_len) * static_cast<double>(micro_batch) *
         static_cast<double>(m.vocab) / static_cast<double>(tp);
}

ModelStateBytes zero_model_state_bytes(double params, int zero_stage, int64_t dp) {
  if (zero_stage < 0 || zero_stage > 3)
    throw ConfigError(fmt::format("ZeRO stage {} does not exist", zero_stage),
                      "use 0 (none), 1 (optimizer), 2 (+ gradients) or 3 (+ weights)");
  double n = static_cast<double>(dp);
  ModelStateBytes s;
  s.weights = 2.0 * params / (zero_stage >= 3 ? n : 1.0);
  s.gradients = 2.0 * params / (zero_stage >= 2 ? n : 1.0);
  s.optimizer = 12.0 * params / (zero_stage >= 1 ? n : 1.0);
  return s;
}

}  // namespace braid::plan
