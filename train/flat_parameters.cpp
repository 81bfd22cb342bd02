#include "train/flat_parameters.hpp"

#include "core/error.hpp"

namespace braid::train {

int FlatParameters::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  if (allocated_) throw Error("FlatParameters::add after allocate()");
  int64_t n = 1;
  for (auto d : shape) n *= d;
  ParamSlot s;
  s.name = name;
  s.shape = std::move(shape);
  s.offset = numel_;
  s.numel = n;
  s.decay = decay;
  numel_ += n;
  slots_.push_back(std::move(s));
  return static_cast<int>(slots_.size() - 1);
}

void FlatParameters::allocate() {
  if (allocated_) throw Error("FlatParameters::allocate called twice");
  auto opts = torch::TensorOptions().dtype(dtype_);
  params_ = torch::zeros({numel_}, opts);
  grads_ = torch::zeros({numel_}, opts);
  for (auto& s : slots_) {
    // A fresh leaf whose data is then pointed at the flat slice: it stays a leaf
    // (own grad accumulator) while sharing the flat buffer's storage.
    s.param = torch::empty(s.shape, opts).requires_grad_(true);
    s.param.set_data(params_.narrow(0, s.offset, s.numel).view(s.shape));
    s.grad = grads_.narrow(0, s.offset, s.numel).view(s.shape);
  }
  allocated_ = true;
  attach_grads();
}

void FlatParameters::attach_grads() {
  for (auto& s : slots_) s.param.mutable_grad() = s.grad;
}

void FlatParameters::zero_grads() {
  torch::NoGradGuard no_grad;
  grads_.zero_();
}

double FlatParameters::grad_sum_of_squares(int64_t begin, int64_t end) const {
  if (begin < 0 || end > numel_ || begin > end) throw Error("grad_sum_of_squares: range out of bounds");
  // Four partial sums: independent chains keep the FPU busy without
  // reassociating (the order is fixed, so the result is deterministic).
  auto sum = [&](const auto* g) {
    double s[4] = {0, 0, 0, 0};
    int64_t i = begin;
    for (; i + 4 <= end; i += 4)
      for (int k = 0; k < 4; ++k) s[k] += static_cast<double>(g[i + k]) * static_cast<double>(g[i + k]);
    for (; i < end; ++i) s[0] += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    return (s[0] + s[1]) + (s[2] + s[3]);
  };
  if (dtype_ == torch::kFloat32) return sum(grads_.data_ptr<float>());
  if (dtype_ == torch::kFloat64) return sum(grads_.data_ptr<double>());
  throw Error("grad_sum_of_squares: unsupported dtype");
}

float* FlatParameters::param_data() {
  if (dtype_ != torch::kFloat32) throw Error("flat parameters are not float32");
  return params_.data_ptr<float>();
}

float* FlatParameters::grad_data() {
  if (dtype_ != torch::kFloat32) throw Error("flat gradients are not float32");
  return grads_.data_ptr<float>();
}

}  // namespace braid::train
