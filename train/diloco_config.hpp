#pragma once
// [diloco]: training across sites joined by slow links (train/diloco.hpp,
// docs/diloco.md). No LibTorch here: TrainConfig includes it.
#include <cstdint>
#include <string>

namespace braid {
class Config;
}

namespace braid::train {

struct DilocoConfig {
  bool enabled = false;
  int64_t inner_steps = 50;        // H: local AdamW steps between two syncs of a fragment
  double outer_lr = 0.7;           // outer SGD learning rate (OpenDiLoCo's default)
  double outer_momentum = 0.9;
  bool nesterov = true;
  std::string codec = "f32";       // pseudo-gradient encoding on the slow link: f32 | bf16 | int8
  bool error_feedback = false;     // keep what the codec dropped and add it next round
  int64_t fragments = 1;           // F: parameter fragments synced at staggered steps (streaming)
  int64_t delay = 0;               // tau: steps a fragment's all-reduce may run behind compute
  int64_t replicas = 0;            // 0 = world / workers_per_replica
  int64_t workers_per_replica = 0; // 0 = world / replicas (1 when neither is set)

  // Reads every diloco.* key (checks ranges and the codec name).
  static DilocoConfig read(Config& doc);
  std::string to_toml() const;
  // Replicas and workers per replica for a job of `world` ranks; ConfigError
  // when they do not divide it.
  void resolve(int world, int& replicas_out, int& workers_out) const;
};

}  // namespace braid::train
