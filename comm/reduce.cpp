// Portable reduction kernels, the run-time choice of instruction set, and the
// combiners handed to the transport.
//
// Cost model: each kernel is one streaming pass (combine: read 2n, write n);
// the portable path is scalar code the compiler may vectorize for the
// baseline ISA, the AVX2/AVX-512 tables do 8/16 f32 lanes per instruction.
#include "comm/reduce.hpp"

#include <fmt/format.h>

#include <cstring>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace braid::comm {

namespace {

#include "comm/reduce_scalar.inl"

template <class T, int Op>
void portable_combine(void* dst, const void* a, const void* b, size_t n) {
  rk_combine_tail<T, Op>(static_cast<T*>(dst), static_cast<const T*>(a), static_cast<const T*>(b), 0, n);
}

template <class T>
void portable_divide(void* dst, const void* src, size_t n, int64_t divisor) {
  rk_divide_tail<T>(static_cast<T*>(dst), static_cast<const T*>(src), 0, n, divisor);
}

void portable_bf16_to_f32(float* d, const uint16_t* s, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = rk_from_bf16(s[i]);
}
void portable_f16_to_f32(float* d, const uint16_t* s, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = rk_from_f16(s[i]);
}
void portable_f32_to_bf16(uint16_t* d, const float* s, size_t n, int64_t divisor) {
  const float q = static_cast<float>(divisor);
  if (divisor > 1) {
    for (size_t i = 0; i < n; ++i) d[i] = rk_to_bf16(s[i] / q);
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = rk_to_bf16(s[i]);
  }
}
void portable_f32_to_f16(uint16_t* d, const float* s, size_t n, int64_t divisor) {
  const float q = static_cast<float>(divisor);
  if (divisor > 1) {
    for (size_t i = 0; i < n; ++i) d[i] = rk_to_f16(s[i] / q);
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = rk_to_f16(s[i]);
  }
}

const ReduceKernels kPortable = {
    ReduceIsa::Portable,
    {{portable_combine<float, 0>, portable_combine<float, 1>, portable_combine<float, 2>},
     {portable_combine<double, 0>, portable_combine<double, 1>, portable_combine<double, 2>},
     {portable_combine<int32_t, 0>, portable_combine<int32_t, 1>, portable_combine<int32_t, 2>},
     {portable_combine<int64_t, 0>, portable_combine<int64_t, 1>, portable_combine<int64_t, 2>}},
    {portable_divide<float>, portable_divide<double>, portable_divide<int32_t>, portable_divide<int64_t>},
    portable_bf16_to_f32,
    portable_f16_to_f32,
    portable_f32_to_bf16,
    portable_f32_to_f16,
};

bool cpu_has(ReduceIsa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  switch (isa) {
    case ReduceIsa::Portable: return true;
    case ReduceIsa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    case ReduceIsa::Avx512: return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == ReduceIsa::Portable;
#endif
}

const ReduceKernels* table_of(ReduceIsa isa) {
  switch (isa) {
    case ReduceIsa::Portable: return &kPortable;
    case ReduceIsa::Avx2: return avx2_reduce_kernels();
    case ReduceIsa::Avx512: return avx512_reduce_kernels();
  }
  return nullptr;
}

const ReduceKernels* choose_active() {
  if (auto forced = env::get("BRAID_REDUCE_ISA"); forced && !forced->empty()) {
    ReduceIsa isa = parse_isa(*forced);
    if (!isa_supported(isa))
      throw ConfigError(fmt::format("BRAID_REDUCE_ISA={} is not supported by this CPU or build", *forced),
                        "unset BRAID_REDUCE_ISA or pick portable/avx2");
    return table_of(isa);
  }
  for (ReduceIsa isa : {ReduceIsa::Avx512, ReduceIsa::Avx2})
    if (isa_supported(isa)) return table_of(isa);
  return &kPortable;
}

constexpr size_t kAccSize[4] = {4, 8, 4, 8};

template <int T, int O, bool IncomingFirst>
void combiner_fn(void* dst, const void* local, const void* incoming, size_t nbytes) {
  const ReduceKernels& k = active_reduce_kernels();
  const size_t n = nbytes / kAccSize[T];
  if constexpr (IncomingFirst) k.combine[T][O](dst, incoming, local, n);
  else k.combine[T][O](dst, local, incoming, n);
}

template <int T, int O>
net::Combiner make_one(bool incoming_first) {
  net::Combiner c;
  c.elem_size = kAccSize[T];
  if (incoming_first) c.fn = combiner_fn<T, O, true>;
  else c.fn = combiner_fn<T, O, false>;
  return c;
}

template <int T>
void fill_type(net::Combiner (&table)[4][3][2]) {
  for (int f = 0; f < 2; ++f) {
    table[T][0][f] = make_one<T, 0>(f == 1);
    table[T][1][f] = make_one<T, 1>(f == 1);
    table[T][2][f] = make_one<T, 2>(f == 1);
  }
}

struct CombinerTable {
  net::Combiner c[4][3][2];
  CombinerTable() {
    fill_type<0>(c);
    fill_type<1>(c);
    fill_type<2>(c);
    fill_type<3>(c);
  }
};

}  // namespace

const ReduceKernels* portable_reduce_kernels() { return &kPortable; }

const char* isa_name(ReduceIsa isa) {
  switch (isa) {
    case ReduceIsa::Portable: return "portable";
    case ReduceIsa::Avx2: return "avx2";
    case ReduceIsa::Avx512: return "avx512";
  }
  return "?";
}

ReduceIsa parse_isa(const std::string& name) {
  for (ReduceIsa isa : {ReduceIsa::Portable, ReduceIsa::Avx2, ReduceIsa::Avx512})
    if (name == isa_name(isa)) return isa;
  throw ConfigError(fmt::format("unknown reduction instruction set '{}'", name),
                    "use one of: portable, avx2, avx512");
}

bool isa_supported(ReduceIsa isa) { return table_of(isa) != nullptr && cpu_has(isa); }

const ReduceKernels& reduce_kernels(ReduceIsa isa) {
  if (!isa_supported(isa))
    throw ConfigError(fmt::format("reduction kernels for {} are not available on this CPU or build", isa_name(isa)),
                      "use portable, or the ISA that active_reduce_kernels() reports");
  return *table_of(isa);
}

const ReduceKernels& active_reduce_kernels() {
  static const ReduceKernels* active = choose_active();
  return *active;
}

bool dtype_reducible(DType t) { return t != DType::U8; }

DType accumulation_type(DType t) {
  switch (t) {
    case DType::BF16:
    case DType::F16: return DType::F32;
    case DType::U8:
      throw ConfigError("u8 elements cannot be reduced",
                        "use all_gather/broadcast for bytes, or a numeric type for reductions");
    default: return t;
  }
}

AccType acc_type_index(DType acc) {
  switch (acc) {
    case DType::F32: return AccType::F32;
    case DType::F64: return AccType::F64;
    case DType::I32: return AccType::I32;
    case DType::I64: return AccType::I64;
    default:
      throw Error(fmt::format("{} is not an accumulation type", dtype_name(acc)),
                  "this is a bug in braid's comm layer; please report it");
  }
}

AccOp acc_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Max: return AccOp::Max;
    case ReduceOp::Min: return AccOp::Min;
    default: return AccOp::Sum;
  }
}

