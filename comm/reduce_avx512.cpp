// AVX-512 (F) reduction kernels, runtime-dispatched from comm/reduce.cpp when
// the CPU has AVX-512F.
//
// Cost model: one streaming pass per kernel, memory-bound: combine reads 2n
// and writes n elements; conversions read and write once. 16 f32 / 8 f64
// lanes per instruction, two vectors per iteration.
#include <immintrin.h>

#include <cstring>

#include "comm/reduce_kernels.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f")
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which its
// flow analysis reports as "maybe uninitialized" (a known false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace braid::comm {
namespace {

#include "comm/reduce_scalar.inl"

struct F32x16 {
  using T = float;
  using R = __m512;
  static constexpr size_t W = 16;
  static R load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static R sum(R a, R b) { return _mm512_add_ps(a, b); }
  // max_ps returns b when either is NaN; put a back where a is NaN.
  static R max(R a, R b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_max_ps(a, b), a); }
  static R min(R a, R b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_min_ps(a, b), a); }
  static R div(R a, T q) { return _mm512_div_ps(a, _mm512_set1_ps(q)); }
};

struct F64x8 {
  using T = double;
  using R = __m512d;
  static constexpr size_t W = 8;
  static R load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static R sum(R a, R b) { return _mm512_add_pd(a, b); }
  static R max(R a, R b) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q), _mm512_max_pd(a, b), a); }
  static R min(R a, R b) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q), _mm512_min_pd(a, b), a); }
  static R div(R a, T q) { return _mm512_div_pd(a, _mm512_set1_pd(q)); }
};

struct I32x16 {
  using T = int32_t;
  using R = __m512i;
  static constexpr size_t W = 16;
  static R load(const T* p) { return _mm512_loadu_si512(p); }
  static void store(T* p, R v) { _mm512_storeu_si512(p, v); }
  static R sum(R a, R b) { return _mm512_add_epi32(a, b); }
  static R max(R a, R b) { return _mm512_max_epi32(a, b); }
  static R min(R a, R b) { return _mm512_min_epi32(a, b); }
};

struct I64x8 {
  using T = int64_t;
  using R = __m512i;
  static constexpr size_t W = 8;
  static R load(const T* p) { return _mm512_loadu_si512(p); }
  static void store(T* p, R v) { _mm512_storeu_si512(p, v); }
  static R sum(R a, R b) { return _mm512_add_epi64(a, b); }
  static R max(R a, R b) { return _mm512_max_epi64(a, b); }
  static R min(R a, R b) { return _mm512_min_epi64(a, b); }
};

template <class V, int Op>
typename V::R apply(typename V::R a, typename V::R b) {
  if constexpr (Op == 0) return V::sum(a, b);
  else if constexpr (Op == 1) return V::max(a, b);
  else return V::min(a, b);
}

template <class V, int Op>
void combine(void* dst, const void* a, const void* b, size_t n) {
  using T = typename V::T;
  T* d = static_cast<T*>(dst);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  size_t i = 0;
  for (; i + 2 * V::W <= n; i += 2 * V::W) {
    auto r0 = apply<V, Op>(V::load(x + i), V::load(y + i));
    auto r1 = apply<V, Op>(V::load(x + i + V::W), V::load(y + i + V::W));
    V::store(d + i, r0);
    V::store(d + i + V::W, r1);
  }
  for (; i + V::W <= n; i += V::W) V::store(d + i, apply<V, Op>(V::load(x + i), V::load(y + i)));
  rk_combine_tail<T, Op>(d, x, y, i, n);
}

template <class V>
void divide_float(void* dst, const void* src, size_t n, int64_t divisor) {
  using T = typename V::T;
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  const T q = static_cast<T>(divisor);
  size_t i = 0;
  for (; i + V::W <= n; i += V::W) V::store(d + i, V::div(V::load(s + i), q));
  rk_divide_tail<T>(d, s, i, n, divisor);
}

template <class T>
void divide_int(void* dst, const void* src, size_t n, int64_t divisor) {
  rk_divide_tail<T>(static_cast<T*>(dst), static_cast<const T*>(src), 0, n, divisor);
}

void bf16_to_f32(float* d, const uint16_t* s, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  for (; i < n; ++i) d[i] = rk_from_bf16(s[i]);
}

void f16_to_f32(float* d, const uint16_t* s, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  for (; i < n; ++i) d[i] = rk_from_f16(s[i]);
}

void f32_to_bf16(uint16_t* d, const float* s, size_t n, int64_t divisor) {
  const bool divide = divisor > 1;
  const float q = static_cast<float>(divisor);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  const __m512i bias = _mm512_set1_epi32(0x7fff);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(s + i);
    if (divide) x = _mm512_div_ps(x, _mm512_set1_ps(q));
    __m512i u = _mm512_castps_si512(x);
    __mmask16 is_nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, abs_mask), inf);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
    __m512i nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), quiet);
    __m512i r = _mm512_mask_blend_epi32(is_nan, rounded, nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm512_cvtepi32_epi16(r));
  }
  for (; i < n; ++i) d[i] = rk_to_bf16(divide ? s[i] / q : s[i]);
}

void f32_to_f16(uint16_t* d, const float* s, size_t n, int64_t divisor) {
  const bool divide = divisor > 1;
  const float q = static_cast<float>(divisor);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(s + i);
    if (divide) x = _mm512_div_ps(x, _mm512_set1_ps(q));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) d[i] = rk_to_f16(divide ? s[i] / q : s[i]);
}

const ReduceKernels kAvx512 = {
    ReduceIsa::Avx512,
    {{combine<F32x16, 0>, combine<F32x16, 1>, combine<F32x16, 2>},
     {combine<F64x8, 0>, combine<F64x8, 1>, combine<F64x8, 2>},
     {combine<I32x16, 0>, combine<I32x16, 1>, combine<I32x16, 2>},
     {combine<I64x8, 0>, combine<I64x8, 1>, combine<I64x8, 2>}},
    {divide_float<F32x16>, divide_float<F64x8>, divide_int<int32_t>, divide_int<int64_t>},
    bf16_to_f32,
    f16_to_f32,
    f32_to_bf16,
    f32_to_f16,
};

}  // namespace
}  // namespace braid::comm

#pragma GCC diagnostic pop
#pragma GCC pop_options

// Outside the target region: calling this on any CPU is safe.
const braid::comm::ReduceKernels* braid::comm::avx512_reduce_kernels() { return &kAvx512; }
#else
namespace braid::comm {
const ReduceKernels* avx512_reduce_kernels() { return nullptr; }
}  // namespace braid::comm
#endif
