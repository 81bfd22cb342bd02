#pragma once
// Compressed ring all-reduce (codec_ring.cpp): f32 payloads that travel
// encoded by a Codec (comm/codec.hpp) and end byte-identical on every rank.
#include <cstddef>

#include "comm/algo/collective.hpp"
#include "comm/codec.hpp"

namespace braid::comm {

// out may equal in. avg: divide the sum by the group size before the final
// encode. Uses Scratch slots kAccum, kAlgo and kAlgo2.
void codec_ring_all_reduce(const Collective& c, const Codec& codec, const float* in, float* out, size_t count,
                           bool avg);

}  // namespace braid::comm
