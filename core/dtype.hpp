#pragma once
// Element types that travel through collectives and live in checkpoints.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace braid {

enum class DType : uint8_t { F32 = 0, F64 = 1, BF16 = 2, F16 = 3, I32 = 4, I64 = 5, U8 = 6 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "f32", "bf16", ...
// Parses a name; throws ConfigError listing the allowed names.
DType parse_dtype(std::string_view name);
bool dtype_is_float(DType t);

// bf16 and f16 conversions (round to nearest even), scalar reference versions.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace braid
