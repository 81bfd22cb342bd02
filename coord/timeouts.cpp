#include "coord/timeouts.hpp"

#include <fmt/format.h>

#include "core/config.hpp"
#include "core/env.hpp"
#include "core/error.hpp"

namespace braid::coord {

namespace {

void require_positive(double v, const char* name) {
  if (!(v > 0))
    throw ConfigError(fmt::format("the {} must be positive (got {})", name, v),
                      "timeouts are in seconds; the defaults are " + Timeouts{}.describe());
}

}  // namespace

void Timeouts::validate() const {
  require_positive(collective_s, "collective deadline");
  require_positive(heartbeat_interval_s, "heartbeat interval");
  require_positive(heartbeat_death_s, "heartbeat death timeout");
  require_positive(quorum_wait_s, "quorum wait");
  require_positive(job_timeout_s, "job timeout");
  const std::string hint = "keep collective deadline < heartbeat death < quorum wait < job timeout (" +
                           describe() + ")";
  if (!(collective_s < heartbeat_death_s))
    throw ConfigError(fmt::format("the collective deadline ({} s) must be shorter than the heartbeat death "
                                  "timeout ({} s)",
                                  collective_s, heartbeat_death_s),
                      hint);
  if (!(heartbeat_death_s < quorum_wait_s))
    throw ConfigError(fmt::format("the heartbeat death timeout ({} s) must be shorter than the quorum wait ({} s)",
                                  heartbeat_death_s, quorum_wait_s),
                      hint);
  if (!(quorum_wait_s < job_timeout_s))
    throw ConfigError(
        fmt::format("the quorum wait ({} s) must be shorter than the job timeout ({} s)", quorum_wait_s,
                    job_timeout_s),
        hint);
  if (!(heartbeat_interval_s * 2 <= heartbeat_death_s))
    throw ConfigError(fmt::format("the heartbeat interval ({} s) must be at most half the heartbeat death "
                                  "timeout ({} s)",
                                  heartbeat_interval_s, heartbeat_death_s),
                      "otherwise one late heartbeat evicts a healthy worker");
}

Timeouts Timeouts::from_env() { return from_env(Timeouts{}); }

Timeouts Timeouts::from_env(Timeouts t) {
  t.collective_s = env::get_double("BRAID_COMM_TIMEOUT", t.collective_s);
  t.heartbeat_interval_s = env::get_double("BRAID_HEARTBEAT_INTERVAL", t.heartbeat_interval_s);
  t.heartbeat_death_s = env::get_double("BRAID_HEARTBEAT_DEATH", t.heartbeat_death_s);
  t.quorum_wait_s = env::get_double("BRAID_QUORUM_WAIT", t.quorum_wait_s);
  t.job_timeout_s = env::get_double("BRAID_JOB_TIMEOUT", t.job_timeout_s);
  return t;
}

void Timeouts::read_config(Config& c, const std::string& prefix) {
  const std::string p = prefix.empty() ? "" : prefix + ".";
  collective_s = c.get_double(p + "collective_timeout", collective_s, 1e-3, 1e6);
  heartbeat_interval_s = c.get_double(p + "heartbeat_interval", heartbeat_interval_s, 1e-3, 1e6);
  heartbeat_death_s = c.get_double(p + "heartbeat_death", heartbeat_death_s, 1e-3, 1e6);
  quorum_wait_s = c.get_double(p + "quorum_wait", quorum_wait_s, 1e-3, 1e6);
  job_timeout_s = c.get_double(p + "job_timeout", job_timeout_s, 1e-3, 1e9);
}

std::vector<std::pair<std::string, std::string>> Timeouts::to_env(bool with_collective) const {
  std::vector<std::pair<std::string, std::string>> e = {
      {"BRAID_HEARTBEAT_INTERVAL", fmt::format("{}", heartbeat_interval_s)},
      {"BRAID_HEARTBEAT_DEATH", fmt::format("{}", heartbeat_death_s)},
      {"BRAID_QUORUM_WAIT", fmt::format("{}", quorum_wait_s)},
      {"BRAID_JOB_TIMEOUT", fmt::format("{}", job_timeout_s)}};
  if (with_collective) e.emplace_back("BRAID_COMM_TIMEOUT", fmt::format("{}", collective_s));
  return e;
}

std::string Timeouts::describe() const {
  return fmt::format("collective {} s < heartbeat death {} s (every {} s) < quorum wait {} s < job {} s",
                     collective_s, heartbeat_death_s, heartbeat_interval_s, quorum_wait_s, job_timeout_s);
}

}  // namespace braid::coord
