#pragma once
// Subcommands register themselves: each cli/cmd_*.cpp file defines a function
// that adds its CLI11 subcommand and returns how to run it, and registers it
// with BRAID_COMMAND. main() needs no edit when a command is added.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace braid::cli {

// Adds the subcommand to `app` and returns the function that runs it after
// parsing (its return value is the process exit code).
using CommandSetup = std::function<std::function<int()>(CLI::App& app)>;

// `order` sorts commands in --help (smaller first).
bool register_command(const std::string& name, int order, CommandSetup setup);

// `braid bench KIND`: each benchmark adds its subcommand to the `bench` app.
bool register_bench(const std::string& name, int order, CommandSetup setup);

}  // namespace braid::cli

#define BRAID_COMMAND_CAT2(a, b) a##b
#define BRAID_COMMAND_CAT(a, b) BRAID_COMMAND_CAT2(a, b)
#define BRAID_BENCH(name, order, setup)                                             \
  static const bool BRAID_COMMAND_CAT(braid_bench_registered_, __LINE__) =          \
      ::braid::cli::register_bench(name, order, setup)
#define BRAID_COMMAND(name, order, setup)                                           \
  static const bool BRAID_COMMAND_CAT(braid_command_registered_, __LINE__) =        \
      ::braid::cli::register_command(name, order, setup)
