#include "net/tcp_pair.hpp"

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/abort_error.hpp"

namespace braid::net {

namespace {

constexpr size_t kEagerMax = 64 << 10;      // written by the calling thread when the stream is idle
constexpr size_t kStripeMin = 256 << 10;    // smaller messages use one stream
constexpr size_t kFrameAlign = 4096;        // frame boundaries inside a message (keeps elements whole)
constexpr size_t kSendFrameMax = 1 << 20;   // bounds the copy an abort makes of a half-sent frame
constexpr size_t kStageBytes = 128 << 10;   // per-stream receive staging (stays in L2)
constexpr size_t kDirectMin = 16 << 10;     // payload left to read for which recv() goes straight to dst
constexpr size_t kTurnBudget = 4 << 20;     // bytes per stream per loop turn, so streams share the thread
constexpr size_t kLendMin = 128 << 10;      // smaller lent sends are copied: page pinning would cost more
constexpr int kPipeBytes = 1 << 20;         // pipe for lent sends (the unprivileged maximum by default)

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

void complete_item(SendItem& it) {
  if (!it.req) return;
  if (it.frames_left) {
    if (it.frames_left->fetch_sub(1, std::memory_order_acq_rel) == 1) it.req->complete();
  } else {
    it.req->complete();
  }
}

}  // namespace

TcpStream::TcpStream(TcpPair* pair, int index, Fd fd, std::string addr)
    : pair_(pair), index_(index), fd_(std::move(fd)), addr_(std::move(addr)) {
  stage_cap_ = kStageBytes;
  stage_ = std::make_unique<char[]>(stage_cap_);
}

bool TcpStream::on_io(uint32_t events) { return pair_->on_stream_io(*this, events); }

TcpPair::TcpPair(const PairContext& ctx, IoLoop& loop, int peer, std::vector<Fd> fds,
                 std::vector<std::string> addrs, const FaultSpec& faults)
    : ctx_(ctx), loop_(loop), peer_(peer) {
  limits_.max_frame_payload = ctx.max_frame_bytes;
  limits_.max_message_bytes = ctx.max_message_bytes;
  frame_max_ = std::min<size_t>(kSendFrameMax, ctx.max_frame_bytes);
  frame_max_ = std::max<size_t>(frame_max_ / kFrameAlign * kFrameAlign, kFrameAlign);
  for (size_t i = 0; i < fds.size(); ++i)
    streams_.push_back(std::make_unique<TcpStream>(this, static_cast<int>(i), std::move(fds[i]),
                                                   i < addrs.size() ? addrs[i] : std::string()));
  faulty_ = faults.applies(ctx.rank, peer);
  if (faulty_) gate_ = FaultGate(faults, peer);
  // Fault injection meters bytes through sendmsg: lent sends are copied.
  // (Whether to lend at all is the caller's choice: comm/ asks only when
  // BRAID_TCP_LEND=1.)
  lend_ = !faulty_;
}

TcpPair::~TcpPair() {
  for (auto& s : streams_) loop_.remove(s->fd_.get());
}

void TcpPair::attach() {
  for (auto& s : streams_) {
    loop_.add(s->fd_.get(), s.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP);
    if (faulty_) loop_.add_timer_handler(s.get());
  }
}

std::string TcpPair::who(const TcpStream& s) const { return describe_peer(peer_, s.addr_); }

PairStats TcpPair::stats() const {
  PairStats st;
  st.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
  st.bytes_received = bytes_received_.load(std::memory_order_relaxed);
  st.messages_sent = msgs_sent_.load(std::memory_order_relaxed);
  st.messages_received = msgs_received_.load(std::memory_order_relaxed);
  return st;
}

// ------------------------------------------------------------------ sending

RequestPtr TcpPair::isend(const void* buf, size_t len, Tag tag, uint32_t meta) {
  return send(buf, len, tag, meta, false);
}

RequestPtr TcpPair::isend_lent(const void* buf, size_t len, Tag tag, uint32_t meta) {
  return send(buf, len, tag, meta, lend_ && len >= kLendMin);
}

RequestPtr TcpPair::send(const void* buf, size_t len, Tag tag, uint32_t meta, bool lent) {
  auto req = std::make_shared<Request>(ctx_.progress);
  if (failed_.load(std::memory_order_acquire)) {
    req->fail(error_);
    return req;
  }
  if (len > ctx_.max_message_bytes)
    throw Error(fmt::format("message of {} bytes exceeds the transport limit of {} bytes", len,
                            ctx_.max_message_bytes),
                "raise MeshOptions::max_message_bytes on every rank, or send it in parts");
  bytes_sent_.fetch_add(len, std::memory_order_relaxed);
  msgs_sent_.fetch_add(1, std::memory_order_relaxed);
  enqueue_frames(static_cast<const char*>(buf), len, tag, meta, req, lent);
  return req;
}

bool TcpPair::try_eager(TcpStream& s, SendItem& item) {
  iovec iov[2];
  iov[0] = {item.hdr, kFrameHeaderBytes};
  iov[1] = {const_cast<char*>(item.data), item.len};
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = item.len ? 2 : 1;
  ssize_t w;
  do {
    w = ::sendmsg(s.fd_.get(), &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w == static_cast<ssize_t>(item.wire_bytes())) return true;
  if (w > 0) item.done = static_cast<size_t>(w);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) s.tx_blocked_ = true;
  return false;
}

void TcpPair::enqueue_frames(const char* data, size_t len, Tag tag, uint32_t meta, const RequestPtr& req,
                             bool lent) {
  const size_t nstreams = streams_.size();
  int64_t not_before = 0;
  if (faulty_ && gate_.latency_ns() > 0) not_before = now_ns() + gate_.latency_ns();

  FrameHeader h;
  h.kind = FrameKind::Data;
  h.epoch = ctx_.epoch;
  h.meta = meta;
  h.tag = tag;
  h.total = len;

  if (len <= frame_max_ && (nstreams == 1 || len < kStripeMin)) {
    TcpStream& s = *streams_[nstreams == 1 ? 0 : rr_.fetch_add(1, std::memory_order_relaxed) % nstreams];
    SendItem item;
    h.offset = 0;
    h.length = static_cast<uint32_t>(len);
    encode_frame_header(h, item.hdr);
    item.data = data;
    item.len = len;
    item.req = req;
    item.not_before = not_before;
    item.lent = lent;
    bool post = false;
    {
      std::lock_guard<std::mutex> lock(s.send_mu_);
      if (failed_.load(std::memory_order_acquire)) {
        req->fail(error_);
        return;
      }
      if (s.write_shut_) {
        req->fail(std::make_exception_ptr(PeerLost(peer_, fmt::format("{} has left (it closed its mesh)", who(s)))));
        return;
      }
      if (!faulty_ && !lent && s.sendq_.empty() && !s.tx_blocked_ && s.pipe_bytes_ == 0 && len <= kEagerMax) {
        if (try_eager(s, item)) {
          req->complete();
          return;
        }
      }
      bool was_empty = s.sendq_.empty();
      s.queued_bytes_.fetch_add(item.wire_bytes(), std::memory_order_seq_cst);
      s.sendq_.push_back(std::move(item));
      post = was_empty && !s.tx_blocked_;
    }
    if (post) loop_.post(&s);
    // A stream that stopped reading a large unexpected message reconsiders
    // now that we wait on a send too (see bind()).
    if (stalled_.load(std::memory_order_seq_cst) > 0) resume_stalled();
    return;
  }

  // Several frames, interleaved over the streams so that each stream carries
  // an even share and the receiver's folding walks the message in order.
  size_t fsz = round_up((len + nstreams - 1) / nstreams, kFrameAlign);
  fsz = std::clamp(fsz, kFrameAlign, frame_max_);
  size_t nframes = (len + fsz - 1) / fsz;
  auto left = std::make_shared<std::atomic<int>>(static_cast<int>(nframes));
  size_t start = rr_.fetch_add(1, std::memory_order_relaxed);
  for (size_t k = 0; k < std::min(nframes, nstreams); ++k) {
    size_t si = (start + k) % nstreams;
    TcpStream& s = *streams_[si];
    bool post = false;
    {
      std::lock_guard<std::mutex> lock(s.send_mu_);
      bool dead = failed_.load(std::memory_order_acquire) || s.write_shut_;
      bool was_empty = s.sendq_.empty();
      for (size_t f = k; f < nframes; f += nstreams) {
        if (dead) {
          // Count the frame as done so the request is failed exactly once below.
          continue;
        }
        SendItem item;
        h.offset = f * fsz;
        h.length = static_cast<uint32_t>(std::min(fsz, len - f * fsz));
        encode_frame_header(h, item.hdr);
        item.data = data + h.offset;
        item.len = h.length;
        item.req = req;
        item.frames_left = left;
        item.not_before = not_before;
        item.lent = lent;
        s.queued_bytes_.fetch_add(item.wire_bytes(), std::memory_order_seq_cst);
        s.sendq_.push_back(std::move(item));
      }
      if (dead) {
        req->fail(failed_.load(std::memory_order_acquire)
                      ? error_
                      : std::make_exception_ptr(PeerLost(peer_, fmt::format("{} has left (it closed its mesh)", who(s)))));
        continue;
      }
      post = was_empty && !s.tx_blocked_;
    }
    if (post) loop_.post(&s);
  }
  if (stalled_.load(std::memory_order_seq_cst) > 0) resume_stalled();
}

bool TcpPair::tx_turn(TcpStream& s, bool writable) {
  std::unique_lock<std::mutex> lock(s.send_mu_);
  if (writable) s.tx_blocked_ = false;
  if (s.dead_ || s.write_shut_) return false;
  size_t budget = kTurnBudget;
  int64_t now = faulty_ ? now_ns() : 0;
  s.timer_at_ = INT64_MAX;
  bool drop = false;
  int err = 0;
  while (!s.tx_blocked_ && budget > 0) {
    // Lent sends: the pipe is emptied into the socket before anything else is
    // written, and holds at most the item at the head of the queue.
    if (s.pipe_bytes_ > 0) {
      if (!drain_pipe(s, budget, &err)) break;
      continue;
    }
    if (s.sendq_.empty()) break;
    if (s.sendq_.front().lent) {
      SendItem& it = s.sendq_.front();
      if (it.done == it.wire_bytes()) {
        s.queued_bytes_.fetch_sub(it.wire_bytes(), std::memory_order_relaxed);
        complete_item(it);
        s.sendq_.pop_front();
        continue;
      }
      if (!fill_pipe(s, it, &err)) break;
      continue;
    }
    size_t allowed = budget;
    if (faulty_) {
      if (s.sendq_.front().not_before > now) {
        s.timer_at_ = s.sendq_.front().not_before;
        break;
      }
      allowed = gate_.allowance(budget, now, &s.timer_at_, &drop);
      if (allowed == 0) break;
    }
    iovec iov[64];
    int n = 0;
    size_t bytes = 0;
    for (size_t i = 0; i < s.sendq_.size() && n < 62 && bytes < allowed; ++i) {
      SendItem& it = s.sendq_[i];
      if (it.lent) break;  // goes through the pipe, after these
      if (faulty_ && it.not_before > now) break;
      size_t off = it.done;
      if (off < kFrameHeaderBytes) {
        iov[n++] = {it.hdr + off, kFrameHeaderBytes - off};
        bytes += kFrameHeaderBytes - off;
        off = kFrameHeaderBytes;
      }
      size_t pay = off - kFrameHeaderBytes;
      if (pay < it.len) {
        iov[n++] = {const_cast<char*>(it.data) + pay, it.len - pay};
        bytes += it.len - pay;
      }
    }
    if (bytes > allowed) {  // trim the tail so that a fault's byte budget is exact
      size_t excess = bytes - allowed;
      while (excess > 0 && n > 0) {
        size_t cut = std::min(excess, iov[n - 1].iov_len);
        iov[n - 1].iov_len -= cut;
        excess -= cut;
        if (iov[n - 1].iov_len == 0) --n;
      }
      bytes = allowed;
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(n);
    ssize_t w = ::sendmsg(s.fd_.get(), &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        s.tx_blocked_ = true;
        break;
      }
      err = errno;
      break;
    }
    size_t left = static_cast<size_t>(w);
    budget -= std::min(budget, left);
    if (faulty_) gate_.sent(left);
    while (left > 0) {
      SendItem& it = s.sendq_.front();
      size_t k = std::min(it.wire_bytes() - it.done, left);
      it.done += k;
      left -= k;
      if (it.done == it.wire_bytes()) {
        s.queued_bytes_.fetch_sub(it.wire_bytes(), std::memory_order_relaxed);
        complete_item(it);
        s.sendq_.pop_front();
      }
    }
  }
  if (s.sendq_.empty() && s.pipe_bytes_ == 0 && s.closing_ && !s.write_shut_) {
    ::shutdown(s.fd_.get(), SHUT_WR);
    s.write_shut_ = true;
  }
  bool more = (!s.sendq_.empty() || s.pipe_bytes_ > 0) && !s.tx_blocked_ && s.timer_at_ == INT64_MAX && budget == 0;
  lock.unlock();
  if (drop || err) {
    std::lock_guard<std::mutex> rx(rx_mu_);
    if (drop) {
      log::info("fault injection: dropping the connection to rank {} after {} bytes", peer_, gate_.total_sent());
      fail(std::make_exception_ptr(PeerLost(
               peer_, fmt::format("connection to {} dropped by fault injection after {} bytes", who(s),
                                  gate_.total_sent()),
               "remove drop_after from BRAID_FAULTS")),
           Cause::PeerLost);
    } else {
      on_eof(s, err);
    }
    return false;
  }
  return more;
}

bool TcpPair::ensure_pipe(TcpStream& s) {
  if (s.pipe_cap_ > 0) return true;
  if (s.pipe_failed_) return false;
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
    log::debug("pipe2 failed ({}): lent sends to rank {} are copied", std::strerror(errno), peer_);
    s.pipe_failed_ = true;
    return false;
  }
  s.pipe_r_.reset(p[0]);
  s.pipe_w_.reset(p[1]);
  ::fcntl(p[1], F_SETPIPE_SZ, kPipeBytes);  // may fail (pipe-max-size): keep the default size
  int cap = ::fcntl(p[1], F_GETPIPE_SZ);
  s.pipe_cap_ = cap > 0 ? static_cast<size_t>(cap) : 65536;
  return true;
}

