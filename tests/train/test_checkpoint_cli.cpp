// Checkpoints end to end through the `braid` binary:
//   - SIGTERM to `braid launch` (2 workers): the workers agree on a step,
//     save it, exit 0; the checkpoint verifies and `--resume` continues;
//   - SIGKILL during a background save at every crash point: the previous
//     checkpoint stays valid and `--resume` finishes bit-identically to a
//     run that was never killed;
//   - a flipped byte, a truncated file, a deleted manifest: `braid ckpt
//     verify` fails naming the problem, `--resume` falls back with a warning;
//   - `braid sample --ckpt` reproduces the run's own sample;
//   - metrics.jsonl and summary.json carry the checkpoint figures.
// Tiny models; the learning rate stays in its warm-up (warmup_steps far
// beyond the run), so runs of different lengths share one schedule and their
// steps can be compared bit for bit.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

namespace {
namespace fs = std::filesystem;
using nlohmann::json;

const std::string kBraid = std::string(BRAID_BINARY_DIR) + "/braid";

struct Result {
  int code = -1;  // exit code, or 128 + signal
  std::string output;
};

// stderr joins stdout unless `with_stderr` is false (then it is discarded:
// only what the command prints as its result is captured).
Result run(const std::string& command, bool with_stderr = true) {
  Result r;
  std::FILE* p = popen((command + (with_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<json> metrics_of(const std::string& run_dir) {
  std::vector<json> out;
  std::ifstream f(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) out.push_back(json::parse(line));
  return out;
}

std::string step_dir(const std::string& dir, int step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08d", step);
  return dir + "/" + name;
}

// xxh3 of the shard file of rank 0, from the manifest (covers every byte of
// the saved state and blobs; the manifest itself also names the run's paths).
std::string shard_checksum(const std::string& step_path) {
  auto m = json::parse(slurp(step_path + "/manifest.json"));
  return m.at("files").at(0).at("xxh3").get<std::string>();
}

class CheckpointCli : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/braid_ckpt_cli_XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::ofstream text(dir_ + "/corpus.txt");
    for (int i = 0; i < 300; ++i) text << "line " << i % 17 << ": the quick brown fox jumps over the lazy dog.\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A tiny job; `ckpt` is its checkpoint directory, `run` its run directory.
  std::string config(const std::string& name, const std::string& ckpt, int steps, int every_steps,
                     const std::string& extra = "") {
    std::string path = dir_ + "/" + name + ".toml";
    std::ofstream f(path);
    f << "[model]\ncontext = 16\nlayers = 1\nwidth = 16\nheads = 2\n"
      << "[data]\npaths = [\"" << dir_ << "/corpus.txt\"]\nval_fraction = 0.1\n"
      << "[optim]\nlr = 3e-3\nwarmup_steps = 100000\n"
      << "[train]\nsteps = " << steps << "\nbatch_size = 4\neval_every = 0\neval_batches = 2\nsample_tokens = 20\n"
      << "threads = 1\n"
      << "[run]\ndir = \"" << dir_ << "/run-" << name << "\"\nprogress = false\n"
      << "[checkpoint]\ndir = \"" << ckpt << "\"\nevery_steps = " << every_steps << "\nkeep_last = 0\n"
      << extra;
    return path;
  }
  std::string run_dir(const std::string& name) const { return dir_ + "/run-" + name; }

  std::string dir_;
};

TEST_F(CheckpointCli, ResumeWithoutACheckpointDirectoryFailsWithAHint) {
  std::string cfg = config("nodir", "", 2, 0);
  auto r = run(kBraid + " train " + cfg + " --resume");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--resume needs a checkpoint directory"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checkpoint.dir"), std::string::npos) << r.output;
}

TEST_F(CheckpointCli, MetricsSummaryAndSampleFromTheLastCheckpoint) {
  const std::string ckpt = dir_ + "/ckpt";
  auto r = run(kBraid + " train " + config("a", ckpt, 4, 2));
  ASSERT_EQ(r.code, 0) << r.output;

  // Step 2: an asynchronous save; step 4 (the last): a synchronous one.
  auto lines = metrics_of(run_dir("a"));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[1].value("ckpt_saved", 0.0), 1.0) << lines[1];
  EXPECT_TRUE(lines[1].contains("ckpt_blocked_s")) << lines[1];
  EXPECT_FALSE(lines[1].contains("ckpt_sync")) << lines[1];
  EXPECT_EQ(lines[3].value("ckpt_sync", 0.0), 1.0) << lines[3];
  EXPECT_EQ(lines[3].value("ckpt_committed_step", 0.0), 4.0) << lines[3];
  EXPECT_FALSE(lines[0].contains("ckpt_saved"));
  auto summary = json::parse(slurp(run_dir("a") + "/summary.json"));
  ASSERT_TRUE(summary.contains("checkpoint")) << summary;
  EXPECT_EQ(summary["checkpoint"]["committed"], 2);
  EXPECT_EQ(summary["checkpoint"]["last_step"], 4);

  // The run's own sampling settings are sample's defaults: same text.
  std::string expected = slurp(run_dir("a") + "/sample.txt");
  ASSERT_FALSE(expected.empty());
  auto s = run(kBraid + " sample --ckpt " + ckpt + " --tokens 20", /*with_stderr=*/false);
  ASSERT_EQ(s.code, 0) << s.output;
  EXPECT_EQ(s.output, expected);
  // A given step directory, prompt and seed.
  auto t = run(kBraid + " sample --ckpt " + step_dir(ckpt, 2) + " --prompt 'line 3: the' --tokens 10 --seed 5",
               /*with_stderr=*/false);
  ASSERT_EQ(t.code, 0) << t.output;
  EXPECT_EQ(t.output.rfind("line 3: the", 0), 0u) << t.output;
  EXPECT_EQ(t.output.size(), std::string("line 3: the").size() + 10 + 1) << t.output;

  auto bad = run(kBraid + " sample --ckpt " + dir_ + "/no-such-dir");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("no-such-dir"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("hint"), std::string::npos) << bad.output;
}

// SIGTERM to the launcher: passed to both workers, which agree on a step at
// the next step boundary, save it synchronously and exit 0.
TEST_F(CheckpointCli, SigtermUnderLaunchLeavesAValidCheckpointAndResumeContinues) {
  const std::string ckpt = dir_ + "/ckpt";
  std::string cfg = config("long", ckpt, 100000, 0);
  const std::string log_path = dir_ + "/launch.log";
  pid_t pid = fork();
  if (pid == 0) {
    std::freopen(log_path.c_str(), "w", stdout);
    dup2(fileno(stdout), 2);
    execl(kBraid.c_str(), kBraid.c_str(), "launch", "--nproc", "2", "--grace", "60", "--", kBraid.c_str(), "train",
          cfg.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until training runs (a few metrics lines), then ask it to stop.
  auto start = std::chrono::steady_clock::now();
  while (metrics_of(run_dir("long")).size() < 3) {
    ASSERT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(90)) << slurp(log_path);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  std::string out = slurp(log_path);
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_EQ(WEXITSTATUS(status), 0) << out;
  EXPECT_NE(out.find("stopped by SIGTERM"), std::string::npos) << out;

  const int stopped_at = static_cast<int>(metrics_of(run_dir("long")).size());
  EXPECT_EQ(slurp(ckpt + "/latest"), "step-" + std::string(8 - std::to_string(stopped_at).size(), '0') +
                                         std::to_string(stopped_at) + "\n");
  auto v = run(kBraid + " ckpt verify " + ckpt);
  EXPECT_EQ(v.code, 0) << v.output;
  auto manifest = json::parse(slurp(step_dir(ckpt, stopped_at) + "/manifest.json"));
  EXPECT_EQ(manifest["world_size"], 2);

  // Two more steps from there, again on two workers.
  auto r = run(kBraid + " launch --nproc 2 -- " + kBraid + " train " + cfg + " --resume --set train.steps=" +
               std::to_string(stopped_at + 2));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from " + step_dir(ckpt, stopped_at)), std::string::npos) << r.output;
  auto lines = metrics_of(run_dir("long"));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["step"], stopped_at + 1);
  EXPECT_EQ(run(kBraid + " ckpt verify " + step_dir(ckpt, stopped_at + 2)).code, 0);
}

// SIGKILL at each crash point of the save of step 4 (the writer runs in the
// background while step 5 trains): step 2 stays the valid latest checkpoint,
// and resuming from it reaches step 6 with exactly the state of a run that
// was never killed.
TEST_F(CheckpointCli, SigkillDuringABackgroundSaveKeepsThePreviousCheckpoint) {
  const std::string ref = dir_ + "/ref";
  auto r = run(kBraid + " train " + config("ref", ref, 6, 2));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string want = shard_checksum(step_dir(ref, 6));

  const std::string seed = dir_ + "/seed";
  r = run(kBraid + " train " + config("seed", seed, 2, 2));
  ASSERT_EQ(r.code, 0) << r.output;

  for (const char* point : {"during-shard-write", "after-shard-write", "before-manifest", "before-rename",
                            "before-latest"}) {
    SCOPED_TRACE(point);
    const std::string ckpt = dir_ + "/crash-" + point;
    fs::copy(seed, ckpt, fs::copy_options::recursive);
    std::string cfg = config(std::string("crash-") + point, ckpt, 6, 2);
    auto killed = run(std::string("BRAID_CKPT_CRASH_AT=") + point + " " + kBraid + " train " + cfg + " --resume");
    EXPECT_EQ(killed.code, 128 + SIGKILL) << killed.output;
    EXPECT_NE(killed.output.find("crash point"), std::string::npos) << killed.output;

    auto v = run(kBraid + " ckpt verify " + ckpt);
    EXPECT_EQ(v.code, 0) << v.output;
    EXPECT_NE(v.output.find("step-00000002: valid"), std::string::npos) << v.output;
    EXPECT_EQ(slurp(ckpt + "/latest"), "step-00000002\n");

    auto resumed = run(kBraid + " train " + cfg + " --resume");
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resumed from " + step_dir(ckpt, 2)), std::string::npos) << resumed.output;
    EXPECT_EQ(shard_checksum(step_dir(ckpt, 6)), want) << "the resumed run's final state differs";
    EXPECT_EQ(slurp(run_dir(std::string("crash-") + point) + "/sample.txt"), slurp(run_dir("ref") + "/sample.txt"));
  }
}

// The newest checkpoint damaged three ways: verify names the problem and
// exits 1; --resume warns naming file and tensor and loads the previous one.
TEST_F(CheckpointCli, DamagedCheckpointFailsVerifyAndResumeFallsBack) {
  const std::string seed = dir_ + "/seed";
  auto r = run(kBraid + " train " + config("seed", seed, 4, 2));
  ASSERT_EQ(r.code, 0) << r.output;
  struct Damage {
    std::string name;
    std::function<void(const std::string&)> apply;
    std::vector<std::string> verify_says;  // in `braid ckpt verify`
    std::vector<std::string> resume_says;  // in the resume warning
  };
  auto flip = [](const std::string& d) {
    std::fstream f(d + "/rank-00000.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(100);
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 1);
    f.seekp(100);
    f.write(&c, 1);
  };
  auto truncate = [](const std::string& d) { fs::resize_file(d + "/rank-00000.bin", 3000); };
  auto no_manifest = [](const std::string& d) { fs::remove(d + "/manifest.json"); };
  std::vector<Damage> damages = {
      {"flip", flip, {"rank-00000.bin", "checksum", "wte"}, {"rank-00000.bin", "wte"}},
      {"truncate", truncate, {"rank-00000.bin", "3000"}, {"rank-00000.bin"}},
      {"no-manifest", no_manifest, {"manifest.json"}, {"manifest.json"}},
  };
  for (auto& d : damages) {
    SCOPED_TRACE(d.name);
    const std::string ckpt = dir_ + "/damaged-" + d.name;
    fs::copy(seed, ckpt, fs::copy_options::recursive);
    d.apply(step_dir(ckpt, 4));
    auto v = run(kBraid + " ckpt verify " + ckpt);
    EXPECT_EQ(v.code, 1) << v.output;
    EXPECT_NE(v.output.find("INVALID"), std::string::npos) << v.output;
    for (auto& s : d.verify_says) EXPECT_NE(v.output.find(s), std::string::npos) << s << " not in:\n" << v.output;

    auto resumed = run(kBraid + " train " + config("resume-" + d.name, ckpt, 5, 0) + " --resume");
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("is not valid, trying the previous one"), std::string::npos) << resumed.output;
    for (auto& s : d.resume_says)
      EXPECT_NE(resumed.output.find(s), std::string::npos) << s << " not in:\n" << resumed.output;
    EXPECT_NE(resumed.output.find("resumed from " + step_dir(ckpt, 2)), std::string::npos) << resumed.output;
    EXPECT_EQ(metrics_of(run_dir("resume-" + d.name)).front()["step"], 3);
  }
}

}  // namespace
