#pragma once
// What an algorithm sees while it runs one collective: its group (ranks and
// the pairs to them), the operation's tags, check value and deadline, scratch
// memory, and the reduction. Algorithms never see the communicator, its
// threads or its queue; they are plain functions over a Collective, written
// as loops that keep several chunks in flight (a small state machine per
// chunk: posted -> arrived/reduced -> forwarded).
//
// Tags: [63: p2p=0][62..46: group id][45..26: op sequence][25..0: message].
// The message number is the step/chunk index of the algorithm plus a phase
// base (hierarchical runs three phases in one operation), so that every
// message of one operation on one pair and direction has its own tag.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.hpp"
#include "core/clock.hpp"
#include "core/dtype.hpp"
#include "net/mesh.hpp"

namespace braid::comm {

constexpr int kTagMessageBits = 26;
constexpr uint32_t kMaxMessages = 1u << 24;  // per phase
constexpr uint32_t kPhaseStride = 1u << 24;
constexpr int kTagSeqBits = 20;
constexpr int kTagGroupBits = 17;

inline net::Tag collective_tag_base(uint32_t group_id, uint64_t seq) {
  return (static_cast<net::Tag>(group_id & ((1u << kTagGroupBits) - 1)) << (kTagMessageBits + kTagSeqBits)) |
         ((seq & ((1ull << kTagSeqBits) - 1)) << kTagMessageBits);
}

// Reusable, growing buffers owned by one communicator. Its operations run one
// at a time, so one set suffices; contents do not survive a grow.
class Scratch {
 public:
  enum Slot { kAccum = 0, kAlgo = 1, kAlgo2 = 2, kSmall = 3, kSlots = 4 };
  void* get(Slot slot, size_t bytes);

 private:
  struct Buffer {
    std::unique_ptr<std::byte[]> data;
    size_t size = 0;
  };
  Buffer buffers_[kSlots];
};

struct TrafficCounters {
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> bytes_received{0};
};

// Offsets of n contiguous blocks of a vector: block b is [at(b), at(b+1)).
class Partition {
 public:
  // n blocks whose sizes differ by at most one element (the first count % n
  // blocks get one more).
  static Partition balanced(size_t count, int n);
  // n blocks of `count` elements each.
  static Partition equal(size_t count, int n);
  size_t at(int b) const { return offsets_[static_cast<size_t>(b)]; }
  size_t len(int b) const { return at(b + 1) - at(b); }
  size_t total() const { return offsets_.back(); }
  size_t max_len() const;
  int blocks() const { return static_cast<int>(offsets_.size()) - 1; }

 private:
  std::vector<size_t> offsets_;
};

class Collective {
 public:
  struct Group {
    net::Mesh* mesh = nullptr;
    const int* mesh_ranks = nullptr;  // group rank -> mesh rank
    int size = 1;
    int rank = 0;
  };

  Collective(const Group& g, net::Tag tag_base, uint32_t meta, Deadline deadline, Scratch* scratch,
             TrafficCounters* counters)
      : g_(g), tag_base_(tag_base), meta_(meta), deadline_(deadline), scratch_(scratch), counters_(counters) {}

  int rank() const { return g_.rank; }
  int size() const { return g_.size; }
  const Group& group() const { return g_; }
  net::Mesh& mesh() const { return *g_.mesh; }
  int mesh_rank_of(int group_rank) const { return g_.mesh_ranks[group_rank]; }
  const Deadline& deadline() const { return deadline_; }
  uint32_t meta() const { return meta_; }
  Scratch& scratch() const { return *scratch_; }

  // --- element type and reduction ---
  // For reductions `type` is the accumulation type (bf16/f16 arrive as f32);
  // for all-gather and broadcast it is the element type.
  DType type = DType::F32;
  size_t elem = 4;
  ReduceOp op = ReduceOp::Sum;
  // > 1: avg; the single owner of each reduced element divides by this before
  // distributing it (kept separate from size(): a phase of hierarchical
  // all-reduce runs over fewer ranks than the average is over).
  int64_t avg_divisor = 0;
  size_t chunk_bytes = 512 << 10;
  int window = 4;  // chunks in flight per direction
  int64_t spin_ns = 1'000'000;  // busy-wait before the transport's yield-then-sleep wait
  bool lend_sends = false;      // send_lent() may lend pages (BRAID_TCP_LEND=1; same on every rank)

  // dst = op(a, b) over `count` elements of `type`.
  void reduce(void* dst, const void* a, const void* b, size_t count) const;
  // Applies the avg division to elements this rank owns (no-op for other ops).
  void finalize_owned(void* p, size_t count) const;
  // Elements per pipeline chunk for the current type (at least 1).
  size_t chunk_elems() const;

  // --- messages to group ranks; `msg` < kMaxMessages numbers the message ---
  net::RequestPtr send(int peer, const void* buf, size_t bytes, uint32_t msg) const;
  // A send whose buffer the caller will not modify until it knows (from the
  // algorithm's message order) that the peer has received it: over TCP the
  // kernel may then reference the pages instead of copying them (see
  // net::TcpPair::isend_lent). Other transports, or lend_sends off: send().
  net::RequestPtr send_lent(int peer, const void* buf, size_t bytes, uint32_t msg) const;
  // Whether messages to `peer` go over TCP (both ends of a pair agree).
  bool pair_is_tcp(int peer) const;
  net::RequestPtr recv(int peer, void* buf, size_t bytes, uint32_t msg) const;
  // dst = op(local, incoming), or op(incoming, local) when incoming_first.
  net::RequestPtr recv_reduce(int peer, void* dst, const void* local, size_t bytes, uint32_t msg,
                              bool incoming_first) const;
  // Waits for completion; throws the failure or Timeout at the deadline.
  void wait(const net::RequestPtr& r) const;
  void wait_all(std::vector<net::RequestPtr>& rs) const;
  // The bounded spin before a wait sleeps (spin_ns; see wait()).
  void spin_for(const net::Request& r) const;
  // Waits until `a` has finished or, once it has not for a few ms, `b`
  // (both non-null); rethrows a failure of either, or Timeout at the deadline.
  void wait_either(const net::RequestPtr& a, const net::RequestPtr& b) const;

  // The same operation over a subset of this group (group ranks of this
  // collective, must include this rank), numbering its messages in `phase`.
  Collective subgroup(const std::vector<int>& members, std::vector<int>& mesh_ranks_storage,
                      uint32_t phase) const;

 private:
  net::Tag tag(uint32_t msg) const { return tag_base_ | (msg_base_ + msg); }

  Group g_;
  net::Tag tag_base_;
  uint32_t msg_base_ = 0;
  uint32_t meta_;
  Deadline deadline_;
  Scratch* scratch_;
  TrafficCounters* counters_;
};

}  // namespace braid::comm
