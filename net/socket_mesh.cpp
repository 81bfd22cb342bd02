#include "net/socket_mesh.hpp"

#include <fmt/format.h>

#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::net {

SocketMesh::SocketMesh(const MeshOptions& o, std::vector<std::string> host_ids, bool has_shm)
    : rank_(o.rank), size_(o.size), epoch_(o.epoch), has_shm_(has_shm), hosts_(std::move(host_ids)) {
  ctx_.rank = o.rank;
  ctx_.size = o.size;
  ctx_.epoch = o.epoch;
  ctx_.unexpected_budget = o.unexpected_budget_bytes;
  ctx_.max_frame_bytes = o.max_frame_bytes;
  ctx_.max_message_bytes = o.max_message_bytes;
  ctx_.progress = has_shm ? &progress_ : nullptr;
  ctx_.on_failure = [this](int peer, std::exception_ptr e) { notify(peer, std::move(e)); };
  pairs_.resize(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r)
    if (hosts_[static_cast<size_t>(r)] == hosts_[static_cast<size_t>(rank_)]) local_.push_back(r);
}

SocketMesh::~SocketMesh() {
  {
    // Whoever registered callbacks (a communicator) is already gone or going.
    std::lock_guard<std::mutex> lock(cb_mu_);
    callbacks_.clear();
  }
  loop_.stop();
  // Orderly close: tell every peer (CLOSE frame), finish our side, and wait a
  // little for theirs, so a peer sees "closed its mesh" rather than a reset.
  auto why = std::make_exception_ptr(Aborted("the mesh was destroyed while this request was pending"));
  for (TcpPair* p : tcp_) p->begin_close(why);
  for (ShmPair* p : shm_) p->begin_close(why);
  auto all_closed = [this] {
    for (TcpPair* p : tcp_)
      if (!p->closed()) return false;
    for (ShmPair* p : shm_)
      if (!p->closed()) return false;
    return true;
  };
  loop_.run_until(all_closed, now_ns() + 1'000'000'000);
  pairs_.clear();
}

void SocketMesh::add_tcp_pair(int peer, std::vector<Fd> fds, std::vector<std::string> addrs,
                              const FaultSpec& faults) {
  auto p = std::make_unique<TcpPair>(ctx_, loop_, peer, std::move(fds), std::move(addrs), faults);
  tcp_.push_back(p.get());
  pairs_[static_cast<size_t>(peer)] = std::move(p);
}

void SocketMesh::add_shm_pair(int peer, std::unique_ptr<ShmSegment> segment, bool connector, Fd control,
                              std::string addr, const FaultSpec& faults) {
  auto p = std::make_unique<ShmPair>(ctx_, loop_, peer, std::move(segment), connector, std::move(control),
                                     std::move(addr), faults);
  shm_.push_back(p.get());
  progress_.add(p.get());
  pairs_[static_cast<size_t>(peer)] = std::move(p);
}

void SocketMesh::start() {
  for (TcpPair* p : tcp_) p->attach();
  for (ShmPair* p : shm_) p->attach();
  loop_.start(fmt::format("braid-io-r{}", rank_));
}

Pair& SocketMesh::pair(int peer) {
  if (peer < 0 || peer >= size_ || peer == rank_ || !pairs_[static_cast<size_t>(peer)])
    throw Error(fmt::format("no pair from rank {} to rank {} (world size {})", rank_, peer, size_));
  return *pairs_[static_cast<size_t>(peer)];
}

void SocketMesh::abort(AbortKind kind, const std::string& message) {
  for (auto& p : pairs_)
    if (p) p->abort(kind, message);
}

void SocketMesh::on_pair_failure(std::function<void(int, std::exception_ptr)> fn) {
  std::lock_guard<std::mutex> lock(cb_mu_);
  callbacks_.push_back(std::move(fn));
}

void SocketMesh::notify(int peer, std::exception_ptr error) {
  std::vector<std::function<void(int, std::exception_ptr)>> cbs;
  {
    std::lock_guard<std::mutex> lock(cb_mu_);
    cbs = callbacks_;
  }
  for (auto& cb : cbs) cb(peer, error);
}

}  // namespace braid::net
