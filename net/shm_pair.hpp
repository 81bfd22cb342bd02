#pragma once
// The shared-memory pair: one SPSC byte ring per direction in a segment both
// processes map (shm_segment.hpp), progressed inline by whoever waits, plus a
// TCP control connection (authenticated at set-up) that carries ABORT/CLOSE
// and whose EOF means the peer died.
//
// Cost model. A message travels as records of 64-byte cells: a header cell
// (stamp, tag, length, check value, up to 32 payload bytes inline) followed by
// the payload. The consumer polls the stamp of the cell at its head, so a
// small message costs one cache line moving between cores; the consumer's
// head is published in its own line that the producer reads only when it
// thinks the ring is full. A large message streams through the ring in
// pieces of up to ring/4 bytes (64-byte aligned): the sender copies a piece
// in while the receiver copies (or folds, for irecv_reduce) the previous one
// out, so each byte is copied twice, by two cores in parallel, through cache.
// No thread, no syscall, no allocation on the path when the peer is
// responsive; waiting spins, yields, then sleeps (Request::wait).
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
#include "net/shm_segment.hpp"
#include "net/socket.hpp"

namespace braid::net {

class ShmPair;

// The control/liveness connection of a shm pair (loop thread).
class ShmControl final : public IoHandler {
 public:
  ShmControl(ShmPair* pair, Fd fd) : pair_(pair), fd_(std::move(fd)) {}
  bool on_io(uint32_t events) override;
  // Best effort, from any thread: control frames are tiny and the socket idle.
  void send_frame(FrameKind kind, uint32_t meta, const std::string& payload);
  void shut_write();
  void shut_down();
  int fd() const { return fd_.get(); }
  bool finished() const { return eof_ || dead_; }

 private:
  ShmPair* pair_;
  Fd fd_;
  std::mutex send_mu_;
  bool write_shut_ = false;
  // loop thread only (the flags are also read or set by other threads)
  char buf_[kFrameHeaderBytes + 4096];
  size_t have_ = 0;
  std::atomic<bool> eof_{false};
  std::atomic<bool> dead_{false};
};

class ShmPair final : public Pair {
 public:
  // `connector`: this rank created the segment and writes ring 0.
  ShmPair(const PairContext& ctx, IoLoop& loop, int peer, std::unique_ptr<ShmSegment> segment, bool connector,
          Fd control, std::string addr, const FaultSpec& faults);
  ~ShmPair() override;

  int peer() const override { return peer_; }
  const char* kind() const override { return "shm"; }
  RequestPtr isend(const void* buf, size_t len, Tag tag, uint32_t meta) override;
  RequestPtr irecv(void* buf, size_t len, Tag tag, uint32_t meta) override;
  RequestPtr irecv_reduce(void* dst, const void* local, size_t len, Tag tag, const Combiner& combiner,
                          uint32_t meta) override;
  void abort(AbortKind kind, const std::string& message) override;
  bool failed() const override { return failed_.load(std::memory_order_acquire); }
  PairStats stats() const override;

  // Moves whatever can move now in both directions; true if anything did.
  bool progress();
  // Sleeping (ShmProgress::wait_for_activity): announce a sleeper on this
  // side and return the doorbell value to wait for a change of; then leave.
  uint32_t* doorbell() const { return my_doorbell_; }
  uint32_t arm_sleep();
  void disarm_sleep();

  void attach();
  void begin_close(std::exception_ptr why);
  bool closed() const { return control_.finished(); }

 private:
  friend class ShmControl;
  enum class Cause { PeerLost, Protocol, PeerAbort, PeerClosed, LocalAbort, Shutdown };

  struct SendOp {
    const char* data = nullptr;
    size_t len = 0;
    size_t sent = 0;
    bool started = false;
    Tag tag = 0;
    uint32_t meta = 0;
    int64_t not_before = 0;
    RequestPtr req;
  };
  struct Unexpected {
    Tag tag = 0;
    uint32_t meta = 0;
    uint64_t total = 0;
    std::unique_ptr<char[]> buf;
  };
  // A posted receive lives in one slot from posting to completion, so the
  // fast path moves no RecvOp (std::function, shared_ptr) around.
  struct Slot {
    RecvOp op;
    uint64_t seq = 0;  // posting order: the oldest receive of a tag matches first
    bool used = false;
    bool bound = false;  // matched to the message in progress
  };
  // The message whose records are at the head of the incoming ring.
  struct Current {
    bool active = false;
    Tag tag = 0;
    uint32_t meta = 0;
    uint64_t total = 0;
    uint64_t got = 0;
    int slot = -1;                // receive it lands in
    bool discard = false;         // its receive failed (Mismatch)
    std::unique_ptr<char[]> buf;  // unexpected: buffered
    int late_slot = -1;           // receive posted while buffering
    bool drop_when_done = false;  // a late receive did not match
  };

