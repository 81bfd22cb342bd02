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
#include "train/batch_sampler.hpp"

namespace braid::train {

class Trainer;

struct StateBlobs {
  std::map<std::string, std::string> global;  // identical on every rank
  std::map<std::string, std::string> rank;    // this rank's own
};

// One rank's training state as checkpoints see it, whatever the engine:
// TrainState (Trainer: data parallel, ZeRO) and MeshState (PipelineTrainer:
// tensor and pipeline parallelism, mesh_state.hpp). Both use the same layout
// (the full model's params / adam_m / adam_v) and the same blobs, which is
// why a checkpoint of one engine loads into the other.
class CheckpointState {
 public:
  virtual ~CheckpointState() = default;
  virtual const ckpt::StateLayout& layout() const = 0;
  // Byte ranges of the full layout this rank holds, and where they are.
  virtual std::vector<ckpt::HeldBuffer> held() const = 0;
  // Where every byte this rank needs goes on a load.
  virtual std::vector<ckpt::ReadTarget> read_targets() const = 0;
  // Called once after every read target was filled (engines that read some
  // ranges into staging memory put them in place here).
  virtual void after_load() {}
  virtual StateBlobs blobs() const = 0;
  virtual void restore(const StateBlobs& blobs) = 0;
};

// A tensor of the full model's flat parameter buffer (elements).
struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
};
// params, adam_m and adam_v (f32, `numel` elements each) and their tensors.
ckpt::StateLayout training_state_layout(int64_t numel, const std::vector<ParamSpec>& params);

// The blobs every engine saves: step, AdamW's step, sampler position.
struct ProgressBlobs {
  int64_t step = 0;
  int64_t adam_step = 0;
  SamplerPosition sampler;
};
StateBlobs progress_blobs(const ProgressBlobs& p);
// Throws CorruptData naming the blob when one is missing or malformed.
ProgressBlobs parse_progress_blobs(const StateBlobs& b);

class TrainState : public CheckpointState {
 public:
  explicit TrainState(Trainer& trainer);

  const ckpt::StateLayout& layout() const override { return layout_; }
  // What this rank holds in memory (data parallel: every buffer whole;
  // ZeRO: its own ranges of adam_m / adam_v, and of params too — stages 1
  // and 2 hold all parameters but each rank offers only its own ranges, so
  // each writes its shard).
  std::vector<ckpt::HeldBuffer> held() const override;
  // Where to put every byte this rank needs when loading or healing (ZeRO
  // stages 1 and 2: all parameters, own moments; stage 3: own ranges only).
  // The layout is the same under every mode, so a checkpoint written under
  // one mode and world size loads under any other.
  std::vector<ckpt::ReadTarget> read_targets() const override;
  // Step, optimizer step, sampler position.
  StateBlobs blobs() const override;
  // Applies blobs from a checkpoint or a peer; throws CorruptData naming the
  // blob when one is missing or malformed.
  void restore(const StateBlobs& blobs) override;

  // One more f32 buffer of `numel` elements that this rank holds whole and
  // that travels with the state (as one tensor of the same name), e.g.
  // DiLoCo's outer state in a heal. `data` must outlive this object.
  void add_buffer(const std::string& name, float* data, int64_t numel);

 private:
  struct Extra {
    std::string name;
    float* data = nullptr;
    uint64_t bytes = 0;
  };
  Trainer& trainer_;
  ckpt::StateLayout layout_;
  std::vector<Extra> extras_;
};

}  // namespace braid::train
