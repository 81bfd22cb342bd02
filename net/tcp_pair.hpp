#pragma once
// The TCP pair: `streams_per_peer` connections to one peer, progressed by the
// mesh's I/O thread (io_loop.hpp).
//
// Cost model. A message of n bytes is cut into frames of at most 1 MiB
// (48-byte header each) spread round-robin over the streams, so a long fat
// link gets S congestion windows. Sends go from the caller's buffer straight
// into the kernel (sendmsg with header+payload iovecs); small ones (<= 64 KiB)
// are written by the calling thread itself when the stream is idle, saving a
// thread hop. Receives land directly in the posted buffer (one kernel copy);
// irecv_reduce folds each piece into dst as it arrives, from a 128 KiB
// staging buffer that stays in cache. A message whose receive is not posted
// yet is buffered (one extra copy), up to unexpected_budget_bytes per pair;
// past that the pair stops reading and TCP flow control pushes back.
//
// Lent sends (isend_lent): the payload is vmsplice()d into a pipe and
// splice()d into the socket, so the kernel references the caller's pages
// instead of copying them; on loopback the receiver's recv() then copies
// straight from the sender's pages — one kernel copy per byte instead of two.
// The price is a stronger promise from the caller (see isend_lent).
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "net/fault_gate.hpp"
#include "net/frame.hpp"
#include "net/io_loop.hpp"
#include "net/mesh.hpp"
#include "net/pair_common.hpp"
#include "net/socket.hpp"

namespace braid::net {

class TcpPair;

// One queued frame (or the rest of one) to write.
struct SendItem {
  uint8_t hdr[kFrameHeaderBytes];
  const char* data = nullptr;  // payload (the caller's buffer, or `owned`)
  size_t len = 0;
  size_t done = 0;             // bytes of header+payload already written
  RequestPtr req;              // completed when the message's last frame is out
  std::shared_ptr<std::atomic<int>> frames_left;  // set when a message has several frames
  std::unique_ptr<char[]> owned;
  int64_t not_before = 0;      // fault injection: latency
  bool lent = false;           // payload goes by reference through the stream's pipe (isend_lent)
  size_t wire_bytes() const { return kFrameHeaderBytes + len; }
};

// A message being received, possibly over several streams.
struct InMsg {
  Tag tag = 0;
  uint32_t meta = 0;
  uint64_t total = 0;
  uint64_t remaining = 0;
  std::unique_ptr<RecvOp> op;       // the receive it lands in
  std::unique_ptr<char[]> buf;      // unexpected: buffered until a receive comes
  std::unique_ptr<RecvOp> late_op;  // receive posted while it was being buffered
  bool discard = false;             // its receive failed (Mismatch): drop the bytes
  bool drop_when_done = false;      // a late receive did not match (guarded by the pair's mu_)
  // Where a plain copy of piece bytes can go directly (null: needs staging).
  char* direct_base() const {
    if (discard) return nullptr;
    if (op) return op->reduce() ? nullptr : op->dst;
    return buf.get();
  }
};

class TcpStream final : public IoHandler {
 public:
  TcpStream(TcpPair* pair, int index, Fd fd, std::string addr);
  bool on_io(uint32_t events) override;
  int64_t next_timer_ns() override { return timer_at_; }

 private:
  friend class TcpPair;
  TcpPair* pair_;
  int index_;
  Fd fd_;
  std::string addr_;

  // Send side, guarded by send_mu_.
  std::mutex send_mu_;
  Fifo<SendItem> sendq_;
  bool tx_blocked_ = false;   // last write hit EAGAIN; EPOLLOUT will resume it
  bool closing_ = false;      // CLOSE queued: shut the write side once the queue drains
  bool write_shut_ = false;
  std::atomic<size_t> queued_bytes_{0};
  // Lent sends: header (copied) and payload (page references) wait in this
  // pipe until splice() moves them into the socket; nothing else is written
  // while it holds bytes, so the stream's byte order is kept.
  Fd pipe_r_, pipe_w_;
  size_t pipe_cap_ = 0;     // 0: not created yet (or creation failed: lent sends are copied)
  bool pipe_failed_ = false;
  size_t pipe_bytes_ = 0;

  // Receive side: loop thread (or a caller holding the pair's rx_mu_).
  std::unique_ptr<char[]> stage_;
  size_t stage_cap_ = 0, sb_ = 0, se_ = 0;
  bool rx_ready_ = false;
  std::atomic<bool> rx_stalled_{false};
  bool have_hdr_ = false;
  FrameHeader hdr_;
  uint32_t got_ = 0;
  InMsg* msg_ = nullptr;
  bool discard_ = false;
  bool large_frames_ = false;  // last frame was large: read the next header alone
  std::string ctrl_;           // ABORT payload
  bool eof_ = false;
  bool peer_closed_ = false;   // the peer sent CLOSE on this stream: nothing more comes
  bool dead_ = false;          // shut down after a failure; ignore events

