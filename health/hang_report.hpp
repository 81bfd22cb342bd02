#pragma once
// Reading flight-recorder dumps (comm/flight_recorder.hpp) of all ranks and
// saying who stopped where: for every group, the collective that some ranks
// entered and others never did before the job broke.
//
// Method: the job "broke" at the earliest failure recorded in any dump (the
// first timeout, abort or lost peer). Collectives a rank started after that
// instant do not count (they ran into an already broken job). Within each
// group, the highest sequence number entered by any rank before then is the
// collective the job was stuck in; every rank whose last entered collective
// is below it never entered it, and is named with what it last did. A rank
// with no dump at all (killed, or still hung) is named as missing.
#include <cstdint>
#include <string>
#include <vector>

#include "comm/flight_recorder.hpp"

namespace braid::health {

struct FlightDump {
  int rank = -1;
  std::string reason;
  int64_t dumped_unix_ns = 0;
  std::string path;
  std::vector<comm::FlightEntry> entries;
};
// Throws CorruptData naming the file and line, IoError when unreadable.
FlightDump read_flight_dump(const std::string& path);
// Every rank-*.jsonl in `dir` (sorted by rank).
std::vector<FlightDump> read_flight_dumps(const std::string& dir);

struct StuckRank {
  int rank = -1;
  uint32_t group = 0;
  uint64_t missing_seq = 0;     // the collective it never entered
  std::string missing_op;
  uint64_t missing_bytes = 0;
  int64_t last_seq = -1;        // its last collective entered before the break (-1: none)
  std::string last_op;
  std::string last_state;
};

struct HangReport {
  std::vector<FlightDump> dumps;
  std::vector<int> missing_ranks;   // expected ranks without a dump
  int64_t broke_unix_ns = 0;        // 0: no failure recorded
  std::string first_failure;        // "rank 0: all_reduce #57 failed: ..."
  std::vector<StuckRank> stuck;
  // Per group: "all_reduce #57 (group 0, 1024 bytes) entered by ranks 0, 2".
  std::vector<std::string> stuck_in;
  // Human-readable summary.
  std::string text() const;
};

// expected_world: ranks that should have dumped (0 = take the largest group size seen).
HangReport analyze_flight_dumps(std::vector<FlightDump> dumps, int expected_world = 0);

}  // namespace braid::health
