// ZeRO stages 1-3 (train/zero.hpp), ranks as threads over the in-process
// transport:
//   - the layout gives every element to exactly one rank;
//   - K steps under each stage, 2 and 4 ranks, with and without gradient
//     accumulation (and with recomputation) equal one process with the same
//     global batch (fp32, relative error 1e-5), every rank holding the same bits;
//   - the bytes each rank holds follow the formulas (memory_accounting.hpp);
//   - a checkpoint written under one stage and world size loads under another.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <thread>

#include "comm/bootstrap.hpp"
#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "net/store.hpp"
#include "train/checkpointing.hpp"
#include "train/compute_threads.hpp"
#include "train/trainer.hpp"
#include "tests/train/pangram_corpus.hpp"

namespace braid::train {
namespace {

using test::pangram_corpus;

TrainConfig tiny_config() {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 3;
  c.model.width = 32;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 0;
  c.optim.grad_clip = 0.5;  // active: the clipping must see the global norm across shards
  c.train.steps = 3;
  c.train.batch_size = 2;
  c.train.eval_batches = 2;
  c.train.seed = 1234;
  return c;
}

struct RankResult {
  torch::Tensor params;  // whole parameter vector after the steps
  std::vector<double> losses;
  std::vector<double> grad_norms;
  double val_loss = 0;
  ZeroMemory memory;
  int64_t shard_numel = 0;
  std::vector<uint64_t> bytes_sent;  // step metrics
  std::vector<double> comm_exposed_s;
};

RankResult finish(Trainer& t, RankResult out) {
  if (t.zero()) {
    out.memory = t.zero()->memory();  // between steps (an evaluation leaves the embeddings gathered)
    out.shard_numel = t.zero()->layout().shard_numel();
  }
  out.val_loss = *t.evaluate();
  out.params = t.zero() ? t.zero()->full_parameters() : t.model().params().params().clone();
  return out;
}

std::vector<RankResult> run_ranks(const TrainConfig& cfg, int world, int steps) {
  std::vector<RankResult> results(static_cast<size_t>(world));
  comm::run_in_process(world, [&](comm::Communicator& comm) {
    Trainer t(cfg, pangram_corpus(), &comm);
    RankResult out;
    for (int s = 0; s < steps; ++s) {
      auto m = t.train_step();
      out.losses.push_back(m.loss);
      out.grad_norms.push_back(m.grad_norm);
      out.bytes_sent.push_back(m.bytes_sent);
      out.comm_exposed_s.push_back(m.comm_exposed_s);
    }
    results[static_cast<size_t>(comm.rank())] = finish(t, std::move(out));
  });
  return results;
}

RankResult run_single(const TrainConfig& cfg, int steps) {
  Trainer t(cfg, pangram_corpus(), nullptr);
  RankResult out;
  for (int s = 0; s < steps; ++s) {
    auto m = t.train_step();
    out.losses.push_back(m.loss);
    out.grad_norms.push_back(m.grad_norm);
  }
  return finish(t, std::move(out));
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).norm() / want.norm()).item<double>();
}

class ZeroTest : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

TEST_F(ZeroTest, LayoutGivesEveryElementToExactlyOneRank) {
  GptModel model(tiny_config().model, 1);
  const auto& flat = model.params();
  for (int world : {1, 2, 3, 4, 7}) {
    std::vector<int> owner(static_cast<size_t>(flat.numel()), 0);
    int64_t shard = -1;
    for (int r = 0; r < world; ++r) {
      ZeroLayout layout(flat, world, r);
      if (shard < 0) shard = layout.shard_numel();
      EXPECT_EQ(layout.shard_numel(), shard) << "every rank's shard has the same size";
      // Units: embeddings, one per block, final norm.
      ASSERT_EQ(layout.units().size(), static_cast<size_t>(tiny_config().model.layers + 2));
      for (const auto& p : layout.pieces()) {
        EXPECT_LE(p.shard_begin + (p.flat_end - p.flat_begin), layout.shard_numel());
        EXPECT_GE(p.flat_begin, p.shard_begin);  // zero.cpp's pointer shift relies on it
        for (int64_t i = p.flat_begin; i < p.flat_end; ++i) ++owner[static_cast<size_t>(i)];
      }
    }
    for (size_t i = 0; i < owner.size(); ++i) ASSERT_EQ(owner[i], 1) << "element " << i << " world " << world;
    EXPECT_LE(shard * world, flat.numel() + static_cast<int64_t>(tiny_config().model.layers + 2) * world);
  }
}

