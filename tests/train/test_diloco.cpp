// DiLoCo (train/diloco.hpp): the outer step of R replicas (ranks as threads
// over the in-process transport) matches a single-process reference
// simulation of the same R replicas, Nesterov momentum and streaming
// fragments with delay included; every replica ends identical (bytes), also
// with int8 pseudo-gradients, error feedback and several workers per
// replica; bad settings are clear errors.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <thread>

#include "comm/bootstrap.hpp"
#include "comm/communicator.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/compute_threads.hpp"
#include "train/diloco.hpp"
#include "train/trainer.hpp"
#include "tests/train/pangram_corpus.hpp"

namespace braid::train {
namespace {

using test::pangram_corpus;

TrainConfig tiny_config(int64_t steps) {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 1;
  c.model.width = 32;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 0;
  c.train.steps = steps;
  c.train.batch_size = 2;
  c.train.eval_batches = 2;
  c.train.seed = 99;
  return c;
}

DilocoConfig diloco_config(int64_t H) {
  DilocoConfig d;
  d.enabled = true;
  d.inner_steps = H;
  d.outer_lr = 0.7;
  d.outer_momentum = 0.9;
  d.nesterov = true;
  return d;
}

class DilocoTest : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

struct WorkerResult {
  torch::Tensor params;
  DilocoStats stats;
  uint64_t outer_ops = 0;  // operations on the outer (slow-link) communicator
};

// `world` ranks as threads, each with its Diloco; params at the end.
std::vector<WorkerResult> run_diloco(const TrainConfig& cfg, const DilocoConfig& dc, int world) {
  auto hub = net::make_inproc_hub(world);
  std::vector<WorkerResult> results(static_cast<size_t>(world));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        comm::Communicator comm(net::connect_inproc(hub, r));
        DilocoGroups groups = DilocoGroups::make(dc, &comm);
        Trainer t(cfg, pangram_corpus(), groups.inner.get());
        Diloco diloco(dc, t, groups, pangram_corpus().train().size());
        while (t.step() < cfg.train.steps) t.train_step();
        results[static_cast<size_t>(r)] = {t.model().params().params().clone(), diloco.stats(),
                                           groups.outer ? groups.outer->stats().ops : 0};
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return results;
}

// The reference: R trainers in this thread, no communication; the outer
// step written out from the algorithm's definition, with the same schedule
// (fragment f due when step mod H == (f+1)H/F mod H, applied `delay` steps
// later, everything synced at the last step).
torch::Tensor reference(const TrainConfig& cfg, const DilocoConfig& dc, int R) {
  std::vector<std::unique_ptr<Trainer>> replicas;
  for (int r = 0; r < R; ++r) {
    replicas.push_back(std::make_unique<Trainer>(cfg, pangram_corpus(), nullptr));
    replicas.back()->sampler() = BatchSampler(pangram_corpus().train().size(), cfg.model.context, cfg.train.batch_size, r,
                                              R, cfg.train.seed);
  }
  // Fragment ranges from a throwaway instance (the split is not what is tested here).
  Trainer layout_trainer(cfg, pangram_corpus(), nullptr);
  DilocoGroups none;
  Diloco layout(dc, layout_trainer, none, pangram_corpus().train().size());
  const int F = layout.fragments();
  const int64_t n = replicas[0]->model().params().numel();
  const float* init = replicas[0]->model().params().param_data();
  std::vector<float> sync(init, init + n), momentum(static_cast<size_t>(n), 0.0f), avg(static_cast<size_t>(n));
  std::vector<int64_t> apply_at(static_cast<size_t>(F), -1), synced_at(static_cast<size_t>(F), 0);
  const int64_t H = dc.inner_steps;
  auto launch = [&](int f) {
    auto [b, e] = layout.fragment_range(f);
    for (int64_t i = b; i < e; ++i) {
      float s = 0;
      for (int r = 0; r < R; ++r) s += sync[static_cast<size_t>(i)] - replicas[static_cast<size_t>(r)]->model().params().param_data()[i];
      avg[static_cast<size_t>(i)] = s / static_cast<float>(R);
    }
  };
  auto apply = [&](int f, int64_t step) {
    auto [b, e] = layout.fragment_range(f);
    const float mu = static_cast<float>(dc.outer_momentum), lr = static_cast<float>(dc.outer_lr);
    for (int64_t i = b; i < e; ++i) {
      const size_t k = static_cast<size_t>(i);
      momentum[k] = mu * momentum[k] + avg[k];
      sync[k] -= lr * (dc.nesterov ? avg[k] + mu * momentum[k] : momentum[k]);
      for (auto& t : replicas) t->model().params().param_data()[i] = sync[k];
    }
    apply_at[static_cast<size_t>(f)] = -1;
    synced_at[static_cast<size_t>(f)] = step;
  };
  for (int64_t s = 1; s <= cfg.train.steps; ++s) {
    for (auto& t : replicas) t->train_step();
    const bool last = s == cfg.train.steps;
    for (int f = 0; f < F; ++f)
      if (apply_at[static_cast<size_t>(f)] >= 0 && (apply_at[static_cast<size_t>(f)] <= s || last)) apply(f, s);
    for (int f = 0; f < F; ++f) {
      const bool is_due = s % H == ((f + 1) * H / F) % H;
      if (last ? synced_at[static_cast<size_t>(f)] != s : is_due) {
        launch(f);
        if (dc.delay == 0 || last) apply(f, s);
        else apply_at[static_cast<size_t>(f)] = s + dc.delay;
      }
    }
  }
  return replicas[0]->model().params().params().clone();
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).norm() / want.norm()).item<double>();
}

