// Wire format (little-endian):
//   request: u32 body_len | u8 op | u32 key_len | key | u32 val_len | val
//   reply:   u32 body_len | u8 status | u32 val_len | val
// Bodies are capped (kMaxBody) so a bad client cannot make the server
// allocate without bound; such a client is disconnected.
#include "net/tcp_store.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"
#include "net/auth.hpp"
#include "net/socket.hpp"

namespace braid::net {

namespace {

constexpr uint32_t kMaxBody = 64u << 20;
enum Op : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kTryGet = 4, kErase = 5, kPing = 6 };
enum Status : uint8_t { kOk = 0, kNotFound = 1, kFailed = 2 };

void put_u32(std::string& s, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  s.append(b, 4);
}

std::string encode(uint8_t op_or_status, const std::string& a, const std::string* b) {
  std::string body;
  body.push_back(static_cast<char>(op_or_status));
  put_u32(body, static_cast<uint32_t>(a.size()));
  body += a;
  if (b) {
    put_u32(body, static_cast<uint32_t>(b->size()));
    body += *b;
  }
  std::string msg;
  put_u32(msg, static_cast<uint32_t>(body.size()));
  return msg + body;
}

// Parses "op|len|a[|len|b]" from a body; false if malformed.
bool decode(const char* p, size_t n, uint8_t& op, std::string& a, std::string& b, bool two) {
  if (n < 5) return false;
  op = static_cast<uint8_t>(p[0]);
  uint32_t la;
  std::memcpy(&la, p + 1, 4);
  if (5ull + la > n) return false;
  a.assign(p + 5, la);
  size_t off = 5 + la;
  if (!two) return off == n;
  if (off + 4 > n) return false;
  uint32_t lb;
  std::memcpy(&lb, p + off, 4);
  if (off + 4 + lb != n) return false;
  b.assign(p + off + 4, lb);
  return true;
}

void write_all(int fd, const std::string& s, const Deadline& d) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t w = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) { off += static_cast<size_t>(w); continue; }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, d.remaining_ms_for_poll()) == 0 && d.expired())
        throw Timeout("rendezvous store did not accept a request before the deadline");
      continue;
    }
    throw NetError(fmt::format("lost connection to the rendezvous store: {}", std::strerror(errno)),
                   "the launcher of node 0 (which serves the store) may have exited");
  }
}

bool read_exact(int fd, char* buf, size_t n, const Deadline& d) {
  size_t off = 0;
  while (off < n) {
    ssize_t r = ::recv(fd, buf + off, n - off, MSG_DONTWAIT);
    if (r > 0) { off += static_cast<size_t>(r); continue; }
    if (r == 0) return false;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      pollfd p{fd, POLLIN, 0};
      int pr = poll(&p, 1, d.remaining_ms_for_poll());
      if (pr == 0 && d.expired()) throw Timeout("rendezvous store did not answer before the deadline");
      continue;
    }
    return false;
  }
  return true;
}

}  // namespace

HostPort HostPort::parse(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw ConfigError("bad address '" + text + "'", "write HOST:PORT, e.g. 10.0.0.1:29500");
  HostPort hp;
  hp.host = text.substr(0, colon);
  char* end = nullptr;
  long p = std::strtol(text.c_str() + colon + 1, &end, 10);
  if (*end || p <= 0 || p > 65535)
    throw ConfigError("bad port in '" + text + "'", "the port must be 1..65535");
  hp.port = static_cast<uint16_t>(p);
  return hp;
}

std::string HostPort::str() const { return host + ":" + std::to_string(port); }

// ---------------------------------------------------------------- server

