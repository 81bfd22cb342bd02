// In-process transport: ranks are threads, pairs are mutex-protected queues.
// A send that finds its receive already posted copies straight into it; one
// that does not is copied into a pending message the receive will consume.
#include <fmt/format.h>

#include <cstring>
#include <deque>
#include <map>
#include <mutex>

#include "core/error.hpp"
#include "net/abort_error.hpp"
#include "net/mesh.hpp"

namespace braid::net {

namespace {

struct PostedRecv {
  void* dst;
  const void* local;  // non-null for irecv_reduce
  size_t len;
  uint32_t meta;
  Combiner combiner;
  RequestPtr req;
};

struct Pending {
  std::vector<char> data;
  uint32_t meta;
};

// One direction src -> dst.
struct Channel {
  std::mutex mu;
  std::map<Tag, std::deque<Pending>> unexpected;
  std::map<Tag, std::deque<PostedRecv>> posted;
  std::exception_ptr error;  // set once the channel failed
  PairStats stats;
};

void deliver(PostedRecv& r, const void* data, size_t len, uint32_t meta, int peer) {
  if (len != r.len || meta != r.meta) {
    r.req->fail(make_abort_error(
        AbortKind::Mismatch, peer,
        fmt::format("message from rank {} has {} bytes (check {:08x}) but the receive expects {} bytes (check {:08x})",
                    peer, len, meta, r.len, r.meta)));
    return;
  }
  if (r.local) {
    r.combiner.fn(r.dst, r.local, data, len);
  } else if (len) {
    std::memcpy(r.dst, data, len);
  }
  r.req->complete();
}

}  // namespace

class InprocHub {
 public:
  explicit InprocHub(int size) : size_(size), channels_(static_cast<size_t>(size) * size) {
    for (auto& c : channels_) c = std::make_unique<Channel>();
  }
  int size() const { return size_; }
  Channel& channel(int src, int dst) { return *channels_[static_cast<size_t>(src) * size_ + dst]; }

  std::mutex mu;
  std::vector<std::function<void(int, std::exception_ptr)>> failure_handlers;

 private:
  int size_;
  std::vector<std::unique_ptr<Channel>> channels_;
};

namespace {

class InprocPair : public Pair {
 public:
  InprocPair(std::shared_ptr<InprocHub> hub, int self, int peer)
      : hub_(std::move(hub)), self_(self), peer_(peer) {}

  int peer() const override { return peer_; }
  const char* kind() const override { return "inproc"; }

  RequestPtr isend(const void* buf, size_t len, Tag tag, uint32_t meta) override {
    auto req = std::make_shared<Request>();
    Channel& ch = hub_->channel(self_, peer_);
    std::unique_lock<std::mutex> lock(ch.mu);
    if (ch.error) {
      req->fail(ch.error);
      return req;
    }
    ch.stats.bytes_sent += len;
    ch.stats.messages_sent++;
    auto it = ch.posted.find(tag);
    if (it != ch.posted.end() && !it->second.empty()) {
      PostedRecv r = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) ch.posted.erase(it);
      lock.unlock();
      deliver(r, buf, len, meta, self_);
    } else {
      Pending p;
      p.data.assign(static_cast<const char*>(buf), static_cast<const char*>(buf) + len);
      p.meta = meta;
      ch.unexpected[tag].push_back(std::move(p));
    }
    req->complete();
    return req;
  }

  RequestPtr irecv(void* buf, size_t len, Tag tag, uint32_t meta) override {
    return post(PostedRecv{buf, nullptr, len, meta, {}, std::make_shared<Request>()}, tag);
  }

  RequestPtr irecv_reduce(void* dst, const void* local, size_t len, Tag tag,
                          const Combiner& combiner, uint32_t meta) override {
    return post(PostedRecv{dst, local, len, meta, combiner, std::make_shared<Request>()}, tag);
  }

  void abort(AbortKind kind, const std::string& message) override {
    auto err = make_abort_error(kind, self_, message);
    fail_channel(hub_->channel(self_, peer_), err);
    fail_channel(hub_->channel(peer_, self_), err);
  }

