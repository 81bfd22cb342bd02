#pragma once
// One rank's part of GptModel under tensor and pipeline parallelism: the
// blocks of its pipeline stage, each with Megatron-split weights.
//
//   attention  qkv is column-parallel by heads (rank r holds the q, k and v
//              rows of heads [r·H/tp, (r+1)·H/tp)), the output projection is
//              row-parallel (its matching input columns); the proj bias is
//              replicated and added after the all-reduce.
//   MLP        fc is column-parallel on the hidden width, proj row-parallel.
//   LayerNorms replicated on the tp ranks.
//   embedding  wte and wpe replicated on the tp ranks (not vocab-parallel):
//              at braid's vocabularies (256 bytes to a few 10k tokens) the
//              output layer is a small share of the work. With pp > 1 the
//              first stage holds wte and wpe, the last stage holds lnf and a
//              copy of wte for the tied output layer; the trainer sums the
//              two copies' gradients so they stay equal (as Megatron does).
//
// Cost model per layer and micro-batch: 1/tp of the block's matmul FLOPs and
// weights, plus two all-reduces of B·T·C activations forward (g after the
// attention and the MLP) and two backward (f before them).
//
// Options (set before the first forward):
//   recompute          none / selective / full per block (recompute.hpp); the
//                      recomputed forward repeats the block's tp collectives
//                      inside backward, in the same order on every tp rank.
//   sequence parallel  activations outside the split linears are cut on the
//                      sequence dimension (tensor_parallel.hpp): the stage's
//                      input and output are [B, T/tp, C]. The LayerNorms and
//                      row-parallel biases then see only their rank's
//                      positions, so their gradients are partial sums that
//                      sync_sequence_parallel_grads() adds up over tp.
//
// The weights are those of GptModel(config, seed): the full model is built
// from the seed and each rank copies its slices (copy_from_full), so every
// (tp, pp) layout starts from the same numbers as one process.
#include "train/pch.hpp"

#include <functional>
#include <vector>

#include "comm/communicator.hpp"
#include "train/flat_parameters.hpp"
#include "train/gpt_model.hpp"
#include "train/recompute.hpp"
#include "train/train_config.hpp"

namespace braid::train {

// Where a local parameter's elements live in the full model: along `dim`,
// local [local_begin, local_begin + length) is full [full_begin, ...).
struct ShardPiece {
  int dim = 0;
  int64_t full_begin = 0;
  int64_t local_begin = 0;
  int64_t length = 0;
};

struct ShardedSlot {
  int full_slot = 0;                // index in GptModel's layout
  std::vector<ShardPiece> pieces;   // empty: the whole parameter (replicated over tp)
  bool counted_in_norm = true;      // false for copies another rank already counts
};

// chunks > 1 (the interleaved schedule): the stage holds `chunks` runs of
// layers/(pp·chunks) blocks; chunk v is virtual stage v·pp + pp_rank, so
// chunk v of stage s holds blocks [(v·pp + s)·n, (v·pp + s + 1)·n).
struct StagePlacement {
  int tp_rank = 0, tp = 1, pp_rank = 0, pp = 1, chunks = 1;
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp - 1; }
};

class TensorParallelGpt {
 public:
  // tp_comm: the tensor-parallel group (null when tp = 1). Throws ConfigError
  // if heads, the MLP width or the layers do not divide.
  TensorParallelGpt(const ModelConfig& config, uint64_t seed, const StagePlacement& place,
                    comm::Communicator* tp_comm, double timeout_s, torch::Dtype dtype = torch::kFloat32);
  TensorParallelGpt(const TensorParallelGpt&) = delete;
  TensorParallelGpt& operator=(const TensorParallelGpt&) = delete;

  void set_recompute(RecomputeMode mode) { recompute_ = mode; }
  // Runs every block through `runner` (ZeRO-2/3: train/zero.hpp) instead of
  // the recomputation mode alone; null restores the plain way.
  void set_block_runner(BlockRunner* runner) { block_runner_ = runner; }
  // Throws ConfigError if tp does not divide the context.
  void set_sequence_parallel(bool on);
  bool sequence_parallel() const { return sequence_parallel_; }
  // Positions per rank of a stage's activations for sequence length T.
  int64_t local_sequence(int64_t T) const { return sequence_parallel_ ? T / place_.tp : T; }

