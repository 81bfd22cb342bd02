#pragma once
// Gradient buckets: contiguous ranges of the flat gradient buffer, built by
// walking the parameters backwards (the order backward produces them), closing
// a bucket once it holds at least `bucket_bytes`. A parameter larger than a
// bucket gets a bucket of its own; it is never split. The plan depends only on
// the model layout and the size, so every rank builds the same buckets.
#include <cstdint>
#include <vector>

#include "train/flat_parameters.hpp"

namespace braid::train {

struct GradBucket {
  int64_t begin = 0;       // first element in the flat gradient buffer
  int64_t end = 0;         // one past the last
  std::vector<int> slots;  // parameters in it (descending slot index)
  int64_t numel() const { return end - begin; }
};

std::vector<GradBucket> plan_grad_buckets(const FlatParameters& params, uint64_t bucket_bytes);

}  // namespace braid::train
