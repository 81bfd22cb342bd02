// braid launch: starts the local workers of a job, serves the rendezvous store
// and the coordinator on node 0 (one port), prefixes output with the rank,
// forwards signals, restarts failed workers if asked, and exits non-zero
// naming every worker that failed.
//
// Failure policy (--on-failure): "stop" terminates the others --grace seconds
// after a worker fails for good (a job without fault tolerance cannot go on
// without it); "continue" lets them run; "auto" (the default) continues when
// the failed worker was a member of the job's coordinator — it ran
// fault-tolerant training, and the survivors are carrying on without it — and
// stops otherwise. A job that finishes without the workers it lost that way
// exits 0 and names them.
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>

#include "cli/command.hpp"
#include "core/process_group.hpp"
#include "comm/bootstrap.hpp"
#include "coord/coordinator_server.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "coord/protocol.hpp"
#include "net/tcp_store.hpp"

namespace braid::cli {
namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal.store(sig); }

struct LaunchArgs {
  int nproc = 0;
  int nnodes = 1;
  int node_rank = 0;
  std::string rendezvous;
  int max_restarts = 0;
  std::string on_failure = "auto";
  double grace_s = 10;
  bool no_prefix = false;
  std::string bind = "none";
  std::vector<std::string> cmd;
  // Fault tolerance: where the coordinator runs, and its settings.
  std::string coordinator = "embedded";
  int min_replicas = 1;
  int max_replicas = 0;
  coord::Timeouts timeouts;
  bool collective_timeout_given = false;
};

// True if replica `replica` registered with the job's coordinator (it is a
// member or was evicted lately): the worker ran fault-tolerant training.
bool coordinator_member(const coord::CoordinatorServer* server, const std::string& rendezvous,
                        const std::string& replica) {
  coord::StatusView status;
  try {
    if (server) {
      status = server->status();
    } else {
      net::TcpStore store(net::HostPort::parse(rendezvous), comm::job_secret(), 2);
      bool ok = false;
      std::string body = store.request(static_cast<uint8_t>(coord::CoordOp::Status), "status", "{}",
                                       Deadline::in_seconds(2), &ok);
      if (!ok) return false;
      status = coord::decode<coord::StatusView>(body);
    }
  } catch (const Error& e) {
    log::debug("launch: cannot ask the coordinator about replica {}: {}", replica, e.what());
    return false;
  }
  for (const auto& m : status.members)
    if (m.replica_id == replica) return true;
  for (const auto& e : status.recent_evictions)
    if (e.replica_id == replica) return true;
  return false;
}

// CPU binding (--bind cores): when this launcher may use at least one CPU per
// worker, worker i is pinned to its own equal, contiguous slice of those CPUs,
// so that a worker's compute threads keep their cores. Off by default: on the
// 2-core development VM the example job ran at the same speed pinned and
// unpinned when the host was idle (0.20 s per step either way), and a pinned
// worker cannot move away from a core that another job keeps busy. With
// fewer CPUs than workers nothing is pinned.
std::vector<std::vector<int>> cpus_per_worker(const std::string& bind, int nproc) {
  if (bind != "cores") return {};
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return {};
  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) allowed.push_back(c);
  if (nproc < 1 || static_cast<int>(allowed.size()) < nproc) {
    if (bind == "cores")
      log::warn("launch: --bind cores with {} workers but {} CPU(s): workers are not pinned", nproc, allowed.size());
    return {};
  }
  const size_t each = allowed.size() / static_cast<size_t>(nproc);
  std::vector<std::vector<int>> out(static_cast<size_t>(nproc));
  for (size_t i = 0; i < out.size(); ++i)
    out[i].assign(allowed.begin() + static_cast<std::ptrdiff_t>(i * each),
                  allowed.begin() + static_cast<std::ptrdiff_t>((i + 1) * each));
  log::debug("launch: {} worker(s) pinned to {} CPU(s) each", nproc, each);
  return out;
}