namespace {

// Handshakes run on their own short-lived threads so that a slow or silent
// client cannot stall the store for everyone; this caps how many at once.
constexpr size_t kMaxHandshakes = 64;
constexpr double kHandshakeTimeoutS = 10;

// The first bytes every braid client sends (net/auth.hpp's hello). Checking
// the prefix that has arrived lets the server drop a client that speaks
// something else at once instead of after the handshake timeout.
constexpr char kAuthMagic[8] = {'B', 'R', 'A', 'U', 'T', 'H', '0', '1'};

bool speaks_handshake(int fd, const Deadline& d) {
  char buf[sizeof kAuthMagic];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return false;
    if (n > 0) {
      if (std::memcmp(buf, kAuthMagic, static_cast<size_t>(n)) != 0) return false;
      if (n == static_cast<ssize_t>(sizeof buf)) return true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return false;
    }
    if (d.expired()) return false;
    // With part of the prefix pending poll() would return at once; nap instead.
    pollfd p{fd, POLLIN, 0};
    if (n > 0) usleep(5000);
    else poll(&p, 1, std::min(d.remaining_ms_for_poll(), 200));
  }
}

// Reads what the peer sent before closing, so that the close is an orderly
// FIN (closing with unread data makes the kernel send a reset instead).
void drain_and_close(int fd) {
  char buf[4096];
  while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
  close(fd);
}

}  // namespace

struct TcpStoreServer::Impl {
  struct Client {
    int fd;
    uint64_t conn;
    std::string in;
    std::string out;
  };
  struct Handshake {
    std::thread thread;
    int fd = -1;  // -1 once the thread has handed the fd on or closed it
    bool done = false;
  };
  int listen_fd = -1;
  int wake_pipe[2] = {-1, -1};
  std::string secret;
  StoreServerExtension* extension = nullptr;
  std::atomic<bool> stopping{false};
  mutable std::mutex mu;  // guards kv for key_count()
  std::map<std::string, std::string> kv;
  std::map<int, Client> clients;
  std::map<uint64_t, int> fd_of_conn;
  uint64_t next_conn = 1;
  std::map<std::string, std::vector<int>> parked;  // key -> fds waiting in GET

  std::mutex hs_mu;  // guards handshakes and ready
  std::vector<std::unique_ptr<Handshake>> handshakes;
  std::vector<int> ready;  // authenticated fds for the serving thread to adopt

  void reply(Client& c, Status st, const std::string& v) { c.out += encode(st, v, nullptr); }

  void wake_parked(const std::string& key, const std::string& value) {
    auto it = parked.find(key);
    if (it == parked.end()) return;
    for (int fd : it->second) {
      auto c = clients.find(fd);
      if (c != clients.end()) reply(c->second, kOk, value);
    }
    parked.erase(it);
  }

  // Returns false if the client sent garbage and must be dropped.
  bool handle(Client& c) {
    while (c.in.size() >= 4) {
      uint32_t body;
      std::memcpy(&body, c.in.data(), 4);
      if (body > kMaxBody || body < 5) return false;
      if (c.in.size() < 4ull + body) return true;
      uint8_t op;
      std::string a, b;
      const char* p = c.in.data() + 4;
      uint8_t first = static_cast<uint8_t>(p[0]);
      bool two = first == kSet || first == kAdd || first >= kFirstExtensionOp;
      if (!decode(p, body, op, a, b, two)) return false;
      c.in.erase(0, 4ull + body);
      if (op >= kFirstExtensionOp) {
        if (extension) extension->on_request(c.conn, op, a, b);
        else reply(c, kFailed, "this rendezvous store has no coordinator");
        continue;
      }
      std::lock_guard<std::mutex> lock(mu);
      switch (op) {
        case kSet:
          kv[a] = b;
          reply(c, kOk, "");
          wake_parked(a, b);
          break;
        case kGet: {
          auto it = kv.find(a);
          if (it != kv.end()) reply(c, kOk, it->second);
          else parked[a].push_back(c.fd);
          break;
        }
        case kAdd: {
          char* end = nullptr;
          long long delta = std::strtoll(b.c_str(), &end, 10);
          auto it = kv.find(a);
          long long cur = it == kv.end() ? 0 : std::strtoll(it->second.c_str(), nullptr, 10);
          std::string v = std::to_string(cur + delta);
          kv[a] = v;
          reply(c, kOk, v);
          wake_parked(a, v);
          break;
        }
        case kTryGet: {
          auto it = kv.find(a);
          if (it != kv.end()) reply(c, kOk, it->second);
          else reply(c, kNotFound, "");
          break;
        }
        case kErase:
          kv.erase(a);
          reply(c, kOk, "");
          break;
        case kPing:
          reply(c, kOk, "pong");
          break;
        default:
          return false;
      }
    }
    return true;
  }

