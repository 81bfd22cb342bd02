#pragma once
// The health monitor of a training run ([health], docs/health.md): a
// StepObserver that, on every rank and at the same points of every step,
//
//   after_backward          fingerprints each gradient all-reduce bucket and
//                           compares them across replicas (corruption inside
//                           communication is caught at the step it happens);
//                           a corrupted bucket is replaced by a healthy
//                           rank's copy before the optimizer uses it
//   before_optimizer_apply  the loss / gradient-norm guard: NaN/Inf or a
//                           spike vetoes the update; repeated, it rolls back
//   after_step              fingerprints parameters (+ AdamW moments) and
//                           compares them: with >= 3 replicas the majority
//                           names the minority, which gets the state from a
//                           healthy rank; with 2, the step is recomputed from
//                           a copy of the state before it, and a rank whose
//                           recomputation differs from what it had is named;
//                           stragglers every K steps; live metrics
//
// and injects the faults of [health] inject / --inject, announced as INJECTED.
// Every decision is taken from values all ranks share (all-gathered
// fingerprints, the global loss and norm), so all ranks act alike and the
// collectives stay in step.
//
// Cost per step (data parallel, P parameters): fingerprints read 4P bytes
// of gradients and 12P bytes of state (fraction f of it with a rotating
// slice) at ~10 GB/s; two all-gathers of 8 bytes per bucket / tensor per
// rank. With 2 replicas, a 12P-byte copy of the state before the update.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "health/fault_injection.hpp"
#include "health/metrics_server.hpp"
#include "health/spike_guard.hpp"
#include "health/straggler_detector.hpp"
#include "train/health_config.hpp"
#include "train/trainer.hpp"

namespace braid::train {

// One thing the monitor saw or did (also logged).
struct HealthEvent {
  int64_t step = 0;
  std::string kind;    // "corruption", "repair", "skip", "rollback", "straggler", "injected"
  std::vector<int> ranks;  // the rank(s) named
  std::string what;    // e.g. "parameters", "bucket 3", "loss"
  std::string detail;
};

struct HealthStats {
  int64_t checks = 0;            // fingerprint comparisons (parameters and buckets)
  int64_t corruptions = 0;       // mismatches found
  int64_t repairs = 0;           // replicas repaired (state copied or recomputed)
  int64_t dropped_updates = 0;   // updates dropped because no replica could be trusted
  int64_t skipped_steps = 0;     // by the guard
  int64_t rollbacks = 0;
  int64_t stragglers = 0;        // straggler reports
  int64_t injected = 0;
  double fingerprint_s = 0;      // time spent hashing, this rank
  double exchange_s = 0;         // time in the monitor's collectives, this rank
  double snapshot_s = 0;         // 2 replicas: copying the state before each checked update, this rank
  uint64_t fingerprint_bytes = 0;
};

class HealthMonitor : public StepObserver {
 public:
  // Registers itself with the trainer. All ranks construct it together.
  // `flight_dir`: where flight-recorder dumps go (empty: none). Rank 0
  // serves /metrics when config.metrics_port > 0. Throws ConfigError for bad
  // fault specs.
  HealthMonitor(Trainer& trainer, const HealthConfig& config, std::string flight_dir);
  ~HealthMonitor() override;
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // Loads the newest checkpoint into the trainer (all ranks together) and
  // returns its step, or nullopt when there is none; the guard's rollback.
  void set_rollback(std::function<std::optional<int64_t>()> fn) { rollback_ = std::move(fn); }
  // Where flight-recorder dumps go (`<run dir>/flight`). All ranks call it
  // together: rank 0's directory is the job's (other ranks may not know it).
  void set_flight_dir(const std::string& dir);

  void before_step(Trainer& t) override;
  void after_backward(Trainer& t) override;
  bool before_optimizer_apply(Trainer& t, const StepMetrics& m) override;
  void after_step(Trainer& t, const StepMetrics& m) override;
  // The guard's running statistics start over (its warmup too): a DiLoCo
  // outer step moves the parameters, and the first gradient norms after it
  // are not anomalies of the old trajectory.
  void parameters_replaced(Trainer&) override { guard_.restart(); }

  // Adds this step's health fields to m.extra (metrics.jsonl).
  void annotate(StepMetrics& m) const;

  // Turns the fingerprint checks (state and buckets) on or off from the next
  // step on; every rank must do the same before the same step. For
  // benchmarks that interleave checked and unchecked steps.
  void set_fingerprints(bool on) { config_.fingerprints = config_.bucket_fingerprints = on; }

  const HealthStats& stats() const { return stats_; }
  const std::vector<HealthEvent>& events() const { return events_; }
  int metrics_port() const { return server_ ? server_->port() : 0; }
  health::MetricsRegistry& metrics() { return metrics_; }

 private:
  void event(HealthEvent e, bool warn = true);
  void attach_flight_recorder(Trainer& t);
  std::vector<uint64_t> all_gather_u64(Trainer& t, const std::vector<uint64_t>& mine);
  std::vector<double> all_gather_f64(Trainer& t, const std::vector<double>& mine);
  void broadcast_floats(Trainer& t, float* data, int64_t count, int root);
  std::vector<uint64_t> state_fingerprints(Trainer& t, int64_t check);
  void check_buckets(Trainer& t);
  void check_state(Trainer& t, const StepMetrics& m);
  void recompute_step(Trainer& t, std::vector<uint64_t>& mine);
  void rollback(Trainer& t, const std::string& why);
  void check_stragglers(Trainer& t);
  void inject_flip(Trainer& t, health::FlipTarget target);
  void update_metrics(Trainer& t, const StepMetrics& m);
  int64_t current_step(Trainer& t) const { return t.step() + 1; }

  Trainer& trainer_;
  HealthConfig config_;
  std::string flight_dir_;
  std::vector<health::FaultSpec> faults_;
  health::SpikeGuard guard_;
  health::MetricsRegistry metrics_;
  std::unique_ptr<health::MetricsServer> server_;
  std::function<std::optional<int64_t>()> rollback_;
  comm::Communicator* flight_comm_ = nullptr;

  // Per step.
  bool veto_ = false;            // a corrupted bucket with no majority: drop the update
  bool rollback_due_ = false;
  std::string rollback_why_;
  bool check_due_ = false;
  bool applying_ = false;        // this step's update is applied
  double lr_ = 0, grad_scale_ = 1;
  std::vector<float> before_params_, before_m_, before_v_;  // 2 replicas: the state before the update
  int64_t checks_done_ = 0;
  double step_exchange_s_ = 0;   // this step's time in the monitor's collectives
  double step_slept_s_ = 0;      // injected slowness this step
  double busy_base_s_ = 0;       // un-slowed busy time of the last step (for slow:)
  health::StepTimeWindow window_;
  std::vector<HealthEvent> events_;
  size_t events_annotated_ = 0;
  HealthStats stats_;
};

}  // namespace braid::train
