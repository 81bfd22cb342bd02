#pragma once
// A cluster as tiers of links, from fastest to slowest:
//   scale-up   GPUs in one NVLink domain (8 in HGX, 72 in NVL72)
//   scale-out  each GPU's NIC into a fabric of pods; full bisection inside a
//              pod, `oversubscription`:1 fewer uplinks between pods
//   wan        sites joined by long-distance links; `bandwidth` is what one
//              site can send to the others (each direction)
// Bandwidths are per GPU and per direction except the WAN's. A file can also
// hold measured numbers per transport ([transport.NAME]) and where they came
// from ([calibration]); this is the file `braid plan --calibrate` writes.
// The format is documented in docs/plan.md and by plan/presets/clusters/.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "plan/hardware_spec.hpp"

namespace braid {
class Config;
}

namespace braid::plan {

struct LinkTier {
  std::string transport;  // "nvlink", "roce", "shm", "tcp", "wan", ...
  double bandwidth = 0;   // bytes/s, per GPU per direction (WAN: per site)
  double latency = 0;     // seconds per message (one hop)
};

// Bandwidth and latency of one of braid's transports, as `braid bench comm`
// measures it (bus bandwidth of a large all-reduce, latency of a small one).
struct TransportMeasurement {
  double bandwidth = 0;  // bytes/s
  double latency = 0;    // seconds
  std::string note;      // how it was measured
};

// Where a calibrated file's numbers came from.
struct Calibration {
  bool present = false;
  std::string host;
  std::string date;
  std::string tool;          // command that wrote the file
  double matmul_flops = 0;   // measured matmul FLOP/s per worker
  std::string matmul_dtype;  // dtype of that matmul ("f32", "bf16")
  int64_t matmul_size = 0;   // n of the n×n×n matmul
  std::string notes;
};

struct ClusterSpec {
  std::string name;
  std::string description;
  std::string source;  // preset name or file
  HardwareSpec hardware;
  int64_t gpus = 0;
  int64_t domain_size = 8;
  LinkTier scale_up;
  LinkTier scale_out;
  int64_t pod_gpus = 0;          // GPUs per pod (full bisection inside)
  double oversubscription = 1;   // between pods
  int64_t sites = 1;
  LinkTier wan;
  std::map<std::string, TransportMeasurement> transports;
  Calibration calibration;

  int64_t gpus_per_site() const { return gpus / sites; }
  void validate() const;
};

std::vector<std::string> cluster_preset_names();
// One site, one pod, the hardware's usual scale-up domain and NIC.
ClusterSpec default_cluster(const HardwareSpec& hw, int64_t gpus);
// A preset name or a TOML file. `hardware_override`, when given, replaces the
// file's hardware before tier defaults are taken from it.
ClusterSpec load_cluster(const std::string& name_or_path,
                         const HardwareSpec* hardware_override = nullptr);
ClusterSpec cluster_from_config(Config& c, const HardwareSpec* hardware_override = nullptr);

// The same cluster with its GPUs split evenly over `sites` sites (for the
// cross-site analysis of a single-site cluster), or with another WAN link.
ClusterSpec with_sites(ClusterSpec c, int64_t sites);

// TOML text of a cluster file (what --calibrate writes); reading it back with
// cluster_from_config gives the same cluster.
std::string cluster_to_toml(const ClusterSpec& c);

}  // namespace braid::plan
