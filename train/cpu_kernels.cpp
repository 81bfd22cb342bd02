// Baseline build of the kernel loops and the run-time choice between it and
// the AVX2 + FMA build (cpu_kernels_avx2.cpp).
#include "train/cpu_kernels.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace braid::train {

namespace {
std::atomic<bool> g_force_scalar{false};
}  // namespace

void force_scalar_attention(bool yes) { g_force_scalar.store(yes); }
bool force_scalar_attention() { return g_force_scalar.load(std::memory_order_relaxed); }

namespace {
#include "train/cpu_kernels.inl"

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
void attention_forward_avx2(const float*, float*, float*, const AttentionDims&, int64_t, int64_t);
void attention_forward_avx2(const double*, double*, double*, const AttentionDims&, int64_t, int64_t);
void attention_backward_avx2(const float*, const float*, const float*, const float*, float*, const AttentionDims&,
                             int64_t, int64_t);
void attention_backward_avx2(const double*, const double*, const double*, const double*, double*,
                             const AttentionDims&, int64_t, int64_t);
void gelu_forward_avx2(const float*, float*, int64_t, int64_t);
void gelu_backward_avx2(const float*, const float*, float*, int64_t, int64_t);
#define BRAID_DISPATCH(avx2_call, generic_call) \
  do {                                          \
    if (cpu_has_avx2_fma()) avx2_call;          \
    else generic_call;                          \
  } while (0)
#else
#define BRAID_DISPATCH(avx2_call, generic_call) generic_call
#endif

void attention_forward(const float* qkv, float* y, float* probs, const AttentionDims& d, int64_t a, int64_t b) {
  BRAID_DISPATCH(attention_forward_avx2(qkv, y, probs, d, a, b), forward_pairs<float>(qkv, y, probs, d, a, b));
}
void attention_forward(const double* qkv, double* y, double* probs, const AttentionDims& d, int64_t a,
                       int64_t b) {
  BRAID_DISPATCH(attention_forward_avx2(qkv, y, probs, d, a, b), forward_pairs<double>(qkv, y, probs, d, a, b));
}
void attention_backward(const float* qkv, const float* y, const float* probs, const float* dy, float* dqkv,
                        const AttentionDims& d, int64_t a, int64_t b) {
  BRAID_DISPATCH(attention_backward_avx2(qkv, y, probs, dy, dqkv, d, a, b),
                 backward_pairs<float>(qkv, y, probs, dy, dqkv, d, a, b));
}
void attention_backward(const double* qkv, const double* y, const double* probs, const double* dy, double* dqkv,
                        const AttentionDims& d, int64_t a, int64_t b) {
  BRAID_DISPATCH(attention_backward_avx2(qkv, y, probs, dy, dqkv, d, a, b),
                 backward_pairs<double>(qkv, y, probs, dy, dqkv, d, a, b));
}

void gelu_forward(const float* x, float* y, int64_t a, int64_t b) {
  BRAID_DISPATCH(gelu_forward_avx2(x, y, a, b), gelu_forward_loop(x, y, a, b));
}
void gelu_forward(const double* x, double* y, int64_t a, int64_t b) { gelu_forward_loop(x, y, a, b); }
void gelu_backward(const float* x, const float* dy, float* dx, int64_t a, int64_t b) {
  BRAID_DISPATCH(gelu_backward_avx2(x, dy, dx, a, b), gelu_backward_loop(x, dy, dx, a, b));
}
void gelu_backward(const double* x, const double* dy, double* dx, int64_t a, int64_t b) {
  gelu_backward_loop(x, dy, dx, a, b);
}

const char* cpu_kernel_isa() { return cpu_has_avx2_fma() ? "avx2+fma" : "generic"; }

}  // namespace braid::train
