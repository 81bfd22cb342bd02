// The tuning table behind Algo::Auto: built-in rules, JSON round trip,
// validation of a bad file, and the table written from measurements.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "comm/tuning.hpp"
#include "core/error.hpp"

using namespace braid;
using namespace braid::comm;

namespace {

std::string temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path().string() + "/braid-tuning-" + std::to_string(getpid()) + "-" + name;
}

TEST(Tuning, BuiltinRulesPickBySizeTopologyAndOp) {
  TuningTable t = TuningTable::builtin();
  EXPECT_EQ(t.pick(OpKind::AllReduce, 8, 2, Topology::SingleHost), Algo::Rhd);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 64 << 20, 2, Topology::SingleHost), Algo::Ring);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 64 << 20, 8, Topology::MultiHost), Algo::Hierarchical);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 64 << 20, 2, Topology::MultiHost), Algo::Ring);  // too few ranks for a hierarchy
  EXPECT_EQ(t.pick(OpKind::ReduceScatter, 1 << 20, 4, Topology::SingleHost), Algo::Ring);
  EXPECT_EQ(t.pick(OpKind::AllGather, 1024, 4, Topology::SingleHost), Algo::Rhd);
  EXPECT_EQ(t.pick(OpKind::Broadcast, 1024, 4, Topology::SingleHost), Algo::Tree);
  // Every answer implements its operation.
  for (OpKind op : {OpKind::AllReduce, OpKind::ReduceScatter, OpKind::AllGather, OpKind::Broadcast})
    for (size_t bytes : {size_t{0}, size_t{8}, size_t{1} << 20, size_t{1} << 30})
      for (int world : {1, 2, 3, 8, 64})
        for (Topology topo : {Topology::SingleHost, Topology::MultiHost}) {
          Algo a = t.pick(op, bytes, world, topo);
          EXPECT_TRUE(algo_supports(op, a)) << op_kind_name(op) << " " << algo_name(a);
          EXPECT_NE(a, Algo::Auto);
        }
}

TEST(Tuning, JsonRoundTripKeepsRulesAndFingerprint) {
  TuningTable t = TuningTable::builtin();
  TuningTable back = TuningTable::from_json(t.to_json());
  ASSERT_EQ(back.rules().size(), t.rules().size());
  EXPECT_EQ(back.fingerprint(), t.fingerprint());
  std::string path = temp_path("table.json");
  t.save(path);
  EXPECT_EQ(TuningTable::load(path).fingerprint(), t.fingerprint());
  std::filesystem::remove(path);
  // A different table has a different fingerprint (it travels in the check value).
  TuningTable other;
  other.add({OpKind::AllReduce, Topology::SingleHost, 1, 8, SIZE_MAX, Algo::Tree});
  EXPECT_NE(other.fingerprint(), t.fingerprint());
  EXPECT_EQ(other.pick(OpKind::AllReduce, 1 << 30, 4, Topology::SingleHost), Algo::Tree);
  EXPECT_EQ(other.pick(OpKind::AllReduce, 1 << 30, 9, Topology::SingleHost), Algo::Ring);  // no rule: fallback
}

TEST(Tuning, BadTablesAreConfigErrorsNamingTheRule) {
  auto fails_with = [](const std::string& text, const std::string& needle) {
    try {
      TuningTable::from_json(text, "t.json");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  fails_with("not json", "not valid JSON");
  fails_with("{}", "no \"rules\"");
  fails_with(R"({"rules": [{"op": "all_reduce", "algo": "warp"}]})", "rule 0");
  fails_with(R"({"rules": [{"op": "all_reduce", "algo": "ring"}, {"op": "all_gather", "algo": "tree"}]})", "rule 1");
  fails_with(R"({"rules": [{"op": "all_reduce", "algo": "ring", "min_world": 4, "max_world": 2}]})", "world range");
  fails_with(R"({"rules": [{"op": "shuffle", "algo": "ring"}]})", "unknown collective");
  fails_with(R"({"version": 7, "rules": []})", "version");
  EXPECT_THROW(TuningTable::load("/nonexistent/x.json"), ConfigError);
}

TEST(Tuning, TableFromMeasurementsKeepsTheFastestPerSize) {
  std::vector<TuningMeasurement> rows;
  auto add = [&](size_t bytes, Algo a, double us) {
    rows.push_back({OpKind::AllReduce, Topology::SingleHost, 2, bytes, a, us});
  };
  add(8, Algo::Rhd, 2);
  add(8, Algo::Ring, 5);
  add(8, Algo::Tree, 3);
  add(4096, Algo::Rhd, 10);
  add(4096, Algo::Tree, 9);
  add(1 << 20, Algo::Ring, 100);
  add(1 << 20, Algo::Rhd, 150);
  add(64 << 20, Algo::Ring, 5000);
  add(64 << 20, Algo::Rhd, 9000);
  rows.push_back({OpKind::AllReduce, Topology::SingleHost, 2, 16, Algo::Auto, 1});  // ignored: not an algorithm
  std::string path = temp_path("measured.json");
  write_tuning_file(path, rows);
  TuningTable t = TuningTable::load(path);
  std::filesystem::remove(path);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 8, 2, Topology::SingleHost), Algo::Rhd);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 1000, 2, Topology::SingleHost), Algo::Tree);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 4096, 2, Topology::SingleHost), Algo::Tree);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 5000, 2, Topology::SingleHost), Algo::Ring);
  EXPECT_EQ(t.pick(OpKind::AllReduce, 1 << 30, 2, Topology::SingleHost), Algo::Ring);
  // Unmeasured worlds fall back to the built-in rules.
  EXPECT_EQ(t.pick(OpKind::AllReduce, 8, 4, Topology::SingleHost), Algo::Rhd);
  EXPECT_EQ(t.pick(OpKind::Broadcast, 8, 2, Topology::SingleHost), Algo::Tree);
}

// The default pipeline chunk grows with the vector (keeping >= 32 chunks)
// from 512 KiB to at most 2 MiB.
TEST(Tuning, DefaultChunkGrowsWithTheVector) {
  EXPECT_EQ(default_chunk_bytes(0), 512u << 10);
  EXPECT_EQ(default_chunk_bytes(1 << 20), 512u << 10);
  EXPECT_EQ(default_chunk_bytes((32u << 20) - 1), 512u << 10);
  EXPECT_EQ(default_chunk_bytes(32u << 20), 1u << 20);
  EXPECT_EQ(default_chunk_bytes(64u << 20), 2u << 20);
  EXPECT_EQ(default_chunk_bytes(size_t{1} << 40), 2u << 20);
}

TEST(Tuning, NamesParse) {
  EXPECT_EQ(parse_op_kind("allreduce"), OpKind::AllReduce);
  EXPECT_EQ(parse_op_kind("reduce_scatter"), OpKind::ReduceScatter);
  EXPECT_EQ(parse_op_kind("all-gather"), OpKind::AllGather);
  EXPECT_THROW(parse_op_kind("gather"), ConfigError);
  EXPECT_EQ(parse_topology("multi_host"), Topology::MultiHost);
  EXPECT_THROW(parse_topology("cloud"), ConfigError);
  EXPECT_FALSE(algo_supports(OpKind::ReduceScatter, Algo::Tree));
  EXPECT_NE(supported_algos(OpKind::Broadcast).find("tree"), std::string::npos);
}

}  // namespace
