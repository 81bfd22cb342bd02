// `braid plan --calibrate` and `braid bench plan` end to end, through the full
// `braid` binary (with the training engine), on a tiny job with the --quick
// measurements: a calibrated cluster file is written, reads back with the
// numbers it was written with, and plans a job; bench plan runs its rows and
// prints sane ones. Never asserts how close a prediction is (the machine is
// shared; the 25% target is the benchmark's business, not a test's).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "plan/cluster_spec.hpp"

namespace {
namespace fs = std::filesystem;

const std::string kBraid = std::string(BRAID_BINARY_DIR) + "/braid";

struct Result {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class PlanCalibrationCli : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/braid_plan_calibration_XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::ofstream text(dir_ + "/corpus.txt");
    for (int i = 0; i < 300; ++i) text << "line " << i % 17 << ": the quick brown fox jumps over the lazy dog.\n";
    // A tiny job: a step takes milliseconds, so the quick measurements take seconds.
    job_ = dir_ + "/job.toml";
    std::ofstream f(job_);
    f << "[model]\ncontext = 16\nlayers = 1\nwidth = 16\nheads = 2\n"
      << "[data]\npaths = [\"" << dir_ << "/corpus.txt\"]\n"
      << "[optim]\nlr = 3e-3\nwarmup_steps = 2\n"
      << "[train]\nsteps = 6\nbatch_size = 4\nthreads = 1\n"
      << "[parallel]\nbucket_size = \"4K\"\n"
      << "[run]\ndir = \"" << dir_ << "/run\"\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result run(const std::string& args) {
    std::string out = dir_ + "/stdout", err = dir_ + "/stderr";
    int status = std::system((kBraid + " " + args + " >" + out + " 2>" + err).c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  }

  std::string dir_;
  std::string job_;
};

TEST_F(PlanCalibrationCli, WritesAClusterFileThatReadsBackAndPlans) {
  const std::string file = dir_ + "/host.toml";
  auto r = run("plan --calibrate --quick --workers 2 --job " + job_ + " --out " + file);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.err, "calibrating compute")) << r.err;
  EXPECT_TRUE(has(r.err, "calibrating shm")) << r.err;
  EXPECT_TRUE(has(r.err, "calibrating tcp")) << r.err;

  auto c = braid::plan::load_cluster(file);
  EXPECT_TRUE(c.calibration.present);
  EXPECT_EQ(c.gpus, 2);
  EXPECT_EQ(c.domain_size, 2);
  EXPECT_EQ(c.calibration.tool, "braid plan --calibrate");
  EXPECT_EQ(c.calibration.matmul_dtype, "f32");
  EXPECT_GT(c.calibration.matmul_size, 0);
  EXPECT_GT(c.calibration.matmul_flops, 1e6);  // any CPU does a megaFLOP per second
  EXPECT_DOUBLE_EQ(c.hardware.peak_flops, c.calibration.matmul_flops);
  EXPECT_GT(c.hardware.efficiency, 0);
  EXPECT_LE(c.hardware.efficiency, 1);
  EXPECT_GT(c.hardware.memory, 0);
  ASSERT_TRUE(c.transports.count("shm"));
  ASSERT_TRUE(c.transports.count("tcp"));
  for (const auto& [name, t] : c.transports) {
    EXPECT_GT(t.bandwidth, 0) << name;
    EXPECT_GT(t.latency, 0) << name;
    EXPECT_TRUE(has(t.note, "braid bench comm")) << name << ": " << t.note;
  }
  EXPECT_EQ(c.scale_up.transport, "shm");
  EXPECT_DOUBLE_EQ(c.scale_up.bandwidth, c.transports.at("shm").bandwidth);
  EXPECT_EQ(c.scale_out.transport, "tcp");
  EXPECT_TRUE(has(slurp(file), "# braid plan --calibrate: 2 worker(s)"));

  // The file plans the job it was calibrated on.
  auto p = run("plan --cluster " + file + " --model " + job_ +
               " --gpus 2 --zero 0 --micro-batch 4 --global-batch 8 --seq 16 --recompute none --eager-attention "
               "--json");
  ASSERT_EQ(p.code, 0) << p.err;
  auto j = nlohmann::json::parse(p.out);
  EXPECT_GT(j["step"]["time_s"].get<double>(), 0);
  EXPECT_EQ(j["plan"]["dp"].get<int>(), 2);
}

