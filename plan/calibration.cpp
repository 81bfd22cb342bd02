#include "plan/calibration.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"

namespace braid::plan {

ClusterSpec cluster_from_measurements(const CalibrationMeasurements& m) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok)
      throw ConfigError("calibration: " + what,
                        "run the measurement again; braid plan --calibrate needs every number");
  };
  need(m.workers >= 1, "no workers");
  need(m.matmul_flops > 0, "no matmul FLOP/s");
  need(m.step_efficiency > 0 && m.step_efficiency <= 1.5, "step efficiency out of range");
  need(m.memory_bytes > 0, "no memory size");
  for (const auto* t : {&m.scale_up_transport, &m.scale_out_transport}) {
    auto it = m.transports.find(*t);
    need(it != m.transports.end(), fmt::format("no measurement of transport '{}'", *t));
    need(it->second.bandwidth > 0, fmt::format("transport '{}' has no bandwidth", *t));
  }
  const auto& up = m.transports.at(m.scale_up_transport);
  const auto& out = m.transports.at(m.scale_out_transport);

  ClusterSpec c;
  c.name = m.host.empty() ? "this-host" : m.host;
  c.description = fmt::format("{} braid workers on {}, calibrated {}", m.workers, c.name, m.date);
  c.source = "calibration";
  c.hardware.name = c.name + "-worker";
  c.hardware.description = fmt::format("one braid worker: {} matmul", m.matmul_dtype);
  // The matmul rate stands in for the datasheet peak; efficiency is what a
  // real step of the example job gets out of it.
  c.hardware.peak_flops = m.matmul_flops;
  c.hardware.efficiency = std::min(1.0, m.step_efficiency);
  c.hardware.memory = m.memory_bytes;
  c.hardware.usable_memory = 0.9;
  c.hardware.memory_bandwidth = m.memory_bandwidth > 0 ? m.memory_bandwidth : up.bandwidth;
  c.hardware.scale_up_bandwidth = up.bandwidth;
  c.hardware.scale_up_domain = m.workers;
  c.hardware.scale_out_bandwidth = out.bandwidth;
  c.gpus = m.workers;
  c.domain_size = m.workers;
  c.scale_up = {m.scale_up_transport, up.bandwidth, up.latency};
  c.scale_out = {m.scale_out_transport, out.bandwidth, out.latency};
  c.pod_gpus = m.workers;
  c.oversubscription = 1;
  c.sites = 1;
  c.wan = {"wan", 0, 10e-3};
  c.transports = m.transports;
  c.calibration.present = true;
  c.calibration.host = m.host;
  c.calibration.date = m.date;
  c.calibration.tool = "braid plan --calibrate";
  c.calibration.matmul_flops = m.matmul_flops;
  c.calibration.matmul_dtype = m.matmul_dtype;
  c.calibration.matmul_size = m.matmul_size;
  c.calibration.notes = fmt::format("step efficiency {} of the matmul rate", c.hardware.efficiency);
  c.validate();
  return c;
}

}  // namespace braid::plan