int run_launch(const LaunchArgs& a) {
  if (a.nproc < 1) throw ConfigError("--nproc must be at least 1");
  if (a.nnodes < 1) throw ConfigError("--nnodes must be at least 1");
  if (a.node_rank < 0 || a.node_rank >= a.nnodes)
    throw ConfigError(fmt::format("--node-rank {} is outside 0..{}", a.node_rank, a.nnodes - 1));
  if (a.cmd.empty())
    throw ConfigError("no command to launch", "write it after --, e.g. braid launch -n 2 -- braid train job.toml");

  std::string secret = comm::job_secret();
  if (a.nnodes > 1 && secret.empty())
    throw ConfigError("a job on several nodes needs a job secret",
                      "set BRAID_JOB_SECRET (the same value on every node) or BRAID_JOB_SECRET_FILE; "
                      "without one braid only listens on loopback");
  if (a.nnodes > 1 && a.rendezvous.empty())
    throw ConfigError("--rendezvous HOST:PORT is required with --nnodes > 1",
                      "use node 0's address and a free port, the same on every node");
  const bool external = a.coordinator == "external";
  if (external && a.rendezvous.empty())
    throw ConfigError("--coordinator external needs --rendezvous HOST:PORT of the running `braid coordinator`");
  a.timeouts.validate();

  int world = a.nproc * a.nnodes;
  if (!external && a.min_replicas > world)
    throw ConfigError(fmt::format("--min-replicas {} is more than the {} worker(s) of this job", a.min_replicas, world),
                      "the job would wait forever; lower --min-replicas or start more workers");
  // Node 0 serves the store and the coordinator on one port, unless a
  // standalone `braid coordinator` does (then every node points at it).
  std::unique_ptr<coord::CoordinatorServer> server;
  std::string rendezvous = a.rendezvous;
  if (a.node_rank == 0 && !external) {
    net::HostPort hp = rendezvous.empty() ? net::HostPort{"127.0.0.1", 0} : net::HostPort::parse(rendezvous);
    std::string bind = a.nnodes > 1 ? "0.0.0.0" : hp.host;
    coord::CoordinatorOptions co;
    co.min_replicas = a.min_replicas;
    co.max_replicas = a.max_replicas;
    co.initial_replicas = a.max_replicas > 0 ? std::min(world, a.max_replicas) : world;
    co.timeouts = a.timeouts;
    server = std::make_unique<coord::CoordinatorServer>(bind, hp.port, secret, co);
    rendezvous = hp.host + ":" + std::to_string(server->port());
  }
  if (secret.empty() && a.node_rank == 0)
    log::info("no job secret set (BRAID_JOB_SECRET): braid listens on loopback only");

  std::map<int, int> restarts;
  ProcessGroup::LineFn printer;
  if (a.no_prefix) printer = [](int, std::string_view l) {
    std::fprintf(stdout, "%.*s\n", static_cast<int>(l.size()), l.data());
    std::fflush(stdout);
  };
  ProcessGroup group(printer);
  const std::vector<std::vector<int>> cpus = cpus_per_worker(a.bind, a.nproc);
  for (int i = 0; i < a.nproc; ++i) {
    int rank = a.node_rank * a.nproc + i;
    ProcessSpec spec;
    spec.argv = a.cmd;
    spec.label = "r" + std::to_string(rank);
    spec.env = {{"BRAID_RANK", std::to_string(rank)},
                {"BRAID_WORLD_SIZE", std::to_string(world)},
                {"BRAID_LOCAL_RANK", std::to_string(i)},
                {"BRAID_LOCAL_WORLD_SIZE", std::to_string(a.nproc)},
                {"BRAID_NODE_RANK", std::to_string(a.node_rank)},
                {"BRAID_NNODES", std::to_string(a.nnodes)},
                {"BRAID_RENDEZVOUS", rendezvous},
                {"BRAID_COORDINATOR", rendezvous},
                {"BRAID_RESTART_COUNT", "0"}};
    // Workers heartbeat with the coordinator's settings.
    for (auto& kv : a.timeouts.to_env(a.collective_timeout_given)) spec.env.push_back(kv);
    if (!cpus.empty()) spec.cpus = cpus[i];
    group.spawn(spec);
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);

  std::map<int, std::string> failures;  // index -> why
  std::map<int, std::string> lost;      // fault-tolerant workers the job went on without
  int succeeded = 0;
  std::optional<Deadline> stop_at;
  int forwarded = 0;
  int exit_signal = 0;
  auto handle_exit = [&](const ProcessExit& e) {
    int rank = a.node_rank * a.nproc + e.index;
    if (e.ok()) {
      failures.erase(e.index);
      lost.erase(e.index);
      ++succeeded;
      return;
    }
    if (exit_signal) {
      failures[e.index] = e.describe();
      return;
    }
    log::error("launch: rank {} (pid {}) {}", rank, group.pid(e.index), e.describe());
    if (restarts[e.index] < a.max_restarts) {
      int n = ++restarts[e.index];
      log::warn("launch: restarting rank {} (restart {} of {})", rank, n, a.max_restarts);
      // The restart count is visible to the worker so that it joins as a new member.
      group.set_env(e.index, "BRAID_RESTART_COUNT", std::to_string(n));
      group.respawn(e.index);
      return;
    }
    if (a.on_failure == "auto" && coordinator_member(server.get(), rendezvous, std::to_string(rank))) {
      log::warn("launch: rank {} is lost; the other workers go on without it (it was a member of the "
                "coordinator: fault-tolerant training)",
                rank);
      lost[e.index] = e.describe();
      return;
    }
    failures[e.index] = e.describe();
    if (a.on_failure != "continue" && !stop_at) stop_at = Deadline::in_seconds(a.grace_s);
  };
  while (group.running_count() > 0) {
    if (int sig = g_signal.exchange(0)) {
      exit_signal = sig;
      ++forwarded;
      if (forwarded == 1) {
        log::warn("launch: got {}, passing it to the workers", signal_name(sig));
        group.signal_all(sig);
        stop_at = Deadline::in_seconds(a.grace_s);
      } else {
        log::warn("launch: second signal, killing the workers");
        group.signal_all(SIGKILL);
      }
    }
    if (stop_at && stop_at->expired()) {
      log::warn("launch: workers still running {:.0f} s after the job failed; terminating them", a.grace_s);
      for (size_t i = 0; i < group.size(); ++i)
        if (group.running(static_cast<int>(i))) failures[static_cast<int>(i)] = "was terminated by the launcher";
      group.terminate_all(5.0);
      break;
    }
    auto e = group.poll(100);
    if (e) handle_exit(*e);
  }
  // Exits seen in the last poll round are still queued.
  while (auto e = group.poll(0)) handle_exit(*e);
  if (server) server->stop();

  // Workers lost by a fault-tolerant job that the others finished without.
  if (failures.empty() && !lost.empty() && succeeded == 0)
    for (auto& [i, why] : lost) failures[i] = why;
  if (failures.empty() && !lost.empty()) {
    std::string list;
    for (auto& [i, why] : lost)
      list += fmt::format("{}rank {} {}", list.empty() ? "" : "; ", a.node_rank * a.nproc + i, why);
    std::fprintf(stderr, "braid launch: the job finished without %zu lost worker(s): %s\n", lost.size(),
                 list.c_str());
  }
  if (!failures.empty()) {
    std::string list;
    for (auto& [i, why] : failures)
      list += fmt::format("{}rank {} {}", list.empty() ? "" : "; ", a.node_rank * a.nproc + i, why);
    std::fprintf(stderr, "braid launch: %zu of %d worker(s) failed: %s\n", failures.size(), a.nproc,
                 list.c_str());
    return exit_signal ? 128 + exit_signal : 1;
  }
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<LaunchArgs>();
  auto* sub = app.add_subcommand("launch", "Start N local workers of a job (data parallel, any command)");
  sub->add_option("-n,--nproc", a->nproc, "Workers on this node")->required();
  sub->add_option("--nnodes", a->nnodes, "Nodes in the job")->capture_default_str();
  sub->add_option("--node-rank", a->node_rank, "This node's index (0 serves the rendezvous)")
      ->capture_default_str();
  sub->add_option("--rendezvous", a->rendezvous,
                  "HOST:PORT of node 0's rendezvous store (default: a free loopback port)");
  sub->add_option("--max-restarts", a->max_restarts, "Restart a failed worker up to this many times")
      ->capture_default_str();
  sub->add_option("--on-failure", a->on_failure,
                  "After a worker fails for good: stop (terminate the others after --grace seconds), continue "
                  "(let them run), auto (continue if it was a fault-tolerant coordinator member, else stop)")
      ->check(CLI::IsMember({"auto", "stop", "continue"}))
      ->capture_default_str();
  sub->add_option("--grace", a->grace_s, "Seconds the others may run on after a failure (stop)")
      ->capture_default_str();
  sub->add_flag("--no-prefix", a->no_prefix, "Do not prefix output lines with the rank");
  sub->add_option("--bind", a->bind,
                  "Pin workers to CPUs: cores (each worker its own equal slice of this launcher's CPUs, when "
                  "there is at least one per worker) or none")
      ->check(CLI::IsMember({"cores", "none"}))
      ->capture_default_str();
  sub->add_option("--coordinator", a->coordinator,
                  "embedded: node 0 runs the coordinator on the rendezvous port; external: a `braid "
                  "coordinator` runs at --rendezvous")
      ->check(CLI::IsMember({"embedded", "external"}))
      ->capture_default_str();
  sub->add_option("--min-replicas", a->min_replicas, "Below this many live workers the job waits")
      ->capture_default_str();
  sub->add_option("--max-replicas", a->max_replicas, "At most this many workers train at once (0: no limit)")
      ->capture_default_str();
  sub->add_option("--heartbeat-interval", a->timeouts.heartbeat_interval_s, "Seconds between heartbeats")
      ->capture_default_str();
  sub->add_option("--heartbeat-death", a->timeouts.heartbeat_death_s,
                  "Seconds of silence after which a worker is evicted")
      ->capture_default_str();
  sub->add_option("--quorum-wait", a->timeouts.quorum_wait_s,
                  "Seconds a live worker may lag at a step boundary before it is evicted")
      ->capture_default_str();
  sub->add_option("--job-timeout", a->timeouts.job_timeout_s, "Seconds workers wait for a quorum before failing")
      ->capture_default_str();
  sub->add_option("--collective-timeout", a->timeouts.collective_s,
                  "Deadline of one collective (passed as BRAID_COMM_TIMEOUT)")
      ->capture_default_str()
      ->each([a](const std::string&) { a->collective_timeout_given = true; });
  sub->add_option("cmd", a->cmd, "Command to run after --")->required();
  sub->footer("Each worker gets BRAID_RANK, BRAID_WORLD_SIZE, BRAID_LOCAL_RANK, BRAID_LOCAL_WORLD_SIZE,\n"
              "BRAID_NODE_RANK, BRAID_RENDEZVOUS (= BRAID_COORDINATOR), BRAID_RESTART_COUNT and the\n"
              "heartbeat settings (BRAID_HEARTBEAT_*, BRAID_QUORUM_WAIT, BRAID_JOB_TIMEOUT). Example:\n"
              "  braid launch -n 2 -- braid train examples/default.toml");
  return [a] { return run_launch(*a); };
}

}  // namespace

BRAID_COMMAND("launch", 20, setup);

}  // namespace braid::cli
