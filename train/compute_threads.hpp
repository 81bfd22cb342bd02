#pragma once
// How many threads one rank computes with. LibTorch here starts with one
// intra-op thread, while OpenBLAS (which does the matmuls) starts with one per
// core; with several ranks per host both must be set explicitly, or the ranks
// oversubscribe the cores and every one of them slows down.
namespace braid::train {

// configured > 0 wins; otherwise available cores / ranks on this host (≥ 1).
int compute_threads_for(int configured, int local_ranks);
// Sets LibTorch's intra-op threads and OpenBLAS's threads (when OpenBLAS is
// the loaded BLAS) to n.
void set_compute_threads(int n);
// The BLAS thread count in effect, or -1 when it cannot be queried.
int blas_threads();

}  // namespace braid::train
