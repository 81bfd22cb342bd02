#include "plan/hardware_spec.hpp"

#include <fmt/format.h>

#include "core/config.hpp"
#include "core/error.hpp"
#include "plan/config_quantity.hpp"
#include "plan/preset_files.hpp"

namespace braid::plan {

void HardwareSpec::validate() const {
  auto need = [&](double v, const char* key, const char* example) {
    if (!(v > 0))
      throw ConfigError(fmt::format("hardware '{}': {} must be positive", name, key),
                        fmt::format("set hardware.{} (e.g. {}), or start from a preset with "
                                    "hardware.preset = \"h100\"",
                                    key, example));
  };
  need(peak_flops, "peak_flops", "\"989 TFLOP/s\"");
  need(memory, "memory", "\"80 GiB\"");
  need(memory_bandwidth, "memory_bandwidth", "\"3.35 TB/s\"");
  need(scale_up_bandwidth, "scale_up_bandwidth", "\"450 GB/s\"");
  need(scale_out_bandwidth, "scale_out_bandwidth", "\"400 Gbit/s\"");
  if (!(efficiency > 0 && efficiency <= 1))
    throw ConfigError(fmt::format("hardware '{}': efficiency {} is not in (0, 1]", name, efficiency),
                      "efficiency is the fraction of peak_flops a layer sustains, e.g. 0.6");
  if (!(usable_memory > 0 && usable_memory <= 1))
    throw ConfigError(fmt::format("hardware '{}': usable_memory {} is not in (0, 1]", name,
                                  usable_memory),
                      "usable_memory is the fraction of memory a job can allocate, e.g. 0.9");
  if (scale_up_domain < 1)
    throw ConfigError(fmt::format("hardware '{}': scale_up_domain must be at least 1", name));
}

std::vector<std::string> hardware_preset_names() { return preset_names("hardware"); }

HardwareSpec hardware_preset(const std::string& name) {
  auto preset = find_preset("hardware", name);
  if (!preset) {
    std::string list;
    for (auto& n : hardware_preset_names()) list += (list.empty() ? "" : ", ") + n;
    throw ConfigError(fmt::format("unknown hardware preset '{}'", name),
                      "presets: " + list + "; or pass the path of a TOML file with a [hardware] section");
  }
  auto c = Config::from_string(std::string(preset->text), "preset " + name);
  auto hw = hardware_from_config(c);
  c.finish();
  return hw;
}

HardwareSpec hardware_from_config(Config& c, const std::string& prefix) {
  auto key = [&](const char* k) { return prefix + "." + k; };
  HardwareSpec hw;
  std::string base = c.get_string(key("preset"), "");
  if (!base.empty()) hw = hardware_preset(base);
  hw.name = c.get_string(key("name"), hw.name.empty() ? base : hw.name);
  hw.description = c.get_string(key("description"), hw.description);
  hw.peak_flops = read_flops(c, key("peak_flops"), hw.peak_flops);
  hw.efficiency = c.get_double(key("efficiency"), hw.efficiency, 1e-6, 1.0);
  hw.memory = read_size(c, key("memory"), hw.memory);
  hw.usable_memory = c.get_double(key("usable_memory"), hw.usable_memory, 1e-6, 1.0);
  hw.memory_bandwidth = read_rate(c, key("memory_bandwidth"), hw.memory_bandwidth);
  hw.scale_up_bandwidth = read_rate(c, key("scale_up_bandwidth"), hw.scale_up_bandwidth);
  hw.scale_up_domain = c.get_int(key("scale_up_domain"), hw.scale_up_domain, 1, 1 << 20);
  hw.scale_out_bandwidth = read_rate(c, key("scale_out_bandwidth"), hw.scale_out_bandwidth);
  if (hw.name.empty()) hw.name = "custom";
  hw.validate();
  return hw;
}

HardwareSpec load_hardware(const std::string& name_or_path) {
  if (!looks_like_path(name_or_path)) return hardware_preset(name_or_path);
  auto c = Config::from_file(name_or_path);
  if (!c.has("hardware"))
    throw ConfigError(fmt::format("{}: no [hardware] section", name_or_path),
                      "a hardware file has a [hardware] table; see plan/presets/hardware/h100.toml");
  auto hw = hardware_from_config(c);
  // A cluster file also works as a hardware file: its other sections are not ours here.
  for (const char* other : {"cluster", "scale_up", "scale_out", "wan", "transport", "calibration"})
    c.accept_section(other);
  c.finish();
  return hw;
}

}  // namespace braid::plan
