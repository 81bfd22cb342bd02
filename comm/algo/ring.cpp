// Chunked, pipelined ring.
//
// Cost model (n ranks, S bytes, chunk c, α latency per message, β seconds per
// byte): all-reduce = reduce-scatter + all-gather, 2(n-1) steps; each rank
// sends and receives 2(n-1)/n * S bytes (bandwidth-optimal). Each block of
// S/n bytes travels as C = ceil(S/(n c)) chunks, so the time is about
// (2(n-1) + C - 1) * (α + c β): the pipeline fills once, then chunks stream.
// Reduce-scatter and all-gather alone: n-1 steps, (n-1)/n * S bytes each
// way. Broadcast is a chain root -> root+1 -> ...: (n-1 + C - 1)(α + c β).
//
// Every element is reduced along one chain that starts at the rank after its
// block's owner-to-be and ends at the owner, each step computing
// op(partial so far, own value): one fixed order, one owner, who divides for
// avg before the all-gather copies the result to everyone.
#include <cstring>

#include "comm/algo/algorithms.hpp"
#include "comm/algo/pipeline.hpp"

namespace braid::comm {

size_t ring_chunk_count(size_t len, size_t chunk_elems, size_t steps) {
  if (chunk_elems == 0) chunk_elems = 1;
  size_t chunks = len == 0 ? 1 : (len + chunk_elems - 1) / chunk_elems;
  size_t cap = kMaxMessages / (steps + 1);
  if (chunks > cap) chunks = cap;
  return chunks < 1 ? 1 : chunks;
}

namespace {

inline int mod(int x, int n) { return ((x % n) + n) % n; }

// Below this the closing acknowledgement would cost more than the copies it
// saves (a loopback TCP message takes ~40 us; 4 MiB copies in ~0.5 ms).
constexpr size_t kLendAllGatherMin = 4 << 20;

bool ring_lends_all_gather(const Collective& c, int peer, size_t vector_bytes) {
  return c.lend_sends && vector_bytes >= kLendAllGatherMin && c.pair_is_tcp(peer);
}

// Piece k of C of a block [at, at + len): balanced split.
struct Piece {
  size_t off;  // element offset in the vector
  size_t len;  // elements
};
inline Piece piece_of(const Partition& p, int block, size_t k, size_t chunks) {
  size_t len = p.len(block);
  size_t lo = len * k / chunks, hi = len * (k + 1) / chunks;
  return {p.at(block) + lo, hi - lo};
}

}  // namespace

void ring_all_reduce(const Collective& c, const void* in, void* out, size_t count) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem;
  const char* ib = static_cast<const char*>(in);
  char* ob = static_cast<char*>(out);
  if (n == 1) {
    if (in != out) std::memcpy(out, in, count * es);
    c.finalize_owned(out, count);
    return;
  }
  const Partition p = Partition::balanced(count, n);
  const size_t steps = 2 * static_cast<size_t>(n - 1);
  const size_t C = ring_chunk_count(p.max_len(), c.chunk_elems(), steps);
  const int right = mod(r + 1, n), left = mod(r - 1, n);
  // Large all-reduces over TCP end with an empty message to the left
  // neighbour once everything from it has arrived: the right neighbour's
  // acknowledgement proves it has read every byte we sent, so the all-gather
  // sends may lend their pages too (one kernel copy per byte on loopback
  // instead of two) for the price of one message latency. Both ends of a
  // pair see the same transport and every rank the same size and setting
  // (lend_sends is part of the check value), so they agree on whether the
  // acknowledgement is sent.
  const uint32_t ack_msg = static_cast<uint32_t>(steps * C);
  const bool ack_right = ring_lends_all_gather(c, right, count * es);
  const bool ack_left = ring_lends_all_gather(c, left, count * es);
  net::RequestPtr ack_from_right = ack_right ? c.recv(right, nullptr, 0, ack_msg) : nullptr;
  // At step t this rank sends block r-t-1 and receives block r-t-2 (mod n):
  // steps 0..n-2 reduce (the last one completes block r here), steps
  // n-1..2n-3 pass the finished blocks on.
  run_pipeline(
      c, steps * C, C,
      [&](size_t m) -> net::RequestPtr {
        const int t = static_cast<int>(m / C);
        const Piece pc = piece_of(p, mod(r - t - 2, n), m % C, C);
        if (pc.len == 0) return nullptr;
        if (t < n - 1)
          return c.recv_reduce(left, ob + pc.off * es, ib + pc.off * es, pc.len * es, static_cast<uint32_t>(m),
                               /*incoming_first=*/true);
        return c.recv(left, ob + pc.off * es, pc.len * es, static_cast<uint32_t>(m));
      },
      [&](size_t m) {
        const int t = static_cast<int>(m / C);
        if (t != n - 2) return;
        const Piece pc = piece_of(p, r, m % C, C);  // this rank owns block r
        c.finalize_owned(ob + pc.off * es, pc.len);
      },
      [&](size_t m) -> net::RequestPtr {
        const int t = static_cast<int>(m / C);
        const Piece pc = piece_of(p, mod(r - t - 1, n), m % C, C);
        if (pc.len == 0) return nullptr;
        const char* src = t == 0 ? ib : ob;
        // Reduce-scatter steps may lend their pages: the finished block comes
        // back to this rank in the all-gather only after the right
        // neighbour has received (and reduced) what we send now, and this
        // rank writes that region only then (and the operation completes
        // only after it). All-gather sends have no such answer, except the
        // closing acknowledgement below; without it they are copied.
        if (t < n - 1 || ack_right) return c.send_lent(right, src + pc.off * es, pc.len * es, static_cast<uint32_t>(m));
        return c.send(right, src + pc.off * es, pc.len * es, static_cast<uint32_t>(m));
      },
      no_buffer_reuse);
  if (ack_left) c.wait(c.send(left, nullptr, 0, ack_msg));
  if (ack_from_right) c.wait(ack_from_right);
}

