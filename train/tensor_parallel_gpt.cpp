#include "train/tensor_parallel_gpt.hpp"

#include <fmt/format.h>

#include "core/error.hpp"
#include "train/fused_ops.hpp"
#include "train/tensor_parallel.hpp"

namespace braid::train {

TensorParallelGpt::TensorParallelGpt(const ModelConfig& config, uint64_t seed, const StagePlacement& place,
                                     comm::Communicator* tp_comm, double timeout_s, torch::Dtype dtype)
    : config_(config), place_(place), tp_(tp_comm), timeout_s_(timeout_s), params_(dtype) {
  const int64_t C = config.width, H = config.heads, hidden = config.mlp_ratio * C;
  const int64_t tp = place.tp, r = place.tp_rank;
  if (H % tp != 0 || hidden % tp != 0)
    throw ConfigError(fmt::format("tp = {} must divide model.heads = {} and the MLP width {}", tp, H, hidden),
                      "choose tp among the divisors of heads");
  if (place.chunks < 1 || config.layers % (place.pp * place.chunks) != 0)
    throw ConfigError(fmt::format("pp = {} x chunks = {} does not divide model.layers = {}", place.pp, place.chunks,
                                  config.layers),
                      "choose pp (and parallel.chunks) among the divisors of layers");
  if ((tp_comm ? tp_comm->size() : 1) != tp)
    throw ConfigError(fmt::format("tensor-parallel group of {} ranks for tp = {}", tp_comm ? tp_comm->size() : 1, tp),
                      "build the model from a ParallelMesh");

  // The full model gives the layout, the names and the initial weights.
  GptModel full(config, seed, dtype);
  for (const auto& s : full.params().slots()) {
    full_names_.push_back(s.name);
    full_shapes_.push_back(s.shape);
    full_offsets_.push_back(s.offset);
  }
  full_numel_ = full.params().numel();

  const int64_t c = C / tp, hc = hidden / tp;  // local attention width and MLP width
  const std::vector<ShardPiece> qkv_rows = {{0, r * c, 0, c}, {0, C + r * c, c, c}, {0, 2 * C + r * c, 2 * c, c}};
  const std::vector<ShardPiece> attn_cols = {{1, r * c, 0, c}};
  const std::vector<ShardPiece> fc_rows = {{0, r * hc, 0, hc}};
  const std::vector<ShardPiece> mlp_cols = {{1, r * hc, 0, hc}};
  const bool split = tp > 1;
  auto pieces = [&](const std::vector<ShardPiece>& p) { return split ? p : std::vector<ShardPiece>{}; };

  blocks_per_chunk_ = config.layers / (place.pp * place.chunks);
  if (place.first_stage()) {
    wte_ = add(full, "wte", {});
    wpe_ = add(full, "wpe", {});
  }
  std::vector<int64_t> layers;
  for (int64_t v = 0; v < place.chunks; ++v)
    for (int64_t i = 0; i < blocks_per_chunk_; ++i) layers.push_back((v * place.pp + place.pp_rank) * blocks_per_chunk_ + i);
  for (int64_t l : layers) {
    auto n = [&](const char* what) { return fmt::format("h{}.{}", l, what); };
    Block b{};
    b.ln1_w = add(full, n("ln1.weight"), {});
    b.ln1_b = add(full, n("ln1.bias"), {});
    b.qkv_w = add(full, n("attn.qkv.weight"), pieces(qkv_rows));
    b.qkv_b = add(full, n("attn.qkv.bias"), pieces(qkv_rows));
    b.attn_proj_w = add(full, n("attn.proj.weight"), pieces(attn_cols));
    b.attn_proj_b = add(full, n("attn.proj.bias"), {});
    b.ln2_w = add(full, n("ln2.weight"), {});
    b.ln2_b = add(full, n("ln2.bias"), {});
    b.fc_w = add(full, n("mlp.fc.weight"), pieces(fc_rows));
    b.fc_b = add(full, n("mlp.fc.bias"), pieces(fc_rows));
    b.mlp_proj_w = add(full, n("mlp.proj.weight"), pieces(mlp_cols));
    b.mlp_proj_b = add(full, n("mlp.proj.bias"), {});
    blocks_.push_back(b);
    block_layers_.push_back(l);
  }
  if (place.last_stage()) {
    lnf_w_ = add(full, "lnf.weight", {});
    lnf_b_ = add(full, "lnf.bias", {});
    if (!place.first_stage()) {
      // The tied output layer needs wte here too; the first stage counts it.
      wte_ = add(full, "wte", {}, false);
      wte_copy_ = true;
    }
  }
  params_.allocate();
  copy_from_full(full.params().params());
}

int TensorParallelGpt::add(const GptModel& full, const std::string& name, std::vector<ShardPiece> pieces,
                           bool counted) {
  const auto& slots = full.params().slots();
  int full_slot = -1;
  for (size_t i = 0; i < slots.size(); ++i)
    if (slots[i].name == name) full_slot = static_cast<int>(i);
  if (full_slot < 0) throw Error(fmt::format("TensorParallelGpt: GptModel has no parameter '{}'", name));
  const auto& fs = slots[static_cast<size_t>(full_slot)];
  std::vector<int64_t> shape = fs.shape;
  if (!pieces.empty()) {
    int64_t local = 0;
    for (const auto& p : pieces) local += p.length;
    shape[static_cast<size_t>(pieces.front().dim)] = local;
  }
  // Replicated parameters are counted in the norm by tp rank 0 only.
  const bool counted_here = counted && (!pieces.empty() || place_.tp_rank == 0);
  sharding_.push_back({full_slot, std::move(pieces), counted_here});
  return params_.add(name, shape, fs.decay);
}

torch::Tensor TensorParallelGpt::local_view(const torch::Tensor& local_flat, int slot) const {
  const auto& s = params_.slots()[static_cast<size_t>(slot)];
  return local_flat.narrow(0, s.offset, s.numel).view(s.shape);
}

torch::Tensor TensorParallelGpt::full_view(const torch::Tensor& full_flat, int full_slot) const {
  const auto& shape = full_shapes_[static_cast<size_t>(full_slot)];
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  return full_flat.narrow(0, full_offsets_[static_cast<size_t>(full_slot)], numel).view(shape);
}

void TensorParallelGpt::scatter_from_full(const torch::Tensor& full_flat, torch::Tensor& local_flat) const {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < sharding_.size(); ++i) {
    const auto& sh = sharding_[i];
    auto dst = local_view(local_flat, static_cast<int>(i));
    auto src = full_view(full_flat, sh.full_slot);
    if (sh.pieces.empty()) {
      dst.copy_(src);
      continue;
    }
    for (const auto& p : sh.pieces)
      dst.narrow(p.dim, p.local_begin, p.length).copy_(src.narrow(p.dim, p.full_begin, p.length));
  }
}

