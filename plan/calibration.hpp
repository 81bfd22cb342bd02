#pragma once
// Turning measurements of this host into a cluster file (`braid plan
// --calibrate`). The measuring itself needs the training engine (a LibTorch
// matmul, one step of the example job) and `braid bench comm` (bus bandwidth
// and latency per transport); this file only fixes what they must provide
// and how it becomes a ClusterSpec, so that the numbers have one place to go.
// Procedure and format: docs/plan.md, "Calibration".
#include <cstdint>
#include <map>
#include <string>

#include "plan/cluster_spec.hpp"

namespace braid::plan {

struct CalibrationMeasurements {
  std::string host;
  std::string date;             // ISO 8601
  int64_t workers = 1;          // braid workers on this host (the "GPUs")
  // n×n×n matmul in the training dtype, 2n³ / seconds, per worker while all
  // workers run at once (they share the cores).
  double matmul_flops = 0;
  std::string matmul_dtype = "f32";
  int64_t matmul_size = 0;
  // Fraction of matmul_flops one step of the example job sustains: its
  // hardware FLOPs / (step time × matmul_flops), measured on one worker.
  // 1 until that measurement exists.
  double step_efficiency = 1.0;
  double memory_bytes = 0;      // per worker
  double memory_bandwidth = 0;  // bytes/s, 0 if not measured
  // From `braid bench comm --json`: bus bandwidth of a large all-reduce and
  // latency of a small one, per transport ("shm", "tcp", ...).
  std::map<std::string, TransportMeasurement> transports;
  std::string scale_up_transport = "shm";   // between workers of this host
  std::string scale_out_transport = "tcp";  // between hosts
};

// Throws ConfigError when a measurement is missing or not positive.
ClusterSpec cluster_from_measurements(const CalibrationMeasurements& m);

}  // namespace braid::plan
