#pragma once
// ZeRO stages 1-3 (FSDP) over the flat buffers. The flat parameter buffer is
// cut into units — the embeddings, each transformer block, the final norm —
// and every unit into N equal blocks (the last padded); rank r owns block r of
// every unit. A rank's shard is the concatenation of its blocks, so a shard
// is a handful of ranges of the flat buffers and the collectives are plain
// equal-count reduce-scatters and all-gathers of one unit.
//
//   stage 1  Adam's moments are sharded: gradients are all-reduced (bucketed,
//            overlapped: DataParallel), each rank updates its own ranges of
//            the flat parameters, then every unit is all-gathered.
//   stage 2  + gradients: the flat gradient buffer is released; a unit's
//            gradient buffer lives from just before its backward until its
//            reduce-scatter (launched from the gradient hooks, overlapping
//            the rest of backward), and only the own block is kept and
//            accumulated over micro-steps.
//   stage 3  + parameters: the flat parameter buffer is released as well; a
//            block's parameters are all-gathered just before its forward and
//            again before its backward and freed after each, with the next
//            block's gather in flight while the current one computes
//            (forward: block l+1, backward: block l-1). The embeddings and
//            final norm are gathered for the whole forward/backward.
//
// Cost model per optimizer step, P parameters, N ranks, a micro-steps:
//   stage 1: all-reduce 2(N-1)/N·4P + all-gather (N-1)/N·4P bytes sent
//   stage 2: a reduce-scatters (N-1)/N·4P each + all-gather (N-1)/N·4P
//   stage 3: a·(2 all-gathers + 1 reduce-scatter) of (N-1)/N·4P each
// Memory per rank: see memory_accounting.hpp.
//
// Freeing works as in PyTorch's FSDP: every parameter (and gradient) of a
// unit is a view of one unit buffer whose *storage* is resized to 0 bytes
// when released and reallocated before use. Views, and the tensors autograd
// saved for backward, keep pointing at the same storage, so a release really
// returns the memory and a re-gather is seen everywhere.
#include "train/pch.hpp"

#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "comm/communicator.hpp"
#include "train/flat_adamw.hpp"
#include "train/gpt_model.hpp"
#include "train/memory_accounting.hpp"
#include "train/recompute.hpp"
#include "train/train_config.hpp"

namespace braid::train {

// A contiguous range of the flat buffers sharded as one piece.
struct ZeroUnit {
  int64_t begin = 0;         // in the flat buffers
  int64_t end = 0;
  int64_t block = 0;         // elements per rank: ceil((end - begin) / N)
  int64_t shard_offset = 0;  // where this unit's block lies in each rank's shard
  int layer = -1;            // transformer block, or -1 for the embeddings / final norm
  std::vector<int> slots;
  int64_t numel() const { return end - begin; }
};

// This rank's elements of one parameter: flat [flat_begin, flat_end) is
// shard [shard_begin, shard_begin + flat_end - flat_begin).
struct ZeroPiece {
  int64_t flat_begin = 0;
  int64_t flat_end = 0;
  int64_t shard_begin = 0;
  bool decay = false;
  int slot = -1;  // the parameter (FlatParameters slot)
};

// The sharding itself: depends only on the parameter layout and N, so every
// rank computes the same one (and a checkpoint loader can recompute it).
// Slots listed in `alone` form a unit by themselves (the mesh engine's tied
// embedding: its two copies on the first and last pipeline stage then shard
// alike, so their gradients can be added shard by shard).
class ZeroLayout {
 public:
  ZeroLayout(const FlatParameters& params, int world, int rank, const std::vector<int>& alone = {});
  const std::vector<ZeroUnit>& units() const { return units_; }
  const std::vector<ZeroPiece>& pieces() const { return pieces_; }  // this rank's, in flat order
  int64_t shard_numel() const { return shard_numel_; }
  // Flat range [first, second) of unit u that rank `r` owns (may be empty).
  std::pair<int64_t, int64_t> owned(const ZeroUnit& u, int r) const;
  int unit_of_slot(int slot) const { return unit_of_slot_[static_cast<size_t>(slot)]; }
  int unit_of_layer(int64_t layer) const { return unit_of_layer_.at(static_cast<size_t>(layer)); }
  // The unit of block `layer`, or -1 if these parameters do not hold it (a
  // pipeline stage holds some of the blocks).
  int find_unit_of_layer(int64_t layer) const {
    return layer >= 0 && static_cast<size_t>(layer) < unit_of_layer_.size() ? unit_of_layer_[static_cast<size_t>(layer)]
                                                                             : -1;
  }
  int world() const { return world_; }
  int rank() const { return rank_; }

