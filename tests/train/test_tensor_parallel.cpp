// Tensor parallelism (Megatron): the split model starts from the one-process
// weights and computes the same function, and tp ranks trained as threads
// equal one process.
#include <gtest/gtest.h>

#include "test_mesh_util.hpp"
#include "train/tensor_parallel.hpp"
#include "train/tensor_parallel_gpt.hpp"

namespace braid::train {
namespace {

using namespace mesh_test;

class TensorParallel : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_F(TensorParallel, UnsplitStageIsTheOneProcessModel) {
  auto cfg = tiny_config();
  GptModel full(cfg.model, 7);
  TensorParallelGpt stage(cfg.model, 7, StagePlacement{}, nullptr, 10);
  auto copy = torch::zeros_like(full.params().params());
  stage.copy_to_full(copy);
  EXPECT_TRUE(torch::equal(copy, full.params().params()));
  auto idx = torch::randint(0, cfg.model.vocab_size, {2, cfg.model.context}, torch::kInt64);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(stage.forward(idx), full.logits(idx), 1e-5, 1e-5));
}

// Rank r of tp holds heads [r·H/tp, (r+1)·H/tp) of q, k and v, the matching
// input columns of the projections, and 1/tp of the MLP: the split layers'
// parameters per rank shrink by tp, and the slices tile the full model.
TEST_F(TensorParallel, SlicesTileTheFullModel) {
  auto cfg = tiny_config();
  const int64_t C = cfg.model.width;
  GptModel full(cfg.model, 3);
  auto assembled = torch::full_like(full.params().params(), std::nan(""));
  auto results = [&] {
    auto hub = net::make_inproc_hub(2);
    std::vector<torch::Tensor> out(2);
    std::vector<int64_t> qkv_rows(2), numel(2);
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
      threads.emplace_back([&, r] {
        comm::Communicator comm(net::connect_inproc(hub, r));
        TensorParallelGpt stage(cfg.model, 3, StagePlacement{r, 2, 0, 1}, &comm, 10);
        out[static_cast<size_t>(r)] = torch::full_like(full.params().params(), std::nan(""));
        stage.copy_to_full(out[static_cast<size_t>(r)]);
        for (const auto& s : stage.params().slots())
          if (s.name == "h0.attn.qkv.weight") qkv_rows[static_cast<size_t>(r)] = s.shape[0];
        numel[static_cast<size_t>(r)] = stage.params().numel();
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(qkv_rows[0], 3 * C / 2);
    EXPECT_EQ(numel[0], numel[1]);
    // Split per layer: the qkv, attention proj, fc and MLP proj weights, the qkv and fc biases.
    const int64_t L = cfg.model.layers, hidden = 4 * C;
    const int64_t split_per_layer = 3 * C * C + 3 * C + C * C + hidden * C + hidden + C * hidden;
    EXPECT_EQ(full.params().numel() - numel[0], L * split_per_layer / 2);
    return out;
  }();
  for (const auto& part : results) {
    auto mine = ~torch::isnan(part);
    assembled.masked_scatter_(mine, part.masked_select(mine));
  }
  EXPECT_TRUE(torch::equal(assembled, full.params().params()));
}

TEST_F(TensorParallel, TwoRanksEqualOneProcess) {
  auto cfg = tiny_config();
  cfg.parallel.tp = 2;
  cfg.train.grad_accum = 2;
  expect_mesh_equals_single(cfg, 3);
}

TEST_F(TensorParallel, FourRanksOneHeadEachEqualOneProcess) {
  auto cfg = tiny_config();
  cfg.model.layers = 2;
  cfg.parallel.tp = 4;
  expect_mesh_equals_single(cfg, 2);
}

// f is the identity forward and sums the gradient over the tp ranks; g sums
// forward and passes the gradient through.
TEST_F(TensorParallel, ConjugateOperators) {
  auto hub = net::make_inproc_hub(2);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(2);
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        comm::Communicator comm(net::connect_inproc(hub, r));
        auto x = torch::full({3}, static_cast<double>(r + 1), torch::kFloat64).requires_grad_(true);
        auto y = copy_to_tensor_parallel(x, &comm, 10);
        EXPECT_TRUE(torch::equal(y, x.detach()));
        (y * static_cast<double>(r + 1)).sum().backward();  // local gradient r + 1
        EXPECT_TRUE(torch::equal(x.grad(), torch::full({3}, 3.0, torch::kFloat64)));
        auto z = torch::full({3}, static_cast<double>(r + 1), torch::kFloat64).requires_grad_(true);
        auto s = reduce_from_tensor_parallel(z, &comm, 10);
        EXPECT_TRUE(torch::equal(s.detach(), torch::full({3}, 3.0, torch::kFloat64)));
        (s * 2.0).sum().backward();
        EXPECT_TRUE(torch::equal(z.grad(), torch::full({3}, 2.0, torch::kFloat64)));
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace
}  // namespace braid::train
