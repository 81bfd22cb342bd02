#include "train/diloco.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::train {

DilocoGroups DilocoGroups::make(const DilocoConfig& config, comm::Communicator* world) {
  DilocoGroups g;
  const int n = world ? world->size() : 1;
  config.resolve(n, g.replicas, g.workers_per_replica);
  if (!world) return g;
  g.global_rank = world->rank();
  g.global_world = n;
  const int W = g.workers_per_replica;
  g.replica = g.global_rank / W;
  g.worker = g.global_rank % W;
  std::vector<int> inner, outer;
  for (int j = 0; j < W; ++j) inner.push_back(g.replica * W + j);
  for (int r = 0; r < g.replicas; ++r) outer.push_back(r * W + g.worker);
  // Same order on every rank: inner first, then outer.
  g.inner = world->subgroup(inner);
  g.outer = world->subgroup(outer);
  return g;
}

namespace {

// Contiguous runs of parameter tensors with about equal element counts; each
// fragment gets at least one tensor.
std::vector<std::pair<int64_t, int64_t>> split_fragments(const std::vector<ParamSlot>& slots, int64_t total,
                                                         int64_t fragments) {
  if (fragments > static_cast<int64_t>(slots.size()))
    throw ConfigError(fmt::format("'diloco.fragments' = {} is more than the model's {} parameter tensors",
                                  fragments, slots.size()),
                      "a fragment is a run of whole tensors; use fewer fragments");
  std::vector<std::pair<int64_t, int64_t>> out;
  size_t next = 0;
  for (int64_t f = 0; f < fragments; ++f) {
    const int64_t target = total * (f + 1) / fragments;
    const size_t must_leave = static_cast<size_t>(fragments - f - 1);
    const int64_t begin = slots[next].offset;
    size_t end = next + 1;  // one past the last slot of this fragment
    while (end + must_leave < slots.size() &&
           std::llabs(slots[end].offset + slots[end].numel - target) <= std::llabs(slots[end].offset - target))
      ++end;
    if (f == fragments - 1) end = slots.size();
    out.emplace_back(begin, slots[end - 1].offset + slots[end - 1].numel);
    next = end;
  }
  return out;
}

}  // namespace

Diloco::Diloco(const DilocoConfig& config, Trainer& trainer, DilocoGroups& groups, size_t train_tokens)
    : config_(config), trainer_(trainer), groups_(groups), codec_(comm::codec(config.codec)) {
  if (config_.inner_steps < 1)
    throw ConfigError(fmt::format("'diloco.inner_steps' = {} is below 1", config_.inner_steps),
                      "use the number of local steps between syncs, e.g. 50");
  auto& params = trainer_.model().params();
  const int64_t n = params.numel();
  fragments_ = split_fragments(params.slots(), n, config_.fragments);
  pending_.resize(fragments_.size());
  synced_at_.assign(fragments_.size(), 0);
  sync_.assign(params.param_data(), params.param_data() + n);
  momentum_.assign(static_cast<size_t>(n), 0.0f);
  delta_.assign(static_cast<size_t>(n), 0.0f);
  if (config_.error_feedback) residual_.assign(static_cast<size_t>(n), 0.0f);
  outer_ = groups_.outer.get();
  train_tokens_ = train_tokens;
  set_data_share(groups_.global_rank, groups_.global_world);
  trainer_.add_observer(this);
}

void Diloco::set_data_share(int replica, int replicas) {
  const auto& t = trainer_.config();
  const SamplerPosition position = trainer_.sampler().position();
  trainer_.sampler() = BatchSampler(train_tokens_, t.model.context, t.train.batch_size, replica, replicas, position.seed);
  trainer_.sampler().restore(position);
}

void Diloco::drive_externally() {
  // TrainConfig refuses [fault] with a delay or several workers per replica.
  if (config_.delay != 0 || groups_.workers_per_replica != 1)
    throw Error("outer rounds driven from outside need diloco.delay = 0 and one worker per replica",
                "this is a bug in braid's configuration checks; please report it");
  external_ = true;
}

std::vector<int> Diloco::fragments_due(int64_t s) const {
  std::vector<int> out;
  if (s <= 0) return out;
  const bool last = s >= trainer_.config().train.steps;
  for (int f = 0; f < fragments(); ++f)
    if (last || due(f, s)) out.push_back(f);
  return out;
}

void Diloco::bind_outer(comm::Communicator* outer) {
  if (outer_ && outer_ != outer) bytes_of_unbound_ += outer_->stats().bytes_sent;
  outer_ = outer;
  count_bytes();
}