void combine(DType acc, ReduceOp op, void* dst, const void* a, const void* b, size_t count) {
  if (count == 0) return;
  active_reduce_kernels().combine[static_cast<int>(acc_type_index(acc))][static_cast<int>(acc_op(op))](dst, a, b,
                                                                                                        count);
}

const net::Combiner& combiner(DType acc, ReduceOp op, bool incoming_first) {
  static const CombinerTable table;
  return table.c[static_cast<int>(acc_type_index(acc))][static_cast<int>(acc_op(op))][incoming_first ? 1 : 0];
}

void to_accumulation(DType t, void* acc, const void* src, size_t count) {
  if (count == 0) return;
  const ReduceKernels& k = active_reduce_kernels();
  switch (t) {
    case DType::BF16: k.bf16_to_f32(static_cast<float*>(acc), static_cast<const uint16_t*>(src), count); return;
    case DType::F16: k.f16_to_f32(static_cast<float*>(acc), static_cast<const uint16_t*>(src), count); return;
    default:
      if (acc != src) std::memcpy(acc, src, count * dtype_size(t));
      return;
  }
}

void from_accumulation(DType t, void* dst, const void* acc, size_t count, int64_t divisor) {
  if (count == 0) return;
  const ReduceKernels& k = active_reduce_kernels();
  switch (t) {
    case DType::BF16:
      k.f32_to_bf16(static_cast<uint16_t*>(dst), static_cast<const float*>(acc), count, divisor);
      return;
    case DType::F16:
      k.f32_to_f16(static_cast<uint16_t*>(dst), static_cast<const float*>(acc), count, divisor);
      return;
    default:
      if (divisor > 1) {
        k.divide[static_cast<int>(acc_type_index(t))](dst, acc, count, divisor);
      } else if (dst != acc) {
        std::memcpy(dst, acc, count * dtype_size(t));
      }
      return;
  }
}

}  // namespace braid::comm
