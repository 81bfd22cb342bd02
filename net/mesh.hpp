#pragma once
// A Mesh is one rank's set of pairs to every other rank of a group, at one
// epoch. A new membership is a new Mesh (new connections); frames that carry
// another epoch are dropped. Peers on the same host (same host id) talk over
// shared memory, others over TCP, unless the options say otherwise.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "net/pair.hpp"
#include "net/store.hpp"

namespace braid::net {

// Faults injected by the transport itself, for tests and demos (the kernel
// here has no netem). Parsed from BRAID_FAULTS or the config, e.g.
//   "latency=50ms,rate=100mbit,drop_after=1048576,stall=2s,peers=1"
// Fields: latency=DURATION, rate=BITRATE, drop_after=BYTES, stall=DURATION,
// stall_after=BYTES, peers=R[+R...], ranks=R[+R...]. Faults act on what this
// rank sends (so a latency set on every rank is added once per direction).
struct FaultSpec {
  double latency_s = 0;          // added one-way delay per message
  double rate_bps = 0;           // bandwidth cap in bits/s (0 = none), per pair
  uint64_t drop_after_bytes = 0;  // close the connection after sending this many bytes (0 = never)
  double stall_s = 0;            // stop sending for this long once stall_after_bytes is reached
  uint64_t stall_after_bytes = 0;
  std::vector<int> peers;        // peers the faults apply to (empty = all)
  std::vector<int> ranks;        // ranks that inject them (empty = all)
  bool any() const { return latency_s > 0 || rate_bps > 0 || drop_after_bytes > 0 || stall_s > 0; }
  // True if rank `self` injects faults on what it sends to `peer`.
  bool applies(int self, int peer) const;
  // The text form (parse(to_string()) gives the same spec).
  std::string to_string() const;
  // Parses the text form above; throws ConfigError naming the bad field.
  static FaultSpec parse(const std::string& text);
};

enum class TransportChoice { Auto, Tcp, Shm, Inproc };
TransportChoice parse_transport(const std::string& name);  // "auto", "tcp", "shm"

struct MeshOptions {
  int rank = 0;
  int size = 1;
  uint32_t epoch = 0;
  // Store keys used by this mesh are prefixed with this (distinct per group).
  std::string group = "world";
  std::string host_id;             // default: env::host_id()
  TransportChoice transport = TransportChoice::Auto;
  // Address to listen on. Default: 127.0.0.1 without a job secret, else the
  // BRAID_IFACE_ADDR / first non-loopback address.
  std::string bind_addr;
  int streams_per_peer = 1;        // parallel TCP connections per peer
  size_t socket_buffer_bytes = 4 << 20;
  size_t unexpected_budget_bytes = 64 << 20;  // per pair
  std::string secret;              // job secret; empty = none (loopback only)
  FaultSpec faults;                // none set: BRAID_FAULTS is read
  double connect_timeout_s = 60;
  // Bytes of each direction's ring of a shared-memory pair (power of two).
  size_t shm_ring_bytes = 1 << 20;
  // Largest DATA frame and message this rank accepts from a peer; a frame
  // beyond them is a protocol error that closes the connection.
  uint32_t max_frame_bytes = 64u << 20;
  uint64_t max_message_bytes = uint64_t{1} << 40;
};

class Mesh {
 public:
  virtual ~Mesh() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual uint32_t epoch() const = 0;
  // Pair to `peer` (peer != rank).
  virtual Pair& pair(int peer) = 0;
  // Host group: ranks sharing this rank's host id, in rank order (includes self).
  virtual const std::vector<int>& local_ranks() const = 0;
  // Host id per rank.
  virtual const std::vector<std::string>& host_ids() const = 0;
  // Fails every pair's pending and future requests with Aborted (or `kind`) and
  // tells every peer to do the same.
  virtual void abort(AbortKind kind, const std::string& message) = 0;
  // Called (from a transport thread) when a pair fails; the comm layer uses it
  // to fail the whole collective at once.
  virtual void on_pair_failure(std::function<void(int peer, std::exception_ptr)> fn) = 0;
  // Inline progress for transports that have no thread (shared memory).
  virtual Progress* progress() = 0;
};

// Establishes the mesh: listens, publishes the address under the group prefix
// in `store`, connects to every peer, authenticates (HMAC-SHA256 with the job
// secret), and sets up shared memory for same-host peers.
std::shared_ptr<Mesh> connect_mesh(Store& store, const MeshOptions& options);

// Ranks as threads of one process, joined by in-memory queues. For tests and
// for comm algorithm development; no sockets involved.
class InprocHub;
std::shared_ptr<InprocHub> make_inproc_hub(int size);
std::shared_ptr<Mesh> connect_inproc(const std::shared_ptr<InprocHub>& hub, int rank,
                                     uint32_t epoch = 0);

}  // namespace braid::net
