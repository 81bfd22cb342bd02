#include "comm/tuning.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "core/checksum.hpp"
#include "core/error.hpp"

namespace braid::comm {

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::AllReduce: return "all_reduce";
    case OpKind::ReduceScatter: return "reduce_scatter";
    case OpKind::AllGather: return "all_gather";
    case OpKind::Broadcast: return "broadcast";
    case OpKind::Barrier: return "barrier";
  }
  return "?";
}

OpKind parse_op_kind(const std::string& s) {
  std::string t;
  for (char ch : s)
    if (ch != '_' && ch != '-') t += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (t == "allreduce") return OpKind::AllReduce;
  if (t == "reducescatter") return OpKind::ReduceScatter;
  if (t == "allgather") return OpKind::AllGather;
  if (t == "broadcast" || t == "bcast") return OpKind::Broadcast;
  if (t == "barrier") return OpKind::Barrier;
  throw ConfigError(fmt::format("unknown collective '{}'", s),
                    "use one of: all_reduce, reduce_scatter, all_gather, broadcast, barrier");
}

const char* topology_name(Topology t) { return t == Topology::SingleHost ? "single_host" : "multi_host"; }

Topology parse_topology(const std::string& s) {
  if (s == "single_host" || s == "local") return Topology::SingleHost;
  if (s == "multi_host" || s == "hosts") return Topology::MultiHost;
  throw ConfigError(fmt::format("unknown topology '{}'", s), "use single_host or multi_host");
}

bool algo_supports(OpKind op, Algo algo) {
  if (algo == Algo::Auto) return true;
  switch (op) {
    case OpKind::AllReduce: return true;
    case OpKind::ReduceScatter:
    case OpKind::AllGather: return algo == Algo::Ring || algo == Algo::Rhd;
    case OpKind::Broadcast: return algo == Algo::Ring || algo == Algo::Tree;
    case OpKind::Barrier: return true;  // one algorithm (dissemination); the choice is ignored
  }
  return false;
}

std::string supported_algos(OpKind op) {
  std::string s = "auto";
  for (Algo a : {Algo::Ring, Algo::Rhd, Algo::Tree, Algo::Hierarchical})
    if (algo_supports(op, a)) s += std::string(", ") + algo_name(a);
  return s;
}

TuningTable TuningTable::builtin() {
  // Reasoned defaults (see docs/collectives.md): whole-vector recursive
  // doubling while latency dominates, Rabenseifner for medium sizes, the
  // pipelined ring once bandwidth dominates, the hierarchy across hosts.
  TuningTable t;
  constexpr size_t KiB = 1024, MiB = 1024 * 1024;
  constexpr int kAny = 1 << 30;
  for (Topology topo : {Topology::SingleHost, Topology::MultiHost}) {
    if (topo == Topology::MultiHost) {
      t.add({OpKind::AllReduce, topo, 4, kAny, 1 * MiB, Algo::Rhd});
      t.add({OpKind::AllReduce, topo, 4, kAny, SIZE_MAX, Algo::Hierarchical});
    }
    t.add({OpKind::AllReduce, topo, 1, kAny, 256 * KiB, Algo::Rhd});
    t.add({OpKind::AllReduce, topo, 1, kAny, SIZE_MAX, Algo::Ring});
    t.add({OpKind::ReduceScatter, topo, 1, kAny, 64 * KiB, Algo::Rhd});
    t.add({OpKind::ReduceScatter, topo, 1, kAny, SIZE_MAX, Algo::Ring});
    t.add({OpKind::AllGather, topo, 1, kAny, 64 * KiB, Algo::Rhd});
    t.add({OpKind::AllGather, topo, 1, kAny, SIZE_MAX, Algo::Ring});
    t.add({OpKind::Broadcast, topo, 1, kAny, 256 * KiB, Algo::Tree});
    t.add({OpKind::Broadcast, topo, 1, kAny, SIZE_MAX, Algo::Ring});
  }
  return t;
}

void TuningTable::add(const TuningRule& rule) {
  if (rule.algo == Algo::Auto || !algo_supports(rule.op, rule.algo))
    throw ConfigError(fmt::format("tuning rule for {} names algorithm '{}'", op_kind_name(rule.op), algo_name(rule.algo)),
                      fmt::format("{} supports: {}", op_kind_name(rule.op), supported_algos(rule.op)));
  if (rule.min_world < 1 || rule.max_world < rule.min_world)
    throw ConfigError(fmt::format("tuning rule for {} has world range {}..{}", op_kind_name(rule.op), rule.min_world,
                                  rule.max_world),
                      "min_world must be >= 1 and <= max_world");
  rules_.push_back(rule);
  refresh_fingerprint();
}

Algo TuningTable::pick(OpKind op, size_t bytes, int world, Topology topo) const {
  for (const TuningRule& r : rules_) {
    if (r.op != op || r.topology != topo || world < r.min_world || world > r.max_world || bytes > r.max_bytes)
      continue;
    if (r.algo == Algo::Hierarchical && topo == Topology::SingleHost) continue;
    return r.algo;
  }
  return op == OpKind::Broadcast ? Algo::Tree : Algo::Ring;
}

