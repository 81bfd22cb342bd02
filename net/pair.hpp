#pragma once
// A Pair is this rank's connection to one peer: tagged, non-blocking sends and
// receives of byte ranges. Algorithms see only ranks and pairs, never sockets.
//
// Contract (every transport implements exactly this):
//  * isend/irecv return at once; the returned Request completes when the bytes
//    have left the caller's buffer (send) or arrived in it (recv). The caller
//    must keep the buffer alive and untouched until then.
//  * Messages are matched by tag. Among messages in flight on one pair and one
//    direction, tags are unique (the comm layer builds them from an operation
//    sequence number and a step), so no ordering between tags is promised.
//  * A message may arrive before its receive is posted; the transport buffers
//    such messages up to a bounded budget and then stops reading from that peer
//    (back-pressure), never allocating without bound.
//  * `meta` is an opaque 32-bit check value (the comm layer passes a hash of
//    the collective's op, type and count). A receive whose length or meta differs
//    from the arriving message fails with braid::Mismatch.
//  * When the connection dies, every pending and future request on the pair
//    fails with braid::PeerLost naming the peer. A frame that fails validation
//    closes the connection with braid::ProtocolError naming the peer.
//  * abort(kind, msg) sends an ABORT frame so that the peer's pending requests
//    fail with the same error kind (used to spread Mismatch/Aborted to all ranks).
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>

#include "net/request.hpp"

namespace braid::net {

using Tag = uint64_t;

// Folds incoming bytes into a destination as they arrive:
//   fn(dst + off, local + off, incoming, n) for pieces that together cover the
// message, each piece a multiple of elem_size bytes. dst may equal local.
struct Combiner {
  size_t elem_size = 1;
  std::function<void(void* dst, const void* local, const void* incoming, size_t nbytes)> fn;
};

// What an ABORT frame carries, so that every rank throws the same error type.
enum class AbortKind : uint16_t { Aborted = 1, Mismatch = 2, PeerLost = 3, Timeout = 4 };

struct PairStats {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t messages_sent = 0;
  uint64_t messages_received = 0;
};

class Pair {
 public:
  virtual ~Pair() = default;

  virtual int peer() const = 0;
  // "tcp", "shm" or "inproc".
  virtual const char* kind() const = 0;

  virtual RequestPtr isend(const void* buf, size_t len, Tag tag, uint32_t meta = 0) = 0;
  virtual RequestPtr irecv(void* buf, size_t len, Tag tag, uint32_t meta = 0) = 0;
  // Receives `len` bytes and folds them into dst with `combiner` (see above):
  // dst = combine(local, incoming). Saves a copy over irecv + reduce, and on
  // TCP overlaps the reduction with the rest of the message arriving.
  virtual RequestPtr irecv_reduce(void* dst, const void* local, size_t len, Tag tag,
                                  const Combiner& combiner, uint32_t meta = 0) = 0;

  // Tells the peer to fail its pending requests with `kind`, then fails ours.
  virtual void abort(AbortKind kind, const std::string& message) = 0;
  // True once the pair has failed (peer lost, protocol error, abort).
  virtual bool failed() const = 0;

  virtual PairStats stats() const = 0;
};

}  // namespace braid::net
