#pragma once
// One rank's optimizer step on the dp x tp x pp mesh (parallel_mesh.hpp):
//
//   micro-batches   M batches of batch_size sequences, drawn alike by every
//                   rank of a model replica (all stages and tp ranks of one
//                   dp rank read the same samples; stage 0 uses the inputs,
//                   the last stage the targets)
//   schedule        the stage runs its GPipe, 1F1B or interleaved actions
//                   (pipeline_schedule.hpp): forwards receive activations
//                   from the previous stage and send to the next, backwards
//                   receive the output gradient and send the input gradient;
//                   the tensor-parallel all-reduces run inside the blocks
//                   (tensor_parallel.hpp)
//   tied embedding  first and last stage add their wte gradients (pp > 1)
//   data parallel   gradients averaged over the dp group: bucketed
//                   all-reduces launched from the gradient hooks of the
//                   stage's last backward (DataParallel), so they overlap it;
//                   the sums below are linear and run after them
//   loss + norm     one small all-reduce over the world: the loss from the
//                   last stages, Σ g² shares from every rank of dp rank 0
//   optimizer       clipped AdamW over the local flat buffers
//
// parallel.zero = 1 (Megatron's distributed optimizer): the AdamW moments of
// the stage's flat buffer are sharded over the dp group — dp rank d owns the
// local elements [d·⌈n/dp⌉, (d+1)·⌈n/dp⌉) — the gradients are
// reduce-scattered instead of all-reduced, each dp rank updates its own
// range, and the parameters are all-gathered. Bytes sent are the same as one
// all-reduce; the moments (8 bytes per parameter) shrink by dp.
//
// parallel.zero = 2 / 3: the stage's flat buffers are handed to a
// ZeroOptimizer over the dp group (train/zero.hpp), which runs the stage's
// blocks: every backward action reduce-scatters each block's gradient as it
// completes and keeps only the own shard (stage 2), and stage 3 also
// all-gathers a block's parameters before its forward and its backward and
// frees them after. The pipeline interleaves micro-batches, so this costs a
// reduce-scatter (and two all-gathers) per micro-batch and block instead of
// one per step — DeepSpeed refuses ZeRO-2/3 with pipelines for that reason;
// braid allows it, since it is what makes a stage fit. The trainer prepares
// the units outside the blocks (embeddings, final norm) for each action; the
// tied embedding is a unit by itself on the first and last stage, so its two
// copies shard alike and their gradients are added shard by shard, as are
// the sequence-parallel partial sums over tp (a stage's tp ranks share one
// local layout).
//
// The step is the same math as Trainer on one process with batch_size·dp
// sequences and M accumulation steps; tests check K steps to 1e-5.
//
// Cost model per step: each stage computes 1/(pp·tp) of the model's work;
// it sends 2·M·B·T·C activations and gradients to its neighbours; tp adds
// 4 all-reduces of B·T·C per layer and micro-batch; dp one all-reduce of the
// stage's gradients. The bubble — time a stage waits for its neighbours — is
// measured (pp_bubble_s) and is ideally (pp-1)/(M+pp-1) of the pipeline time.
#include "train/pch.hpp"

#include <memory>
#include <optional>
#include <vector>

#include "comm/communicator.hpp"
#include "train/batch_sampler.hpp"
#include "train/data_parallel.hpp"
#include "train/flat_adamw.hpp"
#include "train/parallel_mesh.hpp"
#include "train/pipeline_schedule.hpp"
#include "train/tensor_parallel_gpt.hpp"
#include "train/token_dataset.hpp"
#include "train/zero.hpp"
#include "train/trainer.hpp"