void TensorParallelGpt::gather_to_full(const torch::Tensor& local_flat, torch::Tensor& full_flat) const {
  torch::NoGradGuard no_grad;
  if (full_flat.numel() != full_numel_)
    throw Error(fmt::format("gather_to_full: buffer of {} elements, the model has {}", full_flat.numel(), full_numel_));
  for (size_t i = 0; i < sharding_.size(); ++i) {
    const auto& sh = sharding_[i];
    auto src = local_view(local_flat, static_cast<int>(i));
    auto dst = full_view(full_flat, sh.full_slot);
    if (sh.pieces.empty()) {
      dst.copy_(src);
      continue;
    }
    for (const auto& p : sh.pieces)
      dst.narrow(p.dim, p.full_begin, p.length).copy_(src.narrow(p.dim, p.local_begin, p.length));
  }
}

void TensorParallelGpt::copy_from_full(const torch::Tensor& full_flat) {
  auto local = params_.params();
  scatter_from_full(full_flat, local);
}

void TensorParallelGpt::copy_to_full(torch::Tensor& full_flat) const { gather_to_full(params_.params(), full_flat); }

void TensorParallelGpt::add_own_to_full(const torch::Tensor& local_flat, torch::Tensor& full_flat) const {
  torch::NoGradGuard no_grad;
  auto mine = torch::zeros_like(full_flat);
  auto local = local_flat.clone();
  for (size_t i = 0; i < sharding_.size(); ++i)
    if (!sharding_[i].counted_in_norm) local_view(local, static_cast<int>(i)).zero_();
  gather_to_full(local, mine);
  full_flat.add_(mine);
}

double TensorParallelGpt::grad_sum_of_squares_share(int64_t begin, int64_t end) const {
  if (end < 0) end = params_.numel();
  double sum = 0;
  for (size_t i = 0; i < sharding_.size(); ++i) {
    if (!sharding_[i].counted_in_norm) continue;
    const auto& s = params_.slots()[i];
    const int64_t a = std::max(begin, s.offset), b = std::min(end, s.offset + s.numel);
    if (a < b) sum += params_.grad_sum_of_squares(a, b);
  }
  return sum;
}

void TensorParallelGpt::set_sequence_parallel(bool on) {
  if (on && config_.context % place_.tp != 0)
    throw ConfigError(fmt::format("sequence parallelism: tp = {} does not divide model.context = {}", place_.tp,
                                  config_.context),
                      "choose a context that tp divides, or set parallel.sequence_parallel = false");
  sequence_parallel_ = on && place_.tp > 1;
}