bool TcpPair::fill_pipe(TcpStream& s, SendItem& it, int* err) {
  if (!ensure_pipe(s)) {
    it.lent = false;  // copied by sendmsg like any other send
    return true;
  }
  // The header is copied into the pipe (it lives in the queue, which moves);
  // the payload goes in as references to the caller's pages.
  if (it.done < kFrameHeaderBytes) {
    ssize_t w = ::write(s.pipe_w_.get(), it.hdr + it.done, kFrameHeaderBytes - it.done);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) return true;
      *err = errno;
      return false;
    }
    it.done += static_cast<size_t>(w);
    s.pipe_bytes_ += static_cast<size_t>(w);
    if (it.done < kFrameHeaderBytes) return true;
  }
  size_t off = it.done - kFrameHeaderBytes;
  if (off == it.len) return true;
  iovec iov{const_cast<char*>(it.data) + off, std::min(it.len - off, s.pipe_cap_)};
  ssize_t w = ::vmsplice(s.pipe_w_.get(), &iov, 1, SPLICE_F_NONBLOCK);
  if (w < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;  // the pipe is full: drain it first
    *err = errno;
    return false;
  }
  it.done += static_cast<size_t>(w);
  s.pipe_bytes_ += static_cast<size_t>(w);
  return true;
}

