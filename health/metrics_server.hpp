#pragma once
// Live metrics in the Prometheus text format (version 0.0.4), served over a
// minimal HTTP/1.0 endpoint: GET /metrics. One thread polls the listening
// socket with a short timeout so it stops promptly; each request is answered
// and the connection closed (scrapes are seconds apart).
//
//   MetricsRegistry reg;
//   reg.set("braid_step", 12, "optimizer steps done");
//   MetricsServer server(reg, 9100);      // port 0: any free port, see port()
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace braid::health {

class MetricsRegistry {
 public:
  // A gauge (type "gauge") or a counter (type "counter"); names follow
  // Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*), checked.
  void set(const std::string& name, double value, const std::string& help, const char* type = "gauge");
  void add(const std::string& name, double delta, const std::string& help);  // a counter
  double get(const std::string& name) const;  // 0 if absent
  std::string prometheus_text() const;

 private:
  struct Metric {
    double value = 0;
    std::string help;
    std::string type;
  };
  mutable std::mutex mu_;
  std::map<std::string, Metric> metrics_;
};

class MetricsServer {
 public:
  // Listens on bind_address:port (0 = a free port). Throws NetError when it
  // cannot listen.
  MetricsServer(const MetricsRegistry& registry, int port, const std::string& bind_address = "127.0.0.1");
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  int port() const { return port_; }

 private:
  void serve();
  void answer(int fd);

  const MetricsRegistry& registry_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// GET http://host:port/path; returns the body; throws NetError (for tests and tools).
std::string http_get(const std::string& host, int port, const std::string& path, double timeout_s = 5);

}  // namespace braid::health
