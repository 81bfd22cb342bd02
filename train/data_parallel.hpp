#pragma once
// Data parallelism with communication overlapped with backward (as c10d's
// Reducer): each rank holds the whole model; after the last micro-step's
// backward every gradient is averaged over the ranks, one all-reduce per
// bucket. A bucket's all-reduce is launched from the grad-accumulator post
// hooks of its parameters, i.e. as soon as backward has produced all of its
// gradients, while backward goes on with earlier layers.
//
// Cost model: each rank sends and receives about 2·(N-1)/N of the gradient
// bytes per optimizer step (ring all-reduce); with overlap only the part of it
// that outlasts backward is exposed — at best the last bucket's all-reduce.
// Buckets are launched in plan order on every rank (a bucket that becomes
// ready early waits for its predecessors), as the Communicator requires.
#include <exception>
#include <memory>
#include <vector>

#include "comm/communicator.hpp"
#include "train/grad_buckets.hpp"
#include "train/train_config.hpp"

namespace braid::train {

// Communication of one optimizer step, in seconds.
struct CommTiming {
  double comm_s = 0;         // time with at least one bucket all-reduce in flight
  double exposed_s = 0;      // time the step waited for them after backward
  uint64_t bytes_sent = 0;   // by this rank, all collectives of the step
  int buckets = 0;
  int launched_in_backward = 0;  // buckets launched from gradient hooks
};

class DataParallel {
 public:
  // comm may be null or of size 1: then nothing is communicated.
  DataParallel(FlatParameters& params, comm::Communicator* comm, const ParallelConfig& config);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Call before each micro-step's backward; `last_micro_step` says whether
  // this backward completes the gradients of the optimizer step (only then
  // are buckets all-reduced: accumulation micro-steps stay local).
  void begin_backward(bool last_micro_step);
  // Call after the last micro-step's backward: launches any bucket not yet
  // launched (unused parameters, or overlap off), waits for all of them, and
  // rethrows a communication error (PeerLost, Timeout, ...).
  void finish_gradient_sync();

  const std::vector<GradBucket>& buckets() const { return buckets_; }
  // Timing of the last finish_gradient_sync().
  const CommTiming& last_timing() const { return timing_; }
  bool distributed() const { return comm_ != nullptr && comm_->size() > 1; }

 private:
  void on_gradient_ready(int slot);
  void launch_ready_buckets();
  void launch(size_t bucket);

  FlatParameters& params_;
  comm::Communicator* comm_;
  ParallelConfig config_;
  comm::CollectiveOptions collective_;
  std::vector<GradBucket> buckets_;
  std::vector<int> bucket_of_slot_;
  std::vector<int> pending_in_bucket_;  // gradients still to come, this backward
  std::vector<comm::Work> works_;       // one per launched bucket
  size_t next_to_launch_ = 0;
  bool armed_ = false;
  std::exception_ptr hook_error_;
  uint64_t sent_before_ = 0;
  // The accumulators are held here: a leaf's AccumulateGrad node lives only
  // as long as someone owns it, and with it our hooks.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  CommTiming timing_;
};

// Sums a few doubles over all ranks (bit-identical result on every rank);
// a no-op without a communicator.
void all_reduce_sum(comm::Communicator* comm, std::vector<double>& values, double timeout_s);

}  // namespace braid::train
