// The dp x tp x pp mesh: rank layout (tp innermost, then pp, then dp), the
// config keys and what must divide what, and the per-dimension communicators
// (ranks as threads over the in-process transport).
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "comm/communicator.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/parallel_mesh.hpp"

namespace braid::train {
namespace {

TrainConfig parse(const std::string& extra) {
  auto doc = Config::from_string("[data]\npaths = [\"x\"]\n" + extra, "job.toml");
  return TrainConfig::from(doc);
}

std::string config_error(const std::string& extra) {
  try {
    parse(extra);
  } catch (const ConfigError& e) {
    EXPECT_FALSE(e.hint().empty());
    return e.what();
  }
  return "";
}

TEST(Mesh, RankLayoutIsTpInnermostThenPpThenDp) {
  MeshShape s{.dp = 2, .tp = 3, .pp = 4};
  EXPECT_EQ(s.world(), 24);
  EXPECT_EQ(mesh_coords_of(s, 0), (MeshCoords{0, 0, 0}));
  EXPECT_EQ(mesh_coords_of(s, 1), (MeshCoords{.dp = 0, .tp = 1, .pp = 0}));
  EXPECT_EQ(mesh_coords_of(s, 3), (MeshCoords{.dp = 0, .tp = 0, .pp = 1}));
  EXPECT_EQ(mesh_coords_of(s, 12), (MeshCoords{.dp = 1, .tp = 0, .pp = 0}));
  std::set<int> seen;
  for (int r = 0; r < s.world(); ++r) {
    auto c = mesh_coords_of(s, r);
    EXPECT_EQ(mesh_rank_of(s, c), r);
    seen.insert(c.dp * 100 + c.pp * 10 + c.tp);
  }
  EXPECT_EQ(seen.size(), 24u);
  EXPECT_THROW(mesh_coords_of(s, 24), ConfigError);
}

TEST(Mesh, ConfigKeysParseAndRoundTrip) {
  auto c = parse("[model]\nlayers = 4\nheads = 4\n[parallel]\ndp = 2\ntp = 2\npp = 2\nschedule = \"gpipe\"\n"
                 "microbatches = 3\n");
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.parallel.tp, 2);
  EXPECT_EQ(c.parallel.pp, 2);
  EXPECT_EQ(c.parallel.schedule, "gpipe");
  EXPECT_EQ(pipeline_microbatches(c.train, c.parallel), 3);
  auto again = Config::from_string(c.to_toml(), "resolved.toml");
  auto c2 = TrainConfig::from(again);
  EXPECT_EQ(c2.parallel.tp, 2);
  EXPECT_EQ(c2.parallel.schedule, "gpipe");
  EXPECT_EQ(c2.parallel.microbatches, 3);
  // Defaults: one rank per model copy, 1F1B, micro-batches = grad_accum.
  auto d = parse("[train]\ngrad_accum = 5\n");
  EXPECT_EQ(d.parallel.tp, 1);
  EXPECT_EQ(d.parallel.pp, 1);
  EXPECT_EQ(d.parallel.dp, 0);
  EXPECT_EQ(d.parallel.schedule, "1f1b");
  EXPECT_EQ(pipeline_microbatches(d.train, d.parallel), 5);
}

TEST(Mesh, WhatDoesNotDivideIsAConfigErrorNamingTheConstraint) {
  EXPECT_NE(config_error("[model]\nheads = 4\n[parallel]\ntp = 3\n").find("model.heads"), std::string::npos);
  EXPECT_NE(config_error("[model]\nlayers = 4\n[parallel]\npp = 3\n").find("model.layers"), std::string::npos);
  EXPECT_NE(config_error("[model]\nwidth = 6\nheads = 2\nmlp_ratio = 1\n[parallel]\ntp = 4\n").find("heads"),
            std::string::npos);
  EXPECT_NE(config_error("[parallel]\nschedule = \"zigzag\"\n").find("parallel.schedule"), std::string::npos);
  EXPECT_NE(config_error("[model]\nlayers = 4\n[parallel]\npp = 2\nschedule = \"interleaved\"\nmicrobatches = 3\n")
                .find("3 micro-batches on pp = 2"),
            std::string::npos);
  EXPECT_NE(config_error("[model]\nlayers = 6\n[parallel]\npp = 2\nschedule = \"interleaved\"\nmicrobatches = 2\n")
                .find("model.layers"),
            std::string::npos);
  EXPECT_NE(config_error("[parallel]\nschedule = \"interleaved\"\n").find("with pp = 1"), std::string::npos);
  EXPECT_NE(config_error("[model]\nlayers = 4\n[parallel]\npp = 2\nchunks = 2\n").find("interleaved"),
            std::string::npos);
  EXPECT_NE(config_error("[model]\ncontext = 15\nheads = 4\n[parallel]\ntp = 2\nsequence_parallel = true\n")
                .find("model.context"),
            std::string::npos);
  EXPECT_NE(config_error("[train]\ngrad_accum = 2\n[parallel]\nmicrobatches = 3\n").find("grad_accum"),
            std::string::npos);
  EXPECT_NE(config_error("[parallel]\ntp = 0\n").find("parallel.tp"), std::string::npos);
}

TEST(Mesh, ShapeFollowsTheWorldSize) {
  ParallelConfig p;
  p.tp = 2;
  p.pp = 2;
  EXPECT_EQ(resolve_mesh_shape(p, 8), (MeshShape{.dp = 2, .tp = 2, .pp = 2}));
  try {
    resolve_mesh_shape(p, 6);
    ADD_FAILURE() << "6 ranks do not make a tp2 x pp2 mesh";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of tp x pp"), std::string::npos) << e.what();
  }
  p.dp = 3;
  EXPECT_THROW(resolve_mesh_shape(p, 8), ConfigError);
  EXPECT_EQ(resolve_mesh_shape(p, 12).dp, 3);
}

// Each rank all-reduces its own coordinates along every dimension: the sums
// show that each communicator holds exactly the ranks that differ in that
// coordinate only, in coordinate order.
TEST(Mesh, EachDimensionGetsItsOwnCommunicator) {
  const MeshShape shape{.dp = 2, .tp = 2, .pp = 2};
  const int world = shape.world();
  auto hub = net::make_inproc_hub(world);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        comm::Communicator comm(net::connect_inproc(hub, r));
        ParallelMesh mesh(&comm, shape);
        const auto c = mesh.coords();
        EXPECT_EQ(mesh_rank_of(shape, c), r);
        struct Dim {
          comm::Communicator* comm;
          int coord;
        };
        for (Dim d : {Dim{mesh.tp(), c.tp}, Dim{mesh.pp(), c.pp}, Dim{mesh.dp(), c.dp}}) {
          ASSERT_NE(d.comm, nullptr);
          EXPECT_EQ(d.comm->size(), 2);
          EXPECT_EQ(d.comm->rank(), d.coord);
          // [world rank, 1]: the sum of world ranks identifies the group.
          std::vector<double> v = {static_cast<double>(r), 1.0};
          d.comm->all_reduce(v.data(), v.data(), v.size(), DType::F64, comm::ReduceOp::Sum).wait();
          EXPECT_EQ(v[1], 2.0);
          MeshCoords other = c;
          if (d.comm == mesh.tp()) other.tp = 1 - c.tp;
          if (d.comm == mesh.pp()) other.pp = 1 - c.pp;
          if (d.comm == mesh.dp()) other.dp = 1 - c.dp;
          EXPECT_EQ(v[0], r + mesh_rank_of(shape, other));
        }
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  // A dimension of size 1 has no communicator; one process is a 1x1x1 mesh.
  ParallelMesh single(nullptr, MeshShape{});
  EXPECT_EQ(single.tp(), nullptr);
  EXPECT_TRUE(single.first_stage() && single.last_stage());
  EXPECT_THROW(ParallelMesh(nullptr, (MeshShape{.dp = 1, .tp = 2, .pp = 1})), ConfigError);
}

}  // namespace
}  // namespace braid::train