void ring_reduce_scatter(const Collective& c, const void* in, void* out, const Partition& p) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem;
  const char* ib = static_cast<const char*>(in);
  char* ob = static_cast<char*>(out);
  if (n == 1) {
    if (in != out) std::memcpy(out, ib + p.at(0) * es, p.len(0) * es);
    c.finalize_owned(out, p.len(0));
    return;
  }
  const size_t steps = static_cast<size_t>(n - 1);
  const size_t C = ring_chunk_count(p.max_len(), c.chunk_elems(), steps);
  // Partial sums of the blocks passing through live in two alternating slots
  // (received at step t, forwarded at t+1); chunk k sits at k*stride in its
  // slot whatever the block's length, so a chunk's region is reused only by
  // the same chunk two steps later — after its forward has completed.
  const size_t stride = (p.max_len() + C - 1) / C;
  char* slots = steps > 1 ? static_cast<char*>(c.scratch().get(Scratch::kAlgo, 2 * C * stride * es)) : nullptr;
  auto slot_at = [&](int t, size_t k) { return slots + ((static_cast<size_t>(t) % 2) * C * stride + k * stride) * es; };
  const int right = mod(r + 1, n), left = mod(r - 1, n);
  // Step t: send block r-t-1, receive block r-t-2 (the last step: block r).
  run_pipeline(
      c, steps * C, C,
      [&](size_t m) -> net::RequestPtr {
        const int t = static_cast<int>(m / C);
        const size_t k = m % C;
        const int b = mod(r - t - 2, n);
        const Piece pc = piece_of(p, b, k, C);
        if (pc.len == 0) return nullptr;
        char* dst = t == n - 2 ? ob + (pc.off - p.at(b)) * es : slot_at(t, k);
        return c.recv_reduce(left, dst, ib + pc.off * es, pc.len * es, static_cast<uint32_t>(m), true);
      },
      [&](size_t m) {
        const int t = static_cast<int>(m / C);
        if (t != n - 2) return;
        const Piece pc = piece_of(p, r, m % C, C);
        c.finalize_owned(ob + (pc.off - p.at(r)) * es, pc.len);
      },
      [&](size_t m) -> net::RequestPtr {
        const int t = static_cast<int>(m / C);
        const size_t k = m % C;
        const Piece pc = piece_of(p, mod(r - t - 1, n), k, C);
        if (pc.len == 0) return nullptr;
        const char* src = t == 0 ? ib + pc.off * es : slot_at(t - 1, k);
        return c.send(right, src, pc.len * es, static_cast<uint32_t>(m));
      },
      [&](size_t m) -> long {
        // Receive into slot (t % 2, k) only after the send of step t-1 that
        // read it (message m - C) completed.
        // (The last step writes `out`, not a slot.)
        const int t = static_cast<int>(m / C);
        return t >= 2 && t < n - 2 ? static_cast<long>(m - C) : -1;
      });
}

