#include "train/data_parallel.hpp"

#include <fmt/format.h>
#include <torch/csrc/autograd/function_hook.h>

#include <algorithm>

#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::train {
namespace {

// Runs a callback after a leaf's gradient has been accumulated into .grad.
class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  explicit GradReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    fn_();
    return outputs;
  }

 private:
  std::function<void()> fn_;
};

DType braid_dtype(torch::Dtype t) {
  if (t == torch::kFloat32) return DType::F32;
  if (t == torch::kFloat64) return DType::F64;
  throw Error("data parallel: gradients must be float32 or float64");
}

}  // namespace

DataParallel::DataParallel(FlatParameters& params, comm::Communicator* comm, const ParallelConfig& config)
    : params_(params), comm_(comm), config_(config) {
  collective_.algo = comm::parse_algo(config.algo);
  collective_.timeout_s = config.timeout_s;
  buckets_ = plan_grad_buckets(params, config.bucket_bytes);
  bucket_of_slot_.assign(params.slots().size(), -1);
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (int s : buckets_[b].slots) bucket_of_slot_[static_cast<size_t>(s)] = static_cast<int>(b);
  pending_in_bucket_.assign(buckets_.size(), 0);
  if (!distributed()) return;
  for (size_t i = 0; i < params.slots().size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params.slots()[i].param);
    if (!acc) throw Error(fmt::format("parameter '{}' has no gradient accumulator", params.slots()[i].name));
    int slot = static_cast<int>(i);
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<GradReadyHook>([this, slot] {
      // An exception must not unwind through the autograd engine; it is kept
      // and rethrown by finish_gradient_sync().
      try {
        on_gradient_ready(slot);
      } catch (...) {
        if (!hook_error_) hook_error_ = std::current_exception();
      }
    })));
    accumulators_.push_back(std::move(acc));
  }
}

DataParallel::~DataParallel() {
  for (size_t i = 0; i < accumulators_.size(); ++i) accumulators_[i]->del_post_hook(hook_keys_[i]);
}

void DataParallel::begin_backward(bool last_micro_step) {
  armed_ = last_micro_step && distributed();
  if (!armed_) return;
  for (size_t b = 0; b < buckets_.size(); ++b)
    pending_in_bucket_[b] = static_cast<int>(buckets_[b].slots.size());
  works_.assign(buckets_.size(), comm::Work{});
  next_to_launch_ = 0;
  hook_error_ = nullptr;
  sent_before_ = comm_->stats().bytes_sent;
}

void DataParallel::on_gradient_ready(int slot) {
  if (!armed_) return;
  int b = bucket_of_slot_[static_cast<size_t>(slot)];
  --pending_in_bucket_[static_cast<size_t>(b)];
  if (config_.overlap) launch_ready_buckets();
  // Give transports that progress inline (shared memory) a chance to move
  // the buckets already in flight while backward runs.
  for (size_t i = 0; i < next_to_launch_; ++i)
    if (works_[i].valid()) works_[i].test();
}

void DataParallel::launch_ready_buckets() {
  while (next_to_launch_ < buckets_.size() && pending_in_bucket_[next_to_launch_] == 0)
    launch(next_to_launch_++);
}

void DataParallel::launch(size_t b) {
  const auto& bucket = buckets_[b];
  const size_t elem = torch::elementSize(params_.dtype());
  char* base = static_cast<char*>(params_.grads().data_ptr()) + static_cast<size_t>(bucket.begin) * elem;
  works_[b] = comm_->all_reduce(base, base, static_cast<size_t>(bucket.numel()),
                                braid_dtype(params_.dtype()), comm::ReduceOp::Avg, collective_);
}

void DataParallel::finish_gradient_sync() {
  timing_ = CommTiming{};
  if (!armed_) return;
  armed_ = false;
  if (hook_error_) std::rethrow_exception(hook_error_);
  const int launched_in_backward = static_cast<int>(next_to_launch_);
  const int64_t wait_start = now_ns();
  // Whatever the hooks did not launch goes now, still in plan order.
  while (next_to_launch_ < buckets_.size()) launch(next_to_launch_++);
  for (auto& w : works_) w.wait();
  const int64_t wait_end = now_ns();

  // Union of the in-flight intervals (buckets run one after another, but a
  // communicator may overlap them).
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (auto& w : works_) {
    auto t = w.timing();
    int64_t start = t.started_ns ? t.started_ns : t.enqueued_ns;
    if (t.finished_ns > start) spans.emplace_back(start, t.finished_ns);
  }
  std::sort(spans.begin(), spans.end());
  int64_t total = 0, cur_a = 0, cur_b = 0;
  bool open = false;
  for (auto [a, b] : spans) {
    if (!open || a > cur_b) {
      if (open) total += cur_b - cur_a;
      cur_a = a;
      cur_b = b;
      open = true;
    } else {
      cur_b = std::max(cur_b, b);
    }
  }
  if (open) total += cur_b - cur_a;
  timing_.comm_s = static_cast<double>(total) * 1e-9;
  // Everything the step spent here after backward is exposed, including the
  // launch of leftover buckets; it is not clamped to comm_s.
  timing_.exposed_s = static_cast<double>(wait_end - wait_start) * 1e-9;
  timing_.bytes_sent = comm_->stats().bytes_sent - sent_before_;
  timing_.buckets = static_cast<int>(buckets_.size());
  timing_.launched_in_backward = launched_in_backward;
}

void all_reduce_sum(comm::Communicator* comm, std::vector<double>& values, double timeout_s) {
  if (comm == nullptr || comm->size() == 1 || values.empty()) return;
  comm::CollectiveOptions o;
  o.timeout_s = timeout_s;
  comm->all_reduce(values.data(), values.data(), values.size(), DType::F64, comm::ReduceOp::Sum, o).wait();
}

}  // namespace braid::train