  int64_t timer_at_ = INT64_MAX;  // fault injection wake-up
};

class TcpPair final : public Pair {
 public:
  TcpPair(const PairContext& ctx, IoLoop& loop, int peer, std::vector<Fd> fds, std::vector<std::string> addrs,
          const FaultSpec& faults);
  ~TcpPair() override;

  int peer() const override { return peer_; }
  const char* kind() const override { return "tcp"; }
  RequestPtr isend(const void* buf, size_t len, Tag tag, uint32_t meta) override;
  // Like isend, but the kernel may keep referencing the caller's pages after
  // the request completes, until the peer has read the bytes: the caller
  // promises not to modify (or free) the buffer before it knows, from the
  // protocol, that the peer received the message (e.g. the peer's answer
  // depends on it). Small messages, and pairs with fault injection, are
  // copied as by isend.
  RequestPtr isend_lent(const void* buf, size_t len, Tag tag, uint32_t meta);
  RequestPtr irecv(void* buf, size_t len, Tag tag, uint32_t meta) override;
  RequestPtr irecv_reduce(void* dst, const void* local, size_t len, Tag tag, const Combiner& combiner,
                          uint32_t meta) override;
  void abort(AbortKind kind, const std::string& message) override;
  bool failed() const override { return failed_.load(std::memory_order_acquire); }
  PairStats stats() const override;

  // Registers the streams with the loop (after construction, before start).
  void attach();
  // Shutdown: fails what is pending with `why`, queues CLOSE on every stream.
  void begin_close(std::exception_ptr why);
  // True once every stream saw EOF or was shut down.
  bool closed() const;

 private:
  friend class TcpStream;
  enum class Cause { PeerLost, Protocol, PeerAbort, PeerClosed, LocalAbort, Shutdown };

  RequestPtr post_recv(std::unique_ptr<RecvOp> op);
  RequestPtr send(const void* buf, size_t len, Tag tag, uint32_t meta, bool lent);
  void enqueue_frames(const char* data, size_t len, Tag tag, uint32_t meta, const RequestPtr& req, bool lent);
  // Lent sends: moves pipe bytes into the socket; false if the socket is full
  // (tx_blocked_ set) or failed (*err set).
  bool drain_pipe(TcpStream& s, size_t& budget, int* err);
  // Puts more of the lent item at the head of the queue into the pipe.
  bool fill_pipe(TcpStream& s, SendItem& it, int* err);
  bool ensure_pipe(TcpStream& s);
  bool try_eager(TcpStream& s, SendItem& item);

  bool on_stream_io(TcpStream& s, uint32_t events);
  bool rx_turn(TcpStream& s);
  bool rx_turn_locked(TcpStream& s);  // rx_mu_ held
  // True once every stream has delivered all the peer will ever send.
  bool all_streams_finished() const;
  // The peer is leaving: fail every queued send and shut our write sides.
  void fail_sends(const std::string& why);
  bool tx_turn(TcpStream& s, bool writable);
  // Reads more bytes into the staging buffer (at most `want`); false if none now.
  bool fill(TcpStream& s, size_t want);
  void on_eof(TcpStream& s, int err);
  enum class Bind { Ok, Stall };
  Bind bind(TcpStream& s);
  void deliver(TcpStream& s, const char* src, size_t n);
  void finish_frame(TcpStream& s);
  void complete_msg(InMsg* m);
  void drain_discard(TcpStream& s);
  void resume_stalled();

  // Marks the pair failed (first call wins) and fails every request; `shut`
  // shuts the sockets down. Callers on the loop thread hold rx_mu_.
  void fail(std::exception_ptr err, Cause cause);
  void queue_control_frame(TcpStream& s, FrameKind kind, uint32_t meta, const std::string& payload);
  void protocol_error(TcpStream& s, const std::string& why);
  void flush_notify();
  std::string who(const TcpStream& s) const;

  PairContext ctx_;
  IoLoop& loop_;
  int peer_;
  std::vector<std::unique_ptr<TcpStream>> streams_;
  FrameLimits limits_;
  size_t frame_max_;

  std::mutex rx_mu_;  // held while the loop writes into receive buffers
  std::mutex mu_;     // matching state below
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
  std::vector<std::unique_ptr<RecvOp>> posted_;
  std::vector<std::unique_ptr<InMsg>> inflight_;
  std::deque<std::unique_ptr<InMsg>> unexpected_done_;  // arrival order; the front usually matches
  size_t unexpected_bytes_ = 0;
  std::atomic<int> stalled_{0};
  std::atomic<uint32_t> rr_{0};
  bool peer_closing_ = false;  // a CLOSE arrived on some stream (loop thread)
  bool draining_ = false;      // reading what the other streams hold after an EOF
  bool peer_gone_ = false;     // failed because the peer left: buffered messages stay receivable (mu_)

  std::exception_ptr notify_;  // failure to report once locks are released

  std::atomic<uint64_t> bytes_sent_{0}, bytes_received_{0}, msgs_sent_{0}, msgs_received_{0};

  // fault injection (loop thread only)
  bool faulty_ = false;
  FaultGate gate_;
  bool lend_ = true;  // isend_lent may lend pages (no fault injection on this pair)
};

}  // namespace braid::net
