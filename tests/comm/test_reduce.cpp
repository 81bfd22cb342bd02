// Reduction kernels: every instruction set this CPU has must produce the
// same bytes as the portable path (so ranks on different CPUs agree), on
// random data and on the awkward values (NaN payloads, ±0, infinities,
// subnormals, rounding ties). The AVX-512 table is checked only where the
// CPU has AVX-512F; the test says so when it skips.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "comm/reduce.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"

using namespace braid;
using namespace braid::comm;

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Random f32 bit patterns, mixed with special values.
std::vector<float> awkward_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), from_bits(0x7fc00000u), from_bits(0xffc00001u),
                            from_bits(0x7f800001u) /* signalling */, from_bits(0x00000001u), from_bits(0x807fffffu),
                            65504.0f, 65520.0f, 1.0f + 1.0f / 1024.0f + 1.0f / 2048.0f, 3.0f * (1.0f / 16384.0f),
                            from_bits(0x3f808000u) /* bf16 tie */, from_bits(0x3f818000u), from_bits(0x477ff000u)};
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t pick = rng() % 8;
    if (pick == 0) v[i] = specials[rng() % (sizeof(specials) / sizeof(float))];
    else if (pick < 4) v[i] = from_bits(rng());
    else v[i] = std::uniform_real_distribution<float>(-4, 4)(rng);
  }
  return v;
}

std::vector<ReduceIsa> vector_isas() {
  std::vector<ReduceIsa> out;
  for (ReduceIsa isa : {ReduceIsa::Avx2, ReduceIsa::Avx512})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

void compare_tables(const ReduceKernels& k) {
  const ReduceKernels& p = *portable_reduce_kernels();
  // Lengths around every vector width and unroll, and unaligned starts.
  const size_t lengths[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1003};
  uint32_t seed = 7;
  for (size_t n : lengths) {
    for (size_t offset : {0, 1, 3}) {
      SCOPED_TRACE(::testing::Message() << "isa " << isa_name(k.isa) << " n " << n << " offset " << offset);
      auto fa = awkward_floats(n + offset, seed++);
      auto fb = awkward_floats(n + offset, seed++);
      std::vector<double> da(n + offset), db(n + offset);
      std::vector<int32_t> ia(n + offset), ib(n + offset);
      std::vector<int64_t> la(n + offset), lb(n + offset);
      std::mt19937_64 rng(seed++);
      for (size_t i = 0; i < n + offset; ++i) {
        uint64_t x = rng(), y = rng();
        std::memcpy(&da[i], &x, 8);
        std::memcpy(&db[i], &y, 8);
        if (i % 5 == 0) da[i] = static_cast<double>(fa[i]);  // NaNs and signed zeros as doubles too
        if (i % 7 == 0) db[i] = -0.0;
        ia[i] = static_cast<int32_t>(x);
        ib[i] = i % 3 ? static_cast<int32_t>(y) : INT32_MAX;
        la[i] = static_cast<int64_t>(x);
        lb[i] = i % 3 ? static_cast<int64_t>(y) : INT64_MIN;
      }
      const void* A[4] = {fa.data() + offset, da.data() + offset, ia.data() + offset, la.data() + offset};
      const void* B[4] = {fb.data() + offset, db.data() + offset, ib.data() + offset, lb.data() + offset};
      const size_t es[4] = {4, 8, 4, 8};
      for (int t = 0; t < 4; ++t) {
        for (int op = 0; op < 3; ++op) {
          std::vector<char> want(n * es[t] + 1), got(n * es[t] + 1);
          p.combine[t][op](want.data(), A[t], B[t], n);
          k.combine[t][op](got.data(), A[t], B[t], n);
          EXPECT_EQ(0, std::memcmp(want.data(), got.data(), n * es[t])) << "combine type " << t << " op " << op;
          // In place (dst == a) gives the same bytes.
          std::vector<char> inplace(static_cast<const char*>(A[t]), static_cast<const char*>(A[t]) + n * es[t]);
          k.combine[t][op](inplace.data(), inplace.data(), B[t], n);
          EXPECT_EQ(0, std::memcmp(want.data(), inplace.data(), n * es[t])) << "in place type " << t << " op " << op;
        }
        for (int64_t d : {1, 3, 8}) {
          std::vector<char> want(n * es[t] + 1), got(n * es[t] + 1);
          p.divide[t](want.data(), A[t], n, d);
          k.divide[t](got.data(), A[t], n, d);
          EXPECT_EQ(0, std::memcmp(want.data(), got.data(), n * es[t])) << "divide type " << t << " by " << d;
        }
      }
      for (int64_t d : {1, 3}) {
        std::vector<uint16_t> want(n + 1), got(n + 1);
        p.f32_to_bf16(want.data(), fa.data() + offset, n, d);
        k.f32_to_bf16(got.data(), fa.data() + offset, n, d);
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), n * 2)) << "f32->bf16 /" << d;
        p.f32_to_f16(want.data(), fa.data() + offset, n, d);
        k.f32_to_f16(got.data(), fa.data() + offset, n, d);
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), n * 2)) << "f32->f16 /" << d;
      }
    }
  }
}

