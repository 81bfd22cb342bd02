#include "net/shm_pair.hpp"

#include <fmt/format.h>
#include <linux/futex.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/abort_error.hpp"

namespace braid::net {

namespace {

constexpr size_t kCell = 64;
constexpr size_t kInlineMax = 32;
constexpr size_t kMinPiece = 4096;           // do not cut a message into slivers when the ring is nearly full
constexpr size_t kRecvBudget = 8 << 20;      // bytes consumed per progress() call

struct alignas(64) RecordHeader {
  uint64_t stamp;  // ring position of this record + 1, stored last
  uint64_t tag;
  uint64_t total;
  uint32_t meta;
  uint32_t piece;
  char inline_data[kInlineMax];
};
static_assert(sizeof(RecordHeader) == kCell);

size_t record_bytes(size_t piece) { return kCell + (piece <= kInlineMax ? 0 : (piece + kCell - 1) / kCell * kCell); }

uint64_t load_acquire(uint64_t* p) { return std::atomic_ref<uint64_t>(*p).load(std::memory_order_acquire); }
std::atomic_ref<uint32_t> word(uint32_t* p) { return std::atomic_ref<uint32_t>(*p); }
void store_release(uint64_t* p, uint64_t v) { std::atomic_ref<uint64_t>(*p).store(v, std::memory_order_release); }

}  // namespace

// ------------------------------------------------------------------ control connection

bool ShmControl::on_io(uint32_t) {
  pair_->flush_notify();
  if (dead_ || eof_) return false;
  while (true) {
    ssize_t r = ::recv(fd_.get(), buf_ + have_, sizeof buf_ - have_, MSG_DONTWAIT);
    if (r > 0) {
      have_ += static_cast<size_t>(r);
      // Parse whole frames.
      while (have_ >= kFrameHeaderBytes) {
        FrameLimits lim;
        lim.max_frame_payload = 0;  // no DATA on a control connection
        FrameDecode d = decode_frame_header(reinterpret_cast<const uint8_t*>(buf_), have_, pair_->ctx_.epoch, lim);
        if (d.status == FrameDecode::Invalid || d.header.kind == FrameKind::Data ||
            d.header.kind == FrameKind::Hello || d.header.kind == FrameKind::HelloAck) {
          std::string why = d.status == FrameDecode::Invalid
                                ? d.error
                                : fmt::format("unexpected {} frame on the shared-memory control connection",
                                              frame_kind_name(d.header.kind));
          pair_->on_control_protocol_error(why);
          pair_->flush_notify();
          return false;
        }
        size_t need = kFrameHeaderBytes + d.header.length;
        if (have_ < need) break;
        if (d.status == FrameDecode::Ok) {
          if (d.header.kind == FrameKind::Abort) {
            pair_->on_peer_abort(static_cast<AbortKind>(d.header.meta),
                                 std::string(buf_ + kFrameHeaderBytes, d.header.length));
          } else if (d.header.kind == FrameKind::Close) {
            pair_->on_peer_close();
          }
        }
        std::memmove(buf_, buf_ + need, have_ - need);
        have_ -= need;
      }
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    eof_ = true;
    pair_->on_control_eof(r == 0 ? 0 : errno);
    break;
  }
  pair_->flush_notify();
  return false;
}

void ShmControl::send_frame(FrameKind kind, uint32_t meta, const std::string& payload) {
  std::lock_guard<std::mutex> lock(send_mu_);
  if (write_shut_ || dead_) return;
  std::string p = payload.size() > 4000 ? payload.substr(0, 4000) : payload;
  FrameHeader h;
  h.kind = kind;
  h.epoch = pair_->ctx_.epoch;
  h.meta = meta;
  h.length = static_cast<uint32_t>(p.size());
  h.total = h.length;
  std::string frame(kFrameHeaderBytes, '\0');
  encode_frame_header(h, reinterpret_cast<uint8_t*>(frame.data()));
  frame += p;
  try {
    send_all(fd_.get(), frame.data(), frame.size(), Deadline::in_seconds(1), pair_->who());
  } catch (const Error& e) {
    log::debug("could not send {} to {}: {}", frame_kind_name(kind), pair_->who(), e.what());
  }
}

void ShmControl::shut_write() {
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!write_shut_ && !dead_) ::shutdown(fd_.get(), SHUT_WR);
  write_shut_ = true;
}

void ShmControl::shut_down() {
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!dead_) ::shutdown(fd_.get(), SHUT_RDWR);
  dead_ = true;
  write_shut_ = true;
}