void Diloco::count_bytes() { stats_.bytes_wan = bytes_of_unbound_ + (outer_ ? outer_->stats().bytes_sent : 0); }

void Diloco::add_outer_state(TrainState& state) {
  state.add_buffer("diloco_sync", sync_.data(), static_cast<int64_t>(sync_.size()));
  state.add_buffer("diloco_momentum", momentum_.data(), static_cast<int64_t>(momentum_.size()));
}

Diloco::~Diloco() {
  // Outer all-reduces still in flight read delta_: let them end (each is
  // bounded by its deadline) before the buffers go.
  for (auto& p : pending_)
    if (p.active) {
      try {
        p.work.wait();
      } catch (...) {
      }
    }
}

bool Diloco::due(int f, int64_t step) const {
  const int64_t H = config_.inner_steps, F = static_cast<int64_t>(fragments_.size());
  return step > 0 && step % H == ((f + 1) * H / F) % H;
}

std::pair<int64_t, int64_t> Diloco::own_slice(int f) const {
  const auto [b, e] = fragments_[static_cast<size_t>(f)];
  const int64_t W = groups_.workers_per_replica, slice = (e - b + W - 1) / W;
  const int64_t lo = std::min(e, b + groups_.worker * slice), hi = std::min(e, lo + slice);
  return {lo, hi};
}

void Diloco::compute_delta(int f) {
  const auto [lo, hi] = own_slice(f);
  const float* theta = trainer_.model().params().param_data();
  for (int64_t i = lo; i < hi; ++i) delta_[static_cast<size_t>(i)] = sync_[static_cast<size_t>(i)] - theta[i];
}

comm::Work Diloco::reduce_outer(float* d, size_t n, comm::ReduceOp op) {
  if (outer_) {
    comm::CollectiveOptions o;
    o.codec = &codec_;
    o.timeout_s = trainer_.config().parallel.timeout_s;
    return outer_->all_reduce(d, d, n, DType::F32, op, o);
  }
  // One process: what the codec carries, as a one-rank all-reduce would give.
  encode_scratch_.resize(codec_.encoded_bytes(n) + 64);
  codec_.encode(d, n, encode_scratch_.data());
  codec_.decode(encode_scratch_.data(), n, d);
  return comm::Work();
}

void Diloco::launch(int f, int64_t step) {
  const auto [lo, hi] = own_slice(f);
  const size_t n = static_cast<size_t>(hi - lo);
  compute_delta(f);
  float* d = delta_.data() + lo;
  if (config_.error_feedback) {
    encode_scratch_.resize(codec_.encoded_bytes(n) + 64);
    comm::add_error_feedback(codec_, d, residual_.data() + lo, n, encode_scratch_.data());
  }
  Pending& p = pending_[static_cast<size_t>(f)];
  p.work = reduce_outer(d, n);
  p.active = true;
  p.apply_at = step + config_.delay;
}

void Diloco::apply(int f) {
  Pending& p = pending_[static_cast<size_t>(f)];
  Stopwatch wait_clock;
  p.active = false;
  p.work.wait();  // rethrows PeerLost, Timeout, ... of the slow link
  stats_.outer_wait_s += wait_clock.seconds();
  update(f);
}

void Diloco::update(int f) {
  Stopwatch apply_clock;
  const auto [lo, hi] = own_slice(f);
  const float mu = static_cast<float>(config_.outer_momentum), lr = static_cast<float>(config_.outer_lr);
  for (int64_t i = lo; i < hi; ++i) {
    const size_t k = static_cast<size_t>(i);
    const float g = delta_[k];
    momentum_[k] = mu * momentum_[k] + g;
    const float step = config_.nesterov ? g + mu * momentum_[k] : momentum_[k];
    sync_[k] -= lr * step;
  }
  const auto [b, e] = fragments_[static_cast<size_t>(f)];
  const int64_t W = groups_.workers_per_replica;
  if (W > 1) {
    // Each worker updated its slice; the replica's workers exchange them over the fast link.
    const int64_t slice = (e - b + W - 1) / W;
    gather_.assign(static_cast<size_t>(slice * W), 0.0f);
    float* mine = gather_.data() + groups_.worker * slice;
    std::memcpy(mine, sync_.data() + lo, static_cast<size_t>(hi - lo) * 4);
    groups_.inner->all_gather(mine, gather_.data(), static_cast<size_t>(slice), DType::F32).wait();
    std::memcpy(sync_.data() + b, gather_.data(), static_cast<size_t>(e - b) * 4);
  }
  std::memcpy(trainer_.model().params().param_data() + b, sync_.data() + b, static_cast<size_t>(e - b) * 4);
  synced_at_[static_cast<size_t>(f)] = trainer_.step();
  ++stats_.outer_rounds;
  trainer_.notify_parameters_replaced();  // e.g. the health guard's statistics start over
  stats_.outer_apply_s += apply_clock.seconds();
}

