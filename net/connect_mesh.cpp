// connect_mesh(): from a Store and options to a connected, authenticated mesh.
//
//   1. listen; publish "host:port", host id and settings under
//      braid/mesh/<group>/<epoch>/<rank>;
//   2. read every rank's entry (a timeout names the ranks that never came);
//   3. choose per pair: shared memory if the host ids match (transport auto
//      or shm), else TCP;
//   4. rank r connects to every lower rank and accepts every higher one, so
//      roles are deterministic and the order cannot deadlock (rank 0 only
//      accepts; rank k's connects complete once ranks < k are accepting);
//   5. every connection: job-secret handshake (auth.hpp), then HELLO
//      (group, epoch, ranks, stream index, channel) answered by HELLO_ACK.
#include <fmt/format.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/bytes.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/auth.hpp"
#include "net/frame.hpp"
#include "net/mesh.hpp"
#include "net/socket.hpp"
#include "net/socket_mesh.hpp"

namespace braid::net {

namespace {

constexpr double kHandshakeTimeoutS = 10;  // per accepted connection, so a stranger cannot stall us long

struct PeerEntry {
  std::string host;
  uint16_t port = 0;
  std::string host_id;
  int streams = 1;
  std::string transport;
};

std::string key_for(const MeshOptions& o, int rank) {
  return fmt::format("braid/mesh/{}/{}/{}", o.group, o.epoch, rank);
}

std::string transport_name(TransportChoice t) {
  switch (t) {
    case TransportChoice::Auto: return "auto";
    case TransportChoice::Tcp: return "tcp";
    case TransportChoice::Shm: return "shm";
    case TransportChoice::Inproc: return "inproc";
  }
  return "?";
}

std::string encode_entry(const PeerEntry& e) {
  return fmt::format("{}:{}\n{}\n{}\n{}", e.host, e.port, e.host_id, e.streams, e.transport);
}

PeerEntry decode_entry(const std::string& text, int rank) {
  std::istringstream in(text);
  std::string addr, streams;
  PeerEntry e;
  if (!std::getline(in, addr) || !std::getline(in, e.host_id) || !std::getline(in, streams) ||
      !std::getline(in, e.transport))
    throw NetError(fmt::format("rank {} published a malformed mesh entry in the store", rank),
                   "all ranks must run the same braid version; or a stale job uses the same group/epoch");
  split_host_port(addr, &e.host, &e.port);
  e.streams = std::atoi(streams.c_str());
  return e;
}

void send_frame(int fd, FrameKind kind, const std::vector<uint8_t>& payload, uint32_t epoch,
                const Deadline& d, const std::string& who) {
  FrameHeader h;
  h.kind = kind;
  h.epoch = epoch;
  h.length = static_cast<uint32_t>(payload.size());
  h.total = h.length;
  std::vector<uint8_t> buf(kFrameHeaderBytes + payload.size());
  encode_frame_header(h, buf.data());
  std::copy(payload.begin(), payload.end(), buf.begin() + kFrameHeaderBytes);
  send_all(fd, buf.data(), buf.size(), d, who);
}

std::vector<uint8_t> recv_frame(int fd, FrameKind expect, const Deadline& d, const std::string& who) {
  uint8_t hdr[kFrameHeaderBytes];
  recv_exact(fd, hdr, sizeof hdr, d, who);
  FrameLimits lim;
  FrameDecode dec = decode_frame_header(hdr, sizeof hdr, 0, lim);
  if (dec.status != FrameDecode::Ok || dec.header.kind != expect)
    throw ProtocolError(fmt::format("{} answered the handshake with {}", who,
                                    dec.status == FrameDecode::Ok ? std::string(frame_kind_name(dec.header.kind)) + " instead of " +
                                                                         frame_kind_name(expect)
                                                                  : "a malformed frame: " + dec.error),
                        "all ranks must run the same braid version");
  std::vector<uint8_t> payload(dec.header.length);
  if (!payload.empty()) recv_exact(fd, payload.data(), payload.size(), d, who);
  return payload;
}

std::string list_ranks(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i == 8 && v.size() > 10) {
      s += fmt::format(", ... ({} more)", v.size() - i);
      break;
    }
    s += (i ? ", " : "") + std::to_string(v[i]);
  }
  return s;
}

