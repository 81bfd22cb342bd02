#include "plan/diloco_model.hpp"

#include <algorithm>

namespace braid::plan {

double DilocoOptions::tau() const {
  if (overlap_steps >= 0) return overlap_steps;
  return static_cast<double>(inner_steps) / static_cast<double>(std::max<int64_t>(fragments, 1));
}

double outer_sync_bytes_per_site(double params, int bits, int64_t sites) {
  if (sites <= 1) return 0;
  double s = static_cast<double>(sites);
  return 2.0 * (s - 1) / s * params * bits / 8.0;
}

double outer_sync_time(double params, int bits, int64_t sites, double bw, double lat) {
  if (sites <= 1) return 0;
  return outer_sync_bytes_per_site(params, bits, sites) / bw + 2.0 * static_cast<double>(sites - 1) * lat;
}

double diloco_period(const DilocoOptions& o, double t, double params, int64_t sites, double bw,
                     double lat) {
  double h = static_cast<double>(o.inner_steps);
  if (sites <= 1) return h * t;
  if (!o.streaming) return h * t + outer_sync_time(params, o.bits, sites, bw, lat);
  double f = static_cast<double>(std::max<int64_t>(o.fragments, 1));
  double fragment = outer_sync_bytes_per_site(params, o.bits, sites) / f / bw +
                    2.0 * static_cast<double>(sites - 1) * lat;
  double stalls = f * std::max(0.0, fragment - o.tau() * t);
  return std::max(h * t + stalls, f * fragment);
}

double diloco_utilisation(const DilocoOptions& o, double t, double params, int64_t sites,
                          double bw, double lat) {
  double h = static_cast<double>(o.inner_steps);
  return h * t / diloco_period(o, t, params, sites, bw, lat);
}

}  // namespace braid::plan
