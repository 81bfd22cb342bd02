#pragma once
// The state behind a Work handle, the description of a queued operation, and
// the failure state a group of communicators over one mesh shares.
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>

#include "comm/communicator.hpp"
#include "comm/tuning.hpp"
#include "core/clock.hpp"
#include "net/mesh.hpp"

namespace braid::comm {

// One collective, resolved at issue time (algorithm, check value, sequence).
struct OpDesc {
  OpKind kind = OpKind::AllReduce;
  const void* in = nullptr;
  void* out = nullptr;
  size_t count = 0;
  DType type = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  int root = 0;
  Algo algo = Algo::Ring;
  Algo cross_host = Algo::Ring;  // hierarchical: the algorithm across hosts
  double timeout_s = 60;
  uint64_t seq = 0;
  uint32_t meta = 0;
  const Codec* codec = nullptr;  // compressed all-reduce (comm/algo/codec_ring.cpp)
  uint64_t flight = 0;           // its flight recorder token (comm/flight_recorder.hpp)
};

// The first failure of any communicator over a mesh (the world one and its
// subgroups share it). Once failed, every operation fails with that error:
// a new membership means a new mesh and a new Communicator.
class FailureState {
 public:
  explicit FailureState(std::weak_ptr<net::Mesh> mesh) : mesh_(std::move(mesh)) {}
  // Records `e` if it is the first failure and, when `spread` (and no earlier
  // call spread), tells every peer (Mesh::abort with the kind of the failure
  // that stands), which also fails this rank's pending requests, so no
  // transport writes into a failed operation's buffers afterwards. Returns
  // the failure that stands (the first one).
  //
  // A failed operation spreads (its peers may be waiting for it). A pair
  // failure reported by the transport is only recorded: the operation in
  // flight fails by itself if it needs that peer (its requests fail, and it
  // spreads), and may still finish if it does not — a peer that closes its
  // mesh right after the last collective is a normal end of a job, not a
  // reason to break the collectives still finishing elsewhere.
  std::exception_ptr fail(std::exception_ptr e, bool spread = true);
  std::exception_ptr error() const;
  bool failed() const { return failed_.load(std::memory_order_acquire); }

 private:
  std::weak_ptr<net::Mesh> mesh_;
  std::atomic<bool> failed_{false};
  mutable std::mutex mu_;
  std::exception_ptr error_;
  bool spread_ = false;  // the mesh was aborted (mu_)
};

// The AbortKind that carries an error of this type to the peers.
net::AbortKind abort_kind_of(const std::exception_ptr& e);

class WorkState {
 public:
  enum : uint32_t { kPending = 0, kDone = 1, kFailed = 2, kFailing = 3 };

  void complete();
  void fail(std::exception_ptr e);
  // Spins briefly, then sleeps on a futex until complete or failed.
  void wait_done();
  uint32_t state() const { return state_.load(std::memory_order_acquire); }
  bool finished() const { uint32_t s = state(); return s == kDone || s == kFailed; }
  std::exception_ptr error() const { return error_; }  // valid once failed

  WorkTiming timing;
  OpDesc op;  // queued collectives
  // Point-to-point operations wait on their request directly.
  net::RequestPtr request;
  Deadline deadline = Deadline::never();
  std::shared_ptr<FailureState> failure;

 private:
  std::atomic<uint32_t> state_{kPending};
  std::atomic<uint32_t> waiters_{0};
  std::exception_ptr error_;
};

std::shared_ptr<WorkState> failed_work(std::exception_ptr e);

}  // namespace braid::comm
