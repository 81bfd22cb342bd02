#include "train/flat_adamw.hpp"

#include <cmath>

#include "core/error.hpp"

namespace braid::train {

FlatAdamW::FlatAdamW(int64_t numel, AdamWHyper hyper)
    : hyper_(hyper), m_(static_cast<size_t>(numel), 0.0f), v_(static_cast<size_t>(numel), 0.0f) {}

void FlatAdamW::update(float* __restrict params, const float* __restrict grads, int64_t begin,
                       int64_t end, double lr, double grad_scale, bool decay) {
  if (step_ <= 0) throw Error("FlatAdamW::update called before begin_step()");
  if (begin < 0 || end > numel() || begin > end) throw Error("FlatAdamW::update: range out of bounds");
  // Scalars in double once per call; the loop itself is float and vectorizes.
  const double bc1 = 1.0 - std::pow(hyper_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(hyper_.beta2, static_cast<double>(step_));
  const float b1 = static_cast<float>(hyper_.beta1);
  const float b2 = static_cast<float>(hyper_.beta2);
  const float one_minus_b1 = static_cast<float>(1.0 - hyper_.beta1);
  const float one_minus_b2 = static_cast<float>(1.0 - hyper_.beta2);
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float eps = static_cast<float>(hyper_.eps);
  const float keep = decay ? static_cast<float>(1.0 - lr * hyper_.weight_decay) : 1.0f;
  const float gs = static_cast<float>(grad_scale);
  float* __restrict m = m_.data();
  float* __restrict v = v_.data();
  for (int64_t i = begin; i < end; ++i) {
    float g = grads[i] * gs;
    float mi = b1 * m[i] + one_minus_b1 * g;
    float vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    float denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
    params[i] = params[i] * keep - step_size * mi / denom;
  }
}

double lr_at(int64_t step, int64_t total_steps, int64_t warmup_steps, double lr, double min_lr) {
  if (step < warmup_steps)
    return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps + 1);
  if (step >= total_steps) return min_lr;
  double span = static_cast<double>(total_steps - warmup_steps);
  double progress = span > 0 ? static_cast<double>(step - warmup_steps) / span : 1.0;
  double coeff = 0.5 * (1.0 + std::cos(M_PI * progress));
  return min_lr + coeff * (lr - min_lr);
}

}  // namespace braid::train
