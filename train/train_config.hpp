#pragma once
// Everything a training run is configured by, read from a validated TOML file
// (core/config.hpp). No LibTorch here, so the CLI and tools can read a run's
// configuration without the heavy headers.
//
//   braid::Config doc = braid::Config::from_file("examples/default.toml");
//   doc.apply_override("optim.lr=3e-4");
//   train::TrainConfig cfg = train::TrainConfig::from(doc);  // throws ConfigError
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "train/diloco_config.hpp"

#include "train/health_config.hpp"

namespace braid {
class Config;
}

namespace braid::train {

struct ModelConfig {
  int64_t vocab_size = 256;  // 256 = raw bytes
  int64_t context = 128;     // tokens per sequence (T)
  int64_t layers = 4;        // transformer blocks (L)
  int64_t width = 128;       // model dimension (C)
  int64_t heads = 4;         // attention heads (H); width % heads == 0
  int64_t mlp_ratio = 4;     // hidden width of the MLP = mlp_ratio * width
  double init_std = 0.02;    // std of the normal initialisation of weights
  int64_t head_dim() const { return width / heads; }
};

struct DataConfig {
  // Files or directories (a directory stands for its regular files, sorted by
  // name; symbolic links inside it are skipped so aliases are not read twice).
  std::vector<std::string> paths;
  std::vector<std::string> exclude = {"*.dat"};  // file-name globs skipped in directories
  std::string format = "bytes";                  // "bytes" (vocab 256) or "uint16" tokens
  double val_fraction = 0.05;                    // tail of the data held out for validation
};

struct OptimConfig {
  double lr = 1e-3;
  double min_lr = 1e-4;        // end of the cosine decay
  int64_t warmup_steps = 50;   // linear warm-up from 0
  double weight_decay = 0.1;   // decoupled (AdamW), on matrices and embeddings only
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;      // global-norm clipping; 0 = off
};

struct LoopConfig {
  int64_t steps = 500;          // optimizer steps
  int64_t batch_size = 16;      // sequences per rank per micro-step
  int64_t grad_accum = 1;       // micro-steps per optimizer step
  uint64_t seed = 1337;         // model initialisation, data order and sampling
  int64_t eval_every = 100;     // steps between validation losses (0 = only at the end)
  int64_t eval_batches = 8;     // batches (of batch_size, per rank) per validation
  int64_t log_every = 10;       // progress line interval when stderr is not a terminal
  int64_t threads = 0;          // LibTorch threads per rank; 0 = available cores / local ranks
  int64_t sample_tokens = 300;  // text generated at the end (0 = none)
  std::string sample_prompt = "\n";
  double sample_temperature = 0.8;
  int64_t sample_top_k = 40;
};

struct ParallelConfig {
  uint64_t bucket_bytes = 25ull << 20;  // gradient bucket size for all-reduce
  bool overlap = true;                  // launch bucket all-reduces during backward
  std::string algo = "auto";            // collective algorithm (comm::parse_algo)
  double timeout_s = 300;               // deadline of one collective
  // The dp x tp x pp mesh (train/parallel_mesh.hpp, docs/parallelism.md).
  // world = dp * tp * pp; ranks are laid out tp innermost, then pp, then dp.
  int64_t dp = 0;                       // data-parallel replicas; 0 = world / (tp * pp)
  int64_t tp = 1;                       // tensor-parallel ranks (Megatron: heads and MLP hidden split)
  int64_t pp = 1;                       // pipeline stages (model.layers split evenly)
  bool sequence_parallel = false;       // split activations on the sequence outside the tp linears (tp must divide context)
  std::string schedule = "1f1b";        // pipeline schedule: "gpipe" | "1f1b" | "interleaved"
  int64_t microbatches = 0;             // pipeline micro-batches per step; 0 = train.grad_accum
  int64_t chunks = 0;                   // model chunks per stage (interleaved); 0 = 2 when interleaved, else 1
  // Memory modes (train/zero.hpp, train/recompute.hpp, docs/parallelism.md).
  int64_t zero = 0;                     // ZeRO stage over the dp ranks: 0 (plain DP), 1, 2, 3 (FSDP)
  std::string recompute = "none";       // activation recomputation: "none" | "selective" | "full"
};

// [fault]: fault-tolerant training under a coordinator (train/fault_tolerance.hpp,
// docs/fault-tolerance.md): per-step quorum and commit vote, live healing,
// elastic replica count. The timeouts override the launcher's (environment).
struct FaultConfig {
  bool enabled = false;
  // "fixed": every step trains on batch_size x grad_accum x `replicas`
  // sequences whatever the number of live replicas (fewer replicas take more
  // accumulation); "per_replica": each replica trains batch_size x grad_accum,
  // so the global batch shrinks and grows with the replicas.
  std::string global_batch = "fixed";
  int64_t replicas = 0;                    // replicas the fixed global batch is sized for; 0 = BRAID_WORLD_SIZE
  uint64_t heal_chunk_bytes = 4ull << 20;  // checksummed piece of the state sent to a joiner
  double heal_timeout_s = 60;              // deadline of one heal (all of a joiner's state)
  std::optional<double> collective_timeout_s, heartbeat_interval_s, heartbeat_death_s, quorum_wait_s,
      job_timeout_s;
};

struct RunConfig {
  std::string dir;            // run directory; empty = runs/<name>-<UTC time>
  std::string name = "run";
  bool progress = true;       // live progress line on rank 0
};

// [checkpoint]: periodic asynchronous saves, a save on SIGTERM, --resume
// (train/checkpointing.hpp; the format is docs/checkpoint-format.md).
struct CheckpointConfig {
  std::string dir;                 // empty: no checkpoints
  int64_t every_steps = 0;         // save after every N-th step (0 = off)
  double every_minutes = 0;        // save when this much time passed since the last save (0 = off)
  int64_t keep_last = 3;           // committed checkpoints kept (0 = all)
  std::string if_busy = "wait";    // a save due while the previous one is still written: "wait" | "skip"
  uint64_t block_bytes = 4ull << 20;  // checksum block
  double commit_timeout_s = 600;   // how long ranks wait for each other while committing
  bool at_end = true;              // save the last step of the run
  bool enabled() const { return !dir.empty(); }
};

struct TrainConfig {
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  LoopConfig train;
  ParallelConfig parallel;
  FaultConfig fault;
  RunConfig run;
  CheckpointConfig checkpoint;
  HealthConfig health;
  DilocoConfig diloco;  // [diloco]: DiLoCo across slow links (train/diloco.hpp, docs/diloco.md)

  // Reads every key (with defaults), checks ranges and cross-field rules, and
  // rejects unknown keys (doc.finish()). Throws ConfigError naming the key.
  static TrainConfig from(Config& doc);
  // The fully resolved configuration (defaults included) as TOML, so that a
  // run directory says exactly what ran.
  std::string to_toml() const;

 private:
  static TrainConfig from_unchecked(Config& doc);
};

}  // namespace braid::train