namespace braid::train {

// Pipeline time of the last step, in seconds.
struct PipelineTiming {
  double pipeline_s = 0;  // running the schedule (forwards and backwards of all micro-batches)
  double bubble_s = 0;    // of which waiting for a neighbour's activations or gradients
  double bubble_share() const { return pipeline_s > 0 ? bubble_s / pipeline_s : 0; }
};

class PipelineTrainer {
 public:
  // The mesh and the dataset must outlive the trainer. The mesh's shape must
  // match config.parallel (tp, pp).
  PipelineTrainer(const TrainConfig& config, const TokenDataset& data, ParallelMesh& mesh);

  StepMetrics train_step();
  // Mean validation loss over the fixed validation windows (same value on
  // every rank); nullopt without a validation split.
  std::optional<double> evaluate();

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  int64_t tokens_per_step() const;  // global
  int64_t microbatches() const { return microbatches_; }
  int chunks() const { return chunks_; }
  // (P-1)/(V·M+P-1): the share of the pipeline time a stage idles with equal
  // forward and backward times per chunk (0 without a pipeline).
  double ideal_bubble_share() const;
  const TrainConfig& config() const { return config_; }
  TensorParallelGpt& model() { return model_; }
  FlatAdamW& optimizer() { return zero_ ? zero_->optimizer() : optimizer_; }
  // ZeRO-2/3 (null otherwise): the optimizer that holds the stage's moments,
  // gradient shard and (stage 3) parameter shard.
  ZeroOptimizer* zero() { return zero_.get(); }
  // A copy of the stage's local flat parameters (ZeRO-3 all-gathers them
  // over dp: every dp rank must call it).
  torch::Tensor local_parameters();
  // The local flat elements [first, second) whose moments optimizer() holds
  // (moment i is element first + i): the whole stage, or with ZeRO-1 this dp
  // rank's shard. Not used under ZeRO-2/3 (zero()->layout().pieces()).
  std::pair<int64_t, int64_t> optimizer_range() const { return {shard_begin_, shard_end_}; }
  BatchSampler& sampler() { return sampler_; }
  ParallelMesh& mesh() { return mesh_; }
  const PipelineTiming& last_timing() const { return timing_; }
  void set_job_peak_flops(double flops_per_s) { job_peak_flops_ = flops_per_s; }
  // Raises a request for agreement in the next step's world all-reduce (as
  // Trainer::request; StepMetrics::requested() gives every rank the answer).
  void request(StepRequest r) { local_requests_ |= 1u << static_cast<uint32_t>(r); }

 private:
  torch::Tensor load_windows(std::span<const uint16_t> split, const std::vector<uint64_t>& offsets);
  torch::Tensor receive(const std::vector<int64_t>& shape, int peer, uint32_t tag);
  void send(const torch::Tensor& t, int peer, uint32_t tag);
  void wait_sends();
  void sum_tied_embedding_gradients();
  void sync_data_parallel_gradients();
  void apply_optimizer(double lr, double grad_scale);
  std::vector<torch::Tensor> zero_gradient_parts(int slot);

  TrainConfig config_;
  const TokenDataset& data_;
  ParallelMesh& mesh_;
  PipelineScheduleKind schedule_;
  int64_t microbatches_;
  int chunks_;  // model chunks per stage (interleaved schedule), else 1
  TensorParallelGpt model_;
  int64_t shard_block_ = 0;                  // ZeRO-1: ⌈n/dp⌉ (0 without)
  int64_t shard_begin_ = 0, shard_end_ = 0;  // optimizer_range()
  FlatAdamW optimizer_;
  std::unique_ptr<DataParallel> dp_sync_;  // dp > 1 without ZeRO
  std::unique_ptr<ZeroOptimizer> zero_;    // ZeRO-2/3
  BatchSampler sampler_;
  comm::CollectiveOptions p2p_;
  std::vector<std::pair<comm::Work, torch::Tensor>> pending_sends_;
  PipelineTiming timing_;
  int64_t step_ = 0;
  double job_peak_flops_ = 0;
  double flops_per_token_ = 0;
  uint32_t local_requests_ = 0;
};

}  // namespace braid::train
