// The kernel loops, included into an anonymous namespace twice: once for the
// baseline ISA (cpu_kernels.cpp) and once under an AVX2 + FMA target pragma
// (cpu_kernels_avx2.cpp). Vector types never cross a function boundary that
// is not inlined into the same file (hence -Wno-psabi for these files).
//
// Vector path (head_dim a multiple of the vector width): 32-byte GCC vector
// types, register-blocked so that every fused multiply-add needs one load:
//   scores / dP   a row block of 4 vectors of keys accumulates over d
//                 (keys and values are transposed once per head: [D][S])
//   mixing / dQ   4 vectors of the output row stay in registers over j
//   dK / dV       column pass over the stored dS and P, again 4 output
//                 vectors in registers
// and a polynomial exp (Cephes expf, relative error ~2e-7) for float.
// Scalar path (any head_dim, and the reference for the vector path): the
// straightforward loops.
// No loop reassociates a floating-point sum beyond a fixed lane order, so
// results are deterministic for a given ISA.

template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef float U __attribute__((vector_size(32), aligned(4), may_alias));  // unaligned access
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int64_t N = 8;
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef double U __attribute__((vector_size(32), aligned(8), may_alias));
  static constexpr int64_t N = 4;
};

#define BRAID_LOAD(T, p) (*reinterpret_cast<const typename Lanes<T>::U*>(p))
#define BRAID_STORE(T, p, v) (*reinterpret_cast<typename Lanes<T>::U*>(p) = (v))

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// exp on 8 floats: Cephes expf (range reduction by ln 2, degree-6
// polynomial, relative error ~2e-7), inputs clamped to [-87, 88].
inline __attribute__((always_inline)) Lanes<float>::V vexp(Lanes<float>::V x) {
  using V = Lanes<float>::V;
  using I = Lanes<float>::I;
  x = x < -87.0f ? V{} - 87.0f : x;  // exp(-87) ~ 1.6e-38: below that the value is 0 for our purposes
  x = x > 88.0f ? V{} + 88.0f : x;
  V t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln 2) by the 1.5·2^23 trick
  V nf = t - 12582912.0f;
  V r = x - nf * 0.693359375f - nf * -2.12194440e-4f;
  V y = ((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r + 4.1665795894E-2f) * r +
         1.6666665459E-1f) * r + 5.0000001201E-1f;
  y = y * r * r + r + 1.0f;
  I e = (__builtin_convertvector(nf, I) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &e, sizeof scale);
  return y * scale;
}

// p[j] = exp(p[j] - shift) for j < n; returns the sum. p has room for n
// rounded up to the vector width.
inline float exp_shifted_sum(float* p, int64_t n, float shift) {
  using V = Lanes<float>::V;
  constexpr int64_t N = Lanes<float>::N;
  V sum = V{} + 0.0f;
  for (int64_t j = 0; j < n; j += N) {
    V y = vexp(BRAID_LOAD(float, p + j) - shift);
    if (j + N > n) {  // tail: lanes past n contribute nothing
      for (int64_t k = n - j; k < N; ++k) y[k] = 0.0f;
    }
    BRAID_STORE(float, p + j, y);
    sum += y;
  }
  float s = 0;
  for (int64_t k = 0; k < N; ++k) s += sum[k];
  return s;
}

inline double exp_shifted_sum(double* p, int64_t n, double shift) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += (p[j] = std::exp(p[j] - shift));
  return s;
}

// out[j] = Σ_d a[d] · mt[d·ld + j] for j in [0, n) rounded up to 4 vectors;
// mt is a transposed [D][ld] matrix with ld a multiple of 4 vectors.
template <typename T>
inline void row_times_transposed(const T* a, const T* mt, int64_t D, int64_t ld, int64_t n, T* out) {
  using V = typename Lanes<T>::V;
  constexpr int64_t N = Lanes<T>::N, BW = 4 * N;
  for (int64_t j0 = 0; j0 < n; j0 += BW) {
    V a0 = V{} + T(0), a1 = a0, a2 = a0, a3 = a0;
    const T* col = mt + j0;
    for (int64_t dd = 0; dd < D; ++dd) {
      const T x = a[dd];
      const T* r = col + dd * ld;
      a0 += x * BRAID_LOAD(T, r);
      a1 += x * BRAID_LOAD(T, r + N);
      a2 += x * BRAID_LOAD(T, r + 2 * N);
      a3 += x * BRAID_LOAD(T, r + 3 * N);
    }
    BRAID_STORE(T, out + j0, a0);
    BRAID_STORE(T, out + j0 + N, a1);
    BRAID_STORE(T, out + j0 + 2 * N, a2);
    BRAID_STORE(T, out + j0 + 3 * N, a3);
  }
}

