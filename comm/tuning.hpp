#pragma once
// The table behind Algo::Auto: which algorithm runs for an operation of a
// given size, world size and topology. Every rank evaluates the same rules on
// the same inputs (the topology comes from the mesh's host ids, which all
// ranks share), so every rank picks the same algorithm; the table's
// fingerprint travels in every message's check value, so ranks that loaded
// different tables fail with Mismatch instead of hanging.
//
// `bytes` is always the size of the whole vector: count * element size for
// all-reduce and broadcast, the input of reduce-scatter and the output of
// all-gather (size() * count * element size).
//
// The built-in rules are reasoned defaults, not measurements; `braid bench
// comm --tune` measures every algorithm and writes a file with
// write_tuning_file(), which CommOptions::tuning_file loads.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace braid::comm {

enum class OpKind : uint8_t { AllReduce = 0, ReduceScatter = 1, AllGather = 2, Broadcast = 3, Barrier = 4 };
const char* op_kind_name(OpKind k);         // "all_reduce", ...
OpKind parse_op_kind(const std::string& s);  // also accepts "allreduce", "reduce_scatter", ...

enum class Topology : uint8_t { SingleHost = 0, MultiHost = 1 };
const char* topology_name(Topology t);  // "single_host", "multi_host"
Topology parse_topology(const std::string& s);

// Whether `algo` implements `op` (Auto always does).
bool algo_supports(OpKind op, Algo algo);
// "ring, rhd, tree, hier" — for error messages.
std::string supported_algos(OpKind op);

struct TuningRule {
  OpKind op = OpKind::AllReduce;
  Topology topology = Topology::SingleHost;
  int min_world = 1;
  int max_world = 1 << 30;
  size_t max_bytes = SIZE_MAX;  // rule applies to bytes <= max_bytes
  Algo algo = Algo::Ring;
};

// One benchmark measurement: `algo` took `time_us` for this operation.
struct TuningMeasurement {
  OpKind op = OpKind::AllReduce;
  Topology topology = Topology::SingleHost;
  int world = 2;
  size_t bytes = 0;
  Algo algo = Algo::Ring;
  double time_us = 0;
};

class TuningTable {
 public:
  static TuningTable builtin();
  // Reads a JSON table (as written by save()); throws ConfigError naming the
  // file and the bad rule.
  static TuningTable load(const std::string& path);
  static TuningTable from_json(const std::string& text, const std::string& source = "<string>");
  std::string to_json() const;
  void save(const std::string& path) const;

  // First matching rule wins; ring (or tree for broadcast) if none matches.
  // Never returns Auto; never Hierarchical for single-host groups.
  Algo pick(OpKind op, size_t bytes, int world, Topology topo) const;
  const std::vector<TuningRule>& rules() const { return rules_; }
  void add(const TuningRule& r);
  // Hash of the rules, part of every collective's check value.
  uint32_t fingerprint() const { return fingerprint_; }

 private:
  void refresh_fingerprint();
  std::vector<TuningRule> rules_;
  uint32_t fingerprint_ = 0;
};

// The pipeline chunk when CommOptions::chunk_bytes is 0: 512 KiB, doubled up
// to 2 MiB while the vector still holds at least 32 chunks. Larger chunks
// halve the per-message cost of big transfers over TCP (measured on loopback:
// 64 MiB all-reduce +15-20% with 2 MiB chunks; shared memory unchanged),
// while medium vectors keep enough chunks to fill the pipeline. A function of
// the vector's size only, so every rank picks the same chunk.
size_t default_chunk_bytes(size_t vector_bytes);

// The fastest algorithm per (op, topology, world, size) becomes a rule; runs
// of sizes with the same winner merge into one rule up to the largest size
// measured in the run. The built-in rules follow as the fallback for worlds
// and operations that were not measured.
TuningTable tuning_from_measurements(const std::vector<TuningMeasurement>& rows);
// tuning_from_measurements(rows).save(path).
void write_tuning_file(const std::string& path, const std::vector<TuningMeasurement>& rows);

}  // namespace braid::comm
