#include "train/pipeline_trainer.hpp"

#include <fmt/format.h>

#include <cmath>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "train/data_parallel.hpp"
#include "train/tensor_parallel.hpp"

namespace braid::train {
namespace {

// Tags of the pipeline's messages (the pp communicator's own tag space; the
// Communicator numbers repeated (peer, tag) pairs, so steps do not mix).
// `virtual_stage`: the receiver's (interleaved: chunk·pp + stage, else the stage).
uint32_t activation_tag(int64_t micro, int64_t virtual_stage, int64_t virtual_stages) {
  return static_cast<uint32_t>(2 * (micro * virtual_stages + virtual_stage));
}
uint32_t gradient_tag(int64_t micro, int64_t virtual_stage, int64_t virtual_stages) {
  return activation_tag(micro, virtual_stage, virtual_stages) + 1;
}
constexpr uint32_t kTiedEmbeddingTag = 1u << 30;
constexpr uint32_t kEvalTag = (1u << 30) + 1;

// Bytes this rank sent on every communicator of the mesh (each subgroup
// keeps its own counters).
uint64_t bytes_sent_on(const ParallelMesh& mesh) {
  uint64_t sum = 0;
  for (auto* c : {mesh.world(), mesh.tp(), mesh.pp(), mesh.dp()})
    if (c) sum += c->stats().bytes_sent;
  return sum;
}

StagePlacement placement_of(const ParallelMesh& mesh, const ParallelConfig& p) {
  return {mesh.tp_rank(), mesh.tp_size(), mesh.pp_rank(), mesh.pp_size(), static_cast<int>(pipeline_chunks(p))};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

DType dtype_of(const FlatParameters& params) { return params.dtype() == torch::kFloat64 ? DType::F64 : DType::F32; }

}  // namespace

PipelineTrainer::PipelineTrainer(const TrainConfig& config, const TokenDataset& data, ParallelMesh& mesh)
    : config_(config),
      data_(data),
      mesh_(mesh),
      schedule_(parse_pipeline_schedule(config.parallel.schedule)),
      microbatches_(pipeline_microbatches(config.train, config.parallel)),
      chunks_(static_cast<int>(pipeline_chunks(config.parallel))),
      model_(config.model, config.train.seed, placement_of(mesh, config.parallel), mesh.tp(), config.parallel.timeout_s),
      shard_block_(config.parallel.zero == 1 ? ceil_div(model_.params().numel(), mesh.dp_size()) : 0),
      shard_begin_(shard_block_ > 0 ? std::min(model_.params().numel(), mesh.dp_rank() * shard_block_) : 0),
      shard_end_(shard_block_ > 0               ? std::min(model_.params().numel(), shard_begin_ + shard_block_)
                 : config.parallel.zero >= 2 ? 0  // ZeroOptimizer holds the moments
                                             : model_.params().numel()),
      optimizer_(shard_end_ - shard_begin_,
                 {config.optim.beta1, config.optim.beta2, config.optim.eps, config.optim.weight_decay}),
      sampler_(data.train().size(), config.model.context, config.train.batch_size, mesh.dp_rank(), mesh.dp_size(),
               config.train.seed) {
  if (mesh.tp_size() != config.parallel.tp || mesh.pp_size() != config.parallel.pp)
    throw ConfigError(fmt::format("mesh tp x pp = {} x {} but the config says {} x {}", mesh.tp_size(),
                                  mesh.pp_size(), config.parallel.tp, config.parallel.pp),
                      "build the mesh from resolve_mesh_shape(config.parallel, world)");
  validate_mesh_config(config.model, config.train, config.parallel);
  p2p_.timeout_s = config.parallel.timeout_s;
  const auto recompute = parse_recompute_mode(config.parallel.recompute);
  model_.set_recompute(recompute);
  if (config.parallel.zero >= 2) {
    // The tied embedding's two copies form units of their own (see header).
    std::vector<int> alone;
    for (int slot : {model_.embedding(), model_.tied_embedding_copy()})
      if (slot >= 0 && mesh.pp_size() > 1) alone.push_back(slot);
    const auto& o = config.optim;
    zero_ = std::make_unique<ZeroOptimizer>(
        model_.params(), [this](BlockRunner* r) { model_.set_block_runner(r); }, mesh.dp(), config.parallel.zero,
        recompute, AdamWHyper{o.beta1, o.beta2, o.eps, o.weight_decay}, config.parallel, alone);
  } else if (mesh.dp() && shard_block_ == 0) {
    dp_sync_ = std::make_unique<DataParallel>(model_.params(), mesh.dp(), config.parallel);
  }
  model_.set_sequence_parallel(config.parallel.sequence_parallel);
  GptModel layout(config.model, 0);  // only for the FLOP count (same formula as Trainer)
  flops_per_token_ = layout.flops_per_token();
}

double PipelineTrainer::ideal_bubble_share() const {
  const int64_t P = mesh_.pp_size();
  return static_cast<double>(P - 1) / static_cast<double>(chunks_ * microbatches_ + P - 1);
}

int64_t PipelineTrainer::tokens_per_step() const {
  return config_.train.batch_size * microbatches_ * mesh_.dp_size() * config_.model.context;
}

torch::Tensor PipelineTrainer::load_windows(std::span<const uint16_t> split, const std::vector<uint64_t>& offsets) {
  const int64_t T = config_.model.context;
  auto batch = torch::empty({static_cast<int64_t>(offsets.size()), T + 1}, torch::kInt64);
  gather_windows(split, offsets, T, batch.data_ptr<int64_t>());
  return batch;
}

torch::Tensor PipelineTrainer::receive(const std::vector<int64_t>& shape, int peer, uint32_t tag) {
  auto t = torch::empty(shape, torch::TensorOptions().dtype(model_.params().dtype()));
  Stopwatch waited;
  mesh_.pp()->recv(t.data_ptr(), static_cast<size_t>(t.nbytes()), peer, tag, p2p_).wait();
  timing_.bubble_s += waited.seconds();
  return t;
}

void PipelineTrainer::send(const torch::Tensor& t, int peer, uint32_t tag) {
  auto owned = t.detach().contiguous();
  auto work = mesh_.pp()->send(owned.data_ptr(), static_cast<size_t>(owned.nbytes()), peer, tag, p2p_);
  pending_sends_.emplace_back(std::move(work), std::move(owned));  // the bytes must live until sent
}

void PipelineTrainer::wait_sends() {
  for (auto& [work, tensor] : pending_sends_) work.wait();
  pending_sends_.clear();
}

void PipelineTrainer::sum_tied_embedding_gradients() {
  if (mesh_.pp_size() == 1) return;
  int slot = -1, peer = -1;
  if (mesh_.first_stage()) {
    slot = model_.embedding();
    peer = mesh_.pp_size() - 1;
  } else if (mesh_.last_stage()) {
    slot = model_.tied_embedding_copy();
    peer = 0;
  } else {
    return;
  }
  // Under ZeRO-2/3 the copies are units of their own, sharded alike: each
  // dp rank adds its own part (empty on both stages alike, or one piece).
  auto parts = zero_ ? zero_gradient_parts(slot) : std::vector<torch::Tensor>{model_.params().slot(slot).grad};
  for (auto& grad : parts) {
    auto theirs = torch::empty_like(grad);
    send(grad, peer, kTiedEmbeddingTag);
    mesh_.pp()->recv(theirs.data_ptr(), static_cast<size_t>(theirs.nbytes()), peer, kTiedEmbeddingTag, p2p_).wait();
    wait_sends();
    torch::NoGradGuard no_grad;
    grad.add_(theirs);  // a + b == b + a exactly: both copies get the same bits
  }
}

std::vector<torch::Tensor> PipelineTrainer::zero_gradient_parts(int slot) {
  std::vector<torch::Tensor> out;
  for (auto part : zero_->own_gradient_parts(slot))
    out.push_back(torch::from_blob(part.data(), {static_cast<int64_t>(part.size())}, torch::kFloat32));
  return out;
}

torch::Tensor PipelineTrainer::local_parameters() {
  if (zero_) return zero_->full_parameters();
  return model_.params().params().clone();
}

// Averages the stage's gradients over the dp replicas: waits for the bucket
// all-reduces launched during the last backward, or with ZeRO-1 runs a
// reduce-scatter that leaves the average of the own shard (the rest of the
// buffer keeps this replica's sums and is not read).
void PipelineTrainer::sync_data_parallel_gradients() {
  auto* dp = mesh_.dp();
  if (!dp || zero_) return;  // ZeRO-2/3 reduce-scattered during the backwards
  if (dp_sync_) {
    dp_sync_->finish_gradient_sync();
    return;
  }
  auto grads = model_.params().grads();
  const DType type = dtype_of(model_.params());
  comm::CollectiveOptions o;
  o.timeout_s = config_.parallel.timeout_s;
  const int64_t n = grads.numel(), padded = shard_block_ * dp->size();
  auto in = grads;
  if (padded != n) {  // the last shard is short: reduce a zero-padded copy
    in = torch::zeros({padded}, grads.options());
    in.narrow(0, 0, n).copy_(grads);
  }
  auto own = torch::empty({shard_block_}, grads.options());
  dp->reduce_scatter(in.data_ptr(), own.data_ptr(), static_cast<size_t>(shard_block_), type, comm::ReduceOp::Avg, o)
      .wait();
  grads.narrow(0, shard_begin_, shard_end_ - shard_begin_).copy_(own.narrow(0, 0, shard_end_ - shard_begin_));
}

// Clipped AdamW over the optimizer's range; with ZeRO-1 the dp ranks then
// all-gather their updated shards.
void PipelineTrainer::apply_optimizer(double lr, double grad_scale) {
  torch::NoGradGuard no_grad;
  if (zero_) {
    zero_->apply(zero_->optimizer().step() + 1, lr, grad_scale);
    return;
  }
  auto& params = model_.params();
  if (params.dtype() != torch::kFloat32) throw Error("the optimizer runs on float32 parameters");
  optimizer_.begin_step();
  // Moment i belongs to element shard_begin_ + i.
  float* p = params.param_data() + shard_begin_;
  const float* g = params.grad_data() + shard_begin_;
  for (const auto& s : params.slots()) {
    const int64_t a = std::max(s.offset, shard_begin_), b = std::min(s.offset + s.numel, shard_end_);
    if (a < b) optimizer_.update(p, g, a - shard_begin_, b - shard_begin_, lr, grad_scale, s.decay);
  }
  auto* dp = mesh_.dp();
  if (shard_block_ == 0 || !dp) return;
  auto flat = params.params();
  const int64_t n = flat.numel();
  auto own = torch::zeros({shard_block_}, flat.options());
  own.narrow(0, 0, shard_end_ - shard_begin_).copy_(flat.narrow(0, shard_begin_, shard_end_ - shard_begin_));
  auto all = torch::empty({shard_block_ * dp->size()}, flat.options());
  comm::CollectiveOptions o;
  o.timeout_s = config_.parallel.timeout_s;
  dp->all_gather(own.data_ptr(), all.data_ptr(), static_cast<size_t>(shard_block_), dtype_of(params), o).wait();
  flat.copy_(all.narrow(0, 0, n));
}

StepMetrics PipelineTrainer::train_step() {
  Stopwatch step_clock;
  StepMetrics m;
  const int64_t T = config_.model.context, B = config_.train.batch_size, C = config_.model.width;
  const int64_t vocab = config_.model.vocab_size, M = microbatches_;
  const int64_t t = model_.local_sequence(T);  // positions per rank in the stages' messages
  const int stage = mesh_.pp_rank(), stages = mesh_.pp_size(), V = chunks_;
  const int virtual_stages = stages * V;
  const int prev = (stage + stages - 1) % stages, next = (stage + 1) % stages;  // neighbours (chunks wrap round)
  const uint64_t sent_before = bytes_sent_on(mesh_);

  std::vector<torch::Tensor> batches;
  for (int64_t i = 0; i < M; ++i) batches.push_back(load_windows(data_.train(), sampler_.next_offsets()));

  if (zero_)
    zero_->begin_step();
  else
    model_.params().zero_grads();
  timing_ = {};
  Stopwatch pipeline_clock;
  // Per (chunk, micro-batch): the received input and the chunk's output.
  std::vector<torch::Tensor> inputs(static_cast<size_t>(M * V)), outputs(static_cast<size_t>(M * V));
  double loss_sum = 0;
  const auto actions = pipeline_schedule(schedule_, stages, stage, static_cast<int>(M), V);
  for (size_t i = 0; i < actions.size(); ++i) {
    const auto& action = actions[i];
    const auto mb = static_cast<size_t>(action.microbatch);
    const auto slot = static_cast<size_t>(action.chunk) * static_cast<size_t>(M) + mb;
    const int u = action.chunk * stages + stage;  // virtual stage
    const bool first_v = u == 0, last_v = u == virtual_stages - 1;
    if (action.kind == PipelineAction::Forward) {
      torch::Tensor input;
      if (first_v) {
        input = batches[mb].narrow(1, 0, T);
      } else {
        input = receive({B, t, C}, prev, activation_tag(action.microbatch, u, virtual_stages)).requires_grad_(true);
        inputs[slot] = input;
      }
      if (zero_) zero_->prepare_units(model_.outer_slots(action.chunk), false);
      auto out = model_.forward(input, action.chunk);
      if (last_v) {
        auto loss = torch::cross_entropy_loss(out.reshape({-1, vocab}), batches[mb].narrow(1, 1, T).reshape({-1}));
        loss_sum += loss.item<double>();
        outputs[slot] = loss * (1.0 / static_cast<double>(M));
      } else {
        send(out, next, activation_tag(action.microbatch, u + 1, virtual_stages));
        outputs[slot] = out;
      }
    } else {
      // The stage's last backward completes its gradients: the dp buckets
      // launch from its hooks.
      if (dp_sync_) dp_sync_->begin_backward(i + 1 == actions.size());
      if (zero_) zero_->prepare_units(model_.outer_slots(action.chunk), true);
      if (last_v) {
        outputs[slot].backward();
      } else {
        auto grad = receive({B, t, C}, next, gradient_tag(action.microbatch, u, virtual_stages));
        outputs[slot].backward(grad);
      }
      if (!first_v) send(inputs[slot].grad(), prev, gradient_tag(action.microbatch, u - 1, virtual_stages));
      inputs[slot] = torch::Tensor();  // this micro-batch's activations can go
      outputs[slot] = torch::Tensor();
      if (zero_) zero_->finish_micro_step();  // the shards take this micro-batch's reduce-scatters
    }
  }
  wait_sends();
  timing_.pipeline_s = pipeline_clock.seconds();

  // Gradient sync: the replicas' average (already in flight), then the
  // sequence-parallel partial sums over tp and the tied embedding's two
  // copies (sums commute with the average). Under ZeRO-1 the reduce-scatter
  // comes last: it leaves only the own shard averaged.
  Stopwatch sync_clock;
  if (dp_sync_) sync_data_parallel_gradients();
  if (zero_)
    model_.sync_sequence_parallel_grads([this](int slot) { return zero_gradient_parts(slot); });
  else
    model_.sync_sequence_parallel_grads();
  sum_tied_embedding_gradients();
  if (!dp_sync_) sync_data_parallel_gradients();  // ZeRO-1: the shards need the whole sums first

  // Loss and global norm: each rank adds what it alone accounts for (with
  // ZeRO-1 every dp rank its shard of the averaged gradient).
  const bool counts_loss = mesh_.last_stage() && mesh_.tp_rank() == 0;
  const bool counts_norm = zero_ || shard_block_ > 0 || mesh_.dp_rank() == 0;
  double norm_share = 0;
  if (zero_)
    norm_share = zero_->grad_sum_of_squares([this](int slot) { return model_.counted_in_norm(slot); });
  else if (counts_norm)
    norm_share = model_.grad_sum_of_squares_share(shard_begin_, shard_end_);
  std::vector<double> v = {counts_loss ? loss_sum / static_cast<double>(M) : 0.0, norm_share};
  for (int k = 0; k < kStepRequestKinds; ++k) v.push_back((local_requests_ >> k) & 1u ? 1.0 : 0.0);
  local_requests_ = 0;
  all_reduce_sum(mesh_.world(), v, config_.parallel.timeout_s);
  for (int k = 0; k < kStepRequestKinds; ++k)
    if (v[2 + static_cast<size_t>(k)] > 0) m.requests |= 1u << k;
  const double sync_s = sync_clock.seconds();
  m.loss = v[0] / mesh_.dp_size();
  m.grad_norm = std::sqrt(v[1]);
  if (!std::isfinite(m.grad_norm) || !std::isfinite(m.loss))
    throw Error(fmt::format("step {}: loss {} / gradient norm {} is not finite", step_ + 1, m.loss, m.grad_norm),
                "lower optim.lr, raise optim.warmup_steps, or keep optim.grad_clip on");

  m.lr = lr_at(step_, config_.train.steps, config_.optim.warmup_steps, config_.optim.lr, config_.optim.min_lr);
  {
    const double clip = config_.optim.grad_clip;
    apply_optimizer(m.lr, clip > 0 && m.grad_norm > clip ? clip / (m.grad_norm + 1e-6) : 1.0);
  }
  ++step_;
  m.step = step_;
  m.step_s = step_clock.seconds();
  // Waiting for neighbours and the gradient sync are the exposed
  // communication; the tp all-reduces inside the blocks count as compute.
  m.comm_exposed_s = timing_.bubble_s + sync_s + (zero_ ? zero_->take_comm_wait_s() : 0.0);
  m.comm_s = m.comm_exposed_s;
  m.compute_s = std::max(0.0, m.step_s - m.comm_exposed_s);
  m.bytes_sent = bytes_sent_on(mesh_) - sent_before;
  m.tokens_per_s = static_cast<double>(tokens_per_step()) / m.step_s;
  if (job_peak_flops_ > 0) m.mfu = m.tokens_per_s * flops_per_token_ / job_peak_flops_;
  if (dp_sync_) {
    const auto& t = dp_sync_->last_timing();
    m.extra.emplace_back("dp_buckets", t.buckets);
    m.extra.emplace_back("dp_buckets_overlapped", t.launched_in_backward);  // launched during the last backward
  }
  if (stages > 1) {
    m.extra.emplace_back("pp_bubble_s", timing_.bubble_s);
    m.extra.emplace_back("pp_bubble_share", timing_.bubble_share());
    m.extra.emplace_back("pp_bubble_ideal", ideal_bubble_share());
  }
  return m;
}

std::optional<double> PipelineTrainer::evaluate() {
  if (data_.val().empty()) return std::nullopt;
  torch::NoGradGuard no_grad;
  const int64_t T = config_.model.context, B = config_.train.batch_size, C = config_.model.width;
  const int stage = mesh_.pp_rank(), stages = mesh_.pp_size();
  const int prev = (stage + stages - 1) % stages, next = (stage + 1) % stages;
  const int last_virtual = stages * chunks_ - 1;
  const int64_t count = config_.train.eval_batches * B * mesh_.dp_size();
  auto offsets = eval_offsets(data_.val().size(), T, count, mesh_.dp_rank(), mesh_.dp_size());
  double loss_sum = 0;  // sum of per-window mean losses
  for (size_t begin = 0; begin < offsets.size(); begin += static_cast<size_t>(B)) {
    const size_t n = std::min(offsets.size() - begin, static_cast<size_t>(B));
    std::vector<uint64_t> chunk(offsets.begin() + static_cast<std::ptrdiff_t>(begin),
                                offsets.begin() + static_cast<std::ptrdiff_t>(begin + n));
    auto batch = load_windows(data_.val(), chunk);
    const auto rows = static_cast<int64_t>(n);
    torch::Tensor out;
    for (int v = 0; v < chunks_; ++v) {  // this stage's chunks, in order
      const int u = v * stages + stage;
      auto x = u == 0 ? batch.narrow(1, 0, T) : receive({rows, model_.local_sequence(T), C}, prev, kEvalTag);
      if (zero_) zero_->prepare_units(model_.outer_slots(v), false);
      out = model_.forward(x, v);
      if (u != last_virtual) send(out, next, kEvalTag);
    }
    if (!mesh_.last_stage()) continue;
    auto per_token = torch::cross_entropy_loss(out.reshape({-1, config_.model.vocab_size}),
                                               batch.narrow(1, 1, T).reshape({-1}), {}, at::Reduction::None);
    loss_sum += per_token.view({rows, T}).to(torch::kFloat64).mean(1).sum().item<double>();
  }
  wait_sends();
  const bool counts = mesh_.last_stage() && mesh_.tp_rank() == 0;
  std::vector<double> v = {counts ? loss_sum : 0.0, counts ? static_cast<double>(offsets.size()) : 0.0};
  all_reduce_sum(mesh_.world(), v, config_.parallel.timeout_s);
  return v[1] > 0 ? std::optional<double>(v[0] / v[1]) : std::nullopt;
}

}  // namespace braid::train
