// health/ without LibTorch: the pieces the training glue (train/health_monitor)
// is built from, and the flight recorder inside the Communicator.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "comm/communicator.hpp"
#include "comm/flight_recorder.hpp"
#include "core/error.hpp"
#include "harness.hpp"
#include "health/fault_injection.hpp"
#include "health/fingerprint.hpp"
#include "health/hang_report.hpp"
#include "health/metrics_server.hpp"
#include "health/spike_guard.hpp"
#include "health/straggler_detector.hpp"

using namespace braid;
using namespace braid::health;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / fmt::format("braid-health-{}-{}", name, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

}  // namespace

TEST(Fingerprint, RotatingSlicesCoverEverythingOnce) {
  for (int64_t n : {0, 1, 7, 1000, 1001}) {
    for (double f : {1.0, 0.5, 0.3, 0.25, 0.01}) {
      const int64_t slices = static_cast<int64_t>(std::ceil(1.0 / f - 1e-9));
      int64_t covered = 0, expect_begin = 0;
      for (int64_t c = 0; c < slices; ++c) {
        auto [b, e] = rotating_slice(n, c, f);
        EXPECT_EQ(b, expect_begin) << n << " " << f << " " << c;
        covered += e - b;
        expect_begin = e;
      }
      EXPECT_EQ(covered, n);
      EXPECT_EQ(rotating_slice(n, slices, f), rotating_slice(n, 0, f));  // wraps around
    }
  }
  EXPECT_THROW(rotating_slice(10, 0, 0.0), ConfigError);
  EXPECT_THROW(rotating_slice(10, 0, 1.5), ConfigError);
}

TEST(Fingerprint, VoteNamesTheMinority) {
  // 4 ranks x 3 values; rank 2 differs in value 1.
  std::vector<uint64_t> v = {1, 2, 3, 1, 2, 3, 1, 9, 3, 1, 2, 3};
  Vote vote = vote_fingerprints(v, 4);
  EXPECT_FALSE(vote.agree);
  EXPECT_TRUE(vote.decided);
  EXPECT_EQ(vote.minority, std::vector<int>{2});
  EXPECT_EQ(vote.differing, std::vector<size_t>{1});
  EXPECT_EQ(vote.healthy_rank, 0);
  // Rank 0 is the odd one: the healthy source is rank 1.
  v = {5, 2, 3, 1, 2, 3, 1, 2, 3};
  vote = vote_fingerprints(v, 3);
  EXPECT_EQ(vote.minority, std::vector<int>{0});
  EXPECT_EQ(vote.healthy_rank, 1);
  // Two ranks that differ: no majority.
  vote = vote_fingerprints(std::vector<uint64_t>{1, 2}, 2);
  EXPECT_FALSE(vote.agree);
  EXPECT_FALSE(vote.decided);
  EXPECT_EQ(vote.minority, (std::vector<int>{0, 1}));
  // Agreement.
  vote = vote_fingerprints(std::vector<uint64_t>{4, 4, 4}, 3);
  EXPECT_TRUE(vote.agree);
  EXPECT_TRUE(vote.minority.empty());
}

TEST(Fingerprint, EverySingleBitFlipChangesTheFingerprint) {
  std::vector<float> data(4099);
  std::mt19937 gen(7);
  for (auto& x : data) x = std::normal_distribution<float>()(gen);
  const uint64_t clean = fingerprint_bytes(data.data(), data.size() * 4);
  for (int i = 0; i < 2000; ++i) {
    const uint64_t bit = gen() % (data.size() * 32);
    flip_bit(data.data(), data.size() * 4, bit);
    EXPECT_NE(fingerprint_bytes(data.data(), data.size() * 4), clean);
    flip_bit(data.data(), data.size() * 4, bit);
  }
  EXPECT_EQ(fingerprint_bytes(data.data(), data.size() * 4), clean);
}

