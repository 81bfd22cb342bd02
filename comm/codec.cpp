// The codecs of comm/codec.hpp. Cost: one pass over the input per encode and
// per decode (int8: two, the first finding each chunk's largest magnitude);
// memory bound, a few GB/s per core — small next to a slow link, which is the
// only place a codec is worth its error.
#include "comm/codec.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/dtype.hpp"
#include "core/error.hpp"

namespace braid::comm {
namespace {

class F32Codec final : public Codec {
 public:
  CodecKind kind() const override { return CodecKind::F32; }
  size_t encoded_bytes(size_t count) const override { return count * 4; }
  void encode(const float* in, size_t count, void* out) const override {
    if (count) std::memcpy(out, in, count * 4);
  }
  void decode(const void* in, size_t count, float* out) const override {
    if (count) std::memcpy(out, in, count * 4);
  }
  double error_bound(double) const override { return 0; }
};

class Bf16Codec final : public Codec {
 public:
  CodecKind kind() const override { return CodecKind::Bf16; }
  size_t encoded_bytes(size_t count) const override { return count * 2; }
  void encode(const float* in, size_t count, void* out) const override {
    auto* o = static_cast<uint16_t*>(out);
    for (size_t i = 0; i < count; ++i) o[i] = f32_to_bf16(in[i]);
  }
  void decode(const void* in, size_t count, float* out) const override {
    const auto* p = static_cast<const uint16_t*>(in);
    for (size_t i = 0; i < count; ++i) out[i] = bf16_to_f32(p[i]);
  }
  double error_bound(double max_abs) const override { return max_abs * 0x1p-8; }
};

// Layout: the chunk scales (f32 each), then one int8 per element.
class Int8Codec final : public Codec {
 public:
  CodecKind kind() const override { return CodecKind::Int8; }
  static size_t chunks(size_t count) { return (count + kInt8Chunk - 1) / kInt8Chunk; }
  size_t encoded_bytes(size_t count) const override { return chunks(count) * 4 + count; }
  void encode(const float* in, size_t count, void* out) const override {
    const size_t k = chunks(count);
    auto* bytes = static_cast<unsigned char*>(out);
    auto* q = reinterpret_cast<int8_t*>(bytes + k * 4);
    for (size_t c = 0; c < k; ++c) {
      const size_t lo = c * kInt8Chunk, hi = std::min(count, lo + kInt8Chunk);
      float max_abs = 0;
      bool finite = true;
      for (size_t i = lo; i < hi; ++i) {
        const float a = std::fabs(in[i]);
        finite = finite && std::isfinite(a);
        max_abs = a > max_abs ? a : max_abs;
      }
      float scale = finite ? max_abs / 127.0f : std::nanf("");
      std::memcpy(bytes + c * 4, &scale, 4);
      if (!(scale > 0)) {  // zero chunk, or NaN scale: q is irrelevant
        std::memset(q + lo, 0, hi - lo);
        continue;
      }
      const float inv = 127.0f / max_abs;
      for (size_t i = lo; i < hi; ++i) {
        float v = std::nearbyint(in[i] * inv);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[i] = static_cast<int8_t>(v);
      }
    }
  }
  void decode(const void* in, size_t count, float* out) const override {
    const size_t k = chunks(count);
    const auto* bytes = static_cast<const unsigned char*>(in);
    const auto* q = reinterpret_cast<const int8_t*>(bytes + k * 4);
    for (size_t c = 0; c < k; ++c) {
      const size_t lo = c * kInt8Chunk, hi = std::min(count, lo + kInt8Chunk);
      float scale;
      std::memcpy(&scale, bytes + c * 4, 4);
      for (size_t i = lo; i < hi; ++i) out[i] = static_cast<float>(q[i]) * scale;
    }
  }
  // scale/2 = max/254, plus the f32 rounding of in*inv and q*scale.
  double error_bound(double max_abs) const override { return max_abs / 254.0 + max_abs * 4e-7; }
};

const F32Codec kF32;
const Bf16Codec kBf16;
const Int8Codec kInt8;

}  // namespace

const char* codec_name(CodecKind k) {
  switch (k) {
    case CodecKind::F32: return "f32";
    case CodecKind::Bf16: return "bf16";
    case CodecKind::Int8: return "int8";
  }
  return "?";
}

const char* Codec::name() const { return codec_name(kind()); }

CodecKind parse_codec(const std::string& name) {
  for (CodecKind k : {CodecKind::F32, CodecKind::Bf16, CodecKind::Int8})
    if (name == codec_name(k)) return k;
  throw ConfigError(fmt::format("unknown codec '{}'", name), "use one of: f32, bf16, int8");
}

const Codec& codec(CodecKind k) {
  switch (k) {
    case CodecKind::Bf16: return kBf16;
    case CodecKind::Int8: return kInt8;
    case CodecKind::F32: break;
  }
  return kF32;
}

void add_error_feedback(const Codec& c, float* data, float* residual, size_t count, void* scratch) {
  for (size_t i = 0; i < count; ++i) data[i] += residual[i];
  c.encode(data, count, scratch);
  c.decode(scratch, count, residual);
  for (size_t i = 0; i < count; ++i) residual[i] = data[i] - residual[i];
}

}  // namespace braid::comm
