// The loops of cpu_kernels.inl built for AVX2 + FMA; called from
// cpu_kernels.cpp only when the CPU has both.
#include <algorithm>
#include <cmath>
#include <vector>

#include "train/cpu_kernels.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace braid::train {
namespace {
#include "train/cpu_kernels.inl"
}  // namespace

void attention_forward_avx2(const float* qkv, float* y, float* probs, const AttentionDims& d, int64_t a,
                            int64_t b) {
  forward_pairs<float>(qkv, y, probs, d, a, b);
}
void attention_forward_avx2(const double* qkv, double* y, double* probs, const AttentionDims& d, int64_t a,
                            int64_t b) {
  forward_pairs<double>(qkv, y, probs, d, a, b);
}
void attention_backward_avx2(const float* qkv, const float* y, const float* probs, const float* dy, float* dqkv,
                             const AttentionDims& d, int64_t a, int64_t b) {
  backward_pairs<float>(qkv, y, probs, dy, dqkv, d, a, b);
}
void attention_backward_avx2(const double* qkv, const double* y, const double* probs, const double* dy,
                             double* dqkv, const AttentionDims& d, int64_t a, int64_t b) {
  backward_pairs<double>(qkv, y, probs, dy, dqkv, d, a, b);
}

void gelu_forward_avx2(const float* x, float* y, int64_t a, int64_t b) { gelu_forward_loop(x, y, a, b); }
void gelu_backward_avx2(const float* x, const float* dy, float* dx, int64_t a, int64_t b) {
  gelu_backward_loop(x, dy, dx, a, b);
}

}  // namespace braid::train

#pragma GCC pop_options
#endif
