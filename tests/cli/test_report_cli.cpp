// `braid report DIR` on the output directory of `braid bench diloco`: the
// DiLoCo page (loss against tokens and against bytes across sites, one line
// per configuration, and the table) from DIR/results.json; a results.json
// that is not one is a clear error naming the file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace {
namespace fs = std::filesystem;

const std::string kBraid = std::string(BRAID_BINARY_DIR) + "/braid";

struct Run {
  int code = -1;
  std::string out;
};

Run run(const std::string& cmd) {
  Run r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

class ReportCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("braid-report-cli-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

nlohmann::json row(const std::string& name, double loss, double bytes, bool bytes_from_start) {
  nlohmann::json e = {{"name", name},       {"mode", "diloco"},          {"final_val_loss", loss},
                      {"bytes_wan", bytes}, {"wall_s", 12.5},            {"compute_utilization", 0.9},
                      {"curve", nlohmann::json::array()}};
  for (int s = 0; s <= 4; ++s)
    e["curve"].push_back({{"step", s * 10},
                          {"tokens", s * 1000.0},
                          {"bytes_wan", bytes_from_start ? bytes * (s + 1) / 5 : bytes * s / 4},
                          {"val_loss", 5.0 - 0.5 * s}});
  return e;
}

TEST_F(ReportCli, BenchDilocoDirectoryBecomesTheDilocoPage) {
  nlohmann::json j;
  j["setup"] = "4 workers <test>";
  j["results"] = {row("dp", 3.0, 4e9, true), row("diloco-h100-int8", 3.1, 1e7, false)};
  std::ofstream(dir_ / "results.json") << j.dump(2);
  auto r = run(kBraid + " report " + dir_.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("diloco.html"), std::string::npos) << r.out;
  const std::string html = slurp(dir_ / "diloco.html");
  EXPECT_EQ(count(html, "<svg"), 2u) << "loss vs tokens and loss vs bytes";
  EXPECT_EQ(count(html, "<polyline"), 4u) << "one line per configuration in each plot";
  EXPECT_NE(html.find("diloco-h100-int8"), std::string::npos);
  EXPECT_NE(html.find("4 workers &lt;test&gt;"), std::string::npos) << "the setup, escaped";
  EXPECT_NE(html.find("400x"), std::string::npos) << "bytes fewer than the first configuration (4e9 / 1e7)";
  // The bytes plot leaves out points with no bytes yet (log scale): the
  // DiLoCo line has 4 of its 5 points there.
  auto second_svg = html.find("<svg", html.find("<svg") + 1);
  auto last_line = html.rfind("<polyline");
  ASSERT_GT(last_line, second_svg);
  const std::string points = html.substr(last_line, html.find("'>", html.find("points=", last_line)) - last_line);
  EXPECT_EQ(count(points, ","), 4u) << points;

  // The same two plots as one standalone figure, with a legend naming every configuration.
  const std::string svg = slurp(dir_ / "diloco.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u) << "a standalone SVG file";
  EXPECT_EQ(count(svg, "<svg"), 3u) << "the figure and its two plots";
  EXPECT_EQ(count(svg, "<polyline"), 4u);
  EXPECT_NE(svg.find(">diloco-h100-int8</text>"), std::string::npos) << "legend";
  EXPECT_NE(svg.find("4 workers &lt;test&gt;"), std::string::npos) << "the setup, escaped";

  // -o writes elsewhere (the figure beside it).
  r = run(kBraid + " report " + dir_.string() + " -o " + (dir_ / "other.html").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir_ / "other.html"));
  EXPECT_TRUE(fs::exists(dir_ / "other.svg"));
}

TEST_F(ReportCli, ABrokenBenchDilocoResultIsAClearError) {
  nlohmann::json j;
  j["results"] = nlohmann::json::array({{{"name", "dp"}, {"curve", nlohmann::json::array()}}});  // no loss, bytes, ...
  std::ofstream(dir_ / "results.json") << j.dump();
  auto r = run(kBraid + " report " + dir_.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("results.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bench diloco"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "diloco.html"));
}

}  // namespace
