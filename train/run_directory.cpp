#include "train/run_directory.hpp"

#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace braid::train {
namespace fs = std::filesystem;

std::string default_run_dir(const std::string& name) {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return fmt::format("runs/{}-{}", name, buf);
}

std::string metrics_json(const StepMetrics& m) {
  nlohmann::ordered_json j;
  j["step"] = m.step;
  j["loss"] = m.loss;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  j["tokens_per_s"] = m.tokens_per_s;
  j["mfu"] = m.mfu;
  j["compute_s"] = m.compute_s;
  j["comm_s"] = m.comm_s;
  j["comm_exposed_s"] = m.comm_exposed_s;
  j["bytes_sent"] = m.bytes_sent;
  j["step_s"] = m.step_s;
  if (!m.applied) j["applied"] = false;
  for (const auto& [key, value] : m.extra) j[key] = value;
  return j.dump();
}

RunDirectory::RunDirectory(std::string path, bool append) : path_(std::move(path)) {
  std::error_code ec;
  fs::create_directories(path_, ec);
  if (ec || !fs::is_directory(path_))
    throw IoError(fmt::format("cannot create run directory '{}': {}", path_, ec.message()),
                  "choose another run.dir (--set run.dir=PATH) or check permissions");
  std::string metrics = path_ + "/metrics.jsonl";
  metrics_ = std::fopen(metrics.c_str(), append ? "a" : "w");
  if (!metrics_) throw IoError(fmt::format("cannot write '{}'", metrics), "check permissions and free space");
}

RunDirectory::~RunDirectory() {
  if (metrics_) std::fclose(metrics_);
}

void RunDirectory::write_file(const std::string& name, const std::string& content) const {
  std::string final_path = path_ + "/" + name;
  std::string tmp = final_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << content;
    if (!f) throw IoError(fmt::format("cannot write '{}'", tmp), "check permissions and free space");
  }
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  if (ec) throw IoError(fmt::format("cannot rename '{}' to '{}': {}", tmp, final_path, ec.message()));
}

void RunDirectory::append_metrics(const StepMetrics& m) {
  std::string line = metrics_json(m) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), metrics_) != line.size() || std::fflush(metrics_) != 0)
    throw IoError(fmt::format("cannot append to '{}/metrics.jsonl'", path_), "check free space");
}

}  // namespace braid::train
