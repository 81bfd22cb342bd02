// `braid plan` end to end: the command line, the output formats, and the
// errors a user sees for bad input. Runs the braid binary built with the plan
// command only (tests/plan/CMakeLists.txt).
#include <gtest/gtest.h>
#include <unistd.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace {

struct Result {
  int code;
  std::string out;
  std::string err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("braid_plan_cli_" + std::to_string(::getpid()) + "_" + name)).string();
}

Result braid_plan(const std::string& args) {
  std::string out = temp_path("stdout"), err = temp_path("stderr");
  std::string cmd = std::string(BRAID_PLAN_CLI) + " plan " + args + " >" + out + " 2>" + err;
  int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(PlanCli, ListsPresets) {
  auto r = braid_plan("--list");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* name : {"gpt2-124m", "llama3-405b", "example", "h100", "gb200", "meta-h100-24k"})
    EXPECT_TRUE(has(r.out, name)) << name;
}

TEST(PlanCli, PrintsTheReport) {
  auto r = braid_plan("--model llama3-70b --cluster meta-h100-24k --gpus 1024 --tp 8 --pp 4 "
                      "--batch-tokens 8Mi --schedule interleaved --tokens 15T");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* part : {"llama3-70b", "dp 32 × tp 8 × pp 4", "interleaved (v=2)", "step time",
                           "pipeline bubble", "tensor parallel", "data parallel", "MFU", "GPU-hours",
                           "memory per GPU", "fits"})
    EXPECT_TRUE(has(r.out, part)) << part << "\n" << r.out;
}

TEST(PlanCli, JsonAndSvg) {
  std::string svg = temp_path("figure.svg");
  std::filesystem::remove(svg);
  auto r = braid_plan("--model llama3-8b --gpus 64 --tp 8 --global-batch 64 --sites 2 "
                      "--wan-bandwidth 100Gbit/s --diloco 100 --json --svg " + svg);
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["step"]["time_s"].get<double>(), 0);
  EXPECT_EQ(j["plan"]["tp"].get<int>(), 8);
  EXPECT_EQ(j["plan"]["diloco"]["inner_steps"].get<int>(), 100);
  ASSERT_EQ(j["cross_site"]["modes"].size(), 3u);
  EXPECT_GT(j["cross_site"]["modes"][0]["needed_bits_per_s"].get<double>(),
            j["cross_site"]["modes"][1]["needed_bits_per_s"].get<double>());
  auto figure = slurp(svg);
  EXPECT_EQ(figure.rfind("<svg", 0), 0u);
  EXPECT_TRUE(has(figure, "</svg>"));
}

TEST(PlanCli, SearchRanksLayouts) {
  auto r = braid_plan("--model llama3-8b --gpus 16 --batch-tokens 1Mi --search --top 3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "layouts considered"));
  EXPECT_TRUE(has(r.out, "\n  1  "));
  EXPECT_TRUE(has(r.out, "\n  3  "));
  EXPECT_FALSE(has(r.out, "\n  4  "));
}

TEST(PlanCli, BadInputGetsAClearError) {
  struct Case {
    std::string args;
    std::vector<std::string> expect;  // in stderr
  } cases[] = {
      {"--model llama9 --gpus 8", {"unknown model preset 'llama9'", "hint:", "llama3-8b"}},
      {"--model llama3-8b --hardware h900 --gpus 8", {"unknown hardware preset 'h900'", "h100"}},
      {"--model llama3-8b --cluster nowhere --gpus 8", {"unknown cluster preset 'nowhere'"}},
      {"--model llama3-8b --gpus 12 --tp 3", {"tp 3 does not divide the 32 attention heads", "1, 2, 4, 8"}},
      {"--model llama3-8b --gpus 8 --batch-tokens 16M", {"not a whole number of 8192-token sequences", "16Mi"}},
      {"--model llama3-8b --gpus 8 --global-batch 12", {"global batch 12 does not split", "8 or 16"}},
      {"--model llama3-8b --gpus 8 --search", {"--search needs a fixed global batch"}},
      {"--model llama3-8b --gpus 8 --recompute sometimes", {"unknown recompute mode", "selective"}},
      {"--model llama3-8b --gpus 8 --sites 2 --wan-bandwidth 10", {"'10' is not a rate", "Gbit/s"}},
      {"--model llama3-8b --gpus 8 --diloco 100", {"DiLoCo runs one replica per site"}},
      {"--model llama3-8b", {"how many GPUs?"}},
  };
  for (auto& c : cases) {
    auto r = braid_plan(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    for (auto& e : c.expect) EXPECT_TRUE(has(r.err, e)) << c.args << "\nexpected: " << e << "\nstderr: " << r.err;
  }
}

TEST(PlanCli, UnknownKeyInAClusterFileIsNamed) {
  std::string path = temp_path("cluster.toml");
  std::ofstream(path) << "[cluster]\ngpus = 16\nhardware = \"h100\"\n[scale_up]\nsize = 8\nbandwith = \"1 TB/s\"\n";
  auto r = braid_plan("--model llama3-8b --cluster " + path + " --tp 8");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "unknown key 'scale_up.bandwith'")) << r.err;
  EXPECT_TRUE(has(r.err, "did you mean 'scale_up.bandwidth'")) << r.err;
}

// This binary has no training engine, so nothing registers a calibrator.
TEST(PlanCli, CalibrateWithoutTheEngineSaysSo) {
  auto r = braid_plan("--calibrate --out " + temp_path("host.toml"));
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "built without it")) << r.err;
  EXPECT_TRUE(has(r.err, "BRAID_WITH_TORCH=ON")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(temp_path("host.toml")));
}
