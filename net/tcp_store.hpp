#pragma once
// The rendezvous key-value store over TCP: TcpStoreServer is run by the
// launcher of node 0 (and grows into the coordinator later); TcpStore is the
// client every rank uses. Requests and replies are small length-prefixed
// messages; a GET for a missing key is parked on the server until the key is
// set, so waiting costs no polling.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "net/store.hpp"

namespace braid::net {

// host:port parsing for rendezvous addresses; throws ConfigError on bad text.
struct HostPort {
  std::string host;
  uint16_t port = 0;
  static HostPort parse(const std::string& text);
  std::string str() const;
};

class TcpStoreServer {
 public:
  // Binds host:port (port 0 picks a free one) and serves on its own thread.
  // `secret` non-empty: every client must pass the job-secret handshake.
  TcpStoreServer(const std::string& host, uint16_t port, std::string secret = {});
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  uint16_t port() const { return port_; }
  const std::string& host() const { return host_; }
  void stop();

  // Direct access for the process that hosts the server (same semantics).
  size_t key_count() const;

 private:
  void serve();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string host_;
  uint16_t port_ = 0;
  std::thread thread_;
};

class TcpStore : public Store {
 public:
  // Connects (retrying until `connect_timeout_s`) to a TcpStoreServer.
  TcpStore(const HostPort& addr, std::string secret = {}, double connect_timeout_s = 60);
  ~TcpStore() override;

  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, const Deadline& deadline) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool try_get(const std::string& key, std::string& value) override;
  void erase(const std::string& key) override;

 private:
  std::string call(uint8_t op, const std::string& a, const std::string& b, const Deadline& d,
                   uint8_t* status);
  void reconnect(const Deadline& d);
  HostPort addr_;
  std::string secret_;
  std::mutex mu_;  // one request at a time per client
  int fd_ = -1;
};

}  // namespace braid::net
