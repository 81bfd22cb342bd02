#pragma once
// Resuming: load the newest valid checkpoint of a directory into this rank's
// memory, at any world size. Each rank names the byte ranges it needs (its
// replica or shard of each buffer); they are read from whichever shard files
// hold them, verifying every block touched. A checkpoint that is truncated,
// corrupted or lacks its manifest is skipped with a warning naming the file
// and the tensors affected, and the previous one is tried. With several ranks
// the ranks agree through the store on one step that every rank loaded
// completely, so no rank resumes from a different step than the others.
//
//   std::vector<ckpt::ReadTarget> reads{{"params", {0, n}, params_ptr}, {"adam_m", ...}};
//   auto loaded = ckpt::load_latest(dir, layout, reads, {store, rank, world});
//   if (loaded) { step = loaded->step; sampler.restore(...loaded->global_blobs.at("data")); }
//
// Cost: bytes requested (rounded out to checksum blocks) read once per
// candidate tried, plus one stat per shard file and 2 store round trips per
// candidate when world > 1.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/state_layout.hpp"
#include "net/store.hpp"

namespace braid::ckpt {

// Bytes `range` of `buffer` go to dst (range.size() bytes of host memory).
struct ReadTarget {
  std::string buffer;
  ByteRange range;
  void* dst = nullptr;
};

struct LoadOptions {
  std::shared_ptr<net::Store> store;  // required when world > 1
  int rank = 0;
  int world = 1;
  double timeout_s = 600;
  std::string store_prefix = "ckpt/";
};

struct SkippedCheckpoint {
  int64_t step = 0;
  std::string path;
  std::string reason;  // names the file and the tensor(s)
};

struct LoadedCheckpoint {
  int64_t step = 0;
  std::string path;
  int saved_world = 1;  // how many ranks wrote it
  std::string model_config;
  std::map<std::string, std::string> global_blobs;
  // The blobs that rank `rank` wrote, when the checkpoint had such a rank
  // (empty after growing the world: new ranks must derive their own, e.g.
  // reseed their RNG from the global seed and the step).
  std::map<std::string, std::string> rank_blobs;
  // Newer checkpoints that were skipped because they were not valid.
  std::vector<SkippedCheckpoint> skipped;
};

// nullopt: the directory has no checkpoint at all (a fresh start). Throws
// CorruptData when checkpoints exist but none is valid (listing why each was
// rejected), and ConfigError when they do not match `expected` (another model).
std::optional<LoadedCheckpoint> load_latest(const std::string& dir, const StateLayout& expected,
                                            const std::vector<ReadTarget>& reads, const LoadOptions& options = {});

// Loads one given step directory (no fallback). Same errors as above.
LoadedCheckpoint load_step_dir(const std::string& step_dir, const StateLayout& expected,
                               const std::vector<ReadTarget>& reads, int rank = 0);

// Path of the checkpoint load_latest would try first whose manifest and files
// pass the cheap checks (for tools such as `braid sample --ckpt DIR`, which
// then open it with CheckpointReader). `deep` verifies every checksum too.
// nullopt when there is none; skipped ones are appended to *skipped.
std::optional<std::string> find_latest_valid(const std::string& dir, bool deep = false,
                                             std::vector<SkippedCheckpoint>* skipped = nullptr);

}  // namespace braid::ckpt
