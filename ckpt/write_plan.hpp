#pragma once
// Which rank writes which bytes. Every rank declares the byte ranges of each
// buffer it holds (a replica: the whole buffer; a ZeRO shard: its slice;
// hybrid sharding: a slice held by a few ranks). The plan cuts every buffer at
// all declared range boundaries; each piece held by k ranks is split evenly
// among those k ranks, so no byte is written twice and replicated state is
// written by all its holders in parallel.
//
// Cost model: O(R log R) per buffer for R declared ranges; pure function of
// its inputs, so every rank computes the same plan without communicating.
#include <vector>

#include "ckpt/state_layout.hpp"

namespace braid::ckpt {

// Cut points inside a split piece are rounded down to multiples of this many
// bytes (from the buffer start): a multiple of every element size and of the
// page size, so shard ranges stay element- and page-aligned.
inline constexpr uint64_t kWriteSplitAlign = 4096;

// held[r] = ranges rank r holds. Returns, for each rank, the ranges it writes,
// in layout order (buffer order, then increasing offset). Throws ConfigError if
// a byte of some buffer is held by no rank, or a range is outside its buffer
// or names an unknown buffer.
std::vector<std::vector<BufferRange>> plan_writes(const StateLayout& layout,
                                                  const std::vector<std::vector<BufferRange>>& held,
                                                  uint64_t align = kWriteSplitAlign);

}  // namespace braid::ckpt
