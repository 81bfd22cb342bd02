#include "train/trainer.hpp"

#include <fmt/format.h>

#include <cmath>

#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::train {
namespace {

int rank_of(comm::Communicator* c) { return c ? c->rank() : 0; }
int size_of(comm::Communicator* c) { return c ? c->size() : 1; }

AdamWHyper hyper_of(const OptimConfig& o) {
  return {o.beta1, o.beta2, o.eps, o.weight_decay};
}

}  // namespace

Trainer::Trainer(const TrainConfig& config, const TokenDataset& data, comm::Communicator* comm)
    : config_(config),
      data_(data),
      comm_(comm),
      rank_(rank_of(comm)),
      world_(size_of(comm)),
      model_(config.model, config.train.seed),
      // Under ZeRO the moments live in the shard-sized ZeroOptimizer; this one
      // only counts Adam's steps.
      optimizer_(config.parallel.zero > 0 ? 0 : model_.num_parameters(), hyper_of(config.optim)),
      sampler_(data.train().size(), config.model.context, config.train.batch_size, rank_, world_,
               config.train.seed),
      // ZeRO 2/3 reduce-scatters gradients itself: no all-reduce then.
      dp_(std::make_unique<DataParallel>(model_.params(), config.parallel.zero >= 2 ? nullptr : comm,
                                         config.parallel)) {
  const auto recompute = parse_recompute_mode(config.parallel.recompute);
  if (config.parallel.zero > 0) {
    zero_ = std::make_unique<ZeroOptimizer>(model_, comm, static_cast<int>(config.parallel.zero), recompute,
                                            hyper_of(config.optim), config.parallel);
  } else if (recompute != RecomputeMode::None) {
    recompute_ = std::make_unique<RecomputeRunner>(recompute);
    model_.set_block_runner(recompute_.get());
  }
}

void Trainer::rebind(comm::Communicator* comm, int64_t batch_size, int64_t grad_accum, double collective_timeout_s) {
  if (zero_)
    throw ConfigError("fault-tolerant training does not support parallel.zero yet",
                      "set parallel.zero = 0 (or fault.enabled = false)");
  dp_.reset();  // its gradient hooks and buckets belong to the old communicator
  comm_ = comm;
  rank_ = rank_of(comm);
  world_ = size_of(comm);
  config_.train.batch_size = batch_size;
  config_.train.grad_accum = grad_accum;
  config_.parallel.timeout_s = collective_timeout_s;
  const SamplerPosition position = sampler_.position();
  sampler_ = BatchSampler(data_.train().size(), config_.model.context, batch_size, rank_, world_, position.seed);
  sampler_.restore(position);
  dp_ = std::make_unique<DataParallel>(model_.params(), comm, config_.parallel);
}

int64_t Trainer::tokens_per_step() const {
  const auto& t = config_.train;
  return t.batch_size * t.grad_accum * static_cast<int64_t>(world_) * config_.model.context;
}

torch::Tensor Trainer::load_windows(std::span<const uint16_t> split, const std::vector<uint64_t>& offsets) {
  const int64_t T = config_.model.context;
  auto batch = torch::empty({static_cast<int64_t>(offsets.size()), T + 1}, torch::kInt64);
  gather_windows(split, offsets, T, batch.data_ptr<int64_t>());
  return batch;
}

