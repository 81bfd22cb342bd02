#pragma once
// Fingerprints of replicated state and the vote that names a corrupted
// replica. Data-parallel replicas hold bit-identical parameters, optimizer
// state and averaged gradients by design (collectives give every rank the
// same bytes), so an xxh3 per tensor or per gradient bucket, exchanged with
// one tiny all-gather, tells whether a replica silently diverged.
//
// Cost model: xxh3 reads memory at ~10-20 GB/s per core, so fingerprinting
// F bytes costs F / (10 GB/s) per check; a rotating slice of fraction f
// costs f of that and covers all the state every ceil(1/f) checks. The
// exchange is one all-gather of 8 bytes per fingerprint per rank.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace braid::health {

uint64_t fingerprint_bytes(const void* data, size_t bytes, uint64_t seed = 0);

// The element range [begin, end) of an n-element state to fingerprint at
// check number `check` when each check covers `fraction` (0 < f <= 1) of it:
// consecutive checks walk the state in ceil(1/f) equal slices.
std::pair<int64_t, int64_t> rotating_slice(int64_t n, int64_t check, double fraction);

// The vote over the ranks' fingerprint vectors (one vector of K values per
// rank, all of the same K).
struct Vote {
  bool agree = true;               // every rank holds the same vector
  bool decided = true;             // a strict majority exists (or all agree)
  int healthy_rank = 0;            // lowest rank of the majority (source of repairs)
  std::vector<int> minority;       // ranks that differ from the majority (decided) or all ranks (undecided)
  std::vector<size_t> differing;   // indices k where some rank differs from the majority (or from rank 0)
};
// `values` is rank-major: values[r * k + i].
Vote vote_fingerprints(std::span<const uint64_t> values, int ranks);

// Flips bit `bit` (0 = lowest bit of byte 0) of a buffer: fault injection.
void flip_bit(void* data, size_t bytes, uint64_t bit);

}  // namespace braid::health
