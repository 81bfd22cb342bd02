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
//
// The allocator: glibc returns freed memory at the top of its heaps to the
// kernel (trim threshold 128 KiB, adjusted upwards at run time) and serves
// blocks above its mmap threshold with mmap/munmap. A training step frees
// and allocates the same activation-sized blocks every step, so every step
// faulted the same pages in again — on the development VM the first touch
// of a page costs ~10 µs (see heal_transfer.hpp), and a tp=2 step spent half
// its CPU time in the kernel. set_compute_threads(cores) therefore keeps
// freed memory in the process: blocks up to 32 MiB (glibc's largest mmap
// threshold) come from the heap, and up to 1 GiB of free heap top is kept.
// Measured with the example model on the idle 2-core VM (median step of 40,
// 2026-12-07): 1 worker 0.144 -> 0.113 s, 2 workers 0.193 -> 0.171 s,
// tp=2 0.24 -> 0.085 s, pp=2 0.176 -> 0.150 s. The resident size then stays
// at its peak instead of shrinking between steps. BRAID_MALLOC_DEFAULTS=1
// keeps glibc's behaviour.
#include <string>

namespace braid::train {

struct ComputeThreads {
  int blas = 1;
  int intra_op = 1;
  std::string describe() const;  // "2 BLAS + 1 intra-op thread(s)"
};

// configured > 0 wins; otherwise available cores / ranks on this host (≥ 1).
int compute_threads_for(int configured, int local_ranks);
// Applies the policy above for `cores` cores (and the allocator settings,
// once per process) and returns what was set.
ComputeThreads set_compute_threads(int cores);
// The allocator settings above; false when glibc refused one (or
// BRAID_MALLOC_DEFAULTS=1 is set).
bool keep_freed_memory();
// Sets both pools explicitly.
void set_compute_threads(int blas, int intra_op);
// The BLAS thread count in effect, or -1 when it cannot be queried.
int blas_threads();

}  // namespace braid::train
