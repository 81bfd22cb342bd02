// Recursive halving / doubling (Rabenseifner), for any world size.
//
// Cost model (n ranks, p = largest power of two <= n, r = n - p, L = log2 p,
// S bytes, α latency, β seconds per byte):
//  * all-reduce, S > 4 KiB: reduce-scatter by recursive halving (L steps,
//    S/2 + S/4 + ... bytes) then all-gather by recursive doubling (L steps,
//    the same bytes): 2L α + 2 (p-1)/p S β — few steps, bandwidth-optimal.
//  * all-reduce, S <= 4 KiB: recursive doubling of the whole vector, L steps
//    of S bytes each way: L α + L S β — the fewest message latencies.
//  * n not a power of two: first the r ranks 2i (i < r) hand their vector to
//    rank 2i+1 and sit out (one step of S bytes), at the end they get the
//    result back (one more): + 2 (α + S β) for those pairs.
//  * reduce-scatter / all-gather alone: L steps, (p-1)/p S bytes.
// Exchanges larger than a chunk are split into chunks with a window in
// flight, so the reduction of one chunk (fused into its receive) overlaps
// the transfer of the next.
//
// Order: at every step the kept half is op(lower vrank's data, higher
// vrank's data), and each block is reduced by exactly one rank (its final
// owner) before the doubling phase copies it. The small-message path computes
// each step on both partners, with the same operands in the same order, so
// both hold identical bytes.
#include <cstring>
#include <vector>

#include "comm/algo/algorithms.hpp"
#include "comm/algo/pipeline.hpp"

