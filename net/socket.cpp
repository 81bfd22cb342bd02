#include "net/socket.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/error.hpp"

namespace braid::net {

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

void set_nonblocking(int fd, bool on) {
  int fl = fcntl(fd, F_GETFL, 0);
  if (fl < 0) throw NetError(fmt::format("fcntl(F_GETFL) failed: {}", std::strerror(errno)));
  fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, fl) != 0) throw NetError(fmt::format("fcntl(F_SETFL) failed: {}", std::strerror(errno)));
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void set_socket_buffers(int fd, size_t bytes) {
  if (bytes == 0) return;  // keep kernel autotuning
  int v = bytes > (1u << 30) ? (1 << 30) : static_cast<int>(bytes);
  // FORCE variants ignore the sysctl caps but need CAP_NET_ADMIN; fall back.
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) != 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) != 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
}

namespace {

void wait_fd(int fd, short events, const Deadline& deadline, const std::string& what, const char* doing) {
  while (true) {
    pollfd p{fd, events, 0};
    int64_t ms = deadline.remaining_ms_for_poll();
    int r = poll(&p, 1, ms < 0 || ms > 1000 ? 1000 : static_cast<int>(ms));
    if (r > 0) return;
    if (r < 0 && errno != EINTR)
      throw NetError(fmt::format("poll on the connection to {} failed: {}", what, std::strerror(errno)));
    if (deadline.expired())
      throw Timeout(fmt::format("timed out {} {}", doing, what),
                    "the peer is slow, hung or unreachable; check that it is running and reachable");
  }
}

}  // namespace

void send_all(int fd, const void* data, size_t n, const Deadline& deadline, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  size_t off = 0;
  while (off < n) {
    ssize_t w = ::send(fd, p + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      off += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      wait_fd(fd, POLLOUT, deadline, what, "sending to");
      continue;
    }
    throw NetError(fmt::format("connection to {} failed while sending: {}", what,
                               w < 0 ? std::strerror(errno) : "no progress"));
  }
}

void recv_exact(int fd, void* data, size_t n, const Deadline& deadline, const std::string& what) {
  char* p = static_cast<char*>(data);
  size_t off = 0;
  while (off < n) {
    ssize_t r = ::recv(fd, p + off, n - off, MSG_DONTWAIT);
    if (r > 0) {
      off += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) throw NetError(fmt::format("{} closed the connection", what));
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      wait_fd(fd, POLLIN, deadline, what, "waiting for");
      continue;
    }
    throw NetError(fmt::format("connection to {} failed while receiving: {}", what, std::strerror(errno)));
  }
}

namespace {

bool resolve_ipv4(const std::string& host, in_addr* out) {
  if (host.empty() || host == "0.0.0.0") {
    out->s_addr = htonl(INADDR_ANY);
    return true;
  }
  if (inet_pton(AF_INET, host.c_str(), out) == 1) return true;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) return false;
  *out = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  return true;
}

}  // namespace

Fd listen_tcp(const std::string& host, uint16_t port, uint16_t* bound_port, int backlog) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (!resolve_ipv4(host, &a.sin_addr))
    throw ConfigError(fmt::format("cannot resolve the address '{}' to listen on", host),
                      "set BRAID_IFACE_ADDR (or the bind address) to an IPv4 address of this host");
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw NetError(fmt::format("cannot create a socket: {}", std::strerror(errno)));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw NetError(fmt::format("cannot listen on {}:{}: {}", host, port, std::strerror(errno)),
                   "choose another address or port (is the address assigned to this host?)");
  if (::listen(fd.get(), backlog) != 0)
    throw NetError(fmt::format("listen() on {}:{} failed: {}", host, port, std::strerror(errno)));
  socklen_t len = sizeof a;
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  if (bound_port) *bound_port = ntohs(a.sin_port);
  return fd;
}

Fd connect_tcp(const std::string& host, uint16_t port, const Deadline& deadline, const std::string& what,
               size_t socket_buffer_bytes) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (!resolve_ipv4(host, &a.sin_addr))
    throw NetError(fmt::format("cannot resolve {} address '{}'", what, host));
  int delay_ms = 5;
  while (true) {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) throw NetError(fmt::format("cannot create a socket: {}", std::strerror(errno)));
    set_socket_buffers(fd.get(), socket_buffer_bytes);
    int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      wait_fd(fd.get(), POLLOUT, deadline, what, "connecting to");
      socklen_t len = sizeof err;
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    }
    if (err == 0) return fd;
    bool retry = err == ECONNREFUSED || err == ETIMEDOUT || err == EHOSTUNREACH || err == ENETUNREACH ||
                 err == ECONNRESET || err == EAGAIN;
    if (!retry || deadline.expired())
      throw NetError(fmt::format("cannot connect to {} at {}:{}: {}", what, host, port, std::strerror(err)),
                     "check that the peer is running and that the address is reachable from this host");
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    delay_ms = std::min(delay_ms * 2, 200);
  }
}

Fd accept_tcp(int listen_fd, const Deadline& deadline, std::string* peer_addr) {
  while (true) {
    pollfd p{listen_fd, POLLIN, 0};
    int64_t ms = deadline.remaining_ms_for_poll();
    int r = poll(&p, 1, ms < 0 || ms > 200 ? 200 : static_cast<int>(ms));
    if (r > 0) {
      sockaddr_in a{};
      socklen_t len = sizeof a;
      int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&a), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) {
        if (peer_addr) {
          char buf[INET_ADDRSTRLEN] = "?";
          inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
          *peer_addr = fmt::format("{}:{}", buf, ntohs(a.sin_port));
        }
        return Fd(fd);
      }
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        throw NetError(fmt::format("accept() failed: {}", std::strerror(errno)));
    } else if (r < 0 && errno != EINTR) {
      throw NetError(fmt::format("poll on the listening socket failed: {}", std::strerror(errno)));
    }
    if (deadline.expired()) return Fd();
  }
}

std::string peer_address(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0 || a.sin_family != AF_INET) return "?";
  char buf[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
  return fmt::format("{}:{}", buf, ntohs(a.sin_port));
}

std::string first_non_loopback_ipv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return {};
  std::string found;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    if (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK)) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf);
    found = buf;
    break;
  }
  freeifaddrs(list);
  return found;
}

bool is_loopback_address(const std::string& host) {
  in_addr a{};
  if (host == "localhost") return true;
  if (inet_pton(AF_INET, host.c_str(), &a) != 1) return false;
  return (ntohl(a.s_addr) >> 24) == 127;
}

void split_host_port(const std::string& text, std::string* host, uint16_t* port) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw ConfigError(fmt::format("bad address '{}'", text), "write HOST:PORT, e.g. 10.0.0.1:29500");
  char* end = nullptr;
  long p = std::strtol(text.c_str() + colon + 1, &end, 10);
  if (*end || p <= 0 || p > 65535) throw ConfigError(fmt::format("bad port in '{}'", text), "the port must be 1..65535");
  *host = text.substr(0, colon);
  *port = static_cast<uint16_t>(p);
}

}  // namespace braid::net
