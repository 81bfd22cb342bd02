#pragma once
// The element-wise kernels behind every reduction, as one table of function
// pointers per instruction set. This header is deliberately free of standard
// library templates: the AVX2 and AVX-512 files include it inside a
// `#pragma GCC target` region, and a template instantiated there could be
// picked by the linker for the portable path too (an illegal instruction on an
// older CPU).
#include <cstddef>
#include <cstdint>

namespace braid::comm {

enum class ReduceIsa : uint8_t { Portable = 0, Avx2 = 1, Avx512 = 2 };

// The types a reduction accumulates in (bf16 and f16 accumulate in f32).
enum class AccType : uint8_t { F32 = 0, F64 = 1, I32 = 2, I64 = 3 };
// Avg is Sum followed by one division, so kernels know only these three.
enum class AccOp : uint8_t { Sum = 0, Max = 1, Min = 2 };

// Semantics, identical bit for bit in every instruction set:
//  * sum: IEEE addition (floats), wrap-around two's complement (integers);
//  * max/min: NaN-propagating — if a is NaN the result is a, else if b is NaN
//    the result is b, else (a > b ? a : b) / (a < b ? a : b); so max(+0, -0)
//    is -0 and max(-0, +0) is +0: the order of operands is part of the result,
//    which is why callers fix it (lower rank first);
//  * conversions round to nearest even; f16 NaNs keep their payload and are
//    quieted exactly as the F16C instructions do.
struct ReduceKernels {
  ReduceIsa isa;
  // dst[i] = op(a[i], b[i]); dst may be a or b, never a partial overlap.
  void (*combine[4][3])(void* dst, const void* a, const void* b, size_t n);
  // dst[i] = src[i] / divisor (floats: IEEE division; integers: truncating).
  void (*divide[4])(void* dst, const void* src, size_t n, int64_t divisor);
  void (*bf16_to_f32)(float* dst, const uint16_t* src, size_t n);
  void (*f16_to_f32)(float* dst, const uint16_t* src, size_t n);
  // dst[i] = round(src[i] / divisor); divisor 1 divides nothing.
  void (*f32_to_bf16)(uint16_t* dst, const float* src, size_t n, int64_t divisor);
  void (*f32_to_f16)(uint16_t* dst, const float* src, size_t n, int64_t divisor);
};

// Tables per instruction set; nullptr where this build did not compile one.
const ReduceKernels* portable_reduce_kernels();
const ReduceKernels* avx2_reduce_kernels();
const ReduceKernels* avx512_reduce_kernels();

}  // namespace braid::comm
