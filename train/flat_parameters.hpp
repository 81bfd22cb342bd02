#pragma once
// Parameters and gradients of a model in two flat buffers, with one tensor
// view per parameter (llm.c's layout; DDP's gradient-as-bucket-view).
//
// Every parameter is a leaf tensor whose storage is a slice of `params()`,
// and its .grad is preset to the matching slice of `grads()`. Autograd then
// accumulates into the flat gradient buffer in place, so a gradient bucket, a
// ZeRO shard or a checkpoint shard is just a range [begin, end) of one buffer
// and needs no copy. Slots are laid out in registration order (the model's
// forward order); buckets walk them backwards.
#include "train/pch.hpp"

#include <string>
#include <vector>

namespace braid::train {

struct ParamSlot {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // first element in the flat buffers
  int64_t numel = 0;
  bool decay = false;  // weight decay applies (matrices and embeddings)
  torch::Tensor param;  // leaf, requires grad, storage inside params()
  torch::Tensor grad;   // the same range of grads(); param.grad() is this tensor
};

class FlatParameters {
 public:
  explicit FlatParameters(torch::Dtype dtype = torch::kFloat32) : dtype_(dtype) {}
  FlatParameters(const FlatParameters&) = delete;
  FlatParameters& operator=(const FlatParameters&) = delete;

  // Layout phase: reserves a slot and returns its index. allocate() must follow.
  int add(const std::string& name, std::vector<int64_t> shape, bool decay);
  // Creates the two zeroed buffers and the per-parameter views.
  void allocate();

  // Sets every gradient to zero (one memset over the flat buffer).
  void zero_grads();
  // Re-attaches each slot's grad view as param.grad() (call if anything reset .grad).
  void attach_grads();

  const std::vector<ParamSlot>& slots() const { return slots_; }
  ParamSlot& slot(int i) { return slots_.at(static_cast<size_t>(i)); }
  int64_t numel() const { return numel_; }
  torch::Dtype dtype() const { return dtype_; }
  // The 1-D flat buffers.
  const torch::Tensor& params() const { return params_; }
  const torch::Tensor& grads() const { return grads_; }
  // Σ g² over grads()[begin, end), accumulated in double.
  double grad_sum_of_squares(int64_t begin, int64_t end) const;
  // Raw float views (dtype must be float32).
  float* param_data();
  float* grad_data();

 private:
  torch::Dtype dtype_;
  std::vector<ParamSlot> slots_;
  int64_t numel_ = 0;
  bool allocated_ = false;
  torch::Tensor params_;
  torch::Tensor grads_;
};

}  // namespace braid::train
