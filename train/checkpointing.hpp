#pragma once
// Checkpoints of a training run ([checkpoint] in the config, see
// docs/training.md): resume from the newest valid checkpoint, asynchronous
// saves every N steps or M minutes, a synchronous save when the job is asked
// to stop (SIGTERM / SIGINT), and a save of the last step.
//
// Every rank must save the same steps. Step-based saves agree by
// construction. The timer and the stop signal are seen by each rank at its
// own moment, so a rank only raises a StepRequest; the step's loss
// all-reduce ORs the requests of all ranks (no extra collective) and every
// rank acts on the same answer at the same step boundary.
//
// Cost per save (ckpt/checkpointer.hpp): the snapshot — a memcpy of this
// rank's 1/W share of params + AdamW moments, 12 B per parameter in all —
// blocks the step; the write, checksums, fsync and commit run on a writer
// thread while training goes on. A stop save also waits for the write.
//
//   Checkpointing ck(trainer, config.checkpoint, config.to_toml(), store);
//   if (resume) ck.resume();
//   while (...) { auto m = trainer.train_step(); ck.annotate(m); if (ck.stop_agreed()) break; }
//   ck.finish();
//
// The mesh engine (PipelineTrainer, tp/pp > 1) has no observers: its loop
// calls before_mesh_step() and after_mesh_step() around train_step(). Its
// state (MeshState) is written in the same full-model layout as TrainState's,
// so a checkpoint of either engine loads into the other at any world size.
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "ckpt/checkpointer.hpp"
#include "ckpt/loader.hpp"
#include "net/store.hpp"
#include "train/train_state.hpp"
#include "train/trainer.hpp"

namespace braid::train {

class PipelineTrainer;

// Seams for tests: stand-ins for the process-wide signal flag and the clock.
struct CheckpointingHooks {
  // Whether this rank was asked to stop (default: ckpt::stop_requested(), the
  // flag of ckpt::install_stop_signal_handlers()).
  std::function<bool()> stop_requested;
  // Replaces the every_minutes timer when set: whether a time-based save is
  // due on this rank now.
  std::function<bool()> time_due;
  // Passed to ckpt (runs on the writer thread before each write).
  std::function<void(int64_t step)> before_write;
  // fsync files and directories (false only for throwaway test data).
  bool durable = true;
};

class Checkpointing : public StepObserver {
 public:
  // Registers itself as an observer of `trainer`. All ranks construct it
  // together (the ranks exchange what they hold through `store`, which may be
  // null for a world of one). `run_config` is the resolved config text stored
  // in every manifest (what `braid sample` reads). Throws ConfigError for an
  // unusable [checkpoint] section, IoError when the directory cannot be made.
  Checkpointing(Trainer& trainer, const CheckpointConfig& config, std::string run_config,
                std::shared_ptr<net::Store> store, CheckpointingHooks hooks = {});
  // The same for the mesh engine (every rank of the mesh's world together).
  Checkpointing(PipelineTrainer& trainer, const CheckpointConfig& config, std::string run_config,
                std::shared_ptr<net::Store> store, CheckpointingHooks hooks = {});
  ~Checkpointing() override;
  Checkpointing(const Checkpointing&) = delete;
  Checkpointing& operator=(const Checkpointing&) = delete;

  // --resume: loads the newest valid checkpoint (falling back past damaged
  // ones with a warning naming the file and tensor) into the trainer: params,
  // AdamW moments and step, the step count and the sampler position, at any
  // world size. nullopt when the directory has no checkpoint (a fresh start).
  // All ranks call it together, before the first step. Throws CorruptData
  // when checkpoints exist but none is valid, ConfigError when they belong to
  // another model.
  std::optional<ckpt::LoadedCheckpoint> resume();

  void after_backward(Trainer& trainer) override;
  void after_step(Trainer& trainer, const StepMetrics& m) override;
  // The mesh engine's seams: before_mesh_step raises this rank's requests
  // (stop signal, timer), which the step's world all-reduce agrees on;
  // after_mesh_step saves as after_step does.
  void before_mesh_step(PipelineTrainer& trainer);
  void after_mesh_step(PipelineTrainer& trainer, const StepMetrics& m);

  // True once the ranks agreed to stop (a stop signal); the step they stopped
  // at is then committed (saved synchronously).
  bool stop_agreed() const { return stopped_; }
  // Saves the last step (checkpoint.at_end) unless it is already saved, then
  // waits for the save in flight. Throws IoError when that save failed.
  void finish();
  // Adds this step's checkpoint fields to m.extra (metrics.jsonl): see
  // docs/training.md for their meaning.
  void annotate(StepMetrics& m);

  // Saves the current step synchronously, as on a stop (for tools and
  // benchmarks; every rank must call it at the same step). Throws IoError.
  void save_now();
  // Waits until no save is in flight; the outcome of the last save.
  ckpt::SaveOutcome wait() { return checkpointer_->wait(); }
  ckpt::CheckpointStats stats() const { return checkpointer_->stats(); }
  // Training time the saves blocked, synchronous saves included whole.
  // The "checkpoint" object of summary.json (both engines write the same).
  nlohmann::ordered_json summary_json(std::optional<int64_t> resumed_from, int64_t last_step,
                                      bool stopped_by_signal) const;
  double blocked_total_s() const { return blocked_total_s_; }
  double blocked_max_s() const { return blocked_max_s_; }
  const ckpt::Checkpointer& checkpointer() const { return *checkpointer_; }
  const CheckpointState& state() const { return *state_; }
  // The newest step saved by this job (committed, or being written); -1: none.
  int64_t last_saved_step() const { return last_saved_step_; }
  std::optional<int64_t> resumed_step() const { return resumed_step_; }
  const CheckpointConfig& config() const { return config_; }

 private:
  // What Checkpointing needs of an engine besides its state.
  struct Engine {
    int rank = 0;
    int world = 1;
    int64_t total_steps = 0;
    std::function<int64_t()> step;
  };
  Checkpointing(std::unique_ptr<CheckpointState> state, Engine engine, const CheckpointConfig& config,
                std::string run_config, std::shared_ptr<net::Store> store, CheckpointingHooks hooks);
  // The requests (StepRequest bits) this rank raises now.
  uint32_t due_requests();
  void on_step_end(const StepMetrics& m);
  ckpt::SaveRequest request_for(int64_t step) const;
  void save(int64_t step, bool synchronous, const char* why);

  Engine engine_;
  CheckpointConfig config_;
  std::string run_config_;
  std::shared_ptr<net::Store> store_;
  CheckpointingHooks hooks_;
  std::unique_ptr<CheckpointState> state_;
  std::unique_ptr<ckpt::Checkpointer> checkpointer_;
  int64_t last_save_ns_ = 0;
  int64_t last_saved_step_ = -1;
  std::optional<int64_t> resumed_step_;
  bool stopped_ = false;

  // What the last after_step did, for annotate().
  struct StepRecord {
    int64_t step = -1;
    bool requested = false;
    bool started = false;
    bool synchronous = false;
    double blocked_s = 0;
    double wait_s = 0;
  } record_;
  // Training time blocked by saves, synchronous ones whole (ckpt's own
  // stats count only the wait and the snapshot).
  double blocked_total_s_ = 0;
  double blocked_max_s_ = 0;
  int64_t reported_commits_ = 0;
  int64_t reported_failures_ = 0;
};

}  // namespace braid::train