 private:
  int world_, rank_;
  std::vector<ZeroUnit> units_;
  std::vector<ZeroPiece> pieces_;
  std::vector<int> unit_of_slot_;
  std::vector<int> unit_of_layer_;
  int64_t shard_numel_ = 0;
};

// Bytes this rank holds, by kind (current and peak since construction or
// the last reset_peaks()).
struct ZeroMemory {
  ByteTally params, grads, optimizer;
};

class ZeroOptimizer : public BlockRunner {
 public:
  // Takes over the model's optimizer state (and, for stages 2 and 3, its
  // gradients / parameters): installs itself as the model's block runner.
  // comm may be null (one rank). Every rank must start from the same
  // parameters (same seed), as data parallelism does.
  ZeroOptimizer(GptModel& model, comm::Communicator* comm, int stage, RecomputeMode recompute,
                const AdamWHyper& hyper, const ParallelConfig& config);
  // Any model over flat buffers that runs its blocks through a BlockRunner
  // (the mesh engine's TensorParallelGpt): `install` sets or clears the
  // model's runner; `alone` as in ZeroLayout. Such a model drives the units
  // outside the blocks itself (prepare_units), since a pipeline stage runs
  // several micro-batches' forwards and backwards interleaved.
  ZeroOptimizer(FlatParameters& params, std::function<void(BlockRunner*)> install, comm::Communicator* comm,
                int stage, RecomputeMode recompute, const AdamWHyper& hyper, const ParallelConfig& config,
                const std::vector<int>& alone = {});
  ~ZeroOptimizer() override;
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  // The step, as Trainer::train_step drives it:
  void begin_step();         // clears the accumulated shard gradients
  void finish_micro_step();  // after each backward: completes the reduce-scatters (stages 2, 3)
  // Σ g² over this rank's own part of the averaged gradient (the sum over
  // ranks is the squared global norm).
  // `counts`, if given, picks the slots that count (the mesh engine counts a
  // replicated parameter on one tp rank only).
  double grad_sum_of_squares(const std::function<bool(int slot)>& counts = {}) const;
  // AdamW on the own shard at Adam step `adam_step` (>= 1); stages 1 and 2
  // then all-gather the parameters into the flat buffer.
  void apply(int64_t adam_step, double lr, double grad_scale);

  // Before a forward or backward that uses these parameters outside the
  // blocks (embeddings, final norm): gathers their units (stage 3) and, for
  // a backward, arms their gradient buffers (stages 2, 3). Idempotent.
  void prepare_units(const std::vector<int>& slots, bool backward);
  // Stages 2 and 3: this rank's part of the averaged gradient of `slot`
  // (after finish_micro_step), as spans of the shard: what a caller adds up
  // across other groups (the tied embedding's copies, sequence-parallel
  // partial sums).
  std::vector<std::span<float>> own_gradient_parts(int slot);

  // BlockRunner: gathers (stage 3), arms gradient buffers (stages 2, 3),
  // applies the recomputation mode.
  void begin_forward() override;
  torch::Tensor run_block(int64_t layer, const torch::Tensor& x, const BlockParts& parts) override;

  int stage() const { return stage_; }
  const ZeroLayout& layout() const { return layout_; }
  FlatAdamW& optimizer() { return adam_; }
  // Stage 3: the own parameter blocks (shard layout); empty otherwise.
  std::span<float> shard_params() { return shard_params_; }
  // The whole parameter vector (stage 3: all-gathered; a collective every
  // rank must call). For tests and tools.
  torch::Tensor full_parameters();
  // Stage 3: gathers every unit and keeps them gathered until the next
  // apply(), so that one rank alone can run forward passes (text sampling
  // on the lead rank). A collective: every rank calls it.
  void gather_all();
  const ZeroMemory& memory() const { return memory_; }
  // Seconds the caller spent blocked on ZeRO's own collectives (gathers,
  // reduce-scatters, the all-gather after the update) since the last call:
  // exposed communication for the step metrics.
  double take_comm_wait_s() {
    const double s = comm_wait_s_;
    comm_wait_s_ = 0;
    return s;
  }
  void reset_peaks();

  // Autograd plumbing (public for the functions in zero.cpp).
  void before_block_backward(int unit);
  void on_gradient_ready(int slot);

 private:
  struct UnitState;
  void launch_gather(int unit);
  void wait_gather(int unit);
  void release_params(int unit);
  void arm_grads(int unit);
  void launch_reduce(int unit);
  void complete_reduces(bool wait_all);
  void gather_into_flat();
  float* flat_params();
  float* flat_grads();

  FlatParameters& params_;
  std::function<void(BlockRunner*)> install_;
  comm::Communicator* comm_;
  int stage_;
  RecomputeMode recompute_;
  comm::CollectiveOptions collective_;
  ZeroLayout layout_;
  FlatAdamW adam_;
  std::vector<float> shard_params_;  // stage 3
  std::vector<float> shard_grads_;   // stages 2, 3
  std::vector<std::unique_ptr<UnitState>> units_;
  std::vector<int> reduce_queue_;  // units with a reduce-scatter in flight, launch order
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  std::exception_ptr hook_error_;
  ZeroMemory memory_;
  bool pinned_ = false;  // gather_all() in effect
  double comm_wait_s_ = 0;
};

}  // namespace braid::train
