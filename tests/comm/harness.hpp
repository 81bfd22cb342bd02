#pragma once
// Test harness: ranks as threads of this process over the in-process
// transport, optionally behind a mesh wrapper that pretends the ranks sit on
// several hosts (for the hierarchical algorithm and multi-host tuning).
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.hpp"
#include "net/mesh.hpp"

namespace braid::comm::harness {

// Delegates everything to an inner mesh but reports the given host ids.
class FakeHostsMesh : public net::Mesh {
 public:
  FakeHostsMesh(std::shared_ptr<net::Mesh> inner, std::vector<std::string> hosts)
      : inner_(std::move(inner)), hosts_(std::move(hosts)) {
    for (int r = 0; r < inner_->size(); ++r)
      if (hosts_[static_cast<size_t>(r)] == hosts_[static_cast<size_t>(inner_->rank())]) local_.push_back(r);
  }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  uint32_t epoch() const override { return inner_->epoch(); }
  net::Pair& pair(int peer) override { return inner_->pair(peer); }
  const std::vector<int>& local_ranks() const override { return local_; }
  const std::vector<std::string>& host_ids() const override { return hosts_; }
  void abort(net::AbortKind kind, const std::string& message) override { inner_->abort(kind, message); }
  void on_pair_failure(std::function<void(int, std::exception_ptr)> fn) override {
    inner_->on_pair_failure(std::move(fn));
  }
  net::Progress* progress() override { return inner_->progress(); }

 private:
  std::shared_ptr<net::Mesh> inner_;
  std::vector<std::string> hosts_;
  std::vector<int> local_;
};

// "h0,h0,h1,h1,...": `per_host` consecutive ranks per host.
inline std::vector<std::string> hosts_of(int n, int per_host) {
  std::vector<std::string> h;
  for (int r = 0; r < n; ++r) h.push_back("h" + std::to_string(r / per_host));
  return h;
}

struct RankResult {
  std::exception_ptr error;
};

// Runs body(comm) on n threads, one Communicator each; returns each rank's
// exception (null if it returned normally).
inline std::vector<std::exception_ptr> run_ranks(int n, const CommOptions& options,
                                                 const std::function<void(Communicator&)>& body,
                                                 const std::vector<std::string>& hosts = {}) {
  auto hub = net::make_inproc_hub(n);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        std::shared_ptr<net::Mesh> mesh = net::connect_inproc(hub, r);
        if (!hosts.empty()) mesh = std::make_shared<FakeHostsMesh>(mesh, hosts);
        Communicator comm(mesh, options);
        body(comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

inline std::string describe(const std::exception_ptr& e) {
  if (!e) return "no error";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace braid::comm::harness