// ------------------------------------------------------------------ pair

ShmPair::ShmPair(const PairContext& ctx, IoLoop& loop, int peer, std::unique_ptr<ShmSegment> segment,
                 bool connector, Fd control, std::string addr, const FaultSpec& faults)
    : ctx_(ctx),
      loop_(loop),
      peer_(peer),
      addr_(std::move(addr)),
      seg_(std::move(segment)),
      control_(this, std::move(control)) {
  send_reqs_ = RequestCache(ctx.progress);
  recv_reqs_ = RequestCache(ctx.progress);
  ring_ = seg_->ring_bytes();
  mask_ = ring_ - 1;
  piece_max_ = std::max<size_t>(ring_ / 4, kMinPiece);
  int out = connector ? 0 : 1;
  tx_ring_ = seg_->ring(out);
  tx_head_ = seg_->head(out);
  rx_ring_ = seg_->ring(1 - out);
  rx_head_ = seg_->head(1 - out);
  my_doorbell_ = seg_->doorbell(out);
  my_sleepers_ = seg_->sleepers(out);
  peer_doorbell_ = seg_->doorbell(1 - out);
  peer_sleepers_ = seg_->sleepers(1 - out);
  slots_.reserve(16);
  faulty_ = faults.applies(ctx.rank, peer);
  if (faulty_) gate_ = FaultGate(faults, peer);
}

ShmPair::~ShmPair() { loop_.remove(control_.fd()); }

void ShmPair::attach() { loop_.add(control_.fd(), &control_, EPOLLIN | EPOLLRDHUP); }

PairStats ShmPair::stats() const {
  PairStats st;
  st.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
  st.bytes_received = bytes_received_.load(std::memory_order_relaxed);
  st.messages_sent = msgs_sent_.load(std::memory_order_relaxed);
  st.messages_received = msgs_received_.load(std::memory_order_relaxed);
  return st;
}

// ------------------------------------------------------------------ sending

