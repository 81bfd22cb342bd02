// AVX2 + F16C reduction kernels (runtime-dispatched from comm/reduce.cpp).
//
// Cost model: every kernel is one streaming pass, memory-bound on this
// hardware: combine reads 2n and writes n elements; conversions read and
// write once. 8 f32 / 4 f64 lanes per instruction, two vectors per iteration.
#include <immintrin.h>

#include <cstring>

#include "comm/reduce_kernels.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,f16c")

namespace braid::comm {
namespace {

#include "comm/reduce_scalar.inl"

struct F32x8 {
  using T = float;
  using R = __m256;
  static constexpr size_t W = 8;
  static R load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  static R sum(R a, R b) { return _mm256_add_ps(a, b); }
  // max_ps returns b when either is NaN; put a back where a is NaN.
  static R max(R a, R b) { return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
  static R min(R a, R b) { return _mm256_blendv_ps(_mm256_min_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
  static R div(R a, T q) { return _mm256_div_ps(a, _mm256_set1_ps(q)); }
};

struct F64x4 {
  using T = double;
  using R = __m256d;
  static constexpr size_t W = 4;
  static R load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  static R sum(R a, R b) { return _mm256_add_pd(a, b); }
  static R max(R a, R b) { return _mm256_blendv_pd(_mm256_max_pd(a, b), a, _mm256_cmp_pd(a, a, _CMP_UNORD_Q)); }
  static R min(R a, R b) { return _mm256_blendv_pd(_mm256_min_pd(a, b), a, _mm256_cmp_pd(a, a, _CMP_UNORD_Q)); }
  static R div(R a, T q) { return _mm256_div_pd(a, _mm256_set1_pd(q)); }
};

struct I32x8 {
  using T = int32_t;
  using R = __m256i;
  static constexpr size_t W = 8;
  static R load(const T* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(T* p, R v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static R sum(R a, R b) { return _mm256_add_epi32(a, b); }
  static R max(R a, R b) { return _mm256_max_epi32(a, b); }
  static R min(R a, R b) { return _mm256_min_epi32(a, b); }
};

struct I64x4 {
  using T = int64_t;
  using R = __m256i;
  static constexpr size_t W = 4;
  static R load(const T* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(T* p, R v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static R sum(R a, R b) { return _mm256_add_epi64(a, b); }
  // AVX2 has no 64-bit max/min: select with a signed compare.
  static R max(R a, R b) { return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b)); }
  static R min(R a, R b) { return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(b, a)); }
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
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; ++i) d[i] = rk_from_bf16(s[i]);
}

void f16_to_f32(float* d, const uint16_t* s, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = rk_from_f16(s[i]);
}

void f32_to_bf16(uint16_t* d, const float* s, size_t n, int64_t divisor) {
  const bool divide = divisor > 1;
  const float q = static_cast<float>(divisor);
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i inf = _mm256_set1_epi32(0x7f800000);
  const __m256i bias = _mm256_set1_epi32(0x7fff);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i quiet = _mm256_set1_epi32(0x40);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(s + i);
    if (divide) x = _mm256_div_ps(x, _mm256_set1_ps(q));
    __m256i u = _mm256_castps_si256(x);
    __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
    __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
    __m256i r = _mm256_blendv_epi8(rounded, nan, is_nan);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) d[i] = rk_to_bf16(divide ? s[i] / q : s[i]);
}

void f32_to_f16(uint16_t* d, const float* s, size_t n, int64_t divisor) {
  const bool divide = divisor > 1;
  const float q = static_cast<float>(divisor);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(s + i);
    if (divide) x = _mm256_div_ps(x, _mm256_set1_ps(q));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) d[i] = rk_to_f16(divide ? s[i] / q : s[i]);
}

const ReduceKernels kAvx2 = {
    ReduceIsa::Avx2,
    {{combine<F32x8, 0>, combine<F32x8, 1>, combine<F32x8, 2>},
     {combine<F64x4, 0>, combine<F64x4, 1>, combine<F64x4, 2>},
     {combine<I32x8, 0>, combine<I32x8, 1>, combine<I32x8, 2>},
     {combine<I64x4, 0>, combine<I64x4, 1>, combine<I64x4, 2>}},
    {divide_float<F32x8>, divide_float<F64x4>, divide_int<int32_t>, divide_int<int64_t>},
    bf16_to_f32,
    f16_to_f32,
    f32_to_bf16,
    f32_to_f16,
};

}  // namespace
}  // namespace braid::comm

#pragma GCC pop_options

// Outside the target region: calling this on any CPU is safe.
const braid::comm::ReduceKernels* braid::comm::avx2_reduce_kernels() { return &kAvx2; }
#else
namespace braid::comm {
const ReduceKernels* avx2_reduce_kernels() { return nullptr; }
}  // namespace braid::comm
#endif
