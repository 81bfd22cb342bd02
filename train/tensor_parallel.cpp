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

}  // namespace

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
