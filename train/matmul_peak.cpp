#include "train/matmul_peak.hpp"

#include <fmt/format.h>

#include "core/clock.hpp"
#include "train/compute_threads.hpp"

namespace braid::train {

std::string MatmulPeak::describe() const {
  return fmt::format("{:.1f} GFLOP/s (fp32 {}x{}x{} torch::mm, {} BLAS thread{})", flops_per_s * 1e-9, size,
                     size, size, threads, threads == 1 ? "" : "s");
}

MatmulPeak measure_matmul_peak(double budget_s) {
  torch::NoGradGuard no_grad;
  MatmulPeak best;
  best.threads = blas_threads() > 0 ? blas_threads() : torch::get_num_threads();
  const int sizes[] = {256, 512, 1024};
  const double per_size = budget_s / 3.0;
  for (int n : sizes) {
    auto a = torch::randn({n, n});
    auto b = torch::randn({n, n});
    auto c = torch::empty({n, n});
    torch::mm_out(c, a, b);  // warm-up: first call pays for thread start and page faults
    const double flops = 2.0 * n * n * n;
    Stopwatch total;
    while (total.seconds() < per_size) {
      Stopwatch one;
      torch::mm_out(c, a, b);
      double rate = flops / std::max(one.seconds(), 1e-9);
      if (rate > best.flops_per_s) {
        best.flops_per_s = rate;
        best.size = n;
      }
    }
  }
  return best;
}

}  // namespace braid::train