bool TcpPair::drain_pipe(TcpStream& s, size_t& budget, int* err) {
  const bool more = !s.sendq_.empty() && s.sendq_.front().done < s.sendq_.front().wire_bytes();
  ssize_t w = ::splice(s.pipe_r_.get(), nullptr, s.fd_.get(), nullptr, s.pipe_bytes_,
                       SPLICE_F_NONBLOCK | SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
  if (w < 0) {
    if (errno == EINTR) return true;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.tx_blocked_ = true;
      return false;
    }
    *err = errno;
    return false;
  }
  s.pipe_bytes_ -= static_cast<size_t>(w);
  budget -= std::min(budget, static_cast<size_t>(w));
  return true;
}

// ------------------------------------------------------------------ receiving

RequestPtr TcpPair::irecv(void* buf, size_t len, Tag tag, uint32_t meta) {
  auto op = std::make_unique<RecvOp>();
  op->tag = tag;
  op->dst = static_cast<char*>(buf);
  op->len = len;
  op->meta = meta;
  op->req = std::make_shared<Request>(ctx_.progress);
  return post_recv(std::move(op));
}

RequestPtr TcpPair::irecv_reduce(void* dst, const void* local, size_t len, Tag tag, const Combiner& combiner,
                                 uint32_t meta) {
  check_combiner(combiner, len);
  auto op = std::make_unique<RecvOp>();
  op->tag = tag;
  op->dst = static_cast<char*>(dst);
  op->local = static_cast<const char*>(local);
  op->len = len;
  op->meta = meta;
  op->combiner = combiner;
  op->req = std::make_shared<Request>(ctx_.progress);
  return post_recv(std::move(op));
}

