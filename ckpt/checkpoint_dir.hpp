#pragma once
// The directory that holds a job's checkpoints:
//
//   DIR/step-00000100/      committed checkpoints (manifest.json + rank-*.bin)
//   DIR/step-00000200/
//   DIR/latest              text "step-00000200": the commit point
//   DIR/.tmp-step-.../      a save in progress (or killed): never loaded
//
// A save becomes visible in two atomic steps: rename of its temporary
// directory to step-N, then rename of a new `latest` file naming it. `latest`
// is the commit point: a step directory newer than `latest` comes from a save
// killed between the two renames and is ignored by loaders (it is replaced or
// pruned by later saves). Without a `latest` file, the newest step directory
// that verifies is used.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace braid::ckpt {

std::string step_dir_name(int64_t step);  // "step-00000100"
std::optional<int64_t> parse_step_dir_name(std::string_view name);

inline constexpr const char* kLatestFile = "latest";
inline constexpr const char* kTempPrefix = ".tmp-";
inline constexpr const char* kTrashPrefix = ".trash-";

struct StepDir {
  int64_t step = 0;
  std::filesystem::path path;
};

class CheckpointDir {
 public:
  explicit CheckpointDir(std::filesystem::path root) : root_(std::move(root)) {}
  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path step_path(int64_t step) const { return root_ / step_dir_name(step); }

  bool exists() const;
  // Step directories in increasing step order (committed or not).
  std::vector<StepDir> list() const;
  // The step named by `latest`; nullopt when the file is absent. A malformed
  // file also gives nullopt, with the reason in *problem.
  std::optional<int64_t> latest_step(std::string* problem = nullptr) const;
  // Directories of unfinished saves (.tmp-*) and of replaced ones (.trash-*).
  std::vector<std::filesystem::path> leftovers() const;

  // The checkpoints a loader may use, newest first: those not newer than
  // `latest` (all of them when there is no valid `latest`). Directories newer
  // than `latest` are returned in *ignored. If `latest` names a directory that
  // does not exist, it is still the first entry (so that it is reported as
  // missing rather than silently passed over).
  std::vector<StepDir> committed_newest_first(std::vector<StepDir>* ignored = nullptr,
                                              std::string* latest_problem = nullptr) const;

  // Makes `latest` name `step` (atomic rename, durable when `durable`).
  void set_latest(int64_t step, bool durable = true) const;

 private:
  std::filesystem::path root_;
};

}  // namespace braid::ckpt
