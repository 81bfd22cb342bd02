#include "comm/algo/collective.hpp"

#include <sched.h>

#include <algorithm>

#include "comm/reduce.hpp"
#include "core/error.hpp"
#include "core/thread.hpp"
#include "net/tcp_pair.hpp"

namespace braid::comm {

void* Scratch::get(Slot slot, size_t bytes) {
  Buffer& b = buffers_[slot];
  if (b.size < bytes || !b.data) {
    // Grow geometrically, without initialising: the contents are scratch.
    size_t want = b.size * 2 > bytes ? b.size * 2 : bytes;
    if (want < 64) want = 64;
    b.data.reset(new (std::align_val_t{64}) std::byte[want]);
    b.size = want;
  }
  return b.data.get();
}

Partition Partition::balanced(size_t count, int n) {
  Partition p;
  p.offsets_.resize(static_cast<size_t>(n) + 1);
  const size_t base = count / static_cast<size_t>(n), extra = count % static_cast<size_t>(n);
  size_t at = 0;
  for (int b = 0; b < n; ++b) {
    p.offsets_[static_cast<size_t>(b)] = at;
    at += base + (static_cast<size_t>(b) < extra ? 1 : 0);
  }
  p.offsets_[static_cast<size_t>(n)] = at;
  return p;
}

Partition Partition::equal(size_t count, int n) {
  Partition p;
  p.offsets_.resize(static_cast<size_t>(n) + 1);
  for (int b = 0; b <= n; ++b) p.offsets_[static_cast<size_t>(b)] = count * static_cast<size_t>(b);
  return p;
}

size_t Partition::max_len() const {
  size_t m = 0;
  for (int b = 0; b < blocks(); ++b) m = len(b) > m ? len(b) : m;
  return m;
}

void Collective::reduce(void* dst, const void* a, const void* b, size_t count) const {
  combine(type, op, dst, a, b, count);
}

void Collective::finalize_owned(void* p, size_t count) const {
  if (avg_divisor > 1 && count) from_accumulation(type, p, p, count, avg_divisor);
}

size_t Collective::chunk_elems() const {
  size_t e = chunk_bytes / elem;
  return e ? e : 1;
}

net::RequestPtr Collective::send(int peer, const void* buf, size_t bytes, uint32_t msg) const {
  counters_->bytes_sent.fetch_add(bytes, std::memory_order_relaxed);
  return g_.mesh->pair(g_.mesh_ranks[peer]).isend(buf, bytes, tag(msg), meta_);
}

net::RequestPtr Collective::send_lent(int peer, const void* buf, size_t bytes, uint32_t msg) const {
  net::Pair& pair = g_.mesh->pair(g_.mesh_ranks[peer]);
  // Only TCP gains from lending (one kernel copy instead of two); the Pair
  // contract has no such call, so ask the concrete transport.
  if (lend_sends) {
    if (auto* tcp = dynamic_cast<net::TcpPair*>(&pair)) {
      counters_->bytes_sent.fetch_add(bytes, std::memory_order_relaxed);
      return tcp->isend_lent(buf, bytes, tag(msg), meta_);
    }
  }
  return send(peer, buf, bytes, msg);
}

bool Collective::pair_is_tcp(int peer) const {
  return dynamic_cast<net::TcpPair*>(&g_.mesh->pair(g_.mesh_ranks[peer])) != nullptr;
}

net::RequestPtr Collective::recv(int peer, void* buf, size_t bytes, uint32_t msg) const {
  counters_->bytes_received.fetch_add(bytes, std::memory_order_relaxed);
  return g_.mesh->pair(g_.mesh_ranks[peer]).irecv(buf, bytes, tag(msg), meta_);
}

net::RequestPtr Collective::recv_reduce(int peer, void* dst, const void* local, size_t bytes, uint32_t msg,
                                        bool incoming_first) const {
  counters_->bytes_received.fetch_add(bytes, std::memory_order_relaxed);
  return g_.mesh->pair(g_.mesh_ranks[peer])
      .irecv_reduce(dst, local, bytes, tag(msg), combiner(type, op, incoming_first), meta_);
}

void Collective::spin_for(const net::Request& r) const {
  if (!r.done() && spin_ns > 0) {
    net::Progress* progress = g_.mesh->progress();
    if (progress) {
      const int64_t until = now_ns() + spin_ns;
      for (uint32_t i = 1; !r.done(); ++i) {
        if (!progress->progress()) cpu_relax();
        if ((i & 31) == 0 && now_ns() > until) break;
      }
    } else {
      // Only the I/O thread can complete this request, and on a busy host it
      // may need this very core: yield rather than pause (a spinning
      // SCHED_FIFO thread keeps the woken I/O thread off its core). Measured
      // over loopback TCP at 4 MiB, medians of interleaved runs: a 20 us
      // pause loop per wait ~15% slower than no spin, a 20 us yield loop ~6%
      // faster than no spin.
      const int64_t until = now_ns() + spin_ns / 50;
      while (!r.done() && now_ns() < until) sched_yield();
    }
  }
}

void Collective::wait(const net::RequestPtr& r) const {
  if (!r) return;
  // Spin first, driving the inline progress of shared memory, for a bounded
  // time: a collective's next message usually arrives within microseconds,
  // and giving up the CPU (Request::wait yields, then sleeps) costs tens of
  // microseconds whenever the machine is busy — and once one rank sleeps,
  // its peer soon does too, and every step then costs a sleep. Without inline
  // progress (TCP, threads) another thread does the work and needs the CPU,
  // so spin only briefly.
  spin_for(*r);
  r->wait(deadline_);
}

namespace {
// How long wait_either waits for its first request alone. A receive held up
// longer than this may be waiting for one of our sends (the ring's
// deadlock): the cost of a stalled pipeline noticing it.
constexpr double kWaitAloneS = 0.005;
}  // namespace

void Collective::wait_either(const net::RequestPtr& a, const net::RequestPtr& b) const {
  if (a->done()) {
    a->test();
    return;
  }
  // First spin for `a` alone, as wait() does. The pipeline calls this with a
  // receive and its oldest send; returning for every send completion would
  // let sends run ahead of the peer's posted receives, and over shared
  // memory each early message is then buffered in fresh memory and copied
  // twice (16 MiB all-reduce of 2 ranks: ~7x slower). A receive that is
  // coming arrives within the spin; only a stalled one needs the send.
  spin_for(*a);
  if (!a->done()) {
    // Then wait for `a` alone a little longer (sleeping), before taking a
    // finished send as a reason to return.
    const double alone_s = std::min(kWaitAloneS, std::max(0.0, deadline_.remaining_ns() * 1e-9));
    try {
      a->wait(Deadline::in_seconds(alone_s));
    } catch (const braid::Timeout&) {
      // not yet: wait for either below
    }
  }
  if (!a->done() && !net::Request::wait_either(*a, *b, deadline_))
    throw braid::Timeout("request did not complete before its deadline",
                         "a peer is slow, hung or unreachable; raise the collective timeout if the link is slow");
  // test() drives progress when the request is pending, and over shared
  // memory progress takes in messages that have no receive posted yet
  // (buffered, copied twice): only a finished request is looked at.
  a->test();
  if (b->done()) b->test();
}

void Collective::wait_all(std::vector<net::RequestPtr>& rs) const {
  for (auto& r : rs) {
    wait(r);
    r.reset();
  }
}

Collective Collective::subgroup(const std::vector<int>& members, std::vector<int>& mesh_ranks_storage,
                                uint32_t phase) const {
  mesh_ranks_storage.clear();
  int me = -1;
  for (size_t i = 0; i < members.size(); ++i) {
    mesh_ranks_storage.push_back(g_.mesh_ranks[members[i]]);
    if (members[i] == g_.rank) me = static_cast<int>(i);
  }
  Collective s(*this);
  s.g_ = Group{g_.mesh, mesh_ranks_storage.data(), static_cast<int>(members.size()), me};
  s.msg_base_ = msg_base_ + phase * kPhaseStride;
  return s;
}

}  // namespace braid::comm
