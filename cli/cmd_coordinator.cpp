// braid coordinator: the coordinator (membership, heartbeats, per-step quorum
// and commit vote) and the rendezvous store on one port, run alone for
// multi-node jobs; or, with --status, a look at a running one.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "cli/command.hpp"
#include "comm/bootstrap.hpp"
#include "coord/coordinator_server.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/process_group.hpp"
#include "net/socket.hpp"
#include "net/tcp_store.hpp"

namespace braid::cli {
namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal.store(sig); }

struct CoordinatorArgs {
  std::string host;
  int port = -1;
  coord::CoordinatorOptions options;
  double print_every_s = 10;
  bool quiet = false;
  std::string status_of;
  bool json = false;
};

int show_status(const CoordinatorArgs& a) {
  auto hp = net::HostPort::parse(a.status_of);
  net::TcpStore store(hp, comm::job_secret(), 5);
  bool ok = false;
  std::string body = store.request(static_cast<uint8_t>(coord::CoordOp::Status), "status", "{}",
                                   Deadline::in_seconds(10), &ok);
  if (!ok)
    throw NetError(fmt::format("{} did not answer the status request: {}", a.status_of, body),
                   "is it a braid coordinator (`braid launch` on node 0, or `braid coordinator`)?");
  if (a.json) {
    std::printf("%s\n", body.c_str());
  } else {
    std::string text = coord::format_status(coord::decode<coord::StatusView>(body));
    std::fputs(text.c_str(), stdout);
  }
  return 0;
}

int serve(CoordinatorArgs a) {
  if (a.port < 0 || a.port > 65535)
    throw ConfigError("--port is required (0..65535)", "e.g. braid coordinator --port 29500");
  std::string secret = comm::job_secret();
  std::string host = a.host;
  if (host.empty()) host = secret.empty() ? "127.0.0.1" : "0.0.0.0";
  if (secret.empty() && !net::is_loopback_address(host))
    throw ConfigError(fmt::format("refusing to listen on {} without a job secret", host),
                      "set BRAID_JOB_SECRET (or BRAID_JOB_SECRET_FILE) to the same value here and on every "
                      "worker; without one the coordinator listens on loopback only");
  if (secret.empty()) log::info("no job secret (BRAID_JOB_SECRET): the coordinator listens on loopback only");
  a.options.validate();
  coord::CoordinatorServer server(host, static_cast<uint16_t>(a.port), secret, a.options);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // The first line names the address, for scripts (and port 0).
  std::printf("braid coordinator listening on %s:%u\n", host.c_str(), server.port());
  std::fflush(stdout);

  uint64_t shown = 0;
  Stopwatch since_print;
  while (!g_signal.load()) {
    usleep(100'000);
    if (a.quiet) continue;
    uint64_t v = server.version();
    // Print on a change (at most once a second) and every print_every_s.
    bool changed = v != shown && since_print.seconds() >= 1;
    bool periodic = a.print_every_s > 0 && since_print.seconds() >= a.print_every_s;
    if (!changed && !periodic) continue;
    shown = v;
    since_print.reset();
    std::string text = coord::format_status(server.status());
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  log::info("coordinator: got {}, stopping", signal_name(g_signal.load()));
  server.stop();
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<CoordinatorArgs>();
  auto* sub = app.add_subcommand("coordinator",
                                 "Run the coordinator and rendezvous store alone (multi-node jobs), or --status");
  sub->add_option("--port", a->port, "Port to serve on (0 picks a free one and prints it)");
  sub->add_option("--host", a->host,
                  "Address to listen on (default: all with a job secret, 127.0.0.1 without)");
  sub->add_option("--min-replicas", a->options.min_replicas, "Below this many replicas the job waits")
      ->capture_default_str();
  sub->add_option("--max-replicas", a->options.max_replicas, "Extra joiners wait beyond this many (0: no limit)")
      ->capture_default_str();
  sub->add_option("--initial-replicas", a->options.initial_replicas,
                  "The first epoch waits (up to the quorum wait) for this many (0: min-replicas)")
      ->capture_default_str();
  auto& t = a->options.timeouts;
  sub->add_option("--heartbeat-interval", t.heartbeat_interval_s, "Seconds between a worker's heartbeats")
      ->capture_default_str();
  sub->add_option("--heartbeat-death", t.heartbeat_death_s, "Seconds of silence after which a worker is evicted")
      ->capture_default_str();
  sub->add_option("--quorum-wait", t.quorum_wait_s,
                  "Seconds a live member may lag at a step boundary or vote before it is evicted")
      ->capture_default_str();
  sub->add_option("--job-timeout", t.job_timeout_s, "Seconds workers wait for a quorum before giving up")
      ->capture_default_str();
  sub->add_option("--collective-timeout", t.collective_s,
                  "Collective deadline of the workers (checked against the hierarchy)")
      ->capture_default_str();
  sub->add_option("--print-every", a->print_every_s, "Print the membership at least this often (0: on change only)")
      ->capture_default_str();
  sub->add_flag("--quiet", a->quiet, "Do not print the membership");
  sub->add_option("--status", a->status_of, "Print the state of the coordinator at HOST:PORT and exit");
  sub->add_flag("--json", a->json, "With --status: print JSON");
  sub->footer(
      "Multi-node jobs: run `braid coordinator --port 29500` on one host and start every node with\n"
      "  braid launch --coordinator external --rendezvous HOST:29500 --nnodes N --node-rank I -n K -- CMD\n"
      "Workers must use the same heartbeat settings (braid launch passes its own to them).");
  return [a] {
    if (!a->status_of.empty()) return show_status(*a);
    return serve(*a);
  };
}

}  // namespace

BRAID_COMMAND("coordinator", 25, setup);

}  // namespace braid::cli
