#include "train/recompute.hpp"

#include "core/error.hpp"

namespace braid::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using BlockFn = std::function<torch::Tensor(const torch::Tensor&)>;

// The function to re-run travels in the autograd context as a capsule (the
// context's saved_data holds IValues only).
struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(BlockFn f) : fn(std::move(f)) {}
  BlockFn fn;
};

class RecomputeFunction : public torch::autograd::Function<RecomputeFunction> {
 public:
  // Autograd runs forward with grad mode off: fn builds no graph, so nothing
  // but x (saved below) outlives this call.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, c10::intrusive_ptr<FnHolder> holder) {
    auto y = holder->fn(x);
    ctx->save_for_backward({x});
    ctx->saved_data["fn"] = c10::IValue::make_capsule(std::move(holder));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode grad_on(true);
      y = holder->fn(x);
    }
    // A re-entrant backward over the recomputed graph: parameter gradients
    // accumulate into their .grad (and their hooks fire) as in one pass.
    torch::autograd::backward({y}, {grad_outputs[0]});
    return {x.grad(), torch::Tensor()};
  }
};

}  // namespace

RecomputeMode parse_recompute_mode(const std::string& name) {
  if (name == "none") return RecomputeMode::None;
  if (name == "selective") return RecomputeMode::Selective;
  if (name == "full") return RecomputeMode::Full;
  throw ConfigError("parallel.recompute = '" + name + "' is not a recomputation mode",
                    "use \"none\", \"selective\" (attention only) or \"full\" (whole blocks)");
}

const char* recompute_mode_name(RecomputeMode mode) {
  switch (mode) {
    case RecomputeMode::None: return "none";
    case RecomputeMode::Selective: return "selective";
    case RecomputeMode::Full: return "full";
  }
  return "?";
}

torch::Tensor recompute_in_backward(const BlockFn& fn, const torch::Tensor& x) {
  // The parameters are invisible to the autograd function: only x connects
  // it to the graph. If x needs no gradient, backward would never reach the
  // block's parameters, so it runs plainly instead.
  if (!torch::GradMode::is_enabled() || !x.requires_grad()) return fn(x);
  return RecomputeFunction::apply(x, c10::make_intrusive<FnHolder>(fn));
}

torch::Tensor run_block_recomputing(RecomputeMode mode, const BlockParts& parts, const torch::Tensor& x) {
  switch (mode) {
    case RecomputeMode::None:
      return parts.forward(x);
    case RecomputeMode::Selective: {
      auto h = x + recompute_in_backward(parts.attention, x);
      return h + parts.mlp(h);
    }
    case RecomputeMode::Full:
      // By value: backward runs after the caller's BlockParts is gone.
      return recompute_in_backward([parts](const torch::Tensor& in) { return parts.forward(in); }, x);
  }
  return parts.forward(x);
}

}  // namespace braid::train