namespace {
// Counters owned by one lock: a plain add, not a locked read-modify-write.
inline void bump(std::atomic<uint64_t>& c, uint64_t v) {
  c.store(c.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
}
}  // namespace

RequestPtr ShmPair::isend(const void* buf, size_t len, Tag tag, uint32_t meta) {
  if (len > ctx_.max_message_bytes)
    throw Error(fmt::format("message of {} bytes exceeds the transport limit of {} bytes", len,
                            ctx_.max_message_bytes),
                "raise MeshOptions::max_message_bytes on every rank, or send it in parts");
  const char* data = static_cast<const char*>(buf);
  tx_lock_.lock();
  RequestPtr req = send_reqs_.get();
  if (failed_.load(std::memory_order_acquire)) {
    tx_lock_.unlock();
    req->fail(error_);
    return req;
  }
  bump(bytes_sent_, len);
  bump(msgs_sent_, 1);
  size_t sent = 0;
  bool started = false;
  if (!faulty_ && sendq_.empty()) {
    // Fast path: straight into the ring, no queueing.
    bool moved = false;
    bool all = write_some(data, len, tag, meta, &sent, &started, &moved);
    if (moved) ring_peer();
    if (all) {
      tx_lock_.unlock();
      req->complete();
      return req;
    }
  }
  SendOp op;
  op.data = data;
  op.len = len;
  op.sent = sent;
  op.started = started;
  op.tag = tag;
  op.meta = meta;
  op.req = req;
  if (faulty_ && gate_.latency_ns() > 0) op.not_before = now_ns() + gate_.latency_ns();
  sendq_.push_back(std::move(op));
  send_pending_.store(true, std::memory_order_relaxed);
  if (faulty_) pump_send();
  bool drop = drop_now_;
  tx_lock_.unlock();
  if (drop) drop_by_fault();
  return req;
}

bool ShmPair::write_some(const char* data, size_t len, Tag tag, uint32_t meta, size_t* sent, bool* started,
                         bool* moved) {
  while (true) {
    size_t remaining = len - *sent;
    if (*started && remaining == 0) return true;
    size_t piece = std::min(remaining, piece_max_);
    size_t need = record_bytes(piece);
    size_t free = ring_ - (tail_ - head_cache_);
    if (need > free) {
      head_cache_ = load_acquire(tx_head_);
      free = ring_ - (tail_ - head_cache_);
      if (need > free) {
        if (free < kCell + std::min(remaining, kMinPiece)) return false;
        size_t fit = (free - kCell) & ~(kCell - 1);
        if (fit < std::min(remaining, kMinPiece)) return false;
        piece = std::min(remaining, fit);
      }
    }
    if (faulty_) {
      int64_t wake = INT64_MAX;
      bool drop = false;
      size_t allow = piece == 0 ? 0 : gate_.allowance(piece, now_ns(), &wake, &drop);
      if (drop) {
        drop_now_ = true;
        return false;
      }
      if (piece > 0) {
        if (allow == 0) return false;
        if (allow < piece) {
          piece = allow >= remaining ? remaining : (allow & ~(kCell - 1));
          if (piece == 0) return false;
        }
      }
    }
    // Write the payload, then the header fields, then publish the stamp.
    size_t pos = tail_ & mask_;
    auto* h = reinterpret_cast<RecordHeader*>(tx_ring_ + pos);
    const char* src = data + *sent;
    if (piece <= kInlineMax) {
      if (piece) std::memcpy(h->inline_data, src, piece);
    } else {
      size_t p = (pos + kCell) & mask_;
      size_t first = std::min(piece, ring_ - p);
      std::memcpy(tx_ring_ + p, src, first);
      if (piece > first) std::memcpy(tx_ring_, src + first, piece - first);
    }
    h->tag = tag;
    h->total = len;
    h->meta = meta;
    h->piece = static_cast<uint32_t>(piece);
    store_release(&h->stamp, tail_ + 1);
    tail_ += record_bytes(piece);
    *sent += piece;
    *started = true;
    if (faulty_) gate_.sent(piece);
    *moved = true;
  }
}

bool ShmPair::pump_send() {
  bool moved = false;
  int64_t now = faulty_ ? now_ns() : 0;
  while (!sendq_.empty()) {
    SendOp& op = sendq_.front();
    if (faulty_ && op.not_before > now) break;
    if (!write_some(op.data, op.len, op.tag, op.meta, &op.sent, &op.started, &moved)) break;
    op.req->complete();
    sendq_.pop_front();
    moved = true;
  }
  send_pending_.store(!sendq_.empty(), std::memory_order_relaxed);
  if (moved) ring_peer();
  return moved;
}

void ShmPair::ring_peer() {
  // Dekker with the sleeper: we published data (or freed space), it announced
  // itself and then re-checked; a full fence on both sides means at least one
  // of us sees the other.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (word(peer_sleepers_).load(std::memory_order_relaxed) == 0) return;
  word(peer_doorbell_).fetch_add(1, std::memory_order_seq_cst);
  futex_wake(reinterpret_cast<std::atomic<uint32_t>*>(peer_doorbell_), INT32_MAX, true);
}

uint32_t ShmPair::arm_sleep() {
  uint32_t v = word(my_doorbell_).load(std::memory_order_seq_cst);
  word(my_sleepers_).fetch_add(1, std::memory_order_seq_cst);
  return v;
}

void ShmPair::disarm_sleep() { word(my_sleepers_).fetch_sub(1, std::memory_order_seq_cst); }

bool ShmProgress::wait_for_activity(std::atomic<uint32_t>* const* words, size_t nwords, uint32_t expected,
                                    int64_t timeout_ns) {
  if (no_waitv_.load(std::memory_order_relaxed) || pairs_.size() + nwords > FUTEX_WAITV_MAX) return false;
  struct futex_waitv waiters[FUTEX_WAITV_MAX] = {};
  size_t n = 0;
  for (size_t i = 0; i < nwords; ++i, ++n) {
    waiters[n].val = expected;
    waiters[n].uaddr = reinterpret_cast<uintptr_t>(words[i]);
    waiters[n].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
  }
  std::vector<ShmPair*> armed;
  armed.reserve(pairs_.size());
  for (ShmPair* p : pairs_) {
    if (p->failed()) continue;
    waiters[n].val = p->arm_sleep();
    waiters[n].uaddr = reinterpret_cast<uintptr_t>(p->doorbell());
    waiters[n].flags = FUTEX_32;
    ++n;
    armed.push_back(p);
  }
  // Announced: anything the peers publish from now on rings. Look once more
  // so that what came just before is not slept through.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool unchanged = true;
  for (size_t i = 0; i < nwords; ++i) unchanged = unchanged && words[i]->load(std::memory_order_acquire) == expected;
  if (!progress() && unchanged) {
    timespec abs{};
    clock_gettime(CLOCK_MONOTONIC, &abs);
    int64_t ns = abs.tv_nsec + timeout_ns;
    abs.tv_sec += ns / 1'000'000'000;
    abs.tv_nsec = ns % 1'000'000'000;
    long r = syscall(SYS_futex_waitv, waiters, static_cast<unsigned>(n), 0u, &abs, CLOCK_MONOTONIC);
    if (r < 0 && errno == ENOSYS) no_waitv_.store(true, std::memory_order_relaxed);
  }
  for (ShmPair* p : armed) p->disarm_sleep();
  return !no_waitv_.load(std::memory_order_relaxed);
}

// ------------------------------------------------------------------ receiving

int ShmPair::take_slot() {
  for (size_t i = 0; i < slots_.size(); ++i)
    if (!slots_[i].used) {
      slots_[i].used = true;
      return static_cast<int>(i);
    }
  slots_.emplace_back();
  slots_.back().used = true;
  return static_cast<int>(slots_.size() - 1);
}

void ShmPair::release_slot(int i) {
  Slot& s = slots_[static_cast<size_t>(i)];
  s.used = false;
  s.bound = false;
  s.op.req.reset();
}

RequestPtr ShmPair::irecv(void* buf, size_t len, Tag tag, uint32_t meta) {
  rx_lock_.lock();
  RequestPtr req = recv_reqs_.get();
  int i = take_slot();
  RecvOp& op = slots_[static_cast<size_t>(i)].op;
  op.tag = tag;
  op.dst = static_cast<char*>(buf);
  op.local = nullptr;
  op.len = len;
  op.meta = meta;
  op.req = std::move(req);
  return post_recv(i);
}

RequestPtr ShmPair::irecv_reduce(void* dst, const void* local, size_t len, Tag tag, const Combiner& combiner,
                                 uint32_t meta) {
  check_combiner(combiner, len);
  rx_lock_.lock();
  RequestPtr req = recv_reqs_.get();
  int i = take_slot();
  RecvOp& op = slots_[static_cast<size_t>(i)].op;
  op.tag = tag;
  op.dst = static_cast<char*>(dst);
  op.local = static_cast<const char*>(local);
  op.len = len;
  op.meta = meta;
  op.combiner = combiner;
  op.req = std::move(req);
  return post_recv(i);
}

// Called with rx_lock_ held and the receive filled into `slot`; unlocks.
RequestPtr ShmPair::post_recv(int slot) {
  Slot& sl = slots_[static_cast<size_t>(slot)];
  RequestPtr req = sl.op.req;
  const bool failed = failed_.load(std::memory_order_acquire);
  if (failed && !peer_gone_) {
    release_slot(slot);
    rx_lock_.unlock();
    req->fail(error_);
    return req;
  }
  // Messages that arrived whole stay receivable after the peer has left.
  for (size_t i = 0; i < unexpected_done_.size(); ++i) {
    if (unexpected_done_[i].tag != sl.op.tag) continue;
    Unexpected u = std::move(unexpected_done_[i]);
    unexpected_done_.erase(unexpected_done_.begin() + static_cast<std::ptrdiff_t>(i));
    unexpected_bytes_ -= u.total;
    RecvOp op = std::move(sl.op);
    release_slot(slot);
    rx_lock_.unlock();
    if (u.total != op.len || u.meta != op.meta) {
      req->fail(mismatch_error(peer_, u.total, u.meta, op.len, op.meta));
    } else {
      op.deliver(0, u.buf.get(), u.total);
      req->complete();
    }
    return req;
  }
  if (failed) {
    release_slot(slot);
    rx_lock_.unlock();
    req->fail(error_);
    return req;
  }
  if (cur_.active && cur_.tag == sl.op.tag && cur_.slot < 0 && !cur_.discard && cur_.late_slot < 0 &&
      !cur_.drop_when_done) {
    if (cur_.total != sl.op.len || cur_.meta != sl.op.meta) {
      cur_.drop_when_done = true;
      uint64_t len = sl.op.len;
      uint32_t meta = sl.op.meta;
      release_slot(slot);
      rx_lock_.unlock();
      req->fail(mismatch_error(peer_, cur_.total, cur_.meta, len, meta));
      return req;
    }
    sl.bound = true;
    cur_.late_slot = slot;
  } else {
    sl.seq = next_seq_++;
    ++posted_;
  }
  rx_lock_.unlock();
  return req;
}

void ShmPair::deliver(uint64_t off, const char* src, size_t n) {
  if (n == 0 || cur_.discard) return;
  if (cur_.slot >= 0) {
    slots_[static_cast<size_t>(cur_.slot)].op.deliver(off, src, n);
  } else {
    std::memcpy(cur_.buf.get() + off, src, n);
  }
}

void ShmPair::finish_current() {
  bump(msgs_received_, 1);
  if (cur_.slot >= 0) {
    slots_[static_cast<size_t>(cur_.slot)].op.req->complete();
    release_slot(cur_.slot);
  } else if (cur_.discard) {
  } else if (cur_.late_slot >= 0) {
    RecvOp& late = slots_[static_cast<size_t>(cur_.late_slot)].op;
    late.deliver(0, cur_.buf.get(), cur_.total);
    unexpected_bytes_ -= cur_.total;
    late.req->complete();
    release_slot(cur_.late_slot);
  } else if (cur_.drop_when_done) {
    unexpected_bytes_ -= cur_.total;
  } else {
    unexpected_done_.push_back(Unexpected{cur_.tag, cur_.meta, cur_.total, std::move(cur_.buf)});
  }
  cur_.active = false;
  cur_.slot = -1;
  cur_.late_slot = -1;
  cur_.discard = false;
  cur_.drop_when_done = false;
  cur_.buf.reset();
}

bool ShmPair::pump_recv(std::string* bad) {
  bool moved = false;
  size_t budget = kRecvBudget;
  while (budget > 0) {
    auto* h = reinterpret_cast<RecordHeader*>(rx_ring_ + (head_ & mask_));
    if (load_acquire(&h->stamp) != head_ + 1) break;
    const uint64_t tag = h->tag;
    const uint64_t total = h->total;
    const uint32_t meta = h->meta;
    const size_t piece = h->piece;
    if (piece > ring_ - kCell || total > ctx_.max_message_bytes || (piece == 0 && total != 0)) {
      *bad = fmt::format("ring record with piece {} of a {}-byte message", piece, total);
      return moved;
    }
    if (!cur_.active) {
      if (piece > total) {
        *bad = fmt::format("ring record with piece {} larger than its {}-byte message", piece, total);
        return moved;
      }
      int match = -1;
      if (posted_ > 0) {
        for (size_t i = 0; i < slots_.size(); ++i) {
          const Slot& sl = slots_[i];
          if (sl.used && !sl.bound && sl.op.tag == tag &&
              (match < 0 || sl.seq < slots_[static_cast<size_t>(match)].seq))
            match = static_cast<int>(i);
        }
      }
      if (match >= 0) {
        Slot& sl = slots_[static_cast<size_t>(match)];
        --posted_;
        if (sl.op.len != total || sl.op.meta != meta) {
          sl.op.req->fail(mismatch_error(peer_, total, meta, sl.op.len, sl.op.meta));
          release_slot(match);
          cur_.discard = true;
        } else {
          sl.bound = true;
          cur_.slot = match;
        }
      } else {
        // Unexpected: buffer it while the budget lasts, else leave it in the
        // ring (the sender then blocks: back-pressure) until a receive comes.
        // When draining after the peer left, take whatever can still be
        // whole (a message larger than the ring cannot be: skip it).
        if (draining_ && total > ring_) {
          cur_.discard = true;
        } else {
          bool worth_buffering = total <= kSmallUnexpectedBytes || posted_ > 0 ||
                                 send_pending_.load(std::memory_order_relaxed);
          if (!draining_ && total > 0 && (!worth_buffering || unexpected_bytes_ + total > ctx_.unexpected_budget))
            break;
          cur_.buf.reset(new char[total ? total : 1]);
          unexpected_bytes_ += total;
        }
      }
      cur_.active = true;
      cur_.tag = tag;
      cur_.meta = meta;
      cur_.total = total;
      cur_.got = 0;
    } else if (tag != cur_.tag || total != cur_.total || meta != cur_.meta || piece > total - cur_.got) {
      *bad = fmt::format("ring record (tag {:x}, {} bytes) does not continue the message in progress (tag {:x}, {} of {} bytes)",
                         tag, total, cur_.tag, cur_.got, cur_.total);
      return moved;
    }
    if (cur_.slot >= 0) {
      const RecvOp& op = slots_[static_cast<size_t>(cur_.slot)].op;
      if (op.reduce()) {
        size_t e = op.combiner.elem_size;
        if (cur_.got % e != 0 || (piece % e != 0 && cur_.got + piece != total)) {
          *bad = fmt::format("ring record splits a {}-byte element", e);
          return moved;
        }
      }
    }
    if (piece <= kInlineMax) {
      deliver(cur_.got, h->inline_data, piece);
    } else {
      size_t p = (head_ + kCell) & mask_;
      size_t first = std::min(piece, ring_ - p);
      deliver(cur_.got, rx_ring_ + p, first);
      if (piece > first) deliver(cur_.got + first, rx_ring_, piece - first);
    }
    cur_.got += piece;
    head_ += record_bytes(piece);
    store_release(rx_head_, head_);
    head_peek_.store(head_, std::memory_order_relaxed);
    bump(bytes_received_, piece);
    budget -= std::min(budget, piece + kCell);
    moved = true;
    if (cur_.got == cur_.total) finish_current();
  }
  if (moved) ring_peer();  // space freed: a sender waiting for it may sleep
  return moved;
}

bool ShmPair::progress() {
  if (failed_.load(std::memory_order_acquire)) return false;
  bool moved = false;
  bool drop = false;
  if (send_pending_.load(std::memory_order_relaxed) && tx_lock_.try_lock()) {
    if (!sendq_.empty()) moved |= pump_send();
    drop = drop_now_;
    tx_lock_.unlock();
  }
  // Look at the next record without the lock: nothing there (the common case
  // while spinning) costs one read of a line the peer has not touched.
  uint64_t h = head_peek_.load(std::memory_order_relaxed);
  auto* rec = reinterpret_cast<RecordHeader*>(rx_ring_ + (h & mask_));
  std::string bad;
  if (load_acquire(&rec->stamp) == h + 1 && rx_lock_.try_lock()) {
    moved |= pump_recv(&bad);
    rx_lock_.unlock();
  }
  if (drop) {
    drop_by_fault();
    return true;
  }
  if (!bad.empty()) {
    std::string msg = fmt::format("{} wrote a malformed record into shared memory: {}; closing the connection", who(), bad);
    log::warn("{}", msg);
    fail(std::make_exception_ptr(ProtocolError(msg, "the peer runs an incompatible braid build, or its memory is corrupted")),
         Cause::Protocol);
    control_.shut_down();
    return true;
  }
  return moved;
}

// ------------------------------------------------------------------ failure

void ShmPair::drop_by_fault() {
  log::info("fault injection: dropping the connection to rank {} after {} bytes", peer_, gate_.total_sent());
  fail(std::make_exception_ptr(PeerLost(
           peer_, fmt::format("connection to {} dropped by fault injection after {} bytes", who(), gate_.total_sent()),
           "remove drop_after from BRAID_FAULTS")),
       Cause::PeerLost);
  control_.shut_down();
}

void ShmPair::fail(std::exception_ptr err, Cause cause) {
  std::vector<RequestPtr> reqs;
  tx_lock_.lock();
  rx_lock_.lock();
  if (failed_.load(std::memory_order_acquire)) {
    rx_lock_.unlock();
    tx_lock_.unlock();
    return;
  }
  error_ = err;
  failed_.store(true, std::memory_order_release);
  while (!sendq_.empty()) {
    reqs.push_back(sendq_.front().req);
    sendq_.pop_front();
  }
  send_pending_.store(false);
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].used) continue;
    reqs.push_back(slots_[i].op.req);
    release_slot(static_cast<int>(i));
  }
  posted_ = 0;
  cur_ = Current();
  peer_gone_ = cause == Cause::PeerLost || cause == Cause::PeerClosed;
  if (!peer_gone_) {
    unexpected_done_.clear();
    unexpected_bytes_ = 0;
  }
  rx_lock_.unlock();
  tx_lock_.unlock();
  for (auto& r : reqs) r->fail(err);
  if (cause == Cause::PeerLost || cause == Cause::Protocol || cause == Cause::PeerAbort) {
    {
      std::lock_guard<std::mutex> lock(notify_mu_);
      notify_ = err;
    }
    // Callbacks run on the loop thread, never inside a waiter's progress().
    loop_.post(&control_);
  }
}

