#pragma once
// Stragglers: in synchronous data parallelism every rank waits for the
// slowest, so step times look alike everywhere; what differs is the time a
// rank spends computing (step time minus the communication it waited for).
// Each rank averages its compute time over a window of K steps; every K
// steps the ranks exchange the averages (one all-gather of one double) and a
// rank above `factor` x the median is named.
//
// Cost: one 8-byte-per-rank all-gather every K steps.
#include <cstdint>
#include <span>
#include <vector>

namespace braid::health {

// Ranks whose value exceeds factor x the median of all values (the median of
// an even count is the mean of the two middle values).
std::vector<int> find_stragglers(std::span<const double> per_rank, double factor);
double median_of(std::span<const double> values);

class StepTimeWindow {
 public:
  void add(double compute_s) {
    sum_ += compute_s;
    ++n_;
  }
  double mean() const { return n_ ? sum_ / static_cast<double>(n_) : 0.0; }
  int64_t count() const { return n_; }
  void clear() { sum_ = 0, n_ = 0; }

 private:
  double sum_ = 0;
  int64_t n_ = 0;
};

}  // namespace braid::health
