#pragma once
// Memory per GPU: model states (ZeRO) and activations (Megatron).
//
// Cost model (docs/plan.md, "Memory"):
//   model states   2 + 2 + 12 bytes per parameter for mixed-precision Adam: BF16
//                  weights, BF16 gradients, FP32 master weights + Adam m and v
//                  (Rajbhandari et al. 2020). ZeRO-1 divides the 12 by the DP degree,
//                  ZeRO-2 also the gradients, ZeRO-3 also the weights.
//   activations    per layer, in bytes, with s tokens, micro-batch b, width h, a heads,
//                  tensor parallel t (Korthikanti et al. 2022, table 2):
//                    none, sequence parallel      s·b·h·(34/t + 5·a·s/(h·t))
//                    none, no sequence parallel   s·b·h·(10 + 24/t + 5·a·s/(h·t))
//                    selective                    s·b·h·34/t
//                    full                         2·s·b·h (/t with sequence parallelism)
//                  generalised here to grouped-query attention, SwiGLU, no dropout and
//                  FlashAttention (no s² terms), and reducing to the paper's numbers
//                  for its GPT shape.
#include <cstdint>

#include "plan/model_spec.hpp"

namespace braid::plan {

struct ActivationShape {
  int64_t seq_len = 0;
  int64_t micro_batch = 1;
  int64_t tp = 1;
  bool sequence_parallel = true;
  bool flash_attention = true;  // no s×s score matrices are stored
  Recompute recompute = Recompute::Selective;
};

// Bytes of activations one transformer layer keeps for its backward pass.
double activation_bytes_per_layer(const ModelSpec& m, const ActivationShape& shape);
// Korthikanti et al.'s closed forms for their GPT layer (GELU MLP of 4h,
// multi-head attention, dropout, scores materialised), for checking the above.
double korthikanti_activation_bytes_per_layer(int64_t s, int64_t b, int64_t h, int64_t a,
                                              int64_t t, bool sequence_parallel, Recompute r);

// What one layer holds while it runs its own backward under full
// recomputation: its activations as if nothing were recomputed.
double recompute_working_bytes(const ModelSpec& m, const ActivationShape& shape);

// Logits kept in FP32 for the loss on the last pipeline stage, vocab-parallel
// over t (Megatron's vocab-parallel cross entropy).
double logits_bytes(const ModelSpec& m, int64_t seq_len, int64_t micro_batch, int64_t tp);

struct ModelStateBytes {
  double weights = 0;
  double gradients = 0;
  double optimizer = 0;
  double total() const { return weights + gradients + optimizer; }
};

// Model states for `params` parameters on one GPU, sharded by ZeRO `stage`
// over `dp` data-parallel ranks.
ModelStateBytes zero_model_state_bytes(double params, int zero_stage, int64_t dp);

}  // namespace braid::plan
