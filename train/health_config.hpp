#pragma once
// [health]: silent-data-corruption fingerprints, the loss / gradient-norm
// guard, stragglers, the flight recorder, live metrics and fault injection
// (train/health_monitor.hpp, docs/health.md). No LibTorch here.
#include <cstdint>
#include <string>
#include <vector>

namespace braid {
class Config;
}

namespace braid::train {

struct HealthConfig {
  bool fingerprints = true;          // compare parameter + optimizer fingerprints across replicas
  int64_t fingerprint_every = 1;     // steps between checks
  double fingerprint_fraction = 1;   // rotating slice of the state per check (1 = all of it)
  bool fingerprint_optimizer = true; // include AdamW's moments
  bool bucket_fingerprints = true;   // compare every gradient all-reduce bucket's result
  bool guard = true;                 // skip NaN/Inf and spiking steps
  double spike_sigma = 6;            // spike threshold in running standard deviations (0 = only NaN/Inf)
  int64_t guard_warmup = 50;         // steps before spikes are judged
  int64_t rollback_after = 2;        // consecutive bad steps that roll back to the last checkpoint (0 = never)
  int64_t straggler_every = 20;      // steps between straggler checks (0 = off)
  double straggler_factor = 1.5;     // slower than this x the median compute time: a straggler
  bool flight_recorder = true;       // dump the last collectives into <run dir>/flight/ on failure
  int64_t metrics_port = 0;          // Prometheus /metrics on rank 0 (0 = off, -1 = any free port, logged)
  std::string metrics_bind = "127.0.0.1";
  std::vector<std::string> inject;   // fault specs (health/fault_injection.hpp)
};

// Reads the [health] keys (all optional) and checks them; ConfigError names the key.
HealthConfig read_health_config(Config& doc);
// The resolved [health] section as TOML.
std::string health_config_toml(const HealthConfig& h);

}  // namespace braid::train
