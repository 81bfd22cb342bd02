#include "plan/preset_files.hpp"

namespace braid::plan {

std::optional<PresetFile> find_preset(std::string_view kind, std::string_view name) {
  for (auto& f : preset_files())
    if (f.kind == kind && f.name == name) return f;
  return std::nullopt;
}

std::vector<std::string> preset_names(std::string_view kind) {
  std::vector<std::string> names;
  for (auto& f : preset_files())
    if (f.kind == kind) names.emplace_back(f.name);
  return names;
}

bool looks_like_path(std::string_view text) {
  return text.find('/') != std::string_view::npos ||
         (text.size() > 5 && text.substr(text.size() - 5) == ".toml");
}

}  // namespace braid::plan
