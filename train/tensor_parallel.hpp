#pragma once
// Megatron's conjugate operators for tensor parallelism, as autograd
// functions over a tensor-parallel Communicator:
//
//   f = copy_to_tensor_parallel       forward identity,  backward all-reduce
//   g = reduce_from_tensor_parallel   forward all-reduce, backward identity
//
// A column-parallel linear (each rank holds a slice of the output features)
// takes f(x); a row-parallel linear (each rank holds a slice of the input
// features) produces a partial sum that g completes. An attention or MLP
// sub-block is f -> column-parallel -> local op -> row-parallel -> g, so a
// transformer layer costs two all-reduces of B·T·C activations forward and
// two backward, and everything between f and g is local.
//
// Both functions are the identity without a communicator (tp = 1). The
// all-reduce results are bit-identical on every tp rank (Communicator
// contract), so replicated parameters (LayerNorms, the row-parallel biases)
// get identical gradients on every tp rank and stay equal without a sync.
#include "train/pch.hpp"

#include "comm/communicator.hpp"

namespace braid::train {

torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, comm::Communicator* tp, double timeout_s);
torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, comm::Communicator* tp, double timeout_s);

// Sequence parallelism (Korthikanti et al. 2022): outside the column/row
// pairs, activations [B, T, C] are split on the sequence dimension, rank r
// holding positions [r·T/tp, (r+1)·T/tp). f and g become
//
//   gather_sequence    forward all-gather on T,      backward reduce-scatter on T
//   scatter_sequence   forward reduce-scatter on T,  backward all-gather on T
//
// (same bytes as one all-reduce, but LayerNorms, residuals and the stage's
// pipeline messages hold 1/tp of the sequence). At the model's edges, where
// every tp rank computes the same full-sequence values:
//
//   split_sequence     forward keep own positions,   backward all-gather on T
//   unsplit_sequence   forward all-gather on T,      backward keep own positions
//
// All four act on dimension 1 of a 3-D tensor whose length divides by tp and
// are the identity without a communicator (tp = 1).
torch::Tensor gather_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s);
torch::Tensor scatter_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s);
torch::Tensor split_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s);
torch::Tensor unsplit_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s);

// In-place sum of a contiguous float32/float64 tensor over `comm` (no autograd).
void all_reduce_tensor_sum(torch::Tensor& t, comm::Communicator* comm, double timeout_s);

}  // namespace braid::train