RequestPtr TcpPair::post_recv(std::unique_ptr<RecvOp> op) {
  RequestPtr req = op->req;
  std::unique_lock<std::mutex> lock(mu_);
  const bool failed = failed_.load(std::memory_order_acquire);
  if (failed && !peer_gone_) {
    lock.unlock();
    req->fail(error_);
    return req;
  }
  // Messages that arrived complete stay receivable after the peer has left.
  for (size_t i = 0; i < unexpected_done_.size(); ++i) {
    if (unexpected_done_[i]->tag != op->tag) continue;
    std::unique_ptr<InMsg> m = std::move(unexpected_done_[i]);
    unexpected_done_.erase(unexpected_done_.begin() + static_cast<std::ptrdiff_t>(i));
    unexpected_bytes_ -= m->total;
    lock.unlock();
    if (m->total != op->len || m->meta != op->meta) {
      req->fail(mismatch_error(peer_, m->total, m->meta, op->len, op->meta));
    } else {
      op->deliver(0, m->buf.get(), m->total);
      req->complete();
    }
    resume_stalled();
    return req;
  }
  if (failed) {
    lock.unlock();
    req->fail(error_);
    return req;
  }
  for (auto& m : inflight_) {
    if (m->tag != op->tag || m->op || m->discard || m->late_op || m->drop_when_done) continue;
    if (m->total != op->len || m->meta != op->meta) {
      m->drop_when_done = true;
      lock.unlock();
      req->fail(mismatch_error(peer_, m->total, m->meta, op->len, op->meta));
      return req;
    }
    m->late_op = std::move(op);
    return req;
  }
  posted_.push_back(std::move(op));
  lock.unlock();
  resume_stalled();
  return req;
}

void TcpPair::resume_stalled() {
  if (stalled_.load(std::memory_order_acquire) == 0) return;
  for (auto& s : streams_)
    if (s->rx_stalled_.load(std::memory_order_acquire)) loop_.post(s.get());
}

bool TcpPair::on_stream_io(TcpStream& s, uint32_t events) {
  bool more = false;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    std::lock_guard<std::mutex> rx(rx_mu_);
    s.rx_ready_ = true;
  }
  more |= rx_turn(s);
  more |= tx_turn(s, (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0);
  flush_notify();
  return more;
}

