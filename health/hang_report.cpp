#include "health/hang_report.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"

namespace braid::health {
namespace {

comm::FlightState state_of(const std::string& s) {
  for (auto st : {comm::FlightState::Issued, comm::FlightState::Running, comm::FlightState::Done,
                  comm::FlightState::Failed, comm::FlightState::NotRun})
    if (s == comm::flight_state_name(st)) return st;
  throw CorruptData(fmt::format("unknown flight state '{}'", s));
}

void copy_to(char* dst, size_t cap, const std::string& s) {
  size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = 0;
}

bool entered(const comm::FlightEntry& e) { return e.started_unix_ns > 0; }

}  // namespace

FlightDump read_flight_dump(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError(fmt::format("cannot read flight-recorder dump {}", path), "check the run directory's flight/ folder");
  FlightDump d;
  d.path = path;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      if (lineno == 1) {
        if (!j.contains("flight_recorder")) throw CorruptData("no flight_recorder header");
        d.rank = j.at("rank").get<int>();
        d.reason = j.at("reason").get<std::string>();
        d.dumped_unix_ns = j.at("dumped_unix_ns").get<int64_t>();
        continue;
      }
      comm::FlightEntry e;
      e.record = j.at("record").get<uint64_t>();
      e.seq = j.at("seq").get<uint64_t>();
      e.epoch = j.at("epoch").get<uint32_t>();
      e.group = j.at("group").get<uint32_t>();
      e.rank = j.at("rank").get<int32_t>();
      e.group_size = j.at("group_size").get<int32_t>();
      e.peer = j.at("peer").get<int32_t>();
      copy_to(e.op, sizeof e.op, j.at("op").get<std::string>());
      copy_to(e.dtype, sizeof e.dtype, j.at("dtype").get<std::string>());
      e.bytes = j.at("bytes").get<uint64_t>();
      e.state = state_of(j.at("state").get<std::string>());
      e.issued_unix_ns = j.at("issued_unix_ns").get<int64_t>();
      e.started_unix_ns = j.at("started_unix_ns").get<int64_t>();
      e.finished_unix_ns = j.at("finished_unix_ns").get<int64_t>();
      copy_to(e.error, sizeof e.error, j.at("error").get<std::string>());
      d.entries.push_back(e);
    } catch (const CorruptData& x) {
      throw CorruptData(fmt::format("{} line {}: {}", path, lineno, x.what()), "the dump is damaged");
    } catch (const std::exception& x) {
      throw CorruptData(fmt::format("{} line {}: {}", path, lineno, x.what()), "the dump is damaged");
    }
  }
  if (d.rank < 0) throw CorruptData(fmt::format("{} is empty or has no header", path), "the dump is damaged");
  return d;
}

std::vector<FlightDump> read_flight_dumps(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<FlightDump> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw IoError(fmt::format("{} is not a directory of flight-recorder dumps", dir),
                  "pass the run directory's flight/ folder (or the run directory)");
  for (const auto& f : fs::directory_iterator(dir)) {
    const std::string name = f.path().filename().string();
    if (name.rfind("rank-", 0) == 0 && f.path().extension() == ".jsonl") out.push_back(read_flight_dump(f.path().string()));
  }
  std::sort(out.begin(), out.end(), [](const FlightDump& a, const FlightDump& b) { return a.rank < b.rank; });
  return out;
}

HangReport analyze_flight_dumps(std::vector<FlightDump> dumps, int expected_world) {
  HangReport r;
  r.dumps = std::move(dumps);
  // The break: earliest failure anywhere.
  for (const auto& d : r.dumps)
    for (const auto& e : d.entries)
      if (e.state == comm::FlightState::Failed && e.finished_unix_ns > 0 &&
          (r.broke_unix_ns == 0 || e.finished_unix_ns < r.broke_unix_ns)) {
        r.broke_unix_ns = e.finished_unix_ns;
        r.first_failure = fmt::format("rank {}: {} #{} (group {}) failed: {}", d.rank, e.op, e.seq, e.group, e.error);
      }
  int world = expected_world;
  std::set<int> have;
  for (const auto& d : r.dumps) {
    have.insert(d.rank);
    if (expected_world == 0)
      for (const auto& e : d.entries) world = std::max(world, static_cast<int>(e.group_size));
  }
  for (int k = 0; k < world; ++k)
    if (!have.count(k)) r.missing_ranks.push_back(k);

  auto counts = [&](const comm::FlightEntry& e) {
    return entered(e) && (r.broke_unix_ns == 0 || e.started_unix_ns <= r.broke_unix_ns);
  };
  // Per group: the furthest collective anyone entered, and each rank's last.
  std::map<uint32_t, const comm::FlightEntry*> furthest;
  for (const auto& d : r.dumps)
    for (const auto& e : d.entries)
      if (counts(e) && (!furthest[e.group] || e.seq > furthest[e.group]->seq)) furthest[e.group] = &e;
  for (const auto& [group, top] : furthest) {
    std::vector<int> in;
    for (const auto& d : r.dumps)
      for (const auto& e : d.entries)
        if (e.group == group && e.seq == top->seq && counts(e)) in.push_back(d.rank);
    if (r.broke_unix_ns != 0)
      r.stuck_in.push_back(fmt::format("{} #{} (group {}, {} bytes), entered by rank(s) {}", top->op, top->seq, group,
                                       top->bytes, fmt::join(in, ", ")));
    for (const auto& d : r.dumps) {
      const comm::FlightEntry* last = nullptr;
      bool member = false;
      for (const auto& e : d.entries) {
        if (e.group != group) continue;
        member = true;
        if (counts(e) && (!last || e.seq > last->seq)) last = &e;
      }
      if (!member || (last && last->seq >= top->seq)) continue;
      StuckRank s;
      s.rank = d.rank;
      s.group = group;
      s.missing_seq = top->seq;
      s.missing_op = top->op;
      s.missing_bytes = top->bytes;
      if (last) {
        s.last_seq = static_cast<int64_t>(last->seq);
        s.last_op = last->op;
        s.last_state = comm::flight_state_name(last->state);
      }
      r.stuck.push_back(s);
    }
  }
  return r;
}

std::string HangReport::text() const {
  std::string s = fmt::format("flight recorder: {} dump(s)\n", dumps.size());
  for (const auto& d : dumps) s += fmt::format("  rank {}: {} collectives recorded, dumped for: {}\n", d.rank, d.entries.size(), d.reason);
  if (!first_failure.empty()) s += fmt::format("first failure: {}\n", first_failure);
  for (const auto& l : stuck_in) s += fmt::format("the job broke in {}\n", l);
  for (int m : missing_ranks)
    s += fmt::format("rank {} left no dump (killed, or still hung){}\n", m,
                     stuck_in.empty() ? "" : "; it is not among the ranks that entered the collective above");
  if (stuck.empty() && missing_ranks.empty()) s += "every rank entered the same collectives (no rank stuck behind)\n";
  for (const auto& k : stuck)
    s += fmt::format("rank {} never entered {} #{} (group {}, {} bytes); its last collective was {}\n", k.rank,
                     k.missing_op, k.missing_seq, k.group, k.missing_bytes,
                     k.last_seq < 0 ? std::string("none") : fmt::format("{} #{} ({})", k.last_op, k.last_seq, k.last_state));
  return s;
}

}  // namespace braid::health
