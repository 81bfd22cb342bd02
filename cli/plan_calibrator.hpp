#pragma once
// The seam between `braid plan --calibrate` (cli/cmd_plan.cpp, compiled with
// or without the training engine) and the measurement, which needs LibTorch
// (cli/torch/plan_calibration.cpp registers itself here at start-up). In a
// build without the engine nothing registers, and --calibrate says so.
#include <functional>
#include <string>
#include <vector>

namespace braid::cli {

struct PlanCalibrateRequest {
  std::string out;                // file to write; empty: print it on stdout
  int workers = 2;                // braid workers that will share this host
  std::string job;                // training config whose steps give the step efficiency;
                                  // empty: examples/default.toml
  std::vector<std::string> sets;  // overrides of the job's keys
  bool quick = false;             // tiny measurements (tests): numbers are rough
};

// Returns the process exit code.
using PlanCalibrator = std::function<int(const PlanCalibrateRequest&)>;

void register_plan_calibrator(PlanCalibrator calibrator);
// Null when this build has no calibrator (no training engine).
const PlanCalibrator* plan_calibrator();

}  // namespace braid::cli
