// braid bench recovery: what a fault costs fault-tolerant training. For each
// fault (kill, stop, cut) it runs the example job with N workers under
// `braid launch` over TCP, makes one worker fail at a chosen step
// (BRAID_FT_DRILL: SIGKILL with a launcher restart, or SIGSTOP followed by a
// SIGCONT once the others go on without it), and reads the workers'
// fault-tolerance events (BRAID_FT_EVENTS; CLOCK_MONOTONIC timestamps, so the
// processes' clocks agree):
//   detect    fault -> the first survivor's failed collective or aborted
//             epoch, or its first quorum without the faulty worker
//   next      fault -> the first step a survivor commits after it
//   redone    steps the survivors discarded and did again
//   heal      bytes the returning worker fetched from a peer, and how fast
//             (the transfer; the wait for the peer to begin is shown apart)
// In the same run a quick `braid bench comm` all-reduce over TCP (the heal's
// size, 2 ranks) gives the bandwidth the heal rate is compared with.
//
// The network cut runs one worker per network namespace (scripts/netns-hosts,
// root only) with a standalone coordinator, and takes the last worker's link
// down at the chosen step and up again once the others went on without it.
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/command.hpp"
#include "coord/timeouts.hpp"
#include "core/clock.hpp"
#include "core/process_group.hpp"
#include "core/error.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

struct BenchRecoveryArgs {
  std::string config = "examples/default.toml";
  std::vector<std::string> sets;
  std::vector<std::string> faults = {"kill", "stop", "cut"};
  int workers = 3;
  int steps = 80;
  int at = 15;
  double timeout_s = 600;
  bool json = false;
  bool keep = false;
  int repeats = 1;  // runs per fault; the table shows each column's median
};

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the braid executable (/proc/self/exe)");
  return p.string();
}

using Events = std::map<std::string, std::vector<json>>;

Events read_events(const std::string& dir) {
  Events out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream f(e.path());
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      try {
        auto j = json::parse(line);
        out[j.at("replica").get<std::string>()].push_back(j);
      } catch (const json::exception&) {  // a line being written
      }
    }
  }
  return out;
}

struct FaultResult {
  std::string fault;
  bool ok = false;
  std::string error;
  double detect_s = -1;        // fault -> first survivor failure event
  double next_commit_s = -1;   // fault -> first survivor commit after it
  int redone = 0;              // distinct steps the survivors discarded
  int world_after = 0;         // members of the first epoch after the fault
  uint64_t heal_bytes = 0;
  double heal_s = 0;
  double heal_rate = 0;        // bytes/s of the transfer (first header byte to last verified chunk)
  double heal_wait_s = 0;      // the joiner waiting for its peer to begin sending
  double rejoin_s = -1;        // fault -> the returning worker's first commit
  int runs = 1;                // runs this row is the median of
  std::string dir;
};

// The survivors' and the returning worker's events after the fault at t_fault
// (CLOCK_MONOTONIC seconds, as the events'); the faulty worker is the last.
void analyse(FaultResult& r, Events& ev, int workers, double t_fault) {
  const std::string victim = std::to_string(workers - 1);
  double first_failure = std::numeric_limits<double>::max(), first_commit = std::numeric_limits<double>::max();
  std::set<int64_t> redone;
  for (int w = 0; w + 1 < workers; ++w)
    for (const auto& e : ev[std::to_string(w)]) {
      const double t = e["t"].get<double>();
      if (t < t_fault) continue;
      // Detected: a survivor's collective failed, or (a worker that vanished
      // between collectives) the coordinator gave it a quorum without it.
      if (e["event"] == "failure" || (e["event"] == "quorum" && e["world"].get<int>() < workers))
        first_failure = std::min(first_failure, t);
      if (e["event"] == "discard") redone.insert(e["step"].get<int64_t>());
      if (e["event"] == "commit" && t < first_commit) {
        first_commit = t;
        r.world_after = e["world"].get<int>();
      }
    }
  if (first_failure < std::numeric_limits<double>::max()) r.detect_s = first_failure - t_fault;
  if (first_commit < std::numeric_limits<double>::max()) r.next_commit_s = first_commit - t_fault;
  r.redone = static_cast<int>(redone.size());
  bool healed = false;
  for (const auto& e : ev[victim]) {
    if (e["event"] == "heal" && e["t"].get<double>() > t_fault) {
      r.heal_bytes = e["bytes"].get<uint64_t>();
      r.heal_s = e["seconds"].get<double>();
      r.heal_rate = e.value("transfer_bytes_per_s", e["bytes_per_s"].get<double>());
      r.heal_wait_s = e.value("wait_s", 0.0);
      healed = true;
    }
    if (healed && e["event"] == "commit" && r.rejoin_s < 0) r.rejoin_s = e["t"].get<double>() - t_fault;
  }
  r.ok = true;
}

