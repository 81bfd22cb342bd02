#include "plan/cluster_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/config.hpp"
#include "core/error.hpp"
#include "plan/config_quantity.hpp"
#include "plan/preset_files.hpp"

namespace braid::plan {
namespace {

// Message latencies when a file does not give them: a hop through NVLink and
// NCCL's launch, an RDMA hop through a switch, and one-way light in ~2,000 km
// of fiber. They matter only for small messages and many-step rings.
constexpr double kDefaultScaleUpLatency = 2e-6;
constexpr double kDefaultScaleOutLatency = 5e-6;
constexpr double kDefaultWanLatency = 10e-3;

// Fills a tier from [section]: bandwidth/latency given directly, or taken
// from the [transport.NAME] measurement the tier names, or the defaults.
LinkTier read_tier(Config& c, const std::string& section, const std::string& default_transport,
                   double default_bandwidth, double default_latency,
                   const std::map<std::string, TransportMeasurement>& transports) {
  LinkTier t;
  t.transport = c.get_string(section + ".transport", default_transport);
  auto measured = transports.find(t.transport);
  if (measured != transports.end()) {
    default_bandwidth = measured->second.bandwidth;
    default_latency = measured->second.latency;
  }
  t.bandwidth = read_rate(c, section + ".bandwidth", default_bandwidth);
  t.latency = read_duration(c, section + ".latency", default_latency);
  return t;
}

std::string rate_text(double bytes_per_s) { return fmt::format("{:.9g} GB/s", bytes_per_s / 1e9); }
std::string bits_text(double bytes_per_s) { return fmt::format("{:.9g} Gbit/s", bytes_per_s * 8 / 1e9); }
std::string time_text(double s) { return fmt::format("{:.9g} us", s * 1e6); }
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

}  // namespace

void ClusterSpec::validate() const {
  auto fail = [&](const std::string& what, const std::string& hint) {
    throw ConfigError(fmt::format("cluster '{}': {}", name, what), hint);
  };
  hardware.validate();
  if (gpus < 1) fail("gpus must be at least 1", "set cluster.gpus");
  if (sites < 1) fail("wan.sites must be at least 1", "set wan.sites = 1 for one site");
  if (gpus % sites != 0)
    fail(fmt::format("{} GPUs do not split evenly over {} sites", gpus, sites),
         "make cluster.gpus a multiple of wan.sites");
  if (domain_size < 1) fail("scale_up.size must be at least 1", "8 for HGX, 72 for NVL72");
  if (!(scale_up.bandwidth > 0)) fail("scale_up.bandwidth must be positive", "e.g. \"450 GB/s\"");
  if (!(scale_out.bandwidth > 0)) fail("scale_out.bandwidth must be positive", "e.g. \"400 Gbit/s\"");
  if (pod_gpus < 1) fail("scale_out.pod must be at least 1", "GPUs per pod of full bisection");
  if (!(oversubscription >= 1))
    fail("scale_out.oversubscription must be at least 1", "7 means 1:7 between pods");
  if (sites > 1 && !(wan.bandwidth > 0))
    fail(fmt::format("{} sites but no WAN bandwidth", sites),
         "set wan.bandwidth (what one site can send to the others), e.g. \"10 Tbit/s\"");
  if (scale_up.latency < 0 || scale_out.latency < 0 || wan.latency < 0)
    fail("a latency is negative", "latencies are one-hop message times, e.g. \"5 us\"");
}

std::vector<std::string> cluster_preset_names() { return preset_names("clusters"); }

ClusterSpec default_cluster(const HardwareSpec& hw, int64_t gpus) {
  ClusterSpec c;
  c.name = fmt::format("{}-x{}", hw.name, gpus);
  c.description = fmt::format("{} {} GPUs, one site, one pod of full bisection", gpus, hw.name);
  c.source = "default";
  c.hardware = hw;
  c.gpus = gpus;
  c.domain_size = hw.scale_up_domain;
  c.scale_up = {"nvlink", hw.scale_up_bandwidth, kDefaultScaleUpLatency};
  c.scale_out = {"rdma", hw.scale_out_bandwidth, kDefaultScaleOutLatency};
  c.pod_gpus = gpus;
  c.sites = 1;
  c.wan = {"wan", 0, kDefaultWanLatency};
  c.validate();
  return c;
}

ClusterSpec cluster_from_config(Config& c, const HardwareSpec* hardware_override) {
  ClusterSpec cl;
  cl.source = c.source();
  cl.name = c.get_string("cluster.name", "");
  cl.description = c.get_string("cluster.description", "");
  std::string hw_name = c.get_string("cluster.hardware", "");
  if (hardware_override) {
    cl.hardware = *hardware_override;
    if (c.has("hardware")) c.accept_section("hardware");
  } else if (c.has("hardware")) {
    if (!hw_name.empty())
      throw ConfigError(fmt::format("{}: both cluster.hardware and a [hardware] section", c.source()),
                        "name a preset with cluster.hardware, or describe it in [hardware] "
                        "(hardware.preset = \"h100\" starts from a preset)");
    cl.hardware = hardware_from_config(c);
  } else if (!hw_name.empty()) {
    cl.hardware = load_hardware(hw_name);
  } else {
    throw ConfigError(fmt::format("{}: no hardware", c.source()),
                      "set cluster.hardware = \"h100\" (a preset or a file), or add a [hardware] section");
  }
  if (!c.has("cluster.gpus"))
    throw ConfigError(fmt::format("{}: required key 'cluster.gpus' is missing", c.source()),
                      "the number of GPUs in the cluster, all sites together");
  cl.gpus = c.get_int("cluster.gpus", 0, 1, int64_t{1} << 40);

  for (auto& name : table_keys(c, "transport")) {
    TransportMeasurement t;
    std::string k = "transport." + name;
    t.bandwidth = read_rate(c, k + ".bandwidth", 0);
    t.latency = read_duration(c, k + ".latency", 0);
    t.note = c.get_string(k + ".note", "");
    if (!(t.bandwidth > 0))
      throw ConfigError(fmt::format("{}: {}.bandwidth must be given and positive", c.source(), k),
                        "e.g. bandwidth = \"2.5 GB/s\" (bus bandwidth of a large all-reduce)");
    cl.transports[name] = t;
  }

  const auto& hw = cl.hardware;
  cl.domain_size = c.get_int("scale_up.size", hw.scale_up_domain, 1, int64_t{1} << 20);
  cl.scale_up = read_tier(c, "scale_up", "nvlink", hw.scale_up_bandwidth, kDefaultScaleUpLatency,
                          cl.transports);
  cl.scale_out = read_tier(c, "scale_out", "rdma", hw.scale_out_bandwidth, kDefaultScaleOutLatency,
                           cl.transports);
  cl.sites = c.get_int("wan.sites", 1, 1, 1 << 20);
  cl.pod_gpus = c.get_int("scale_out.pod", cl.gpus / std::max<int64_t>(cl.sites, 1), 1, int64_t{1} << 40);
  cl.oversubscription = c.get_double("scale_out.oversubscription", 1.0, 1.0, 1e6);
  cl.wan = read_tier(c, "wan", "wan", 0, kDefaultWanLatency, cl.transports);

  cl.calibration.present = c.has("calibration");
  cl.calibration.host = c.get_string("calibration.host", "");
  cl.calibration.date = c.get_string("calibration.date", "");
  cl.calibration.tool = c.get_string("calibration.tool", "");
  cl.calibration.matmul_flops = read_flops(c, "calibration.matmul_flops", 0);
  cl.calibration.matmul_dtype = c.get_string("calibration.matmul_dtype", "");
  cl.calibration.matmul_size = c.get_int("calibration.matmul_size", 0, 0, int64_t{1} << 32);
  cl.calibration.notes = c.get_string("calibration.notes", "");

  if (cl.name.empty()) cl.name = hw.name + "-cluster";
  if (cl.pod_gpus > cl.gpus_per_site()) cl.pod_gpus = cl.gpus_per_site();
  cl.validate();
  return cl;
}

ClusterSpec load_cluster(const std::string& name_or_path, const HardwareSpec* hardware_override) {
  if (!looks_like_path(name_or_path)) {
    auto preset = find_preset("clusters", name_or_path);
    if (!preset) {
      std::string list;
      for (auto& n : cluster_preset_names()) list += (list.empty() ? "" : ", ") + n;
      throw ConfigError(fmt::format("unknown cluster preset '{}'", name_or_path),
                        "presets: " + list + "; or pass the path of a cluster TOML file");
    }
    auto c = Config::from_string(std::string(preset->text), "preset " + name_or_path);
    auto cl = cluster_from_config(c, hardware_override);
    c.finish();
    cl.source = "preset";
    return cl;
  }
  auto c = Config::from_file(name_or_path);
  auto cl = cluster_from_config(c, hardware_override);
  c.finish();
  return cl;
}

ClusterSpec with_sites(ClusterSpec c, int64_t sites) {
  if (sites < 1) throw ConfigError("the number of sites must be at least 1");
  if (c.gpus % sites != 0)
    throw ConfigError(fmt::format("{} GPUs do not split evenly over {} sites", c.gpus, sites),
                      "choose a number of sites that divides the cluster's GPUs");
  // Pods never span sites.
  int64_t per_site = c.gpus / sites;
  c.sites = sites;
  c.pod_gpus = std::min(c.pod_gpus, per_site);
  return c;
}

std::string cluster_to_toml(const ClusterSpec& c) {
  const auto& hw = c.hardware;
  std::string s;
  s += "[cluster]\n";
  s += fmt::format("name = {}\n", quoted(c.name));
  if (!c.description.empty()) s += fmt::format("description = {}\n", quoted(c.description));
  s += fmt::format("gpus = {}\n\n", c.gpus);
  s += "[hardware]\n";
  s += fmt::format("name = {}\n", quoted(hw.name));
  if (!hw.description.empty()) s += fmt::format("description = {}\n", quoted(hw.description));
  s += fmt::format("peak_flops = {:.9g}\n", hw.peak_flops);
  s += fmt::format("efficiency = {:.9g}\n", hw.efficiency);
  s += fmt::format("memory = \"{:.9g} GiB\"\n", hw.memory / (1024.0 * 1024 * 1024));
  s += fmt::format("usable_memory = {:.9g}\n", hw.usable_memory);
  s += fmt::format("memory_bandwidth = \"{}\"\n", rate_text(hw.memory_bandwidth));
  s += fmt::format("scale_up_bandwidth = \"{}\"\n", rate_text(hw.scale_up_bandwidth));
  s += fmt::format("scale_up_domain = {}\n", hw.scale_up_domain);
  s += fmt::format("scale_out_bandwidth = \"{}\"\n\n", bits_text(hw.scale_out_bandwidth));
  s += "[scale_up]\n";
  s += fmt::format("size = {}\ntransport = {}\n", c.domain_size, quoted(c.scale_up.transport));
  s += fmt::format("bandwidth = \"{}\"\nlatency = \"{}\"\n\n", rate_text(c.scale_up.bandwidth),
                   time_text(c.scale_up.latency));
  s += "[scale_out]\n";
  s += fmt::format("transport = {}\n", quoted(c.scale_out.transport));
  s += fmt::format("bandwidth = \"{}\"\nlatency = \"{}\"\n", bits_text(c.scale_out.bandwidth),
                   time_text(c.scale_out.latency));
  s += fmt::format("pod = {}\noversubscription = {:.9g}\n\n", c.pod_gpus, c.oversubscription);
  s += "[wan]\n";
  s += fmt::format("sites = {}\n", c.sites);
  if (c.wan.bandwidth > 0) s += fmt::format("bandwidth = \"{}\"\n", bits_text(c.wan.bandwidth));
  s += fmt::format("latency = \"{}\"\n", time_text(c.wan.latency));
  for (auto& [name, t] : c.transports) {
    s += fmt::format("\n[transport.{}]\n", name);
    s += fmt::format("bandwidth = \"{}\"\nlatency = \"{}\"\n", rate_text(t.bandwidth),
                     time_text(t.latency));
    if (!t.note.empty()) s += fmt::format("note = {}\n", quoted(t.note));
  }
  if (c.calibration.present) {
    const auto& k = c.calibration;
    s += "\n[calibration]\n";
    if (!k.host.empty()) s += fmt::format("host = {}\n", quoted(k.host));
    if (!k.date.empty()) s += fmt::format("date = {}\n", quoted(k.date));
    if (!k.tool.empty()) s += fmt::format("tool = {}\n", quoted(k.tool));
    if (k.matmul_flops > 0) s += fmt::format("matmul_flops = {:.9g}\n", k.matmul_flops);
    if (!k.matmul_dtype.empty()) s += fmt::format("matmul_dtype = {}\n", quoted(k.matmul_dtype));
    if (k.matmul_size > 0) s += fmt::format("matmul_size = {}\n", k.matmul_size);
    if (!k.notes.empty()) s += fmt::format("notes = {}\n", quoted(k.notes));
  }
  return s;
}

}  // namespace braid::plan