  void adopt(int fd) {
    uint64_t conn = next_conn++;
    clients[fd] = Client{fd, conn, {}, {}};
    fd_of_conn[conn] = fd;
  }

  void drop(int fd) {
    for (auto it = parked.begin(); it != parked.end();) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), fd), v.end());
      it = v.empty() ? parked.erase(it) : std::next(it);
    }
    auto it = clients.find(fd);
    uint64_t conn = it == clients.end() ? 0 : it->second.conn;
    if (it != clients.end()) clients.erase(it);
    fd_of_conn.erase(conn);
    close(fd);
    if (conn && extension) extension->on_close(conn);
  }

  void start_handshake(int fd) {
    std::lock_guard<std::mutex> lock(hs_mu);
    // Reap finished handshake threads first so the cap counts live ones.
    for (auto it = handshakes.begin(); it != handshakes.end();) {
      if ((*it)->done) {
        (*it)->thread.join();
        it = handshakes.erase(it);
      } else {
        ++it;
      }
    }
    if (handshakes.size() >= kMaxHandshakes) {
      log::warn("rendezvous store: {} connections are already authenticating; refusing {}", handshakes.size(),
                peer_address(fd));
      close(fd);
      return;
    }
    auto h = std::make_unique<Handshake>();
    Handshake* hp = h.get();
    hp->fd = fd;
    hp->thread = std::thread([this, hp, fd] {
      set_thread_name("braid-store-auth");
      Deadline d = Deadline::in_seconds(kHandshakeTimeoutS);
      std::string peer = "rendezvous client at " + peer_address(fd);
      bool ok = false;
      if (!speaks_handshake(fd, d)) {
        if (!stopping.load()) log::warn("rendezvous store: refused {}: it does not speak the braid handshake", peer);
      } else {
        try {
          auth_server(fd, secret, d, peer);
          ok = true;
        } catch (const AuthError&) {
          // auth_server has logged the refusal with the peer's address.
        } catch (const Error& e) {
          if (!stopping.load()) log::debug("rendezvous store: handshake with {} failed: {}", peer, e.what());
        }
      }
      std::lock_guard<std::mutex> lk(hs_mu);
      if (ok && !stopping.load()) {
        ready.push_back(fd);
        char c = 1;
        (void)!write(wake_pipe[1], &c, 1);
      } else {
        drain_and_close(fd);
      }
      hp->fd = -1;
      hp->done = true;
    });
    handshakes.push_back(std::move(h));
  }
};

TcpStoreServer::TcpStoreServer(const std::string& host, uint16_t port, std::string secret,
                               StoreServerExtension* extension)
    : impl_(std::make_unique<Impl>()), host_(host) {
  impl_->secret = std::move(secret);
  impl_->extension = extension;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw NetError(fmt::format("cannot create socket: {}", std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (host.empty() || host == "0.0.0.0") {
    a.sin_addr.s_addr = htonl(INADDR_ANY);
  } else {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) {
      close(fd);
      throw ConfigError("cannot resolve rendezvous host '" + host + "'");
    }
    a.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
    freeaddrinfo(res);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int e = errno;
    close(fd);
    throw NetError(fmt::format("cannot bind the rendezvous store to {}:{}: {}", host, port, std::strerror(e)),
                   "choose another port with --rendezvous HOST:PORT, or stop the process using it");
  }
  listen(fd, 512);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  impl_->listen_fd = fd;
  if (pipe2(impl_->wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    close(fd);
    throw NetError("cannot create pipe for the rendezvous store");
  }
  if (impl_->extension) impl_->extension->on_attach(*this);
  thread_ = std::thread([this] {
    set_thread_name("braid-store");
    serve();
  });
}

TcpStoreServer::~TcpStoreServer() { stop(); }

void TcpStoreServer::stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  char c = 1;
  (void)!write(impl_->wake_pipe[1], &c, 1);
  if (thread_.joinable()) thread_.join();
  {
    // Unblock handshakes still waiting on their clients, then wait for them.
    std::lock_guard<std::mutex> lock(impl_->hs_mu);
    for (auto& h : impl_->handshakes)
      if (h->fd >= 0) shutdown(h->fd, SHUT_RDWR);
  }
  for (auto& h : impl_->handshakes) h->thread.join();
  impl_->handshakes.clear();
  for (int fd : impl_->ready) close(fd);
  impl_->ready.clear();
  while (!impl_->clients.empty()) impl_->drop(impl_->clients.begin()->first);
  close(impl_->listen_fd);
  close(impl_->wake_pipe[0]);
  close(impl_->wake_pipe[1]);
}

size_t TcpStoreServer::key_count() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->kv.size();
}

