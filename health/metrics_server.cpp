#include "health/metrics_server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/thread.hpp"

namespace braid::health {
namespace {

bool valid_name(const std::string& n) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

}  // namespace

void MetricsRegistry::set(const std::string& name, double value, const std::string& help, const char* type) {
  if (!valid_name(name))
    throw ConfigError(fmt::format("metric name '{}' is not a Prometheus name", name), "use [a-zA-Z_:][a-zA-Z0-9_:]*");
  std::lock_guard<std::mutex> lock(mu_);
  auto& m = metrics_[name];
  m.value = value;
  m.help = help;
  m.type = type;
}

void MetricsRegistry::add(const std::string& name, double delta, const std::string& help) {
  double now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = metrics_.find(name);
    now = (it == metrics_.end() ? 0.0 : it->second.value) + delta;
  }
  set(name, now, help, "counter");
}

double MetricsRegistry::get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = metrics_.find(name);
  return it == metrics_.end() ? 0.0 : it->second.value;
}

std::string MetricsRegistry::prometheus_text() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [name, m] : metrics_) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, m.help, name, m.type, name, number(m.value));
  }
  return out;
}

MetricsServer::MetricsServer(const MetricsRegistry& registry, int port, const std::string& bind_address)
    : registry_(registry) {
  if (port < 0 || port > 65535)
    throw ConfigError(fmt::format("metrics port {} is out of range", port), "use 1..65535, or 0 for any free port");
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw NetError(fmt::format("metrics endpoint: socket(): {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, bind_address.c_str(), &a.sin_addr) != 1) {
    ::close(listen_fd_);
    throw ConfigError(fmt::format("metrics bind address '{}' is not an IPv4 address", bind_address),
                      "use e.g. 127.0.0.1 or 0.0.0.0");
  }
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd_, 16) != 0) {
    const int e = errno;
    ::close(listen_fd_);
    throw NetError(fmt::format("metrics endpoint cannot listen on {}:{}: {}", bind_address, port, std::strerror(e)),
                   "choose another health.metrics_port (0 picks a free one)");
  }
  socklen_t len = sizeof a;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { serve(); });
}

MetricsServer::~MetricsServer() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void MetricsServer::serve() {
  set_thread_name("braid-metrics");
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    answer(fd);
    ::close(fd);
  }
}

void MetricsServer::answer(int fd) {
  // Read the request head (bounded in size and time), then answer.
  std::string req;
  char buf[1024];
  const Deadline deadline = Deadline::in_seconds(2);
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos && req.size() < 8192) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, std::max(1, deadline.remaining_ms_for_poll())) <= 0) return;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    req.append(buf, static_cast<size_t>(n));
  }
  const bool get = req.rfind("GET ", 0) == 0;
  const size_t path_end = req.find(' ', 4);
  const std::string path = get && path_end != std::string::npos ? req.substr(4, path_end - 4) : "";
  std::string body, status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8";
  if (!get) {
    status = "405 Method Not Allowed";
    body = "only GET\n";
  } else if (path == "/metrics") {
    body = registry_.prometheus_text();
  } else {
    status = "404 Not Found";
    body = "braid serves /metrics\n";
  }
  send_all(fd, fmt::format("HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                           status, type, body.size(), body));
}

std::string http_get(const std::string& host, int port, const std::string& path, double timeout_s) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw NetError(fmt::format("socket(): {}", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const int e = errno;
    ::close(fd);
    throw NetError(fmt::format("GET http://{}:{}{}: {}", host, port, path, std::strerror(e)));
  }
  send_all(fd, fmt::format("GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", path, host));
  std::string resp;
  char buf[4096];
  const Deadline deadline = Deadline::in_seconds(timeout_s);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, std::max(1, deadline.remaining_ms_for_poll())) <= 0) {
      ::close(fd);
      throw NetError(fmt::format("GET http://{}:{}{}: no answer within {} s", host, port, path, timeout_s));
    }
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t head_end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos)
    throw NetError(fmt::format("GET http://{}:{}{}: not an HTTP answer", host, port, path));
  if (resp.find(" 200 ") > resp.find("\r\n"))
    throw NetError(fmt::format("GET http://{}:{}{}: {}", host, port, path, resp.substr(0, resp.find("\r\n"))));
  return resp.substr(head_end + 4);
}

}  // namespace braid::health
