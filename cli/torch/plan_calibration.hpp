#pragma once
// Measuring this host for braid's plan model (`braid plan --calibrate`,
// `braid bench plan`), and braid's own training jobs as plan/ sees them.
//
// A braid worker on a CPU host plays the part of a GPU: W workers share the
// host's cores, each computing with cores / W threads (train/compute_threads.hpp).
// So a calibration is for a number of workers W, and measures what one of
// them gets while all W compute at once:
//   matmul_flops     train::measure_matmul_peak() in each of W concurrent
//                    single-worker runs of the job (the engine measures it at
//                    start with the job's thread policy); the median over them
//   step_efficiency  the job's hardware FLOPs per step (plan/step_model.hpp)
//                    / (median step time × matmul_flops), from the same W
//                    concurrent runs: compute only, no communication
//   shm, tcp         bench::run_comm_bench, all-reduce between 2 workers:
//                    bus bandwidth at the largest size, latency = time of the
//                    smallest / 2(n-1) (the ring's steps)
//   memory           the host's memory / W
// The rest of a step (gradient exchange, its overlap, accumulation) is left to
// the model. Procedure and format: docs/plan.md, "Calibration".
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/process_group.hpp"
#include "plan/calibration.hpp"
#include "plan/model_spec.hpp"
#include "plan/step_model.hpp"
#include "train/train_config.hpp"

namespace braid::cli {

struct HostCalibrationOptions {
  std::string job;                // training config (resolved path)
  std::vector<std::string> sets;  // overrides of its keys
  int warmup = 3;                 // steps not measured (first-step allocation, thread start)
  int steps = 12;                 // measured steps per worker
  std::string comm_sizes = "8,64M";
  std::string tmp_dir;            // runs write here (the caller creates and removes it)
  std::function<void(const std::string&)> say;  // progress lines; may be empty
};

struct ComputeCalibration {
  int workers = 1;
  int threads = 1;                // cores per worker
  double matmul_flops = 0;        // per worker, median over the W runs
  int64_t matmul_size = 0;
  std::string matmul_description;
  double step_s = 0;              // median over the runs of each run's median step
  double hardware_flops_per_step = 0;
  double efficiency = 0;          // hardware FLOPs / (step_s × matmul_flops)
  double load_before = 0;         // 1-minute load average around the measurement
  double load_after = 0;
};

// W concurrent single-worker runs of the job (a few steps each).
ComputeCalibration calibrate_compute(const HostCalibrationOptions& o, int workers);
// All-reduce between 2 workers over shm and over tcp.
std::map<std::string, plan::TransportMeasurement> calibrate_transports(const HostCalibrationOptions& o);
plan::CalibrationMeasurements host_measurements(const ComputeCalibration& compute,
                                                const std::map<std::string, plan::TransportMeasurement>& transports);

// --- braid's training jobs, as the plan model sees them

// The job's config with the overrides applied (validated by the engine).
train::TrainConfig load_job(const std::string& path, const std::vector<std::string>& sets);
plan::ModelSpec plan_model_for_job(const std::string& path, const std::vector<std::string>& sets);
// The layout braid runs a job with on `workers` workers: dp = workers /
// (tp·pp), the job's ZeRO stage, tp, pp, schedule, micro-batches (as the
// engine splits the batch), recomputation, eager attention, no sequence
// parallelism, FP32 gradients, and the overlap the engine really has (none for
// TP, PP, the mesh engine's gradient all-reduce and ZeRO-1/2's parameter
// all-gather; docs/plan.md, "braid's job as a plan"). Throws ConfigError,
// naming the key, for what the plan model cannot express (selective
// recomputation, DiLoCo, an output layer that would unbalance the pipeline).
plan::ParallelPlan plan_for_job(const train::TrainConfig& config, int workers);
// The `braid plan` command line that gives the same estimate.
std::string plan_command_for_job(const std::string& job, const std::string& cluster_file,
                                 const plan::ParallelPlan& p);

// --- helpers shared by the calibration and the benchmark

// `given`, or examples/default.toml here or in the source tree of this braid.
std::string find_job_config(const std::string& given);
std::string braid_executable();
double load_average();
std::string cpu_model();
std::string utc_now_iso8601();

struct RunMetrics {
  int steps = 0;          // measured steps
  double step_s = 0;      // medians over the measured steps
  double compute_s = 0;
  double comm_s = 0;
  double comm_exposed_s = 0;
};
// Rank 0's metrics.jsonl of a run directory, steps after `warmup`.
RunMetrics read_run_metrics(const std::string& run_dir, int warmup);

// Runs the processes to completion; throws naming the first that failed, with
// its last output lines.
void run_to_completion(const std::vector<ProcessSpec>& specs, const std::string& what);

// `--set` arguments that make a short, quiet measuring run of a job.
std::vector<std::string> measuring_run_sets(int total_steps, const std::string& run_dir);

}  // namespace braid::cli