StepMetrics Trainer::train_step() {
  for (auto* o : observers_) o->before_step(*this);
  Stopwatch step_clock;
  StepMetrics m;
  const int64_t T = config_.model.context;
  const int64_t accum = config_.train.grad_accum;

  // Micro-steps. Gradients accumulate in the flat buffer; only the last
  // backward launches bucket all-reduces (from the gradient hooks).
  model_.params().zero_grads();
  if (zero_) zero_->begin_step();
  const uint64_t sent_at_start = comm_ && world_ > 1 ? comm_->stats().bytes_sent : 0;
  double local_loss = 0;
  for (int64_t micro = 0; micro < accum; ++micro) {
    auto batch = load_windows(data_.train(), sampler_.next_offsets());
    auto x = batch.narrow(1, 0, T);
    auto y = batch.narrow(1, 1, T);
    auto loss = model_.loss(x, y);
    local_loss += loss.item<double>();
    dp_->begin_backward(micro == accum - 1);
    (loss * (1.0 / static_cast<double>(accum))).backward();
    if (zero_) zero_->finish_micro_step();
  }
  local_loss /= static_cast<double>(accum);

  // Gradient sync: what remains of the all-reduces after backward is exposed.
  dp_->finish_gradient_sync();
  const auto& dp_time = dp_->last_timing();
  m.comm_s = dp_time.comm_s;
  m.comm_exposed_s = dp_time.exposed_s;
  m.bytes_sent = dp_time.bytes_sent;
  for (auto* o : observers_) o->after_backward(*this);

  // Global loss and gradient norm in one small all-reduce. The norm is summed
  // from per-rank shards of the (already identical) gradient: each rank reads
  // 1/N of the buffer, and the result is the same bit pattern on every rank.
  {
    const int64_t n = model_.params().numel();
    const int64_t begin = n * rank_ / world_, end = n * (rank_ + 1) / world_;
    double sumsq = zero_ ? zero_->grad_sum_of_squares() : model_.params().grad_sum_of_squares(begin, end);
    std::vector<double> v = {local_loss, sumsq};
    for (int k = 0; k < kStepRequestKinds; ++k) v.push_back((local_requests_ >> k) & 1u ? 1.0 : 0.0);
    local_requests_ = 0;
    Stopwatch sw;
    uint64_t sent = comm_ && world_ > 1 ? comm_->stats().bytes_sent : 0;
    all_reduce_sum(comm_, v, config_.parallel.timeout_s);
    if (comm_ && world_ > 1) {
      m.comm_s += sw.seconds();
      m.comm_exposed_s += sw.seconds();
      m.bytes_sent += comm_->stats().bytes_sent - sent;
    }
    m.loss = v[0] / world_;
    m.grad_norm = std::sqrt(v[1]);
    for (int k = 0; k < kStepRequestKinds; ++k)
      if (v[2 + static_cast<size_t>(k)] > 0) m.requests |= 1u << k;
  }
  if ((!std::isfinite(m.grad_norm) || !std::isfinite(m.loss)) && !nonfinite_guarded_)
    throw Error(fmt::format("step {}: loss {} / gradient norm {} is not finite", step_ + 1, m.loss, m.grad_norm),
                "lower optim.lr, raise optim.warmup_steps, or keep optim.grad_clip on");

  m.lr = lr_at(step_, config_.train.steps, config_.optim.warmup_steps, config_.optim.lr, config_.optim.min_lr);
  for (auto* o : observers_) m.applied = o->before_optimizer_apply(*this, m) && m.applied;

  if (m.applied) {
    // Clipping folds into the update as a gradient scale (no extra pass).
    const double clip = config_.optim.grad_clip;
    const double scale = clip > 0 && m.grad_norm > clip ? clip / (m.grad_norm + 1e-6) : 1.0;
    torch::NoGradGuard no_grad;
    optimizer_.begin_step();
    if (zero_) {
      zero_->apply(optimizer_.step(), m.lr, scale);  // own shard, then the parameters are gathered
    } else {
      auto& params = model_.params();
      if (params.dtype() != torch::kFloat32) throw Error("the optimizer runs on float32 parameters");
      float* p = params.param_data();
      const float* g = params.grad_data();
      for (const auto& s : params.slots())
        optimizer_.update(p, g, s.offset, s.offset + s.numel, m.lr, scale, s.decay);
    }
  }
  ++step_;
  m.step = step_;
  if (zero_) {
    // ZeRO's collectives outside the bucketed all-reduces: the time blocked
    // on them is exposed; their bytes are in the step's total below.
    const double waited = zero_->take_comm_wait_s();
    m.comm_s += waited;
    m.comm_exposed_s += waited;
  }
  if (comm_ && world_ > 1) m.bytes_sent = comm_->stats().bytes_sent - sent_at_start;

  m.step_s = step_clock.seconds();
  m.compute_s = std::max(0.0, m.step_s - m.comm_exposed_s);
  m.tokens_per_s = static_cast<double>(tokens_per_step()) / m.step_s;
  if (job_peak_flops_ > 0) m.mfu = m.tokens_per_s * model_.flops_per_token() / job_peak_flops_;
  for (auto* o : observers_) o->after_step(*this, m);
  return m;
}

std::optional<double> Trainer::evaluate() {
  if (data_.val().empty()) return std::nullopt;
  torch::NoGradGuard no_grad;
  const int64_t T = config_.model.context, B = config_.train.batch_size;
  const int64_t count = config_.train.eval_batches * B * world_;
  auto offsets = eval_offsets(data_.val().size(), T, count, rank_, world_);
  double loss_sum = 0;  // sum of per-window mean losses
  for (size_t first = 0; first < offsets.size(); first += static_cast<size_t>(B)) {
    size_t n = std::min(offsets.size() - first, static_cast<size_t>(B));
    std::vector<uint64_t> chunk(offsets.begin() + static_cast<std::ptrdiff_t>(first),
                                offsets.begin() + static_cast<std::ptrdiff_t>(first + n));
    auto batch = load_windows(data_.val(), chunk);
    auto logits = model_.logits(batch.narrow(1, 0, T));
    auto per_token = torch::cross_entropy_loss(logits.reshape({-1, config_.model.vocab_size}),
                                               batch.narrow(1, 1, T).reshape({-1}), {},
                                               at::Reduction::None);
    loss_sum += per_token.view({static_cast<int64_t>(n), T}).to(torch::kFloat64).mean(1).sum().item<double>();
  }
  std::vector<double> v = {loss_sum, static_cast<double>(offsets.size())};
  all_reduce_sum(comm_, v, config_.parallel.timeout_s);
  return v[1] > 0 ? std::optional<double>(v[0] / v[1]) : std::nullopt;
}

std::string Trainer::sample_text(int64_t tokens) { return train::sample_text(model_, config_, tokens); }

std::string sample_text(GptModel& model, const TrainConfig& config, int64_t tokens) {
  const auto& t = config.train;
  std::vector<int64_t> prompt;
  if (config.data.format == "bytes") {
    for (unsigned char c : t.sample_prompt) prompt.push_back(c);
  } else {
    prompt.push_back(0);  // token files carry no tokenizer: start from id 0
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(t.seed ^ 0x5a5a5a5aull);
  auto out = model.generate(prompt, tokens, t.sample_temperature, t.sample_top_k, gen);
  std::string text;
  if (config.data.format == "bytes") {
    text = t.sample_prompt;
    for (auto id : out) text += static_cast<char>(id);
  } else {
    for (auto id : out) text += fmt::format("{} ", id);
  }
  return text;
}

}  // namespace braid::train
