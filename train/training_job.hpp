#pragma once
// A whole training run on one rank: threads, data, MFU calibration, the step
// loop with periodic validation, the run directory and the final sample. This
// is what `braid train` calls; every rank of a job runs it with its
// communicator, and all collective calls happen in the same order everywhere.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "comm/communicator.hpp"
#include "net/store.hpp"
#include "train/compute_threads.hpp"
#include "train/matmul_peak.hpp"
#include "train/train_config.hpp"

namespace braid::train {

struct JobOptions {
  int local_ranks = 1;               // ranks sharing this host's cores
  std::FILE* progress = stderr;      // rank 0's progress line; null = none
  bool write_run_dir = true;         // rank 0 writes the run directory
  bool print_sample = true;          // rank 0 prints the final sample on stdout
  int64_t measure_from_step = 0;     // steps before this are warm-up for the summary rates
  // The job's rendezvous store (checkpoint commits and resume agreement with
  // several ranks; may be null for a world of one).
  std::shared_ptr<net::Store> store;
  bool resume = false;               // continue from checkpoint.dir's newest valid checkpoint
};

struct JobSummary {
  std::string run_dir;               // empty when not written
  int64_t steps = 0;
  double final_loss = 0;
  std::optional<double> final_val_loss;
  double tokens_per_s = 0;           // global, over the measured steps
  double mfu = 0;
  double step_s = 0;                 // mean over the measured steps
  double comm_s = 0;                 // per step, mean
  double comm_exposed_s = 0;         // per step, mean
  double hidden_fraction = 0;        // 1 - exposed / comm (0 without communication)
  MatmulPeak peak;                   // this rank's calibration
  double job_peak_flops = 0;         // sum over ranks
  int64_t parameters = 0;
  int threads = 0;                   // cores this rank computes on
  ComputeThreads compute;            // how they were split between BLAS and LibTorch
  std::string sample;
  double wall_s = 0;
  std::optional<int64_t> resumed_from;  // the step a --resume started from
  int64_t last_checkpoint_step = -1;    // newest step this job saved
  bool stopped = false;                 // ended early on a stop signal (after saving)
};

JobSummary run_training_job(const TrainConfig& config, comm::Communicator* comm, const JobOptions& options);

}  // namespace braid::train