  // Takes a free slot (growing the table if needed) and returns its index.
  int take_slot();
  void release_slot(int i);
  RequestPtr post_recv(int slot);
  // Writes as much of a message as fits; true when all of it is in the ring.
  bool write_some(const char* data, size_t len, Tag tag, uint32_t meta, size_t* sent, bool* started,
                  bool* moved);
  bool pump_send();
  bool pump_recv(std::string* bad);
  bool draining_ = false;   // pump_recv ignores the unexpected budget (rx_lock_)
  bool peer_gone_ = false;  // failed because the peer left (both locks)
  void deliver(uint64_t off, const char* src, size_t n);
  void finish_current();
  // After moving data: wake the peer if it sleeps waiting for us.
  void ring_peer();

  void fail(std::exception_ptr err, Cause cause);
  // The peer left (CLOSE or EOF): take every record it finished writing, then
  // fail what can no longer complete; whole messages stay receivable.
  void drain_and_fail(std::exception_ptr err, Cause cause);
  void drop_by_fault();
  void on_control_eof(int err);
  void on_peer_abort(AbortKind kind, const std::string& text);
  void on_peer_close();
  void on_control_protocol_error(const std::string& why);
  void flush_notify();
  std::string who() const { return describe_peer(peer_, addr_); }

  PairContext ctx_;
  IoLoop& loop_;
  int peer_;
  std::string addr_;
  std::unique_ptr<ShmSegment> seg_;
  size_t ring_;
  size_t mask_;
  size_t piece_max_;
  char* tx_ring_;
  uint64_t* tx_head_;  // the peer's consumer position of our outgoing ring
  char* rx_ring_;
  uint64_t* rx_head_;  // our consumer position, published for the peer
  uint32_t* my_doorbell_;
  uint32_t* my_sleepers_;
  uint32_t* peer_doorbell_;
  uint32_t* peer_sleepers_;

  // sending (tx_lock_)
  SpinLock tx_lock_;
  Fifo<SendOp> sendq_;
  RequestCache send_reqs_;
  std::atomic<bool> send_pending_{false};  // sendq_ non-empty; read without the lock
  uint64_t tail_ = 0;
  uint64_t head_cache_ = 0;
  bool faulty_ = false;
  FaultGate gate_;
  bool drop_now_ = false;

  // receiving (rx_lock_)
  SpinLock rx_lock_;
  uint64_t head_ = 0;
  std::atomic<uint64_t> head_peek_{0};  // head_, for a lock-free look at the next record
  std::vector<Slot> slots_;
  RequestCache recv_reqs_;
  size_t posted_ = 0;                   // slots in use and not yet bound
  uint64_t next_seq_ = 0;
  Current cur_;
  std::deque<Unexpected> unexpected_done_;  // arrival order; the front usually matches
  size_t unexpected_bytes_ = 0;

  std::atomic<bool> failed_{false};
  std::exception_ptr error_;  // written once, before failed_ is set
  bool peer_closed_ = false;  // loop thread
  std::mutex notify_mu_;
  std::exception_ptr notify_;

  // Updated under the send or receive lock with a plain load+store (no locked
  // read-modify-write on the fast path); read racily by stats().
  std::atomic<uint64_t> bytes_sent_{0}, bytes_received_{0}, msgs_sent_{0}, msgs_received_{0};

  ShmControl control_;
};

// Progress for every shm pair of a mesh (the Request hook). Waiting sleeps
// on every pair's doorbell and the request's own word at once (futex_waitv),
// so whichever comes first wakes the waiter.
class ShmProgress final : public Progress {
 public:
  void add(ShmPair* p) { pairs_.push_back(p); }
  bool progress() override {
    bool moved = false;
    for (ShmPair* p : pairs_) moved |= p->progress();
    return moved;
  }
  using Progress::wait_for_activity;
  bool wait_for_activity(std::atomic<uint32_t>* const* words, size_t nwords, uint32_t expected,
                         int64_t timeout_ns) override;

 private:
  std::vector<ShmPair*> pairs_;
  std::atomic<bool> no_waitv_{false};  // the kernel lacks futex_waitv (before 5.16)
};

}  // namespace braid::net
