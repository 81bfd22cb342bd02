// The health monitor on real training steps, ranks as threads over the
// in-process transport: injected bit flips in parameters, gradients and
// all-reduce results are each caught in the step they happen with the right
// rank named, and replicas end bit-identical; a hang is named by the flight
// recorder; a NaN step is skipped, repeated ones roll back to a checkpoint;
// stragglers are named; /metrics is scraped while the job runs.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include "comm/communicator.hpp"
#include "core/checksum.hpp"
#include "core/error.hpp"
#include "health/hang_report.hpp"
#include "health/metrics_server.hpp"
#include "net/mesh.hpp"
#include "train/checkpointing.hpp"
#include "train/compute_threads.hpp"
#include "train/health_monitor.hpp"
#include "train/trainer.hpp"
#include "tests/train/pangram_corpus.hpp"

namespace braid::train {
namespace {

namespace fs = std::filesystem;

using test::pangram_corpus;

TrainConfig tiny_config() {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 2;
  c.model.width = 32;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 0;
  c.train.steps = 20;
  c.train.batch_size = 2;
  c.train.eval_batches = 2;
  c.train.seed = 1234;
  c.parallel.bucket_bytes = 8 << 10;  // several buckets
  c.parallel.timeout_s = 30;
  return c;
}

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / fmt::format("braid-test-health-{}-{}", name, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

uint64_t state_hash(Trainer& t) {
  auto& p = t.model().params();
  Xxh3Stream h;
  h.update(p.param_data(), static_cast<size_t>(p.numel()) * 4);
  h.update(t.optimizer().exp_avg().data(), t.optimizer().exp_avg().size() * 4);
  h.update(t.optimizer().exp_avg_sq().data(), t.optimizer().exp_avg_sq().size() * 4);
  return h.digest();
}

// Runs body(rank, comm) on n threads; returns each rank's error.
std::vector<std::exception_ptr> run_ranks(int n, double timeout_s,
                                          const std::function<void(int, comm::Communicator&)>& body) {
  auto hub = net::make_inproc_hub(n);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        comm::CommOptions o;
        o.timeout_s = timeout_s;
        comm::Communicator c(net::connect_inproc(hub, r), o);
        body(r, c);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

std::string describe(const std::exception_ptr& e) {
  if (!e) return "no error";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
}

class Health : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

struct Flip {
  int64_t step;
  int rank;
  std::string target;
};

// 50 random single-bit flips, one per step, in parameters, gradients and
// all-reduce results of random ranks at random elements and bits.
TEST_F(Health, FiftyRandomBitFlipsAreCaughtInTheirStepAndRepaired) {
  const int world = 3;
  const int64_t steps = 52;
  std::mt19937_64 gen(20261122);
  TrainConfig cfg = tiny_config();
  cfg.train.steps = steps;
  std::vector<Flip> flips;
  const char* targets[] = {"params", "grads", "comm"};
  for (int64_t s = 2; s < 2 + 50; ++s) {
    Flip f{s, static_cast<int>(gen() % world), targets[gen() % 3]};
    cfg.health.inject.push_back(fmt::format("bitflip:rank={},step={},target={},index={},bit={}", f.rank, f.step,
                                            f.target, gen() % 100000, gen() % 32));
    flips.push_back(f);
  }
  cfg.health.spike_sigma = 0;  // flips of exponent bits may move the norm a lot; this test is about SDC
  std::vector<uint64_t> final_hash(world);
  std::vector<std::vector<HealthEvent>> events(world);
  std::vector<HealthStats> stats(world);
  auto errors = run_ranks(world, 30, [&](int r, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, "");
    while (t.step() < steps) t.train_step();
    final_hash[static_cast<size_t>(r)] = state_hash(t);
    events[static_cast<size_t>(r)] = mon.events();
    stats[static_cast<size_t>(r)] = mon.stats();
  });
  for (int r = 0; r < world; ++r) ASSERT_FALSE(errors[static_cast<size_t>(r)]) << describe(errors[static_cast<size_t>(r)]);
  EXPECT_EQ(final_hash[0], final_hash[1]);
  EXPECT_EQ(final_hash[0], final_hash[2]);
  // Decisions are shared: every rank logged the same corruptions.
  for (const Flip& f : flips) {
    std::vector<std::string> found;
    for (const auto& e : events[0])
      if (e.kind == "corruption" && e.step == f.step) found.push_back(fmt::format("{} {}", e.what, fmt::join(e.ranks, ",")));
    ASSERT_EQ(found.size(), 1u) << "step " << f.step << " flip " << f.target << " on rank " << f.rank << ": "
                                << fmt::format("{}", fmt::join(found, "; "));
    EXPECT_EQ(found[0].substr(found[0].rfind(' ') + 1), std::to_string(f.rank))
        << "step " << f.step << " " << f.target << ": " << found[0];
    if (f.target == "comm") {
      EXPECT_EQ(found[0].rfind("gradient all-reduce result", 0), 0u) << found[0];
    }
  }
  EXPECT_EQ(stats[0].corruptions, 50);
  EXPECT_EQ(stats[0].repairs, 50);
  for (int r = 0; r < world; ++r) EXPECT_EQ(stats[static_cast<size_t>(r)].corruptions, 50);
}

// With 2 replicas there is no majority: a corrupted parameter is found by
// recomputing the step; a corrupted gradient or all-reduce result makes the
// update untrustworthy, so it is dropped on both.
TEST_F(Health, TwoReplicasRecomputeOrDrop) {
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 8;
  cfg.health.inject = {"bitflip:rank=1,step=3,target=params,index=123,bit=12",
                       "bitflip:rank=0,step=5,target=grads,index=77,bit=3",
                       "bitflip:rank=1,step=7,target=comm,index=5,bit=20"};
  std::vector<uint64_t> hash(2);
  std::vector<HealthStats> stats(2);
  std::vector<std::vector<HealthEvent>> events(2);
  auto errors = run_ranks(2, 30, [&](int r, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, "");
    while (t.step() < cfg.train.steps) t.train_step();
    hash[static_cast<size_t>(r)] = state_hash(t);
    stats[static_cast<size_t>(r)] = mon.stats();
    events[static_cast<size_t>(r)] = mon.events();
  });
  for (int r = 0; r < 2; ++r) ASSERT_FALSE(errors[static_cast<size_t>(r)]) << describe(errors[static_cast<size_t>(r)]);
  EXPECT_EQ(hash[0], hash[1]);
  bool named = false;
  for (const auto& e : events[0])
    if (e.kind == "corruption" && e.step == 3 && e.ranks == std::vector<int>{1}) named = true;
  EXPECT_TRUE(named) << "the recomputation names rank 1 at step 3";
  EXPECT_EQ(stats[0].repairs, 1);
  EXPECT_EQ(stats[0].dropped_updates, 2);
}

// The checks can be switched off and on between steps (bench health
// interleaves them): an unchecked step hashes nothing, copies nothing and
// exchanges nothing; a checked one with 2 replicas times its state copy,
// and still names the rank whose parameters were flipped.
TEST_F(Health, ChecksSwitchedPerStepCostNothingWhenOff) {
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 6;
  cfg.health.straggler_every = 0;
  cfg.health.inject = {"bitflip:rank=1,step=2,target=params,index=50,bit=20"};
  std::vector<std::vector<HealthStats>> per_step(2);
  std::vector<uint64_t> hash(2);
  std::vector<std::vector<HealthEvent>> events(2);
  auto errors = run_ranks(2, 30, [&](int r, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, "");
    while (t.step() < cfg.train.steps) {
      mon.set_fingerprints(t.step() % 2 == 1);  // steps 1, 3, 5 unchecked; 2, 4, 6 checked
      t.train_step();
      per_step[static_cast<size_t>(r)].push_back(mon.stats());
    }
    hash[static_cast<size_t>(r)] = state_hash(t);
    events[static_cast<size_t>(r)] = mon.events();
  });
  for (int r = 0; r < 2; ++r) ASSERT_FALSE(errors[static_cast<size_t>(r)]) << describe(errors[static_cast<size_t>(r)]);
  const auto& s = per_step[0];
  ASSERT_EQ(s.size(), 6u);
  for (size_t i = 0; i < s.size(); ++i) {
    const HealthStats before = i ? s[i - 1] : HealthStats{};
    const bool checked = i % 2 == 1;
    EXPECT_EQ(s[i].fingerprint_bytes > before.fingerprint_bytes, checked) << "step " << i + 1;
    EXPECT_EQ(s[i].exchange_s > before.exchange_s, checked) << "step " << i + 1;
    EXPECT_EQ(s[i].snapshot_s > before.snapshot_s, checked) << "step " << i + 1;
  }
  EXPECT_EQ(hash[0], hash[1]);
  bool named = false;
  for (const auto& e : events[0])
    if (e.kind == "corruption" && e.step == 2 && e.ranks == std::vector<int>{1}) named = true;
  EXPECT_TRUE(named) << "the flip at step 2 (a checked step) is named on rank 1";
}

// hang:rank=1 -> the others time out in the first bucket all-reduce of that
// step, every rank dumps its flight recorder, and the analysis names rank 1
// and the collective it never entered.
TEST_F(Health, HangIsNamedByTheFlightRecorder) {
  auto dir = temp_dir("hang");
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 6;
  cfg.parallel.timeout_s = 1.0;
  cfg.health.inject = {"hang:rank=1,step=4,seconds=3"};
  auto errors = run_ranks(3, 1.0, [&](int, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, dir.string());
    while (t.step() < cfg.train.steps) t.train_step();
  });
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(errors[static_cast<size_t>(r)]) << "rank " << r << " should fail";
  auto report = health::analyze_flight_dumps(health::read_flight_dumps(dir.string()), 3);
  ASSERT_EQ(report.stuck.size(), 1u) << report.text();
  EXPECT_EQ(report.stuck[0].rank, 1);
  EXPECT_EQ(report.stuck[0].missing_op, "all_reduce");
  EXPECT_NE(report.first_failure.find("all_reduce"), std::string::npos) << report.text();
  fs::remove_all(dir);
}

