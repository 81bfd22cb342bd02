#pragma once
// Activation recomputation (gradient checkpointing) per transformer block, as
// a custom autograd function: LibTorch 1.13 has no C++ checkpoint utility.
//
//   none       every block keeps what its backward needs (for attention the
//              [B, H, T, T] probabilities: the T² term dominates at long context)
//   selective  the attention branch (ln1, QKV, attention, projection) keeps
//              only its input and is recomputed in backward; the MLP keeps
//              its activations (Megatron's "selective": the cheap-to-recompute,
//              expensive-to-store part)
//   full       the whole block keeps only its input [B, T, C]
//
// Cost model: selective re-runs the attention branch's forward (~1/3 of a
// block's forward FLOPs at T ≈ C, more at long context); full re-runs every
// block's forward once more, i.e. a training step costs ~4 forward passes
// instead of 3 (+33%). Memory per block: full keeps B·T·C floats instead of
// ~(17·C + 2·H·T)·B·T (measured with `braid bench memory`).
//
// Exactness: the recomputed forward runs the same kernels on the same inputs
// and parameters (no dropout, deterministic kernels), so losses and gradients
// are identical to no recomputation.
#include "train/pch.hpp"

#include <functional>
#include <string>

#include "train/gpt_model.hpp"

namespace braid::train {

enum class RecomputeMode { None, Selective, Full };

// "none" | "selective" | "full"; anything else is a ConfigError.
RecomputeMode parse_recompute_mode(const std::string& name);
const char* recompute_mode_name(RecomputeMode mode);

// fn(x), keeping only x for backward: backward runs fn again with gradients
// on and back-propagates through that second graph (parameter gradients
// accumulate into their .grad as usual). Without grad mode it is just fn(x).
torch::Tensor recompute_in_backward(const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                                    const torch::Tensor& x);

// One block under a recomputation mode.
torch::Tensor run_block_recomputing(RecomputeMode mode, const BlockParts& parts, const torch::Tensor& x);

// A BlockRunner that applies a mode to every block (install with
// GptModel::set_block_runner; ZeRO stage 2/3 runs blocks itself and applies
// the mode inside its own runner).
class RecomputeRunner : public BlockRunner {
 public:
  explicit RecomputeRunner(RecomputeMode mode) : mode_(mode) {}
  torch::Tensor run_block(int64_t, const torch::Tensor& x, const BlockParts& parts) override {
    return run_block_recomputing(mode_, parts, x);
  }
  RecomputeMode mode() const { return mode_; }

 private:
  RecomputeMode mode_;
};

}  // namespace braid::train
