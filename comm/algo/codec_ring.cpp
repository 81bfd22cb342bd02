// Compressed ring all-reduce: reduce-scatter in which every hop decodes the
// partial sum it receives, adds its own f32 values and re-encodes, then an
// all-gather of the ENCODED final blocks, which every rank (the owner
// included) decodes — so all ranks decode the same bytes and end with
// identical floats, although the codec is lossy.
//
// Cost model (n ranks, S f32 bytes, codec ratio k = encoded/f32 bytes,
// α latency per message, β seconds per byte): 2(n-1) steps, one message per
// step of k S/n bytes, so each rank sends 2(n-1)/n k S bytes and the time is
// about 2(n-1)(α + k S/n β) plus n encodes and decodes of S/n elements per
// rank. Unlike ring.cpp the blocks are not split into pipelined chunks: this
// is meant for links where α and β dominate, not memory bandwidth.
// Error: n encodes along each element's path (see comm/codec.hpp).
#include "comm/algo/codec_ring.hpp"

#include <cstring>

namespace braid::comm {
namespace {

inline int mod(int x, int n) { return ((x % n) + n) % n; }

}  // namespace

void codec_ring_all_reduce(const Collective& c, const Codec& codec, const float* in, float* out, size_t count,
                           bool avg) {
  const int n = c.size(), r = c.rank();
  if (n == 1) {
    // Still round-trip through the codec: the result is what the codec can
    // carry, whatever the group size (error feedback relies on it).
    void* enc = c.scratch().get(Scratch::kAlgo, codec.encoded_bytes(count));
    codec.encode(in, count, enc);
    codec.decode(enc, count, out);
    return;
  }
  const Partition p = Partition::balanced(count, n);
  const size_t max_enc = codec.encoded_bytes(p.max_len());
  auto* send_buf = static_cast<char*>(c.scratch().get(Scratch::kAlgo, 2 * max_enc + 64));
  auto* recv_buf = static_cast<char*>(c.scratch().get(Scratch::kAlgo2, 2 * max_enc + 64));
  auto* incoming = static_cast<float*>(c.scratch().get(Scratch::kAccum, p.max_len() * 4 + 64));
  const int right = mod(r + 1, n), left = mod(r - 1, n);

  // Reduce-scatter. Step t: send block r-t-1 (this rank's value at t = 0,
  // else the partial sum it completed at t-1), receive block r-t-2 and add
  // this rank's value after the incoming partial sum (one fixed order per
  // element: the chain starting at the rank after the owner).
  for (int t = 0; t < n - 1; ++t) {
    const int sb = mod(r - t - 1, n), rb = mod(r - t - 2, n);
    const size_t s_enc = codec.encoded_bytes(p.len(sb)), r_enc = codec.encoded_bytes(p.len(rb));
    net::RequestPtr rr = c.recv(left, recv_buf, r_enc, static_cast<uint32_t>(t));
    codec.encode((t == 0 ? in : out) + p.at(sb), p.len(sb), send_buf);
    net::RequestPtr sr = c.send(right, send_buf, s_enc, static_cast<uint32_t>(t));
    c.wait(rr);
    codec.decode(recv_buf, p.len(rb), incoming);
    const float* own = in + p.at(rb);
    float* dst = out + p.at(rb);
    for (size_t i = 0, len = p.len(rb); i < len; ++i) dst[i] = incoming[i] + own[i];
    c.wait(sr);
  }

  // This rank owns block r: divide once (avg), encode once, and decode the
  // very bytes it sends so that its copy equals everyone else's.
  float* mine = out + p.at(r);
  if (avg)
    for (size_t i = 0, len = p.len(r); i < len; ++i) mine[i] /= static_cast<float>(n);
  char* slot[2] = {send_buf, send_buf + max_enc + 32};
  codec.encode(mine, p.len(r), slot[0]);
  codec.decode(slot[0], p.len(r), mine);

  // All-gather of encoded blocks. Step t: forward block r-t (received at
  // t-1, or this rank's own at t = 0) unchanged, receive block r-t-1.
  for (int t = 0; t < n - 1; ++t) {
    const int sb = mod(r - t, n), rb = mod(r - t - 1, n);
    const uint32_t msg = static_cast<uint32_t>(n - 1 + t);
    char* from = slot[t % 2];
    char* into = slot[(t + 1) % 2];
    net::RequestPtr rr = c.recv(left, into, codec.encoded_bytes(p.len(rb)), msg);
    net::RequestPtr sr = c.send(right, from, codec.encoded_bytes(p.len(sb)), msg);
    c.wait(rr);
    codec.decode(into, p.len(rb), out + p.at(rb));
    c.wait(sr);
  }
}

}  // namespace braid::comm
