// braid bench KIND: benchmarks are programs, not timed tests. Each kind
// (comm, train, ckpt, ...) registers itself with BRAID_BENCH in its own file.
#include <algorithm>
#include <vector>

#include "cli/command.hpp"

namespace braid::cli {
namespace {

struct BenchEntry {
  std::string name;
  int order;
  CommandSetup setup;
};

std::vector<BenchEntry>& bench_registry() {
  static std::vector<BenchEntry> r;
  return r;
}

std::function<int()> setup(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Measure speed: comm, train, ... (--json for machines)");
  bench->require_subcommand(1);
  auto& reg = bench_registry();
  std::sort(reg.begin(), reg.end(), [](auto& a, auto& b) {
    return a.order != b.order ? a.order < b.order : a.name < b.name;
  });
  auto runners = std::make_shared<std::vector<std::pair<CLI::App*, std::function<int()>>>>();
  for (auto& e : reg) {
    size_t before = bench->get_subcommands({}).size();
    auto run = e.setup(*bench);
    auto subs = bench->get_subcommands({});
    if (subs.size() > before) runners->emplace_back(subs.back(), std::move(run));
  }
  return [runners] {
    for (auto& [sub, run] : *runners)
      if (sub->parsed()) return run();
    return 0;
  };
}

}  // namespace

bool register_bench(const std::string& name, int order, CommandSetup setup) {
  bench_registry().push_back({name, order, std::move(setup)});
  return true;
}

BRAID_COMMAND("bench", 60, setup);

}  // namespace braid::cli
