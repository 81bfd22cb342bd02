#pragma once
// The Mesh that connect_mesh() builds: TCP pairs and shared-memory pairs, one
// I/O thread for all their sockets, inline progress for shared memory.
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "net/io_loop.hpp"
#include "net/mesh.hpp"
#include "net/shm_pair.hpp"
#include "net/tcp_pair.hpp"

namespace braid::net {

class SocketMesh final : public Mesh {
 public:
  SocketMesh(const MeshOptions& options, std::vector<std::string> host_ids, bool has_shm);
  ~SocketMesh() override;

  // Set-up, before start().
  void add_tcp_pair(int peer, std::vector<Fd> fds, std::vector<std::string> addrs, const FaultSpec& faults);
  void add_shm_pair(int peer, std::unique_ptr<ShmSegment> segment, bool connector, Fd control, std::string addr,
                    const FaultSpec& faults);
  void start();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  uint32_t epoch() const override { return epoch_; }
  Pair& pair(int peer) override;
  const std::vector<int>& local_ranks() const override { return local_; }
  const std::vector<std::string>& host_ids() const override { return hosts_; }
  void abort(AbortKind kind, const std::string& message) override;
  void on_pair_failure(std::function<void(int peer, std::exception_ptr)> fn) override;
  Progress* progress() override { return has_shm_ ? &progress_ : nullptr; }

 private:
  void notify(int peer, std::exception_ptr error);

  int rank_;
  int size_;
  uint32_t epoch_;
  bool has_shm_;
  PairContext ctx_;
  std::vector<int> local_;
  std::vector<std::string> hosts_;
  IoLoop loop_;
  ShmProgress progress_;
  std::vector<std::unique_ptr<Pair>> pairs_;
  std::vector<TcpPair*> tcp_;
  std::vector<ShmPair*> shm_;
  std::mutex cb_mu_;
  std::vector<std::function<void(int, std::exception_ptr)>> callbacks_;
};

}  // namespace braid::net