namespace braid::comm {

namespace {

constexpr size_t kWholeVectorBytes = 4096;

// The fold of a non-power-of-two group onto p active "virtual ranks".
struct Fold {
  int n, p, rem;
  explicit Fold(int size) : n(size), p(1), rem(0) {
    while (p * 2 <= n) p *= 2;
    rem = n - p;
  }
  // vrank of a rank, -1 for the ranks that sit out.
  int vrank(int r) const {
    if (r < 2 * rem) return (r % 2) ? r / 2 : -1;
    return r - rem;
  }
  int rank_of(int v) const { return v < rem ? 2 * v + 1 : v + rem; }
  // First of the (one or two) blocks a vrank stands for.
  int first_block(int v) const { return v < rem ? 2 * v : v + rem; }
  int steps() const {
    int l = 0;
    while ((1 << l) < p) ++l;
    return l;
  }
};

// Sends [send, send_len) and receives [recv_dst, recv_len) with one peer,
// each split into chunks with `window` in flight. If `local` is set the
// receive is reduced: recv_dst = op(local, incoming) (or incoming first).
void exchange(const Collective& c, int peer, const char* send, size_t send_len, char* recv_dst,
              const char* local, size_t recv_len, bool incoming_first, uint32_t msg_base, size_t max_chunks) {
  const size_t es = c.elem, ce = c.chunk_elems();
  // Both sides split a range the same way: ceil(len / chunk) pieces, at most
  // max_chunks (the tag range of one step).
  auto pieces = [&](size_t len) {
    if (len == 0) return size_t{0};
    size_t k = (len + ce - 1) / ce;
    return k > max_chunks ? max_chunks : k;
  };
  const size_t cs = pieces(send_len), cr = pieces(recv_len);
  const size_t W = c.window < 1 ? 1 : static_cast<size_t>(c.window);
  std::vector<net::RequestPtr> sends, recvs;
  sends.reserve(cs);
  recvs.reserve(cr);
  size_t sp = 0, rp = 0, sd = 0, rd = 0;
  while (sd < cs || rd < cr) {
    while (rp < cr && rp < rd + W) {
      size_t lo = recv_len * rp / cr, hi = recv_len * (rp + 1) / cr;
      uint32_t msg = msg_base + static_cast<uint32_t>(rp);
      recvs.push_back(local ? c.recv_reduce(peer, recv_dst + lo * es, local + lo * es, (hi - lo) * es, msg,
                                            incoming_first)
                            : c.recv(peer, recv_dst + lo * es, (hi - lo) * es, msg));
      ++rp;
    }
    while (sp < cs && sp < sd + W) {
      size_t lo = send_len * sp / cs, hi = send_len * (sp + 1) / cs;
      sends.push_back(c.send(peer, send + lo * es, (hi - lo) * es, msg_base + static_cast<uint32_t>(sp)));
      ++sp;
    }
    if (rd < cr) {
      c.wait(recvs[rd]);
      recvs[rd].reset();
      ++rd;
    } else {
      c.wait(sends[sd]);
      sends[sd].reset();
      ++sd;
    }
    while (sd < sp && request_finished(sends[sd])) sends[sd++].reset();
  }
}

// Elements [lo, hi) covered by the vranks [vlo, vhi).
struct Range {
  size_t lo, hi;
  size_t len() const { return hi - lo; }
};
Range range_of(const Fold& f, const Partition& p, int vlo, int vhi) {
  return {p.at(f.first_block(vlo)), p.at(f.first_block(vhi))};
}

// The recursive halving reduce-scatter among the active ranks, in place in
// `work` (which holds the full vector), reading the first step's own data
// from `src`. Leaves this vrank's blocks reduced in `work`. Messages use
// steps 1..L of the numbering (step * max_chunks + chunk).
void halving(const Collective& c, const Fold& f, const Partition& p, int v, const char* src, char* work,
             size_t max_chunks) {
  const size_t es = c.elem;
  int lo = 0, width = f.p;
  for (int k = 0; k < f.steps(); ++k) {
    const int half = width / 2;
    const int partner = v ^ half;
    const bool upper = (v & half) != 0;
    const int keep_lo = upper ? lo + half : lo, send_lo = upper ? lo : lo + half;
    const Range keep = range_of(f, p, keep_lo, keep_lo + half);
    const Range give = range_of(f, p, send_lo, send_lo + half);
    const char* from = k == 0 ? src : work;
    exchange(c, f.rank_of(partner), from + give.lo * es, give.len(), work + keep.lo * es, from + keep.lo * es,
             keep.len(), /*incoming_first=*/partner < v, static_cast<uint32_t>((1 + k) * max_chunks), max_chunks);
    lo = keep_lo;
    width = half;
  }
}

// The recursive doubling all-gather among the active ranks, in `work`:
// this vrank's blocks are in place, the others arrive. Steps L+1..2L.
void doubling(const Collective& c, const Fold& f, const Partition& p, int v, char* work, size_t max_chunks) {
  const size_t es = c.elem;
  const int L = f.steps();
  for (int k = 0; k < L; ++k) {
    const int width = 1 << k;  // vranks held so far: the aligned group of `width` containing v
    const int mine_lo = v & ~(width - 1);
    const int partner_lo = mine_lo ^ width;
    const Range mine = range_of(f, p, mine_lo, mine_lo + width);
    const Range theirs = range_of(f, p, partner_lo, partner_lo + width);
    exchange(c, f.rank_of(v ^ width), work + mine.lo * es, mine.len(), work + theirs.lo * es, nullptr,
             theirs.len(), false, static_cast<uint32_t>((1 + L + k) * max_chunks), max_chunks);
  }
}

size_t max_chunks_for(const Collective& c, size_t count, int steps_total) {
  size_t chunks = ring_chunk_count(count, c.chunk_elems(), 1);
  size_t cap = kMaxMessages / static_cast<size_t>(steps_total);
  return chunks > cap ? cap : chunks;
}

// Whole-vector recursive doubling for small messages.
void small_all_reduce(const Collective& c, const Fold& f, const void* in, void* out, size_t count) {
  const int r = c.rank();
  const size_t bytes = count * c.elem;
  const int v = f.vrank(r);
  const int L = f.steps();
  const uint32_t post_msg = static_cast<uint32_t>(L + 1);
  if (r < 2 * f.rem && v < 0) {  // hand the vector to r+1, get the result back
    net::RequestPtr g = c.recv(r + 1, out, bytes, post_msg);
    net::RequestPtr s = c.send(r + 1, in, bytes, 0);
    c.wait(s);
    c.wait(g);
    return;
  }
  const char* cur = static_cast<const char*>(in);
  if (r < 2 * f.rem) {  // odd: out = op(x[r-1], x[r])
    c.wait(c.recv_reduce(r - 1, out, in, bytes, 0, /*incoming_first=*/true));
    cur = static_cast<const char*>(out);
  }
  char* tmp = static_cast<char*>(c.scratch().get(Scratch::kSmall, bytes));
  for (int k = 0; k < L; ++k) {
    const int partner = v ^ (1 << k);
    const int peer = f.rank_of(partner);
    net::RequestPtr g = c.recv(peer, tmp, bytes, static_cast<uint32_t>(1 + k));
    net::RequestPtr s = c.send(peer, cur, bytes, static_cast<uint32_t>(1 + k));
    c.wait(g);
    c.wait(s);  // `cur` may be `out`, which is overwritten next
    if (v < partner) c.reduce(out, cur, tmp, count);
    else c.reduce(out, tmp, cur, count);
    cur = static_cast<const char*>(out);
  }
  if (cur != out) std::memcpy(out, cur, bytes);
  c.finalize_owned(out, count);
  if (r < 2 * f.rem) c.wait(c.send(r - 1, out, bytes, post_msg));
}

}  // namespace

void rhd_all_reduce(const Collective& c, const void* in, void* out, size_t count) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem;
  if (n == 1) {
    if (in != out) std::memcpy(out, in, count * es);
    c.finalize_owned(out, count);
    return;
  }
  const Fold f(n);
  if (count * es <= kWholeVectorBytes) {
    small_all_reduce(c, f, in, out, count);
    return;
  }
  const int L = f.steps();
  const size_t mc = max_chunks_for(c, count, 2 * L + 2);
  const uint32_t post_base = static_cast<uint32_t>((2 * L + 1) * mc);
  const Partition p = Partition::balanced(count, n);
  char* work = static_cast<char*>(out);
  const int v = f.vrank(r);
  if (v < 0) {  // sits out: hand over the vector, receive the result
    exchange(c, r + 1, static_cast<const char*>(in), count, nullptr, nullptr, 0, false, 0, mc);
    exchange(c, r + 1, nullptr, 0, work, nullptr, count, false, post_base, mc);
    return;
  }
  const char* src = static_cast<const char*>(in);
  if (r < 2 * f.rem) {  // odd partner of a rank that sits out: work = op(x[r-1], x[r])
    exchange(c, r - 1, nullptr, 0, work, src, count, /*incoming_first=*/true, 0, mc);
    src = work;
  }
  halving(c, f, p, v, src, work, mc);
  const Range own = range_of(f, p, v, v + 1);
  c.finalize_owned(work + own.lo * es, own.len());
  doubling(c, f, p, v, work, mc);
  if (r < 2 * f.rem) exchange(c, r - 1, work, count, nullptr, nullptr, 0, false, post_base, mc);
}

