#pragma once
// `braid bench ckpt`: what a checkpoint costs training, on synthetic flat
// buffers (params, adam_m, adam_v) of a given total size, all measured in one
// run on the same disk:
//   - blocked time of an asynchronous save (the snapshot copy) versus the
//     time a synchronous save of the same state blocks (snapshot + write +
//     fsync + commit);
//   - write throughput of the checkpoint writer (bytes of the shard files /
//     time from hand-over to fsynced files), alone (during the synchronous
//     save) and while training runs (asynchronous save), versus a plain
//     sequential write() of the same number of bytes with one fsync (also
//     measured while training runs, for a like-for-like comparison);
//   - time of a simulated training step (a memory-bound pass over the
//     parameters, like an optimizer step) while idle and while the background
//     writer is running.
// Ranks are threads of this process sharing a MemStore; all hold the whole
// (replicated) state and split the writing.
#include <cstdint>
#include <string>
#include <vector>

namespace braid::ckpt {

struct SaveBenchOptions {
  std::string dir;                 // where to write (a fresh subdirectory is created and removed)
  uint64_t state_bytes = 256ull << 20;
  int writers = 1;                 // ranks splitting the writing
  int repeats = 3;                 // medians over this many of each measurement
  bool durable = true;
};

struct SaveBenchResult {
  uint64_t state_bytes = 0;  // training state (flat buffers)
  uint64_t file_bytes = 0;   // bytes of the shard files of one checkpoint
  int writers = 1;
  int repeats = 0;
  // Medians, seconds.
  double sync_blocked_s = 0;    // save_now(): the whole synchronous save
  double sync_write_s = 0;      // its shard write + fsync (the writer alone: training is stopped)
  double async_blocked_s = 0;   // save(): the snapshot copy (max over ranks)
  double async_write_s = 0;     // background: hand-over to fsynced shard files (max over ranks)
  double async_commit_s = 0;    // background: hand-over to committed (manifest, renames, `latest`)
  double plain_write_s = 0;     // write() + fsync of file_bytes bytes, one file
  double plain_busy_write_s = 0;  // the same while the simulated training runs
  double step_idle_s = 0;       // simulated training step, no save running
  double step_during_save_s = 0;  // the same step while the writer runs (median over those steps)
  std::vector<double> sync_samples, sync_write_samples, async_blocked_samples, async_write_samples, plain_samples,
      plain_busy_samples;

  double blocked_ratio() const { return sync_blocked_s > 0 ? async_blocked_s / sync_blocked_s : 0; }
  // Checkpoint writer throughput while training runs (async) and alone (sync).
  double ckpt_write_bps() const { return async_write_s > 0 ? static_cast<double>(file_bytes) / async_write_s : 0; }
  double sync_write_bps() const { return sync_write_s > 0 ? static_cast<double>(file_bytes) / sync_write_s : 0; }
  double plain_write_bps() const { return plain_write_s > 0 ? static_cast<double>(file_bytes) / plain_write_s : 0; }
  double throughput_ratio() const { return plain_write_bps() > 0 ? ckpt_write_bps() / plain_write_bps() : 0; }
  double sync_throughput_ratio() const { return plain_write_bps() > 0 ? sync_write_bps() / plain_write_bps() : 0; }
  double plain_busy_write_bps() const {
    return plain_busy_write_s > 0 ? static_cast<double>(file_bytes) / plain_busy_write_s : 0;
  }
  // Both while training runs: the like-for-like comparison for the async writer.
  double busy_throughput_ratio() const {
    return plain_busy_write_bps() > 0 ? ckpt_write_bps() / plain_busy_write_bps() : 0;
  }
};

SaveBenchResult run_save_benchmark(const SaveBenchOptions& options);

}  // namespace braid::ckpt
