#include "plan/cross_site.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "core/error.hpp"
#include "plan/units.hpp"

namespace braid::plan {

std::string to_string(CrossSiteMode m) {
  switch (m) {
    case CrossSiteMode::DataParallel: return "data-parallel";
    case CrossSiteMode::Diloco: return "diloco";
    case CrossSiteMode::StreamingDiloco: return "streaming-diloco";
  }
  return "?";
}

double dp_wan_bytes_per_site(double params, const ParallelPlan& p, int64_t micro_batches,
                             int64_t sites) {
  if (sites <= 1) return 0;
  double share = static_cast<double>(sites - 1) / static_cast<double>(sites);
  double grad = params * p.grad_bits / 8.0;
  double weights = params * 2.0;
  if (p.zero == 0) return 2.0 * share * grad;
  if (p.zero <= 2) return share * (grad + weights);
  double gathers = p.recompute == Recompute::Full ? 3.0 : 2.0;
  return share * static_cast<double>(micro_batches) * (grad + gathers * weights);
}

namespace {

constexpr double kUnlimited = 1e30;  // bytes/s standing in for an infinitely fast WAN

// Smallest bandwidth (bytes/s) with utilisation(bw) >= target, by bisection on
// log(bw); +inf when even kUnlimited falls short.
template <typename Utilisation>
double needed_bandwidth(Utilisation utilisation, double target) {
  double lo = 1e2, hi = 1e19;
  if (utilisation(hi) < target) return std::numeric_limits<double>::infinity();
  if (utilisation(lo) >= target) return lo;
  for (int i = 0; i < 80; ++i) {
    double mid = std::sqrt(lo * hi);
    (utilisation(mid) >= target ? hi : lo) = mid;
    if (hi / lo < 1.0005) break;
  }
  return hi;
}

}  // namespace

CrossSiteAnalysis analyse_cross_site(const ModelSpec& model, const ClusterSpec& cluster,
                                     const ParallelPlan& plan_in, const CrossSiteOptions& opt,
                                     int points) {
  if (!(opt.target > 0 && opt.target < 1))
    throw ConfigError(fmt::format("target utilisation {} is not between 0 and 1", opt.target),
                      "e.g. --target 0.9");
  ParallelPlan plan = plan_in;
  plan.diloco = DilocoOptions{};
  plan.order = MeshOrder::DpOuter;
  // Resolve dp, batch and sequence length once, on the cluster as given.
  auto whole = estimate_step(model, cluster, plan);
  plan = whole.plan;

  CrossSiteAnalysis a;
  a.sites = cluster.sites > 1 ? cluster.sites : opt.sites;
  a.hypothetical = cluster.sites == 1;
  if (a.sites < 2)
    throw ConfigError("the cross-site analysis needs at least 2 sites", "e.g. --sites 2");
  a.gpus = whole.gpus;
  if (plan.dp % a.sites != 0)
    throw ConfigError(fmt::format("dp {} does not split over {} sites", plan.dp, a.sites),
                      "each site must hold whole replicas: make dp a multiple of the sites");
  a.wan_bandwidth = cluster.sites > 1 ? cluster.wan.bandwidth : 0;
  a.wan_latency = cluster.wan.latency;
  a.target = opt.target;
  a.params = model.total_params();
  a.diloco = opt.diloco;
  a.plan = plan;

  // The job's GPUs, split evenly over the sites.
  ClusterSpec split = cluster;
  split.gpus = whole.gpus;
  split.sites = a.sites;
  split.pod_gpus = std::min(cluster.pod_gpus, whole.gpus / a.sites);
  auto at = [&](double bw, double lat) {
    ClusterSpec c = split;
    c.wan.bandwidth = bw;
    c.wan.latency = lat;
    return c;
  };
  auto free_wan = at(kUnlimited, 0);

  // Data parallel: the step model with this WAN in the DP all-reduce.
  double t_dp_local = estimate_step(model, free_wan, plan).step_time;
  auto dp_util = [&](double bw) {
    return t_dp_local / estimate_step(model, at(bw, a.wan_latency), plan).step_time;
  };
  // DiLoCo: the inner step trains within a site; the outer sync comes on top.
  ParallelPlan inner_plan = plan;
  inner_plan.diloco = opt.diloco;
  inner_plan.diloco.enabled = true;
  inner_plan.diloco.streaming = false;
  auto inner = estimate_step(model, free_wan, inner_plan);
  double t_inner = inner.compute + inner.bubble;
  for (auto& row : inner.comm)
    if (row.dimension == "tensor parallel" || row.dimension == "pipeline p2p" ||
        row.dimension == "data parallel")
      t_inner += row.exposed;
  DilocoOptions plain = opt.diloco, streaming = opt.diloco;
  plain.streaming = false;
  streaming.streaming = true;
  auto diloco_util = [&](const DilocoOptions& d) {
    return [&, d](double bw) {
      return diloco_utilisation(d, t_inner, a.params, a.sites, bw, a.wan_latency);
    };
  };

  double h = static_cast<double>(opt.diloco.inner_steps);
  CrossSiteModeResult dp{CrossSiteMode::DataParallel,
                         fmt::format("data parallel ({}-bit gradients, ZeRO-{})", plan.grad_bits, plan.zero),
                         dp_wan_bytes_per_site(a.params, plan, whole.micro_batches, a.sites), 1,
                         t_dp_local};
  CrossSiteModeResult dl{CrossSiteMode::Diloco,
                         fmt::format("DiLoCo (H={}, {}-bit)", opt.diloco.inner_steps, opt.diloco.bits),
                         outer_sync_bytes_per_site(a.params, opt.diloco.bits, a.sites), h, t_inner};
  CrossSiteModeResult sd{CrossSiteMode::StreamingDiloco,
                         fmt::format("streaming DiLoCo (H={}, {}-bit, F={}, τ={})",
                                     opt.diloco.inner_steps, opt.diloco.bits, opt.diloco.fragments,
                                     format_sig3(streaming.tau())),
                         outer_sync_bytes_per_site(a.params, opt.diloco.bits, a.sites), h, t_inner};
  std::vector<std::function<double(double)>> util{dp_util, diloco_util(plain), diloco_util(streaming)};
  a.modes = {dp, dl, sd};
  for (size_t i = 0; i < a.modes.size(); ++i) {
    auto& m = a.modes[i];
    m.average_rate = m.bytes_per_sync / (m.steps_per_sync * m.local_step_time);
    m.needed_bandwidth = needed_bandwidth(util[i], opt.target);
    if (a.wan_bandwidth > 0) m.utilisation_at_wan = util[i](a.wan_bandwidth);
  }

  // The curve spans from well below the cheapest need to well above the dearest.
  double lo = kUnlimited, hi = 0;
  for (auto& m : a.modes) {
    double need = std::isfinite(m.needed_bandwidth) ? m.needed_bandwidth : m.average_rate * 100;
    lo = std::min(lo, need);
    hi = std::max(hi, need);
  }
  if (a.wan_bandwidth > 0) {
    lo = std::min(lo, a.wan_bandwidth);
    hi = std::max(hi, a.wan_bandwidth);
  }
  // Decades in bits per second, at least two either side.
  double lo_bits = std::pow(10.0, std::floor(std::log10(lo * 8)) - 2);
  double hi_bits = std::pow(10.0, std::ceil(std::log10(hi * 8)) + 1);
  for (int i = 0; i < points; ++i) {
    double bits = lo_bits * std::pow(hi_bits / lo_bits, static_cast<double>(i) / (points - 1));
    CrossSitePoint pt;
    pt.bandwidth = bits / 8;
    for (int k = 0; k < 3; ++k) pt.utilisation[k] = util[k](pt.bandwidth);
    a.curve.push_back(pt);
  }
  return a;
}

}  // namespace braid::plan