void rhd_reduce_scatter(const Collective& c, const void* in, void* out, const Partition& p) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem;
  const char* ib = static_cast<const char*>(in);
  if (n == 1) {
    if (in != out) std::memcpy(out, ib + p.at(0) * es, p.len(0) * es);
    c.finalize_owned(out, p.len(0));
    return;
  }
  const Fold f(n);
  const int L = f.steps();
  const size_t total = p.total();
  const size_t mc = max_chunks_for(c, total, 2 * L + 2);
  const uint32_t post_base = static_cast<uint32_t>((2 * L + 1) * mc);
  const int v = f.vrank(r);
  if (v < 0) {  // hand over the vector; the partner returns this rank's block
    exchange(c, r + 1, ib, total, nullptr, nullptr, 0, false, 0, mc);
    exchange(c, r + 1, nullptr, 0, static_cast<char*>(out), nullptr, p.len(r), false, post_base, mc);
    return;
  }
  char* work = static_cast<char*>(c.scratch().get(Scratch::kAlgo, total * es));
  const char* src = ib;
  if (r < 2 * f.rem) {
    exchange(c, r - 1, nullptr, 0, work, ib, total, true, 0, mc);
    src = work;
  }
  halving(c, f, p, v, src, work, mc);
  if (r < 2 * f.rem) {  // this rank reduced block r-1 too: finish it and send it to its owner
    c.finalize_owned(work + p.at(r - 1) * es, p.len(r - 1));
    exchange(c, r - 1, work + p.at(r - 1) * es, p.len(r - 1), nullptr, nullptr, 0, false, post_base, mc);
  }
  c.finalize_owned(work + p.at(r) * es, p.len(r));
  if (p.len(r)) std::memcpy(out, work + p.at(r) * es, p.len(r) * es);
}

void rhd_all_gather(const Collective& c, const void* in, void* out, const Partition& p) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem;
  char* ob = static_cast<char*>(out);
  char* mine = ob + p.at(r) * es;
  if (in != mine && p.len(r)) std::memcpy(mine, in, p.len(r) * es);
  if (n == 1) return;
  const Fold f(n);
  const int L = f.steps();
  const size_t total = p.total();
  const size_t mc = max_chunks_for(c, total, 2 * L + 2);
  const uint32_t post_base = static_cast<uint32_t>((2 * L + 1) * mc);
  const int v = f.vrank(r);
  if (v < 0) {  // hand over the block, receive everything at the end
    exchange(c, r + 1, mine, p.len(r), nullptr, nullptr, 0, false, 0, mc);
    exchange(c, r + 1, nullptr, 0, ob, nullptr, total, false, post_base, mc);
    return;
  }
  if (r < 2 * f.rem)
    exchange(c, r - 1, nullptr, 0, ob + p.at(r - 1) * es, nullptr, p.len(r - 1), false, 0, mc);
  doubling(c, f, p, v, ob, mc);
  if (r < 2 * f.rem) exchange(c, r - 1, ob, total, nullptr, nullptr, 0, false, post_base, mc);
}

}  // namespace braid::comm
