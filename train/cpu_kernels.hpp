#pragma once
// CPU kernels of the engine's fused ops (fused_ops.hpp) on raw buffers, no
// LibTorch: causal self-attention and the exact (erf) GELU.
//
// Attention.
// Layout: qkv is [B, T, 3·H·D] (the output of the fused QKV linear: all
// queries, then all keys, then all values of a token), y is [B, T, H·D]
// (ready for the output projection, no transpose), probs is [B, H, T, T]
// (row i holds the softmax over keys 0..i; the masked upper part is never
// written or read).
//
// Cost model per (batch, head): forward T²·D multiply-adds for the scores
// and as many for the mixing, but only the causal half is computed
// (≈ T²·D FMAs in all, versus 2·T²·D for two dense batched GEMMs); T²/2
// exponentials. Backward ≈ 2·T²·D FMAs. No [B·H, T, T] mask or score copy is
// materialised besides probs. Inner loops are register-blocked (4 vectors of
// accumulators, one load per FMA). Work splits over (batch, head) pairs; an
// AVX2 + FMA build of the loops is chosen at run time when the CPU has it.
#include <cstdint>

namespace braid::train {

struct AttentionDims {
  int64_t batch = 0;
  int64_t seq = 0;       // T
  int64_t heads = 0;     // H
  int64_t head_dim = 0;  // D
  double scale = 0;      // usually 1/sqrt(D)
};

// Attention: processes the (batch, head) pairs [bh_begin, bh_end) (pair = b·H + h).
void attention_forward(const float* qkv, float* y, float* probs, const AttentionDims& d, int64_t bh_begin,
                       int64_t bh_end);
void attention_forward(const double* qkv, double* y, double* probs, const AttentionDims& d, int64_t bh_begin,
                       int64_t bh_end);
// Writes every element of dqkv (the Q, K and V columns of the pairs given).
void attention_backward(const float* qkv, const float* y, const float* probs, const float* dy, float* dqkv,
                        const AttentionDims& d, int64_t bh_begin, int64_t bh_end);
void attention_backward(const double* qkv, const double* y, const double* probs, const double* dy,
                        double* dqkv, const AttentionDims& d, int64_t bh_begin, int64_t bh_end);

// GELU(x) = x·Φ(x), Φ the normal CDF, on [begin, end). Φ uses erf from
// Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below float
// resolution of Φ) with a vectorized exp, instead of a libm call per element.
// Cost: one read and one write per element; backward one more read.
void gelu_forward(const float* x, float* y, int64_t begin, int64_t end);
void gelu_forward(const double* x, double* y, int64_t begin, int64_t end);
// dx = dy · (Φ(x) + x·φ(x))
void gelu_backward(const float* x, const float* dy, float* dx, int64_t begin, int64_t end);
void gelu_backward(const double* x, const double* dy, double* dx, int64_t begin, int64_t end);

// "avx2+fma" or "generic": the build of the loops this CPU runs.
const char* cpu_kernel_isa();
// Tests: run the plain scalar loops instead of the vectorized ones (the
// scalar loops are also what any head_dim that is not a multiple of the
// vector width gets).
void force_scalar_attention(bool yes);
bool force_scalar_attention();

}  // namespace braid::train
