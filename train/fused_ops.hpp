#pragma once
// The engine's fused operations, each one autograd function whose forward and
// backward run the CPU kernels of cpu_kernels.hpp:
//
//   causal_self_attention  softmax(Q Kᵀ / sqrt(D) + causal mask) V for every
//                          head, straight from the fused QKV projection; only
//                          the causal half of the scores is computed, and no
//                          mask, score copy or head transpose is materialised.
//   gelu                   the exact GELU x·Φ(x) with a vectorized erf.
//
// Mathematically the same functions as the stock LibTorch formulations (the
// *_reference functions below); tests check both against those and the model
// gradients against finite differences.
#include "train/pch.hpp"

namespace braid::train {

// qkv: [B, T, 3·C] (queries, keys, values of each token), float32 or float64.
// Returns [B, T, C] with the heads side by side (C = heads · D).
torch::Tensor causal_self_attention(const torch::Tensor& qkv, int64_t heads);
// The same function from stock LibTorch ops (batched GEMMs, masked softmax).
torch::Tensor causal_self_attention_reference(const torch::Tensor& qkv, int64_t heads);

// x·Φ(x) elementwise (torch::gelu with approximate = "none").
torch::Tensor gelu(const torch::Tensor& x);

}  // namespace braid::train