void TcpStoreServer::reply(uint64_t conn, bool ok, const std::string& value) {
  auto it = impl_->fd_of_conn.find(conn);
  if (it == impl_->fd_of_conn.end()) return;
  auto c = impl_->clients.find(it->second);
  if (c != impl_->clients.end()) impl_->reply(c->second, ok ? kOk : kFailed, value);
}

void TcpStoreServer::serve() {
  Impl& s = *impl_;
  std::vector<pollfd> fds;
  const int tick_ms = s.extension ? std::max(1, s.extension->tick_interval_ms()) : 1000;
  int64_t next_tick_ns = now_ns() + int64_t{tick_ms} * 1'000'000;
  while (!s.stopping.load()) {
    {
      std::lock_guard<std::mutex> lock(s.hs_mu);
      for (int fd : s.ready) s.adopt(fd);
      s.ready.clear();
    }
    fds.clear();
    fds.push_back({s.listen_fd, POLLIN, 0});
    fds.push_back({s.wake_pipe[0], POLLIN, 0});
    for (auto& [fd, c] : s.clients)
      fds.push_back({fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
    int64_t wait_ms = std::max<int64_t>(0, (next_tick_ns - now_ns() + 999'999) / 1'000'000);
    if (poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(wait_ms, 1000))) < 0 && errno != EINTR)
      break;
    if (fds[1].revents & POLLIN) {
      char buf[64];
      while (read(s.wake_pipe[0], buf, sizeof buf) > 0) {
      }
    }
    if (fds[0].revents & POLLIN) {
      int c = accept4(s.listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (c >= 0) {
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s.start_handshake(c);
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      int fd = fds[i].fd;
      auto it = s.clients.find(fd);
      if (it == s.clients.end()) continue;
      auto& c = it->second;
      bool bad = false;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r > 0) {
          c.in.append(buf, static_cast<size_t>(r));
          if (!s.handle(c)) {
            log::warn("rendezvous store: dropping a client that sent a malformed request");
            bad = true;
          }
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
          bad = true;
        }
      }
      if (!bad && !c.out.empty()) {
        ssize_t w = send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
        if (w > 0) c.out.erase(0, static_cast<size_t>(w));
        else if (w < 0 && errno != EAGAIN && errno != EINTR) bad = true;
      }
      if (bad) s.drop(fd);
    }
    if (now_ns() >= next_tick_ns) {
      // Advance the tick even without an extension: a tick in the past makes
      // poll() return at once, and the server would spin on a core.
      if (s.extension) s.extension->on_tick();
      next_tick_ns = now_ns() + int64_t{tick_ms} * 1'000'000;
    }
    // Answers produced for other connections (a parked GET, a quorum or a
    // vote that one request completed for everyone) go out now rather than
    // after another poll round: lower latency, and the members of one vote
    // hear its result as close together as possible.
    std::vector<int> broken;
    for (auto& [fd, c] : s.clients) {
      if (c.out.empty()) continue;
      ssize_t w = send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) c.out.erase(0, static_cast<size_t>(w));
      else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) broken.push_back(fd);
    }
    for (int fd : broken) s.drop(fd);
  }
}

// ---------------------------------------------------------------- client

