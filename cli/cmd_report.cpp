// braid report RUN_DIR: one self-contained HTML page (inline SVG, no network)
// with the loss curves, throughput and the compute / hidden / exposed
// communication split of a training run.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <memory>

#include "cli/command.hpp"
#include "cli/run_report.hpp"
#include "core/error.hpp"

namespace braid::cli {
namespace {

struct ReportArgs {
  std::string run_dir;
  std::string output;
};

int run_report(const ReportArgs& a) {
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
  auto* cmd = app.add_subcommand("report", "Render a training run directory as one HTML page");
  cmd->add_option("run_dir", args->run_dir, "Run directory written by `braid train`")->required();
  cmd->add_option("-o,--output", args->output, "Output file (default RUN_DIR/report.html)");
  return [args] { return run_report(*args); };
}

}  // namespace

BRAID_COMMAND("report", 12, setup);

}  // namespace braid::cli