// One job with one fault; the faulty worker is replica workers-1.
FaultResult run_fault(const BenchRecoveryArgs& a, const std::string& fault, const coord::Timeouts& timeouts) {
  FaultResult r;
  r.fault = fault;
  char tmpl[] = "/tmp/braid_bench_recovery_XXXXXX";
  if (!mkdtemp(tmpl)) throw IoError("cannot create a temporary directory in /tmp");
  r.dir = tmpl;
  const std::string events_dir = r.dir + "/events", log = r.dir + "/launch.log";
  const std::string victim = std::to_string(a.workers - 1);
  const std::string exe = self_exe();
  std::string cmd = "BRAID_TRANSPORT=tcp BRAID_FT_EVENTS=" + shell_quote(events_dir) + " BRAID_FT_DRILL=" +
                    (fault == "kill" ? "kill:" : "stop:") + victim + "@" + std::to_string(a.at) + " " +
                    shell_quote(exe) + " launch --nproc " + std::to_string(a.workers) +
                    (fault == "kill" ? " --max-restarts 1" : "") +
                    fmt::format(" --collective-timeout {} --heartbeat-interval {} --heartbeat-death {} --quorum-wait {} "
                                "--job-timeout {}",
                                timeouts.collective_s, timeouts.heartbeat_interval_s, timeouts.heartbeat_death_s,
                                timeouts.quorum_wait_s, timeouts.job_timeout_s) +
                    " -- " + shell_quote(exe) + " train " +
                    shell_quote(a.config) + " --set fault.enabled=true --set train.steps=" + std::to_string(a.steps) +
                    " --set train.eval_every=0 --set train.sample_tokens=0 --set run.progress=false --set run.dir=" +
                    shell_quote(r.dir + "/run");
  for (const auto& s : a.sets) cmd += " --set " + shell_quote(s);

  pid_t pid = fork();
  if (pid < 0) throw Error("fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    std::string line = "exec env " + cmd + " >" + shell_quote(log) + " 2>&1";
    execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  int status = 0;
  bool exited = false;
  pid_t stopped = 0;
  bool continued = false;
  while (!exited) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    if (elapsed() > a.timeout_s) {
      if (stopped) kill(stopped, SIGCONT);
      kill(-pid, SIGTERM);
      std::this_thread::sleep_for(std::chrono::seconds(3));
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.error = fmt::format("the job did not finish within {:.0f} s (log: {})", a.timeout_s, log);
      return r;
    }
    if (fault == "stop" && !continued) {
      // SIGCONT once every survivor committed a step without the stopped worker.
      Events ev = read_events(events_dir);
      if (!stopped && ev.count(victim))
        for (const auto& e : ev[victim])
          if (e["event"] == "drill") stopped = static_cast<pid_t>(e["pid"].get<int64_t>());
      if (stopped) {
        int survivors_on = 0;
        for (int w = 0; w + 1 < a.workers; ++w)
          for (const auto& e : ev[std::to_string(w)])
            if (e["event"] == "commit" && e["world"].get<int>() < a.workers) {
              ++survivors_on;
              break;
            }
        if (survivors_on == a.workers - 1) {
          kill(stopped, SIGCONT);
          continued = true;
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code != 0) {
    r.error = fmt::format("the job exited with {} (log: {})", code, log);
    return r;
  }

  Events ev = read_events(events_dir);
  double t_fault = -1;
  for (const auto& e : ev[victim])
    if (e["event"] == "drill") t_fault = e["t"].get<double>();
  if (t_fault < 0) {
    r.error = "the fault was never injected (the job ended before step " + std::to_string(a.at) + "?)";
    return r;
  }
  analyse(r, ev, a.workers, t_fault);
  return r;
}

bool shell_ok(const std::string& cmd) { return std::system(cmd.c_str()) == 0; }

// scripts/netns-hosts beside the executable's build directory, or under the
// working directory.
std::string netns_script() {
  const fs::path exe = self_exe();
  for (const fs::path& p : {exe.parent_path().parent_path() / "scripts/netns-hosts", fs::path("scripts/netns-hosts")})
    if (fs::exists(p)) return fs::absolute(p).string();
  return "";
}

// The network cut: one worker per network namespace ("host", joined by a
// bridge; scripts/netns-hosts), a standalone coordinator on host 0. Once the
// last worker has committed step --at with everyone, its host's link goes
// down; when the survivors have committed a step without it, the link comes
// back, and the worker learns it was evicted, rejoins and heals.
FaultResult run_cut(const BenchRecoveryArgs& a, const coord::Timeouts& timeouts) {
  FaultResult r;
  r.fault = "cut";
  if (geteuid() != 0) {
    r.error = "skipped: a network cut needs network namespaces (run as root)";
    return r;
  }
  const std::string script = netns_script();
  if (script.empty()) {
    r.error = "skipped: scripts/netns-hosts not found (run from the repository root)";
    return r;
  }
  char tmpl[] = "/tmp/braid_bench_recovery_XXXXXX";
  if (!mkdtemp(tmpl)) throw IoError("cannot create a temporary directory in /tmp");
  r.dir = tmpl;
  const std::string events_dir = r.dir + "/events";
  const std::string prefix = "bbr" + std::to_string(getpid() % 100000);
  struct Hosts {
    std::string down;
    bool up = false;
    ~Hosts() {
      if (up && std::system(down.c_str()) != 0)
        std::fprintf(stderr, "bench recovery: could not remove the test hosts (%s)\n", down.c_str());
    }
  } hosts;
  hosts.down = shell_quote(script) + " --prefix " + prefix + " down >/dev/null 2>&1";
  const std::string up = shell_quote(script) + " --prefix " + prefix + " up " + std::to_string(a.workers) + " >" +
                         shell_quote(r.dir + "/netns.log") + " 2>&1";
  hosts.up = true;  // `down` also cleans up after a half-done `up`
  if (std::system(up.c_str()) != 0) {
    r.error = "skipped: scripts/netns-hosts up failed (see " + r.dir + "/netns.log)";
    return r;
  }
  // Index 0 the coordinator, 1..N the workers; each one's output in its log file.
  std::vector<std::ofstream> logs;
  logs.emplace_back(r.dir + "/coordinator.log");
  for (int i = 0; i < a.workers; ++i) logs.emplace_back(r.dir + "/worker" + std::to_string(i) + ".log");
  ProcessGroup group([&](int index, std::string_view line) { logs[static_cast<size_t>(index)] << line << '\n'; });
  auto in_host = [&](int i, std::vector<std::string> argv) {
    argv.insert(argv.begin(), {"ip", "netns", "exec", prefix + "-h" + std::to_string(i), self_exe()});
    return argv;
  };
  // A secret of this run: workers bind to the namespaces' addresses.
  const std::pair<std::string, std::string> secret{"BRAID_JOB_SECRET",
                                                   fmt::format("bench-recovery-{}-{}", getpid(), now_ns())};
  ProcessSpec coordinator;
  coordinator.label = "coordinator";
  coordinator.env = {secret};
  coordinator.argv = in_host(0, {"coordinator", "--quiet", "--port", "29500", "--initial-replicas",
                                 std::to_string(a.workers), "--heartbeat-interval",
                                 fmt::format("{}", timeouts.heartbeat_interval_s), "--heartbeat-death",
                                 fmt::format("{}", timeouts.heartbeat_death_s), "--quorum-wait",
                                 fmt::format("{}", timeouts.quorum_wait_s), "--job-timeout",
                                 fmt::format("{}", timeouts.job_timeout_s), "--collective-timeout",
                                 fmt::format("{}", timeouts.collective_s)});
  group.spawn(coordinator);
  for (int i = 0; i < a.workers; ++i) {
    ProcessSpec w;
    w.label = "worker " + std::to_string(i);
    w.env = timeouts.to_env(true);
    w.env.insert(w.env.end(), {secret,
                               {"BRAID_FT_EVENTS", events_dir},
                               {"BRAID_TRANSPORT", "tcp"},
                               {"BRAID_COORDINATOR", "10.77.0.1:29500"},
                               {"BRAID_RENDEZVOUS", "10.77.0.1:29500"},
                               {"BRAID_RANK", std::to_string(i)},
                               {"BRAID_WORLD_SIZE", std::to_string(a.workers)}});
    std::vector<std::string> args = {"train", a.config, "--set", "fault.enabled=true", "--set",
                                     "train.steps=" + std::to_string(a.steps), "--set", "train.eval_every=0",
                                     "--set", "train.sample_tokens=0", "--set", "run.progress=false", "--set",
                                     "train.threads=1", "--set", "run.dir=" + r.dir + "/run"};
    for (const auto& set : a.sets) args.insert(args.end(), {"--set", set});
    w.argv = in_host(i, std::move(args));
    group.spawn(w);
  }
  std::vector<std::optional<ProcessExit>> exits(static_cast<size_t>(a.workers) + 1);
  auto workers_done = [&] {
    for (int i = 1; i <= a.workers; ++i)
      if (!exits[static_cast<size_t>(i)]) return false;
    return true;
  };
  const std::string victim = std::to_string(a.workers - 1);
  const std::string link = "ip -n " + prefix + "-h" + victim + " link set eth0 ";
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  double t_fault = -1;
  bool link_down = false, link_back = false;
  for (;;) {
    // Output is pumped while waiting (up to 50 ms).
    while (auto e = group.poll(50)) exits[static_cast<size_t>(e->index)] = e;
    if (workers_done()) break;
    if (elapsed() > a.timeout_s) {
      if (link_down && !link_back) shell_ok(link + "up");
      r.error = fmt::format("the job did not finish within {:.0f} s (logs in {})", a.timeout_s, r.dir);
      return r;
    }
    if (!link_back) {
      Events ev = read_events(events_dir);
      if (!link_down) {
        // Cut once the victim has committed step --at with everyone.
        for (const auto& e : ev[victim])
          if (e["event"] == "commit" && e["world"].get<int>() == a.workers && e["step"].get<int64_t>() >= a.at) {
            t_fault = now_s();
            if (!shell_ok(link + "down")) {
              r.error = "could not take the link down: " + link + "down";
              return r;
            }
            link_down = true;
            break;
          }
        if (!link_down && exits.back()) {
          r.error = "the worker to cut ended before step " + std::to_string(a.at) + " (logs in " + r.dir + ")";
          return r;
        }
      } else {
        int survivors_on = 0;
        for (int w = 0; w + 1 < a.workers; ++w)
          for (const auto& e : ev[std::to_string(w)])
            if (e["event"] == "commit" && e["world"].get<int>() < a.workers && e["t"].get<double>() > t_fault) {
              ++survivors_on;
              break;
            }
        // The others went on without it (or could not, and the timeout ends it).
        if (survivors_on == a.workers - 1 || now_s() - t_fault > timeouts.quorum_wait_s + 30) {
          if (!shell_ok(link + "up")) {
            r.error = "could not bring the link back up: " + link + "up";
            return r;
          }
          link_back = true;
        }
      }
    }
  }
  for (int i = 0; i < a.workers; ++i)
    if (const auto& e = exits[static_cast<size_t>(i) + 1]; !e->ok()) {
      r.error = fmt::format("worker {} {} (log: {}/worker{}.log)", i, e->describe(), r.dir, i);
      return r;
    }
  if (t_fault < 0) {
    r.error = "the link was never cut (the job ended before step " + std::to_string(a.at) + "?)";
    return r;
  }
  Events ev = read_events(events_dir);
  analyse(r, ev, a.workers, t_fault);
  return r;
}

// busbw of a TCP all-reduce of `bytes` between 2 local ranks (bytes/s).
double tcp_allreduce_busbw(uint64_t bytes, std::string* error) {
  const std::string cmd = shell_quote(self_exe()) + " bench comm --np 2 --transport tcp --op allreduce --sizes " +
                          std::to_string(std::max<uint64_t>(bytes, 1 << 20)) + " --json --quiet 2>/dev/null";
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *error = "cannot run " + cmd;
    return 0;
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  std::istringstream lines(out);
  std::string line;
  double best = 0;
  while (std::getline(lines, line)) {
    try {
      auto j = json::parse(line);
      if (j.value("impl", "") == "braid") best = std::max(best, j.at("busbw_gbps").get<double>() * 1e9);
    } catch (const json::exception&) {
    }
  }
  if (best <= 0) *error = "no result from: " + cmd;
  return best;
}

// One row from several runs of a fault: each column's median (the first
// failure, if any run failed).
FaultResult median_of_runs(const std::vector<FaultResult>& runs) {
  for (const auto& r : runs)
    if (!r.ok) return r;
  auto med = [&](auto field) {
    std::vector<double> v;
    for (const auto& r : runs) v.push_back(static_cast<double>(field(r)));
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  FaultResult m = runs.front();
  m.detect_s = med([](const FaultResult& r) { return r.detect_s; });
  m.next_commit_s = med([](const FaultResult& r) { return r.next_commit_s; });
  m.redone = static_cast<int>(std::lround(med([](const FaultResult& r) { return r.redone; })));
  m.heal_bytes = static_cast<uint64_t>(med([](const FaultResult& r) { return r.heal_bytes; }));
  m.heal_s = med([](const FaultResult& r) { return r.heal_s; });
  m.heal_rate = med([](const FaultResult& r) { return r.heal_rate; });
  m.heal_wait_s = med([](const FaultResult& r) { return r.heal_wait_s; });
  m.rejoin_s = med([](const FaultResult& r) { return r.rejoin_s; });
  m.runs = static_cast<int>(runs.size());
  return m;
}

int run_bench_recovery(const BenchRecoveryArgs& a) {
  if (a.workers < 2) throw ConfigError("--workers must be at least 2", "a fault needs a survivor");
  if (a.at < 1 || a.at >= a.steps)
    throw ConfigError(fmt::format("--at {} is outside 1..{}", a.at, a.steps - 1), "fail a step inside the run");
  if (!fs::exists(a.config))
    throw ConfigError("job file '" + a.config + "' does not exist", "run from the repository root or pass --config");
  for (const auto& f : a.faults)
    if (f != "kill" && f != "stop" && f != "cut")
      throw ConfigError("unknown fault '" + f + "'", "use kill, stop and/or cut (comma-separated)");
  const coord::Timeouts timeouts = coord::Timeouts::from_env();

  if (a.repeats < 1) throw ConfigError("--repeats must be at least 1");
  std::vector<FaultResult> results;
  std::map<std::string, std::vector<double>> heal_rates;  // every run's, per fault
  for (const auto& f : a.faults) {
    std::vector<FaultResult> runs;
    for (int rep = 0; rep < a.repeats; ++rep) {
      if (!a.json)
        std::fprintf(stderr, "bench recovery: %s one of %d workers at step %d of %d (run %d of %d)...\n", f.c_str(),
                     a.workers, a.at, a.steps, rep + 1, a.repeats);
      runs.push_back(f == "cut" ? run_cut(a, timeouts) : run_fault(a, f, timeouts));
      const FaultResult& r = runs.back();
      if (r.ok && r.heal_bytes > 0) heal_rates[f].push_back(r.heal_rate);
      if (!r.dir.empty()) {
        if (!a.keep && r.ok) fs::remove_all(r.dir);
        else std::fprintf(stderr, "bench recovery: %s run kept in %s\n", f.c_str(), r.dir.c_str());
      }
      if (!r.ok) break;  // a failed or skipped fault is reported as such
    }
    results.push_back(median_of_runs(runs));
  }
  uint64_t heal_bytes = 0;
  for (const auto& r : results) heal_bytes = std::max(heal_bytes, r.heal_bytes);
  std::string probe_error;
  const double busbw = tcp_allreduce_busbw(heal_bytes ? heal_bytes : (8u << 20), &probe_error);

  const double kill_target = 5, stop_target = timeouts.heartbeat_death_s + 2;
  if (a.json) {
    json out;
    out["workers"] = a.workers;
    out["steps"] = a.steps;
    out["fault_at_step"] = a.at;
    out["timeouts"] = timeouts.describe();
    out["tcp_allreduce_busbw_bytes_per_s"] = busbw;
    for (const auto& r : results) {
      json j;
      j["fault"] = r.fault;
      j["ok"] = r.ok;
      if (!r.ok) j["error"] = r.error;
      j["detect_s"] = r.detect_s;
      j["next_commit_s"] = r.next_commit_s;
      j["steps_redone"] = r.redone;
      j["world_after"] = r.world_after;
      j["heal_bytes"] = r.heal_bytes;
      j["heal_s"] = r.heal_s;
      j["heal_bytes_per_s"] = r.heal_rate;
      j["heal_wait_s"] = r.heal_wait_s;
      j["heal_vs_allreduce_busbw"] = busbw > 0 ? r.heal_rate / busbw : 0;
      j["rejoin_s"] = r.rejoin_s;
      j["runs"] = r.runs;
      j["heal_bytes_per_s_each_run"] = heal_rates[r.fault];
      j["next_commit_target_s"] = r.fault == "kill" ? kill_target : stop_target;
      out["faults"].push_back(j);
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("# braid bench recovery: %d workers (TCP), %s, fault at step %d of %d\n", a.workers,
              a.config.c_str(), a.at, a.steps);
  std::printf("# %s\n", timeouts.describe().c_str());
  std::printf("%-6s %10s %12s %7s %12s %10s %12s %11s %10s\n", "fault", "detect(s)", "next(s)", "redone", "heal(MB)",
              "wait(ms)", "heal(MB/s)", "vs busbw", "rejoin(s)");
  for (const auto& r : results) {
    if (!r.ok) {
      std::printf(r.error.rfind("skipped", 0) == 0 ? "%-6s %s\n" : "%-6s failed: %s\n", r.fault.c_str(),
                  r.error.c_str());
      continue;
    }
    std::printf("%-6s %10.3f %12.3f %7d %12.2f %10.1f %12.1f %10.0f%% %10.2f\n", r.fault.c_str(), r.detect_s,
                r.next_commit_s, r.redone, static_cast<double>(r.heal_bytes) * 1e-6, r.heal_wait_s * 1e3,
                r.heal_rate * 1e-6,
                busbw > 0 ? 100 * r.heal_rate / busbw : 0.0, r.rejoin_s);
  }
  if (busbw > 0)
    std::printf("# TCP all-reduce busbw (braid bench comm, 2 ranks, %.1f MB): %.1f MB/s\n",
                static_cast<double>(std::max<uint64_t>(heal_bytes, 1 << 20)) * 1e-6, busbw * 1e-6);
  else
    std::printf("# TCP all-reduce probe failed: %s\n", probe_error.c_str());
  if (a.repeats > 1) {
    std::printf("# each column is the median of %d runs; heal rate of each run:", a.repeats);
    for (const auto& [f, v] : heal_rates) {
      std::printf(" %s", f.c_str());
      for (double x : v) std::printf(" %.0f", x * 1e-6);
      std::printf(" MB/s;");
    }
    std::printf("\n");
  }
  std::printf("# heal(MB/s): the transfer, from the header's first byte to the last verified chunk; wait(ms): the\n"
              "# joiner waiting before that for its peer to begin (finishing its quorum, hashing its chunks)\n");
  for (const auto& r : results)
    if (r.ok && r.fault == "cut")
      std::printf("# the cut's heal crosses the namespaces' veth links and bridge, the probe runs on loopback\n");
  for (const auto& r : results) {
    if (!r.ok) continue;
    const double target = r.fault == "kill" ? kill_target : stop_target;
    std::printf("target: next committed step <= %.0f s after %s: %.2f s  %s\n", target,
                r.fault == "kill"   ? "SIGKILL"
                : r.fault == "cut" ? "a network cut (heartbeat death + 2 s)"
                                   : "a hang (heartbeat death + 2 s)",
                r.next_commit_s,
                r.next_commit_s >= 0 && r.next_commit_s <= target ? "met" : "NOT met");
    if (r.heal_bytes > 0 && busbw > 0)
      std::printf("target: healing (%s) >= 50%% of TCP all-reduce busbw: %.0f%%  %s\n", r.fault.c_str(),
                  100 * r.heal_rate / busbw, r.heal_rate >= 0.5 * busbw ? "met" : "NOT met");
    else if (r.heal_bytes == 0)
      std::printf("note: after %s the worker did not heal before the job ended (raise --steps)\n", r.fault.c_str());
  }
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchRecoveryArgs>();
  auto* cmd = bench.add_subcommand("recovery", "Fault-tolerant training: detection, recovery and healing times");
  cmd->add_option("--config", a->config, "Job to run (fault.enabled is set)")->capture_default_str();
  cmd->add_option("--set", a->sets, "Override a config key (repeatable)")->take_all();
  cmd->add_option("--faults", a->faults, "kill, stop and/or cut (cut needs root: network namespaces)")->delimiter(',')->capture_default_str();
  cmd->add_option("--workers", a->workers, "Data-parallel workers")->capture_default_str();
  cmd->add_option("--steps", a->steps, "Steps of each run")->capture_default_str();
  cmd->add_option("--at", a->at, "Step at which the last worker fails")->capture_default_str();
  cmd->add_option("--timeout", a->timeout_s, "Seconds one run may take")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Runs of each fault; each column shows the median")->capture_default_str();
  cmd->add_flag("--keep", a->keep, "Keep each run's directory (events, logs) and print it");
  cmd->add_flag("--json", a->json, "Print one JSON object");
  cmd->footer("Timeouts come from the environment (BRAID_HEARTBEAT_DEATH, ...; defaults otherwise), as braid launch\n"
              "passes them. Example: braid bench recovery --faults kill,stop,cut --steps 80 --at 15");
  return [a] { return run_bench_recovery(*a); };
}

}  // namespace

BRAID_BENCH("recovery", 40, setup);

}  // namespace braid::cli
