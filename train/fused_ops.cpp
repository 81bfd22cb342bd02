#include "train/fused_ops.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "train/cpu_kernels.hpp"

namespace braid::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

AttentionDims dims_of(const torch::Tensor& qkv, int64_t heads) {
  if (qkv.dim() != 3 || qkv.size(2) % (3 * heads) != 0)
    throw Error(fmt::format("causal attention: qkv of shape [{}] does not split into 3 x {} heads",
                            fmt::join(qkv.sizes(), ", "), heads));
  AttentionDims d;
  d.batch = qkv.size(0);
  d.seq = qkv.size(1);
  d.heads = heads;
  d.head_dim = qkv.size(2) / (3 * heads);
  d.scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
  return d;
}

// Pairs of (batch, head) are independent; each is ~T²·D FMAs, so one pair
// per task is already coarse enough.
template <typename Fn>
void for_pairs(const AttentionDims& d, Fn fn) {
  at::parallel_for(0, d.batch * d.heads, 1, fn);
}

class CausalAttentionFunction : public torch::autograd::Function<CausalAttentionFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& qkv_in, int64_t heads) {
    auto qkv = qkv_in.contiguous();
    const auto d = dims_of(qkv, heads);
    auto y = torch::empty({d.batch, d.seq, d.heads * d.head_dim}, qkv.options());
    auto probs = torch::empty({d.batch, d.heads, d.seq, d.seq}, qkv.options());
    AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "causal_attention_forward", [&] {
      const scalar_t* in = qkv.data_ptr<scalar_t>();
      scalar_t* out = y.data_ptr<scalar_t>();
      scalar_t* p = probs.data_ptr<scalar_t>();
      for_pairs(d, [&](int64_t a, int64_t b) { attention_forward(in, out, p, d, a, b); });
    });
    ctx->save_for_backward({qkv, y, probs});
    ctx->saved_data["heads"] = heads;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& qkv = saved[0];
    const auto& y = saved[1];
    const auto& probs = saved[2];
    const auto d = dims_of(qkv, ctx->saved_data["heads"].toInt());
    auto dy = grad_outputs[0].contiguous();
    auto dqkv = torch::empty_like(qkv);
    AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "causal_attention_backward", [&] {
      const scalar_t* in = qkv.data_ptr<scalar_t>();
      const scalar_t* out = y.data_ptr<scalar_t>();
      const scalar_t* p = probs.data_ptr<scalar_t>();
      const scalar_t* g = dy.data_ptr<scalar_t>();
      scalar_t* gin = dqkv.data_ptr<scalar_t>();
      for_pairs(d, [&](int64_t a, int64_t b) { attention_backward(in, out, p, g, gin, d, a, b); });
    });
    return {dqkv, torch::Tensor()};
  }
};

class GeluFunction : public torch::autograd::Function<GeluFunction> {
 public:
  // Elementwise work in chunks big enough to amortise a thread hand-off.
  static constexpr int64_t kGrain = 1 << 15;

  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in) {
    auto x = x_in.contiguous();
    auto y = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gelu_forward", [&] {
      const scalar_t* in = x.data_ptr<scalar_t>();
      scalar_t* out = y.data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t a, int64_t b) { gelu_forward(in, out, a, b); });
    });
    ctx->save_for_backward({x});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto x = ctx->get_saved_variables()[0];
    auto dy = grad_outputs[0].contiguous();
    auto dx = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gelu_backward", [&] {
      const scalar_t* in = x.data_ptr<scalar_t>();
      const scalar_t* g = dy.data_ptr<scalar_t>();
      scalar_t* out = dx.data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t a, int64_t b) { gelu_backward(in, g, out, a, b); });
    });
    return {dx};
  }
};

}  // namespace

torch::Tensor gelu(const torch::Tensor& x) { return GeluFunction::apply(x); }

torch::Tensor causal_self_attention(const torch::Tensor& qkv, int64_t heads) {
  return CausalAttentionFunction::apply(qkv, heads);
}

torch::Tensor causal_self_attention_reference(const torch::Tensor& qkv, int64_t heads) {
  const auto d = dims_of(qkv, heads);
  const int64_t B = d.batch, T = d.seq, H = heads, D = d.head_dim, C = H * D;
  auto parts = qkv.split(C, -1);
  auto q = parts[0].reshape({B, T, H, D}).transpose(1, 2);
  auto k = parts[1].reshape({B, T, H, D}).transpose(1, 2);
  auto v = parts[2].reshape({B, T, H, D}).transpose(1, 2);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * d.scale;
  auto mask = torch::ones({T, T}, torch::kBool).triu(1);
  scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  auto y = torch::matmul(torch::softmax(scores, -1), v);
  return y.transpose(1, 2).reshape({B, T, C});
}

}  // namespace braid::train
