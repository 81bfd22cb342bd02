#pragma once
// Memory accounting of one rank's model state: the bytes of the buffers the
// engine itself allocates for parameters, gradients and optimizer state
// (exact: counted at allocation and release, not sampled from the OS), and
// the formulas they are expected to follow. No LibTorch here.
//
// Formulas, for P parameters on N data-parallel ranks. braid trains in fp32,
// so plain data parallelism holds 4 (parameters) + 4 (gradients) + 8 (Adam's
// two moments) = 16 bytes per parameter — the same total as mixed-precision
// Adam's 2 + 2 + 12, split differently:
//   stage 0   4 + 4 + 8           stage 2   4 + (4 + 8)/N
//   stage 1   4 + 4 + 8/N         stage 3   (4 + 4 + 8)/N
// plus, for stages 2 and 3, the transient full-size gradients (and for stage
// 3 parameters) of the units being computed: at most a few blocks at a time.
#include <malloc.h>

#include <algorithm>
#include <cstdint>

namespace braid::train {

// Current and peak bytes of one kind of buffer.
struct ByteTally {
  int64_t current = 0;
  int64_t peak = 0;
  void add(int64_t bytes) {
    current += bytes;
    peak = std::max(peak, current);
  }
  void sub(int64_t bytes) { current -= bytes; }
};

struct ModelStateBytes {
  double params = 0;
  double grads = 0;
  double optimizer = 0;
  double total() const { return params + grads + optimizer; }
};

// Steady-state bytes per rank by the formulas above (fp32 Adam).
inline ModelStateBytes expected_model_state(int64_t num_params, int zero_stage, int ranks) {
  const double p = static_cast<double>(num_params), n = static_cast<double>(std::max(ranks, 1));
  ModelStateBytes b;
  b.params = zero_stage >= 3 ? 4 * p / n : 4 * p;
  b.grads = zero_stage >= 2 ? 4 * p / n : 4 * p;
  b.optimizer = zero_stage >= 1 ? 8 * p / n : 8 * p;
  return b;
}

// Bytes in use in glibc's heap, mmapped blocks included: LibTorch's CPU
// allocator takes every tensor from malloc, so the difference across a
// forward pass is what that pass left alive for backward (activations).
// Process-wide: meaningful only while no other thread allocates.
inline int64_t heap_bytes_in_use() {
  struct mallinfo2 mi = mallinfo2();
  return static_cast<int64_t>(mi.uordblks + mi.hblkhd);
}

}  // namespace braid::train