// out[0, D) = Σ_{j in [j_begin, j_end)} w[j·w_stride] · rows[j·row_stride + 0..D)
// with D a multiple of the vector width; up to 4 vectors of out stay in
// registers over j.
template <typename T>
inline void weighted_row_sum(const T* w, int64_t w_stride, const T* rows, int64_t row_stride, int64_t j_begin,
                             int64_t j_end, int64_t D, T* out) {
  using V = typename Lanes<T>::V;
  constexpr int64_t N = Lanes<T>::N;
  for (int64_t d0 = 0; d0 < D; d0 += 4 * N) {
    const int64_t vecs = std::min<int64_t>(4, (D - d0) / N);
    V a0 = V{} + T(0), a1 = a0, a2 = a0, a3 = a0;
    const T* base = rows + d0;
    if (vecs == 4) {
      for (int64_t j = j_begin; j < j_end; ++j) {
        const T x = w[j * w_stride];
        const T* r = base + j * row_stride;
        a0 += x * BRAID_LOAD(T, r);
        a1 += x * BRAID_LOAD(T, r + N);
        a2 += x * BRAID_LOAD(T, r + 2 * N);
        a3 += x * BRAID_LOAD(T, r + 3 * N);
      }
    } else {
      for (int64_t j = j_begin; j < j_end; ++j) {
        const T x = w[j * w_stride];
        const T* r = base + j * row_stride;
        a0 += x * BRAID_LOAD(T, r);
        if (vecs > 1) a1 += x * BRAID_LOAD(T, r + N);
        if (vecs > 2) a2 += x * BRAID_LOAD(T, r + 2 * N);
      }
    }
    BRAID_STORE(T, out + d0, a0);
    if (vecs > 1) BRAID_STORE(T, out + d0 + N, a1);
    if (vecs > 2) BRAID_STORE(T, out + d0 + 2 * N, a2);
    if (vecs > 3) BRAID_STORE(T, out + d0 + 3 * N, a3);
  }
}

template <typename T>
void forward_pairs_vector(const T* qkv, T* y, T* probs, const AttentionDims& d, int64_t bh_begin, int64_t bh_end) {
  constexpr int64_t BW = 4 * Lanes<T>::N;
  const int64_t S = d.seq, D = d.head_dim, H = d.heads, C = H * D, row3 = 3 * C;
  const int64_t Sp = round_up(S, BW);
  const T scale = static_cast<T>(d.scale);
  std::vector<T> kt_buf(static_cast<size_t>(D * Sp), T(0)), s_buf(static_cast<size_t>(Sp)),
      q_buf(static_cast<size_t>(D));
  T* kt = kt_buf.data();  // keys transposed, zero beyond S
  T* s = s_buf.data();
  T* qs = q_buf.data();
  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* q = qkv + b * S * row3 + h * D;
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* yb = y + b * S * C + h * D;
    T* P = probs + bh * S * S;
    for (int64_t j = 0; j < S; ++j)
      for (int64_t dd = 0; dd < D; ++dd) kt[dd * Sp + j] = k[j * row3 + dd];
    for (int64_t i = 0; i < S; ++i) {
      const int64_t n = i + 1;
      for (int64_t dd = 0; dd < D; ++dd) qs[dd] = q[i * row3 + dd] * scale;
      row_times_transposed<T>(qs, kt, D, Sp, n, s);
      T m = s[0];
      for (int64_t j = 1; j < n; ++j) m = s[j] > m ? s[j] : m;
      const T inv = T(1) / exp_shifted_sum(s, n, m);
      T* p = P + i * S;
      for (int64_t j = 0; j < n; ++j) p[j] = s[j] * inv;
      weighted_row_sum<T>(p, 1, v, row3, 0, n, D, yb + i * C);
    }
  }
}

