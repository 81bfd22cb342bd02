#pragma once
// `braid bench ckpt --synthetic`: the checkpoint benchmark on synthetic flat
// buffers (ckpt/save_benchmark.hpp), run and printed by cli/cmd_ckpt.cpp.
// With the training engine, cli/torch/cmd_bench_ckpt.cpp registers `braid
// bench ckpt` (default: the real training loop) and calls this for
// --synthetic; without it cmd_ckpt.cpp registers the synthetic one itself.
#include <string>

namespace braid::cli {

struct SyntheticCkptBenchArgs {
  std::string dir;
  std::string size = "256M";
  int writers = 1;
  int repeats = 3;
  bool json = false;
};

int run_synthetic_ckpt_bench(const SyntheticCkptBenchArgs& args);

}  // namespace braid::cli
