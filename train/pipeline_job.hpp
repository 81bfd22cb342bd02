#pragma once
// `braid train` on a dp x tp x pp mesh (parallel.tp > 1 or parallel.pp > 1):
// the run loop of run_training_job (training_job.hpp) around a
// PipelineTrainer — data, threads, MFU calibration, validation, progress,
// run directory (config.toml, metrics.jsonl with the pp_bubble_* fields,
// summary.json with the mesh), checkpoints and --resume (train/mesh_state.hpp:
// written in the full model's layout, so they load under any other mode).
// Fault tolerance is refused with a ConfigError under tp/pp, and the final
// text sample is skipped with a note.
#include "comm/communicator.hpp"
#include "train/train_config.hpp"
#include "train/training_job.hpp"

namespace braid::train {

// True when the configuration needs the mesh engine rather than Trainer.
bool uses_model_parallelism(const TrainConfig& config);

JobSummary run_pipeline_job(const TrainConfig& config, comm::Communicator* comm, const JobOptions& options);

}  // namespace braid::train
