#pragma once
// Communicator: a group of ranks at an epoch, and the collectives over it.
//
// Every collective returns a Work at once. Work::wait() either completes or
// throws a typed error (PeerLost, Timeout, Aborted, Mismatch) — on every rank
// involved, never a hang: each operation carries a deadline. abort() cancels
// all in-flight work at once. Results are bit-identical on every rank.
//
// Collectives run in the order they were issued, the same order on every rank
// (the caller's duty). Point-to-point send/recv are posted at once and do not
// queue behind collectives.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "net/mesh.hpp"

namespace braid::comm {

enum class ReduceOp : uint8_t { Sum = 0, Avg = 1, Max = 2, Min = 3 };
enum class Algo : uint8_t { Auto = 0, Ring = 1, Rhd = 2, Tree = 3, Hierarchical = 4 };

ReduceOp parse_reduce_op(const std::string& name);  // "sum", "avg", "max", "min"
Algo parse_algo(const std::string& name);           // "auto", "ring", "rhd", "tree", "hier"
const char* reduce_op_name(ReduceOp op);
const char* algo_name(Algo a);

class Codec;           // compression of floating-point payloads (comm/codec.hpp)
class FlightRecorder;  // the ring of the last collectives (comm/flight_recorder.hpp)

struct CollectiveOptions {
  Algo algo = Algo::Auto;
  double timeout_s = -1;         // < 0: the communicator's default
  const Codec* codec = nullptr;  // optional compression (all-reduce only)
};

struct CommOptions {
  double timeout_s = 60;        // default deadline of one collective
  size_t chunk_bytes = 0;       // pipeline chunk; 0 = algorithm's default
  std::string tuning_file;      // table for Algo::Auto; empty = built-in table
  // Collectives up to this many bytes (the whole vector) run in the calling
  // thread when nothing is queued: no thread hop, no allocation by the comm
  // layer. Larger ones go to the communicator's executor thread so that the
  // caller can overlap them with work.
  size_t inline_max_bytes = 64 << 10;
  int chunks_in_flight = 0;     // pipeline window per direction; 0 = default (4)
  // How long a collective busy-waits (driving shared-memory progress) for
  // its next message before it yields the CPU and then sleeps. Yielding
  // costs tens of microseconds on a busy machine; spinning costs CPU.
  double spin_wait_us = 1000;
};

// Timing of one operation, for measuring how much communication was hidden.
struct WorkTiming {
  int64_t enqueued_ns = 0;
  int64_t started_ns = 0;
  int64_t finished_ns = 0;
};

class WorkState;  // shared between the issuer and the executor

class Work {
 public:
  Work() = default;  // an empty Work is complete
  explicit Work(std::shared_ptr<WorkState> s) : s_(std::move(s)) {}
  // Blocks until done; throws the typed error if the operation failed.
  void wait();
  // True if done; throws if it failed.
  bool test();
  WorkTiming timing() const;
  bool valid() const { return s_ != nullptr; }

 private:
  std::shared_ptr<WorkState> s_;
};

struct CommStats {
  uint64_t ops = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
};

class Communicator {
 public:
  explicit Communicator(std::shared_ptr<net::Mesh> mesh, CommOptions options = {});
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const;
  int size() const;
  uint32_t epoch() const;
  net::Mesh& mesh();

  // out may equal in (in place). count = elements per rank's buffer.
  Work all_reduce(const void* in, void* out, size_t count, DType type, ReduceOp op,
                  const CollectiveOptions& o = {});
  // in holds size()*count elements; rank r receives block r (count elements) in out.
  Work reduce_scatter(const void* in, void* out, size_t count, DType type, ReduceOp op,
                      const CollectiveOptions& o = {});
  // in holds count elements; out receives size()*count, rank r's block at r*count.
  Work all_gather(const void* in, void* out, size_t count, DType type,
                  const CollectiveOptions& o = {});
  Work broadcast(void* buf, size_t count, DType type, int root, const CollectiveOptions& o = {});
  Work barrier(const CollectiveOptions& o = {});

  // Point to point within this group; `tag` distinguishes concurrent messages.
  Work send(const void* buf, size_t bytes, int peer, uint32_t tag, const CollectiveOptions& o = {});
  Work recv(void* buf, size_t bytes, int peer, uint32_t tag, const CollectiveOptions& o = {});

  // A communicator over a subset of this one's ranks (listed in group-rank
  // order, must include this rank), reusing the same connections with its own
  // tag space. Every member must call it with the same list, in the same order
  // relative to other subgroup() calls.
  std::unique_ptr<Communicator> subgroup(const std::vector<int>& ranks);

  // Fails all in-flight and queued work with Aborted on this rank and tells
  // the peers to do the same.
  void abort(const std::string& reason);
  CommStats stats() const;
  // This rank's record of its last collectives, shared with its subgroups.
  FlightRecorder& flight_recorder();

 private:
  struct Impl;
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace braid::comm
