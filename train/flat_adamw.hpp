#pragma once
// AdamW over flat float buffers (llm.c style): the moments live in two flat
// arrays parallel to the parameter buffer, and one pass over a range updates
// moments and parameters together. Cost: one read of grads, one read-write of
// params, m and v per element per step (memory bound; ~16 B moved per
// parameter), instead of the ~10 separate tensor passes of an op-by-op AdamW.
// No LibTorch here: ranges are plain spans, so ZeRO can apply it to a shard.
#include <cstdint>
#include <span>
#include <vector>

namespace braid::train {

struct AdamWHyper {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class FlatAdamW {
 public:
  // State for `numel` parameters (moments start at zero).
  FlatAdamW(int64_t numel, AdamWHyper hyper);

  // Starts a new optimizer step (advances the bias-correction counter).
  void begin_step() { ++step_; }
  // Updates params[begin, end) from grads[begin, end) with learning rate lr.
  // grad_scale multiplies every gradient first (gradient clipping without an
  // extra pass); decay selects whether weight decay applies to this range.
  void update(float* params, const float* grads, int64_t begin, int64_t end, double lr,
              double grad_scale, bool decay);

  int64_t step() const { return step_; }
  int64_t numel() const { return static_cast<int64_t>(m_.size()); }
  // The moment buffers, for checkpoints (same layout as the parameters).
  std::span<float> exp_avg() { return m_; }
  std::span<float> exp_avg_sq() { return v_; }
  void set_step(int64_t s) { step_ = s; }
  const AdamWHyper& hyper() const { return hyper_; }

 private:
  AdamWHyper hyper_;
  int64_t step_ = 0;
  std::vector<float> m_;
  std::vector<float> v_;
};

// Warm-up then cosine decay, as in nanoGPT: lr * (step + 1) / (warmup + 1)
// during warm-up, then from lr down to min_lr at total_steps.
double lr_at(int64_t step, int64_t total_steps, int64_t warmup_steps, double lr, double min_lr);

}  // namespace braid::train
