#include "train/tensor_parallel.hpp"

#include <fmt/format.h>

#include "core/error.hpp"

namespace braid::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

DType comm_dtype_of(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kFloat32) return DType::F32;
  if (t.scalar_type() == torch::kFloat64) return DType::F64;
  throw Error(fmt::format("tensor parallelism: activations of type {} are not supported", c10::toString(t.scalar_type())),
              "train in float32 (or float64 for gradient checks)");
}

torch::Tensor all_reduced(const torch::Tensor& x, comm::Communicator* comm, double timeout_s) {
  auto out = x.contiguous().clone();
  all_reduce_tensor_sum(out, comm, timeout_s);
  return out;
}

// Pointers travel through saved_data as integers (IValue holds no raw pointer).
void save_comm(AutogradContext* ctx, comm::Communicator* comm, double timeout_s) {
  ctx->saved_data["comm"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(comm));
  ctx->saved_data["timeout"] = timeout_s;
}
comm::Communicator* comm_of(AutogradContext* ctx) {
  return reinterpret_cast<comm::Communicator*>(static_cast<intptr_t>(ctx->saved_data["comm"].toInt()));
}

class CopyToTensorParallel : public torch::autograd::Function<CopyToTensorParallel> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm, double timeout_s) {
    save_comm(ctx, reinterpret_cast<comm::Communicator*>(static_cast<intptr_t>(comm)), timeout_s);
    return x.clone();  // a fresh output for the new autograd node (one copy of B·T·C, cheap beside the matmuls)
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_reduced(grads[0], comm_of(ctx), ctx->saved_data["timeout"].toDouble()), torch::Tensor(),
            torch::Tensor()};
  }
};

class ReduceFromTensorParallel : public torch::autograd::Function<ReduceFromTensorParallel> {
 public:
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, int64_t comm, double timeout_s) {
    return all_reduced(x, reinterpret_cast<comm::Communicator*>(static_cast<intptr_t>(comm)), timeout_s);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], torch::Tensor(), torch::Tensor()};
  }
};

int64_t as_int(comm::Communicator* c) { return static_cast<int64_t>(reinterpret_cast<intptr_t>(c)); }
comm::Communicator* as_comm(int64_t c) { return reinterpret_cast<comm::Communicator*>(static_cast<intptr_t>(c)); }

void check_sequence_shape(const torch::Tensor& x, int parts, const char* what) {
  if (x.dim() != 3 || x.size(1) % parts != 0)
    throw Error(fmt::format("sequence parallelism: {} of shape {} cannot be split {} ways on its sequence dimension",
                            what, fmt::join(x.sizes(), "x"), parts),
                "use a context (and sample length) that tp divides");
}

// [B, t, C] per rank -> [B, tp·t, C], rank r's positions at [r·t, (r+1)·t).
torch::Tensor all_gathered_sequence(const torch::Tensor& x, comm::Communicator* comm, double timeout_s) {
  const int n = comm->size();
  auto in = x.contiguous();
  auto blocks = torch::empty({n, in.size(0), in.size(1), in.size(2)}, in.options());
  comm::CollectiveOptions o;
  o.timeout_s = timeout_s;
  comm->all_gather(in.data_ptr(), blocks.data_ptr(), static_cast<size_t>(in.numel()), comm_dtype_of(in), o).wait();
  return blocks.permute({1, 0, 2, 3}).reshape({in.size(0), n * in.size(1), in.size(2)});
}

// [B, T, C] partial sums -> this rank's positions [B, T/tp, C] of the sum.
torch::Tensor reduce_scattered_sequence(const torch::Tensor& x, comm::Communicator* comm, double timeout_s) {
  const int n = comm->size();
  check_sequence_shape(x, n, "an activation");
  const int64_t B = x.size(0), t = x.size(1) / n, C = x.size(2);
  auto blocks = x.reshape({B, n, t, C}).permute({1, 0, 2, 3}).contiguous();
  auto out = torch::empty({B, t, C}, x.options());
  comm::CollectiveOptions o;
  o.timeout_s = timeout_s;
  comm->reduce_scatter(blocks.data_ptr(), out.data_ptr(), static_cast<size_t>(out.numel()), comm_dtype_of(x),
                       comm::ReduceOp::Sum, o)
      .wait();
  return out;
}

torch::Tensor own_positions(const torch::Tensor& x, comm::Communicator* comm, double /*timeout_s*/) {
  check_sequence_shape(x, comm->size(), "an activation");
  const int64_t t = x.size(1) / comm->size();
  return x.narrow(1, comm->rank() * t, t).contiguous();
}

using SequenceFn = torch::Tensor (*)(const torch::Tensor&, comm::Communicator*, double);

// One autograd function per (forward, backward) pair of sequence operations.
template <SequenceFn Forward, SequenceFn Backward>
class SequenceOp : public torch::autograd::Function<SequenceOp<Forward, Backward>> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm, double timeout_s) {
    save_comm(ctx, as_comm(comm), timeout_s);
    return Forward(x, as_comm(comm), timeout_s);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto dx = Backward(grads[0], comm_of(ctx), ctx->saved_data["timeout"].toDouble());
    return {dx, torch::Tensor(), torch::Tensor()};  // no gradients for the communicator and the timeout
  }
};
using GatherSequence = SequenceOp<all_gathered_sequence, reduce_scattered_sequence>;
using ScatterSequence = SequenceOp<reduce_scattered_sequence, all_gathered_sequence>;
using SplitSequence = SequenceOp<own_positions, all_gathered_sequence>;
using UnsplitSequence = SequenceOp<all_gathered_sequence, own_positions>;

}  // namespace

torch::Tensor gather_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s) {
  if (!tp || tp->size() == 1) return x;
  return GatherSequence::apply(x, as_int(tp), timeout_s);
}

torch::Tensor scatter_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s) {
  if (!tp || tp->size() == 1) return x;
  return ScatterSequence::apply(x, as_int(tp), timeout_s);
}

torch::Tensor split_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s) {
  if (!tp || tp->size() == 1) return x;
  return SplitSequence::apply(x, as_int(tp), timeout_s);
}

torch::Tensor unsplit_sequence(const torch::Tensor& x, comm::Communicator* tp, double timeout_s) {
  if (!tp || tp->size() == 1) return x;
  return UnsplitSequence::apply(x, as_int(tp), timeout_s);
}

void all_reduce_tensor_sum(torch::Tensor& t, comm::Communicator* comm, double timeout_s) {
  if (!comm || comm->size() == 1) return;
  if (!t.is_contiguous()) throw Error("all_reduce_tensor_sum: the tensor must be contiguous");
  comm::CollectiveOptions o;
  o.timeout_s = timeout_s;
  comm->all_reduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), comm_dtype_of(t),
                   comm::ReduceOp::Sum, o)
      .wait();
}

torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, comm::Communicator* tp, double timeout_s) {
  if (!tp || tp->size() == 1) return x;
  return CopyToTensorParallel::apply(x, as_int(tp), timeout_s);
}

torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, comm::Communicator* tp, double timeout_s) {
  if (!tp || tp->size() == 1) return x;
  return ReduceFromTensorParallel::apply(x, as_int(tp), timeout_s);
}

}  // namespace braid::train
