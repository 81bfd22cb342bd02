#pragma once
// The chunk pipeline shared by the ring-shaped algorithms: M messages are
// received in order from one peer and M sent to another, message m being sent
// once received message m - lag has arrived (lag = chunks per block for the
// ring: a chunk is forwarded one step after it came in). Up to `window`
// receives are posted ahead and up to `window` sends are outstanding, so the
// transfer of one chunk, the reduction of the previous one (fused into the
// receive) and the sending of the one before overlap.
//
// Each message is a tiny state machine: posted -> arrived (reduced by the
// transport's combiner) -> on_recv (e.g. the owner's avg division) ->
// forwarded; the loop below advances whichever can advance and blocks only on
// the oldest outstanding receive (or, while the send window holds back a send
// that could go, on that receive or the oldest send, whichever finishes
// first; at the end, on the sends).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "comm/algo/collective.hpp"
#include "core/error.hpp"

namespace braid::comm {

// True once `r` completed (null counts as complete); rethrows its failure.
inline bool request_finished(const net::RequestPtr& r) {
  if (!r || !r->done()) return !r;
  return r->test();
}

// post_recv(m) -> RequestPtr (null: nothing to receive for m)
// on_recv(m)   after receive m completed, in order
// post_send(m) -> RequestPtr (null: nothing to send), called once m < received + lag
// recv_needs_send(m) -> index of a send that must have completed before
//                      receive m may be posted (buffer reuse), or -1
template <class PostRecv, class OnRecv, class PostSend, class RecvNeedsSend>
void run_pipeline(const Collective& c, size_t M, size_t lag, PostRecv&& post_recv, OnRecv&& on_recv,
                  PostSend&& post_send, RecvNeedsSend&& recv_needs_send) {
  const size_t W = c.window < 1 ? 1 : static_cast<size_t>(c.window);
  std::vector<net::RequestPtr> recvs(W);  // ring buffer by message index
  std::vector<net::RequestPtr> sends(W);
  size_t recv_posted = 0, recv_done = 0;
  size_t send_posted = 0, send_done = 0;  // sends [send_done, send_posted) are outstanding

  auto reap_sends = [&](bool block_for_one) {
    while (send_done < send_posted) {
      net::RequestPtr& s = sends[send_done % W];
      if (!request_finished(s)) {
        if (!block_for_one) return;
        c.wait(s);
        block_for_one = false;
      }
      s.reset();
      ++send_done;
    }
  };

  while (recv_done < M || send_posted < M) {
    // Keep `window` receives posted ahead (before sending: a message that
    // finds its receive posted lands in place instead of in a buffer).
    while (recv_posted < M && recv_posted < recv_done + W) {
      long need = recv_needs_send(recv_posted);
      if (need >= 0) {
        size_t n = static_cast<size_t>(need);
        if (n >= send_posted) break;  // its buffer is still waiting to be forwarded
        while (send_done <= n) reap_sends(true);
      }
      recvs[recv_posted % W] = post_recv(recv_posted);
      ++recv_posted;
    }
    // Forward whatever has arrived, within the send window.
    while (send_posted < M && send_posted < recv_done + lag) {
      if (send_posted - send_done >= W) {
        reap_sends(false);
        if (send_posted - send_done >= W) break;
      }
      sends[send_posted % W] = post_send(send_posted);
      ++send_posted;
    }
    if (recv_done < recv_posted) {
      net::RequestPtr& r = recvs[recv_done % W];
      // A full send window holding back a send that may go: wait for the
      // receive or the oldest send, whichever comes first. Waiting for the
      // receive alone can deadlock: this rank's next message is what the
      // ring needs to bring that receive (seen with 3 ranks, shm + TCP,
      // when a shm receiver buffered far ahead of its sends).
      if (r && !r->done() && send_posted < M && send_posted < recv_done + lag && send_posted - send_done >= W &&
          sends[send_done % W]) {
        c.wait_either(r, sends[send_done % W]);
        if (!r->done()) continue;  // a send finished: post the next one
      }
      if (r) c.wait(r);
      r.reset();
      on_recv(recv_done);
      ++recv_done;
      continue;
    }
    if (send_done < send_posted) {
      reap_sends(true);  // a full send window holds everything else back
      continue;
    }
    if (recv_done < M || send_posted < M)  // nothing outstanding, nothing can move
      throw Error("collective pipeline stalled", "this is a bug in braid's comm layer; please report it");
  }
  while (send_done < send_posted) reap_sends(true);
}

inline long no_buffer_reuse(size_t) { return -1; }

}  // namespace braid::comm