void TcpPair::flush_notify() {
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    e = std::move(notify_);
    notify_ = nullptr;
  }
  if (e && ctx_.on_failure) ctx_.on_failure(peer_, e);
}

bool TcpPair::fill(TcpStream& s, size_t want) {
  if (s.sb_ == s.se_) s.sb_ = s.se_ = 0;
  if (s.se_ == s.stage_cap_ || (s.stage_cap_ - s.sb_ < kFrameHeaderBytes)) {
    std::memmove(s.stage_.get(), s.stage_.get() + s.sb_, s.se_ - s.sb_);
    s.se_ -= s.sb_;
    s.sb_ = 0;
  }
  size_t room = std::min(s.stage_cap_ - s.se_, std::max<size_t>(want, 1));
  while (true) {
    ssize_t r = ::recv(s.fd_.get(), s.stage_.get() + s.se_, room, MSG_DONTWAIT);
    if (r > 0) {
      s.se_ += static_cast<size_t>(r);
      return true;
    }
    if (r == 0) {
      on_eof(s, 0);
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.rx_ready_ = false;
      return false;
    }
    on_eof(s, errno);
    return false;
  }
}

void TcpPair::drain_discard(TcpStream& s) {
  s.sb_ = s.se_ = 0;
  for (int i = 0; i < 64; ++i) {
    ssize_t r = ::recv(s.fd_.get(), s.stage_.get(), s.stage_cap_, MSG_DONTWAIT);
    if (r > 0) continue;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      s.rx_ready_ = false;
      return;
    }
    on_eof(s, r == 0 ? 0 : errno);
    return;
  }
}

bool TcpPair::rx_turn(TcpStream& s) {
  std::lock_guard<std::mutex> rx(rx_mu_);
  return rx_turn_locked(s);
}

bool TcpPair::all_streams_finished() const {
  for (auto& s : streams_)
    if (!s->eof_ && !s->peer_closed_ && !s->dead_) return false;
  return true;
}

void TcpPair::fail_sends(const std::string& why) {
  auto err = std::make_exception_ptr(PeerLost(peer_, why, "the peer left the job; a new membership needs a new mesh"));
  std::vector<RequestPtr> reqs;
  for (auto& sp : streams_) {
    TcpStream& s = *sp;
    std::lock_guard<std::mutex> lock(s.send_mu_);
    while (!s.sendq_.empty()) {
      if (s.sendq_.front().req) reqs.push_back(s.sendq_.front().req);
      s.sendq_.pop_front();
    }
    s.queued_bytes_.store(0);
    if (!s.write_shut_ && !s.dead_) ::shutdown(s.fd_.get(), SHUT_WR);
    s.write_shut_ = true;
  }
  for (auto& r : reqs) r->fail(err);
}