void expect_identical(const std::vector<WorkerResult>& rs) {
  for (size_t r = 1; r < rs.size(); ++r)
    EXPECT_EQ(std::memcmp(rs[0].params.data_ptr<float>(), rs[r].params.data_ptr<float>(),
                          static_cast<size_t>(rs[0].params.numel()) * 4),
              0)
        << "worker " << r << " differs from worker 0";
}

TEST_F(DilocoTest, OuterNesterovStepMatchesReference) {
  // Three rounds of H = 3 (momentum builds up over rounds), 3 replicas.
  auto cfg = tiny_config(9);
  auto dc = diloco_config(3);
  auto rs = run_diloco(cfg, dc, 3);
  expect_identical(rs);
  auto want = reference(cfg, dc, 3);
  EXPECT_LT(relative_error(rs[0].params, want), 1e-5);
  EXPECT_EQ(rs[0].stats.outer_rounds, 3);
  EXPECT_GT(rs[0].stats.bytes_wan, 0u);
  // The outer step matters: plain averaging (lr 1, no momentum) lands elsewhere.
  auto plain = dc;
  plain.outer_lr = 1.0;
  plain.outer_momentum = 0.0;
  EXPECT_GT(relative_error(rs[0].params, reference(cfg, plain, 3)), 1e-4);
}

TEST_F(DilocoTest, PlainMomentumMatchesReference) {
  auto cfg = tiny_config(8);
  auto dc = diloco_config(4);
  dc.nesterov = false;
  dc.outer_lr = 0.5;
  auto rs = run_diloco(cfg, dc, 2);
  expect_identical(rs);
  EXPECT_LT(relative_error(rs[0].params, reference(cfg, dc, 2)), 1e-5);
}

TEST_F(DilocoTest, StreamingFragmentsWithDelayMatchReference) {
  auto cfg = tiny_config(10);
  auto dc = diloco_config(4);
  dc.fragments = 3;
  dc.delay = 2;
  auto rs = run_diloco(cfg, dc, 2);
  expect_identical(rs);
  EXPECT_LT(relative_error(rs[0].params, reference(cfg, dc, 2)), 1e-5);
  EXPECT_GE(rs[0].stats.outer_rounds, 6);
}

// At the end of a run every fragment not synced at the last step goes in one
// all-reduce (the slow link's latency paid once), with the same result as
// syncing them one by one (the reference).
TEST_F(DilocoTest, FinalSyncOfSeveralFragmentsIsOneAllReduce) {
  auto cfg = tiny_config(10);
  auto dc = diloco_config(4);
  dc.fragments = 3;
  auto rs = run_diloco(cfg, dc, 2);
  expect_identical(rs);
  EXPECT_LT(relative_error(rs[0].params, reference(cfg, dc, 2)), 1e-5);
  // Launches before the last step, from the schedule; then one for the rest.
  Trainer layout_trainer(cfg, pangram_corpus(), nullptr);
  DilocoGroups none;
  Diloco layout(dc, layout_trainer, none, pangram_corpus().train().size());
  uint64_t launches = 0;
  for (int64_t s = 1; s < cfg.train.steps; ++s)
    for (int f = 0; f < layout.fragments(); ++f) launches += layout.due(f, s) ? 1 : 0;
  ASSERT_EQ(launches, 7u);  // f0 at 1, 5, 9; f1 at 2, 6; f2 at 4, 8: all three are behind at step 10
  EXPECT_EQ(rs[0].outer_ops, launches + 1);
  EXPECT_EQ(rs[0].stats.outer_rounds, 7 + 3);  // every fragment is still applied on its own
}

TEST_F(DilocoTest, Int8WithErrorFeedbackEndsIdenticalAndClose) {
  auto cfg = tiny_config(8);
  auto dc = diloco_config(4);
  dc.codec = "int8";
  dc.error_feedback = true;
  auto rs = run_diloco(cfg, dc, 2);
  expect_identical(rs);
  auto f32 = reference(cfg, diloco_config(4), 2);
  EXPECT_LT(relative_error(rs[0].params, f32), 5e-2);  // lossy, yet near the f32 run
  auto dc32 = diloco_config(4);
  auto r32 = run_diloco(cfg, dc32, 2);
  EXPECT_LT(rs[0].stats.bytes_wan * 3, r32[0].stats.bytes_wan);  // int8 is ~4x smaller than f32
}