TEST_F(PlanCalibrationCli, CalibrateRejectsPlanningArguments) {
  auto r = run("plan --calibrate --model llama3-8b");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "does not plan a job")) << r.err;
  r = run("plan --calibrate --workers 0");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "--workers")) << r.err;
  r = run("plan --model llama3-8b --out x.toml");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "belong to --calibrate")) << r.err;
}

TEST_F(PlanCalibrationCli, BenchPlanPrintsPredictedAndMeasuredRows) {
  auto r = run("bench plan --quick --json --job " + job_ + " --modes dp,accum2-sync");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["job"].get<std::string>(), job_);
  ASSERT_TRUE(j["transports"].contains("shm"));
  ASSERT_TRUE(j["transports"].contains("tcp"));
  ASSERT_EQ(j["calibrations"].size(), 2u);  // 1 and 2 workers
  // dp at 1 and 2 workers, accum2-sync at 2.
  ASSERT_EQ(j["rows"].size(), 3u) << j.dump(2);
  std::map<std::string, int> per_mode;
  for (const auto& row : j["rows"]) {
    std::string mode = row["mode"].get<std::string>();
    int workers = row["workers"].get<int>();
    ++per_mode[mode];
    SCOPED_TRACE(mode + " at " + std::to_string(workers));
    double predicted = row["predicted"]["step_s"].get<double>();
    double measured = row["measured"]["step_s"].get<double>();
    EXPECT_GT(predicted, 0);
    EXPECT_GT(measured, 0);
    EXPECT_GE(row["measured"]["steps"].get<int>(), 1);
    EXPECT_NEAR(row["error"].get<double>(), (predicted - measured) / measured, 1e-9);
    EXPECT_GE(predicted + 1e-12, row["predicted"]["compute_s"].get<double>());
    // One worker has nothing to exchange; two have a gradient all-reduce.
    EXPECT_EQ(row["predicted"]["comm"].size(), workers > 1 ? 1u : 0u);
    EXPECT_TRUE(has(row["plan_command"].get<std::string>(), "--gpus " + std::to_string(workers)));
  }
  EXPECT_EQ(per_mode["dp"], 2);
  EXPECT_EQ(per_mode["accum2-sync"], 1);
  EXPECT_EQ(j["target"]["rows"].get<int>(), 3);
  // Both 2-worker rows are predicted on the same calibration: two accumulated
  // micro-steps are twice the compute of one.
  double dp2 = 0, accum2 = 0;
  for (const auto& row : j["rows"])
    if (row["workers"].get<int>() == 2)
      (row["mode"] == "dp" ? dp2 : accum2) = row["predicted"]["compute_s"].get<double>();
  EXPECT_NEAR(accum2 / dp2, 2.0, 1e-9);
}

TEST_F(PlanCalibrationCli, BenchPlanModesFromAFile) {
  std::ofstream(dir_ + "/modes.toml") << "[mode.small-batch]\ntitle = \"two sequences\"\nworkers = [1]\n"
                                         "set = [\"train.batch_size=2\"]\n";
  auto r = run("bench plan --quick --job " + job_ + " --modes-file " + dir_ + "/modes.toml");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "small-batch")) << r.out;
  EXPECT_TRUE(has(r.out, "two sequences")) << r.out;
  EXPECT_TRUE(has(r.out, "target: every row within 25%")) << r.out;

  std::ofstream(dir_ + "/bad.toml") << "[mode.x]\nworkers = [1]\nsets = [\"a=b\"]\n";
  r = run("bench plan --quick --job " + job_ + " --modes-file " + dir_ + "/bad.toml");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "unknown key mode.x.sets")) << r.err;
  r = run("bench plan --quick --job " + job_ + " --modes nonesuch");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "unknown mode 'nonesuch'")) << r.err;
  r = run("bench plan --quick --job " + job_ + " --set train.bogus=1");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "train.bogus")) << r.err;
}

}  // namespace