TEST(ReduceKernels, VectorTablesMatchPortableBitForBit) {
  auto isas = vector_isas();
  if (isas.empty()) GTEST_SKIP() << "this CPU has neither AVX2+F16C nor AVX-512F: only the portable path exists";
  for (ReduceIsa isa : isas) compare_tables(reduce_kernels(isa));
}

TEST(ReduceKernels, Avx512MatchesPortable) {
  if (!isa_supported(ReduceIsa::Avx512))
    GTEST_SKIP() << "this CPU has no AVX-512F: the AVX-512 kernels are compiled but cannot run here";
  compare_tables(reduce_kernels(ReduceIsa::Avx512));
}

TEST(ReduceKernels, HalfWideningIsExhaustivelyIdentical) {
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  const ReduceKernels& p = *portable_reduce_kernels();
  std::vector<float> want_f16(65536), want_bf16(65536), got(65536);
  p.f16_to_f32(want_f16.data(), all.data(), all.size());
  p.bf16_to_f32(want_bf16.data(), all.data(), all.size());
  // Finite values must agree with core's reference conversion.
  for (uint32_t h = 0; h < 65536; ++h)
    if (((h >> 10) & 0x1f) != 0x1f) {
      ASSERT_EQ(bits(want_f16[h]), bits(f16_to_f32(static_cast<uint16_t>(h)))) << h;
    }
  // Every vector ISA against the same references (a CPU with both AVX2 and
  // AVX-512 checks both).
  for (ReduceIsa isa : vector_isas()) {
    const ReduceKernels& k = reduce_kernels(isa);
    k.f16_to_f32(got.data(), all.data(), all.size());
    for (uint32_t h = 0; h < 65536; ++h)
      ASSERT_EQ(bits(want_f16[h]), bits(got[h])) << isa_name(isa) << " f16 " << h;
    k.bf16_to_f32(got.data(), all.data(), all.size());
    for (uint32_t h = 0; h < 65536; ++h)
      ASSERT_EQ(bits(want_bf16[h]), bits(got[h])) << isa_name(isa) << " bf16 " << h;
  }
}

TEST(ReduceKernels, HalfNarrowingMatchesOnASweepOfAllExponents) {
  // Every 101st bit pattern (all exponents, signs, NaN payloads and ties get
  // hit) plus the neighbourhood of the f16 range limits.
  std::vector<float> xs;
  for (uint64_t u = 0; u <= 0xffffffffull; u += 101) xs.push_back(from_bits(static_cast<uint32_t>(u)));
  for (uint32_t u = 0x477fe000u; u < 0x47800100u; ++u) xs.push_back(from_bits(u));
  for (uint32_t u = 0x33000000u - 64; u < 0x33000000u + 64; ++u) xs.push_back(from_bits(u));
  const ReduceKernels& p = *portable_reduce_kernels();
  std::vector<uint16_t> want(xs.size()), got(xs.size());
  p.f32_to_f16(want.data(), xs.data(), xs.size(), 1);
  for (size_t i = 0; i < xs.size(); i += 97)
    if (!std::isnan(xs[i])) {
      ASSERT_EQ(want[i], f32_to_f16(xs[i])) << std::hex << bits(xs[i]);
    }
  std::vector<uint16_t> wantb(xs.size()), gotb(xs.size());
  p.f32_to_bf16(wantb.data(), xs.data(), xs.size(), 1);
  for (size_t i = 0; i < xs.size(); i += 97) ASSERT_EQ(wantb[i], f32_to_bf16(xs[i])) << std::hex << bits(xs[i]);
  for (ReduceIsa isa : vector_isas()) {
    const ReduceKernels& k = reduce_kernels(isa);
    k.f32_to_f16(got.data(), xs.data(), xs.size(), 1);
    k.f32_to_bf16(gotb.data(), xs.data(), xs.size(), 1);
    for (size_t i = 0; i < xs.size(); ++i) {
      ASSERT_EQ(want[i], got[i]) << isa_name(isa) << " f16 of 0x" << std::hex << bits(xs[i]);
      ASSERT_EQ(wantb[i], gotb[i]) << isa_name(isa) << " bf16 of 0x" << std::hex << bits(xs[i]);
    }
  }
}

