#pragma once
// The preset files under plan/presets/ (models, hardware, clusters), compiled
// into the library so that `braid plan --model llama3-8b` works from any
// directory. The same files are the documentation of the file formats: copy
// one, edit it, and pass its path instead of the preset name.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace braid::plan {

struct PresetFile {
  std::string_view kind;  // "models", "hardware" or "clusters"
  std::string_view name;  // file name without .toml
  std::string_view text;  // TOML
};

// Generated at build time from plan/presets/*/*.toml (see plan/CMakeLists.txt).
const std::vector<PresetFile>& preset_files();

std::optional<PresetFile> find_preset(std::string_view kind, std::string_view name);
std::vector<std::string> preset_names(std::string_view kind);

// True when `text` looks like a path (has a '/' or ends in .toml) rather than a
// preset name; such arguments are always read from disk.
bool looks_like_path(std::string_view text);

}  // namespace braid::plan
