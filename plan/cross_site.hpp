#pragma once
// What a job split over several sites gets out of a WAN link, under three ways
// of training across sites:
//   data parallel     gradients cross the WAN every step (hierarchical all-reduce,
//                     or reduce-scatter + all-gather with ZeRO), overlapped like
//                     any DP traffic (step_model.hpp)
//   DiLoCo            sites train alone for H steps, then all-reduce the outer
//                     gradient in q bits while everyone waits (diloco_model.hpp)
//   streaming DiLoCo  the same bytes in F fragments, each overlapped with tau steps
// Compute utilisation of a mode = its time with an infinitely fast WAN / its
// time with this WAN; the bandwidth needed for a target utilisation is found by
// bisection (utilisation grows with bandwidth in all three modes).
#include <cstdint>
#include <string>
#include <vector>

#include "plan/step_model.hpp"

namespace braid::plan {

enum class CrossSiteMode { DataParallel, Diloco, StreamingDiloco };
std::string to_string(CrossSiteMode m);

struct CrossSiteOptions {
  int64_t sites = 2;        // used when the cluster itself has one site
  DilocoOptions diloco;     // H, bits, fragments and tau for the two DiLoCo modes
  double target = 0.9;      // utilisation the "needed" bandwidth is for
};

struct CrossSiteModeResult {
  CrossSiteMode mode;
  std::string label;               // "data parallel (FP32 gradients)"
  double bytes_per_sync = 0;       // each site sends, per direction
  double steps_per_sync = 1;
  double local_step_time = 0;      // step with an infinitely fast WAN
  double average_rate = 0;         // bytes_per_sync / (steps_per_sync · local step): bytes/s
  double needed_bandwidth = 0;     // bytes/s for the target; +inf when no bandwidth reaches it
  double utilisation_at_wan = -1;  // at the cluster's WAN bandwidth; < 0 when it has none
};

struct CrossSitePoint {
  double bandwidth = 0;  // bytes/s
  double utilisation[3] = {0, 0, 0};
};

struct CrossSiteAnalysis {
  int64_t sites = 2;
  bool hypothetical = false;  // the cluster has one site; its GPUs were split for this
  int64_t gpus = 0;
  double wan_bandwidth = 0;   // the cluster's, bytes/s (0: none)
  double wan_latency = 0;
  double target = 0.9;
  double params = 0;
  DilocoOptions diloco;
  ParallelPlan plan;          // the DP plan analysed
  std::vector<CrossSiteModeResult> modes;
  std::vector<CrossSitePoint> curve;  // log-spaced bandwidths
};

// `plan` is the job; its data-parallel dimension is what gets split over sites
// (the GPU order is forced to tp,pp,dp and DiLoCo settings come from options).
CrossSiteAnalysis analyse_cross_site(const ModelSpec& model, const ClusterSpec& cluster,
                                     const ParallelPlan& plan, const CrossSiteOptions& options,
                                     int points = 121);

// Bytes each site sends over the WAN per step under data parallelism (ZeRO-0:
// all-reduce of the gradients; ZeRO-1/2: reduce-scatter of gradients and
// all-gather of BF16 weights; ZeRO-3: the gathers of every micro-batch too).
double dp_wan_bytes_per_site(double params, const ParallelPlan& plan, int64_t micro_batches,
                             int64_t sites);

}  // namespace braid::plan
