#include "health/fingerprint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/checksum.hpp"
#include "core/error.hpp"

namespace braid::health {

uint64_t fingerprint_bytes(const void* data, size_t bytes, uint64_t seed) { return xxh3_64(data, bytes, seed); }

std::pair<int64_t, int64_t> rotating_slice(int64_t n, int64_t check, double fraction) {
  if (!(fraction > 0) || fraction > 1)
    throw ConfigError(fmt::format("fingerprint fraction {} is outside (0, 1]", fraction),
                      "use 1 for all of the state per check, or e.g. 0.25 for a quarter");
  if (n <= 0) return {0, 0};
  const int64_t slices = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(1.0 / fraction - 1e-9)));
  const int64_t s = ((check % slices) + slices) % slices;
  return {n * s / slices, n * (s + 1) / slices};
}

Vote vote_fingerprints(std::span<const uint64_t> values, int ranks) {
  Vote v;
  if (ranks <= 0 || values.size() % static_cast<size_t>(ranks) != 0)
    throw Error(fmt::format("fingerprint vote over {} values from {} ranks", values.size(), ranks));
  const size_t k = values.size() / static_cast<size_t>(ranks);
  auto row = [&](int r) { return values.subspan(static_cast<size_t>(r) * k, k); };
  auto same = [&](int a, int b) { return std::equal(row(a).begin(), row(a).end(), row(b).begin()); };
  // Classes of identical vectors; the largest one wins if it is a strict majority.
  std::vector<int> cls(static_cast<size_t>(ranks), -1);
  std::vector<int> rep, count;
  for (int r = 0; r < ranks; ++r) {
    for (size_t c = 0; c < rep.size(); ++c)
      if (same(rep[c], r)) {
        cls[static_cast<size_t>(r)] = static_cast<int>(c);
        ++count[c];
        break;
      }
    if (cls[static_cast<size_t>(r)] < 0) {
      cls[static_cast<size_t>(r)] = static_cast<int>(rep.size());
      rep.push_back(r);
      count.push_back(1);
    }
  }
  if (rep.size() == 1) return v;
  v.agree = false;
  const size_t best = static_cast<size_t>(std::max_element(count.begin(), count.end()) - count.begin());
  v.decided = 2 * count[best] > ranks;
  const int reference = v.decided ? rep[best] : 0;
  v.healthy_rank = reference;
  for (int r = 0; r < ranks; ++r)
    if (!v.decided || cls[static_cast<size_t>(r)] != static_cast<int>(best)) v.minority.push_back(r);
  for (size_t i = 0; i < k; ++i)
    for (int r = 0; r < ranks; ++r)
      if (row(r)[i] != row(reference)[i]) {
        v.differing.push_back(i);
        break;
      }
  return v;
}

void flip_bit(void* data, size_t bytes, uint64_t bit) {
  if (bytes == 0) return;
  bit %= static_cast<uint64_t>(bytes) * 8;
  static_cast<unsigned char*>(data)[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
}

}  // namespace braid::health