TEST_F(Health, NanStepIsSkippedAndTrainingGoesOn) {
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 8;
  cfg.health.inject = {"nan:rank=1,step=4"};
  std::vector<std::vector<bool>> applied(2);
  std::vector<uint64_t> hash(2);
  auto errors = run_ranks(2, 30, [&](int r, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, "");
    while (t.step() < cfg.train.steps) applied[static_cast<size_t>(r)].push_back(t.train_step().applied);
    hash[static_cast<size_t>(r)] = state_hash(t);
    EXPECT_EQ(mon.stats().skipped_steps, 1);
    EXPECT_EQ(mon.stats().corruptions, 0);  // the NaN is caught by the guard, not mistaken for corruption
  });
  for (int r = 0; r < 2; ++r) ASSERT_FALSE(errors[static_cast<size_t>(r)]) << describe(errors[static_cast<size_t>(r)]);
  std::vector<bool> expect(8, true);
  expect[3] = false;
  EXPECT_EQ(applied[0], expect);
  EXPECT_EQ(applied[1], expect);
  EXPECT_EQ(hash[0], hash[1]);
  // Without the guard the same step is an error.
  cfg.health.guard = false;
  Trainer t(cfg, pangram_corpus(), nullptr);
  cfg.health.inject = {"nan:rank=0,step=2"};
  HealthMonitor mon(t, cfg.health, "");
  t.train_step();
  EXPECT_THROW(t.train_step(), Error);
}

