#pragma once
// The rendezvous key-value store over TCP: TcpStoreServer is run by the
// launcher of node 0 (and hosts the coordinator, see StoreServerExtension);
// TcpStore is the client every rank uses. Requests and replies are small
// length-prefixed messages; a GET for a missing key is parked on the server
// until the key is set, so waiting costs no polling.
//
// Every connection starts with the job-secret handshake of net/auth.hpp
// (mode "none" when the job has no secret), so a process without the secret
// can neither read nor write the store nor talk to the coordinator.
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

// Op codes from here up are not key-value operations: the server hands them to
// its extension (the coordinator), so that one port serves both.
inline constexpr uint8_t kFirstExtensionOp = 32;

// Extra operations served on the store's port. All callbacks run on the
// server's thread, one at a time, so an extension needs no locking for state
// that only they touch. A connection has at most one request in flight (the
// TcpStore client waits for each reply), so replies cannot be reordered.
class TcpStoreServer;
class StoreServerExtension {
 public:
  virtual ~StoreServerExtension() = default;
  // Called once by the server's constructor, before it serves anything, so
  // that the extension can answer through server.reply().
  virtual void on_attach(TcpStoreServer& server) { (void)server; }
  // One request with op >= kFirstExtensionOp from connection `conn` (ids are
  // never reused). Answer now or later with TcpStoreServer::reply(), once.
  virtual void on_request(uint64_t conn, uint8_t op, const std::string& key, const std::string& value) = 0;
  // The connection closed (EOF, error, malformed data, or server stop).
  virtual void on_close(uint64_t conn) = 0;
  // Called at least every tick_interval_ms() while the server runs.
  virtual void on_tick() = 0;
  virtual int tick_interval_ms() const { return 1000; }
};

class TcpStoreServer {
 public:
  // Binds host:port (port 0 picks a free one) and serves on its own thread.
  // Clients must pass the job-secret handshake with `secret` (empty: mode
  // "none", for loopback-only jobs). `extension`, if given, must outlive the
  // server (or stop() must be called first).
  TcpStoreServer(const std::string& host, uint16_t port, std::string secret = {},
                 StoreServerExtension* extension = nullptr);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  uint16_t port() const { return port_; }
  const std::string& host() const { return host_; }
  void stop();

  // Direct access for the process that hosts the server (same semantics).
  size_t key_count() const;

  // Answers an extension request of connection `conn`: `ok` false sends the
  // "failed" status with `value` as the error text. Call only from the
  // extension's callbacks (the server thread); a closed connection is ignored.
  void reply(uint64_t conn, bool ok, const std::string& value);

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
  // Connects (retrying until `connect_timeout_s`) to a TcpStoreServer and
  // authenticates with `secret` (throws AuthError at once if refused).
  TcpStore(const HostPort& addr, std::string secret = {}, double connect_timeout_s = 60);
  ~TcpStore() override;

  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, const Deadline& deadline) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool try_get(const std::string& key, std::string& value) override;
  void erase(const std::string& key) override;

  // One extension request (op >= kFirstExtensionOp), answered by the server's
  // extension. Returns the reply and sets *ok to its status. A broken
  // connection is re-opened on the next call (within `deadline`); on any
  // failure (NetError, Timeout) this connection is closed, so a late reply is
  // never taken for the answer to a later request.
  std::string request(uint8_t op, const std::string& key, const std::string& value, const Deadline& deadline,
                      bool* ok);
  const HostPort& address() const { return addr_; }

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
