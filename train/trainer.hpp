#pragma once
// One rank's training step, readable top to bottom (train_step()):
//
//   before_step            observers (fault tolerance: join / quorum)
//   micro-steps            zero grads; for each micro-step: batch, forward,
//                          backward — the last one's backward launches the
//                          bucket all-reduces from gradient hooks
//   gradient sync          wait for the buckets (exposed communication)
//   after_backward         observers see the averaged gradients (SDC hashes)
//   loss + grad norm       one small all-reduce: global loss, global norm and
//                          the StepRequests any rank raised (save, stop)
//   before_optimizer_apply observers may veto the update (commit vote, spikes)
//   optimizer              clipped AdamW over the flat buffers
//   after_step             observers (checkpoints, metrics)
//
// State that a checkpoint needs is explicit: the flat parameter buffer, the
// optimizer's flat moments and step, the sampler position and the step count.
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.hpp"
#include "train/batch_sampler.hpp"
#include "train/data_parallel.hpp"
#include "train/flat_adamw.hpp"
#include "train/gpt_model.hpp"
#include "train/recompute.hpp"
#include "train/token_dataset.hpp"
#include "train/train_config.hpp"
#include "train/zero.hpp"

namespace braid::train {

// Requests that every rank must act on at the same step although each rank
// notices them on its own (a timer, a stop signal): a rank raises one with
// Trainer::request() at any time; the OR over all ranks rides along in the
// step's loss all-reduce (no extra collective), so StepMetrics::requested()
// gives every rank the same answer for the same step.
enum class StepRequest : uint32_t { Checkpoint = 0, Stop = 1 };
constexpr int kStepRequestKinds = 2;

struct StepMetrics {
  int64_t step = 0;               // number of optimizer steps done, this one included
  double loss = 0;                // mean training loss over the global batch (nats/token)
  std::optional<double> val_loss;  // filled by the caller when it evaluates
  double lr = 0;
  double grad_norm = 0;           // global L2 norm of the averaged gradient, before clipping
  double step_s = 0;              // wall time of the step
  double tokens_per_s = 0;        // global tokens (all ranks) per second
  double mfu = 0;                 // model FLOPs utilisation against the measured peak
  double compute_s = 0;           // step_s minus exposed communication
  double comm_s = 0;              // communication in flight during the step
  double comm_exposed_s = 0;      // communication the step waited for
  uint64_t bytes_sent = 0;        // by this rank
  bool applied = true;            // false if an observer vetoed the update
  uint32_t requests = 0;          // StepRequest bits raised by any rank before this step's all-reduce
  // Numbers other features attach to the step (checkpoint timings, ...);
  // metrics.jsonl carries them as extra fields.
  std::vector<std::pair<std::string, double>> extra;

  bool requested(StepRequest r) const { return (requests >> static_cast<uint32_t>(r)) & 1u; }
};

class Trainer;

// Seams for the features built on the engine; every hook defaults to nothing.
class StepObserver {
 public:
  virtual ~StepObserver() = default;
  virtual void before_step(Trainer&) {}
  // Gradients are complete and averaged over the ranks.
  virtual void after_backward(Trainer&) {}
  // Return false to skip this step's update (gradients are then discarded).
  virtual bool before_optimizer_apply(Trainer&, const StepMetrics&) { return true; }
  virtual void after_step(Trainer&, const StepMetrics&) {}
  // The parameters were replaced from outside the optimizer on every rank of
  // this trainer at once (a DiLoCo outer step): what an observer learned
  // about the old trajectory (e.g. the guard's running gradient norm) no
  // longer applies.
  virtual void parameters_replaced(Trainer&) {}
};

class Trainer {
 public:
  // comm may be null (one process). The dataset must outlive the trainer.
  Trainer(const TrainConfig& config, const TokenDataset& data, comm::Communicator* comm);

