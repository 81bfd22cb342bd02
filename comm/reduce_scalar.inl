// Scalar element operations shared by every kernel table: the whole portable
// table, and the tails of the vector loops. Included inside an anonymous
// namespace by each reduce_*.cpp, so that each file compiles its own copy for
// its own instruction set (no inline function shared across targets).
//
// The f16 conversions reproduce the F16C instructions exactly, NaNs included
// (tests/comm/test_reduce.cpp checks all 65536 half values against them).

inline float rk_bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t rk_f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float rk_from_bf16(uint16_t h) { return rk_bits_to_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t rk_to_bf16(float f) {
  uint32_t u = rk_f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float rk_from_f16(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return rk_bits_to_f32(sign | (man ? 0x7fc00000u : 0x7f800000u) | (man << 13));
  if (exp == 0) {
    if (man == 0) return rk_bits_to_f32(sign);
    exp = 127 - 15 + 1;  // subnormal: normalize
    while (!(man & 0x400u)) {
      man <<= 1;
      --exp;
    }
    man &= 0x3ffu;
    return rk_bits_to_f32(sign | (exp << 23) | (man << 13));
  }
  return rk_bits_to_f32(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

inline uint16_t rk_to_f16(float f) {
  uint32_t u = rk_f32_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((absu >> 13) & 0x3ffu));
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow and Inf
  if (absu < 0x38800000u) {                                              // f16 subnormal or zero
    if (absu < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t e = absu >> 23;
    uint32_t m = (absu & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;
    uint32_t half = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t v = absu - (112u << 23);  // rebias the exponent
  uint32_t half = v >> 13;
  uint32_t rem = v & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;
  return static_cast<uint16_t>(sign | half);
}

inline float rk_sum(float a, float b) { return a + b; }
inline double rk_sum(double a, double b) { return a + b; }
inline int32_t rk_sum(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}
inline int64_t rk_sum(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
// `a != a` is the NaN test; for integers it is always false.
template <class T>
inline T rk_max(T a, T b) {
  return a != a ? a : (a > b ? a : b);
}
template <class T>
inline T rk_min(T a, T b) {
  return a != a ? a : (a < b ? a : b);
}

template <class T>
inline T rk_apply(int op, T a, T b) {
  return op == 0 ? rk_sum(a, b) : op == 1 ? rk_max(a, b) : rk_min(a, b);
}

template <class T, int Op>
inline void rk_combine_tail(T* d, const T* a, const T* b, size_t i, size_t n) {
  for (; i < n; ++i) d[i] = rk_apply<T>(Op, a[i], b[i]);
}

template <class T>
inline void rk_divide_tail(T* d, const T* s, size_t i, size_t n, int64_t divisor) {
  const T q = static_cast<T>(divisor);
  for (; i < n; ++i) d[i] = s[i] / q;
}
