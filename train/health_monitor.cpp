#include "train/health_monitor.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <thread>

#include "comm/flight_recorder.hpp"
#include "core/checksum.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "health/fingerprint.hpp"

namespace braid::train {
namespace {

// Key of the health guard's statistics among the training state's blobs.
constexpr const char* kGuardBlob = "health_guard";

std::string ranks_text(const std::vector<int>& r) { return fmt::format("{}", fmt::join(r, ", ")); }

// Deterministic "random" choice for a fault without index/bit.
uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t x = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

// Fingerprints compare whole replicas: plain data parallelism, where every
// rank holds every parameter, gradient and moment. Sharded state (ZeRO keeps
// a shard of the moments and, from stage 2, reduce-scatters gradients
// without the all-reduce) is not compared.
bool replicated(Trainer& t) {
  return t.communicator() && t.world_size() > 1 && t.data_parallel().distributed() &&
         t.optimizer().numel() == t.model().params().numel();
}

health::SpikeGuardOptions guard_options(const HealthConfig& c) {
  health::SpikeGuardOptions o;
  o.sigma = c.spike_sigma;
  o.warmup = c.guard_warmup;
  o.rollback_after = c.rollback_after;
  return o;
}

}  // namespace

HealthMonitor::HealthMonitor(Trainer& trainer, const HealthConfig& config, std::string flight_dir)
    : trainer_(trainer),
      config_(config),
      flight_dir_(std::move(flight_dir)),
      faults_(health::parse_fault_specs(config.inject)),
      guard_(guard_options(config)) {
  trainer.add_observer(this);
  trainer.set_nonfinite_guarded(config_.guard);
  // The guard's statistics travel with the training state, so that a worker
  // healed from a peer (or resumed from a checkpoint) judges the next steps
  // as its peers do: under data parallelism every rank must reach the same
  // verdict, or the replicas drift apart.
  if (config_.guard)
    trainer.add_state_blob(kGuardBlob, {[this] { return guard_.save(); }, [this](const std::string& s) { guard_.load(s); }});
  if (config_.flight_recorder && !flight_dir_.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(flight_dir_, ec);
    if (ec) throw IoError(fmt::format("cannot create {}: {}", flight_dir_, ec.message()), "check the run directory");
    comm::FlightRecorder::install_fatal_signal_dump();
    attach_flight_recorder(trainer);
  }
  if (config_.metrics_port != 0 && trainer.rank() == 0) {
    server_ = std::make_unique<health::MetricsServer>(metrics_, std::max<int>(0, static_cast<int>(config_.metrics_port)),
                                                      config_.metrics_bind);
    log::info("health: Prometheus metrics at http://{}:{}/metrics", config_.metrics_bind, server_->port());
  }
  for (const auto& f : faults_)
    if (f.rank == trainer.rank()) log::warn("health: fault injection armed on this rank: {}", f.text);
}

HealthMonitor::~HealthMonitor() { trainer_.remove_state_blob(kGuardBlob); }

void HealthMonitor::set_flight_dir(const std::string& dir) {
  std::string agreed = dir;
  comm::Communicator* c = trainer_.communicator();
  if (c && c->size() > 1) {
    std::vector<char> buf(4096, 0);
    if (c->rank() == 0) std::copy_n(dir.begin(), std::min(dir.size(), buf.size() - 1), buf.begin());
    comm::CollectiveOptions o;
    o.timeout_s = trainer_.config().parallel.timeout_s;
    c->broadcast(buf.data(), buf.size(), DType::U8, 0, o).wait();
    agreed = buf.data();
  }
  flight_dir_ = agreed;
  flight_comm_ = nullptr;
  if (!config_.flight_recorder || flight_dir_.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(flight_dir_, ec);
  if (ec) throw IoError(fmt::format("cannot create {}: {}", flight_dir_, ec.message()), "check the run directory");
  comm::FlightRecorder::install_fatal_signal_dump();
  attach_flight_recorder(trainer_);
}

void HealthMonitor::event(HealthEvent e, bool warn) {
  std::string line = fmt::format("health: step {}: {} {}{}{}", e.step, e.kind, e.what,
                                 e.ranks.empty() ? "" : fmt::format(" (rank {})", ranks_text(e.ranks)),
                                 e.detail.empty() ? "" : ": " + e.detail);
  if (e.kind == "injected") line = "INJECTED FAULT (not a real one): " + line;
  if (warn) log::warn("{}", line);
  else log::info("{}", line);
  events_.push_back(std::move(e));
}

void HealthMonitor::attach_flight_recorder(Trainer& t) {
  comm::Communicator* c = t.communicator();
  if (c == flight_comm_ || !c || flight_dir_.empty() || !config_.flight_recorder) return;
  flight_comm_ = c;
  c->flight_recorder().set_dump_path((std::filesystem::path(flight_dir_) / fmt::format("rank-{}.jsonl", t.rank())).string(),
                                     t.rank());
}

std::vector<uint64_t> HealthMonitor::all_gather_u64(Trainer& t, const std::vector<uint64_t>& mine) {
  comm::Communicator* c = t.communicator();
  if (!c || c->size() == 1) return mine;
  Stopwatch sw;
  std::vector<uint64_t> all(mine.size() * static_cast<size_t>(c->size()));
  comm::CollectiveOptions o;
  o.timeout_s = t.config().parallel.timeout_s;
  c->all_gather(mine.data(), all.data(), mine.size(), DType::I64, o).wait();
  step_exchange_s_ += sw.seconds();
  stats_.exchange_s += sw.seconds();
  return all;
}

std::vector<double> HealthMonitor::all_gather_f64(Trainer& t, const std::vector<double>& mine) {
  comm::Communicator* c = t.communicator();
  if (!c || c->size() == 1) return mine;
  Stopwatch sw;
  std::vector<double> all(mine.size() * static_cast<size_t>(c->size()));
  comm::CollectiveOptions o;
  o.timeout_s = t.config().parallel.timeout_s;
  c->all_gather(mine.data(), all.data(), mine.size(), DType::F64, o).wait();
  step_exchange_s_ += sw.seconds();
  stats_.exchange_s += sw.seconds();
  return all;
}

void HealthMonitor::broadcast_floats(Trainer& t, float* data, int64_t count, int root) {
  comm::CollectiveOptions o;
  o.timeout_s = t.config().parallel.timeout_s;
  Stopwatch sw;
  t.communicator()->broadcast(data, static_cast<size_t>(count), DType::F32, root, o).wait();
  step_exchange_s_ += sw.seconds();
  stats_.exchange_s += sw.seconds();
}

// ---- fault injection ----

void HealthMonitor::before_step(Trainer& t) {
  attach_flight_recorder(t);
  // A rollback decided in the last step runs here, after every observer
  // (checkpoints included) is done with that step.
  if (rollback_due_) {
    rollback_due_ = false;
    rollback(t, rollback_why_);
  }
  step_exchange_s_ = 0;
  step_slept_s_ = 0;
  veto_ = false;
  const int64_t step = current_step(t);
  for (auto& f : faults_) {
    if (!f.at(t.rank(), step)) continue;
    if (f.kind == health::FaultKind::Hang) {
      ++stats_.injected;
      event({step, "injected", {t.rank()}, "hang",
             f.seconds < 0 ? "this rank stops before the step, forever" : fmt::format("this rank stops for {} s", f.seconds)});
      f.step = -2;  // once (a rollback replays step numbers)
      f.count = 0;
      if (f.seconds < 0)
        for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
      std::this_thread::sleep_for(std::chrono::duration<double>(f.seconds));
    } else if (f.kind == health::FaultKind::Crash) {
      ++stats_.injected;
      event({step, "injected", {t.rank()}, "crash", "this rank aborts (SIGABRT) before the step"});
      std::fflush(stderr);
      std::abort();
    }
  }
}

void HealthMonitor::inject_flip(Trainer& t, health::FlipTarget target) {
  const int64_t step = current_step(t);
  auto& params = t.model().params();
  for (auto& f : faults_) {
    if (f.kind != health::FaultKind::BitFlip || f.target != target || !f.at(t.rank(), step)) continue;
    const int64_t n = params.numel();
    const uint64_t r = mix(static_cast<uint64_t>(step), static_cast<uint64_t>(t.rank()) + 17);
    const int64_t index = f.index >= 0 ? f.index % n : static_cast<int64_t>(r % static_cast<uint64_t>(n));
    const int bit = f.bit >= 0 ? f.bit : static_cast<int>((r >> 32) % 32);
    float* base = target == health::FlipTarget::Params ? params.param_data() : params.grad_data();
    health::flip_bit(base + index, sizeof(float), static_cast<uint64_t>(bit));
    std::string where = fmt::format("element {} ({}), bit {}", index, "?", bit);
    for (const auto& s : params.slots())
      if (index >= s.offset && index < s.offset + s.numel) where = fmt::format("element {} ({}), bit {}", index, s.name, bit);
    if (target == health::FlipTarget::Comm)
      for (size_t b = 0; b < t.data_parallel().buckets().size(); ++b) {
        const auto& bk = t.data_parallel().buckets()[b];
        if (index >= bk.begin && index < bk.end) where += fmt::format(" in bucket {}'s all-reduce result", b);
      }
    ++stats_.injected;
    event({step, "injected", {t.rank()}, fmt::format("bitflip in {}", health::flip_target_name(target)), where});
    // Once per step even if a rollback replays this step number.
    if (f.count <= 1) f.step = -2, f.count = 0;
    else ++f.step, --f.count;
  }
}

// ---- gradient buckets ----

void HealthMonitor::after_backward(Trainer& t) {
  const int64_t step = current_step(t);
  // slow: this rank computes `factor` times as long (its measured busy time
  // of the last step, stretched), before anything else waits on it.
  for (const auto& f : faults_)
    if (f.kind == health::FaultKind::Slow && f.at(t.rank(), step) && busy_base_s_ > 0) {
      const double s = (f.factor - 1) * busy_base_s_;
      if (stats_.injected == 0 || step % 50 == 1)
        event({step, "injected", {t.rank()}, "slow", fmt::format("{}x: +{:.1f} ms per step", f.factor, s * 1e3)});
      ++stats_.injected;
      std::this_thread::sleep_for(std::chrono::duration<double>(s));
      step_slept_s_ += s;
    }
  inject_flip(t, health::FlipTarget::Comm);
  if (config_.bucket_fingerprints && replicated(t)) check_buckets(t);
  inject_flip(t, health::FlipTarget::Grads);
  for (auto& f : faults_) {
    // A NaN in one rank's loss reaches every replica through the gradient
    // all-reduce, so every rank applies it (the replicas stay identical: this
    // is the guard's case, not a corruption); it lands in the named rank's
    // share of the gradient-norm sum, so the global norm is NaN.
    if (f.kind != health::FaultKind::Nan || !f.at(f.rank, step) || f.rank >= t.world_size()) continue;
    const int64_t n = t.model().params().numel();
    const int64_t index = n * f.rank / t.world_size();
    t.model().params().grad_data()[index] = std::numeric_limits<float>::quiet_NaN();
    if (f.rank == t.rank()) {
      ++stats_.injected;
      event({step, "injected", {f.rank}, "nan", fmt::format("NaN loss: gradient element {} is NaN on every replica", index)});
    }
    if (f.count <= 1) f.step = -2, f.count = 0;
    else ++f.step, --f.count;
  }
}

void HealthMonitor::check_buckets(Trainer& t) {
  const int64_t step = current_step(t);
  const auto& buckets = t.data_parallel().buckets();
  const float* g = t.model().params().grad_data();
  std::vector<uint64_t> mine;
  Stopwatch sw;
  for (const auto& b : buckets) {
    mine.push_back(health::fingerprint_bytes(g + b.begin, static_cast<size_t>(b.numel()) * sizeof(float)));
    stats_.fingerprint_bytes += static_cast<uint64_t>(b.numel()) * sizeof(float);
  }
  stats_.fingerprint_s += sw.seconds();
  auto all = all_gather_u64(t, mine);
  ++stats_.checks;
  health::Vote vote = health::vote_fingerprints(all, t.world_size());
  if (vote.agree) return;
  ++stats_.corruptions;
  std::vector<std::string> names;
  for (size_t b : vote.differing) names.push_back(fmt::format("{}", b));
  if (!vote.decided) {
    event({step, "corruption", vote.minority, "gradient all-reduce result",
           fmt::format("bucket(s) {} differ between the {} replicas and no majority can tell which is right; the "
                       "step's update is dropped on every rank",
                       fmt::join(names, ", "), t.world_size())});
    veto_ = true;
    ++stats_.dropped_updates;
    t.model().params().zero_grads();  // discarded with the update; keeps the state check quiet
    return;
  }
  event({step, "corruption", vote.minority, "gradient all-reduce result",
         fmt::format("bucket(s) {} differ from the majority; replaced by rank {}'s copy", fmt::join(names, ", "),
                     vote.healthy_rank)});
  float* gw = t.model().params().grad_data();
  for (size_t b : vote.differing)
    broadcast_floats(t, gw + buckets[b].begin, buckets[b].numel(), vote.healthy_rank);
  stats_.repairs += static_cast<int64_t>(vote.minority.size());
  event({step, "repair", vote.minority, "gradient buckets", fmt::format("from rank {}", vote.healthy_rank)}, false);
}

// ---- the guard ----

bool HealthMonitor::before_optimizer_apply(Trainer& t, const StepMetrics& m) {
  const int64_t step = current_step(t);
  lr_ = m.lr;
  const double clip = t.config().optim.grad_clip;
  grad_scale_ = clip > 0 && m.grad_norm > clip ? clip / (m.grad_norm + 1e-6) : 1.0;
  // The state fingerprints of this step (also when the update is vetoed:
  // gradients are compared too).
  check_due_ = config_.fingerprints && replicated(t) && step % config_.fingerprint_every == 0;
  applying_ = false;
  if (veto_) return false;  // a corrupted bucket without a majority (not the guard's business)
  if (config_.guard) {
    std::string why;
    const health::GuardVerdict v = guard_.judge(m.loss, m.grad_norm, &why);
    if (v != health::GuardVerdict::Apply) {
      ++stats_.skipped_steps;
      event({step, "skip", {}, "update", why + (v == health::GuardVerdict::Rollback
                                                    ? fmt::format(" ({} bad steps in a row: rolling back)", guard_.streak())
                                                    : "")});
      if (v == health::GuardVerdict::Rollback) {
        rollback_due_ = true;
        rollback_why_ = why;
      }
      return false;
    }
  } else if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
    throw Error(fmt::format("step {}: loss {} / gradient norm {} is not finite", step, m.loss, m.grad_norm),
                "lower optim.lr, or turn health.guard on to skip such steps");
  }
  applying_ = true;
  // With 2 replicas keep the state before the update, to recompute the step
  // if they disagree after it.
  if (check_due_ && t.world_size() == 2) {
    Stopwatch sw;
    auto& p = t.model().params();
    const float* pd = p.param_data();
    before_params_.assign(pd, pd + p.numel());
    auto mm = t.optimizer().exp_avg();
    auto vv = t.optimizer().exp_avg_sq();
    before_m_.assign(mm.begin(), mm.end());
    before_v_.assign(vv.begin(), vv.end());
    stats_.snapshot_s += sw.seconds();
  }
  return true;
}

// ---- the state after the update ----

std::vector<uint64_t> HealthMonitor::state_fingerprints(Trainer& t, int64_t check) {
  Stopwatch sw;
  auto& p = t.model().params();
  const int64_t n = p.numel();
  auto [begin, end] = health::rotating_slice(n, check, config_.fingerprint_fraction);
  std::vector<uint64_t> fp;
  const float* pd = p.param_data();
  for (const auto& s : p.slots()) {
    const int64_t b = std::max(begin, s.offset), e = std::min(end, s.offset + s.numel);
    fp.push_back(health::fingerprint_bytes(pd + b, static_cast<size_t>(std::max<int64_t>(0, e - b)) * sizeof(float)));
  }
  uint64_t bytes = static_cast<uint64_t>(end - begin) * sizeof(float);
  if (config_.fingerprint_optimizer) {
    auto mm = t.optimizer().exp_avg();
    auto vv = t.optimizer().exp_avg_sq();
    fp.push_back(health::fingerprint_bytes(mm.data() + begin, static_cast<size_t>(end - begin) * sizeof(float)));
    fp.push_back(health::fingerprint_bytes(vv.data() + begin, static_cast<size_t>(end - begin) * sizeof(float)));
    bytes *= 3;
  }
  if (config_.bucket_fingerprints) {
    // Gradients too: one corrupted after its bucket's check but absorbed by
    // the update's rounding would otherwise go unseen.
    fp.push_back(health::fingerprint_bytes(p.grad_data() + begin, static_cast<size_t>(end - begin) * sizeof(float)));
    bytes += static_cast<uint64_t>(end - begin) * sizeof(float);
  }
  // The counters every replica must share.
  const int64_t counters[2] = {t.step(), t.optimizer().step()};
  fp.push_back(health::fingerprint_bytes(counters, sizeof counters));
  stats_.fingerprint_s += sw.seconds();
  stats_.fingerprint_bytes += bytes;
  return fp;
}

void HealthMonitor::after_step(Trainer& t, const StepMetrics& m) {
  const int64_t step = t.step();  // this step, counted
  if (m.applied) {
    // The inject helpers count steps before the increment.
    t.set_step(step - 1);
    inject_flip(t, health::FlipTarget::Params);
    t.set_step(step);
  }
  applying_ = applying_ && m.applied;  // another observer may have vetoed it
  if (check_due_) check_state(t, m);
  check_due_ = false;
  // Busy time: what this rank computed, without waiting for others.
  const double busy = std::max(0.0, m.compute_s - step_exchange_s_);
  busy_base_s_ = std::max(0.0, busy - step_slept_s_);
  window_.add(busy);
  if (config_.straggler_every > 0 && t.communicator() && t.world_size() > 1 && step % config_.straggler_every == 0)
    check_stragglers(t);
  update_metrics(t, m);
}

void HealthMonitor::check_state(Trainer& t, const StepMetrics&) {
  const int64_t step = t.step();
  const int64_t check = checks_done_++;
  std::vector<uint64_t> mine = state_fingerprints(t, check);
  auto all = all_gather_u64(t, mine);
  ++stats_.checks;
  health::Vote vote = health::vote_fingerprints(all, t.world_size());
  if (vote.agree) return;
  ++stats_.corruptions;
  auto& p = t.model().params();
  auto name_of = [&](size_t i) -> std::string {
    if (i < p.slots().size()) return p.slots()[i].name;
    const size_t extra = i - p.slots().size();
    if (config_.fingerprint_optimizer && extra == 0) return "adam_m";
    if (config_.fingerprint_optimizer && extra == 1) return "adam_v";
    if (config_.bucket_fingerprints && extra == (config_.fingerprint_optimizer ? 2u : 0u)) return "gradients";
    return "step counters";
  };
  std::vector<std::string> tensors;
  for (size_t i : vote.differing) tensors.push_back(name_of(i));

  if (vote.decided) {
    event({step, "corruption", vote.minority, "parameters",
           fmt::format("differ from the majority of {} replicas in: {}", t.world_size(), fmt::join(tensors, ", "))});
    // The whole state from a healthy rank (rare; every rank takes part).
    auto mm = t.optimizer().exp_avg();
    auto vv = t.optimizer().exp_avg_sq();
    broadcast_floats(t, p.param_data(), p.numel(), vote.healthy_rank);
    broadcast_floats(t, mm.data(), static_cast<int64_t>(mm.size()), vote.healthy_rank);
    broadcast_floats(t, vv.data(), static_cast<int64_t>(vv.size()), vote.healthy_rank);
    broadcast_floats(t, p.grad_data(), p.numel(), vote.healthy_rank);
    stats_.repairs += static_cast<int64_t>(vote.minority.size());
  } else if (applying_) {
    event({step, "corruption", {}, "parameters",
           fmt::format("the {} replicas differ in: {}; recomputing the step from the state before it",
                       t.world_size(), fmt::join(tensors, ", "))});
    recompute_step(t, mine);
  } else {
    // No update happened: only gradients (discarded anyway) can be told apart.
    event({step, "corruption", {}, "state",
           fmt::format("the {} replicas differ in: {} (no update this step; gradients discarded)", t.world_size(),
                       fmt::join(tensors, ", "))});
    p.zero_grads();
    ++stats_.dropped_updates;
  }
  // Verify: the same slice must agree everywhere now.
  checks_done_ = check;
  mine = state_fingerprints(t, checks_done_++);
  all = all_gather_u64(t, mine);
  if (!health::vote_fingerprints(all, t.world_size()).agree)
    throw CorruptData(fmt::format("step {}: replicas still differ after the repair", step),
                      "a rank keeps corrupting its state: take it out of the job (hardware check)");
  event({step, "repair", vote.decided ? vote.minority : std::vector<int>{}, "parameters",
         vote.decided ? fmt::format("state copied from rank {}; replicas bit-identical again", vote.healthy_rank)
                      : "replicas bit-identical again"},
        false);
}

// 2 replicas: the state before the update is the same on both (it was
// checked at the previous step), and so are the gradients (bucket
// fingerprints), so recomputing the update must give each rank what it
// should have got. The rank whose recomputation differs from what it held is
// the corrupted one. If both recompute what they held, the inputs differed
// (a gradient corrupted after its fingerprint): the update is dropped.
void HealthMonitor::recompute_step(Trainer& t, std::vector<uint64_t>& mine) {
  const int64_t step = t.step();
  if (before_params_.size() != static_cast<size_t>(t.model().params().numel()))
    throw Error("cannot recompute the step: no copy of the state before it");
  auto& p = t.model().params();
  auto mm = t.optimizer().exp_avg();
  auto vv = t.optimizer().exp_avg_sq();
  std::copy(before_params_.begin(), before_params_.end(), p.param_data());
  std::copy(before_m_.begin(), before_m_.end(), mm.begin());
  std::copy(before_v_.begin(), before_v_.end(), vv.begin());
  for (const auto& s : p.slots())
    t.optimizer().update(p.param_data(), p.grad_data(), s.offset, s.offset + s.numel, lr_, grad_scale_, s.decay);
  checks_done_ -= 1;
  std::vector<uint64_t> again = state_fingerprints(t, checks_done_++);
  const uint64_t changed = again != mine ? 1 : 0;
  auto flags = all_gather_u64(t, {changed});
  std::vector<int> culprits;
  for (size_t r = 0; r < flags.size(); ++r)
    if (flags[r]) culprits.push_back(static_cast<int>(r));
  auto agree = health::vote_fingerprints(all_gather_u64(t, again), t.world_size()).agree;
  if (!culprits.empty() && agree) {
    event({step, "corruption", culprits, "parameters", "named by recomputing the step: its state after the update was not what the update computes"});
    stats_.repairs += static_cast<int64_t>(culprits.size());
    mine = again;
    return;
  }
  // No one can be trusted for this update: both go back to the state before it.
  std::copy(before_params_.begin(), before_params_.end(), p.param_data());
  std::copy(before_m_.begin(), before_m_.end(), mm.begin());
  std::copy(before_v_.begin(), before_v_.end(), vv.begin());
  p.zero_grads();
  ++stats_.dropped_updates;
  event({step, "corruption", {0, 1}, "parameters",
         "recomputation reproduces the difference (the inputs of the update differed): the update is dropped on both "
         "replicas"});
}

// ---- rollback ----

void HealthMonitor::rollback(Trainer& t, const std::string& why) {
  const int64_t step = t.step();
  // The data since the checkpoint is skipped: the sampler keeps its place.
  const SamplerPosition data_position = t.sampler().position();
  std::optional<int64_t> to = rollback_ ? rollback_() : std::nullopt;
  if (!to) {
    // Nothing to go back to. The bad updates were not applied, so the model
    // is still the last good one: keep skipping them rather than lose the
    // run; stop only when the bad steps go on (the run is not learning).
    const int64_t stop_at = std::max<int64_t>(10, 5 * config_.rollback_after);
    const char* none = rollback_ ? "no checkpoint saved yet" : "no checkpoint to roll back to";
    if (guard_.streak() >= stop_at)
      throw Error(fmt::format("step {}: {} bad steps in a row ({}) and {}: the run is not learning", step,
                              guard_.streak(), why, none),
                  "lower optim.lr (or raise health.spike_sigma); with checkpoint.dir and checkpoint.every_steps a "
                  "bad window is rolled back instead");
    if (guard_.streak() == config_.rollback_after)
      log::warn("step {}: {} bad steps in a row ({}) and {}: their updates are skipped instead; the run stops if "
                "{} come in a row",
                step, guard_.streak(), why, none, stop_at);
    return;
  }
  t.sampler().restore(data_position);
  guard_.reset_streak();
  ++stats_.rollbacks;
  event({step, "rollback", {}, "to checkpoint",
         fmt::format("state of step {} loaded; training goes on from there with the data after step {} (the window "
                     "in between is skipped)",
                     *to, step)});
}

// ---- stragglers ----

void HealthMonitor::check_stragglers(Trainer& t) {
  const int64_t step = t.step();
  auto all = all_gather_f64(t, {window_.mean()});
  window_.clear();
  const double med = health::median_of(all);
  auto slow = health::find_stragglers(all, config_.straggler_factor);
  size_t worst = 0;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] > all[worst]) worst = r;
  metrics_.set("braid_slowest_rank", static_cast<double>(worst), "rank with the longest compute time, last check");
  metrics_.set("braid_slowest_rank_ratio", med > 0 ? all[worst] / med : 0, "its compute time over the median");
  if (slow.empty()) return;
  ++stats_.stragglers;
  std::vector<std::string> parts;
  for (int r : slow) parts.push_back(fmt::format("rank {} {:.1f} ms ({:.2f}x)", r, all[static_cast<size_t>(r)] * 1e3,
                                                 all[static_cast<size_t>(r)] / med));
  event({step, "straggler", slow, "compute time",
         fmt::format("{} against a median of {:.1f} ms per step over the last {} steps", fmt::join(parts, ", "),
                     med * 1e3, config_.straggler_every)});
}

