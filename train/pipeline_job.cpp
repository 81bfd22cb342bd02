#include "train/pipeline_job.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/save_schedule.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/process_group.hpp"
#include "train/checkpointing.hpp"
#include "train/compute_threads.hpp"
#include "train/data_parallel.hpp"
#include "train/parallel_mesh.hpp"
#include "train/pipeline_trainer.hpp"
#include "train/progress_line.hpp"
#include "train/run_directory.hpp"
#include "train/tensor_parallel.hpp"

namespace braid::train {

bool uses_model_parallelism(const TrainConfig& config) { return config.parallel.tp > 1 || config.parallel.pp > 1; }

JobSummary run_pipeline_job(const TrainConfig& config, comm::Communicator* comm, const JobOptions& options) {
  Stopwatch wall;
  JobSummary summary;
  if (options.resume && !config.checkpoint.enabled())
    throw ConfigError("--resume needs a checkpoint directory", "set checkpoint.dir in the config (or --set checkpoint.dir=DIR)");
  if (config.fault.enabled)
    throw ConfigError("fault.enabled is not supported with parallel.tp > 1 or parallel.pp > 1",
                      "fault-tolerant training replicates whole models: use tp = pp = 1");
  const int world = comm ? comm->size() : 1;
  const int rank = comm ? comm->rank() : 0;
  const bool lead = rank == 0;
  const MeshShape shape = resolve_mesh_shape(config.parallel, world);

  summary.threads = compute_threads_for(static_cast<int>(config.train.threads), options.local_ranks);
  summary.compute = set_compute_threads(summary.threads);
  auto data = TokenDataset::load(config.data, config.model.context, config.model.vocab_size);

  if (comm && world > 1) comm->barrier().wait();
  summary.peak = measure_matmul_peak();
  std::vector<double> peak = {summary.peak.flops_per_s};
  all_reduce_sum(comm, peak, config.parallel.timeout_s);
  summary.job_peak_flops = peak[0];

  ParallelMesh mesh(comm, shape);
  PipelineTrainer trainer(config, data, mesh);
  trainer.set_job_peak_flops(summary.job_peak_flops);
  GptModel layout(config.model, 0);
  summary.parameters = layout.num_parameters();

  // Checkpoints (train/mesh_state.hpp): the full model's layout, so they load
  // under any other tp / pp / dp and world size. Resume first.
  std::unique_ptr<Checkpointing> checkpointing;
  if (config.checkpoint.enabled()) {
    checkpointing = std::make_unique<Checkpointing>(trainer, config.checkpoint, config.to_toml(), options.store);
    if (options.resume) {
      if (auto loaded = checkpointing->resume()) summary.resumed_from = loaded->step;
    }
  }

  std::unique_ptr<RunDirectory> run_dir;
  if (lead && options.write_run_dir) {
    run_dir = std::make_unique<RunDirectory>(config.run.dir.empty() ? default_run_dir(config.run.name)
                                                                    : config.run.dir);
    summary.run_dir = run_dir->path();
    run_dir->write_file("config.toml", config.to_toml());
  }
  if (lead) {
    const auto& m = config.model;
    log::info("model: {} layers, width {}, {} heads, context {}, vocab {}: {:.2f}M parameters, {:.2f}M on rank 0",
              m.layers, m.width, m.heads, m.context, m.vocab_size, static_cast<double>(summary.parameters) * 1e-6,
              static_cast<double>(trainer.model().params().numel()) * 1e-6);
    log::info("mesh: dp {} x tp {} x pp {} ({} schedule{}, {} micro-batches of {}), {} tokens per step", shape.dp,
              shape.tp, shape.pp, config.parallel.schedule,
              trainer.chunks() > 1 ? fmt::format(", {} chunks per stage", trainer.chunks()) : "",
              trainer.microbatches(), config.train.batch_size, trainer.tokens_per_step());
    const auto& pc = config.parallel;
    if (pc.sequence_parallel || pc.recompute != "none" || pc.zero > 0)
      log::info("memory modes: sequence parallel {}, recompute {}, ZeRO-{}{}", pc.sequence_parallel ? "on" : "off",
                pc.recompute, pc.zero,
                pc.zero > 0 ? fmt::format(" ({} of {:.2f}M elements on rank 0)",
                                          pc.zero == 1   ? "AdamW moments"
                                          : pc.zero == 2 ? "AdamW moments and gradients"
                                                         : "parameters, gradients and AdamW moments",
                                          static_cast<double>(trainer.optimizer().numel()) * 1e-6)
                            : "");
    if (run_dir) log::info("run directory: {}", run_dir->path());
  }

  ProgressLine progress(lead && config.run.progress ? options.progress : nullptr, config.train.steps,
                        config.train.log_every);
  const int64_t measure_from = std::min(options.measure_from_step, config.train.steps - 1);
  double time = 0, tokens = 0, comm_s = 0, exposed = 0, mfu_time = 0, bubble = 0, pipeline = 0;
  int64_t measured = 0;
  StepMetrics last;
  while (trainer.step() < config.train.steps) {
    if (checkpointing) checkpointing->before_mesh_step(trainer);
    StepMetrics m = trainer.train_step();
    if (checkpointing) {
      checkpointing->after_mesh_step(trainer, m);
      checkpointing->annotate(m);
      if (checkpointing->stop_agreed()) {
        // Saved and committed already; no validation on the way out.
        summary.stopped = true;
        if (run_dir) run_dir->append_metrics(m);
        last = m;
        break;
      }
    }
    const int64_t every = config.train.eval_every;
    if ((every > 0 && m.step % every == 0) || m.step == config.train.steps) m.val_loss = trainer.evaluate();
    if (m.step > measure_from) {
      time += m.step_s;
      tokens += m.tokens_per_s * m.step_s;
      mfu_time += m.mfu * m.step_s;
      comm_s += m.comm_s;
      exposed += m.comm_exposed_s;
      bubble += trainer.last_timing().bubble_s;
      pipeline += trainer.last_timing().pipeline_s;
      ++measured;
    }
    if (run_dir) run_dir->append_metrics(m);
    progress.update(m);
    last = m;
  }
  progress.finish();
  if (checkpointing) {
    checkpointing->finish();
    summary.last_checkpoint_step = checkpointing->last_saved_step();
  }

  summary.steps = trainer.step();
  summary.final_loss = last.loss;
  summary.final_val_loss = last.val_loss;
  if (measured > 0 && time > 0) {
    summary.tokens_per_s = tokens / time;
    summary.mfu = mfu_time / time;
    summary.step_s = time / static_cast<double>(measured);
    summary.comm_s = comm_s / static_cast<double>(measured);
    summary.comm_exposed_s = exposed / static_cast<double>(measured);
  }
  // The end-of-run sample needs the whole model on one rank: every rank adds
  // what it accounts for into a full-layout vector (dp rank 0's replica
  // only), one all-reduce over the world gives it to all, and the lead
  // samples from a GptModel holding it.
  if (config.train.sample_tokens > 0 && !summary.stopped) {
    auto full = torch::zeros({trainer.model().full_numel()}, torch::kFloat32);
    const auto local = trainer.local_parameters();  // ZeRO-3: all-gathered over dp, on every rank
    if (trainer.mesh().dp_rank() == 0) trainer.model().add_own_to_full(local, full);
    all_reduce_tensor_sum(full, trainer.mesh().world(), config.parallel.timeout_s);
    if (lead) {
      GptModel whole(config.model, config.train.seed);
      torch::NoGradGuard no_grad;
      whole.params().params().copy_(full);
      summary.sample = sample_text(whole, config, config.train.sample_tokens);
    }
  }
  summary.wall_s = wall.seconds();
  if (lead && summary.stopped)
    log::warn("stopped by {} after step {}: checkpoint {} committed; continue with `braid train CONFIG --resume`",
              ckpt::stop_signal() ? signal_name(ckpt::stop_signal()) : std::string("a stop request"), summary.steps,
              (ckpt::CheckpointDir(config.checkpoint.dir).step_path(summary.steps)).string());
  else if (lead)
    log::info("done: {} steps in {}, loss {:.4f}{}, {:.0f} tokens/s, MFU {:.1f}%{}", summary.steps,
              format_duration(summary.wall_s), summary.final_loss,
              summary.final_val_loss ? fmt::format(", validation loss {:.4f}", *summary.final_val_loss) : "",
              summary.tokens_per_s, summary.mfu * 100,
              shape.pp > 1 && pipeline > 0 ? fmt::format(", pipeline bubble {:.0f}% on rank 0 (ideal {:.0f}%)",
                                                         100 * bubble / pipeline, 100 * trainer.ideal_bubble_share())
                                           : "");
  if (run_dir) {
    nlohmann::ordered_json j;
    j["steps"] = summary.steps;
    j["world_size"] = world;
    j["mesh"] = {{"dp", shape.dp}, {"tp", shape.tp}, {"pp", shape.pp}, {"schedule", config.parallel.schedule},
                 {"microbatches", trainer.microbatches()}, {"chunks", trainer.chunks()}, {"sequence_parallel", config.parallel.sequence_parallel},
                 {"recompute", config.parallel.recompute}, {"zero", config.parallel.zero}};
    j["cores_per_rank"] = summary.threads;
    j["parameters"] = summary.parameters;
    j["parameters_rank0"] = trainer.model().params().numel();
    j["tokens_per_step"] = trainer.tokens_per_step();
    j["flops_per_token"] = layout.flops_per_token();
    j["peak_flops_per_rank"] = summary.peak.flops_per_s;
    j["job_peak_flops"] = summary.job_peak_flops;
    j["final_loss"] = summary.final_loss;
    if (summary.final_val_loss) j["final_val_loss"] = *summary.final_val_loss;
    j["tokens_per_s"] = summary.tokens_per_s;
    j["mfu"] = summary.mfu;
    if (shape.pp > 1 && pipeline > 0) j["pp_bubble_share_rank0"] = bubble / pipeline;
    j["wall_s"] = summary.wall_s;
    if (checkpointing)
      j["checkpoint"] = checkpointing->summary_json(summary.resumed_from, summary.last_checkpoint_step, summary.stopped);
    run_dir->write_file("summary.json", j.dump(2) + "\n");
    if (!summary.sample.empty()) run_dir->write_file("sample.txt", summary.sample + "\n");
  }
  if (lead && options.print_sample && !summary.sample.empty())
    std::printf("--- sample (%lld tokens) ---\n%s\n---\n", static_cast<long long>(config.train.sample_tokens),
                summary.sample.c_str());
  std::fflush(stdout);
  return summary;
}

}  // namespace braid::train
