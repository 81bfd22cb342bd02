#include "train/compute_threads.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/thread.hpp"

namespace braid::train {

std::string ComputeThreads::describe() const {
  return fmt::format("{} BLAS + {} intra-op thread{}", blas, intra_op, intra_op == 1 ? "" : "s");
}

int compute_threads_for(int configured, int local_ranks) {
  if (configured > 0) return configured;
  return std::max(1, available_cpus() / std::max(1, local_ranks));
}

void set_compute_threads(int blas, int intra_op) {
  torch::set_num_threads(std::max(1, intra_op));
  // Looked up at run time: the BLAS behind libblas.so.3 is chosen by Debian's
  // alternatives and need not be OpenBLAS.
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    f(std::max(1, blas));
}

bool keep_freed_memory() {
  const char* defaults = std::getenv("BRAID_MALLOC_DEFAULTS");
  if (defaults && std::strcmp(defaults, "1") == 0) return false;
  bool ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;  // glibc's upper limit on 64-bit hosts
  ok = mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 && ok;
  ok = mallopt(M_TOP_PAD, 16 << 20) == 1 && ok;
  return ok;
}

ComputeThreads set_compute_threads(int cores) {
  static const bool allocator_set = keep_freed_memory();
  (void)allocator_set;
  ComputeThreads t;
  t.blas = std::max(1, cores);
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  bool passive = policy && (strcasecmp(policy, "passive") == 0);
  t.intra_op = passive ? t.blas : 1;
  set_compute_threads(t.blas, t.intra_op);
  return t;
}

int blas_threads() {
  using GetThreads = int (*)();
  if (auto f = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"))) return f();
  return -1;
}

}  // namespace braid::train
