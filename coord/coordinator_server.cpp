#include "coord/coordinator_server.hpp"

#include <algorithm>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/tcp_store.hpp"

namespace braid::coord {

// Runs the Coordinator on the store server's thread: requests, closed
// connections and ticks arrive there one at a time.
struct CoordinatorServer::Adapter : net::StoreServerExtension {
  Coordinator* coordinator = nullptr;
  net::TcpStoreServer* server = nullptr;
  int tick_ms = 50;

  void on_attach(net::TcpStoreServer& s) override { server = &s; }

  void on_request(uint64_t conn, uint8_t op, const std::string&, const std::string& value) override {
    if (!is_coord_op(op)) {
      server->reply(conn, false, "unknown coordinator operation " + std::to_string(op));
      return;
    }
    try {
      auto answer = coordinator->handle(conn, static_cast<CoordOp>(op), value, now_s());
      if (answer) server->reply(conn, true, *answer);
    } catch (const Error& e) {
      log::warn("coordinator: refused a {} request: {}", op_name(static_cast<CoordOp>(op)), e.what());
      server->reply(conn, false, e.what());
    }
  }
  void on_close(uint64_t conn) override { coordinator->on_close(conn, now_s()); }
  void on_tick() override { coordinator->tick(now_s()); }
  int tick_interval_ms() const override { return tick_ms; }
};

CoordinatorServer::CoordinatorServer(const std::string& host, uint16_t port, std::string secret,
                                     CoordinatorOptions options) {
  adapter_ = std::make_unique<Adapter>();
  Adapter* a = adapter_.get();
  // Deferred answers are produced inside the adapter's callbacks, i.e. on the
  // server thread, where TcpStoreServer::reply may be called.
  coordinator_ = std::make_unique<Coordinator>(
      std::move(options), [a](uint64_t conn, const std::string& body) { a->server->reply(conn, true, body); },
      now_s());
  a->coordinator = coordinator_.get();
  // Death is checked on ticks: 20 per death timeout keep detection within 5%
  // of it; at least every 100 ms so that answers to parked requests are timely.
  double death = coordinator_->options().timeouts.heartbeat_death_s;
  a->tick_ms = std::clamp(static_cast<int>(death * 1000 / 20), 5, 100);
  server_ = std::make_unique<net::TcpStoreServer>(host, port, std::move(secret), a);
  log::debug("coordinator: serving the rendezvous store and membership on {}:{} (min_replicas {}, max_replicas {}; "
            "{})",
            host, server_->port(), coordinator_->options().min_replicas,
            coordinator_->options().max_replicas > 0 ? std::to_string(coordinator_->options().max_replicas) : "-",
            coordinator_->options().timeouts.describe());
}

CoordinatorServer::~CoordinatorServer() { stop(); }

void CoordinatorServer::stop() {
  if (server_) server_->stop();
}

uint16_t CoordinatorServer::port() const { return server_->port(); }
StatusView CoordinatorServer::status() const { return coordinator_->status(now_s()); }
uint64_t CoordinatorServer::version() const { return coordinator_->version(); }
uint64_t CoordinatorServer::incarnation() const { return coordinator_->incarnation(); }
size_t CoordinatorServer::key_count() const { return server_->key_count(); }

}  // namespace braid::coord
