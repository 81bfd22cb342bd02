#include "train/grad_buckets.hpp"

namespace braid::train {

std::vector<GradBucket> plan_grad_buckets(const FlatParameters& params, uint64_t bucket_bytes) {
  const auto& slots = params.slots();
  const uint64_t elem = static_cast<uint64_t>(torch::elementSize(params.dtype()));
  std::vector<GradBucket> buckets;
  GradBucket cur;
  uint64_t cur_bytes = 0;
  for (int i = static_cast<int>(slots.size()) - 1; i >= 0; --i) {
    const auto& s = slots[static_cast<size_t>(i)];
    if (cur.slots.empty()) cur.end = s.offset + s.numel;
    cur.begin = s.offset;
    cur.slots.push_back(i);
    cur_bytes += static_cast<uint64_t>(s.numel) * elem;
    if (cur_bytes >= bucket_bytes) {
      buckets.push_back(std::move(cur));
      cur = GradBucket{};
      cur_bytes = 0;
    }
  }
  if (!cur.slots.empty()) buckets.push_back(std::move(cur));
  return buckets;
}

}  // namespace braid::train
