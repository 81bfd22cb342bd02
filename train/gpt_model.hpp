#pragma once
// A GPT decoder (nanoGPT's architecture): token + position embeddings, L
// pre-LayerNorm blocks of causal self-attention and a GELU MLP, a final
// LayerNorm, and an output layer tied to the token embedding.
//
// Cost model, per token of a sequence of T tokens, width C, L layers, MLP
// ratio 4: forward ≈ 2·(12·L·C² + V·C) FLOPs in matmuls plus 4·L·C·T in
// attention scores and mixing; backward about twice that (PaLM's 6N + 12·L·C·T
// per token for a training step). Memory: activations O(L·B·T·(C + H·T)).
//
// The parameters live in FlatParameters (one flat buffer, views per tensor),
// created in forward order; the model never owns a tensor outside it.
#include "train/pch.hpp"

#include <functional>
#include <vector>

#include "train/flat_parameters.hpp"
#include "train/train_config.hpp"

namespace braid::train {

// The two residual branches of one block, as functions of their input:
// block(x) = h + mlp(h) with h = x + attention(x). A BlockRunner receives them
// so that it can run a block differently without changing the model
// (activation recomputation: train/recompute.hpp; ZeRO: train/zero.hpp).
struct BlockParts {
  std::function<torch::Tensor(const torch::Tensor&)> attention;  // x -> attn(ln1(x))
  std::function<torch::Tensor(const torch::Tensor&)> mlp;        // h -> mlp(ln2(h))
  torch::Tensor forward(const torch::Tensor& x) const {
    auto h = x + attention(x);
    return h + mlp(h);
  }
};

class BlockRunner {
 public:
  virtual ~BlockRunner() = default;
  // Called at the start of every forward pass (logits()).
  virtual void begin_forward() {}
  // Runs block `layer` on x; the plain way is parts.forward(x).
  virtual torch::Tensor run_block(int64_t layer, const torch::Tensor& x, const BlockParts& parts) = 0;
};

class GptModel {
 public:
  // Builds the layout and initialises every parameter from `seed` (the same
  // seed gives bit-identical weights). dtype float64 is for gradient checks.
  GptModel(const ModelConfig& config, uint64_t seed, torch::Dtype dtype = torch::kFloat32);
  GptModel(const GptModel&) = delete;
  GptModel& operator=(const GptModel&) = delete;

  // Re-initialises all parameters deterministically (normal(0, init_std) for
  // matrices and embeddings, scaled by 1/sqrt(2L) for the residual
  // projections, zero biases, unit LayerNorm gains).
  void initialize(uint64_t seed);

  // idx: [B, T] int64 token ids with T <= context. Returns logits [B, T, V].
  torch::Tensor logits(const torch::Tensor& idx);
  // Mean cross-entropy (nats per token) of predicting `targets` ([B, T]).
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets);

  // Autoregressive sampling from `prompt` (no gradients): temperature scaling,
  // optional top-k, multinomial draw from `gen`. Returns the new tokens only.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, int64_t new_tokens,
                                double temperature, int64_t top_k, torch::Generator& gen);

  // Stock LibTorch ops instead of the fused ones (attention, GELU), for tests.
  void use_reference_ops(bool yes) { use_reference_ops_ = yes; }
  // Runs every block through `runner` (null: the plain forward). Not owned.
  void set_block_runner(BlockRunner* runner) { block_runner_ = runner; }

  FlatParameters& params() { return params_; }
  const FlatParameters& params() const { return params_; }
  const ModelConfig& config() const { return config_; }
  int64_t num_parameters() const { return params_.numel(); }
  // Parameters counted by the FLOP formula: all but the position embedding
  // (the token embedding is also the output layer, so it does matmul work).
  int64_t num_flop_parameters() const;
  // Training FLOPs per token by the PaLM formula: 6·N + 12·L·H·Q·T, with N
  // the parameters above, L layers, H heads, Q head size, T context.
  double flops_per_token() const;

 private:
  struct Block {
    int ln1_w, ln1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b;
    int ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
  };
  const torch::Tensor& p(int slot) const { return params_.slots()[static_cast<size_t>(slot)].param; }
  torch::Tensor attention(const Block& b, const torch::Tensor& x);

  ModelConfig config_;
  FlatParameters params_;
  int wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1;
  std::vector<Block> blocks_;
  bool use_reference_ops_ = false;
  BlockRunner* block_runner_ = nullptr;
};

}  // namespace braid::train
