#include "plan/plan_search.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"

namespace braid::plan {

SearchResult search_plans(const ModelSpec& model, const ClusterSpec& cluster,
                          const ParallelPlan& base, size_t top) {
  if (base.global_batch <= 0)
    throw ConfigError("--search needs a fixed global batch to compare layouts",
                      "give --global-batch SEQUENCES or --batch-tokens TOKENS (e.g. 16Mi)");
  int64_t gpus = base.dp > 0 ? base.dp * base.tp * base.pp : cluster.gpus;
  if (gpus > cluster.gpus)
    throw ConfigError(fmt::format("{} GPUs asked for, cluster '{}' has {}", gpus, cluster.name, cluster.gpus),
                      "lower --gpus");

  struct Candidate {
    double step_time;
    double memory;
    ParallelPlan plan;
  };
  std::vector<Candidate> fitting;
  SearchResult result;
  std::vector<int64_t> micro_batches{1, 2, 4, 8, 16};
  for (int64_t tp = 1; tp <= std::min<int64_t>(cluster.domain_size, model.heads); tp *= 2) {
    if (gpus % tp != 0) continue;
    for (int64_t pp = 1; pp <= std::min<int64_t>(model.layers, gpus / tp); ++pp) {
      if ((gpus / tp) % pp != 0) continue;
      int64_t dp = gpus / (tp * pp);
      for (int zero = 0; zero <= 3; ++zero)
        for (int64_t mb : micro_batches)
          for (auto rc : {Recompute::None, Recompute::Selective, Recompute::Full})
            for (int64_t v : {int64_t{1}, int64_t{2}, int64_t{4}}) {
              if (pp == 1 && v > 1) continue;
              // With FlashAttention selective recomputation is the same plan as none.
              if (base.flash_attention && rc == Recompute::Selective) continue;
              ParallelPlan p = base;
              p.dp = dp;
              p.tp = tp;
              p.pp = pp;
              p.zero = zero;
              p.micro_batch = mb;
              p.recompute = rc;
              p.schedule = v > 1 ? Schedule::Interleaved : Schedule::OneFOneB;
              p.virtual_stages = v;
              ++result.considered;
              try {
                auto e = estimate_step(model, cluster, p);
                if (!e.memory.fits) {
                  ++result.too_big;
                  continue;
                }
                fitting.push_back({e.step_time, e.memory.total, e.plan});
              } catch (const ConfigError&) {
                ++result.invalid;
              }
            }
    }
  }
  std::sort(fitting.begin(), fitting.end(), [](const Candidate& a, const Candidate& b) {
    return a.step_time != b.step_time ? a.step_time < b.step_time : a.memory < b.memory;
  });
  for (size_t i = 0; i < fitting.size() && result.best.size() < top; ++i)
    result.best.push_back(estimate_step(model, cluster, fitting[i].plan));
  return result;
}

}  // namespace braid::plan
