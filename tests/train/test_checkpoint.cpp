// Checkpoints wired into the training loop (train/checkpointing.hpp), with
// ranks as threads over the in-process transport and a MemStore:
//   - resuming is bit-identical to never stopping (1 and 2 ranks);
//   - a checkpoint written by N ranks loads into M ranks, and the run goes on
//     exactly as a run at M ranks started from the same state in memory
//     (2→1, 1→2, 2→3);
//   - time- and signal-triggered saves are decided by one rank and agreed
//     by all through the step's all-reduce;
//   - damaged checkpoints are skipped with a reason naming file and tensor;
//   - metrics fields for saves, waits and skips.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
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
namespace fs = std::filesystem;

using test::pangram_corpus;

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/braid_test_checkpoint_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

TrainConfig tiny_config(const std::string& ckpt_dir) {
  TrainConfig c;
  c.model.context = 16;
  c.model.layers = 2;
  c.model.width = 32;
  c.model.heads = 4;
  c.data.paths = {"<memory>"};
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 2;
  c.train.steps = 6;
  c.train.batch_size = 2;
  c.train.eval_batches = 2;
  c.train.seed = 1234;
  c.checkpoint.dir = ckpt_dir;
  c.checkpoint.every_steps = 0;
  c.checkpoint.keep_last = 0;
  c.checkpoint.at_end = false;
  c.checkpoint.commit_timeout_s = 30;
  return c;
}

// One rank's view of a run.
struct RankRun {
  std::vector<double> losses;
  std::vector<StepMetrics> metrics;
  std::vector<float> params, adam_m, adam_v;
  int64_t step = 0;
  int64_t adam_step = 0;
  SamplerPosition position;
  bool stopped = false;
  ckpt::CheckpointStats stats;
  std::optional<ckpt::LoadedCheckpoint> loaded;
};

struct Job {
  Job(TrainConfig c, int w) : cfg(std::move(c)), world(w) {}
  TrainConfig cfg;
  int world = 1;
  int64_t until_step = -1;  // run while step < this (default cfg.train.steps)
  bool checkpointing = true;
  bool resume = false;
  bool finish = false;  // call Checkpointing::finish() (the end-of-run save)
  std::function<void(int rank, CheckpointingHooks&)> hooks;
  std::function<void(int rank, Trainer&)> prepare;  // after construction (and resume), before the first step
};

void capture(Trainer& t, RankRun& out) {
  auto& flat = t.model().params();
  out.params.assign(flat.param_data(), flat.param_data() + flat.numel());
  out.adam_m.assign(t.optimizer().exp_avg().begin(), t.optimizer().exp_avg().end());
  out.adam_v.assign(t.optimizer().exp_avg_sq().begin(), t.optimizer().exp_avg_sq().end());
  out.step = t.step();
  out.adam_step = t.optimizer().step();
  out.position = t.sampler().position();
}

// Copies a captured state into a trainer (what a perfect checkpoint would do).
void inject(const RankRun& s, Trainer& t) {
  auto& flat = t.model().params();
  ASSERT_EQ(s.params.size(), static_cast<size_t>(flat.numel()));
  std::memcpy(flat.param_data(), s.params.data(), s.params.size() * 4);
  std::memcpy(t.optimizer().exp_avg().data(), s.adam_m.data(), s.adam_m.size() * 4);
  std::memcpy(t.optimizer().exp_avg_sq().data(), s.adam_v.data(), s.adam_v.size() * 4);
  t.set_step(s.step);
  t.optimizer().set_step(s.adam_step);
  t.sampler().restore(s.position);
}