bool TcpPair::rx_turn_locked(TcpStream& s) {
  if (s.dead_ || s.eof_) return false;
  if (!s.rx_ready_ && s.se_ == s.sb_ && !s.rx_stalled_.load(std::memory_order_relaxed)) return false;
  if (failed_.load(std::memory_order_acquire) || s.peer_closed_) {
    drain_discard(s);
    return false;
  }
  size_t budget = kTurnBudget;
  while (budget > 0) {
    if (failed_.load(std::memory_order_acquire)) return false;
    if (!s.have_hdr_) {
      size_t avail = s.se_ - s.sb_;
      if (avail < kFrameHeaderBytes) {
        if (!fill(s, s.large_frames_ ? kFrameHeaderBytes - avail : s.stage_cap_)) return false;
        continue;
      }
      FrameDecode d = decode_frame_header(reinterpret_cast<const uint8_t*>(s.stage_.get() + s.sb_), avail,
                                          ctx_.epoch, limits_);
      if (d.status == FrameDecode::Invalid) {
        protocol_error(s, d.error);
        return false;
      }
      s.hdr_ = d.header;
      s.got_ = 0;
      s.msg_ = nullptr;
      s.discard_ = false;
      s.ctrl_.clear();
      if (d.status == FrameDecode::Stale) {
        log::debug("dropping a {} frame of epoch {} from {} (this mesh is at epoch {})",
                   frame_kind_name(s.hdr_.kind), s.hdr_.epoch, who(s), ctx_.epoch);
        s.sb_ += kFrameHeaderBytes;
        s.have_hdr_ = true;
        s.discard_ = true;
        continue;
      }
      switch (s.hdr_.kind) {
        case FrameKind::Data: {
          Bind b = bind(s);
          if (failed_.load(std::memory_order_acquire)) return false;
          // (bind() sets and clears the stall flags under mu_, so that a
          // receive posted meanwhile is sure to see them and resume us.)
          if (b == Bind::Stall) return false;  // the header stays in staging until a receive or budget frees up
          break;
        }
        case FrameKind::Abort:
          break;
        case FrameKind::Close: {
          // Everything the peer sent on this stream has been read. Its sends
          // on the other streams may still be arriving: the pair fails (and
          // keeps what arrived complete) once every stream is finished.
          s.sb_ += kFrameHeaderBytes;
          s.peer_closed_ = true;
          if (!peer_closing_) {
            peer_closing_ = true;
            log::debug("{} closed its mesh", who(s));
            fail_sends(fmt::format("{} closed its mesh (it shut down)", who(s)));
          }
          if (all_streams_finished())
            fail(std::make_exception_ptr(PeerLost(peer_, fmt::format("{} closed its mesh (it shut down)", who(s)),
                                                  "the peer left the job; a new membership needs a new mesh")),
                 Cause::PeerClosed);
          return false;
        }
        default:
          protocol_error(s, fmt::format("unexpected {} frame on an established connection",
                                        frame_kind_name(s.hdr_.kind)));
          return false;
      }
      s.sb_ += kFrameHeaderBytes;
      s.have_hdr_ = true;
      continue;
    }

    size_t rem = s.hdr_.length - s.got_;
    if (rem == 0) {
      finish_frame(s);
      continue;
    }
    size_t avail = s.se_ - s.sb_;
    bool reducing = !s.discard_ && s.msg_ && !s.msg_->discard && s.msg_->op && s.msg_->op->reduce();
    if (avail > 0) {
      size_t take = std::min(avail, rem);
      if (reducing && take < rem) take -= take % s.msg_->op->combiner.elem_size;
      if (take == 0) {
        if (!fill(s, rem)) return false;
        continue;
      }
      deliver(s, s.stage_.get() + s.sb_, take);
      s.sb_ += take;
      s.got_ += static_cast<uint32_t>(take);
      budget -= std::min(budget, take);
      continue;
    }
    char* direct = (!s.discard_ && s.msg_ && s.hdr_.kind == FrameKind::Data) ? s.msg_->direct_base() : nullptr;
    if (direct && rem >= kDirectMin) {
      size_t want = std::min(rem, budget);
      ssize_t r = ::recv(s.fd_.get(), direct + s.hdr_.offset + s.got_, want, MSG_DONTWAIT);
      if (r > 0) {
        s.got_ += static_cast<uint32_t>(r);
        budget -= std::min(budget, static_cast<size_t>(r));
        continue;
      }
      if (r == 0) {
        on_eof(s, 0);
        return false;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        s.rx_ready_ = false;
        return false;
      }
      on_eof(s, errno);
      return false;
    }
    if (!fill(s, reducing ? rem : s.stage_cap_)) return false;
  }
  return true;
}

TcpPair::Bind TcpPair::bind(TcpStream& s) {
  const FrameHeader& h = s.hdr_;
  std::string bad;
  {
    std::lock_guard<std::mutex> lock(mu_);
    InMsg* found = nullptr;
    for (auto& m : inflight_) {
      if (m->tag == h.tag) {
        found = m.get();
        break;
      }
    }
    if (found) {
      if (found->total != h.total || found->meta != h.meta)
        bad = fmt::format("piece of message tag {:x} says {} bytes (check {:08x}) but earlier pieces said {} ({:08x})",
                          h.tag, h.total, h.meta, found->total, found->meta);
      s.msg_ = found;
    } else {
      auto m = std::make_unique<InMsg>();
      m->tag = h.tag;
      m->meta = h.meta;
      m->total = h.total;
      m->remaining = h.total;
      bool matched = false;
      for (size_t i = 0; i < posted_.size(); ++i) {
        if (posted_[i]->tag != h.tag) continue;
        std::unique_ptr<RecvOp> op = std::move(posted_[i]);
        posted_.erase(posted_.begin() + static_cast<std::ptrdiff_t>(i));
        if (op->len != h.total || op->meta != h.meta) {
          op->req->fail(mismatch_error(peer_, h.total, h.meta, op->len, op->meta));
          m->discard = true;
        } else {
          m->op = std::move(op);
        }
        matched = true;
        break;
      }
      if (!matched) {
        auto sending = [&] {
          for (auto& o : streams_)
            if (o->queued_bytes_.load(std::memory_order_seq_cst) > 0) return true;
          return false;
        };
        bool fits = h.total == 0 || unexpected_bytes_ + h.total <= ctx_.unexpected_budget;
        bool worth_buffering = h.total <= kSmallUnexpectedBytes || !posted_.empty();
        if (fits && !worth_buffering) {
          // Announce the stall before looking at our own sends: a send queued
          // meanwhile then sees it and resumes us (enqueue_frames).
          if (!s.rx_stalled_.exchange(true)) stalled_.fetch_add(1);
          worth_buffering = sending();
        }
        if (!fits || !worth_buffering) {
          if (!s.rx_stalled_.exchange(true)) stalled_.fetch_add(1);
          return Bind::Stall;
        }
        m->buf.reset(new char[h.total ? h.total : 1]);
        unexpected_bytes_ += h.total;
      }
      s.msg_ = m.get();
      inflight_.push_back(std::move(m));
    }
    if (s.rx_stalled_.exchange(false)) stalled_.fetch_sub(1);
    InMsg* m = s.msg_;
    if (bad.empty() && m->op && m->op->reduce()) {
      size_t e = m->op->combiner.elem_size;
      if (h.offset % e || h.length % e)
        bad = fmt::format("piece [{}, +{}) of a {}-byte message splits a {}-byte element", h.offset, h.length,
                          h.total, e);
    }
  }
  if (!bad.empty()) {
    s.msg_ = nullptr;
    protocol_error(s, bad);
  }
  return Bind::Ok;
}

