#pragma once
// `braid plan --search`: every layout of a fixed global batch on a fixed
// number of GPUs, ranked by step time among those that fit in memory.
//
// Cost: one estimate_step per candidate (microseconds each). The space is
// tp over the powers of two that divide the heads, up to the scale-up domain;
// pp over the divisors of GPUs/tp up to the layer count; ZeRO 0-3; micro-batches
// of 1, 2, 4, 8, 16 sequences; the three recompute modes; and 1F1B or
// interleaved (v = 2, 4) schedules — at most a few tens of thousands of plans.
#include <cstdint>
#include <vector>

#include "plan/step_model.hpp"

namespace braid::plan {

struct SearchResult {
  std::vector<StepEstimate> best;  // fastest first, all fitting in memory
  int64_t considered = 0;          // layouts tried
  int64_t invalid = 0;             // rejected by a rule (divisibility, batch split, ...)
  int64_t too_big = 0;             // valid but not fitting in memory
};

// `base` fixes what is not searched: global batch (required), sequence length,
// gradient precision, overlap, GPU order, sequence parallelism, attention.
// The GPU count is base.dp·base.tp·base.pp when base.dp > 0, else the cluster's.
SearchResult search_plans(const ModelSpec& model, const ClusterSpec& cluster,
                          const ParallelPlan& base, size_t top);

}  // namespace braid::plan