struct ZeroCase {
  int stage;
  int world;
  int accum;
  const char* recompute;
};

class ZeroEquivalence : public ::testing::TestWithParam<ZeroCase> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

// K steps under ZeRO at N ranks = one process with N times the batch: the
// same losses, gradient norms (global, across shards) and final parameters.
TEST_P(ZeroEquivalence, NRanksEqualOneProcessWithNTimesTheBatch) {
  const auto p = GetParam();
  const int steps = 3;
  auto cfg = tiny_config();
  cfg.train.grad_accum = p.accum;
  cfg.parallel.zero = p.stage;
  cfg.parallel.recompute = p.recompute;
  cfg.parallel.bucket_bytes = 4096;
  auto ranks = run_ranks(cfg, p.world, steps);

  auto single_cfg = tiny_config();
  single_cfg.train.grad_accum = p.accum;
  single_cfg.train.batch_size = cfg.train.batch_size * p.world;
  auto single = run_single(single_cfg, steps);

  for (int r = 0; r < p.world; ++r) {
    const auto& rr = ranks[static_cast<size_t>(r)];
    EXPECT_TRUE(torch::equal(rr.params, ranks[0].params)) << "rank " << r;
    EXPECT_EQ(rr.losses, ranks[0].losses) << "rank " << r;
    EXPECT_EQ(rr.grad_norms, ranks[0].grad_norms) << "rank " << r;
  }
  for (int s = 0; s < steps; ++s) {
    const auto i = static_cast<size_t>(s);
    EXPECT_NEAR(ranks[0].losses[i], single.losses[i], 1e-5 * single.losses[i]) << "step " << s;
    EXPECT_NEAR(ranks[0].grad_norms[i], single.grad_norms[i], 1e-5 * single.grad_norms[i]) << "step " << s;
  }
  ASSERT_EQ(ranks[0].params.numel(), single.params.numel());
  EXPECT_LT(relative_error(ranks[0].params, single.params), 1e-5);
  EXPECT_NEAR(ranks[0].val_loss, single.val_loss, 1e-5 * single.val_loss);

  // What a rank holds: Adam's moments are always sharded; gradients from
  // stage 2, parameters from stage 3 (current = between steps).
  const auto& mem = ranks[0].memory;
  const int64_t shard = ranks[0].shard_numel, n = single.params.numel();
  EXPECT_EQ(mem.optimizer.current, 8 * shard);
  EXPECT_EQ(mem.grads.current, p.stage >= 2 ? 4 * shard : 4 * n);
  EXPECT_EQ(mem.params.current, p.stage >= 3 ? 4 * shard : 4 * n);
  // Transient unit buffers: the embeddings and final norm, plus at most the
  // block being computed and the one being gathered (parameters) or three
  // in-flight reduce-scatters (gradients), each padded to N blocks.
  GptModel layout_model(cfg.model, 1);
  ZeroLayout layout(layout_model.params(), p.world, 0);
  int64_t root = 0, largest_block = 0;
  for (const auto& u : layout.units()) {
    if (u.layer < 0) root += 4 * u.block * p.world;
    else largest_block = std::max(largest_block, 4 * u.block * p.world);
  }
  if (p.stage >= 2) {
    EXPECT_LE(mem.grads.peak, 4 * shard + root + 3 * largest_block);
  }
  if (p.stage >= 3) {
    EXPECT_LE(mem.params.peak, 4 * shard + root + 2 * largest_block);
    if (p.world >= 4) {
      EXPECT_LT(mem.params.peak, 4 * n) << "parameters are never all resident at once";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, ZeroEquivalence,
                         ::testing::Values(ZeroCase{1, 2, 1, "none"}, ZeroCase{1, 2, 2, "none"},
                                           ZeroCase{1, 4, 2, "selective"}, ZeroCase{2, 2, 1, "none"},
                                           ZeroCase{2, 2, 2, "none"}, ZeroCase{2, 4, 2, "full"},
                                           ZeroCase{3, 2, 1, "none"}, ZeroCase{3, 4, 1, "none"},
                                           ZeroCase{3, 4, 2, "none"}, ZeroCase{3, 4, 2, "full"},
                                           ZeroCase{3, 3, 1, "selective"}),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return "zero" + std::to_string(c.stage) + "_world" + std::to_string(c.world) + "_accum" +
                                  std::to_string(c.accum) + "_recompute_" + c.recompute;
                         });

// One rank under ZeRO is plain training (its shard is everything).
// The step metrics count ZeRO's own collectives: under stage 2 with a
// micro-steps each rank sends at least a reduce-scatters and one all-gather
// of (N-1)/N of the 4P-byte gradient / parameter vector (ring), on top of
// what plain data parallelism would count.
TEST_F(ZeroTest, StepMetricsCountZerosCollectives) {
  auto cfg = tiny_config();
  cfg.train.grad_accum = 2;
  cfg.parallel.zero = 2;
  const auto ranks = run_ranks(cfg, 2, 2);
  const double P = static_cast<double>(GptModel(cfg.model, 1).num_parameters());
  for (const auto& r : ranks)
    for (size_t s = 0; s < r.bytes_sent.size(); ++s) {
      EXPECT_GE(static_cast<double>(r.bytes_sent[s]), 3 * 0.5 * 4 * P) << "step " << s + 1;
      EXPECT_GT(r.comm_exposed_s[s], 0) << "step " << s + 1;
    }
}

TEST_F(ZeroTest, OneRankEqualsPlainTraining) {
  auto cfg = tiny_config();
  auto plain = run_single(cfg, 2);
  for (int stage : {1, 2, 3}) {
    cfg.parallel.zero = stage;
    auto z = run_single(cfg, 2);
    EXPECT_LT(relative_error(z.params, plain.params), 1e-6) << "stage " << stage;
    for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(z.losses[i], plain.losses[i], 1e-6 * plain.losses[i]);
  }
}

// A checkpoint written by 2 ranks under ZeRO-2 (each rank writes its shard)
// loads into 4 ranks under ZeRO-3 and into 4 plain data-parallel ranks; both
// then train the same next step.
TEST_F(ZeroTest, CheckpointLoadsUnderAnotherStageAndWorldSize) {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/braid_test_zero_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto cfg = tiny_config();
  cfg.checkpoint.dir = dir;
  cfg.checkpoint.every_steps = 2;
  cfg.checkpoint.at_end = false;

  auto run = [&](TrainConfig c, int world, bool resume, int64_t until) {
    auto hub = net::make_inproc_hub(world);
    auto store = std::make_shared<net::MemStore>();
    std::vector<RankResult> results(static_cast<size_t>(world));
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          comm::Communicator comm(net::connect_inproc(hub, r));
          Trainer t(c, pangram_corpus(), &comm);
          CheckpointingHooks hooks;
          hooks.durable = false;
          hooks.stop_requested = [] { return false; };
          Checkpointing ck(t, c.checkpoint, c.to_toml(), store, hooks);
          if (resume && !ck.resume()) throw Error("nothing to resume from");
          RankResult out;
          while (t.step() < until) out.losses.push_back(t.train_step().loss);
          ck.wait();
          out.params = t.zero() ? t.zero()->full_parameters() : t.model().params().params().clone();
          results[static_cast<size_t>(r)] = std::move(out);
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
    for (auto& th : threads) th.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    return results;
  };

  auto writer = cfg;
  writer.parallel.zero = 2;
  auto written = run(writer, 2, false, 2);

  auto plain = cfg;
  plain.checkpoint.every_steps = 0;
  plain.train.seed = 99;  // everything must come from the checkpoint
  auto sharded = plain;
  sharded.parallel.zero = 3;
  auto loaded_plain = run(plain, 4, true, 3);
  auto loaded_zero3 = run(sharded, 4, true, 3);
  ASSERT_EQ(loaded_plain[0].losses.size(), 1u);
  ASSERT_EQ(loaded_zero3[0].losses.size(), 1u);
  EXPECT_NEAR(loaded_zero3[0].losses[0], loaded_plain[0].losses[0], 1e-5 * loaded_plain[0].losses[0]);
  EXPECT_LT(relative_error(loaded_zero3[0].params, loaded_plain[0].params), 1e-5);
  EXPECT_GT(relative_error(loaded_plain[0].params, written[0].params), 0) << "the loaded run trained on";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace braid::train
