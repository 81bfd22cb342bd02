#include "train/batch_sampler.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace braid::train {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Maps a uniform 64-bit value onto [0, n) without a division (Lemire).
uint64_t bounded(uint64_t r, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(r) * n) >> 64);
}

}  // namespace

std::string SamplerPosition::to_json() const {
  return nlohmann::json{{"seed", seed}, {"next_sample", next_sample}}.dump();
}

SamplerPosition SamplerPosition::from_json(const std::string& text) {
  try {
    auto j = nlohmann::json::parse(text);
    return {j.at("seed").get<uint64_t>(), j.at("next_sample").get<uint64_t>()};
  } catch (const nlohmann::json::exception& e) {
    throw CorruptData(fmt::format("bad sampler position '{}': {}", text, e.what()),
                      "the saved state is damaged; restart from an earlier checkpoint");
  }
}

BatchSampler::BatchSampler(size_t num_tokens, int64_t context, int64_t batch_per_rank, int rank,
                           int world, uint64_t seed)
    : num_tokens_(num_tokens),
      context_(context),
      batch_(batch_per_rank),
      rank_(rank),
      world_(world),
      seed_(seed) {
  if (num_tokens_ <= static_cast<size_t>(context_))
    throw ConfigError(fmt::format("{} tokens cannot hold one window of {} + 1", num_tokens_, context_),
                      "use more data or a smaller model.context");
}

uint64_t BatchSampler::offset_of(uint64_t sample) const {
  // Two rounds so that neighbouring seeds give unrelated streams.
  uint64_t r = splitmix64(splitmix64(seed_) ^ sample);
  return bounded(r, num_tokens_ - static_cast<uint64_t>(context_));
}

std::vector<uint64_t> BatchSampler::next_offsets() {
  std::vector<uint64_t> out(static_cast<size_t>(batch_));
  uint64_t first = next_sample_ + static_cast<uint64_t>(rank_) * static_cast<uint64_t>(batch_);
  for (int64_t b = 0; b < batch_; ++b) out[static_cast<size_t>(b)] = offset_of(first + static_cast<uint64_t>(b));
  next_sample_ += static_cast<uint64_t>(batch_) * static_cast<uint64_t>(world_);
  return out;
}

std::vector<uint64_t> eval_offsets(size_t num_tokens, int64_t context, int64_t count, int rank,
                                   int world) {
  std::vector<uint64_t> out;
  if (num_tokens <= static_cast<size_t>(context) || count <= 0) return out;
  uint64_t last = num_tokens - static_cast<uint64_t>(context) - 1;  // largest valid start
  for (int64_t j = rank; j < count; j += world) {
    uint64_t off = count == 1 ? 0
                              : static_cast<uint64_t>(static_cast<unsigned __int128>(last) *
                                                      static_cast<uint64_t>(j) /
                                                      static_cast<uint64_t>(count - 1));
    out.push_back(off);
  }
  return out;
}

void gather_windows(std::span<const uint16_t> tokens, std::span<const uint64_t> offsets,
                    int64_t context, int64_t* out) {
  const size_t w = static_cast<size_t>(context) + 1;
  for (size_t b = 0; b < offsets.size(); ++b) {
    if (offsets[b] + w > tokens.size())
      throw Error(fmt::format("window at {} runs past the data ({} tokens)", offsets[b], tokens.size()));
    const uint16_t* src = tokens.data() + offsets[b];
    for (size_t t = 0; t < w; ++t) out[b * w + t] = src[t];
  }
}

}  // namespace braid::train