  // One optimizer step: grad_accum micro-steps, gradient sync, update.
  StepMetrics train_step();
  // Mean validation loss over the fixed validation windows, across ranks
  // (bit-identical on every rank). nullopt when there is no validation split.
  std::optional<double> evaluate();
  // Text generated from the configured prompt with the configured sampler
  // settings (deterministic for a given seed and parameters). Local: no comm.
  std::string sample_text(int64_t tokens);

  void add_observer(StepObserver* o) { observers_.push_back(o); }
  // Extra state that travels with the training state (TrainState's blobs:
  // checkpoints and heals), e.g. the health guard's running statistics:
  // `save` gives it as a string, `load` takes one back. A name registered
  // again replaces the hooks; the owner removes them before it goes away.
  struct StateBlobHooks {
    std::function<std::string()> save;
    std::function<void(const std::string&)> load;
  };
  void add_state_blob(const std::string& name, StateBlobHooks hooks) { state_blobs_[name] = std::move(hooks); }
  void remove_state_blob(const std::string& name) { state_blobs_.erase(name); }
  const std::map<std::string, StateBlobHooks>& state_blobs() const { return state_blobs_; }
  // Tells every observer that the parameters were replaced (see StepObserver).
  void notify_parameters_replaced() {
    for (auto* o : observers_) o->parameters_replaced(*this);
  }
  // Raises a request for agreement in the next step's all-reduce (see StepRequest).
  void request(StepRequest r) { local_requests_ |= 1u << static_cast<uint32_t>(r); }
  // Peak of the whole job (sum over ranks), for MFU; 0 leaves MFU at 0.
  void set_job_peak_flops(double flops_per_s) { job_peak_flops_ = flops_per_s; }
  // An observer (the health guard) vetoes steps whose loss or gradient norm
  // is not finite; without one such a step throws.
  void set_nonfinite_guarded(bool on) { nonfinite_guarded_ = on; }

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int64_t tokens_per_step() const;  // global
  const TrainConfig& config() const { return config_; }
  GptModel& model() { return model_; }
  FlatAdamW& optimizer() { return optimizer_; }
  BatchSampler& sampler() { return sampler_; }
  DataParallel& data_parallel() { return *dp_; }
  // ZeRO (parallel.zero >= 1, train/zero.hpp): owns the optimizer state (and
  // for stages 2/3 the gradients / parameters); null for plain data parallelism.
  ZeroOptimizer* zero() { return zero_.get(); }
  comm::Communicator* communicator() { return comm_; }
  // Moves the trainer to another communicator (fault tolerance: a new epoch
  // with other members): data parallelism, rank and world follow it, the
  // sampler keeps its global position, and the per-rank micro-batch, the
  // accumulation and the collective deadline become the given ones.
  void rebind(comm::Communicator* comm, int64_t batch_size, int64_t grad_accum, double collective_timeout_s);

 private:
  torch::Tensor load_windows(std::span<const uint16_t> split, const std::vector<uint64_t>& offsets);

  TrainConfig config_;
  const TokenDataset& data_;
  comm::Communicator* comm_;
  int rank_ = 0;
  int world_ = 1;
  GptModel model_;
  FlatAdamW optimizer_;
  BatchSampler sampler_;
  std::unique_ptr<DataParallel> dp_;  // rebuilt by rebind()
  std::unique_ptr<ZeroOptimizer> zero_;         // parallel.zero >= 1
  std::unique_ptr<RecomputeRunner> recompute_;  // parallel.recompute without ZeRO
  std::vector<StepObserver*> observers_;
  std::map<std::string, StateBlobHooks> state_blobs_;
  int64_t step_ = 0;
  double job_peak_flops_ = 0;
  bool nonfinite_guarded_ = false;
  uint32_t local_requests_ = 0;
};

// Text generated by `model` from config.train's prompt and sampler settings
// (deterministic for a given seed and parameters); what Trainer::sample_text
// and the mesh engine's end-of-run sample use.
std::string sample_text(GptModel& model, const TrainConfig& config, int64_t tokens);

}  // namespace braid::train