TEST_F(Health, RepeatedNanRollsBackToTheLastCheckpoint) {
  auto dir = temp_dir("rollback");
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 10;
  cfg.checkpoint.dir = (dir / "ckpt").string();
  cfg.checkpoint.every_steps = 4;
  cfg.checkpoint.at_end = false;
  cfg.health.inject = {"nan:rank=0,step=6,count=2"};
  Trainer t(cfg, pangram_corpus(), nullptr);
  HealthMonitor mon(t, cfg.health, "");
  CheckpointingHooks hooks;
  hooks.durable = false;
  Checkpointing ck(t, cfg.checkpoint, cfg.to_toml(), nullptr, hooks);
  mon.set_rollback([&]() -> std::optional<int64_t> {
    ck.wait();
    auto l = ck.resume();
    return l ? std::optional<int64_t>(l->step) : std::nullopt;
  });
  std::vector<int64_t> steps;
  while (t.step() < cfg.train.steps) {
    t.train_step();
    steps.push_back(t.step());
  }
  ck.finish();
  // 1..5, 6 skipped (still counted), 7 skipped again -> the next step starts
  // from checkpoint 4: 5..10 again, on the data after step 7.
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(mon.stats().skipped_steps, 2);
  EXPECT_EQ(mon.stats().rollbacks, 1);
  // Without a checkpoint the bad updates are skipped and training goes on
  // from the last good model ...
  TrainConfig bare = tiny_config();
  bare.health.inject = {"nan:rank=0,step=2,count=2"};
  Trainer t2(bare, pangram_corpus(), nullptr);
  HealthMonitor mon2(t2, bare.health, "");
  for (int i = 0; i < 6; ++i) EXPECT_NO_THROW(t2.train_step()) << "step " << i;
  EXPECT_EQ(mon2.stats().skipped_steps, 2);
  EXPECT_EQ(mon2.stats().rollbacks, 0);
  EXPECT_TRUE(std::isfinite(t2.model().params().params().sum().item<double>()));
  // ... unless they go on (10 in a row here): the run is not learning, a clear error.
  TrainConfig stuck = tiny_config();
  stuck.health.inject = {"nan:rank=0,step=2,count=30"};
  Trainer t3(stuck, pangram_corpus(), nullptr);
  HealthMonitor mon3(t3, stuck.health, "");
  try {
    for (int i = 0; i < 30; ++i) t3.train_step();
    ADD_FAILURE() << "expected the run to stop";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not learning"), std::string::npos) << e.what();
  }
  EXPECT_GE(mon3.stats().skipped_steps, 10);
  EXPECT_LE(mon3.stats().skipped_steps, 11);
  fs::remove_all(dir);
}

