#pragma once
// This host's matmul throughput, measured, as the denominator of MFU. There is
// no datasheet peak for a shared 2-core VM, so we time square fp32 GEMMs
// (torch::mm, the same BLAS the model uses, its current thread count) and take the
// best rate. MFU against it says how close the model's step gets to what the
// BLAS can do on this machine, not to a vendor figure.
#include <string>

namespace braid::train {

struct MatmulPeak {
  double flops_per_s = 0;
  int size = 0;       // n of the n×n×n GEMM that reached it
  int threads = 0;
  std::string describe() const;  // "41.2 GFLOP/s (fp32 1024x1024x1024 torch::mm, 1 BLAS thread)"
};

// Times GEMMs of a few sizes for about budget_s seconds in total.
MatmulPeak measure_matmul_peak(double budget_s = 0.6);

}  // namespace braid::train
