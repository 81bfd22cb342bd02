#include "train/parallel_mesh.hpp"

#include <fmt/format.h>

#include <vector>

#include "core/error.hpp"

namespace braid::train {

MeshCoords mesh_coords_of(const MeshShape& s, int rank) {
  if (rank < 0 || rank >= s.world())
    throw ConfigError(fmt::format("rank {} is outside the {}x{}x{} (dp x tp x pp) mesh", rank, s.dp, s.tp, s.pp),
                      "use a rank between 0 and dp*tp*pp - 1");
  MeshCoords c;
  c.tp = rank % s.tp;
  c.pp = (rank / s.tp) % s.pp;
  c.dp = rank / (s.tp * s.pp);
  return c;
}

int mesh_rank_of(const MeshShape& s, const MeshCoords& c) { return c.tp + s.tp * (c.pp + s.pp * c.dp); }

void validate_mesh_config(const ModelConfig& m, const LoopConfig& loop, const ParallelConfig& p) {
  const int64_t hidden = m.mlp_ratio * m.width;
  if (m.heads % p.tp != 0)
    throw ConfigError(fmt::format("'parallel.tp' = {} does not divide 'model.heads' = {}", p.tp, m.heads),
                      "tensor parallelism splits attention by heads: choose tp among the divisors of heads");
  if (hidden % p.tp != 0)
    throw ConfigError(fmt::format("'parallel.tp' = {} does not divide the MLP hidden width {} (mlp_ratio {} x width {})",
                                  p.tp, hidden, m.mlp_ratio, m.width),
                      "tensor parallelism splits the MLP on its hidden width: choose tp that divides it");
  if (m.layers % p.pp != 0)
    throw ConfigError(fmt::format("'parallel.pp' = {} does not divide 'model.layers' = {}", p.pp, m.layers),
                      "each pipeline stage holds layers / pp blocks: choose pp among the divisors of layers");
  if (p.sequence_parallel && m.context % p.tp != 0)
    throw ConfigError(fmt::format("'parallel.sequence_parallel' splits the sequence over tp = {} ranks, which does not "
                                  "divide 'model.context' = {}", p.tp, m.context),
                      "choose a context that tp divides, or set parallel.sequence_parallel = false");
  const int64_t chunks = pipeline_chunks(p);
  if (p.schedule == "interleaved") {
    if (p.pp < 2 || chunks < 2)
      throw ConfigError(fmt::format("'parallel.schedule' = \"interleaved\" with pp = {} and chunks = {}", p.pp, chunks),
                        "the interleaved schedule needs pp >= 2 and parallel.chunks >= 2 (or 0 for 2)");
    if (m.layers % (p.pp * chunks) != 0)
      throw ConfigError(fmt::format("'parallel.pp' = {} x 'parallel.chunks' = {} does not divide 'model.layers' = {}",
                                    p.pp, chunks, m.layers),
                        "the interleaved schedule gives each stage chunks runs of layers / (pp * chunks) blocks");
    if (pipeline_microbatches(loop, p) % p.pp != 0)
      throw ConfigError(fmt::format("the interleaved schedule runs {} micro-batches on pp = {} stages",
                                    pipeline_microbatches(loop, p), p.pp),
                        "set parallel.microbatches (or train.grad_accum) to a multiple of pp");
  } else if (chunks != 1) {
    throw ConfigError(fmt::format("'parallel.chunks' = {} needs 'parallel.schedule' = \"interleaved\"", p.chunks),
                      "set the interleaved schedule, or leave parallel.chunks at 0");
  }
  if (p.microbatches > 0 && loop.grad_accum != 1 && loop.grad_accum != p.microbatches)
    throw ConfigError(fmt::format("'parallel.microbatches' = {} conflicts with 'train.grad_accum' = {}",
                                  p.microbatches, loop.grad_accum),
                      "a pipeline's micro-batches are its accumulation steps: set only one of the two");
}

int64_t pipeline_microbatches(const LoopConfig& loop, const ParallelConfig& p) {
  return p.microbatches > 0 ? p.microbatches : loop.grad_accum;
}

int64_t pipeline_chunks(const ParallelConfig& p) {
  if (p.chunks > 0) return p.chunks;
  return p.schedule == "interleaved" ? 2 : 1;
}

MeshShape resolve_mesh_shape(const ParallelConfig& p, int world) {
  if (world < 1) throw ConfigError(fmt::format("world size {} is not positive", world), "start at least one rank");
  const int64_t model_ranks = p.tp * p.pp;
  MeshShape s;
  s.tp = static_cast<int>(p.tp);
  s.pp = static_cast<int>(p.pp);
  if (p.dp == 0) {
    if (world % model_ranks != 0)
      throw ConfigError(fmt::format("world size {} is not a multiple of tp x pp = {} x {} = {}", world, p.tp,
                                    p.pp, model_ranks),
                        "start a multiple of tp*pp ranks, or change parallel.tp / parallel.pp");
    s.dp = static_cast<int>(world / model_ranks);
  } else {
    if (p.dp * model_ranks != world)
      throw ConfigError(fmt::format("dp x tp x pp = {} x {} x {} = {} but the world has {} ranks", p.dp, p.tp,
                                    p.pp, p.dp * model_ranks, world),
                        "start dp*tp*pp ranks, or set parallel.dp = 0 to derive it from the world size");
    s.dp = static_cast<int>(p.dp);
  }
  return s;
}

ParallelMesh::ParallelMesh(comm::Communicator* world, const MeshShape& shape) : world_(world), shape_(shape) {
  const int world_size = world ? world->size() : 1;
  if (shape.world() != world_size)
    throw ConfigError(fmt::format("the {}x{}x{} (dp x tp x pp) mesh needs {} ranks, the world has {}", shape.dp,
                                  shape.tp, shape.pp, shape.world(), world_size),
                      "start dp*tp*pp ranks");
  coords_ = mesh_coords_of(shape, world ? world->rank() : 0);
  // Every rank makes the subgroups in the same order (tp, pp, dp), each over
  // the world ranks that differ from it in that coordinate only.
  auto group_along = [&](int MeshCoords::*axis, int size) -> std::unique_ptr<comm::Communicator> {
    if (size == 1) return nullptr;
    std::vector<int> ranks;
    for (int i = 0; i < size; ++i) {
      MeshCoords c = coords_;
      c.*axis = i;
      ranks.push_back(mesh_rank_of(shape, c));
    }
    return world->subgroup(ranks);
  };
  tp_ = group_along(&MeshCoords::tp, shape.tp);
  pp_ = group_along(&MeshCoords::pp, shape.pp);
  dp_ = group_along(&MeshCoords::dp, shape.dp);
}

}  // namespace braid::train
