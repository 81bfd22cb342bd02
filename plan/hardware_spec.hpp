#pragma once
// One accelerator: what it computes, holds and moves. Presets h100, h200,
// b200 and gb200 come from NVIDIA's datasheets (plan/presets/hardware/); a
// calibrated file for this host is written by `braid plan --calibrate`.
#include <cstdint>
#include <string>
#include <vector>

namespace braid {
class Config;
}

namespace braid::plan {

struct HardwareSpec {
  std::string name;
  std::string description;
  double peak_flops = 0;          // dense BF16 FLOP/s (no sparsity)
  // Fraction of peak a transformer layer sustains when it is not waiting for
  // communication (matmuls, attention and the memory-bound ops between them).
  double efficiency = 0.6;
  double memory = 0;              // bytes of HBM
  double usable_memory = 0.9;     // fraction left after runtime, buffers, fragmentation
  double memory_bandwidth = 0;    // bytes/s
  double scale_up_bandwidth = 0;  // bytes/s per GPU per direction (NVLink)
  int64_t scale_up_domain = 8;    // GPUs per scale-up domain in the usual system
  double scale_out_bandwidth = 0; // bytes/s per GPU per direction (its NIC)

  double sustained_flops() const { return peak_flops * efficiency; }
  double usable_memory_bytes() const { return memory * usable_memory; }
  void validate() const;
};

std::vector<std::string> hardware_preset_names();
HardwareSpec hardware_preset(const std::string& name);
// A preset name, or a TOML file with a [hardware] section.
HardwareSpec load_hardware(const std::string& name_or_path);
// Reads the [hardware] section (every key under `prefix`); `preset = "h100"`
// starts from a preset and the other keys override it.
HardwareSpec hardware_from_config(Config& c, const std::string& prefix = "hardware");

}  // namespace braid::plan