void ShmPair::drain_and_fail(std::exception_ptr err, Cause cause) {
  std::string bad;
  rx_lock_.lock();
  if (!failed_.load(std::memory_order_acquire)) {
    draining_ = true;
    while (pump_recv(&bad) && bad.empty()) {
    }
    draining_ = false;
  }
  rx_lock_.unlock();
  fail(err, cause);
}

void ShmPair::flush_notify() {
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(notify_mu_);
    e = std::move(notify_);
    notify_ = nullptr;
  }
  if (e && ctx_.on_failure) ctx_.on_failure(peer_, e);
}

void ShmPair::on_control_eof(int err) {
  control_.shut_write();
  if (failed_.load(std::memory_order_acquire) || peer_closed_) return;
  std::string why = err ? std::strerror(err) : "the peer closed the connection (its process exited or was killed)";
  log::warn("lost the shared-memory peer {}: {}", who(), why);
  drain_and_fail(std::make_exception_ptr(PeerLost(peer_, fmt::format("lost the connection to {}: {}", who(), why),
                                                  "the peer process died; check its log")),
                 Cause::PeerLost);
}

void ShmPair::on_peer_abort(AbortKind kind, const std::string& text) {
  log::debug("{} sent ABORT: {}", who(), text);
  fail(make_abort_error(kind, peer_, text), Cause::PeerAbort);
}

void ShmPair::on_peer_close() {
  peer_closed_ = true;
  drain_and_fail(std::make_exception_ptr(PeerLost(peer_, fmt::format("{} closed its mesh (it shut down)", who()),
                                                  "the peer left the job; a new membership needs a new mesh")),
                 Cause::PeerClosed);
  control_.shut_write();
}

void ShmPair::on_control_protocol_error(const std::string& why) {
  std::string msg = fmt::format("{} sent a malformed control frame: {}; closing the connection", who(), why);
  log::warn("{}", msg);
  fail(std::make_exception_ptr(ProtocolError(msg, "the peer runs an incompatible braid build")), Cause::Protocol);
  control_.shut_down();
}

void ShmPair::abort(AbortKind kind, const std::string& message) {
  if (failed_.load(std::memory_order_acquire)) return;
  fail(make_abort_error(kind, ctx_.rank, message), Cause::LocalAbort);
  control_.send_frame(FrameKind::Abort, static_cast<uint32_t>(kind), message);
}

void ShmPair::begin_close(std::exception_ptr why) {
  fail(why, Cause::Shutdown);
  control_.send_frame(FrameKind::Close, 0, {});
  control_.shut_write();
}

}  // namespace braid::net
