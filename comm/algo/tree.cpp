// Pipelined binary tree.
//
// Cost model (n ranks, depth D = floor(log2 n), S bytes in C chunks of c
// bytes, α latency, β seconds per byte): all-reduce = reduce up the tree to
// rank 0, then broadcast down: 2 (D + C - 1) (α + 2 c β) — each inner node
// receives two chunks per step. Few steps for small S (2D latencies), and the
// pipeline keeps every level busy for medium S; for large S the ring wins
// (it moves 2(n-1)/n S per rank instead of up to 2 S through inner nodes).
// Broadcast alone: (D + C - 1)(α + 2 c β).
//
// Order: each inner node computes op(op(own, left subtree), right subtree);
// the root owns every element (divides for avg) and the broadcast copies its
// bytes, so every rank ends identical.
#include <cstring>
#include <deque>
#include <vector>

#include "comm/algo/algorithms.hpp"
#include "comm/algo/pipeline.hpp"

namespace braid::comm {

namespace {

struct TreePos {
  int n, root, v;
  int parent() const { return v == 0 ? -1 : rank_of((v - 1) / 2); }
  int child(int i) const {
    int cv = 2 * v + 1 + i;
    return cv < n ? rank_of(cv) : -1;
  }
  int rank_of(int vv) const { return (vv + root) % n; }
};

// Outstanding sends, reaped in order; at most `limit` in flight.
class SendQueue {
 public:
  SendQueue(const Collective& c, size_t limit) : c_(c), limit_(limit) {}
  void push(net::RequestPtr r) {
    if (!r) return;
    q_.push_back(std::move(r));
    while (!q_.empty() && request_finished(q_.front())) q_.pop_front();
    while (q_.size() > limit_) {
      c_.wait(q_.front());
      q_.pop_front();
    }
  }
  void drain() {
    while (!q_.empty()) {
      c_.wait(q_.front());
      q_.pop_front();
    }
  }

 private:
  const Collective& c_;
  size_t limit_;
  std::deque<net::RequestPtr> q_;
};

struct Chunking {
  size_t count, chunks;
  size_t lo(size_t k) const { return count * k / chunks; }
  size_t len(size_t k) const { return count * (k + 1) / chunks - lo(k); }
};

// Down the tree: receive each chunk from the parent (unless root) and
// forward it to the children.
void tree_down(const Collective& c, const TreePos& t, char* buf, const Chunking& ch, uint32_t msg_base,
               SendQueue& sends) {
  const size_t es = c.elem;
  const size_t W = c.window < 1 ? 1 : static_cast<size_t>(c.window);
  const int parent = t.parent();
  std::vector<net::RequestPtr> recvs(W);
  size_t posted = 0;
  for (size_t k = 0; k < ch.chunks; ++k) {
    if (parent >= 0) {
      while (posted < ch.chunks && posted < k + W) {
        recvs[posted % W] = c.recv(parent, buf + ch.lo(posted) * es, ch.len(posted) * es,
                                   msg_base + static_cast<uint32_t>(posted));
        ++posted;
      }
      c.wait(recvs[k % W]);
      recvs[k % W].reset();
    }
    for (int i = 0; i < 2; ++i) {
      int child = t.child(i);
      if (child >= 0)
        sends.push(c.send(child, buf + ch.lo(k) * es, ch.len(k) * es, msg_base + static_cast<uint32_t>(k)));
    }
  }
}

}  // namespace

void tree_all_reduce(const Collective& c, const void* in, void* out, size_t count) {
  const int n = c.size();
  const size_t es = c.elem;
  const char* ib = static_cast<const char*>(in);
  char* ob = static_cast<char*>(out);
  if (n == 1) {
    if (in != out) std::memcpy(out, in, count * es);
    c.finalize_owned(out, count);
    return;
  }
  const TreePos t{n, 0, c.rank()};
  const Chunking ch{count, ring_chunk_count(count, c.chunk_elems(), 2)};
  const size_t W = c.window < 1 ? 1 : static_cast<size_t>(c.window);
  const int left = t.child(0), right = t.child(1), parent = t.parent();
  SendQueue sends(c, 2 * W);
  // Up: chunk k of this subtree's partial is op(op(own, left), right).
  // The left child's chunk is reduced as it arrives (into out); the right
  // child's lands in a scratch slot and is folded in after.
  const size_t stride = (count + ch.chunks - 1) / ch.chunks;  // the longest chunk
  char* slots = right >= 0 ? static_cast<char*>(c.scratch().get(Scratch::kAlgo, W * stride * es)) : nullptr;
  std::vector<net::RequestPtr> lreq(W), rreq(W);
  size_t posted = 0;
  for (size_t k = 0; k < ch.chunks; ++k) {
    while (left >= 0 && posted < ch.chunks && posted < k + W) {
      const size_t lo = ch.lo(posted), len = ch.len(posted);
      const uint32_t msg = static_cast<uint32_t>(posted);
      lreq[posted % W] = c.recv_reduce(left, ob + lo * es, ib + lo * es, len * es, msg, /*incoming_first=*/false);
      if (right >= 0) rreq[posted % W] = c.recv(right, slots + (posted % W) * stride * es, len * es, msg);
      ++posted;
    }
    const size_t lo = ch.lo(k), len = ch.len(k);
    const char* partial = ib + lo * es;  // a leaf sends its own data
    if (left >= 0) {
      c.wait(lreq[k % W]);
      lreq[k % W].reset();
      if (right >= 0) {
        c.wait(rreq[k % W]);
        rreq[k % W].reset();
        c.reduce(ob + lo * es, ob + lo * es, slots + (k % W) * stride * es, len);
      }
      partial = ob + lo * es;
    }
    if (parent >= 0) {
      sends.push(c.send(parent, partial, len * es, static_cast<uint32_t>(k)));
    } else {
      c.finalize_owned(ob + lo * es, len);
    }
  }
  // Down: the root's bytes go to everyone.
  tree_down(c, t, ob, ch, static_cast<uint32_t>(ch.chunks), sends);
  sends.drain();
}

void tree_broadcast(const Collective& c, void* buf, size_t count, int root) {
  const int n = c.size();
  if (n == 1) return;
  const TreePos t{n, root, (c.rank() - root + n) % n};
  const Chunking ch{count, ring_chunk_count(count, c.chunk_elems(), 1)};
  const size_t W = c.window < 1 ? 1 : static_cast<size_t>(c.window);
  SendQueue sends(c, 2 * W);
  tree_down(c, t, static_cast<char*>(buf), ch, 0, sends);
  sends.drain();
}

}  // namespace braid::comm
