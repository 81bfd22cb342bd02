#pragma once
// The flight recorder: each rank's ring of its last N collectives (as NCCL's
// and PyTorch's flight recorders), so that after a hang or a crash one can
// see which rank never entered which collective.
//
// The Communicator records every operation it issues: what it is (op, dtype,
// bytes, group, epoch, sequence number in the group), when it was issued,
// started and finished (wall clock, so dumps of different ranks on one host
// can be compared), and how it ended. With a dump path set, the ring is
// written as JSON lines the first time an operation of this rank fails
// (timeout, abort, lost peer), on dump(), and — best effort — on a fatal
// signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) once
// install_fatal_signal_dump() was called.
//
// Cost: a mutex and a 128-byte entry per collective (no allocation); a
// training step issues a handful of collectives.
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace braid::comm {

enum class FlightState : uint8_t {
  Issued = 0,   // queued behind earlier collectives
  Running = 1,  // entered: exchanging with its peers
  Done = 2,
  Failed = 3,
  NotRun = 4,   // issued after the communicator had failed: never entered
};
const char* flight_state_name(FlightState s);

struct FlightEntry {
  uint64_t record = 0;      // index of this entry over the recorder's life (0 = empty slot)
  uint64_t seq = 0;         // the collective's sequence number in its group
  uint32_t epoch = 0;
  uint32_t group = 0;       // group id (0 = the world communicator)
  int32_t rank = 0;         // this rank in the group
  int32_t group_size = 0;   // peers = every member of the group (collectives), or `peer`
  int32_t peer = -1;        // point to point / broadcast root; -1 otherwise
  FlightState state = FlightState::Issued;
  char op[15] = {};         // "all_reduce", "broadcast", ...
  char dtype[8] = {};
  uint64_t bytes = 0;       // bytes of this rank's vector
  int64_t issued_unix_ns = 0;
  int64_t started_unix_ns = 0;
  int64_t finished_unix_ns = 0;
  char error[72] = {};      // first words of the error, for Failed / NotRun
};

class FlightRecorder {
 public:
  explicit FlightRecorder(size_t capacity = 256);
  ~FlightRecorder();
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  // Returns a token for started()/finished().
  uint64_t issued(const char* op, const char* dtype, uint64_t bytes, uint64_t seq, uint32_t epoch, uint32_t group,
                  int rank, int group_size, int peer);
  void started(uint64_t token);
  void finished(uint64_t token, bool ok, const char* error = nullptr);
  // Issued after the communicator had failed: never entered.
  void not_run(uint64_t token, const char* error);

  // Oldest first.
  std::vector<FlightEntry> entries() const;
  size_t capacity() const { return ring_.size(); }

  // Where dumps go; `rank` is the rank the dump is filed under (the job's
  // rank, which may differ from a subgroup's). Empty path: no automatic dumps.
  void set_dump_path(const std::string& path, int rank);
  std::string dump_path() const;
  // Writes the ring now (header line, then one line per entry); false if no
  // path is set or the file cannot be written.
  bool dump(const std::string& reason);
  // The automatic dump of the first failure (later ones do not overwrite it).
  void on_failure(const std::string& reason);

  // Installs handlers that dump every recorder with a path on a fatal signal,
  // then re-raise it with the default action. Idempotent.
  static void install_fatal_signal_dump();

 private:
  friend struct FlightSignalDump;
  FlightEntry* slot(uint64_t token);
  bool write_locked(const char* reason, int fd_or_minus1);

  mutable std::mutex mu_;
  std::vector<FlightEntry> ring_;
  uint64_t next_record_ = 1;
  std::string path_;
  int dump_rank_ = 0;
  bool dumped_failure_ = false;
};

}  // namespace braid::comm