std::string TuningTable::to_json() const {
  nlohmann::json rules = nlohmann::json::array();
  for (const TuningRule& r : rules_) {
    nlohmann::json j;
    j["op"] = op_kind_name(r.op);
    j["topology"] = topology_name(r.topology);
    j["min_world"] = r.min_world;
    j["max_world"] = r.max_world;
    if (r.max_bytes == SIZE_MAX) j["max_bytes"] = nullptr;
    else j["max_bytes"] = r.max_bytes;
    j["algo"] = algo_name(r.algo);
    rules.push_back(std::move(j));
  }
  nlohmann::json doc;
  doc["format"] = "braid-comm-tuning";
  doc["version"] = 1;
  doc["rules"] = std::move(rules);
  return doc.dump(2) + "\n";
}

TuningTable TuningTable::from_json(const std::string& text, const std::string& source) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("tuning table {} is not valid JSON: {}", source, e.what()),
                      "regenerate it with `braid bench comm --tune` or remove tuning_file");
  }
  if (!doc.is_object() || !doc.contains("rules") || !doc["rules"].is_array())
    throw ConfigError(fmt::format("tuning table {} has no \"rules\" array", source),
                      "regenerate it with `braid bench comm --tune`");
  if (doc.value("version", 1) != 1)
    throw ConfigError(fmt::format("tuning table {} has version {}, this braid reads version 1", source,
                                  doc["version"].dump()),
                      "regenerate it with this braid's `braid bench comm --tune`");
  TuningTable t;
  size_t i = 0;
  for (const auto& j : doc["rules"]) {
    try {
      TuningRule r;
      r.op = parse_op_kind(j.at("op").get<std::string>());
      r.topology = parse_topology(j.value("topology", std::string("single_host")));
      r.min_world = j.value("min_world", 1);
      r.max_world = j.value("max_world", 1 << 30);
      if (j.contains("max_bytes") && !j["max_bytes"].is_null()) r.max_bytes = j["max_bytes"].get<size_t>();
      r.algo = parse_algo(j.at("algo").get<std::string>());
      t.add(r);
    } catch (const ConfigError& e) {
      throw ConfigError(fmt::format("tuning table {}, rule {}: {}", source, i, e.what()), e.hint());
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(fmt::format("tuning table {}, rule {}: {}", source, i, e.what()),
                        "each rule needs \"op\" and \"algo\" strings; world and byte bounds are integers");
    }
    ++i;
  }
  return t;
}

TuningTable TuningTable::load(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw ConfigError(fmt::format("cannot read tuning table '{}'", path), "check CommOptions::tuning_file");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_json(ss.str(), path);
}

void TuningTable::save(const std::string& path) const {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) throw IoError(fmt::format("cannot write tuning table '{}'", tmp), "check the directory exists and is writable");
    f << to_json();
    if (!f.flush()) throw IoError(fmt::format("writing tuning table '{}' failed", tmp), "check free disk space");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw IoError(fmt::format("cannot rename '{}' to '{}'", tmp, path), "check permissions of the directory");
}

void TuningTable::refresh_fingerprint() {
  std::string s;
  for (const TuningRule& r : rules_)
    s += fmt::format("{}/{}/{}/{}/{}/{};", static_cast<int>(r.op), static_cast<int>(r.topology), r.min_world,
                     r.max_world, r.max_bytes, static_cast<int>(r.algo));
  fingerprint_ = static_cast<uint32_t>(xxh3_64(s.data(), s.size()));
}

TuningTable tuning_from_measurements(const std::vector<TuningMeasurement>& rows) {
  // (op, topology, world) -> bytes -> fastest algorithm
  using Key = std::tuple<int, int, int>;
  std::map<Key, std::map<size_t, std::pair<double, Algo>>> best;
  for (const TuningMeasurement& m : rows) {
    if (m.algo == Algo::Auto || !algo_supports(m.op, m.algo) || !(m.time_us > 0)) continue;
    if (m.algo == Algo::Hierarchical && m.topology == Topology::SingleHost) continue;
    auto& slot = best[{static_cast<int>(m.op), static_cast<int>(m.topology), m.world}][m.bytes];
    if (slot.first == 0 || m.time_us < slot.first) slot = {m.time_us, m.algo};
  }
  TuningTable t;
  for (const auto& [key, by_size] : best) {
    const auto [op, topo, world] = key;
    auto it = by_size.begin();
    while (it != by_size.end()) {
      Algo winner = it->second.second;
      auto run_end = it;
      while (std::next(run_end) != by_size.end() && std::next(run_end)->second.second == winner) ++run_end;
      bool last = std::next(run_end) == by_size.end();
      t.add({static_cast<OpKind>(op), static_cast<Topology>(topo), world, world, last ? SIZE_MAX : run_end->first,
             winner});
      it = std::next(run_end);
    }
  }
  const TuningTable fallback = TuningTable::builtin();
  for (const TuningRule& r : fallback.rules()) t.add(r);
  return t;
}

void write_tuning_file(const std::string& path, const std::vector<TuningMeasurement>& rows) {
  tuning_from_measurements(rows).save(path);
}

size_t default_chunk_bytes(size_t vector_bytes) {
  constexpr size_t kMin = 512 << 10, kMax = 2 << 20, kChunksAtLeast = 32;
  size_t chunk = kMin;
  while (chunk < kMax && vector_bytes / kChunksAtLeast >= chunk * 2) chunk *= 2;
  return chunk;
}

}  // namespace braid::comm
