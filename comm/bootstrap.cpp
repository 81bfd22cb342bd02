#include "comm/bootstrap.hpp"

#include <fmt/format.h>

#include <exception>
#include <thread>
#include <vector>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/tcp_store.hpp"

namespace braid::comm {

net::MeshOptions mesh_options_from_env(const WorldInfo& info, const InitOptions& o) {
  net::MeshOptions m;
  m.rank = info.rank;
  m.size = info.size;
  m.epoch = o.epoch;
  m.group = o.group;
  m.transport = net::parse_transport(o.transport.empty() ? env::get_or("BRAID_TRANSPORT", "auto")
                                                         : o.transport);
  m.streams_per_peer = o.streams_per_peer > 0 ? o.streams_per_peer
                                              : static_cast<int>(env::get_int("BRAID_STREAMS", 1));
  if (m.streams_per_peer < 1 || m.streams_per_peer > 64)
    throw ConfigError("BRAID_STREAMS must be between 1 and 64");
  m.secret = job_secret();
  if (auto f = env::get("BRAID_FAULTS")) m.faults = net::FaultSpec::parse(*f);
  m.connect_timeout_s = o.connect_timeout_s;
  return m;
}

World::World() = default;
World::~World() {
  comm.reset();   // close connections before the store goes
  store.reset();
  server.reset();
}
World::World(World&&) noexcept = default;
World& World::operator=(World&&) noexcept = default;

World init_world(const InitOptions& o) {
  World w;
  w.info = detect_world();
  log::set_rank(w.info.size > 1 ? w.info.rank : -1);
  CommOptions copts = o.comm;
  copts.timeout_s = env::get_double("BRAID_COMM_TIMEOUT", copts.timeout_s);
  if (copts.tuning_file.empty()) copts.tuning_file = env::get_or("BRAID_TUNING_FILE", "");
  if (w.info.size == 1) {
    w.store = std::make_shared<net::MemStore>();
    w.comm = std::make_unique<Communicator>(net::connect_inproc(net::make_inproc_hub(1), 0, o.epoch), copts);
    return w;
  }
  std::string secret = job_secret();
  auto hp = net::HostPort::parse(w.info.rendezvous);
  if (w.info.serve_store) {
    // Without a job secret nothing may listen beyond loopback.
    std::string bind = secret.empty() ? "127.0.0.1" : "0.0.0.0";
    if (secret.empty())
      log::info("no job secret (BRAID_JOB_SECRET): the rendezvous store listens on loopback only");
    w.server = std::make_unique<net::TcpStoreServer>(bind, hp.port, secret);
  }
  w.store = std::make_shared<net::TcpStore>(hp, secret, o.connect_timeout_s);
  auto mesh = net::connect_mesh(*w.store, mesh_options_from_env(w.info, o));
  w.comm = std::make_unique<Communicator>(std::move(mesh), copts);
  return w;
}

void run_in_process(int n, const std::function<void(Communicator&)>& body) {
  auto hub = net::make_inproc_hub(n);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        Communicator comm(net::connect_inproc(hub, r));
        body(comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace braid::comm
