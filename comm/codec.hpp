#pragma once
// Codecs: lossy encodings of f32 payloads for collectives over slow links
// (DiLoCo's pseudo-gradients). A codec turns `count` floats into a fixed
// number of bytes that depends only on `count`, so every rank knows the size
// of every message without asking. Decoding is a pure function of the bytes:
// ranks that decode the same bytes get the same floats, which is how a
// compressed all-reduce ends bit-identical everywhere (comm/algo/codec_ring.cpp).
//
// Codecs and their worst-case error per element when encoding x (|x| finite):
//   f32   4 B/elem   exact
//   bf16  2 B/elem   |x - x'| <= 2^-8 |x|   (round to nearest even, 8 significant bits)
//   int8  1 B/elem + 4 B per chunk of kInt8Chunk elements: a chunk stores
//         scale = max|x| / 127 and q = round(x / scale) in [-127, 127];
//         |x - x'| <= scale / 2 = max|x over the chunk| / 254 (plus f32 rounding,
//         ~1e-7 relative).
// Chunks of int8 are counted from the start of the span given to encode(),
// so the error of an element depends on its neighbours in that span only.
//
// A compressed all-reduce over n ranks encodes n times along each element's
// path (n-1 partial sums in the reduce-scatter, one final value), so for a
// sum the error is at most  sum over those encodes of the bound above, which
// for int8 is <= n * (Σ_r max_chunk|x_r|) / 254 per element (each partial sum
// is bounded by Σ_r max|x_r|, errors included to first order); for avg divide
// by n. bf16: <= n * 2^-8 * Σ_r |x_r| to first order.
//
// Error feedback (Seide et al. 2014; Karimireddy et al. 2019) is the caller's:
// keep a residual, add it before encoding, and keep what the codec dropped of
// the rank's own contribution (add_error_feedback below).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace braid::comm {

enum class CodecKind : uint8_t { F32 = 0, Bf16 = 1, Int8 = 2 };

constexpr size_t kInt8Chunk = 1024;  // elements per int8 scale (0.4% overhead)

class Codec {
 public:
  virtual ~Codec() = default;
  virtual CodecKind kind() const = 0;
  const char* name() const;
  // Bytes that encode(count) writes.
  virtual size_t encoded_bytes(size_t count) const = 0;
  // out must hold encoded_bytes(count) bytes. Non-finite inputs: f32 and bf16
  // keep them; int8 encodes a chunk holding any as NaN (the caller's check of
  // the result then sees it; silently clamping would hide a diverged replica).
  virtual void encode(const float* in, size_t count, void* out) const = 0;
  virtual void decode(const void* in, size_t count, float* out) const = 0;
  // The documented bound above for a span whose largest magnitude is max_abs.
  virtual double error_bound(double max_abs) const = 0;
};

// "f32", "bf16", "int8"; throws ConfigError for anything else.
CodecKind parse_codec(const std::string& name);
const char* codec_name(CodecKind k);
// Codecs are stateless; the returned reference lives for the whole program.
const Codec& codec(CodecKind k);
inline const Codec& codec(const std::string& name) { return codec(parse_codec(name)); }

// In place: data += residual, then residual = data - decode(encode(data)).
// Call before a compressed all-reduce of `data`; over many rounds nothing a
// rank contributes is lost, only delayed (scratch: encoded_bytes(count) bytes).
void add_error_feedback(const Codec& c, float* data, float* residual, size_t count, void* scratch);

}  // namespace braid::comm
