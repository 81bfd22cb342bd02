// The `braid` command: dispatches to the registered subcommands and turns
// braid::Error into a clear message and a non-zero exit code.
#include <algorithm>
#include <cstdio>
#include <map>
#include <vector>

#include "cli/command.hpp"
#include "core/error.hpp"

namespace braid::cli {
namespace {

struct Entry {
  std::string name;
  int order;
  CommandSetup setup;
};

std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}

}  // namespace

bool register_command(const std::string& name, int order, CommandSetup setup) {
  registry().push_back({name, order, std::move(setup)});
  return true;
}

}  // namespace braid::cli

int main(int argc, char** argv) {
  using namespace braid;
  CLI::App app{"braid: training large models across many machines and clusters"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("braid ") + BRAID_VERSION);

  auto& reg = cli::registry();
  std::sort(reg.begin(), reg.end(), [](auto& a, auto& b) {
    return a.order != b.order ? a.order < b.order : a.name < b.name;
  });
  std::vector<std::pair<CLI::App*, std::function<int()>>> runners;
  for (auto& e : reg) {
    size_t before = app.get_subcommands({}).size();
    auto run = e.setup(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) runners.emplace_back(subs.back(), std::move(run));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const Error& e) {
    std::fprintf(stderr, "braid: error: %s\n", e.describe().c_str());
    return 2;
  }

  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const Error& e) {
    std::fprintf(stderr, "braid: error: %s\n", e.describe().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "braid: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