TEST(FaultSpec, ParsesTheIssueExamples) {
  auto f = parse_fault_spec("bitflip:rank=1,step=40,target=comm");
  EXPECT_EQ(f.kind, FaultKind::BitFlip);
  EXPECT_EQ(f.rank, 1);
  EXPECT_EQ(f.step, 40);
  EXPECT_EQ(f.target, FlipTarget::Comm);
  EXPECT_TRUE(f.at(1, 40));
  EXPECT_FALSE(f.at(1, 41));
  EXPECT_FALSE(f.at(0, 40));
  f = parse_fault_spec("slow:rank=2,factor=3");
  EXPECT_EQ(f.kind, FaultKind::Slow);
  EXPECT_DOUBLE_EQ(f.factor, 3);
  EXPECT_TRUE(f.at(2, 1));
  EXPECT_TRUE(f.at(2, 1000));
  f = parse_fault_spec("hang:rank=1,step=30");
  EXPECT_EQ(f.kind, FaultKind::Hang);
  EXPECT_LT(f.seconds, 0);
  f = parse_fault_spec("crash:rank=0,step=50");
  EXPECT_EQ(f.kind, FaultKind::Crash);
  f = parse_fault_spec("nan:rank=0,step=20,count=2");
  EXPECT_TRUE(f.at(0, 20));
  EXPECT_TRUE(f.at(0, 21));
  EXPECT_FALSE(f.at(0, 22));
  f = parse_fault_spec("bitflip:rank=0,step=3,target=params,index=17,bit=30");
  EXPECT_EQ(f.index, 17);
  EXPECT_EQ(f.bit, 30);
}

