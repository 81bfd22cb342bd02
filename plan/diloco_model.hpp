#pragma once
// The WAN side of DiLoCo: how long the outer synchronisation between sites
// takes and how much of the compute it costs.
//
// Cost model (docs/plan.md, "Between sites"); N parameters, q bits per value,
// S sites, t seconds per inner step, B the WAN bandwidth of one site:
//   bytes each site sends per sync   X = 2(S-1)/S · N · q/8   (ring over sites)
//   sync time                        T = X / B + 2(S-1)·latency
//   DiLoCo (Douillard et al. 2023)   every H inner steps everyone stops for T:
//                                    utilisation = H·t / (H·t + T)
//   streaming DiLoCo                 F fragments, one started every H/F steps, each
//   (Douillard et al. 2025)          overlapped with tau inner steps; a fragment
//                                    takes T_f = X/(F·B) + 2(S-1)·latency, so per H
//                                    steps the workers wait F·max(0, T_f - tau·t), and
//                                    the link cannot carry more than it can:
//                                    period = max(H·t + F·max(0, T_f - tau·t), F·T_f)
//                                    utilisation = H·t / period
#include <cstdint>

namespace braid::plan {

struct DilocoOptions {
  bool enabled = false;        // run the plan as DiLoCo across sites
  bool streaming = false;      // streaming DiLoCo (fragments, overlap)
  int64_t inner_steps = 100;   // H
  int bits = 16;               // bits per outer-gradient value on the WAN
  int64_t fragments = 8;       // F, streaming only
  double overlap_steps = -1;   // tau, streaming only; < 0 means H/F
  double tau() const;
};

double outer_sync_bytes_per_site(double params, int bits, int64_t sites);
double outer_sync_time(double params, int bits, int64_t sites, double wan_bandwidth,
                       double wan_latency);
// Wall time of H inner steps plus the outer synchronisation.
double diloco_period(const DilocoOptions& o, double inner_step_time, double params,
                     int64_t sites, double wan_bandwidth, double wan_latency);
double diloco_utilisation(const DilocoOptions& o, double inner_step_time, double params,
                          int64_t sites, double wan_bandwidth, double wan_latency);

}  // namespace braid::plan