void Diloco::after_step(Trainer& t, const StepMetrics&) {
  const int64_t s = t.step();
  for (int f = 0; f < fragments(); ++f)
    if (pending_[static_cast<size_t>(f)].active && pending_[static_cast<size_t>(f)].apply_at <= s) apply(f);
  if (external_) return;  // the caller runs the rounds (fault tolerance)
  if (s >= t.config().train.steps) {
    sync_all();
  } else if (config_.delay == 0) {
    if (auto due_now = fragments_due(s); !due_now.empty()) sync_now(due_now);
  } else {
    for (int f = 0; f < fragments(); ++f)
      if (due(f, s)) launch(f, s);
  }
  count_bytes();
}

void Diloco::sync_all() {
  const int64_t s = trainer_.step();
  for (int f = 0; f < fragments(); ++f)
    if (pending_[static_cast<size_t>(f)].active) apply(f);
  std::vector<int> unsynced;
  for (int f = 0; f < fragments(); ++f)
    if (synced_at_[static_cast<size_t>(f)] != s) unsynced.push_back(f);
  if (!unsynced.empty()) sync_now(unsynced);
  count_bytes();
}

void Diloco::sync_now(const std::vector<int>& fragments) {
  reduce_round(fragments, true, outer_ ? outer_->size() : 1);
  apply_round(true);
}

void Diloco::reduce_round(const std::vector<int>& fragments, bool contribute, int contributors) {
  const int replicas = outer_ ? outer_->size() : 1;
  if (contributors < 1 || contributors > replicas)
    throw Error(fmt::format("an outer round with {} contributing replica(s) out of {}", contributors, replicas),
                "this is a bug in braid's DiLoCo; please report it");
  // Every rank lays out the same fragments in the same order, so the fused
  // all-reduce (and the codec's chunks, and error feedback over them) is the
  // same on all of them.
  size_t total = 0;
  for (int f : fragments) {
    const auto [lo, hi] = own_slice(f);
    total += static_cast<size_t>(hi - lo);
  }
  fused_.assign(total, 0.0f);
  if (config_.error_feedback) fused_residual_.resize(total);
  if (contribute) {
    size_t at = 0;
    for (int f : fragments) {
      compute_delta(f);
      const auto [lo, hi] = own_slice(f);
      const size_t n = static_cast<size_t>(hi - lo);
      std::memcpy(fused_.data() + at, delta_.data() + lo, n * 4);
      if (config_.error_feedback) std::memcpy(fused_residual_.data() + at, residual_.data() + lo, n * 4);
      at += n;
    }
    if (config_.error_feedback) {
      encode_scratch_.resize(codec_.encoded_bytes(total) + 64);
      comm::add_error_feedback(codec_, fused_.data(), fused_residual_.data(), total, encode_scratch_.data());
    }
  }
  // Everyone contributed: the codec ring's average. A joiner contributed
  // zeros: the sum over the ring, divided by the replicas that trained (every
  // rank decodes the same bytes and divides them alike, so all stay identical).
  const bool everyone = contributors == replicas;
  Stopwatch wait_clock;
  reduce_outer(fused_.data(), total, everyone ? comm::ReduceOp::Avg : comm::ReduceOp::Sum).wait();
  stats_.outer_wait_s += wait_clock.seconds();
  if (!everyone)
    for (float& x : fused_) x /= static_cast<float>(contributors);
  round_ = fragments;
  count_bytes();
}

void Diloco::apply_round(bool contributed) {
  size_t at = 0;
  for (int f : round_) {
    const auto [lo, hi] = own_slice(f);
    const size_t n = static_cast<size_t>(hi - lo);
    std::memcpy(delta_.data() + lo, fused_.data() + at, n * 4);
    if (contributed && config_.error_feedback) std::memcpy(residual_.data() + lo, fused_residual_.data() + at, n * 4);
    at += n;
    update(f);
  }
  if (!contributed)
    std::memcpy(trainer_.model().params().param_data(), sync_.data(), sync_.size() * 4);
  round_.clear();
}

void Diloco::annotate(StepMetrics& m) const {
  m.extra.emplace_back("diloco_bytes_wan", static_cast<double>(stats_.bytes_wan));
  m.extra.emplace_back("diloco_outer_rounds", static_cast<double>(stats_.outer_rounds));
  m.extra.emplace_back("diloco_outer_wait_s", stats_.outer_wait_s);
}

}  // namespace braid::train
