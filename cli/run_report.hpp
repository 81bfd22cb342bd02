#pragma once
// A training run directory (written by `braid train`) read back and rendered
// as one self-contained HTML page: inline SVG charts, inline CSS, no script,
// nothing fetched from the network. No LibTorch: the report only reads files.
#include <optional>
#include <string>
#include <vector>

namespace braid::cli {

struct RunStep {
  int64_t step = 0;
  double loss = 0;
  std::optional<double> val_loss;
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_s = 0;
  double mfu = 0;
  double step_s = 0;
  double compute_s = 0;
  double comm_s = 0;
  double comm_exposed_s = 0;
  uint64_t bytes_sent = 0;
};

struct RunReport {
  std::string dir;
  std::vector<RunStep> steps;
  std::string summary_json;  // "" when absent
  std::string config_toml;   // "" when absent
  std::string sample;        // "" when absent

  // Reads RUN_DIR; throws ConfigError when it is not a run directory and
  // CorruptData (naming file and line) on a malformed metrics line.
  static RunReport load(const std::string& dir);
  std::string to_html() const;
};

}  // namespace braid::cli
