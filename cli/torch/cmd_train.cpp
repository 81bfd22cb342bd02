// braid train CONFIG.toml [--set key=value ...]: trains the GPT of the config.
// Under `braid launch -n N` (or mpirun / srun) every process is one
// data-parallel rank; alone it is a world of one.
#include "train/pch.hpp"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/save_schedule.hpp"
#include "cli/command.hpp"
#include "comm/bootstrap.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "health/fault_injection.hpp"
#include "train/train_config.hpp"
#include "train/training_job.hpp"

namespace braid::cli {
namespace {

// Pipeline parallelism: a shared-memory pair moves bytes only while one of
// its ranks waits (net/shm_pair.hpp), so an activation that does not fit the
// ring whole waits for the sending stage's next compute. Unless
// BRAID_SHM_RING_BYTES is set, the ring is sized to hold two of the largest
// messages (a whole batch's [B, T, C] f32, an upper bound on a micro-batch's):
// the next power of two >= 4x that, between 1 and 64 MiB. Every rank reads the
// same config, so every rank picks the same ring. Measured (README, braid plan
// section): pp2 of the example model 0.67-0.78 s per step with the 1 MiB
// default, 0.46-0.50 s with 4 MiB.
void size_shm_ring_for_pipeline(const train::TrainConfig& config) {
  if (config.parallel.pp <= 1) return;
  if (const char* set = std::getenv("BRAID_SHM_RING_BYTES"); set && *set) return;
  const uint64_t message = static_cast<uint64_t>(config.train.batch_size) *
                           static_cast<uint64_t>(config.model.context) * static_cast<uint64_t>(config.model.width) * 4;
  uint64_t ring = 1ull << 20;
  while (ring < 4 * message && ring < (64ull << 20)) ring <<= 1;
  setenv("BRAID_SHM_RING_BYTES", std::to_string(ring).c_str(), 1);
}

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  bool no_progress = false;
  bool resume = false;
  std::vector<std::string> inject;  // fault specs, added to [health] inject
};

int run_train(const TrainArgs& a) {
  // The config is checked before joining the job, so a typo fails at once on
  // every rank instead of after the rendezvous.
  Config doc = Config::from_file(a.config);
  for (const auto& s : a.sets) doc.apply_override(s);
  train::TrainConfig config = train::TrainConfig::from(doc);
  if (a.no_progress) config.run.progress = false;
  for (const auto& f : a.inject) config.health.inject.push_back(health::parse_fault_spec(f).text);
  if (a.resume && !config.checkpoint.enabled())
    throw ConfigError("--resume needs a checkpoint directory",
                      "set checkpoint.dir in the config (or --set checkpoint.dir=DIR)");
  // With checkpoints, SIGTERM / SIGINT only set a flag: the ranks agree on a
  // step, save it and exit 0 (a second signal kills at once).
  if (config.checkpoint.enabled()) ckpt::install_stop_signal_handlers();

  // Fault-tolerant training builds a communicator per epoch from the
  // coordinator's quorums (train/fault_tolerance.hpp), not one fixed world.
  comm::World world;
  if (config.fault.enabled) {
    world.info = comm::detect_world();
  } else {
    comm::InitOptions init;
    init.comm.timeout_s = config.parallel.timeout_s;
    size_shm_ring_for_pipeline(config);
    world = comm::init_world(init);
  }

  train::JobOptions options;
  options.local_ranks = world.info.local_size;
  options.store = world.store;
  options.resume = a.resume;
  train::run_training_job(config, world.comm.get(), options);
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a GPT language model (data-parallel under `braid launch`)");
  cmd->add_option("config", args->config, "TOML job file (see examples/default.toml)")->required();
  cmd->add_option("--set", args->sets, "Override a config key, e.g. --set optim.lr=3e-4 (repeatable)")
      ->take_all();
  cmd->add_flag("--no-progress", args->no_progress, "No live progress line");
  cmd->add_option("--inject", args->inject,
                  "Inject a fault for a test or demo (repeatable; docs/health.md), e.g. "
                  "bitflip:rank=1,step=40,target=params, slow:rank=1,factor=3, hang:rank=1,step=30, "
                  "crash:rank=0,step=50, nan:rank=0,step=20");
  cmd->add_flag("--resume", args->resume,
                "Continue from the newest valid checkpoint in checkpoint.dir (any world size); "
                "start from scratch if it holds none");
  cmd->footer(
      "Examples:\n"
      "  braid train examples/default.toml --set train.steps=100\n"
      "  braid launch --nproc 2 -- braid train examples/default.toml\n"
      "  braid train job.toml --set checkpoint.dir=ckpt --set checkpoint.every_steps=100 --resume\n"
      "Writes runs/<name>-<time>/ (config.toml, metrics.jsonl, summary.json, sample.txt);\n"
      "`braid report RUN_DIR` turns it into an HTML page.");
  return [args] { return run_train(*args); };
}

}  // namespace

BRAID_COMMAND("train", 10, setup);

}  // namespace braid::cli
