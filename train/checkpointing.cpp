#include "train/checkpointing.hpp"

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include <algorithm>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/save_schedule.hpp"
#include "core/bytes.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "train/mesh_state.hpp"
#include "train/pipeline_trainer.hpp"

namespace braid::train {

namespace {

ckpt::CheckpointOptions options_of(const CheckpointConfig& c, const CheckpointingHooks& hooks) {
  ckpt::CheckpointOptions o;
  o.dir = c.dir;
  o.keep_last = static_cast<int>(c.keep_last);
  o.if_busy = ckpt::parse_busy_policy(c.if_busy);
  o.block_bytes = c.block_bytes;
  o.commit_timeout_s = c.commit_timeout_s;
  o.durable = hooks.durable;
  o.before_write = hooks.before_write;
  return o;
}

}  // namespace

Checkpointing::Checkpointing(std::unique_ptr<CheckpointState> state, Engine engine, const CheckpointConfig& config,
                             std::string run_config, std::shared_ptr<net::Store> store, CheckpointingHooks hooks)
    : engine_(std::move(engine)),
      config_(config),
      run_config_(std::move(run_config)),
      store_(std::move(store)),
      hooks_(std::move(hooks)),
      state_(std::move(state)) {
  if (!config_.enabled())
    throw ConfigError("checkpointing needs a directory", "set checkpoint.dir (a directory every rank can see)");
  checkpointer_ = std::make_unique<ckpt::Checkpointer>(options_of(config_, hooks_), state_->layout(), state_->held(),
                                                       engine_.rank, engine_.world, store_);
  last_save_ns_ = now_ns();
}

Checkpointing::Checkpointing(Trainer& trainer, const CheckpointConfig& config, std::string run_config,
                             std::shared_ptr<net::Store> store, CheckpointingHooks hooks)
    : Checkpointing(std::make_unique<TrainState>(trainer),
                    Engine{trainer.rank(), trainer.world_size(), trainer.config().train.steps,
                           [&trainer] { return trainer.step(); }},
                    config, std::move(run_config), std::move(store), std::move(hooks)) {
  trainer.add_observer(this);
}

Checkpointing::Checkpointing(PipelineTrainer& trainer, const CheckpointConfig& config, std::string run_config,
                             std::shared_ptr<net::Store> store, CheckpointingHooks hooks)
    : Checkpointing(std::make_unique<MeshState>(trainer),
                    Engine{trainer.mesh().world() ? trainer.mesh().world()->rank() : 0,
                           trainer.mesh().world() ? trainer.mesh().world()->size() : 1, trainer.config().train.steps,
                           [&trainer] { return trainer.step(); }},
                    config, std::move(run_config), std::move(store), std::move(hooks)) {}

// The Checkpointer's destructor waits for the save in flight, so a save
// started just before an exception still commits (or fails) cleanly.
Checkpointing::~Checkpointing() = default;

std::optional<ckpt::LoadedCheckpoint> Checkpointing::resume() {
  const bool lead = engine_.rank == 0;
  ckpt::LoadOptions lo;
  lo.store = store_;
  lo.rank = engine_.rank;
  lo.world = engine_.world;
  lo.timeout_s = config_.commit_timeout_s;
  auto loaded = ckpt::load_latest(config_.dir, state_->layout(), state_->read_targets(), lo);
  if (!loaded) {
    if (lead) log::info("resume: {} holds no checkpoint yet, starting from step 0", config_.dir);
    return std::nullopt;
  }
  state_->after_load();
  state_->restore({loaded->global_blobs, loaded->rank_blobs});
  const int64_t step = engine_.step();
  if (step != loaded->step)
    throw CorruptData(fmt::format("checkpoint {} is of step {} but its training state says step {}", loaded->path,
                                  loaded->step, step),
                      "the checkpoint is inconsistent; move it aside to resume from the previous one");
  resumed_step_ = loaded->step;
  last_saved_step_ = loaded->step;
  last_save_ns_ = now_ns();
  if (lead)
    log::info("resumed from {} at step {} (written by {} rank(s){})", loaded->path, loaded->step,
              loaded->saved_world,
              loaded->saved_world != engine_.world
                  ? fmt::format(", resharded to {}", engine_.world)
                  : "");
  return loaded;
}

uint32_t Checkpointing::due_requests() {
  uint32_t bits = 0;
  auto raise = [&](StepRequest r) { bits |= 1u << static_cast<uint32_t>(r); };
  const bool stop = hooks_.stop_requested ? hooks_.stop_requested() : ckpt::stop_requested();
  if (stop) raise(StepRequest::Stop);
  bool time_due = false;
  if (hooks_.time_due) time_due = hooks_.time_due();
  else if (config_.every_minutes > 0)
    time_due = static_cast<double>(now_ns() - last_save_ns_) * 1e-9 >= config_.every_minutes * 60.0;
  if (time_due) raise(StepRequest::Checkpoint);
  return bits;
}

namespace {

template <class Engine>
void raise_requests(Engine& t, uint32_t bits) {
  for (auto r : {StepRequest::Checkpoint, StepRequest::Stop})
    if (bits & (1u << static_cast<uint32_t>(r))) t.request(r);
}

}  // namespace

// Local observations only; the loss all-reduce right after this seam makes
// them the same decision on every rank.
void Checkpointing::after_backward(Trainer& t) { raise_requests(t, due_requests()); }

// The same: the step's world all-reduce (loss and norm) agrees on them.
void Checkpointing::before_mesh_step(PipelineTrainer& t) { raise_requests(t, due_requests()); }

void Checkpointing::after_step(Trainer&, const StepMetrics& m) { on_step_end(m); }

void Checkpointing::after_mesh_step(PipelineTrainer&, const StepMetrics& m) { on_step_end(m); }

void Checkpointing::on_step_end(const StepMetrics& m) {
  record_ = StepRecord{};
  record_.step = m.step;
  const int64_t step = engine_.step();
  if (m.requested(StepRequest::Stop)) {
    stopped_ = true;
    if (last_saved_step_ != step) save(step, /*synchronous=*/true, "stop requested");
    return;
  }
  if (config_.at_end && step >= engine_.total_steps) {
    save(step, /*synchronous=*/true, "last step");
    return;
  }
  const bool by_steps = config_.every_steps > 0 && step % config_.every_steps == 0;
  if (by_steps || m.requested(StepRequest::Checkpoint))
    save(step, /*synchronous=*/false, by_steps ? "every_steps" : "every_minutes");
}

ckpt::SaveRequest Checkpointing::request_for(int64_t step) const {
  StateBlobs blobs = state_->blobs();
  ckpt::SaveRequest r;
  r.step = step;
  r.model_config = run_config_;
  r.global_blobs = std::move(blobs.global);
  r.rank_blobs = std::move(blobs.rank);
  return r;
}

void Checkpointing::save(int64_t step, bool synchronous, const char* why) {
  record_.requested = true;
  record_.synchronous = synchronous;
  const int64_t waited_before = checkpointer_->stats().waited_busy;
  Stopwatch sw;
  bool started = true;
  if (synchronous) checkpointer_->save_now(request_for(step));  // throws IoError when it fails
  else started = checkpointer_->save(request_for(step));
  const ckpt::CheckpointStats st = checkpointer_->stats();
  record_.started = started;
  record_.blocked_s = synchronous ? sw.seconds() : st.last_blocked_s;
  record_.wait_s = st.waited_busy > waited_before ? st.last_wait_s : 0.0;
  blocked_total_s_ += record_.blocked_s;
  blocked_max_s_ = std::max(blocked_max_s_, record_.blocked_s);
  last_save_ns_ = now_ns();  // a skipped save restarts the timer too: the next one comes a period later
  if (started) last_saved_step_ = step;
  log::debug("checkpoint of step {} ({}): {}, blocked {:.4f} s", step, why,
             !started ? "skipped, the previous save is still being written" : synchronous ? "committed" : "started",
             record_.blocked_s);
}

void Checkpointing::save_now() { save(engine_.step(), /*synchronous=*/true, "save_now"); }

void Checkpointing::finish() {
  const int64_t step = engine_.step();
  if (config_.at_end && !stopped_ && step > 0 && last_saved_step_ != step) save(step, /*synchronous=*/true, "end");
  if (checkpointer_->wait() == ckpt::SaveOutcome::Failed)
    throw IoError(fmt::format("the last checkpoint save failed: {}", checkpointer_->stats().last_error),
                  fmt::format("the newest valid checkpoint in {} is older; see the log of every rank", config_.dir));
}

void Checkpointing::annotate(StepMetrics& m) {
  const ckpt::CheckpointStats st = checkpointer_->stats();
  const size_t before = m.extra.size();
  if (record_.step == m.step && record_.requested) {
    m.extra.emplace_back(record_.started ? "ckpt_saved" : "ckpt_skipped", 1.0);
    if (record_.synchronous) m.extra.emplace_back("ckpt_sync", 1.0);
    m.extra.emplace_back("ckpt_blocked_s", record_.blocked_s);
    if (record_.wait_s > 0) m.extra.emplace_back("ckpt_wait_s", record_.wait_s);
  }
  if (st.committed > reported_commits_) {
    reported_commits_ = st.committed;
    m.extra.emplace_back("ckpt_committed_step", static_cast<double>(st.last_committed_step));
    m.extra.emplace_back("ckpt_write_s", st.last_write_s);
    m.extra.emplace_back("ckpt_commit_s", st.last_commit_s);
    m.extra.emplace_back("ckpt_shard_bytes", static_cast<double>(st.last_shard_bytes));
  }
  if (st.failed > reported_failures_) {
    m.extra.emplace_back("ckpt_failed", static_cast<double>(st.failed - reported_failures_));
    reported_failures_ = st.failed;
  }
  if (m.extra.size() > before) {
    m.extra.emplace_back("ckpt_blocked_total_s", blocked_total_s_);
    m.extra.emplace_back("ckpt_skipped_total", static_cast<double>(st.skipped_busy));
    m.extra.emplace_back("ckpt_waited_total", static_cast<double>(st.waited_busy));
  }
}

nlohmann::ordered_json Checkpointing::summary_json(std::optional<int64_t> resumed_from, int64_t last_step,
                                                  bool stopped_by_signal) const {
  const auto st = stats();
  nlohmann::ordered_json c;
  c["dir"] = config_.dir;
  if (resumed_from) c["resumed_from_step"] = *resumed_from;
  c["last_step"] = last_step;
  c["saves"] = st.started;
  c["committed"] = st.committed;
  c["failed"] = st.failed;
  c["skipped_busy"] = st.skipped_busy;
  c["waited_busy"] = st.waited_busy;
  c["blocked_total_s"] = blocked_total_s_;
  c["blocked_max_s"] = blocked_max_s_;
  c["stopped_by_signal"] = stopped_by_signal;
  return c;
}

}  // namespace braid::train