TEST_F(DilocoTest, SeveralWorkersPerReplicaEndIdentical) {
  auto cfg = tiny_config(6);
  auto dc = diloco_config(3);
  dc.workers_per_replica = 2;
  dc.codec = "bf16";
  auto rs = run_diloco(cfg, dc, 4);
  expect_identical(rs);
  // Two workers with batch B per replica read what one replica with 2B reads.
  auto big = cfg;
  big.train.batch_size = 2 * cfg.train.batch_size;
  auto one_worker = diloco_config(3);
  one_worker.codec = "bf16";
  auto rs1 = run_diloco(big, one_worker, 2);
  EXPECT_LT(relative_error(rs[0].params, rs1[0].params), 1e-2);
}

// The rounds of fault-tolerant DiLoCo (driven by FaultTolerance): a replica
// that joins at a round (here rank 2, holding a copy of rank 0's state) adds
// nothing to it, the average is over the two that trained, and all three end with the
// reference's parameters. A round reduced twice (the first try thrown away,
// as after a failed vote) gives the same result: reduce_round touches only
// scratch memory.
TEST_F(DilocoTest, AJoinerAddsNothingToItsFirstRoundAndARoundCanBeRedone) {
  const int64_t H = 4;
  auto cfg = tiny_config(H);
  auto dc = diloco_config(H);
  auto want = reference(cfg, dc, 2);
  std::vector<torch::Tensor> got(3);
  comm::run_in_process(3, [&](comm::Communicator& comm) {
    const int r = comm.rank();
    Trainer t(cfg, pangram_corpus(), nullptr);
    DilocoGroups none;
    Diloco d(dc, t, none, pangram_corpus().train().size());
    d.drive_externally();
    d.bind_outer(&comm);
    // Rank 2 ends the round with rank 0's state, as a heal from rank 0 would
    // give it (it trains on rank 0's samples): its pseudo-gradient is not zero,
    // and counting it would weigh rank 0 twice.
    const bool trained = r < 2;
    d.set_data_share(trained ? r : 0, 2);
    while (t.step() < H) t.train_step();  // after_step leaves the round to us
    const auto due = d.fragments_due(t.step());
    ASSERT_EQ(due.size(), 1u);
    d.reduce_round(due, trained, 2);
    d.reduce_round(due, trained, 2);
    d.apply_round(trained);
    got[static_cast<size_t>(r)] = t.model().params().params().clone();
    EXPECT_EQ(d.stats().outer_rounds, 1);
  });
  for (int r = 0; r < 3; ++r) EXPECT_LT(relative_error(got[static_cast<size_t>(r)], want), 1e-5) << "rank " << r;
  EXPECT_TRUE(torch::equal(got[0], got[2]));
}

TEST_F(DilocoTest, BadSettingsAreClearErrors) {
  auto read = [](const std::string& toml) {
    Config doc = Config::from_string(toml);
    return DilocoConfig::read(doc);
  };
  EXPECT_THROW(read("[diloco]\ninner_steps = 0\n"), ConfigError);
  EXPECT_THROW(read("[diloco]\ncodec = \"int4\"\n"), ConfigError);
  EXPECT_THROW(read("[diloco]\ninner_steps = 4\ndelay = 4\n"), ConfigError);
  EXPECT_THROW(read("[diloco]\ninner_steps = 4\nfragments = 5\n"), ConfigError);
  EXPECT_NO_THROW(read("[diloco]\ninner_steps = 100\nfragments = 4\ndelay = 5\ncodec = \"int8\"\n"));
  // More fragments than tensors is found once the model exists.
  auto cfg = tiny_config(2);
  auto dc = diloco_config(1000);
  dc.fragments = 500;
  Trainer t(cfg, pangram_corpus(), nullptr);
  DilocoGroups none;
  try {
    Diloco d(dc, t, none, pangram_corpus().train().size());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter tensors"), std::string::npos) << e.what();
  }
  int R = 0, W = 0;
  dc.replicas = 3;
  EXPECT_THROW(dc.resolve(4, R, W), ConfigError);
  dc.replicas = 2;
  dc.resolve(4, R, W);
  EXPECT_EQ(W, 2);
  // Under [fault] every worker is one replica and rounds cannot run behind compute.
  auto train_config = [](const std::string& diloco) {
    Config doc = Config::from_string("[data]\npaths = [\"x.txt\"]\n[fault]\nenabled = true\n[diloco]\nenabled = true\n" +
                                     diloco);
    return TrainConfig::from(doc);
  };
  EXPECT_NO_THROW(train_config("inner_steps = 10\nfragments = 2\n"));
  for (const char* bad : {"inner_steps = 10\ndelay = 2\n", "workers_per_replica = 2\n", "replicas = 3\n"}) {
    try {
      train_config(bad);
      ADD_FAILURE() << "expected a ConfigError for " << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("fault.enabled"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace braid::train
