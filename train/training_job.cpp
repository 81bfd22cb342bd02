#include "train/training_job.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/save_schedule.hpp"
#include "core/clock.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/process_group.hpp"
#include "train/checkpointing.hpp"
#include "train/compute_threads.hpp"
#include "train/fault_tolerance.hpp"
#include "train/health_monitor.hpp"
#include "train/parallel_mesh.hpp"
#include "train/pipeline_job.hpp"
#include "train/progress_line.hpp"
#include "train/run_directory.hpp"
#include "train/diloco.hpp"
#include "train/trainer.hpp"

namespace braid::train {

JobSummary run_training_job(const TrainConfig& config, comm::Communicator* comm, const JobOptions& options) {
  // Tensor / pipeline parallelism run on the mesh engine (train/pipeline_job.hpp).
  if (uses_model_parallelism(config)) return run_pipeline_job(config, comm, options);
  if (!config.fault.enabled) resolve_mesh_shape(config.parallel, comm ? comm->size() : 1);  // dp must fit the world
  Stopwatch wall;
  JobSummary summary;
  const int rank = comm ? comm->rank() : 0;
  const int world = comm ? comm->size() : 1;
  // Fault tolerance: the launcher's rank 0 writes the run directory (ranks change with epochs).
  const bool lead = config.fault.enabled ? FaultTolerance::is_lead_replica() : rank == 0;

  summary.threads = compute_threads_for(static_cast<int>(config.train.threads), options.local_ranks);
  summary.compute = set_compute_threads(summary.threads);

  auto data = TokenDataset::load(config.data, config.model.context, config.model.vocab_size);

  // Calibrate every rank at the same time, as they will compute: ranks that
  // share cores measure their share, and the job's peak is the sum.
  if (comm && world > 1) comm->barrier().wait();
  summary.peak = measure_matmul_peak();
  std::vector<double> peak = {summary.peak.flops_per_s};
  all_reduce_sum(comm, peak, config.parallel.timeout_s);
  summary.job_peak_flops = peak[0];

  // DiLoCo: the trainer sees its replica's communicator; Diloco syncs the
  // replicas every diloco.inner_steps steps (train/diloco.hpp).
  std::optional<DilocoGroups> diloco_groups;
  if (config.diloco.enabled && (config.checkpoint.enabled() || options.resume))
    throw ConfigError("checkpoints are not supported with [diloco] yet: between outer steps the replicas hold "
                      "different parameters, and the outer optimizer's state (the parameters of the last sync and "
                      "the Nesterov momentum) is not saved, so every replica would write its own state into the "
                      "same checkpoint directory and a resume would lose the outer state",
                      "remove checkpoint.dir (and --resume) from a DiLoCo job, or train without [diloco]");
  if (config.diloco.enabled) diloco_groups.emplace(DilocoGroups::make(config.diloco, comm));
  Trainer trainer(config, data, diloco_groups ? diloco_groups->inner.get() : comm);
  trainer.set_job_peak_flops(summary.job_peak_flops);
  summary.parameters = trainer.model().num_parameters();
  std::unique_ptr<Diloco> diloco;
  if (diloco_groups) diloco = std::make_unique<Diloco>(config.diloco, trainer, *diloco_groups, data.train().size());

  // Fault tolerance: comm is null; the coordinator's quorums choose the
  // members and each epoch gets its communicator (train/fault_tolerance.hpp).
  std::unique_ptr<FaultTolerance> ft;
  if (config.fault.enabled) ft = std::make_unique<FaultTolerance>(config, trainer, summary.peak.flops_per_s, diloco.get());

  // Health (docs/health.md), registered before checkpoints: a corrupted
  // replica is repaired before its share of the state is saved.
  HealthMonitor health(trainer, config.health, "");

  // Checkpoints: resume first, so that everything below starts from the saved step.
  std::unique_ptr<Checkpointing> checkpointing;
  if (config.checkpoint.enabled()) {
    checkpointing = std::make_unique<Checkpointing>(trainer, config.checkpoint, config.to_toml(), options.store);
    if (options.resume) {
      if (auto loaded = checkpointing->resume()) summary.resumed_from = loaded->step;
    }
  } else if (options.resume) {
    throw ConfigError("--resume needs a checkpoint directory", "set checkpoint.dir in the config (or --set checkpoint.dir=DIR)");
  }

  // Fault tolerance: the run directory's path is agreed through the
  // coordinator's store, so that a restarted lead continues its first life's
  // metrics and a survivor can take over the records of a lead lost for good.
  const std::string proposed_run_dir = config.run.dir.empty() ? default_run_dir(config.run.name) : config.run.dir;
  std::unique_ptr<RunDirectory> run_dir;
  if (lead && options.write_run_dir) {
    const bool restarted = ft && env::get_int("BRAID_RESTART_COUNT", 0) > 0;
    run_dir = std::make_unique<RunDirectory>(ft ? ft->agreed_run_dir(proposed_run_dir) : proposed_run_dir, restarted);
    if (restarted) log::info("restarted lead worker: appending to {}/metrics.jsonl", run_dir->path());
    summary.run_dir = run_dir->path();
    if (!restarted) run_dir->write_file("config.toml", config.to_toml());
  }
  // Whether this worker writes metrics.jsonl / summary.json now; under fault
  // tolerance the current keeper (FaultTolerance::keeps_records) takes over
  // the directory the first time it is one without being the lead.
  auto keeps_records = [&]() -> bool {
    if (!ft) return run_dir != nullptr;
    if (!options.write_run_dir || !ft->keeps_records()) return false;
    if (!run_dir) {
      run_dir = std::make_unique<RunDirectory>(ft->agreed_run_dir(proposed_run_dir), /*append=*/true);
      summary.run_dir = run_dir->path();
      log::warn("the lead worker is not among the members: this worker now writes {}/metrics.jsonl and summary.json",
                run_dir->path());
    }
    return true;
  };
  health.set_flight_dir(run_dir ? (std::filesystem::path(run_dir->path()) / "flight").string() : "");
  if (checkpointing)
    health.set_rollback([&]() -> std::optional<int64_t> {
      checkpointing->wait();  // the save in flight may be the one to go back to
      auto loaded = checkpointing->resume();
      return loaded ? std::optional<int64_t>(loaded->step) : std::nullopt;
    });
  if (lead) {
    const auto& m = config.model;
    log::info("model: {} layers, width {}, {} heads, context {}, vocab {}: {:.2f}M parameters", m.layers,
              m.width, m.heads, m.context, m.vocab_size, static_cast<double>(summary.parameters) * 1e-6);
    log::info("data: {} tokens from {} file(s) ({} train, {} validation)", data.size(), data.files().size(),
              data.train().size(), data.val().size());
    log::info("job: {} rank(s) x ({}), {} tokens per step ({} x {} x {} accumulation x {} ranks), "
              "{} gradient bucket(s){}",
              world, summary.compute.describe(), trainer.tokens_per_step(), config.train.batch_size, m.context,
              config.train.grad_accum, world, trainer.data_parallel().buckets().size(),
              world > 1 ? (config.parallel.overlap ? ", overlapped with backward" : ", after backward") : "");
    log::info("MFU is measured against this host's matmul peak, not a datasheet: {} per rank, {:.1f} GFLOP/s "
              "for the job; {:.1f} MFLOP per token (PaLM formula)",
              summary.peak.describe(), summary.job_peak_flops * 1e-9, trainer.model().flops_per_token() * 1e-6);
    if (run_dir) log::info("run directory: {}", run_dir->path());
  }

  ProgressLine progress(lead && config.run.progress ? options.progress : nullptr, config.train.steps,
                        config.train.log_every);
  const int64_t measure_from = std::min(options.measure_from_step, config.train.steps - 1);
  double time = 0, tokens = 0, comm_s = 0, exposed = 0, mfu_time = 0;
  int64_t measured = 0;
  StepMetrics last;
  bool left_out = false;
  while (trainer.step() < config.train.steps) {
    std::optional<StepMetrics> next = ft ? ft->train_step() : trainer.train_step();
    if (!next) {  // fault tolerance: the job had finished without this worker
      left_out = true;
      break;
    }
    StepMetrics m = std::move(*next);
    health.annotate(m);
    if (diloco) diloco->annotate(m);
    if (checkpointing) {
      checkpointing->annotate(m);
      if (checkpointing->stop_agreed()) {
        // Saved and committed already; no validation or sample on the way out.
        summary.stopped = true;
        if (keeps_records()) run_dir->append_metrics(m);
        last = m;
        break;
      }
    }
    const int64_t every = config.train.eval_every;
    if ((every > 0 && m.step % every == 0) || m.step == config.train.steps) m.val_loss = ft ? ft->evaluate() : trainer.evaluate();
    if (m.step > measure_from) {
      time += m.step_s;
      tokens += m.tokens_per_s * m.step_s;
      mfu_time += m.mfu * m.step_s;
      comm_s += m.comm_s;
      exposed += m.comm_exposed_s;
      ++measured;
    }
    if (keeps_records()) run_dir->append_metrics(m);
    progress.update(m);
    last = m;
  }
  progress.finish();
  if (ft) ft->finish();
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
    summary.hidden_fraction = comm_s > 0 ? std::max(0.0, 1.0 - exposed / comm_s) : 0.0;
  }