// ---- metrics ----

void HealthMonitor::update_metrics(Trainer& t, const StepMetrics& m) {
  metrics_.set("braid_step", static_cast<double>(t.step()), "optimizer steps done");
  metrics_.set("braid_loss", m.loss, "training loss of the last step (nats/token)");
  metrics_.set("braid_grad_norm", m.grad_norm, "global gradient norm of the last step");
  metrics_.set("braid_tokens_per_second", m.tokens_per_s, "global training throughput of the last step");
  metrics_.set("braid_step_seconds", m.step_s, "wall time of the last step");
  metrics_.add("braid_bytes_sent_total", static_cast<double>(m.bytes_sent), "bytes sent by this rank");
  metrics_.set("braid_comm_exposed_seconds", m.comm_exposed_s, "communication the last step waited for");
  metrics_.add("braid_comm_exposed_seconds_total", m.comm_exposed_s, "communication the steps waited for");
  metrics_.set("braid_corruptions_total", static_cast<double>(stats_.corruptions), "silent corruptions detected", "counter");
  metrics_.set("braid_recoveries_total", static_cast<double>(stats_.repairs + stats_.rollbacks + stats_.dropped_updates),
               "repairs, dropped updates and rollbacks", "counter");
  metrics_.set("braid_skipped_steps_total", static_cast<double>(stats_.skipped_steps), "updates skipped by the guard", "counter");
  metrics_.set("braid_rollbacks_total", static_cast<double>(stats_.rollbacks), "rollbacks to a checkpoint", "counter");
  metrics_.set("braid_stragglers_total", static_cast<double>(stats_.stragglers), "straggler reports", "counter");
  metrics_.set("braid_injected_faults_total", static_cast<double>(stats_.injected), "faults injected on purpose", "counter");
}

void HealthMonitor::annotate(StepMetrics& m) const {
  m.extra.emplace_back("health_corruptions", static_cast<double>(stats_.corruptions));
  m.extra.emplace_back("health_skipped", static_cast<double>(stats_.skipped_steps));
  m.extra.emplace_back("health_rollbacks", static_cast<double>(stats_.rollbacks));
  m.extra.emplace_back("health_stragglers", static_cast<double>(stats_.stragglers));
}

}  // namespace braid::train