TEST_F(Health, StragglerIsNamed) {
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 12;
  cfg.health.straggler_every = 6;
  cfg.health.straggler_factor = 2.0;
  cfg.health.inject = {"slow:rank=2,factor=8"};
  std::vector<std::vector<HealthEvent>> events(3);
  auto errors = run_ranks(3, 30, [&](int r, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, "");
    while (t.step() < cfg.train.steps) t.train_step();
    events[static_cast<size_t>(r)] = mon.events();
  });
  for (int r = 0; r < 3; ++r) ASSERT_FALSE(errors[static_cast<size_t>(r)]) << describe(errors[static_cast<size_t>(r)]);
  int reports = 0;
  for (const auto& e : events[0])
    if (e.kind == "straggler") {
      ++reports;
      EXPECT_EQ(e.ranks, std::vector<int>{2}) << e.detail;
    }
  EXPECT_GE(reports, 1);
}

TEST_F(Health, MetricsAreScrapedDuringARun) {
  TrainConfig cfg = tiny_config();
  cfg.train.steps = 4;
  cfg.health.metrics_port = -1;  // any free port
  std::vector<std::string> scrapes(2);
  auto errors = run_ranks(2, 30, [&](int r, comm::Communicator& c) {
    Trainer t(cfg, pangram_corpus(), &c);
    HealthMonitor mon(t, cfg.health, "");
    while (t.step() < cfg.train.steps) {
      t.train_step();
      if (r == 0 && t.step() == 3) scrapes[0] = health::http_get("127.0.0.1", mon.metrics_port(), "/metrics");
    }
    if (r == 0) scrapes[1] = health::http_get("127.0.0.1", mon.metrics_port(), "/metrics");
    if (r == 1) {
      EXPECT_EQ(mon.metrics_port(), 0);  // only rank 0 serves
    }
  });
  for (int r = 0; r < 2; ++r) ASSERT_FALSE(errors[static_cast<size_t>(r)]) << describe(errors[static_cast<size_t>(r)]);
  EXPECT_NE(scrapes[0].find("\nbraid_step 3\n"), std::string::npos) << scrapes[0];
  EXPECT_NE(scrapes[1].find("\nbraid_step 4\n"), std::string::npos) << scrapes[1];
  for (const char* name : {"braid_loss ", "braid_tokens_per_second ", "braid_bytes_sent_total ",
                           "braid_comm_exposed_seconds ", "braid_recoveries_total ", "braid_corruptions_total 0",
                           "braid_stragglers_total 0"})
    EXPECT_NE(scrapes[1].find(name), std::string::npos) << name << "\n" << scrapes[1];
}

}  // namespace
}  // namespace braid::train
