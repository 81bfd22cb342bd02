#include "ckpt/checkpoint_dir.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "ckpt/file_io.hpp"
#include "core/error.hpp"

namespace braid::ckpt {
namespace fs = std::filesystem;

std::string step_dir_name(int64_t step) { return fmt::format("step-{:08d}", step); }

std::optional<int64_t> parse_step_dir_name(std::string_view name) {
  constexpr std::string_view prefix = "step-";
  if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) return std::nullopt;
  std::string_view digits = name.substr(prefix.size());
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  int64_t v = 0;
  for (char c : digits) v = v * 10 + (c - '0');
  return v;
}

bool CheckpointDir::exists() const {
  std::error_code ec;
  return fs::is_directory(root_, ec);
}

std::vector<StepDir> CheckpointDir::list() const {
  std::vector<StepDir> out;
  std::error_code ec;
  fs::directory_iterator it(root_, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return out;
    throw IoError(fmt::format("cannot list checkpoint directory {}: {}", root_.string(), ec.message()));
  }
  for (const auto& e : it) {
    std::error_code ec2;
    if (!e.is_directory(ec2)) continue;
    if (auto step = parse_step_dir_name(e.path().filename().string())) out.push_back({*step, e.path()});
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.step < b.step; });
  return out;
}

std::optional<int64_t> CheckpointDir::latest_step(std::string* problem) const {
  fs::path p = root_ / kLatestFile;
  std::error_code ec;
  if (!fs::exists(p, ec)) return std::nullopt;
  std::string text;
  try {
    text = read_text_file(p);
  } catch (const IoError& e) {
    if (problem) *problem = e.what();
    return std::nullopt;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r')) text.pop_back();
  auto step = parse_step_dir_name(text);
  if (!step && problem) *problem = fmt::format("{} does not name a step directory: '{}'", p.string(), text.substr(0, 64));
  return step;
}

std::vector<fs::path> CheckpointDir::leftovers() const {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(root_, ec);
  if (ec) return out;
  for (const auto& e : it) {
    std::string n = e.path().filename().string();
    if (n.rfind(kTempPrefix, 0) == 0 || n.rfind(kTrashPrefix, 0) == 0) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<StepDir> CheckpointDir::committed_newest_first(std::vector<StepDir>* ignored,
                                                           std::string* latest_problem) const {
  std::vector<StepDir> all = list();
  std::optional<int64_t> latest = latest_step(latest_problem);
  // `latest` naming a directory that is gone is itself a damaged checkpoint:
  // keep it as the first candidate so the loader reports it instead of
  // silently resuming from an older one.
  if (latest && std::none_of(all.begin(), all.end(), [&](auto& d) { return d.step == *latest; }))
    all.push_back({*latest, step_path(*latest)});
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.step < b.step; });
  std::vector<StepDir> out;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (latest && it->step > *latest) {
      if (ignored) ignored->push_back(*it);
      continue;
    }
    out.push_back(*it);
  }
  return out;
}

void CheckpointDir::set_latest(int64_t step, bool durable) const {
  write_file_atomically(root_ / kLatestFile, step_dir_name(step) + "\n", durable);
}

}  // namespace braid::ckpt