template <typename T>
void backward_pairs_vector(const T* qkv, const T* y, const T* probs, const T* dy, T* dqkv, const AttentionDims& d,
                           int64_t bh_begin, int64_t bh_end) {
  constexpr int64_t BW = 4 * Lanes<T>::N;
  const int64_t S = d.seq, D = d.head_dim, H = d.heads, C = H * D, row3 = 3 * C;
  const int64_t Sp = round_up(S, BW);
  const T scale = static_cast<T>(d.scale);
  std::vector<T> vt_buf(static_cast<size_t>(D * Sp), T(0)), ds_buf(static_cast<size_t>(S * Sp)),
      dp_buf(static_cast<size_t>(Sp));
  T* vt = vt_buf.data();  // values transposed, zero beyond S
  T* dS = ds_buf.data();  // row i: dL/dscores_ij for j <= i
  T* dp = dp_buf.data();
  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* q = qkv + b * S * row3 + h * D;
    const T* k = q + C;
    const T* v = q + 2 * C;
    const T* yb = y + b * S * C + h * D;
    const T* dyb = dy + b * S * C + h * D;
    T* dq = dqkv + b * S * row3 + h * D;
    const T* P = probs + bh * S * S;
    for (int64_t j = 0; j < S; ++j)
      for (int64_t dd = 0; dd < D; ++dd) vt[dd * Sp + j] = v[j * row3 + dd];
    // Rows: dS and dQ.
    for (int64_t i = 0; i < S; ++i) {
      const int64_t n = i + 1;
      const T* p = P + i * S;
      const T* dyi = dyb + i * C;
      // Softmax backward through Σ_j P_ij dP_ij = dY_i · Y_i (no extra pass).
      T delta = 0;
      for (int64_t dd = 0; dd < D; ++dd) delta += dyi[dd] * yb[i * C + dd];
      row_times_transposed<T>(dyi, vt, D, Sp, n, dp);
      T* dsi = dS + i * Sp;
      for (int64_t j = 0; j < n; ++j) dsi[j] = p[j] * (dp[j] - delta) * scale;
      weighted_row_sum<T>(dsi, 1, k, row3, 0, n, D, dq + i * row3);
    }
    // Columns: dK_j = Σ_{i≥j} dS_ij Q_i and dV_j = Σ_{i≥j} P_ij dY_i.
    for (int64_t j = 0; j < S; ++j) {
      weighted_row_sum<T>(dS + j, Sp, q, row3, j, S, D, dq + j * row3 + C);
      weighted_row_sum<T>(P + j, S, dyb, C, j, S, D, dq + j * row3 + 2 * C);
    }
  }
}

// ---- scalar path ----------------------------------------------------------

template <typename T>
void forward_pairs_scalar(const T* __restrict qkv, T* __restrict y, T* __restrict probs, const AttentionDims& d,
                          int64_t bh_begin, int64_t bh_end) {
  const int64_t S = d.seq, D = d.head_dim, H = d.heads, C = H * D, row3 = 3 * C;
  const T scale = static_cast<T>(d.scale);
  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* q = qkv + b * S * row3 + h * D;
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* yb = y + b * S * C + h * D;
    T* P = probs + bh * S * S;
    for (int64_t i = 0; i < S; ++i) {
      T* p = P + i * S;
      const T* qi = q + i * row3;
      const int64_t n = i + 1;
      for (int64_t j = 0; j < n; ++j) {
        T acc = 0;
        for (int64_t dd = 0; dd < D; ++dd) acc += qi[dd] * scale * k[j * row3 + dd];
        p[j] = acc;
      }
      T m = p[0];
      for (int64_t j = 1; j < n; ++j) m = p[j] > m ? p[j] : m;
      T sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - m));
      const T inv = T(1) / sum;
      for (int64_t j = 0; j < n; ++j) p[j] *= inv;
      T* yi = yb + i * C;
      for (int64_t dd = 0; dd < D; ++dd) {
        T acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += p[j] * v[j * row3 + dd];
        yi[dd] = acc;
      }
    }
  }
}

template <typename T>
void backward_pairs_scalar(const T* __restrict qkv, const T* __restrict y, const T* __restrict probs,
                           const T* __restrict dy, T* __restrict dqkv, const AttentionDims& d, int64_t bh_begin,
                           int64_t bh_end) {
  const int64_t S = d.seq, D = d.head_dim, H = d.heads, C = H * D, row3 = 3 * C;
  const T scale = static_cast<T>(d.scale);
  std::vector<T> dk(static_cast<size_t>(S * D)), dv(static_cast<size_t>(S * D)), ds(static_cast<size_t>(S));
  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* q = qkv + b * S * row3 + h * D;
    const T* k = q + C;
    const T* v = q + 2 * C;
    const T* yb = y + b * S * C + h * D;
    const T* dyb = dy + b * S * C + h * D;
    T* dq = dqkv + b * S * row3 + h * D;
    const T* P = probs + bh * S * S;
    std::fill(dk.begin(), dk.end(), T(0));
    std::fill(dv.begin(), dv.end(), T(0));
    for (int64_t i = 0; i < S; ++i) {
      const T* p = P + i * S;
      const T* qi = q + i * row3;
      const T* dyi = dyb + i * C;
      const int64_t n = i + 1;
      T delta = 0;
      for (int64_t dd = 0; dd < D; ++dd) delta += dyi[dd] * yb[i * C + dd];
      for (int64_t j = 0; j < n; ++j) {
        T dpj = 0;
        for (int64_t dd = 0; dd < D; ++dd) dpj += dyi[dd] * v[j * row3 + dd];
        ds[static_cast<size_t>(j)] = p[j] * (dpj - delta) * scale;
      }
      T* dqi = dq + i * row3;
      for (int64_t dd = 0; dd < D; ++dd) dqi[dd] = 0;
      for (int64_t j = 0; j < n; ++j) {
        const T s = ds[static_cast<size_t>(j)], pj = p[j];
        for (int64_t dd = 0; dd < D; ++dd) {
          dqi[dd] += s * k[j * row3 + dd];
          dk[static_cast<size_t>(j * D + dd)] += s * qi[dd];
          dv[static_cast<size_t>(j * D + dd)] += pj * dyi[dd];
        }
      }
    }
    for (int64_t j = 0; j < S; ++j)
      for (int64_t dd = 0; dd < D; ++dd) {
        dq[j * row3 + C + dd] = dk[static_cast<size_t>(j * D + dd)];
        dq[j * row3 + 2 * C + dd] = dv[static_cast<size_t>(j * D + dd)];
      }
  }
}