void TcpPair::deliver(TcpStream& s, const char* src, size_t n) {
  if (s.discard_) return;
  if (s.hdr_.kind == FrameKind::Abort) {
    s.ctrl_.append(src, n);
    return;
  }
  InMsg* m = s.msg_;
  if (!m || m->discard) return;
  size_t off = s.hdr_.offset + s.got_;
  if (m->op) {
    m->op->deliver(off, src, n);
  } else {
    std::memcpy(m->buf.get() + off, src, n);
  }
}

void TcpPair::finish_frame(TcpStream& s) {
  s.have_hdr_ = false;
  s.large_frames_ = s.hdr_.length >= kDirectMin;
  if (s.discard_) return;
  if (s.hdr_.kind == FrameKind::Abort) {
    auto kind = static_cast<AbortKind>(s.hdr_.meta);
    log::debug("{} sent ABORT: {}", who(s), s.ctrl_);
    fail(make_abort_error(kind, peer_, s.ctrl_), Cause::PeerAbort);
    return;
  }
  InMsg* m = s.msg_;
  s.msg_ = nullptr;
  if (!m) return;
  bytes_received_.fetch_add(s.hdr_.length, std::memory_order_relaxed);
  m->remaining -= s.hdr_.length;
  if (m->remaining == 0) complete_msg(m);
}

