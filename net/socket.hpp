#pragma once
// Small POSIX socket helpers shared by the TCP transport, the handshake and
// the rendezvous store: an owning fd, blocking-with-deadline I/O over
// non-blocking sockets, address helpers.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/clock.hpp"

namespace braid::net {

// Owns a file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

void set_nonblocking(int fd, bool on = true);
void set_nodelay(int fd);
// Sets SO_SNDBUF/SO_RCVBUF (SO_*BUFFORCE when permitted, so that the size is
// not capped by net.core.[rw]mem_max).
void set_socket_buffers(int fd, size_t bytes);

// Sends/receives exactly n bytes, waiting with poll() until `deadline`.
// Work on blocking and non-blocking sockets alike. Throw braid::Timeout at
// the deadline and braid::NetError when the connection fails (`what` names
// the peer in the message); recv_exact throws NetError on EOF too.
void send_all(int fd, const void* data, size_t n, const Deadline& deadline, const std::string& what);
void recv_exact(int fd, void* data, size_t n, const Deadline& deadline, const std::string& what);

// Listening TCP socket on host:port (port 0 picks one); returns the fd and
// writes the bound port.
Fd listen_tcp(const std::string& host, uint16_t port, uint16_t* bound_port, int backlog = 4096);
// Connects to host:port, retrying refused connections until `deadline`.
// socket_buffer_bytes > 0 sizes the buffers before connect(), so that the
// TCP window scale is negotiated for them.
Fd connect_tcp(const std::string& host, uint16_t port, const Deadline& deadline, const std::string& what,
               size_t socket_buffer_bytes = 0);
// Accepts one connection before `deadline`; an invalid Fd on timeout.
Fd accept_tcp(int listen_fd, const Deadline& deadline, std::string* peer_addr);

// "10.0.0.2:41234" of the remote end (or "?" if unknown).
std::string peer_address(int fd);
// First IPv4 address of an interface that is up and not loopback; empty if none.
std::string first_non_loopback_ipv4();
bool is_loopback_address(const std::string& host);

// Splits "host:port"; throws ConfigError on bad text.
void split_host_port(const std::string& text, std::string* host, uint16_t* port);

}  // namespace braid::net
