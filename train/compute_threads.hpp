#pragma once
// How many threads one rank computes with. Matmuls run in OpenBLAS's own
// thread pool, everything else in LibTorch's OpenMP pool. On a host with few
// cores the two pools fight: an OpenMP worker spins after each parallel
// region (GOMP's default wait policy) on the core OpenBLAS wants next.
// Measured on the 2-core development host, 1 worker: OpenMP 2 + OpenBLAS 2
// threads took 0.33-0.39 s per step of the example model, OpenMP 1 +
// OpenBLAS 2 took 0.17-0.19 s, and OpenMP 2 + OpenBLAS 2 with
// OMP_WAIT_POLICY=passive 0.19-0.21 s. Hence the policy:
//   BLAS threads      = the rank's cores
//   OpenMP threads    = the rank's cores if OMP_WAIT_POLICY=passive is set
//                       (it must be set before the process starts), else 1.
// LibTorch itself starts with one OpenMP thread here, OpenBLAS with one per
// core; both are set explicitly.
#include <string>

namespace braid::train {

struct ComputeThreads {
  int blas = 1;
  int intra_op = 1;
  std::string describe() const;  // "2 BLAS + 1 intra-op thread(s)"
};

// configured > 0 wins; otherwise available cores / ranks on this host (≥ 1).
int compute_threads_for(int configured, int local_ranks);
// Applies the policy above for `cores` cores and returns what was set.
ComputeThreads set_compute_threads(int cores);
// Sets both pools explicitly.
void set_compute_threads(int blas, int intra_op);
// The BLAS thread count in effect, or -1 when it cannot be queried.
int blas_threads();

}  // namespace braid::train
