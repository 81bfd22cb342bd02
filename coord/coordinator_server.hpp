#pragma once
// The coordinator as a network service: the rendezvous store and the
// Coordinator on one port, behind the job-secret handshake. `braid launch`
// embeds one on node 0; `braid coordinator --port P` runs one alone.
#include <cstdint>
#include <memory>
#include <string>

#include "coord/coordinator.hpp"

namespace braid::net {
class TcpStoreServer;
}

namespace braid::coord {

class CoordinatorServer {
 public:
  // Binds host:port (port 0 picks one) and serves on its own thread.
  CoordinatorServer(const std::string& host, uint16_t port, std::string secret, CoordinatorOptions options);
  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  uint16_t port() const;
  void stop();
  StatusView status() const;
  uint64_t version() const;
  uint64_t incarnation() const;
  // Number of keys in the store (as TcpStoreServer::key_count).
  size_t key_count() const;

 private:
  struct Adapter;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Adapter> adapter_;
  std::unique_ptr<net::TcpStoreServer> server_;
};

}  // namespace braid::coord
