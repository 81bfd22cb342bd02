#include "train/zero.hpp"

#include <ATen/native/Resize.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/function_hook.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A parameter's layer, from its name ("h<l>.…"), or -1 for the rest.
int layer_of(const std::string& name) {
  if (name.size() < 3 || name[0] != 'h') return -1;
  size_t i = 1;
  int layer = 0;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) layer = layer * 10 + (name[i++] - '0');
  return i > 1 && i < name.size() && name[i] == '.' ? layer : -1;
}

// Sets the byte size of a tensor's storage (0 frees it); every view of the
// storage follows. New bytes are uninitialised.
void resize_storage(const torch::Tensor& t, int64_t bytes) {
  at::native::resize_bytes_cpu(t.storage().unsafeGetStorageImpl(), static_cast<size_t>(bytes));
}

class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  explicit GradReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  variable_list operator()(const variable_list& outputs, const variable_list& /*inputs*/) override {
    fn_();
    return outputs;
  }

 private:
  std::function<void()> fn_;
};

// Identity on a block's output whose backward runs just before the block's:
// it gathers the block's parameters and arms its gradient buffer.
class BeforeBlockBackward : public torch::autograd::Function<BeforeBlockBackward> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y, ZeroOptimizer* zero, int64_t unit) {
    ctx->saved_data["zero"] = reinterpret_cast<int64_t>(zero);
    ctx->saved_data["unit"] = unit;
    return y.view_as(y);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* zero = reinterpret_cast<ZeroOptimizer*>(ctx->saved_data["zero"].toInt());
    zero->before_block_backward(static_cast<int>(ctx->saved_data["unit"].toInt()));
    return {grad_outputs[0], torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

// ---------------------------------------------------------------- layout

ZeroLayout::ZeroLayout(const FlatParameters& params, int world, int rank, const std::vector<int>& alone)
    : world_(world), rank_(rank) {
  if (world < 1 || rank < 0 || rank >= world) throw Error(fmt::format("ZeRO: rank {} of {} ranks", rank, world));
  const auto& slots = params.slots();
  unit_of_slot_.assign(slots.size(), -1);
  auto is_alone = [&](size_t i) { return std::find(alone.begin(), alone.end(), static_cast<int>(i)) != alone.end(); };
  for (size_t i = 0; i < slots.size(); ++i) {
    int layer = layer_of(slots[i].name);
    bool same = !units_.empty() && units_.back().layer == layer && units_.back().end == slots[i].offset &&
                !is_alone(i) && !is_alone(i - 1);
    if (!same) {
      ZeroUnit u;
      u.begin = u.end = slots[i].offset;
      u.layer = layer;
      units_.push_back(u);
    }
    units_.back().end = slots[i].offset + slots[i].numel;
    units_.back().slots.push_back(static_cast<int>(i));
    unit_of_slot_[i] = static_cast<int>(units_.size() - 1);
  }
  for (size_t k = 0; k < units_.size(); ++k) {
    auto& u = units_[k];
    u.block = (u.numel() + world - 1) / world;
    u.shard_offset = shard_numel_;
    shard_numel_ += u.block;
    if (u.layer >= 0) {
      if (unit_of_layer_.size() <= static_cast<size_t>(u.layer)) unit_of_layer_.resize(static_cast<size_t>(u.layer) + 1, -1);
      if (unit_of_layer_[static_cast<size_t>(u.layer)] != -1)
        throw Error(fmt::format("ZeRO: the parameters of block {} are not contiguous", u.layer));
      unit_of_layer_[static_cast<size_t>(u.layer)] = static_cast<int>(k);
    }
    auto [own_begin, own_end] = owned(u, rank);
    for (int s : u.slots) {
      const auto& slot = slots[static_cast<size_t>(s)];
      int64_t a = std::max(own_begin, slot.offset), b = std::min(own_end, slot.offset + slot.numel);
      if (a < b) pieces_.push_back({a, b, u.shard_offset + (a - own_begin), slot.decay, s});
    }
  }
}

std::pair<int64_t, int64_t> ZeroLayout::owned(const ZeroUnit& u, int r) const {
  int64_t a = std::min(u.begin + r * u.block, u.end), b = std::min(u.begin + (r + 1) * u.block, u.end);
  return {a, b};
}

// ---------------------------------------------------------------- optimizer

struct ZeroOptimizer::UnitState {
  torch::Tensor full;  // N·block floats: the gathered parameters (stage 3)
  torch::Tensor grad;  // N·block floats: the unit's gradient during its backward (stages 2, 3)
  bool gathered = false;
  bool gather_pending = false;
  comm::Work gather_work;
  bool grad_live = false;
  int pending_grads = 0;
  comm::Work reduce_work;
  int64_t bytes = 0;  // of one full unit buffer
};

ZeroOptimizer::ZeroOptimizer(GptModel& model, comm::Communicator* comm, int stage, RecomputeMode recompute,
                             const AdamWHyper& hyper, const ParallelConfig& config)
    : ZeroOptimizer(model.params(), [&model](BlockRunner* r) { model.set_block_runner(r); }, comm, stage, recompute,
                    hyper, config) {}

ZeroOptimizer::ZeroOptimizer(FlatParameters& params, std::function<void(BlockRunner*)> install,
                             comm::Communicator* comm, int stage, RecomputeMode recompute, const AdamWHyper& hyper,
                             const ParallelConfig& config, const std::vector<int>& alone)
    : params_(params),
      install_(std::move(install)),
      comm_(comm && comm->size() > 1 ? comm : nullptr),
      stage_(stage),
      recompute_(recompute),
      layout_(params, comm ? comm->size() : 1, comm ? comm->rank() : 0, alone),
      adam_(layout_.shard_numel(), hyper) {
  if (stage < 1 || stage > 3) throw ConfigError(fmt::format("parallel.zero = {} is not a ZeRO stage", stage), "use 0, 1, 2 or 3");
  auto& flat = params;
  if (flat.dtype() != torch::kFloat32) throw Error("ZeRO runs on float32 parameters");
  collective_.algo = comm::parse_algo(config.algo);
  collective_.timeout_s = config.timeout_s;
  const int64_t n = flat.numel(), world = layout_.world();
  memory_.optimizer.add(2 * 4 * layout_.shard_numel());
  memory_.params.add(4 * n);  // the flat buffer, until released below
  memory_.grads.add(4 * n);

  torch::NoGradGuard no_grad;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  for (const auto& u : layout_.units()) {
    auto st = std::make_unique<UnitState>();
    st->bytes = 4 * u.block * world;
    if (stage >= 2) {
      st->grad = torch::zeros({u.block * world}, opts);
      for (int s : u.slots) {
        auto& slot = flat.slot(s);
        slot.param.mutable_grad() = st->grad.narrow(0, slot.offset - u.begin, slot.numel).view(slot.shape);
      }
      resize_storage(st->grad, 0);
    }
    if (stage >= 3) {
      st->full = torch::zeros({u.block * world}, opts);
      st->full.narrow(0, 0, u.numel()).copy_(flat.params().narrow(0, u.begin, u.numel()));
      for (int s : u.slots) {
        auto& slot = flat.slot(s);
        slot.param.set_data(st->full.narrow(0, slot.offset - u.begin, slot.numel).view(slot.shape));
      }
    }
    units_.push_back(std::move(st));
  }
  if (stage >= 3) {
    shard_params_.assign(static_cast<size_t>(layout_.shard_numel()), 0.0f);
    for (size_t k = 0; k < layout_.units().size(); ++k) {
      const auto& u = layout_.units()[k];
      auto [a, b] = layout_.owned(u, layout_.rank());
      if (b > a) std::memcpy(&shard_params_[static_cast<size_t>(u.shard_offset)], flat.param_data() + a, 4 * static_cast<size_t>(b - a));
      resize_storage(units_[k]->full, 0);
    }
    memory_.params.add(4 * layout_.shard_numel());
    // The flat parameter buffer goes: the parameters now live in the unit
    // buffers. Its tensor becomes empty so nothing can index freed memory.
    flat.params().resize_({0});
    resize_storage(flat.params(), 0);
    memory_.params.sub(4 * n);
  }
  if (stage >= 2) {
    shard_grads_.assign(static_cast<size_t>(layout_.shard_numel()), 0.0f);
    memory_.grads.add(4 * layout_.shard_numel());
    flat.grads().resize_({0});
    resize_storage(flat.grads(), 0);
    memory_.grads.sub(4 * n);
    // Gradient hooks: a unit's reduce-scatter starts once all of its
    // parameters have their gradient (the accumulators are held here, as
    // DataParallel does, so that the hooks live as long as we do).
    for (size_t i = 0; i < flat.slots().size(); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(flat.slots()[i].param);
      if (!acc) throw Error(fmt::format("parameter '{}' has no gradient accumulator", flat.slots()[i].name));
      int slot = static_cast<int>(i);
      hook_keys_.push_back(acc->add_post_hook(std::make_unique<GradReadyHook>([this, slot] {
        try {
          on_gradient_ready(slot);
        } catch (...) {
          if (!hook_error_) hook_error_ = std::current_exception();
        }
      })));
      accumulators_.push_back(std::move(acc));
    }
  }
  install_(this);
  // The model was built whole (every rank initialises every parameter from
  // the seed) before it was sharded; peaks count from the sharded state.
  reset_peaks();
}

ZeroOptimizer::~ZeroOptimizer() {
  install_(nullptr);
  for (size_t i = 0; i < accumulators_.size(); ++i) accumulators_[i]->del_post_hook(hook_keys_[i]);
  // Collectives still in flight write into our buffers: let them finish.
  for (auto& u : units_) {
    try {
      if (u->gather_pending) u->gather_work.wait();
      if (u->reduce_work.valid()) u->reduce_work.wait();
    } catch (...) {
    }
  }
}

float* ZeroOptimizer::flat_params() { return params_.param_data(); }
float* ZeroOptimizer::flat_grads() { return params_.grad_data(); }

void ZeroOptimizer::reset_peaks() {
  for (auto* t : {&memory_.params, &memory_.grads, &memory_.optimizer}) t->peak = t->current;
}

// ------------------------------------------------------------ parameters

void ZeroOptimizer::launch_gather(int k) {
  if (k < 0) return;  // a block this stage does not hold
  auto& st = *units_[static_cast<size_t>(k)];
  if (stage_ < 3 || st.gathered || st.gather_pending) return;
  const auto& u = layout_.units()[static_cast<size_t>(k)];
  resize_storage(st.full, st.bytes);
  memory_.params.add(st.bytes);
  const float* own = shard_params_.data() + u.shard_offset;
  if (!comm_) {
    std::memcpy(st.full.data_ptr<float>(), own, static_cast<size_t>(st.bytes));
    st.gathered = true;
    return;
  }
  st.gather_work = comm_->all_gather(own, st.full.data_ptr<float>(), static_cast<size_t>(u.block), DType::F32, collective_);
  st.gather_pending = true;
}

void ZeroOptimizer::wait_gather(int k) {
  auto& st = *units_[static_cast<size_t>(k)];
  if (stage_ < 3 || st.gathered) return;
  launch_gather(k);
  if (st.gather_pending) {
    st.gather_pending = false;
    Stopwatch waited;
    st.gather_work.wait();
    comm_wait_s_ += waited.seconds();
  }
  st.gathered = true;
}

void ZeroOptimizer::release_params(int k) {
  auto& st = *units_[static_cast<size_t>(k)];
  if (stage_ < 3 || !st.gathered || pinned_) return;
  resize_storage(st.full, 0);
  memory_.params.sub(st.bytes);
  st.gathered = false;
}

// ------------------------------------------------------------- gradients

void ZeroOptimizer::arm_grads(int k) {
  auto& st = *units_[static_cast<size_t>(k)];
  if (stage_ < 2 || st.grad_live) return;
  resize_storage(st.grad, st.bytes);
  st.grad.zero_();
  memory_.grads.add(st.bytes);
  st.grad_live = true;
  st.pending_grads = static_cast<int>(layout_.units()[static_cast<size_t>(k)].slots.size());
}

void ZeroOptimizer::on_gradient_ready(int slot) {
  int k = layout_.unit_of_slot(slot);
  auto& st = *units_[static_cast<size_t>(k)];
  if (!st.grad_live) throw Error(fmt::format("ZeRO: gradient of unit {} arrived before its buffer was armed", k));
  if (--st.pending_grads == 0) launch_reduce(k);
  complete_reduces(false);
}

void ZeroOptimizer::launch_reduce(int k) {
  auto& st = *units_[static_cast<size_t>(k)];
  const auto& u = layout_.units()[static_cast<size_t>(k)];
  // The unit's parameters are not needed again in this backward.
  release_params(k);
  float* g = st.grad.data_ptr<float>();
  if (comm_) {
    float* own = g + static_cast<int64_t>(layout_.rank()) * u.block;
    st.reduce_work = comm_->reduce_scatter(g, own, static_cast<size_t>(u.block), DType::F32, comm::ReduceOp::Avg, collective_);
  }
  reduce_queue_.push_back(k);
  // Bound the gradient memory in flight: wait for the oldest beyond two.
  if (reduce_queue_.size() > 2) complete_reduces(true);
}

// Completes reduce-scatters in launch order: all of them (wait_all), or the
// oldest one if more than two are in flight, or those already done.
void ZeroOptimizer::complete_reduces(bool wait_all) {
  size_t done = 0;
  for (; done < reduce_queue_.size(); ++done) {
    int k = reduce_queue_[done];
    auto& st = *units_[static_cast<size_t>(k)];
    const auto& u = layout_.units()[static_cast<size_t>(k)];
    const bool must = wait_all || reduce_queue_.size() - done > 2;
    if (st.reduce_work.valid()) {
      if (must) {
        Stopwatch waited;
        st.reduce_work.wait();
        comm_wait_s_ += waited.seconds();
      } else if (!st.reduce_work.test()) {
        break;
      }
      st.reduce_work = comm::Work{};
    }
    const float* own = st.grad.data_ptr<float>() + static_cast<int64_t>(layout_.rank()) * u.block;
    float* acc = shard_grads_.data() + u.shard_offset;
    for (int64_t i = 0; i < u.block; ++i) acc[i] += own[i];
    resize_storage(st.grad, 0);
    memory_.grads.sub(st.bytes);
    st.grad_live = false;
  }
  reduce_queue_.erase(reduce_queue_.begin(), reduce_queue_.begin() + static_cast<std::ptrdiff_t>(done));
}

// ------------------------------------------------------------------ step

void ZeroOptimizer::begin_step() {
  std::fill(shard_grads_.begin(), shard_grads_.end(), 0.0f);
}

void ZeroOptimizer::finish_micro_step() {
  if (stage_ < 2) return;
  if (hook_error_) {
    auto e = hook_error_;
    hook_error_ = nullptr;
    std::rethrow_exception(e);
  }
  // A unit whose parameters did not all get a gradient still reduces (in
  // unit order, the same on every rank); one that got none stays armed for
  // a later backward (a pipeline stage's other model chunk).
  for (size_t k = 0; k < units_.size(); ++k) {
    const auto& st = *units_[k];
    const bool untouched = st.pending_grads == static_cast<int>(layout_.units()[k].slots.size());
    if (st.grad_live && !untouched &&
        std::find(reduce_queue_.begin(), reduce_queue_.end(), static_cast<int>(k)) == reduce_queue_.end())
      launch_reduce(static_cast<int>(k));
  }
  complete_reduces(true);
}

double ZeroOptimizer::grad_sum_of_squares(const std::function<bool(int slot)>& counts) const {
  double s = 0;
  for (const auto& p : layout_.pieces()) {
    if (counts && !counts(p.slot)) continue;
    const int64_t len = p.flat_end - p.flat_begin;
    const float* g = stage_ >= 2 ? shard_grads_.data() + p.shard_begin
                                 : params_.grads().data_ptr<float>() + p.flat_begin;
    double part = 0;
    for (int64_t i = 0; i < len; ++i) part += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    s += part;
  }
  return s;
}

void ZeroOptimizer::apply(int64_t adam_step, double lr, double grad_scale) {
  adam_.set_step(adam_step);
  // FlatAdamW indexes parameters, gradients and moments alike; the moments
  // are in shard coordinates, so flat buffers are passed shifted by
  // (flat_begin - shard_begin) >= 0 (a unit's block never starts before its
  // shard offset).
  for (const auto& p : layout_.pieces()) {
    const int64_t shift = p.flat_begin - p.shard_begin;
    float* params = stage_ >= 3 ? shard_params_.data() : flat_params() + shift;
    const float* grads = stage_ >= 2 ? shard_grads_.data() : flat_grads() + shift;
    adam_.update(params, grads, p.shard_begin, p.shard_begin + (p.flat_end - p.flat_begin), lr, grad_scale, p.decay);
  }
  if (stage_ >= 3) {
    // Anything still gathered (the embeddings after an evaluation) is stale.
    pinned_ = false;
    for (size_t k = 0; k < units_.size(); ++k) release_params(static_cast<int>(k));
  } else {
    gather_into_flat();
  }
}

// Stages 1 and 2: every unit's owned blocks go to all ranks, one unit at a
// time through a staging buffer (padded to N·block, so at most one unit's
// size more than the flat buffer).
void ZeroOptimizer::gather_into_flat() {
  if (!comm_) return;  // one rank updated the flat buffer in place
  float* flat = flat_params();
  int64_t largest = 0;
  for (const auto& u : layout_.units()) largest = std::max(largest, u.block);
  std::vector<float> own(static_cast<size_t>(largest)), all(static_cast<size_t>(largest * layout_.world()));
  const int64_t staging = 4 * largest * (layout_.world() + 1);
  memory_.params.add(staging);
  for (const auto& u : layout_.units()) {
    auto [a, b] = layout_.owned(u, layout_.rank());
    std::fill(own.begin(), own.end(), 0.0f);
    if (b > a) std::memcpy(own.data(), flat + a, 4 * static_cast<size_t>(b - a));
    Stopwatch waited;
    comm_->all_gather(own.data(), all.data(), static_cast<size_t>(u.block), DType::F32, collective_).wait();
    comm_wait_s_ += waited.seconds();
    std::memcpy(flat + u.begin, all.data(), 4 * static_cast<size_t>(u.numel()));
  }
  memory_.params.sub(staging);
}

void ZeroOptimizer::gather_all() {
  if (stage_ < 3) return;
  for (size_t k = 0; k < units_.size(); ++k) wait_gather(static_cast<int>(k));
  pinned_ = true;
}

torch::Tensor ZeroOptimizer::full_parameters() {
  if (stage_ < 3) return params_.params().clone();
  auto out = torch::empty({params_.numel()}, torch::kFloat32);
  for (size_t k = 0; k < units_.size(); ++k) {
    const auto& u = layout_.units()[k];
    bool was = units_[k]->gathered;
    wait_gather(static_cast<int>(k));
    out.narrow(0, u.begin, u.numel()).copy_(units_[k]->full.narrow(0, 0, u.numel()));
    if (!was) release_params(static_cast<int>(k));
  }
  return out;
}

// ------------------------------------------------------------ the runner

void ZeroOptimizer::prepare_units(const std::vector<int>& slots, bool backward) {
  for (int slot : slots) {
    const int k = layout_.unit_of_slot(slot);
    wait_gather(k);
    if (backward) arm_grads(k);
  }
}

std::vector<std::span<float>> ZeroOptimizer::own_gradient_parts(int slot) {
  if (stage_ < 2) throw Error("ZeRO: own_gradient_parts needs stage 2 or 3 (stage 1 keeps whole gradients)");
  std::vector<std::span<float>> parts;
  for (const auto& p : layout_.pieces())
    if (p.slot == slot)
      parts.emplace_back(shard_grads_.data() + p.shard_begin, static_cast<size_t>(p.flat_end - p.flat_begin));
  return parts;
}

void ZeroOptimizer::begin_forward() {
  // Embeddings and the final norm stay gathered (stage 3) and armed
  // (stages 2, 3) for the whole forward and backward.
  const bool training = torch::GradMode::is_enabled();
  for (size_t k = 0; k < units_.size(); ++k) {
    if (layout_.units()[k].layer >= 0) continue;
    wait_gather(static_cast<int>(k));
    if (training) arm_grads(static_cast<int>(k));
  }
}

torch::Tensor ZeroOptimizer::run_block(int64_t layer, const torch::Tensor& x, const BlockParts& parts) {
  if (stage_ < 3) {
    auto y = run_block_recomputing(recompute_, parts, x);
    if (stage_ == 2 && torch::GradMode::is_enabled() && y.requires_grad())
      y = BeforeBlockBackward::apply(y, this, layout_.unit_of_layer(layer));
    return y;
  }
  const int k = layout_.unit_of_layer(layer);
  wait_gather(k);
  launch_gather(layout_.find_unit_of_layer(layer + 1));
  auto y = run_block_recomputing(recompute_, parts, x);
  if (torch::GradMode::is_enabled() && y.requires_grad()) y = BeforeBlockBackward::apply(y, this, k);
  release_params(k);
  return y;
}

void ZeroOptimizer::before_block_backward(int k) {
  wait_gather(k);
  const int layer = layout_.units()[static_cast<size_t>(k)].layer;
  if (stage_ >= 3) launch_gather(layout_.find_unit_of_layer(layer - 1));  // prefetch
  arm_grads(k);
}

}  // namespace braid::train