std::vector<RankRun> run_job(const Job& job) {
  auto hub = net::make_inproc_hub(job.world);
  auto store = std::make_shared<net::MemStore>();
  std::vector<RankRun> results(static_cast<size_t>(job.world));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(job.world));
  std::vector<std::thread> threads;
  const int64_t until = job.until_step >= 0 ? job.until_step : job.cfg.train.steps;
  for (int r = 0; r < job.world; ++r) {
    threads.emplace_back([&, r] {
      auto& out = results[static_cast<size_t>(r)];
      try {
        std::unique_ptr<comm::Communicator> comm;
        if (job.world > 1) comm = std::make_unique<comm::Communicator>(net::connect_inproc(hub, r));
        Trainer t(job.cfg, pangram_corpus(), comm.get());
        std::unique_ptr<Checkpointing> ck;
        if (job.checkpointing) {
          CheckpointingHooks hooks;
          hooks.durable = false;
          hooks.stop_requested = [] { return false; };
          if (job.hooks) job.hooks(r, hooks);
          ck = std::make_unique<Checkpointing>(t, job.cfg.checkpoint, job.cfg.to_toml(),
                                               job.world > 1 ? store : nullptr, hooks);
          if (job.resume) out.loaded = ck->resume();
        }
        if (job.prepare) job.prepare(r, t);
        while (t.step() < until) {
          StepMetrics m = t.train_step();
          if (ck) ck->annotate(m);
          out.losses.push_back(m.loss);
          out.metrics.push_back(m);
          if (ck && ck->stop_agreed()) {
            out.stopped = true;
            break;
          }
        }
        if (ck && job.finish) ck->finish();
        if (ck) {
          ck->wait();
          out.stats = ck->stats();
        }
        capture(t, out);
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

void expect_bit_identical(const RankRun& got, const RankRun& want, const std::string& what) {
  EXPECT_EQ(got.step, want.step) << what;
  EXPECT_EQ(got.adam_step, want.adam_step) << what;
  EXPECT_EQ(got.position, want.position) << what;
  ASSERT_EQ(got.params.size(), want.params.size()) << what;
  EXPECT_EQ(0, std::memcmp(got.params.data(), want.params.data(), got.params.size() * 4)) << what << ": params";
  EXPECT_EQ(0, std::memcmp(got.adam_m.data(), want.adam_m.data(), got.adam_m.size() * 4)) << what << ": adam_m";
  EXPECT_EQ(0, std::memcmp(got.adam_v.data(), want.adam_v.data(), got.adam_v.size() * 4)) << what << ": adam_v";
}

class CheckpointLoop : public ::testing::Test {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

class BitIdenticalResume : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

// A run interrupted after step 4 (its last checkpoint is of step 3) and
// resumed must continue exactly as the run that never stopped: same losses,
// same parameters and optimizer state, bit for bit.
TEST_P(BitIdenticalResume, ResumedRunEqualsUninterruptedRun) {
  const int world = GetParam();
  TempDir a, b;
  Job straight{tiny_config(a.path), world};
  straight.cfg.checkpoint.every_steps = 3;
  auto reference = run_job(straight);

  Job interrupted{tiny_config(b.path), world};
  interrupted.cfg.checkpoint.every_steps = 3;
  interrupted.until_step = 4;  // "killed" after step 4: step 4 is lost, step 3 is on disk
  auto first = run_job(interrupted);
  ASSERT_EQ(first[0].stats.committed, 1);

  Job resumed{tiny_config(b.path), world};
  resumed.cfg.checkpoint.every_steps = 3;
  resumed.cfg.train.seed = 999;  // everything must come from the checkpoint, not from the config
  resumed.resume = true;
  auto second = run_job(resumed);

  for (int r = 0; r < world; ++r) {
    const auto& got = second[static_cast<size_t>(r)];
    ASSERT_TRUE(got.loaded.has_value()) << "rank " << r;
    EXPECT_EQ(got.loaded->step, 3);
    EXPECT_TRUE(got.loaded->skipped.empty());
    // Steps 4..6 of the resumed run are steps 4..6 of the uninterrupted one.
    std::vector<double> tail(reference[0].losses.begin() + 3, reference[0].losses.end());
    EXPECT_EQ(got.losses, tail) << "rank " << r;
    // Step 4 of the interrupted run too (it was computed from the same state).
    EXPECT_EQ(got.losses[0], first[0].losses[3]);
    expect_bit_identical(got, reference[static_cast<size_t>(r)], "rank " + std::to_string(r));
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, BitIdenticalResume, ::testing::Values(1, 2),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

struct ReshardCase {
  int from, to;
};

class Reshard : public ::testing::TestWithParam<ReshardCase> {
 protected:
  void SetUp() override { set_compute_threads(1); }
};

// A checkpoint of N ranks loaded into M ranks: the loaded state is exactly the
// saved one, and the resumed run equals a run at M ranks that started from
// that state copied in memory.
TEST_P(Reshard, CheckpointOfNRanksContinuesAtMRanks) {
  const auto p = GetParam();
  TempDir dir;
  Job source{tiny_config(dir.path), p.from};
  source.cfg.checkpoint.every_steps = 3;
  source.until_step = 3;
  auto saved = run_job(source);
  ASSERT_EQ(saved[0].stats.committed, 1);
  {
    ckpt::CheckpointReader rd(ckpt::CheckpointDir(dir.path).step_path(3));
    EXPECT_EQ(rd.manifest().world_size, p.from);
    EXPECT_TRUE(rd.verify().empty());
  }

  Job resumed{tiny_config(dir.path), p.to};
  resumed.resume = true;
  resumed.until_step = 5;
  std::vector<RankRun> at_load(static_cast<size_t>(p.to));
  resumed.prepare = [&](int r, Trainer& t) { capture(t, at_load[static_cast<size_t>(r)]); };
  auto got = run_job(resumed);

  Job reference{tiny_config(dir.path), p.to};
  reference.checkpointing = false;
  reference.until_step = 5;
  reference.prepare = [&](int, Trainer& t) { inject(saved[0], t); };
  auto want = run_job(reference);

  for (int r = 0; r < p.to; ++r) {
    const std::string who = "rank " + std::to_string(r);
    ASSERT_TRUE(got[static_cast<size_t>(r)].loaded.has_value()) << who;
    EXPECT_EQ(got[static_cast<size_t>(r)].loaded->saved_world, p.from);
    expect_bit_identical(at_load[static_cast<size_t>(r)], saved[0], who + " right after loading");
    EXPECT_EQ(got[static_cast<size_t>(r)].losses, want[0].losses) << who;
    expect_bit_identical(got[static_cast<size_t>(r)], want[static_cast<size_t>(r)], who + " after 2 more steps");
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, Reshard,
                         ::testing::Values(ReshardCase{2, 1}, ReshardCase{1, 2}, ReshardCase{2, 3}),
                         [](const auto& info) {
                           return "from" + std::to_string(info.param.from) + "_to" + std::to_string(info.param.to);
                         });

// The timer fires on rank 1 only; both ranks save that step.
TEST_F(CheckpointLoop, TimeTriggeredSaveOnOneRankIsAgreedByAll) {
  TempDir dir;
  Job job{tiny_config(dir.path), 2};
  job.until_step = 4;
  job.hooks = [&](int rank, CheckpointingHooks& h) {
    // after_backward of step 2 is this rank's second call.
    h.time_due = [rank, n = 0]() mutable { return rank == 1 && ++n == 2; };
  };
  auto runs = run_job(job);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(runs[static_cast<size_t>(r)].stats.started, 1) << "rank " << r;
    EXPECT_EQ(runs[static_cast<size_t>(r)].stats.committed, 1) << "rank " << r;
    EXPECT_EQ(runs[static_cast<size_t>(r)].stats.last_committed_step, 2) << "rank " << r;
    EXPECT_TRUE(runs[static_cast<size_t>(r)].metrics[1].requested(StepRequest::Checkpoint));
    EXPECT_FALSE(runs[static_cast<size_t>(r)].metrics[0].requested(StepRequest::Checkpoint));
  }
  auto steps = ckpt::CheckpointDir(dir.path).list();
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0].step, 2);
}

// A stop signal seen by rank 0 only, from step 3 on: both ranks stop after
// step 3 with a committed checkpoint of it.
TEST_F(CheckpointLoop, StopOnOneRankStopsAllRanksAtTheSameStepWithACheckpoint) {
  TempDir dir;
  Job job{tiny_config(dir.path), 2};
  job.cfg.checkpoint.every_steps = 2;  // a background save (step 2) precedes the stop
  job.hooks = [&](int rank, CheckpointingHooks& h) {
    h.stop_requested = [rank, n = 0]() mutable { return rank == 0 && ++n >= 3; };
  };
  auto runs = run_job(job);
  for (int r = 0; r < 2; ++r) {
    const auto& run = runs[static_cast<size_t>(r)];
    EXPECT_TRUE(run.stopped) << "rank " << r;
    EXPECT_EQ(run.step, 3) << "rank " << r;
    EXPECT_EQ(run.stats.last_committed_step, 3);
    ASSERT_EQ(run.metrics.size(), 3u);
    bool sync = false;
    for (auto& [k, v] : run.metrics[2].extra) sync = sync || k == "ckpt_sync";
    EXPECT_TRUE(sync) << "the stop save is synchronous";
  }
  EXPECT_EQ(ckpt::CheckpointDir(dir.path).latest_step(), 3);
  ckpt::CheckpointReader rd(ckpt::CheckpointDir(dir.path).step_path(3));
  EXPECT_TRUE(rd.verify().empty());
  EXPECT_EQ(rd.read_blob("step"), "3");
}

// Newest checkpoint damaged in three ways: resume skips it with a reason
// naming the file and the tensors, and loads the previous one.
TEST_F(CheckpointLoop, ResumeFallsBackPastDamagedCheckpoints) {
  struct Damage {
    const char* name;
    std::function<void(const fs::path& step_dir)> apply;
    const char* must_mention;
  };
  auto flip = [](const fs::path& d) {
    // A byte in the middle of the parameter buffer's segment.
    std::fstream f(d / "rank-00000.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(1000);
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(1000);
    f.write(&c, 1);
  };
  auto truncate = [](const fs::path& d) { fs::resize_file(d / "rank-00000.bin", 2000); };
  auto no_manifest = [](const fs::path& d) { fs::remove(d / "manifest.json"); };
  for (const Damage& damage : {Damage{"flipped byte", flip, "wte"}, Damage{"truncated file", truncate, "rank-00000.bin"},
                               Damage{"deleted manifest", no_manifest, "manifest"}}) {
    SCOPED_TRACE(damage.name);
    TempDir dir;
    Job source{tiny_config(dir.path), 1};
    source.cfg.checkpoint.every_steps = 2;
    source.until_step = 4;
    auto saved = run_job(source);
    ASSERT_EQ(saved[0].stats.committed, 2);
    damage.apply(ckpt::CheckpointDir(dir.path).step_path(4));

    Job resumed{tiny_config(dir.path), 1};
    resumed.resume = true;
    resumed.until_step = 0;  // load only
    auto got = run_job(resumed);
    ASSERT_TRUE(got[0].loaded.has_value());
    EXPECT_EQ(got[0].loaded->step, 2);
    ASSERT_EQ(got[0].loaded->skipped.size(), 1u);
    const std::string& reason = got[0].loaded->skipped[0].reason;
    EXPECT_NE(reason.find(damage.must_mention), std::string::npos) << reason;
    if (std::string(damage.name) != "deleted manifest") {
      EXPECT_NE(reason.find("rank-00000.bin"), std::string::npos) << reason;
    }
    EXPECT_EQ(got[0].step, 2);
  }
}

TEST_F(CheckpointLoop, ResumeFromAnEmptyDirectoryStartsFromScratch) {
  TempDir dir;
  Job job{tiny_config(dir.path + "/not-yet"), 1};
  job.resume = true;
  job.until_step = 1;
  auto got = run_job(job);
  EXPECT_FALSE(got[0].loaded.has_value());
  EXPECT_EQ(got[0].step, 1);
}

TEST_F(CheckpointLoop, ResumeWithAnotherModelIsAConfigError) {
  TempDir dir;
  Job source{tiny_config(dir.path), 1};
  source.cfg.checkpoint.every_steps = 1;
  source.until_step = 1;
  run_job(source);
  Job other{tiny_config(dir.path), 1};
  other.cfg.model.width = 64;
  other.resume = true;
  try {
    run_job(other);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match this model"), std::string::npos) << e.what();
  }
}

bool has(const StepMetrics& m, const std::string& key) {
  for (auto& [k, v] : m.extra)
    if (k == key) return true;
  return false;
}
double get(const StepMetrics& m, const std::string& key) {
  for (auto& [k, v] : m.extra)
    if (k == key) return v;
  return -1;
}

// Releases the writer held by Gate: for "skip" once step 2's save was
// skipped, for "wait" shortly after step 2's save started waiting.
struct Gate : StepObserver {
  std::shared_ptr<std::atomic<bool>> open = std::make_shared<std::atomic<bool>>(false);
  bool wait_policy = false;
  void after_backward(Trainer& t) override {
    if (t.step() == 1 && wait_policy)
      std::thread([o = open] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        *o = true;
      }).detach();
  }
  void after_step(Trainer& t, const StepMetrics&) override {
    if (t.step() == 2) *open = true;
  }
};

// A writer held up longer than a step: with if_busy = "skip" the next save is
// skipped, with "wait" it waits; both are visible in the step metrics.
TEST_F(CheckpointLoop, BusyWriterIsSkippedOrWaitedForAndReported) {
  for (const std::string policy : {"skip", "wait"}) {
    SCOPED_TRACE(policy);
    TempDir dir;
    Gate gate;
    gate.wait_policy = policy == "wait";
    Job job{tiny_config(dir.path), 1};
    job.cfg.checkpoint.every_steps = 1;
    job.cfg.checkpoint.if_busy = policy;
    job.until_step = 2;
    job.hooks = [&](int, CheckpointingHooks& h) {
      h.before_write = [open = gate.open](int64_t step) {
        if (step == 1)
          while (!*open) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      };
    };
    job.prepare = [&](int, Trainer& t) { t.add_observer(&gate); };  // after Checkpointing's own hooks
    auto runs = run_job(job);
    const auto& m = runs[0].metrics;
    ASSERT_EQ(m.size(), 2u);
    EXPECT_TRUE(has(m[0], "ckpt_saved"));
    EXPECT_TRUE(has(m[0], "ckpt_blocked_s"));
    EXPECT_FALSE(has(m[0], "ckpt_committed_step"));  // held by the gate
    if (policy == "skip") {
      EXPECT_TRUE(has(m[1], "ckpt_skipped"));
      EXPECT_EQ(runs[0].stats.skipped_busy, 1);
      EXPECT_EQ(get(m[1], "ckpt_skipped_total"), 1);
      EXPECT_EQ(runs[0].stats.last_committed_step, 1);
    } else {
      EXPECT_TRUE(has(m[1], "ckpt_saved"));
      EXPECT_GT(get(m[1], "ckpt_wait_s"), 0);
      EXPECT_GE(get(m[1], "ckpt_blocked_s"), get(m[1], "ckpt_wait_s"));
      EXPECT_EQ(get(m[1], "ckpt_waited_total"), 1);
      // Step 1's commit happened during the wait: reported on step 2's line
      // (or step 2's own, if the writer committed it before the line was
      // made: seen on a loaded 2-core VM).
      EXPECT_GE(get(m[1], "ckpt_committed_step"), 1);
      EXPECT_GT(get(m[1], "ckpt_write_s"), 0);
      EXPECT_EQ(runs[0].stats.last_committed_step, 2);
    }
  }
}

TEST_F(CheckpointLoop, FinishSavesTheLastStepOnce) {
  TempDir dir;
  Job job{tiny_config(dir.path), 1};
  job.cfg.checkpoint.at_end = true;
  job.cfg.checkpoint.every_steps = 3;
  job.finish = true;
  auto runs = run_job(job);
  // Step 3 (periodic) and step 6 (the last: saved once, synchronously, by after_step).
  EXPECT_EQ(runs[0].stats.started, 2);
  EXPECT_EQ(ckpt::CheckpointDir(dir.path).latest_step(), 6);
  EXPECT_TRUE(has(runs[0].metrics[5], "ckpt_sync"));
}

}  // namespace
}  // namespace braid::train