  bool failed() const override {
    Channel& ch = hub_->channel(peer_, self_);
    std::lock_guard<std::mutex> lock(ch.mu);
    return ch.error != nullptr;
  }

  PairStats stats() const override {
    PairStats s;
    {
      Channel& out = hub_->channel(self_, peer_);
      std::lock_guard<std::mutex> lock(out.mu);
      s.bytes_sent = out.stats.bytes_sent;
      s.messages_sent = out.stats.messages_sent;
    }
    Channel& in = hub_->channel(peer_, self_);
    std::lock_guard<std::mutex> lock(in.mu);
    s.bytes_received = in.stats.bytes_sent;
    s.messages_received = in.stats.messages_sent;
    return s;
  }

  static void fail_channel(Channel& ch, std::exception_ptr err) {
    std::vector<RequestPtr> to_fail;
    {
      std::lock_guard<std::mutex> lock(ch.mu);
      if (!ch.error) ch.error = err;
      for (auto& [tag, q] : ch.posted)
        for (auto& r : q) to_fail.push_back(r.req);
      ch.posted.clear();
    }
    for (auto& r : to_fail) r->fail(err);
  }

 private:
  RequestPtr post(PostedRecv r, Tag tag) {
    RequestPtr req = r.req;
    Channel& ch = hub_->channel(peer_, self_);
    std::unique_lock<std::mutex> lock(ch.mu);
    if (ch.error) {
      req->fail(ch.error);
      return req;
    }
    auto it = ch.unexpected.find(tag);
    if (it != ch.unexpected.end() && !it->second.empty()) {
      Pending p = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) ch.unexpected.erase(it);
      lock.unlock();
      deliver(r, p.data.data(), p.data.size(), p.meta, peer_);
    } else {
      ch.posted[tag].push_back(std::move(r));
    }
    return req;
  }

  std::shared_ptr<InprocHub> hub_;
  int self_;
  int peer_;
};

class InprocMesh : public Mesh {
 public:
  InprocMesh(std::shared_ptr<InprocHub> hub, int rank, uint32_t epoch)
      : hub_(std::move(hub)), rank_(rank), epoch_(epoch) {
    for (int p = 0; p < hub_->size(); ++p) {
      pairs_.push_back(p == rank ? nullptr : std::make_unique<InprocPair>(hub_, rank, p));
      local_.push_back(p);
      hosts_.push_back("inproc");
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }
  uint32_t epoch() const override { return epoch_; }
  Pair& pair(int peer) override {
    if (peer < 0 || peer >= size() || peer == rank_)
      throw Error(fmt::format("no pair from rank {} to rank {}", rank_, peer));
    return *pairs_[peer];
  }
  const std::vector<int>& local_ranks() const override { return local_; }
  const std::vector<std::string>& host_ids() const override { return hosts_; }
  void abort(AbortKind kind, const std::string& message) override {
    for (auto& p : pairs_)
      if (p) p->abort(kind, message);
  }
  void on_pair_failure(std::function<void(int, std::exception_ptr)> fn) override {
    std::lock_guard<std::mutex> lock(hub_->mu);
    hub_->failure_handlers.push_back(std::move(fn));
  }
  Progress* progress() override { return nullptr; }

 private:
  std::shared_ptr<InprocHub> hub_;
  int rank_;
  uint32_t epoch_;
  std::vector<std::unique_ptr<InprocPair>> pairs_;
  std::vector<int> local_;
  std::vector<std::string> hosts_;
};

}  // namespace

std::shared_ptr<InprocHub> make_inproc_hub(int size) { return std::make_shared<InprocHub>(size); }

std::shared_ptr<Mesh> connect_inproc(const std::shared_ptr<InprocHub>& hub, int rank,
                                     uint32_t epoch) {
  if (rank < 0 || rank >= hub->size())
    throw Error(fmt::format("inproc rank {} out of range 0..{}", rank, hub->size() - 1));
  return std::make_shared<InprocMesh>(hub, rank, epoch);
}

}  // namespace braid::net
