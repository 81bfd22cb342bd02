#include "train/compute_threads.hpp"

#include <dlfcn.h>

#include <algorithm>

#include "core/thread.hpp"

namespace braid::train {

int compute_threads_for(int configured, int local_ranks) {
  if (configured > 0) return configured;
  return std::max(1, available_cpus() / std::max(1, local_ranks));
}

void set_compute_threads(int n) {
  n = std::max(1, n);
  torch::set_num_threads(n);
  // Looked up at run time: the BLAS behind libblas.so.3 is chosen by Debian's
  // alternatives and need not be OpenBLAS.
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

int blas_threads() {
  using GetThreads = int (*)();
  if (auto f = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"))) return f();
  return -1;
}

}  // namespace braid::train
