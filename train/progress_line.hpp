#pragma once
// The live progress line of rank 0:
//   step 120/600 | loss 2.413 | val 2.51 | 12.3k tok/s | MFU 21% | comm exposed 4% | ETA 1m32s
// On a terminal it rewrites itself in place; otherwise (a log file, a pipe)
// it prints one line every `every` steps.
#include <cstdio>
#include <deque>

#include "train/trainer.hpp"

namespace braid::train {

class ProgressLine {
 public:
  ProgressLine(std::FILE* out, int64_t total_steps, int64_t every);
  void update(const StepMetrics& m);
  // Ends the line (on a terminal) so that later output starts on a fresh one.
  void finish();

 private:
  std::FILE* out_;
  int64_t total_;
  int64_t every_;
  bool live_;
  bool dirty_ = false;
  std::optional<double> last_val_;
  std::deque<StepMetrics> window_;  // recent steps, for smoothed rates and the ETA
};

// "1h02m", "3m05s", "42s"
std::string format_duration(double seconds);

}  // namespace braid::train
