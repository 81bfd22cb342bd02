#pragma once
// The training state of one rank, described as flat byte ranges: what a
// checkpoint saves and loads, what a healthy peer sends a joining worker, and
// what fingerprints cover. Buffers:
//   params   f32  the flat parameter buffer        tensors named after the parameters
//   adam_m   f32  AdamW's first moments            tensors "adam_m.<param>"
//   adam_v   f32  AdamW's second moments           tensors "adam_v.<param>"
// and small blobs shared by all ranks: the step, AdamW's step and the data
// sampler's position. The step itself uses no random numbers (no dropout; the
// sampler is a pure function of seed and position), so there is no per-rank
// RNG state to carry.
#include <map>
#include <string>
#include <vector>

#include "ckpt/checkpointer.hpp"
#include "ckpt/loader.hpp"
#include "ckpt/state_layout.hpp"

namespace braid::train {

class Trainer;

struct StateBlobs {
  std::map<std::string, std::string> global;  // identical on every rank
  std::map<std::string, std::string> rank;    // this rank's own
};

class TrainState {
 public:
  explicit TrainState(Trainer& trainer);

  const ckpt::StateLayout& layout() const { return layout_; }
  // What this rank holds in memory (data parallel: every buffer whole;
  // ZeRO: its own ranges of adam_m / adam_v, and of params too — stages 1
  // and 2 hold all parameters but each rank offers only its own ranges, so
  // each writes its shard).
  std::vector<ckpt::HeldBuffer> held() const;
  // Where to put every byte this rank needs when loading or healing (ZeRO
  // stages 1 and 2: all parameters, own moments; stage 3: own ranges only).
  // The layout is the same under every mode, so a checkpoint written under
  // one mode and world size loads under any other.
  std::vector<ckpt::ReadTarget> read_targets() const;
  // Step, optimizer step, sampler position.
  StateBlobs blobs() const;
  // Applies blobs from a checkpoint or a peer; throws CorruptData naming the
  // blob when one is missing or malformed.
  void restore(const StateBlobs& blobs);

 private:
  Trainer& trainer_;
  ckpt::StateLayout layout_;
};

}  // namespace braid::train
