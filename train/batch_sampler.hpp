#pragma once
// Deterministic, rank-sharded choice of training windows.
//
// The job reads one global stream of samples: sample i is the window of
// context + 1 tokens starting at offset hash(seed, i) mod (n - context). A
// micro-step of the whole job takes the next batch_size * world samples and
// rank r takes its contiguous block [r * batch_size, (r + 1) * batch_size) of
// them. Hence N ranks with batch B read exactly the samples that one process
// with batch N * B reads, and the whole sampler state is one counter (the next
// global sample) plus the seed: saving and restoring it is trivial, even at a
// different world size. Cost: one hash per sample, no shuffle buffer.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace braid::train {

struct SamplerPosition {
  uint64_t seed = 0;
  uint64_t next_sample = 0;  // index in the global sample stream
  std::string to_json() const;
  // Throws CorruptData on malformed text.
  static SamplerPosition from_json(const std::string& text);
  bool operator==(const SamplerPosition&) const = default;
};

class BatchSampler {
 public:
  // num_tokens: size of the split sampled from; needs num_tokens > context.
  BatchSampler(size_t num_tokens, int64_t context, int64_t batch_per_rank, int rank, int world,
               uint64_t seed);

  // Start offsets of this rank's next micro-batch (batch_per_rank of them);
  // advances the position by one global micro-batch.
  std::vector<uint64_t> next_offsets();

  SamplerPosition position() const { return {seed_, next_sample_}; }
  // Continues from a saved position (its seed replaces this sampler's).
  void restore(const SamplerPosition& p) {
    seed_ = p.seed;
    next_sample_ = p.next_sample;
  }
  // Offset of global sample i (pure function of seed and i).
  uint64_t offset_of(uint64_t sample) const;

 private:
  size_t num_tokens_;
  int64_t context_;
  int64_t batch_;
  int rank_;
  int world_;
  uint64_t seed_;
  uint64_t next_sample_ = 0;
};

// The fixed validation set: `count` windows evenly spaced over the split, of
// which rank r evaluates those with index j % world == r. Same windows for
// any world size, so validation losses of different layouts agree.
std::vector<uint64_t> eval_offsets(size_t num_tokens, int64_t context, int64_t count, int rank,
                                   int world);

// Copies windows of context + 1 tokens starting at `offsets` into `out`
// (offsets.size() rows of context + 1 int64 ids).
void gather_windows(std::span<const uint16_t> tokens, std::span<const uint64_t> offsets,
                    int64_t context, int64_t* out);

}  // namespace braid::train
