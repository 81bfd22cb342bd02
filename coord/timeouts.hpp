#pragma once
// The timeouts of fault tolerance, in one place. They form a hierarchy, each
// level catching what the one below cannot:
//
//   collective deadline  <  heartbeat death  <  quorum wait  <  job timeout
//        3 s                    5 s               15 s           30 min
//
// - collective deadline: a collective that does not finish by then throws
//   Timeout on every survivor, so a hung peer costs a step, not the job.
// - heartbeat death: a worker silent this long is evicted by the coordinator
//   (a crash is seen sooner: its connection closes). Heartbeats go out every
//   heartbeat_interval (1 s), so several can be lost before death.
// - quorum wait: the coordinator waits this long at a step boundary (or for a
//   commit vote) for members that are alive but do not show up, then evicts
//   them. It exceeds heartbeat death so that a dead member is evicted for
//   being dead, not for being slow.
// - job timeout: a worker gives up (with a clear error) after waiting this
//   long for a quorum, e.g. below min_replicas or without a coordinator.
//
// The defaults fit the example job (steps well under a second). Jobs whose
// steps or collectives take longer must raise the collective deadline and
// with it the levels above.
#include <string>
#include <utility>
#include <vector>

namespace braid {
class Config;
}

namespace braid::coord {

struct Timeouts {
  double collective_s = 3;
  double heartbeat_interval_s = 1;
  double heartbeat_death_s = 5;
  double quorum_wait_s = 15;
  double job_timeout_s = 1800;

  // Throws ConfigError naming the broken level when the hierarchy does not
  // hold, or when fewer than two heartbeats fit into the death timeout.
  void validate() const;

  // Overrides from the environment: BRAID_COMM_TIMEOUT, BRAID_HEARTBEAT_INTERVAL,
  // BRAID_HEARTBEAT_DEATH, BRAID_QUORUM_WAIT, BRAID_JOB_TIMEOUT (seconds).
  static Timeouts from_env();
  static Timeouts from_env(Timeouts defaults);
  // Overrides from a config section, e.g. prefix "fault": fault.collective_timeout,
  // fault.heartbeat_interval, fault.heartbeat_death, fault.quorum_wait, fault.job_timeout.
  void read_config(Config& config, const std::string& prefix);
  // The environment variables that from_env() reads, for passing to workers.
  // The collective deadline is included only if `with_collective`.
  std::vector<std::pair<std::string, std::string>> to_env(bool with_collective) const;
  // "collective 3 s < heartbeat death 5 s (every 1 s) < quorum wait 15 s < job 1800 s"
  std::string describe() const;
};

}  // namespace braid::coord