void note_loopback_only() {
  static std::once_flag once;
  std::call_once(once, [] {
    log::info("no job secret (BRAID_JOB_SECRET / BRAID_JOB_SECRET_FILE): braid listens on 127.0.0.1 only, "
              "so this job cannot span hosts");
  });
}

}  // namespace

std::shared_ptr<Mesh> connect_mesh(Store& store, const MeshOptions& in) {
  MeshOptions o = in;
  if (o.transport == TransportChoice::Inproc)
    throw ConfigError("connect_mesh cannot build an in-process mesh", "use connect_inproc() for ranks that are threads");
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
    throw ConfigError(fmt::format("rank {} is outside a world of size {}", o.rank, o.size));
  if (o.streams_per_peer < 1 || o.streams_per_peer > 64)
    throw ConfigError(fmt::format("streams_per_peer={} is out of range", o.streams_per_peer), "use 1..64");
  if (auto v = env::get("BRAID_SHM_RING_BYTES"); v && !v->empty()) o.shm_ring_bytes = parse_bytes(*v);
  if (o.shm_ring_bytes < (64 << 10) || (o.shm_ring_bytes & (o.shm_ring_bytes - 1)) != 0)
    throw ConfigError(fmt::format("shm_ring_bytes={} is not a power of two >= 64 KiB", o.shm_ring_bytes));
  if (o.max_frame_bytes < (64 << 10))
    throw ConfigError(fmt::format("max_frame_bytes={} is below the 64 KiB minimum", o.max_frame_bytes));
  if (o.group.empty() || o.group.find('/') != std::string::npos || o.group.find('\n') != std::string::npos)
    throw ConfigError(fmt::format("bad group name '{}'", o.group), "use a non-empty name without '/'");
  if (!o.faults.any()) {
    if (auto f = env::get("BRAID_FAULTS"); f && !f->empty()) o.faults = FaultSpec::parse(*f);
  }
  if (o.host_id.empty()) o.host_id = env::host_id();
  if (o.host_id.find('\n') != std::string::npos) throw ConfigError("host id contains a newline");
  std::string secret = load_job_secret(o.secret);
  Deadline deadline = Deadline::in_seconds(o.connect_timeout_s);

  std::vector<std::string> host_ids(static_cast<size_t>(o.size));
  host_ids[static_cast<size_t>(o.rank)] = o.host_id;
  if (o.size == 1) {
    auto mesh = std::make_shared<SocketMesh>(o, host_ids, false);
    mesh->start();
    return mesh;
  }

  // 1. listen and publish
  std::string bind = o.bind_addr;
  if (secret.empty()) {
    if (!bind.empty() && !is_loopback_address(bind))
      throw ConfigError(fmt::format("listening on {} needs a job secret", bind),
                        "set BRAID_JOB_SECRET (or BRAID_JOB_SECRET_FILE) on every rank, or leave the bind "
                        "address empty to stay on 127.0.0.1");
    bind = "127.0.0.1";
    note_loopback_only();
  } else if (bind.empty()) {
    bind = env::get_or("BRAID_IFACE_ADDR", "");
    if (bind.empty()) bind = first_non_loopback_ipv4();
    if (bind.empty()) bind = "127.0.0.1";
  }
  std::string publish_host = bind;
  if (bind == "0.0.0.0") {
    publish_host = first_non_loopback_ipv4();
    if (publish_host.empty()) publish_host = "127.0.0.1";
  }
  uint16_t port = 0;
  Fd listener = listen_tcp(bind, 0, &port);
  set_socket_buffers(listener.get(), o.socket_buffer_bytes);  // inherited by accepted sockets

  PeerEntry self{publish_host, port, o.host_id, o.streams_per_peer, transport_name(o.transport)};
  store.set(key_for(o, o.rank), encode_entry(self));

  // 2. everyone's entry
  std::vector<PeerEntry> peers(static_cast<size_t>(o.size));
  peers[static_cast<size_t>(o.rank)] = self;
  {
    std::vector<int> missing;
    for (int r = 0; r < o.size; ++r)
      if (r != o.rank) missing.push_back(r);
    int sleep_us = 200;
    while (!missing.empty()) {
      std::vector<int> still;
      for (int r : missing) {
        std::string v;
        if (store.try_get(key_for(o, r), v)) {
          peers[static_cast<size_t>(r)] = decode_entry(v, r);
        } else {
          still.push_back(r);
        }
      }
      missing.swap(still);
      if (missing.empty()) break;
      if (deadline.expired())
        throw Timeout(fmt::format("rank {}: ranks {} never published their address for group '{}' epoch {} "
                                  "(waited {:.0f} s)",
                                  o.rank, list_ranks(missing), o.group, o.epoch, o.connect_timeout_s),
                      "those ranks did not start, crashed before connecting, or use another rendezvous "
                      "store, group or epoch; check their logs");
      std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
      sleep_us = std::min(sleep_us * 2, 20'000);
    }
  }
  for (int r = 0; r < o.size; ++r) {
    const PeerEntry& e = peers[static_cast<size_t>(r)];
    host_ids[static_cast<size_t>(r)] = e.host_id;
    if (e.streams != o.streams_per_peer || e.transport != self.transport)
      throw ConfigError(fmt::format("rank {} uses transport={} streams_per_peer={} but rank {} uses transport={} "
                                    "streams_per_peer={}",
                                    r, e.transport, e.streams, o.rank, self.transport, o.streams_per_peer),
                        "give every rank the same BRAID_TRANSPORT and BRAID_STREAMS");
  }

  // 3. shared memory or TCP per pair
  std::vector<bool> use_shm(static_cast<size_t>(o.size), false);
  bool any_shm = false;
  for (int r = 0; r < o.size; ++r) {
    if (r == o.rank) continue;
    bool same_host = host_ids[static_cast<size_t>(r)] == o.host_id;
    if (o.transport == TransportChoice::Shm && !same_host)
      throw ConfigError(fmt::format("transport=shm but rank {} is on host '{}' and rank {} on host '{}'", o.rank,
                                    o.host_id, r, host_ids[static_cast<size_t>(r)]),
                        "use transport=auto (shared memory where possible, TCP elsewhere) or tcp");
    use_shm[static_cast<size_t>(r)] = same_host && o.transport != TransportChoice::Tcp;
    any_shm = any_shm || use_shm[static_cast<size_t>(r)];
  }

  const int nstreams = o.streams_per_peer;
  std::vector<std::vector<Fd>> tcp_fds(static_cast<size_t>(o.size));
  std::vector<std::vector<std::string>> tcp_addrs(static_cast<size_t>(o.size));
  std::vector<Fd> ctrl_fds(static_cast<size_t>(o.size));
  std::vector<std::string> ctrl_addrs(static_cast<size_t>(o.size));
  std::vector<std::unique_ptr<ShmSegment>> segments(static_cast<size_t>(o.size));

  // 4a. connect to every lower rank
  for (int r = 0; r < o.rank; ++r) {
    const PeerEntry& e = peers[static_cast<size_t>(r)];
    bool shm = use_shm[static_cast<size_t>(r)];
    int count = shm ? 1 : nstreams;
    std::string where = fmt::format("{}:{}", e.host, e.port);
    std::string who = fmt::format("rank {} at {}", r, where);
    if (shm) segments[static_cast<size_t>(r)] = ShmSegment::create(o.shm_ring_bytes);
    for (int s = 0; s < count; ++s) {
      Fd fd = connect_tcp(e.host, e.port, deadline, who, shm ? 0 : o.socket_buffer_bytes);
      set_nodelay(fd.get());
      auth_client(fd.get(), secret, deadline, who);
      Hello h;
      h.group = o.group;
      h.epoch = o.epoch;
      h.world_size = o.size;
      h.from_rank = o.rank;
      h.to_rank = r;
      h.stream = static_cast<uint16_t>(s);
      h.streams = static_cast<uint16_t>(count);
      h.channel = shm ? ChannelKind::ShmControl : ChannelKind::TcpData;
      h.host_id = o.host_id;
      if (shm) {
        h.shm_name = segments[static_cast<size_t>(r)]->name();
        h.shm_ring_bytes = o.shm_ring_bytes;
      }
      send_frame(fd.get(), FrameKind::Hello, encode_hello(h), o.epoch, deadline, who);
      auto payload = recv_frame(fd.get(), FrameKind::HelloAck, deadline, who);
      std::string err;
      auto ack = decode_hello_ack(payload.data(), payload.size(), &err);
      if (!ack) throw ProtocolError(fmt::format("{} sent a malformed HELLO_ACK: {}", who, err));
      if (!ack->ok)
        throw NetError(fmt::format("{} refused our connection: {}", who, ack->error),
                       "every rank must use the same group, epoch, world size and transport settings");
      if (shm) {
        segments[static_cast<size_t>(r)]->unlink();
        ctrl_fds[static_cast<size_t>(r)] = std::move(fd);
        ctrl_addrs[static_cast<size_t>(r)] = where;
      } else {
        tcp_fds[static_cast<size_t>(r)].push_back(std::move(fd));
        tcp_addrs[static_cast<size_t>(r)].push_back(where);
      }
    }
  }

  // 4b. accept every higher rank
  {
    std::map<std::pair<int, int>, bool> have;  // (rank, stream)
    size_t expected = 0;
    for (int r = o.rank + 1; r < o.size; ++r) {
      expected += use_shm[static_cast<size_t>(r)] ? 1 : static_cast<size_t>(nstreams);
      tcp_fds[static_cast<size_t>(r)].resize(use_shm[static_cast<size_t>(r)] ? 0 : static_cast<size_t>(nstreams));
      tcp_addrs[static_cast<size_t>(r)].resize(tcp_fds[static_cast<size_t>(r)].size());
    }
    std::string last_refusal;
    while (have.size() < expected) {
      std::string from;
      Fd fd = accept_tcp(listener.get(), deadline, &from);
      if (!fd) {
        std::vector<int> missing;
        for (int r = o.rank + 1; r < o.size; ++r) {
          int count = use_shm[static_cast<size_t>(r)] ? 1 : nstreams;
          for (int s = 0; s < count; ++s)
            if (!have.count({r, s})) {
              missing.push_back(r);
              break;
            }
        }
        throw Timeout(fmt::format("rank {}: ranks {} never connected (waited {:.0f} s){}", o.rank,
                                  list_ranks(missing), o.connect_timeout_s,
                                  last_refusal.empty() ? "" : "; last refused connection: " + last_refusal),
                      "those ranks are slow to start, crashed, or cannot reach " + bind +
                          " (firewall, wrong BRAID_IFACE_ADDR, or a different job secret)");
      }
      std::string who = from;
      Deadline hd = deadline.earlier(Deadline::in_seconds(kHandshakeTimeoutS));
      try {
        set_nodelay(fd.get());
        auth_server(fd.get(), secret, hd, who);
        auto payload = recv_frame(fd.get(), FrameKind::Hello, hd, who);
        std::string err;
        auto h = decode_hello(payload.data(), payload.size(), &err);
        std::string refuse;
        if (!h) {
          refuse = err;
        } else if (h->group != o.group || h->epoch != o.epoch) {
          refuse = fmt::format("it is in group '{}' epoch {}, this rank in group '{}' epoch {}", h->group, h->epoch,
                               o.group, o.epoch);
        } else if (h->world_size != o.size || h->to_rank != o.rank) {
          refuse = fmt::format("it expects rank {} of a world of {}, this is rank {} of {}", h->to_rank,
                               h->world_size, o.rank, o.size);
        } else if (h->from_rank <= o.rank) {
          refuse = fmt::format("rank {} connected to rank {}, but lower ranks accept and higher ranks connect",
                               h->from_rank, o.rank);
        } else {
          int r = h->from_rank;
          bool shm = use_shm[static_cast<size_t>(r)];
          bool wants_shm = h->channel == ChannelKind::ShmControl;
          int count = shm ? 1 : nstreams;
          if (shm != wants_shm) {
            refuse = fmt::format("rank {} wants {} but this rank chose {} for it (host ids '{}' and '{}')", r,
                                 wants_shm ? "shm" : "tcp", shm ? "shm" : "tcp", h->host_id, o.host_id);
          } else if (h->host_id != host_ids[static_cast<size_t>(r)]) {
            refuse = fmt::format("it claims host id '{}' but the store says '{}'", h->host_id,
                                 host_ids[static_cast<size_t>(r)]);
          } else if (h->streams != count || h->stream >= count) {
            refuse = fmt::format("stream {} of {} does not fit this rank's {} streams", h->stream, h->streams, count);
          } else if (have.count({r, h->stream})) {
            refuse = fmt::format("rank {} stream {} is already connected", r, h->stream);
          } else if (shm && h->shm_ring_bytes != o.shm_ring_bytes) {
            refuse = fmt::format("its shared-memory ring has {} bytes, this rank's {}", h->shm_ring_bytes,
                                 o.shm_ring_bytes);
          } else if (shm) {
            try {
              segments[static_cast<size_t>(r)] = ShmSegment::open(h->shm_name, o.shm_ring_bytes);
            } catch (const Error& e) {
              refuse = e.what();
            }
          }
          if (refuse.empty()) {
            send_frame(fd.get(), FrameKind::HelloAck, encode_hello_ack(HelloAck{true, {}}), o.epoch, hd, who);
            have[{r, h->stream}] = true;
            std::string where = from;
            if (shm) {
              ctrl_fds[static_cast<size_t>(r)] = std::move(fd);
              ctrl_addrs[static_cast<size_t>(r)] = where;
            } else {
              tcp_fds[static_cast<size_t>(r)][h->stream] = std::move(fd);
              tcp_addrs[static_cast<size_t>(r)][h->stream] = where;
            }
            continue;
          }
        }
        log::warn("rank {}: refused the connection from {}: {}", o.rank, who, refuse);
        last_refusal = who + ": " + refuse;
        try {
          send_frame(fd.get(), FrameKind::HelloAck, encode_hello_ack(HelloAck{false, refuse}), o.epoch, hd, who);
        } catch (const Error&) {
        }
      } catch (const Error& e) {
        // AuthError is logged by auth_server; a broken or slow stranger must not
        // stop the mesh, so keep accepting.
        last_refusal = who + ": " + e.what();
        if (!dynamic_cast<const AuthError*>(&e))
          log::warn("rank {}: dropped the connection from {}: {}", o.rank, who, e.what());
      }
    }
  }

  // 5. the mesh
  auto mesh = std::make_shared<SocketMesh>(o, host_ids, any_shm);
  for (int r = 0; r < o.size; ++r) {
    if (r == o.rank) continue;
    if (use_shm[static_cast<size_t>(r)]) {
      mesh->add_shm_pair(r, std::move(segments[static_cast<size_t>(r)]), r < o.rank,
                         std::move(ctrl_fds[static_cast<size_t>(r)]), ctrl_addrs[static_cast<size_t>(r)], o.faults);
    } else {
      mesh->add_tcp_pair(r, std::move(tcp_fds[static_cast<size_t>(r)]), tcp_addrs[static_cast<size_t>(r)], o.faults);
    }
  }
  mesh->start();
  return mesh;
}

}  // namespace braid::net