template <typename T>
void forward_pairs(const T* qkv, T* y, T* probs, const AttentionDims& d, int64_t bh_begin, int64_t bh_end) {
  if (d.head_dim % Lanes<T>::N == 0 && !force_scalar_attention())
    forward_pairs_vector<T>(qkv, y, probs, d, bh_begin, bh_end);
  else
    forward_pairs_scalar<T>(qkv, y, probs, d, bh_begin, bh_end);
}

template <typename T>
void backward_pairs(const T* qkv, const T* y, const T* probs, const T* dy, T* dqkv, const AttentionDims& d,
                    int64_t bh_begin, int64_t bh_end) {
  if (d.head_dim % Lanes<T>::N == 0 && !force_scalar_attention())
    backward_pairs_vector<T>(qkv, y, probs, dy, dqkv, d, bh_begin, bh_end);
  else
    backward_pairs_scalar<T>(qkv, y, probs, dy, dqkv, d, bh_begin, bh_end);
}

// ---- GELU ------------------------------------------------------------------

// Φ(x) and φ(x) for 8 floats; erf from Abramowitz & Stegun 7.1.26.
inline __attribute__((always_inline)) void vnormal(Lanes<float>::V x, Lanes<float>::V& cdf,
                                                   Lanes<float>::V& pdf) {
  using V = Lanes<float>::V;
  const V z = x * 0.70710678118654752f;  // x / sqrt(2)
  const V az = z < 0.0f ? -z : z;
  const V t = 1.0f / (1.0f + 0.3275911f * az);
  const V poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  const V e = vexp(-(z * z));  // exp(-x²/2)
  const V erf_abs = 1.0f - poly * e;
  const V erf = z < 0.0f ? -erf_abs : erf_abs;
  cdf = 0.5f * (1.0f + erf);
  pdf = 0.39894228040143268f * e;  // 1/sqrt(2π) · exp(-x²/2)
}

inline void gelu_forward_loop(const float* x, float* y, int64_t begin, int64_t end) {
  using V = Lanes<float>::V;
  constexpr int64_t N = Lanes<float>::N;
  int64_t i = begin;
  for (; i + N <= end; i += N) {
    V v = BRAID_LOAD(float, x + i), cdf, pdf;
    vnormal(v, cdf, pdf);
    BRAID_STORE(float, y + i, v * cdf);
  }
  for (; i < end; ++i) y[i] = x[i] * 0.5f * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

inline void gelu_backward_loop(const float* x, const float* dy, float* dx, int64_t begin, int64_t end) {
  using V = Lanes<float>::V;
  constexpr int64_t N = Lanes<float>::N;
  int64_t i = begin;
  for (; i + N <= end; i += N) {
    V v = BRAID_LOAD(float, x + i), cdf, pdf;
    vnormal(v, cdf, pdf);
    BRAID_STORE(float, dx + i, BRAID_LOAD(float, dy + i) * (cdf + v * pdf));
  }
  for (; i < end; ++i) {
    float cdf = 0.5f * (1.0f + std::erf(x[i] * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * std::exp(-0.5f * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

// Doubles (gradient checks) use libm: exactness matters there, not speed.
inline void gelu_forward_loop(const double* x, double* y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) y[i] = x[i] * 0.5 * (1.0 + std::erf(x[i] * 0.70710678118654752));
}

inline void gelu_backward_loop(const double* x, const double* dy, double* dx, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    double cdf = 0.5 * (1.0 + std::erf(x[i] * 0.70710678118654752));
    double pdf = 0.39894228040143268 * std::exp(-0.5 * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

#undef BRAID_LOAD
#undef BRAID_STORE
