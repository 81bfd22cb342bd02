#pragma once
// The dp x tp x pp device mesh: which rank holds which slice of the model
// and which ranks it talks to along each parallel dimension.
//
// Rank layout (as Megatron and torchtitan): tp innermost, then pp, then dp,
//
//   world rank = tp_rank + tp * (pp_rank + pp * dp_rank)
//
// so the ranks of a tensor-parallel group (two all-reduces per layer forward
// and backward, the chattiest dimension) are neighbours, i.e. on one host
// under `braid launch`, the pipeline neighbours come next (point-to-point
// activations), and the data-parallel replicas (one gradient all-reduce per
// step) are furthest apart. Each dimension gets its own Communicator made with
// comm::Communicator::subgroup(), so collectives of one dimension never
// queue behind another's. No LibTorch here: the CLI and ZeRO can use it.
#include <memory>

#include "comm/communicator.hpp"
#include "train/train_config.hpp"

namespace braid::train {

struct MeshShape {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  int world() const { return dp * tp * pp; }
  bool operator==(const MeshShape&) const = default;
};

struct MeshCoords {
  int dp = 0;
  int tp = 0;
  int pp = 0;
  bool operator==(const MeshCoords&) const = default;
};

MeshCoords mesh_coords_of(const MeshShape& shape, int world_rank);
int mesh_rank_of(const MeshShape& shape, const MeshCoords& coords);

// Config-time checks that need no world size: heads, MLP hidden width and
// layers must divide by tp / pp, unimplemented options are refused, and the
// pipeline micro-batch count must agree with train.grad_accum. Throws
// ConfigError naming the constraint. Called by TrainConfig::from().
void validate_mesh_config(const ModelConfig& model, const LoopConfig& loop, const ParallelConfig& parallel);

// The shape for `world` ranks: dp = 0 is world / (tp * pp); anything that does
// not multiply out to `world` is a ConfigError naming the numbers.
MeshShape resolve_mesh_shape(const ParallelConfig& parallel, int world);

// Pipeline micro-batches per optimizer step (parallel.microbatches, or
// train.grad_accum when that is 0).
int64_t pipeline_microbatches(const LoopConfig& loop, const ParallelConfig& parallel);
// Model chunks per pipeline stage: parallel.chunks, or 2 for the interleaved
// schedule and 1 otherwise when it is 0.
int64_t pipeline_chunks(const ParallelConfig& parallel);

class ParallelMesh {
 public:
  // world may be null (one process: a 1x1x1 mesh). Every rank of `world` must
  // construct its mesh with the same shape (collective: makes the subgroups).
  ParallelMesh(comm::Communicator* world, const MeshShape& shape);
  ParallelMesh(const ParallelMesh&) = delete;
  ParallelMesh& operator=(const ParallelMesh&) = delete;

  const MeshShape& shape() const { return shape_; }
  const MeshCoords& coords() const { return coords_; }
  int dp_rank() const { return coords_.dp; }
  int tp_rank() const { return coords_.tp; }
  int pp_rank() const { return coords_.pp; }
  int dp_size() const { return shape_.dp; }
  int tp_size() const { return shape_.tp; }
  int pp_size() const { return shape_.pp; }
  bool first_stage() const { return coords_.pp == 0; }
  bool last_stage() const { return coords_.pp == shape_.pp - 1; }

  // Communicators along each dimension; null when that dimension has size 1
  // (DataParallel and friends treat null as "nothing to communicate").
  comm::Communicator* world() const { return world_; }
  comm::Communicator* dp() const { return dp_.get(); }
  comm::Communicator* tp() const { return tp_.get(); }
  comm::Communicator* pp() const { return pp_.get(); }

 private:
  comm::Communicator* world_;
  MeshShape shape_;
  MeshCoords coords_;
  std::unique_ptr<comm::Communicator> dp_, tp_, pp_;
};

}  // namespace braid::train
