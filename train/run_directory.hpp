#pragma once
// The directory a run leaves behind (written by rank 0 only):
//   config.toml    the resolved configuration
//   metrics.jsonl  one JSON object per step (see metrics_json)
//   summary.json   model, machine, peak, final losses, throughput
//   sample.txt     text generated at the end
// `braid report RUN_DIR` turns it into one HTML page.
#include <cstdio>
#include <string>

#include "train/trainer.hpp"

namespace braid::train {

// runs/<name>-<UTC yyyymmdd-hhmmss>
std::string default_run_dir(const std::string& name);

// {"step":..,"loss":..,"val_loss":.. (when measured),"lr":..,"grad_norm":..,
//  "tokens_per_s":..,"mfu":..,"compute_s":..,"comm_s":..,"comm_exposed_s":..,
//  "bytes_sent":..,"step_s":..} plus the step's `extra` fields (checkpoints, ...)
std::string metrics_json(const StepMetrics& m);

class RunDirectory {
 public:
  // Creates the directory (and parents); throws IoError with a hint.
  // append: continue an existing metrics.jsonl instead of starting it anew
  // (a fault-tolerant job's lead worker restarted by the launcher).
  explicit RunDirectory(std::string path, bool append = false);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  // Writes a whole file (via a temporary and rename, so readers never see half).
  void write_file(const std::string& name, const std::string& content) const;
  // Appends one line to metrics.jsonl and flushes it (a crash loses at most a line).
  void append_metrics(const StepMetrics& m);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* metrics_ = nullptr;
};

}  // namespace braid::train