void TensorParallelGpt::sync_sequence_parallel_grads(const std::function<std::vector<torch::Tensor>(int slot)>& parts) {
  if (!sequence_parallel_) return;
  std::vector<torch::Tensor> grads;
  for (const auto& b : blocks_)
    for (int slot : {b.ln1_w, b.ln1_b, b.attn_proj_b, b.ln2_w, b.ln2_b, b.mlp_proj_b}) {
      if (!parts) {
        grads.push_back(params_.slots()[static_cast<size_t>(slot)].grad.view({-1}));
        continue;
      }
      for (auto& g : parts(slot))
        if (g.numel() > 0) grads.push_back(g);
    }
  if (grads.empty()) return;
  torch::NoGradGuard no_grad;
  auto packed = torch::cat(grads);
  all_reduce_tensor_sum(packed, tp_, timeout_s_);
  int64_t at = 0;
  for (auto& g : grads) {
    g.copy_(packed.narrow(0, at, g.numel()));
    at += g.numel();
  }
}

std::vector<int> TensorParallelGpt::outer_slots(int chunk) const {
  std::vector<int> slots;
  if (place_.first_stage() && chunk == 0) slots = {wte_, wpe_};
  if (place_.last_stage() && chunk == place_.chunks - 1) {
    slots.push_back(lnf_w_);
    slots.push_back(lnf_b_);
    if (wte_copy_) slots.push_back(wte_);
  }
  return slots;
}

torch::Tensor TensorParallelGpt::forward(const torch::Tensor& input, int chunk) {
  const int64_t C = config_.width;
  const int64_t local_heads = config_.heads / place_.tp;
  const bool sp = sequence_parallel_;
  if (chunk < 0 || chunk >= place_.chunks)
    throw Error(fmt::format("TensorParallelGpt: chunk {} of a stage with {}", chunk, place_.chunks));
  const bool embeds = place_.first_stage() && chunk == 0, heads = place_.last_stage() && chunk == place_.chunks - 1;
  torch::Tensor x;
  if (embeds) {
    const int64_t T = input.size(1);
    if (input.dim() != 2 || T > config_.context || T < 1)
      throw Error(fmt::format("TensorParallelGpt: input of shape {} does not fit context {}",
                              fmt::join(input.sizes(), "x"), config_.context));
    x = torch::embedding(p(wte_), input) + p(wpe_).narrow(0, 0, T);
    if (sp) x = split_sequence(x, tp_, timeout_s_);
  } else {
    x = input;
  }
  // Into and out of the split linears: f / g, or with sequence parallelism
  // the all-gather / reduce-scatter on the sequence dimension.
  auto enter = [this, sp](const torch::Tensor& t) {
    return sp ? gather_sequence(t, tp_, timeout_s_) : copy_to_tensor_parallel(t, tp_, timeout_s_);
  };
  auto leave = [this, sp](const torch::Tensor& t) {
    return sp ? scatter_sequence(t, tp_, timeout_s_) : reduce_from_tensor_parallel(t, tp_, timeout_s_);
  };
  for (int64_t i = chunk * blocks_per_chunk_; i < (chunk + 1) * blocks_per_chunk_; ++i) {
    const Block& b = blocks_[static_cast<size_t>(i)];
    BlockParts parts;
    // By value: a recomputing backward calls these after forward() returned.
    parts.attention = [this, b, C, local_heads, enter, leave](const torch::Tensor& in) {
      auto h = enter(torch::layer_norm(in, {C}, p(b.ln1_w), p(b.ln1_b), 1e-5));
      auto y = causal_self_attention(torch::linear(h, p(b.qkv_w), p(b.qkv_b)), local_heads);
      return leave(torch::linear(y, p(b.attn_proj_w))) + p(b.attn_proj_b);
    };
    parts.mlp = [this, b, C, enter, leave](const torch::Tensor& in) {
      auto h = enter(torch::layer_norm(in, {C}, p(b.ln2_w), p(b.ln2_b), 1e-5));
      h = train::gelu(torch::linear(h, p(b.fc_w), p(b.fc_b)));
      return leave(torch::linear(h, p(b.mlp_proj_w))) + p(b.mlp_proj_b);
    };
    x = block_runner_ ? block_runner_->run_block(block_layers_[static_cast<size_t>(i)], x, parts)
                      : run_block_recomputing(recompute_, parts, x);
  }
  if (!heads) return x;
  if (sp) x = unsplit_sequence(x, tp_, timeout_s_);
  x = torch::layer_norm(x, {C}, p(lnf_w_), p(lnf_b_), 1e-5);
  return torch::linear(x, p(wte_));
}

}  // namespace braid::train