TEST(FaultSpec, RejectsBadSpecsWithAHint) {
  for (const char* bad : {"flip:rank=1,step=2", "bitflip:rank=1", "bitflip:step=2,target=memory", "nan:rank=0",
                          "hang:rank=x,step=3", "slow:rank=1,factor=0.5", "crash:step=0", "bitflip:step=2,color=red",
                          "nan:step=3,count=0", "bitflip:step=1,bit=40", "slow:rank"}) {
    try {
      parse_fault_spec(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_FALSE(e.hint().empty()) << bad;
    }
  }
}

TEST(SpikeGuard, NanIsSkippedAndRepeatsRollBack) {
  SpikeGuard g({.sigma = 6, .warmup = 5, .ema = 0.1, .rollback_after = 2});
  for (int i = 0; i < 10; ++i) EXPECT_EQ(g.judge(3.0 - 0.01 * i, 1.0), GuardVerdict::Apply);
  std::string why;
  EXPECT_EQ(g.judge(std::nan(""), 1.0, &why), GuardVerdict::Skip);
  EXPECT_NE(why.find("not finite"), std::string::npos);
  EXPECT_EQ(g.judge(2.9, 1.0), GuardVerdict::Apply);  // a good step ends the streak
  EXPECT_EQ(g.judge(2.9, INFINITY), GuardVerdict::Skip);
  EXPECT_EQ(g.judge(2.9, INFINITY), GuardVerdict::Rollback);
  g.reset_streak();
  EXPECT_EQ(g.judge(2.9, 1.0), GuardVerdict::Apply);
}

TEST(SpikeGuard, SpikesAreJudgedAgainstRunningStatistics) {
  SpikeGuard g({.sigma = 6, .warmup = 5, .ema = 0.1, .rollback_after = 0});
  std::mt19937 gen(1);
  for (int i = 0; i < 50; ++i)
    EXPECT_EQ(g.judge(3.0 + 0.05 * std::normal_distribution<double>()(gen), 1.0 + 0.1 * std::normal_distribution<double>()(gen)),
              GuardVerdict::Apply);
  std::string why;
  EXPECT_EQ(g.judge(3.0, 40.0, &why), GuardVerdict::Skip);
  EXPECT_NE(why.find("gradient norm"), std::string::npos);
  EXPECT_EQ(g.judge(9.0, 1.0, &why), GuardVerdict::Skip);  // rollback_after = 0: never rolls back
  EXPECT_NE(why.find("loss"), std::string::npos);
  EXPECT_EQ(g.judge(3.05, 1.05), GuardVerdict::Apply);
  // Before warm-up only non-finite values are refused.
  SpikeGuard fresh({.sigma = 6, .warmup = 5, .ema = 0.1, .rollback_after = 2});
  EXPECT_EQ(fresh.judge(3.0, 1.0), GuardVerdict::Apply);
  EXPECT_EQ(fresh.judge(30.0, 100.0), GuardVerdict::Apply);
}

// After the model is replaced (a DiLoCo outer step, a heal) the statistics
// start over: the higher gradient norm that follows is the new baseline, not
// a spike; the warmup applies again, and later spikes against the new
// baseline are caught.
TEST(SpikeGuard, RestartMakesTheReplacedModelTheNewBaseline) {
  SpikeGuard g({.sigma = 6, .warmup = 5, .ema = 0.1, .rollback_after = 2});
  auto wobble = [](int i) { return (i % 2 == 0 ? 1.0 : -1.0) * (0.5 + 0.1 * (i % 5)); };  // within [-0.9, 0.9]
  for (int i = 0; i < 50; ++i) ASSERT_EQ(g.judge(3.0 + 0.05 * wobble(i), 1.0 + 0.1 * wobble(i)), GuardVerdict::Apply);
  EXPECT_EQ(g.judge(3.0, 4.0), GuardVerdict::Skip) << "without a restart the jump is a spike";
  g.restart();
  EXPECT_EQ(g.accepted(), 0);
  EXPECT_EQ(g.streak(), 0);
  for (int i = 0; i < 50; ++i) ASSERT_EQ(g.judge(3.0 + 0.05 * wobble(i), 4.0 + 0.1 * wobble(i)), GuardVerdict::Apply) << i;
  EXPECT_EQ(g.judge(3.0, 40.0), GuardVerdict::Skip) << "spikes against the new baseline are still caught";
  g.restart();
  EXPECT_EQ(g.judge(3.0, NAN), GuardVerdict::Skip) << "non-finite values are refused during the warmup too";
}

// save()/load() carry the statistics exactly: a guard loaded with another's
// state reaches the same verdicts from then on (a fresh one would not judge
// spikes during its warmup); malformed text is refused and changes nothing.
TEST(SpikeGuard, SavedStateGivesTheSameVerdicts) {
  const SpikeGuardOptions o{.sigma = 6, .warmup = 5, .ema = 0.1, .rollback_after = 2};
  SpikeGuard a(o), b(o), fresh(o);
  for (int i = 0; i < 30; ++i) ASSERT_EQ(a.judge(3.0 + 0.01 * (i % 3), 1.0 + 0.02 * (i % 4)), GuardVerdict::Apply);
  b.load(a.save());
  EXPECT_EQ(b.save(), a.save());
  EXPECT_EQ(b.accepted(), 30);
  const double norms[] = {1.01, 9.0, 1.03, 9.5, 9.6, 1.02};
  for (double n : norms) {
    const auto want = a.judge(3.01, n);
    EXPECT_EQ(b.judge(3.01, n), want) << "norm " << n;
    if (n > 5) {
      EXPECT_NE(want, GuardVerdict::Apply);
      EXPECT_EQ(fresh.judge(3.01, n), GuardVerdict::Apply) << "a fresh guard is still in its warmup";
    }
  }
  EXPECT_EQ(b.save(), a.save());
  const std::string before = b.save();
  for (const char* bad : {"", "spike-guard-1 1 0 0x1p+0", "spike-guard-2 1 0 0 0 0 0", "spike-guard-1 -1 0 0 0 0 0",
                          "spike-guard-1 1 0 nan 0 0 0", "spike-guard-1 1 0 0 0 0 0 extra"}) {
    EXPECT_THROW(b.load(bad), CorruptData) << bad;
    EXPECT_EQ(b.save(), before) << bad;
  }
}

TEST(Stragglers, SlowerThanFactorTimesMedian) {
  EXPECT_EQ(find_stragglers(std::vector<double>{1.0, 1.1, 3.2, 0.9}, 1.5), std::vector<int>{2});
  EXPECT_TRUE(find_stragglers(std::vector<double>{1.0, 1.1, 1.2}, 1.5).empty());
  EXPECT_TRUE(find_stragglers(std::vector<double>{1.0}, 1.5).empty());
  EXPECT_DOUBLE_EQ(median_of(std::vector<double>{4, 1, 3, 2}), 2.5);
}

TEST(Metrics, PrometheusEndpointServesTheRegistry) {
  MetricsRegistry reg;
  reg.set("braid_step", 12, "optimizer steps done");
  reg.add("braid_corruptions_total", 1, "silent corruptions detected");
  reg.add("braid_corruptions_total", 2, "silent corruptions detected");
  EXPECT_THROW(reg.set("bad name", 1, "x"), ConfigError);
  MetricsServer server(reg, 0);
  ASSERT_GT(server.port(), 0);
  std::string body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_NE(body.find("# TYPE braid_step gauge\nbraid_step 12\n"), std::string::npos) << body;
  EXPECT_NE(body.find("# TYPE braid_corruptions_total counter\nbraid_corruptions_total 3\n"), std::string::npos) << body;
  reg.set("braid_step", 13, "optimizer steps done");
  EXPECT_NE(http_get("127.0.0.1", server.port(), "/metrics").find("braid_step 13\n"), std::string::npos);
  EXPECT_THROW(http_get("127.0.0.1", server.port(), "/other"), NetError);
}

TEST(FlightRecorder, RingKeepsTheLastEntriesOldestFirst) {
  comm::FlightRecorder rec(4);
  for (int i = 0; i < 10; ++i) {
    auto t = rec.issued("all_reduce", "f32", 100 + static_cast<uint64_t>(i), static_cast<uint64_t>(i), 0, 0, 0, 2, -1);
    rec.started(t);
    rec.finished(t, i != 9, "boom");
  }
  auto e = rec.entries();
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e.front().seq, 6u);
  EXPECT_EQ(e.back().seq, 9u);
  EXPECT_EQ(e.back().state, comm::FlightState::Failed);
  EXPECT_STREQ(e.back().error, "boom");
  EXPECT_EQ(e[0].state, comm::FlightState::Done);
  // Dump and read back.
  auto dir = temp_dir("ring");
  rec.set_dump_path((dir / "rank-0.jsonl").string(), 0);
  ASSERT_TRUE(rec.dump("test"));
  FlightDump d = read_flight_dump((dir / "rank-0.jsonl").string());
  EXPECT_EQ(d.rank, 0);
  EXPECT_EQ(d.reason, "test");
  ASSERT_EQ(d.entries.size(), 4u);
  EXPECT_EQ(d.entries[3].seq, 9u);
  EXPECT_EQ(d.entries[3].bytes, 109u);
  EXPECT_STREQ(d.entries[3].op, "all_reduce");
  fs::remove_all(dir);
}

