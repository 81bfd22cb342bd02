// How braid's training jobs map onto the plan model (plan_for_job in
// cli/torch/plan_calibration.cpp), through `braid bench plan --predict-only`:
// it predicts every row from hand-made calibrated cluster files and measures
// nothing, so these tests take seconds and assert behaviour, never time.
//   - each built-in mode (ZeRO 0-3, recomputation, TP, PP) becomes the plan
//     the engine really runs: dp = workers / (tp·pp), micro-batches as the
//     engine splits the batch, the overlap the engine has;
//   - the predictions differ from plain DP the right way (ZeRO-3 moves more,
//     TP halves the compute and adds all-reduces, PP adds a bubble);
//   - the printed `braid plan` command gives the same prediction;
//   - what the plan cannot express is a ConfigError naming the key.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "plan/calibration.hpp"
#include "plan/cluster_spec.hpp"

namespace {
namespace fs = std::filesystem;
using nlohmann::json;

const std::string kBraid = std::string(BRAID_BINARY_DIR) + "/braid";

struct Result {
  int code = -1;
  std::string out;
  std::string err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class PlanJobMapping : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/braid_plan_mapping_XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::ofstream(dir_ + "/corpus.txt") << "the quick brown fox jumps over the lazy dog.\n";
    job_ = dir_ + "/job.toml";
    // 2 layers (so pp = 2 splits them), 2 heads and an MLP of 128 (tp = 2 splits them).
    std::ofstream(job_) << "[model]\ncontext = 32\nlayers = 2\nwidth = 32\nheads = 2\n"
                        << "[data]\npaths = [\"" << dir_ << "/corpus.txt\"]\n"
                        << "[train]\nsteps = 4\nbatch_size = 4\nthreads = 1\n"
                        << "[run]\ndir = \"" << dir_ << "/run\"\n";
    for (int w : {1, 2}) {
      braid::plan::CalibrationMeasurements m;
      m.host = "test-host";
      m.date = "2026-01-01T00:00:00Z";
      m.workers = w;
      m.matmul_flops = 1e9;
      m.matmul_size = 256;
      m.step_efficiency = 0.5;
      m.memory_bytes = 4e9;
      // Slow links, so that every collective costs something visible.
      m.transports["shm"] = {2e8, 2e-5, "test"};
      m.transports["tcp"] = {1e8, 5e-5, "test"};
      std::string file = dir_ + "/host-" + std::to_string(w) + "w.toml";
      std::ofstream(file) << braid::plan::cluster_to_toml(braid::plan::cluster_from_measurements(m));
      clusters_ += " --cluster " + file;
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result run(const std::string& args) {
    std::string out = dir_ + "/stdout", err = dir_ + "/stderr";
    int status = std::system((kBraid + " " + args + " >" + out + " 2>" + err).c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  }

  // Every built-in row, predicted: "mode@workers" -> row.
  std::map<std::string, json> predict_all(const std::string& extra = "") {
    auto r = run("bench plan --predict-only --json --job " + job_ + clusters_ + extra);
    EXPECT_EQ(r.code, 0) << r.err;
    std::map<std::string, json> rows;
    if (r.code != 0) return rows;
    const json all = json::parse(r.out);
    for (const auto& row : all["rows"])
      rows[row["mode"].get<std::string>() + "@" + std::to_string(row["workers"].get<int>())] = row;
    return rows;
  }

  std::string dir_, job_, clusters_;
};

TEST_F(PlanJobMapping, EachModeBecomesThePlanTheEngineRuns) {
  auto rows = predict_all();
  for (const char* id : {"dp@1", "dp@2", "dp-sync@2", "accum2@2", "full@2", "zero1@2", "zero2@2", "zero3@2",
                         "zero3-full@2", "tp2@2", "pp2@2", "pp2-gpipe@2"})
    ASSERT_TRUE(rows.count(id)) << id;

  for (const auto& [id, row] : rows) {
    SCOPED_TRACE(id);
    const auto& p = row["plan"];
    EXPECT_EQ(p["micro_batch"].get<int>(), 4);  // train.batch_size
    EXPECT_EQ(p["seq_len"].get<int>(), 32);
    EXPECT_FALSE(p["flash_attention"].get<bool>());    // the engine stores attention probabilities
    EXPECT_FALSE(p["sequence_parallel"].get<bool>());  // no built-in mode turns it on
    EXPECT_EQ(p["grad_bits"].get<int>(), 32);
    EXPECT_EQ(p["order"].get<std::string>(), "tp,pp,dp");  // tp innermost, then pp, then dp
    EXPECT_EQ(p["dp"].get<int>() * p["tp"].get<int>() * p["pp"].get<int>(), row["workers"].get<int>());
    EXPECT_EQ(p["global_batch"].get<int>(), 4 * p["micro_batches"].get<int>() * p["dp"].get<int>());
  }
  auto plan = [&](const std::string& id) { return rows[id]["plan"]; };

  EXPECT_EQ(plan("dp@2")["dp"], 2);
  EXPECT_EQ(plan("dp@2")["zero"], 0);
  EXPECT_EQ(plan("dp@2")["recompute"], "none");
  EXPECT_EQ(plan("dp@2")["overlap"]["dp"], 1.0);     // bucket all-reduces behind backward
  EXPECT_EQ(plan("dp-sync@2")["overlap"]["dp"], 0.0);
  EXPECT_EQ(plan("accum2@2")["micro_batches"], 2);  // train.grad_accum
  EXPECT_EQ(plan("accum2@2")["global_batch"], 16);
  EXPECT_EQ(plan("full@2")["recompute"], "full");

  for (int stage : {1, 2, 3}) {
    auto p = plan("zero" + std::to_string(stage) + "@2");
    EXPECT_EQ(p["zero"], stage);
    EXPECT_EQ(p["dp"], 2);
    // ZeRO-1/2 gather the parameters after the update without overlap; ZeRO-3 prefetches.
    EXPECT_EQ(p["overlap"]["dp"], stage == 3 ? 1.0 : 0.0);
  }
  EXPECT_EQ(plan("zero3-full@2")["zero"], 3);
  EXPECT_EQ(plan("zero3-full@2")["recompute"], "full");

  auto tp = plan("tp2@2");
  EXPECT_EQ(tp["dp"], 1);
  EXPECT_EQ(tp["tp"], 2);
  EXPECT_EQ(tp["pp"], 1);
  EXPECT_EQ(tp["global_batch"], 4);  // both tp ranks read the same sequences
  EXPECT_EQ(tp["overlap"]["tp"], 0.0);

  for (const char* id : {"pp2@2", "pp2-gpipe@2"}) {
    SCOPED_TRACE(id);
    auto pp = plan(id);
    EXPECT_EQ(pp["dp"], 1);
    EXPECT_EQ(pp["pp"], 2);
    EXPECT_EQ(pp["micro_batches"], 4);  // parallel.microbatches
    EXPECT_EQ(pp["global_batch"], 16);
    EXPECT_EQ(pp["overlap"]["pp"], 0.0);
  }
  EXPECT_EQ(plan("pp2@2")["schedule"], "1f1b");
  EXPECT_EQ(plan("pp2-gpipe@2")["schedule"], "gpipe");
}

TEST_F(PlanJobMapping, PredictionsDifferFromPlainDataParallelTheRightWay) {
  auto rows = predict_all();
  ASSERT_FALSE(rows.empty());
  auto pred = [&](const std::string& id) { return rows[id]["predicted"]; };
  auto dims = [&](const std::string& id) {
    std::map<std::string, double> d;
    const json p = pred(id);
    for (const auto& c : p["comm"]) d[c["dimension"].get<std::string>()] = c["total_s"].get<double>();
    return d;
  };
  const double dp_compute = pred("dp@2")["compute_s"].get<double>();
  const double dp_comm = pred("dp@2")["comm_s"].get<double>();
  ASSERT_GT(dp_compute, 0);
  ASSERT_GT(dp_comm, 0);
  EXPECT_EQ(pred("dp@2")["bubble_s"].get<double>(), 0);
  EXPECT_EQ(pred("dp@1")["comm"].size(), 0u);

  // ZeRO: the same compute; ZeRO-3 gathers weights twice per micro-batch (three
  // times with full recomputation, as the plan counts it) on top of the gradients.
  for (const char* id : {"zero1@2", "zero2@2", "zero3@2"}) {
    SCOPED_TRACE(id);
    EXPECT_NEAR(pred(id)["compute_s"].get<double>(), dp_compute, 1e-12);
    EXPECT_EQ(dims(id).count("data parallel"), 1u);
  }
  EXPECT_GT(pred("zero3@2")["comm_s"].get<double>(), dp_comm);
  EXPECT_GT(pred("zero3@2")["comm_s"].get<double>(), pred("zero1@2")["comm_s"].get<double>());
  EXPECT_GT(pred("zero3-full@2")["comm_s"].get<double>(), pred("zero3@2")["comm_s"].get<double>());
  // Nothing hides ZeRO-1/2's exchange in braid's engine; plain DP's hides behind backward.
  EXPECT_GT(pred("zero1@2")["comm_exposed_s"].get<double>(), pred("dp@2")["comm_exposed_s"].get<double>());
  EXPECT_GT(pred("zero1@2")["step_s"].get<double>(), pred("dp@2")["step_s"].get<double>());

  // Full recomputation re-runs every block's forward: a third more block compute, under 4/3 in all.
  double full = pred("full@2")["compute_s"].get<double>() / dp_compute;
  EXPECT_GT(full, 1.2);
  EXPECT_LT(full, 4.0 / 3.0);

  // TP 2: each rank computes half of one replica's batch (the same batch as one
  // dp worker), and the blocks all-reduce activations.
  EXPECT_NEAR(pred("tp2@2")["compute_s"].get<double>(), 0.5 * dp_compute, 1e-9 * dp_compute);
  ASSERT_EQ(dims("tp2@2").count("tensor parallel"), 1u);
  EXPECT_GT(dims("tp2@2")["tensor parallel"], 0);
  EXPECT_EQ(dims("tp2@2").count("data parallel"), 0u);  // one replica
  EXPECT_EQ(pred("tp2@2")["bubble_s"].get<double>(), 0);

  // PP 2 with 4 micro-batches: a bubble of (p-1) micro-batch slots, 1/4 of the compute.
  for (const char* id : {"pp2@2", "pp2-gpipe@2"}) {
    SCOPED_TRACE(id);
    double compute = pred(id)["compute_s"].get<double>(), bubble = pred(id)["bubble_s"].get<double>();
    EXPECT_GT(bubble, 0);
    EXPECT_NEAR(bubble / compute, 0.25, 1e-9);
    ASSERT_EQ(dims(id).count("pipeline p2p"), 1u);
    EXPECT_GT(dims(id)["pipeline p2p"], 0);
    EXPECT_GT(pred(id)["step_s"].get<double>(), compute + bubble);  // the sends are not hidden
  }
  // The schedules differ in memory, not in time.
  EXPECT_NEAR(pred("pp2@2")["step_s"].get<double>(), pred("pp2-gpipe@2")["step_s"].get<double>(), 1e-12);
}

TEST_F(PlanJobMapping, PrintedPlanCommandGivesTheSamePrediction) {
  auto rows = predict_all();
  ASSERT_FALSE(rows.empty());
  for (const char* id : {"dp-sync@2", "accum2@2", "zero1@2", "zero3-full@2", "tp2@2", "pp2-gpipe@2"}) {
    SCOPED_TRACE(id);
    std::string command = rows[id]["plan_command"].get<std::string>();
    ASSERT_EQ(command.rfind("braid plan ", 0), 0u) << command;
    auto r = run(command.substr(std::string("braid ").size()) + " --json");
    ASSERT_EQ(r.code, 0) << command << "\n" << r.err;
    auto j = json::parse(r.out);
    double expected = rows[id]["predicted"]["step_s"].get<double>();
    EXPECT_NEAR(j["step"]["time_s"].get<double>(), expected, 1e-9 * expected) << command;
    EXPECT_NEAR(j["step"]["bubble_s"].get<double>(), rows[id]["predicted"]["bubble_s"].get<double>(), 1e-12);
  }
}

// The mesh engine's newer modes map onto the plan's own: sequence
// parallelism, the interleaved schedule (chunks as virtual stages) and the
// overlapped dp all-reduce; the printed command reproduces each prediction.
TEST_F(PlanJobMapping, SequenceParallelAndInterleavedMapOntoThePlan) {
  std::ofstream(dir_ + "/modes.toml")
      << "[mode.tp2-sp]\nworkers = [2]\nset = [\"parallel.tp=2\", \"parallel.sequence_parallel=true\"]\n"
      << "[mode.pp2-il]\nworkers = [2]\nset = [\"parallel.pp=2\", \"parallel.schedule=interleaved\", "
         "\"parallel.microbatches=4\"]\n";
  // 4 layers: pp 2 x 2 chunks of one block each.
  const std::string job4 = dir_ + "/job4.toml";
  {
    std::ifstream in(job_);
    std::ofstream out(job4);
    for (std::string line; std::getline(in, line);) out << (line == "layers = 2" ? "layers = 4" : line) << "\n";
  }
  auto r = run("bench plan --predict-only --json --job " + job4 + clusters_ + " --modes-file " + dir_ + "/modes.toml");
  ASSERT_EQ(r.code, 0) << r.err;
  const json all = json::parse(r.out);
  std::map<std::string, json> rows;
  for (const auto& row : all["rows"]) rows[row["mode"].get<std::string>()] = row;
  ASSERT_TRUE(rows.count("tp2-sp") && rows.count("pp2-il")) << r.out;
  EXPECT_TRUE(rows["tp2-sp"]["plan"]["sequence_parallel"].get<bool>());
  EXPECT_EQ(rows["pp2-il"]["plan"]["schedule"], "interleaved");
  EXPECT_NE(rows["pp2-il"]["plan_command"].get<std::string>().find("--virtual-stages 2"), std::string::npos);
  for (const char* id : {"tp2-sp", "pp2-il"}) {
    SCOPED_TRACE(id);
    const std::string command = rows[id]["plan_command"].get<std::string>();
    auto p = run(command.substr(std::string("braid ").size()) + " --json");
    ASSERT_EQ(p.code, 0) << command << "\n" << p.err;
    const double expected = rows[id]["predicted"]["step_s"].get<double>();
    EXPECT_NEAR(json::parse(p.out)["step"]["time_s"].get<double>(), expected, 1e-9 * expected) << command;
  }
}

TEST_F(PlanJobMapping, WhatThePlanCannotExpressIsAConfigError) {
  // braid's selective recomputation re-runs the whole attention branch; the plan's only the attention core.
  auto r = run("bench plan --predict-only --job " + job_ + clusters_ + " --set parallel.recompute=selective");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "parallel.recompute = selective")) << r.err;

  std::ofstream(dir_ + "/modes.toml") << "[mode.tp-odd]\nworkers = [3]\nset = [\"parallel.tp=2\"]\n";
  r = run("bench plan --predict-only --job " + job_ + clusters_ + " --modes-file " + dir_ + "/modes.toml");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "do not split into parallel.tp 2")) << r.err;

  r = run("bench plan --predict-only --job " + job_ + clusters_ + " --modes dp-sync --set parallel.dp=3");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "parallel.dp = 3")) << r.err;

  // An output layer that outweighs a block: the plan would unbalance the stages, braid does not.
  r = run("bench plan --predict-only --job " + job_ + clusters_ +
          " --modes pp2 --set model.width=8 --set model.context=8");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "splits model.layers evenly")) << r.err;

  // Predicting only needs a calibrated file for every worker count.
  r = run("bench plan --predict-only --job " + job_ + " --modes zero3");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "no --cluster file is for 2 worker(s)")) << r.err;
}

}  // namespace
