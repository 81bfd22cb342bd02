// braid report RUN_DIR: one self-contained HTML page (inline SVG, no network)
// with the loss curves, throughput and the compute / hidden / exposed
// communication split of a training run; for the output directory of
// `braid bench diloco`, the DiLoCo page (loss against tokens and against
// bytes across sites for every configuration). With --hang: which rank did not
// enter which collective, from the flight-recorder dumps (docs/health.md).
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "cli/command.hpp"
#include "cli/diloco_page.hpp"
#include "cli/run_report.hpp"
#include "core/error.hpp"
#include "health/hang_report.hpp"

namespace braid::cli {
namespace {

struct ReportArgs {
  std::string run_dir;
  std::string output;
  bool hang = false;
  int world = 0;
};

int run_hang_report(const ReportArgs& a) {
  std::string dir = a.run_dir;
  if (std::filesystem::is_directory(std::filesystem::path(dir) / "flight")) dir = (std::filesystem::path(dir) / "flight").string();
  auto report = health::analyze_flight_dumps(health::read_flight_dumps(dir), a.world);
  std::printf("%s", report.text().c_str());
  return 0;
}

// A directory written by `braid bench diloco`: its page, from results.json.
int run_diloco_report(const ReportArgs& a, const std::string& results) {
  std::string out = a.output.empty() ? a.run_dir + "/diloco.html" : a.output;
  // The figure goes beside the page: diloco.svg, or OUT with .svg for -o OUT.
  const std::string svg = std::filesystem::path(out).replace_extension(".svg").string();
  write_diloco_pages(read_diloco_results(results), out, svg);
  std::printf("%s\n%s\n", out.c_str(), svg.c_str());
  return 0;
}

int run_report(const ReportArgs& a) {
  if (a.hang) return run_hang_report(a);
  const std::string results = (std::filesystem::path(a.run_dir) / "results.json").string();
  if (std::filesystem::exists(results) && is_diloco_results(results)) return run_diloco_report(a, results);
  RunReport report = RunReport::load(a.run_dir);
  std::string out = a.output.empty() ? a.run_dir + "/report.html" : a.output;
  std::string html = report.to_html();
  {
    std::ofstream f(out, std::ios::binary | std::ios::trunc);
    f << html;
    if (!f) throw IoError(fmt::format("cannot write '{}'", out), "choose another path with -o");
  }
  std::printf("%s\n", out.c_str());
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto args = std::make_shared<ReportArgs>();
  auto* cmd = app.add_subcommand("report", "Render a training run (or a bench diloco) directory as one HTML page");
  cmd->add_option("run_dir", args->run_dir,
                  "Run directory written by `braid train`, or the --out directory of `braid bench diloco`")
      ->required();
  cmd->add_option("-o,--output", args->output,
                  "Output file (default RUN_DIR/report.html; RUN_DIR/diloco.html for a bench diloco directory)");
  cmd->add_flag("--hang", args->hang,
                "Print which rank did not enter which collective, from the flight-recorder dumps in RUN_DIR/flight");
  cmd->add_option("--world", args->world, "With --hang: ranks expected to have dumped (default: the largest group seen)");
  return [args] { return run_report(*args); };
}

}  // namespace

BRAID_COMMAND("report", 12, setup);

}  // namespace braid::cli