// A rank that never enters a collective: the others time out, every rank's
// recorder dumps on its first failure, and the analysis names the rank and
// the collective it never entered.
TEST(FlightRecorder, HangDumpNamesTheRankThatNeverEntered) {
  auto dir = temp_dir("hang");
  comm::CommOptions opt;
  opt.timeout_s = 1.0;
  const int n = 3, hung = 1;
  auto errors = comm::harness::run_ranks(n, opt, [&](comm::Communicator& c) {
    c.flight_recorder().set_dump_path((dir / fmt::format("rank-{}.jsonl", c.rank())).string(), c.rank());
    std::vector<float> v(1000, 1.0f);
    for (int i = 0; i < 5; ++i) c.all_reduce(v.data(), v.data(), v.size(), DType::F32, comm::ReduceOp::Sum).wait();
    if (c.rank() == hung) std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // "hangs"
    c.all_reduce(v.data(), v.data(), v.size(), DType::F32, comm::ReduceOp::Sum).wait();
  });
  for (int r = 0; r < n; ++r) EXPECT_TRUE(errors[static_cast<size_t>(r)]) << "rank " << r << " should fail";
  auto dumps = read_flight_dumps(dir.string());
  ASSERT_EQ(dumps.size(), 3u);
  HangReport report = analyze_flight_dumps(dumps, n);
  EXPECT_TRUE(report.missing_ranks.empty());
  ASSERT_EQ(report.stuck.size(), 1u) << report.text();
  EXPECT_EQ(report.stuck[0].rank, hung);
  EXPECT_EQ(report.stuck[0].missing_seq, 5u);
  EXPECT_EQ(report.stuck[0].missing_op, "all_reduce");
  EXPECT_EQ(report.stuck[0].last_seq, 4);
  EXPECT_NE(report.text().find("rank 1 never entered all_reduce #5"), std::string::npos) << report.text();
  // Without the hung rank's dump it is still named (as missing).
  dumps.erase(dumps.begin() + hung);
  report = analyze_flight_dumps(dumps, n);
  EXPECT_EQ(report.missing_ranks, std::vector<int>{hung});
  fs::remove_all(dir);
}

TEST(FlightRecorder, FatalSignalDumps) {
  auto dir = temp_dir("signal");
  const std::string path = (dir / "rank-0.jsonl").string();
  pid_t pid = ::fork();
  if (pid == 0) {
    comm::FlightRecorder rec(8);
    rec.set_dump_path(path, 0);
    auto t = rec.issued("broadcast", "f32", 64, 3, 0, 0, 0, 2, 0);
    rec.started(t);
    comm::FlightRecorder::install_fatal_signal_dump();
    std::abort();
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGABRT);
  FlightDump d = read_flight_dump(path);
  EXPECT_NE(d.reason.find("fatal signal"), std::string::npos);
  ASSERT_EQ(d.entries.size(), 1u);
  EXPECT_EQ(d.entries[0].state, comm::FlightState::Running);
  fs::remove_all(dir);
}