void ring_all_gather(const Collective& c, const void* in, void* out, const Partition& p) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem;
  char* ob = static_cast<char*>(out);
  char* mine = ob + p.at(r) * es;
  if (in != mine && p.len(r)) std::memcpy(mine, in, p.len(r) * es);
  if (n == 1) return;
  const size_t steps = static_cast<size_t>(n - 1);
  const size_t C = ring_chunk_count(p.max_len(), c.chunk_elems(), steps);
  const int right = mod(r + 1, n), left = mod(r - 1, n);
  // Step t: send block r-t, receive block r-t-1.
  run_pipeline(
      c, steps * C, C,
      [&](size_t m) -> net::RequestPtr {
        const int t = static_cast<int>(m / C);
        const Piece pc = piece_of(p, mod(r - t - 1, n), m % C, C);
        if (pc.len == 0) return nullptr;
        return c.recv(left, ob + pc.off * es, pc.len * es, static_cast<uint32_t>(m));
      },
      [](size_t) {},
      [&](size_t m) -> net::RequestPtr {
        const int t = static_cast<int>(m / C);
        const Piece pc = piece_of(p, mod(r - t, n), m % C, C);
        if (pc.len == 0) return nullptr;
        return c.send(right, ob + pc.off * es, pc.len * es, static_cast<uint32_t>(m));
      },
      no_buffer_reuse);
}

void ring_broadcast(const Collective& c, void* buf, size_t count, int root) {
  const int n = c.size(), r = c.rank();
  if (n == 1) return;
  const size_t es = c.elem;
  char* b = static_cast<char*>(buf);
  const int v = mod(r - root, n);  // position in the chain
  const int next = mod(r + 1, n), prev = mod(r - 1, n);
  const Partition whole = Partition::balanced(count, 1);
  const size_t C = ring_chunk_count(count, c.chunk_elems(), 1);
  // Chunk k is forwarded as soon as it arrived (lag 0); the root has nothing
  // to receive and the last rank nothing to forward.
  run_pipeline(
      c, C, v == 0 ? C : 0,
      [&](size_t k) -> net::RequestPtr {
        if (v == 0) return nullptr;
        const Piece pc = piece_of(whole, 0, k, C);
        if (pc.len == 0) return nullptr;
        return c.recv(prev, b + pc.off * es, pc.len * es, static_cast<uint32_t>(k));
      },
      [](size_t) {},
      [&](size_t k) -> net::RequestPtr {
        if (v == n - 1) return nullptr;
        const Piece pc = piece_of(whole, 0, k, C);
        if (pc.len == 0) return nullptr;
        return c.send(next, b + pc.off * es, pc.len * es, static_cast<uint32_t>(k));
      },
      no_buffer_reuse);
}

}  // namespace braid::comm