  // Runs model chunk `chunk` of this stage. The first chunk of the first
  // stage takes idx [B, T] token ids, every other chunk activations
  // [B, local_sequence(T), C]. Returns such activations, or logits [B, T, V]
  // from the last chunk of the last stage.
  torch::Tensor forward(const torch::Tensor& input, int chunk = 0);
  // Sequence parallelism: sums the partial gradients of the replicated
  // parameters inside the sequence-split region over the tp group (one
  // all-reduce; every tp rank must call it after backward). No-op otherwise.
  // `parts` (ZeRO-2/3, which keep only a shard of each gradient) gives the
  // pieces of a slot's gradient this rank holds; the tp ranks of a stage
  // share one local layout, so their pieces match. Default: the whole grad.
  void sync_sequence_parallel_grads(const std::function<std::vector<torch::Tensor>(int slot)>& parts = {});
  // The slots a chunk uses outside its blocks: embeddings (first chunk of the
  // first stage), final norm and tied output layer (last chunk of the last).
  std::vector<int> outer_slots(int chunk) const;
  // Whether slot's gradient counts in this rank's share of the global norm.
  bool counted_in_norm(int slot) const { return sharding_.at(static_cast<size_t>(slot)).counted_in_norm; }

  // This rank's elements of the full model's flat parameter buffer (layout of
  // GptModel(config)): copy_from_full reads them, copy_to_full writes them
  // and leaves all other elements of `full` as they are.
  void copy_from_full(const torch::Tensor& full_flat);
  void copy_to_full(torch::Tensor& full_flat) const;
  // Adds the elements of `local_flat` (the local parameters, from
  // PipelineTrainer::local_parameters(): ZeRO-3 releases the flat buffer)
  // this rank accounts for (as grad_sum_of_squares_share: split parameters
  // on every tp rank, replicated ones on tp rank 0, the tied embedding on the
  // first stage) into `full_flat`; summed over one model replica's ranks it
  // is the whole parameter vector.
  void add_own_to_full(const torch::Tensor& local_flat, torch::Tensor& full_flat) const;
  // Like copy_from_full / copy_to_full, for any buffer in parameter layout
  // (gradients, Adam moments).
  void scatter_from_full(const torch::Tensor& full_flat, torch::Tensor& local_flat) const;
  void gather_to_full(const torch::Tensor& local_flat, torch::Tensor& full_flat) const;

  // Σ g² over the gradients this rank accounts for in the global norm: split
  // parameters on every tp rank, replicated ones on tp rank 0 only, the tied
  // embedding on the first stage only. Summed over a model replica's ranks it
  // is the full model's Σ g².
  // With a range, only the local flat elements [begin, end) count (ZeRO-1
  // over dp: each dp rank adds its own shard).
  double grad_sum_of_squares_share(int64_t begin = 0, int64_t end = -1) const;

  // Slot of the wte copy on the last stage (pp > 1), or -1.
  int tied_embedding_copy() const { return wte_copy_ ? wte_ : -1; }
  // Slot of wte on the first stage, or -1.
  int embedding() const { return place_.first_stage() ? wte_ : -1; }

  FlatParameters& params() { return params_; }
  const FlatParameters& params() const { return params_; }
  const std::vector<ShardedSlot>& sharding() const { return sharding_; }
  const ModelConfig& config() const { return config_; }
  const StagePlacement& placement() const { return place_; }
  int64_t full_numel() const { return full_numel_; }
  // The full model's parameters (GptModel's layout), by full slot index: what
  // checkpoints are written in (train/mesh_state.hpp).
  int full_slot_count() const { return static_cast<int>(full_names_.size()); }
  const std::string& full_name(int full_slot) const { return full_names_.at(static_cast<size_t>(full_slot)); }
  const std::vector<int64_t>& full_shape(int full_slot) const { return full_shapes_.at(static_cast<size_t>(full_slot)); }
  int64_t full_offset(int full_slot) const { return full_offsets_.at(static_cast<size_t>(full_slot)); }
  int64_t layer_count() const { return static_cast<int64_t>(blocks_.size()); }  // all chunks

 private:
  struct Block {
    int ln1_w, ln1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b;
    int ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
  };
  const torch::Tensor& p(int slot) const { return params_.slots()[static_cast<size_t>(slot)].param; }
  int add(const GptModel& full, const std::string& name, std::vector<ShardPiece> pieces, bool counted = true);
  torch::Tensor local_view(const torch::Tensor& local_flat, int slot) const;
  torch::Tensor full_view(const torch::Tensor& full_flat, int full_slot) const;

  ModelConfig config_;
  StagePlacement place_;
  comm::Communicator* tp_;
  double timeout_s_;
  FlatParameters params_;
  std::vector<ShardedSlot> sharding_;
  std::vector<std::string> full_names_;
  std::vector<std::vector<int64_t>> full_shapes_;
  std::vector<int64_t> full_offsets_;
  int64_t full_numel_ = 0;
  int64_t blocks_per_chunk_ = 0;
  int wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1;
  bool wte_copy_ = false;
  std::vector<Block> blocks_;
  std::vector<int64_t> block_layers_;  // the model's layer index of each of blocks_
  BlockRunner* block_runner_ = nullptr;
  RecomputeMode recompute_ = RecomputeMode::None;
  bool sequence_parallel_ = false;
};

}  // namespace braid::train