TEST(ReduceSemantics, MaxMinPropagateNaNAndKeepOperandOrder) {
  const float nan = from_bits(0x7fc00123u);
  for (const ReduceKernels* k : {portable_reduce_kernels(), &active_reduce_kernels()}) {
    float a[4] = {nan, 1.0f, 0.0f, -0.0f};
    float b[4] = {1.0f, nan, -0.0f, 0.0f};
    float mx[4], mn[4];
    k->combine[0][1](mx, a, b, 4);
    k->combine[0][2](mn, a, b, 4);
    EXPECT_EQ(bits(mx[0]), 0x7fc00123u);
    EXPECT_EQ(bits(mx[1]), 0x7fc00123u);
    EXPECT_EQ(bits(mx[2]), bits(-0.0f));  // equal operands: the second one
    EXPECT_EQ(bits(mx[3]), bits(0.0f));
    EXPECT_EQ(bits(mn[0]), 0x7fc00123u);
    EXPECT_EQ(bits(mn[1]), 0x7fc00123u);
  }
}

TEST(ReduceSemantics, IntegersWrapAround) {
  int32_t a[1] = {INT32_MAX}, b[1] = {1}, d[1];
  active_reduce_kernels().combine[2][0](d, a, b, 1);
  EXPECT_EQ(d[0], INT32_MIN);
  int64_t c[1] = {-7}, e[1];
  active_reduce_kernels().divide[3](e, c, 1, 2);
  EXPECT_EQ(e[0], -3);  // truncates toward zero
}

TEST(ReduceSemantics, CombinerOrderIsHonoured) {
  float local[2] = {0.0f, 2.0f}, incoming[2] = {-0.0f, 1.0f}, dst[2];
  const net::Combiner& local_first = combiner(DType::F32, ReduceOp::Max, false);
  const net::Combiner& incoming_first = combiner(DType::F32, ReduceOp::Max, true);
  EXPECT_EQ(local_first.elem_size, 4u);
  local_first.fn(dst, local, incoming, sizeof dst);  // max(+0, -0) = -0
  EXPECT_EQ(bits(dst[0]), bits(-0.0f));
  EXPECT_EQ(dst[1], 2.0f);
  incoming_first.fn(dst, local, incoming, sizeof dst);  // max(-0, +0) = +0
  EXPECT_EQ(bits(dst[0]), bits(0.0f));
  // Sum over i64 via the combiner, in place.
  int64_t acc[3] = {1, 2, 3};
  const int64_t in[3] = {10, 20, 30};
  combiner(DType::I64, ReduceOp::Avg, false).fn(acc, acc, in, sizeof acc);
  EXPECT_EQ(acc[2], 33);
}

TEST(ReduceSemantics, AccumulationTypesAndConversions) {
  EXPECT_EQ(accumulation_type(DType::BF16), DType::F32);
  EXPECT_EQ(accumulation_type(DType::F16), DType::F32);
  EXPECT_EQ(accumulation_type(DType::I64), DType::I64);
  EXPECT_THROW(accumulation_type(DType::U8), ConfigError);
  EXPECT_FALSE(dtype_reducible(DType::U8));
  uint16_t h[3] = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f), f32_to_bf16(3.0f)};
  float wide[3];
  to_accumulation(DType::BF16, wide, h, 3);
  EXPECT_EQ(wide[0], 1.5f);
  uint16_t back[3];
  from_accumulation(DType::BF16, back, wide, 3, 3);  // avg over 3 ranks
  EXPECT_EQ(bf16_to_f32(back[0]), bf16_to_f32(f32_to_bf16(1.5f / 3.0f)));
  EXPECT_THROW(parse_isa("sse9"), ConfigError);
  EXPECT_STREQ(isa_name(parse_isa("avx2")), "avx2");
  EXPECT_TRUE(isa_supported(ReduceIsa::Portable));
}

}  // namespace
