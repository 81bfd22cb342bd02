#pragma once
// Reductions used by the collectives: which kernel table runs (AVX-512, AVX2
// or portable, picked once at start-up from the CPU), the accumulation type
// of each element type, and the net::Combiner that fuses a reduction into a
// receive (Pair::irecv_reduce).
//
// How partial sums travel: bf16 and f16 are widened to f32 when a reduction
// starts, every partial result is computed and sent in f32, and the final
// value is rounded back (to nearest even) once, after the last addition (and
// after the division of avg). The result therefore equals the f32 reduction
// rounded once; the price is twice the bytes on the wire of a bf16 payload.
// All other types travel as themselves.
#include <cstddef>
#include <string>

#include "comm/communicator.hpp"
#include "comm/reduce_kernels.hpp"
#include "core/dtype.hpp"
#include "net/pair.hpp"

namespace braid::comm {

const char* isa_name(ReduceIsa isa);
// "portable", "avx2", "avx512"; throws ConfigError otherwise.
ReduceIsa parse_isa(const std::string& name);
// Compiled in and supported by this CPU.
bool isa_supported(ReduceIsa isa);
// Throws ConfigError when the ISA is not supported here.
const ReduceKernels& reduce_kernels(ReduceIsa isa);
// The table collectives use: the best supported ISA, unless BRAID_REDUCE_ISA
// names another. Chosen once per process.
const ReduceKernels& active_reduce_kernels();

// Element types that can be reduced (all but u8).
bool dtype_reducible(DType t);
// f32 for bf16/f16, the type itself otherwise.
DType accumulation_type(DType t);
AccType acc_type_index(DType acc);  // acc must be f32, f64, i32 or i64
AccOp acc_op(ReduceOp op);          // avg reduces as sum

// dst = op(a, b) elementwise over `count` elements of the accumulation type
// `acc` (avg combines as sum). dst may be a or b.
void combine(DType acc, ReduceOp op, void* dst, const void* a, const void* b, size_t count);
// Combiner for irecv_reduce over accumulation type `acc`:
//   incoming_first = false: dst = op(local, incoming)
//   incoming_first = true:  dst = op(incoming, local)
// The operand order is fixed by the caller (lower rank first) so that every
// rank computes the same bits even for max(+0, -0) or NaN payloads. The
// returned object is static: no allocation per call.
const net::Combiner& combiner(DType acc, ReduceOp op, bool incoming_first);

// acc[i] = widen(src[i]) for `count` elements of type t (a copy when t is
// its own accumulation type; nothing when acc == src).
void to_accumulation(DType t, void* acc, const void* src, size_t count);
// dst[i] = narrow(acc[i] / divisor) (divisor 1: no division); dst may be acc
// when t is its own accumulation type.
void from_accumulation(DType t, void* dst, const void* acc, size_t count, int64_t divisor);

}  // namespace braid::comm