TcpStore::TcpStore(const HostPort& addr, std::string secret, double connect_timeout_s)
    : addr_(addr), secret_(std::move(secret)) {
  reconnect(Deadline::in_seconds(connect_timeout_s));
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) close(fd_);
}

void TcpStore::reconnect(const Deadline& d) {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  const std::string who = "the rendezvous store at " + addr_.str();
  int delay_ms = 10;
  while (true) {
    try {
      // Non-blocking connect bounded by the deadline: a host that is down or
      // cut off must not hold a caller (e.g. a heartbeat thread) for minutes.
      Fd fd = connect_tcp(addr_.host, addr_.port, d, who);
      set_nodelay(fd.get());
      auth_client(fd.get(), secret_, d, who);
      fd_ = fd.release();
      return;
    } catch (const AuthError&) {
      throw;  // a wrong secret does not get better by retrying
    } catch (const Error& e) {
      if (d.expired())
        throw NetError(fmt::format("cannot reach the rendezvous store at {} ({})", addr_.str(), e.what()),
                       "start the job with `braid launch` (node 0 serves the store), or check "
                       "--rendezvous / BRAID_RENDEZVOUS and that node 0 is up");
    }
    usleep(static_cast<useconds_t>(std::min<int64_t>(delay_ms, d.remaining_ns() / 1'000'000 + 1)) * 1000);
    delay_ms = std::min(delay_ms * 2, 500);
  }
}

std::string TcpStore::call(uint8_t op, const std::string& a, const std::string& b, const Deadline& d,
                           uint8_t* status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) reconnect(Deadline::in_seconds(30).earlier(d.is_never() ? Deadline::in_seconds(30) : d));
  bool two = op == kSet || op == kAdd || op >= kFirstExtensionOp;
  std::string msg = encode(op, a, two ? &b : nullptr);
  try {
    write_all(fd_, msg, d);
    char hdr[4];
    if (!read_exact(fd_, hdr, 4, d)) throw NetError("the rendezvous store closed the connection");
    uint32_t body;
    std::memcpy(&body, hdr, 4);
    if (body < 5 || body > kMaxBody) throw ProtocolError("malformed reply from the rendezvous store");
    std::string buf(body, '\0');
    if (!read_exact(fd_, buf.data(), body, d)) throw NetError("the rendezvous store closed the connection");
    uint8_t st;
    std::string v, unused;
    if (!decode(buf.data(), body, st, v, unused, false))
      throw ProtocolError("malformed reply from the rendezvous store");
    *status = st;
    return v;
  } catch (...) {
    // A timed-out GET stays parked on the server; its late reply would be
    // read as the answer to the next request, so start a fresh connection.
    close(fd_);
    fd_ = -1;
    throw;
  }
}

std::string TcpStore::request(uint8_t op, const std::string& key, const std::string& value,
                              const Deadline& deadline, bool* ok) {
  if (op < kFirstExtensionOp)
    throw Error(fmt::format("TcpStore::request: op {} is not an extension op", op));
  uint8_t st;
  std::string v = call(op, key, value, deadline, &st);
  *ok = st == kOk;
  return v;
}

void TcpStore::set(const std::string& key, const std::string& value) {
  uint8_t st;
  call(kSet, key, value, Deadline::in_seconds(60), &st);
}

std::string TcpStore::get(const std::string& key, const Deadline& deadline) {
  uint8_t st;
  try {
    return call(kGet, key, "", deadline, &st);
  } catch (const Timeout&) {
    throw Timeout("rendezvous key '" + key + "' did not appear before the deadline",
                  "a rank did not start, crashed, or cannot reach the store");
  }
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  uint8_t st;
  return std::stoll(call(kAdd, key, std::to_string(delta), Deadline::in_seconds(60), &st));
}

bool TcpStore::try_get(const std::string& key, std::string& value) {
  uint8_t st;
  std::string v = call(kTryGet, key, "", Deadline::in_seconds(60), &st);
  if (st != kOk) return false;
  value = std::move(v);
  return true;
}

void TcpStore::erase(const std::string& key) {
  uint8_t st;
  call(kErase, key, "", Deadline::in_seconds(60), &st);
}

}  // namespace braid::net