void TcpPair::complete_msg(InMsg* raw) {
  std::unique_lock<std::mutex> lock(mu_);
  std::unique_ptr<InMsg> m;
  for (size_t i = 0; i < inflight_.size(); ++i) {
    if (inflight_[i].get() == raw) {
      m = std::move(inflight_[i]);
      inflight_.erase(inflight_.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  if (!m) return;
  msgs_received_.fetch_add(1, std::memory_order_relaxed);
  if (m->op) {
    lock.unlock();
    m->op->req->complete();
    return;
  }
  if (m->discard) return;
  if (m->drop_when_done || m->late_op) {
    unexpected_bytes_ -= m->total;
    lock.unlock();
    if (m->late_op) {
      m->late_op->deliver(0, m->buf.get(), m->total);
      m->late_op->req->complete();
    }
    resume_stalled();
    return;
  }
  unexpected_done_.push_back(std::move(m));
}

void TcpPair::on_eof(TcpStream& s, int err) {
  s.eof_ = true;
  s.rx_ready_ = false;
  {
    // The peer is gone or leaving: let our side of the stream finish too, so
    // that a peer waiting for our EOF during its shutdown is not delayed.
    std::lock_guard<std::mutex> lock(s.send_mu_);
    s.closing_ = true;
    if (s.sendq_.empty() && !s.write_shut_) {
      ::shutdown(s.fd_.get(), SHUT_WR);
      s.write_shut_ = true;
    }
  }
  if (failed_.load(std::memory_order_acquire)) return;
  if (s.peer_closed_) {  // the EOF that follows a CLOSE
    if (all_streams_finished())
      fail(std::make_exception_ptr(PeerLost(peer_, fmt::format("{} closed its mesh (it shut down)", who(s)),
                                            "the peer left the job; a new membership needs a new mesh")),
           Cause::PeerClosed);
    return;
  }
  if (draining_) return;
  // An EOF without CLOSE: the peer died. What it sent before dying may still
  // sit in the other streams' socket buffers; take it before giving up.
  draining_ = true;
  for (auto& o : streams_) {
    if (o.get() == &s) continue;
    o->rx_ready_ = true;  // its epoll event may not have been seen yet
    while (rx_turn_locked(*o)) {
    }
  }
  draining_ = false;
  if (failed_.load(std::memory_order_acquire)) return;
  std::string why = err ? std::strerror(err) : "the peer closed the connection (its process exited or was killed)";
  log::warn("lost the connection to {}: {}", who(s), why);
  fail(std::make_exception_ptr(PeerLost(peer_, fmt::format("lost the connection to {}: {}", who(s), why),
                                        "the peer process died or its host is unreachable; check its log")),
       Cause::PeerLost);
}

void TcpPair::protocol_error(TcpStream& s, const std::string& why) {
  std::string msg = fmt::format("{} sent a malformed frame on stream {}: {}; closing the connection", who(s),
                                s.index_, why);
  log::warn("{}", msg);
  fail(std::make_exception_ptr(
           ProtocolError(msg, "the peer runs an incompatible braid build, or the connection is not a braid peer")),
       Cause::Protocol);
}

void TcpPair::fail(std::exception_ptr err, Cause cause) {
  std::vector<RequestPtr> reqs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failed_.load(std::memory_order_acquire)) return;
    error_ = err;
    failed_.store(true, std::memory_order_release);
    for (auto& op : posted_) reqs.push_back(op->req);
    for (auto& m : inflight_) {
      if (m->op) reqs.push_back(m->op->req);
      if (m->late_op) reqs.push_back(m->late_op->req);
    }
    posted_.clear();
    inflight_.clear();
    // A peer that left (closed or died) may have sent messages that arrived
    // whole: they stay receivable. Anything else drops them.
    peer_gone_ = cause == Cause::PeerLost || cause == Cause::PeerClosed;
    if (!peer_gone_) {
      unexpected_done_.clear();
      unexpected_bytes_ = 0;
    }
    if (cause == Cause::PeerLost || cause == Cause::Protocol || cause == Cause::PeerAbort) notify_ = err;
  }
  const bool keep_sync = cause == Cause::LocalAbort || cause == Cause::Shutdown;
  for (auto& sp : streams_) {
    TcpStream& s = *sp;
    // Receive state: the caller holds rx_mu_ (or is the loop thread).
    s.msg_ = nullptr;
    s.have_hdr_ = false;
    s.sb_ = s.se_ = 0;
    if (s.rx_stalled_.exchange(false)) stalled_.fetch_sub(1);
    std::lock_guard<std::mutex> lock(s.send_mu_);
    // A frame already half on the wire must be finished (from a private copy,
    // since its owner may free the buffer once the request fails) so that the
    // ABORT/CLOSE frame behind it arrives in sync.
    Fifo<SendItem> keep;
    while (!s.sendq_.empty()) {
      SendItem& it = s.sendq_.front();
      if (it.req) reqs.push_back(it.req);
      if (keep_sync && it.done > 0 && it.done < it.wire_bytes() && !it.owned) {
        SendItem copy;
        std::memcpy(copy.hdr, it.hdr, kFrameHeaderBytes);
        copy.owned = std::make_unique<char[]>(it.len ? it.len : 1);
        if (it.len) std::memcpy(copy.owned.get(), it.data, it.len);
        copy.data = copy.owned.get();
        copy.len = it.len;
        copy.done = it.done;
        keep.push_back(std::move(copy));
      } else if (keep_sync && it.owned) {
        it.req.reset();
        keep.push_back(std::move(it));
      }
      s.sendq_.pop_front();
    }
    s.queued_bytes_.store(0);
    while (!keep.empty()) {
      s.queued_bytes_.fetch_add(keep.front().wire_bytes());
      s.sendq_.push_back(std::move(keep.front()));
      keep.pop_front();
    }
    if (cause == Cause::PeerLost || cause == Cause::Protocol) {
      ::shutdown(s.fd_.get(), SHUT_RDWR);
      s.dead_ = true;
      s.write_shut_ = true;
    } else if (cause == Cause::PeerClosed) {
      if (!s.write_shut_) ::shutdown(s.fd_.get(), SHUT_WR);
      s.write_shut_ = true;
    }
  }
  for (auto& r : reqs) r->fail(err);
}

void TcpPair::queue_control_frame(TcpStream& s, FrameKind kind, uint32_t meta, const std::string& payload) {
  {
    std::lock_guard<std::mutex> lock(s.send_mu_);
    if (s.dead_ || s.write_shut_) return;
    SendItem item;
    FrameHeader h;
    h.kind = kind;
    h.epoch = ctx_.epoch;
    h.meta = meta;
    std::string p = payload.size() > 4000 ? payload.substr(0, 4000) : payload;
    h.length = static_cast<uint32_t>(p.size());
    h.total = h.length;
    encode_frame_header(h, item.hdr);
    item.owned = std::make_unique<char[]>(p.size() + 1);
    std::memcpy(item.owned.get(), p.data(), p.size());
    item.data = item.owned.get();
    item.len = p.size();
    s.queued_bytes_.fetch_add(item.wire_bytes());
    s.sendq_.push_back(std::move(item));
    if (kind == FrameKind::Close) s.closing_ = true;
  }
  loop_.post(&s);
}

void TcpPair::abort(AbortKind kind, const std::string& message) {
  {
    std::lock_guard<std::mutex> rx(rx_mu_);
    if (failed_.load(std::memory_order_acquire)) return;
    fail(make_abort_error(kind, ctx_.rank, message), Cause::LocalAbort);
  }
  // On every stream: whichever the peer reads first delivers it, even if
  // another stream is held up by back-pressure.
  for (auto& s : streams_) queue_control_frame(*s, FrameKind::Abort, static_cast<uint32_t>(kind), message);
}

void TcpPair::begin_close(std::exception_ptr why) {
  {
    std::lock_guard<std::mutex> rx(rx_mu_);
    fail(why, Cause::Shutdown);
  }
  for (auto& s : streams_) queue_control_frame(*s, FrameKind::Close, 0, {});
}

bool TcpPair::closed() const {
  for (auto& s : streams_)
    if (!s->eof_ && !s->dead_) return false;
  return true;
}

}  // namespace braid::net