  if (config.train.sample_tokens > 0 && !summary.stopped && trainer.zero())
    trainer.zero()->gather_all();  // ZeRO-3: the lead samples alone, so every rank gathers first
  // Who reports the run: the lead, or under fault tolerance the worker that
  // keeps the records at the end (the lead may be gone).
  const bool reporter = ft ? ft->keeps_records() && !left_out : lead;
  if (reporter && config.train.sample_tokens > 0 && !summary.stopped)
    summary.sample = trainer.sample_text(config.train.sample_tokens);
  summary.wall_s = wall.seconds();

  if (reporter && summary.stopped) {
    log::warn("stopped by {} after step {}: checkpoint {} committed; continue with `braid train CONFIG --resume`",
              ckpt::stop_signal() ? signal_name(ckpt::stop_signal()) : std::string("a stop request"), summary.steps,
              (ckpt::CheckpointDir(config.checkpoint.dir).step_path(summary.steps)).string());
  } else if (reporter) {
    log::info("done: {} steps in {}, loss {:.4f}{}, {:.0f} tokens/s, MFU {:.1f}%{}", summary.steps,
              format_duration(summary.wall_s), summary.final_loss,
              summary.final_val_loss ? fmt::format(", validation loss {:.4f}", *summary.final_val_loss) : "",
              summary.tokens_per_s, summary.mfu * 100,
              world > 1 ? fmt::format(", {:.0f}% of communication hidden behind backward",
                                      summary.hidden_fraction * 100)
                        : "");
  }
  if (run_dir && (!ft || reporter)) {
    nlohmann::ordered_json j;
    j["steps"] = summary.steps;
    j["world_size"] = ft ? ft->stats().replicas : world;
    j["cores_per_rank"] = summary.threads;
    j["blas_threads"] = summary.compute.blas;
    j["intra_op_threads"] = summary.compute.intra_op;
    j["parameters"] = summary.parameters;
    j["tokens_per_step"] = trainer.tokens_per_step();
    j["flops_per_token"] = trainer.model().flops_per_token();
    j["peak_flops_per_rank"] = summary.peak.flops_per_s;
    j["peak_description"] = summary.peak.describe();
    j["job_peak_flops"] = summary.job_peak_flops;
    j["final_loss"] = summary.final_loss;
    if (summary.final_val_loss) j["final_val_loss"] = *summary.final_val_loss;
    j["tokens_per_s"] = summary.tokens_per_s;
    j["mfu"] = summary.mfu;
    j["comm_hidden_fraction"] = summary.hidden_fraction;
    j["buckets"] = trainer.data_parallel().buckets().size();
    j["wall_s"] = summary.wall_s;
    if (diloco) {
      nlohmann::ordered_json d;
      d["replicas"] = ft ? ft->stats().replicas : diloco_groups->replicas;
      d["workers_per_replica"] = diloco_groups->workers_per_replica;
      d["codec"] = config.diloco.codec;
      d["outer_rounds"] = diloco->stats().outer_rounds;
      d["bytes_wan_this_rank"] = diloco->stats().bytes_wan;
      d["outer_wait_s"] = diloco->stats().outer_wait_s;
      d["outer_apply_s"] = diloco->stats().outer_apply_s;
      j["diloco"] = d;
    }
    if (ft) {
      const auto& st = ft->stats();
      nlohmann::ordered_json f;
      f["committed_here"] = st.committed;
      f["discarded_and_redone"] = st.discarded;
      f["epochs"] = st.epochs;
      f["heals_received"] = st.heals_received;
      f["heal_bytes_received"] = st.heal_bytes_received;
      f["heals_sent"] = st.heals_sent;
      f["replicas_at_end"] = st.replicas;
      j["fault_tolerance"] = f;
    }
    {
      const auto& st = health.stats();
      nlohmann::ordered_json h;
      h["checks"] = st.checks;
      h["corruptions"] = st.corruptions;
      h["repairs"] = st.repairs;
      h["dropped_updates"] = st.dropped_updates;
      h["skipped_steps"] = st.skipped_steps;
      h["rollbacks"] = st.rollbacks;
      h["stragglers"] = st.stragglers;
      h["injected_faults"] = st.injected;
      h["fingerprint_s"] = st.fingerprint_s;
      h["fingerprint_bytes"] = st.fingerprint_bytes;
      j["health"] = h;
    }
    if (checkpointing)
      j["checkpoint"] = checkpointing->summary_json(summary.resumed_from, summary.last_checkpoint_step, summary.stopped);
    run_dir->write_file("summary.json", j.dump(2) + "\n");
    if (!summary.sample.empty()) run_dir->write_file("sample.txt", summary.sample + "\n");
  }
  if (reporter && options.print_sample && !summary.sample.empty())
    std::printf("--- sample (%lld tokens) ---\n%s\n---\n", static_cast<long long>(config.train.sample_tokens),
                summary.sample.c_str());
  std::fflush(stdout);
  return summary;
}

}  // namespace braid::train
