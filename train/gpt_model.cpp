#include "train/gpt_model.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "train/fused_ops.hpp"

namespace braid::train {

GptModel::GptModel(const ModelConfig& config, uint64_t seed, torch::Dtype dtype)
    : config_(config), params_(dtype) {
  const int64_t C = config.width, V = config.vocab_size, T = config.context;
  const int64_t hidden = config.mlp_ratio * C;
  if (C % config.heads != 0)
    throw ConfigError(fmt::format("model.width = {} is not divisible by model.heads = {}", C, config.heads));
  wte_ = params_.add("wte", {V, C}, true);
  wpe_ = params_.add("wpe", {T, C}, true);
  for (int64_t l = 0; l < config.layers; ++l) {
    auto n = [&](const char* what) { return fmt::format("h{}.{}", l, what); };
    Block b{};
    b.ln1_w = params_.add(n("ln1.weight"), {C}, false);
    b.ln1_b = params_.add(n("ln1.bias"), {C}, false);
    b.qkv_w = params_.add(n("attn.qkv.weight"), {3 * C, C}, true);
    b.qkv_b = params_.add(n("attn.qkv.bias"), {3 * C}, false);
    b.attn_proj_w = params_.add(n("attn.proj.weight"), {C, C}, true);
    b.attn_proj_b = params_.add(n("attn.proj.bias"), {C}, false);
    b.ln2_w = params_.add(n("ln2.weight"), {C}, false);
    b.ln2_b = params_.add(n("ln2.bias"), {C}, false);
    b.fc_w = params_.add(n("mlp.fc.weight"), {hidden, C}, true);
    b.fc_b = params_.add(n("mlp.fc.bias"), {hidden}, false);
    b.mlp_proj_w = params_.add(n("mlp.proj.weight"), {C, hidden}, true);
    b.mlp_proj_b = params_.add(n("mlp.proj.bias"), {C}, false);
    blocks_.push_back(b);
  }
  lnf_w_ = params_.add("lnf.weight", {C}, false);
  lnf_b_ = params_.add("lnf.bias", {C}, false);
  params_.allocate();
  initialize(seed);
}

void GptModel::initialize(uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = config_.init_std;
  const double residual_std = std / std::sqrt(2.0 * static_cast<double>(config_.layers));
  // Slots are visited in layout order, so the draw order (and thus the
  // weights) depends only on the configuration and the seed.
  for (size_t i = 0; i < params_.slots().size(); ++i) {
    const auto& s = params_.slots()[i];
    const auto& name = s.name;
    auto ends_with = [&](const char* suffix) {
      std::string sfx(suffix);
      return name.size() >= sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0;
    };
    torch::Tensor t = s.param;
    if (name.find(".ln") != std::string::npos || name.rfind("ln", 0) == 0) {
      t.fill_(ends_with(".weight") ? 1.0 : 0.0);
    } else if (ends_with(".bias")) {
      t.zero_();
    } else if (ends_with("proj.weight")) {
      t.normal_(0.0, residual_std, gen);
    } else {
      t.normal_(0.0, std, gen);
    }
  }
}

torch::Tensor GptModel::attention(const Block& b, const torch::Tensor& h) {
  auto qkv = torch::linear(h, p(b.qkv_w), p(b.qkv_b));  // [B, T, 3C]
  auto y = use_reference_ops_ ? causal_self_attention_reference(qkv, config_.heads)
                                    : causal_self_attention(qkv, config_.heads);  // [B, T, C]
  return torch::linear(y, p(b.attn_proj_w), p(b.attn_proj_b));
}

torch::Tensor GptModel::logits(const torch::Tensor& idx) {
  const int64_t T = idx.size(1), C = config_.width;
  if (idx.dim() != 2 || T > config_.context || T < 1)
    throw Error(fmt::format("GptModel: input of shape {} does not fit context {}",
                            fmt::join(idx.sizes(), "x"), config_.context));
  if (block_runner_) block_runner_->begin_forward();
  auto x = torch::embedding(p(wte_), idx) + p(wpe_).narrow(0, 0, T);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const Block& b = blocks_[l];
    BlockParts parts;
    parts.attention = [this, &b, C](const torch::Tensor& in) {
      return attention(b, torch::layer_norm(in, {C}, p(b.ln1_w), p(b.ln1_b), 1e-5));
    };
    parts.mlp = [this, &b, C](const torch::Tensor& in) {
      auto h = torch::layer_norm(in, {C}, p(b.ln2_w), p(b.ln2_b), 1e-5);
      auto fc = torch::linear(h, p(b.fc_w), p(b.fc_b));
      h = use_reference_ops_ ? torch::gelu(fc) : train::gelu(fc);
      return torch::linear(h, p(b.mlp_proj_w), p(b.mlp_proj_b));
    };
    x = block_runner_ ? block_runner_->run_block(static_cast<int64_t>(l), x, parts) : parts.forward(x);
  }
  x = torch::layer_norm(x, {C}, p(lnf_w_), p(lnf_b_), 1e-5);
  return torch::linear(x, p(wte_));  // tied output layer
}

torch::Tensor GptModel::loss(const torch::Tensor& idx, const torch::Tensor& targets) {
  auto lg = logits(idx);
  return torch::cross_entropy_loss(lg.view({-1, config_.vocab_size}), targets.reshape({-1}));
}

std::vector<int64_t> GptModel::generate(const std::vector<int64_t>& prompt, int64_t new_tokens,
                                        double temperature, int64_t top_k, torch::Generator& gen) {
  torch::NoGradGuard no_grad;
  if (prompt.empty()) throw ConfigError("text sampling needs a non-empty prompt");
  std::vector<int64_t> seq = prompt;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < new_tokens; ++i) {
    int64_t n = static_cast<int64_t>(seq.size());
    int64_t start = n > config_.context ? n - config_.context : 0;
    auto idx = torch::from_blob(seq.data() + start, {1, n - start}, torch::kInt64).clone();
    auto last = logits(idx).select(1, n - start - 1).squeeze(0).to(torch::kFloat64) / temperature;
    if (top_k > 0 && top_k < config_.vocab_size) {
      auto kth = std::get<0>(last.topk(top_k)).min();
      last = last.masked_fill(last < kth, -std::numeric_limits<double>::infinity());
    }
    auto probs = torch::softmax(last, -1);
    int64_t next = torch::multinomial(probs, 1, false, gen).item<int64_t>();
    seq.push_back(next);
    out.push_back(next);
  }
  return out;
}

int64_t GptModel::num_flop_parameters() const {
  return params_.numel() - params_.slots()[static_cast<size_t>(wpe_)].numel;
}

double GptModel::flops_per_token() const {
  const auto& c = config_;
  return 6.0 * static_cast<double>(num_flop_parameters()) +
         12.0 * static_cast<double>(c.layers * c.heads * c.head_dim() * c.context);
}

}  // namespace braid::train
