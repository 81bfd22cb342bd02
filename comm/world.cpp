// Job layout and secret from the environment; no transport code here so that
// the launcher can use it without linking connections.
#include "comm/bootstrap.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace braid::comm {

namespace {

int need_int(const char* name) {
  int64_t v = env::get_int(name, -1);
  if (v < 0) throw ConfigError(fmt::format("environment variable {} is missing or negative", name));
  return static_cast<int>(v);
}

std::string rendezvous_from_env(const char* launcher) {
  if (auto r = env::get("BRAID_RENDEZVOUS")) return *r;
  auto a = env::get("MASTER_ADDR");
  auto p = env::get("MASTER_PORT");
  if (a && p) return *a + ":" + *p;
  throw ConfigError(
      fmt::format("started by {} without a rendezvous address", launcher),
      "set BRAID_RENDEZVOUS=HOST:PORT for every rank (HOST is where rank 0 runs), e.g. "
      "`mpirun -x BRAID_RENDEZVOUS=node0:29500 ...`, or start the job with `braid launch`");
}

}  // namespace

WorldInfo detect_world() {
  WorldInfo w;
  if (env::get("BRAID_RANK")) {
    w.launcher = "braid";
    w.rank = need_int("BRAID_RANK");
    w.size = need_int("BRAID_WORLD_SIZE");
    w.local_rank = static_cast<int>(env::get_int("BRAID_LOCAL_RANK", w.rank));
    w.local_size = static_cast<int>(env::get_int("BRAID_LOCAL_WORLD_SIZE", w.size));
    w.node_rank = static_cast<int>(env::get_int("BRAID_NODE_RANK", 0));
    w.rendezvous = env::get_or("BRAID_RENDEZVOUS", "");
    if (w.size > 1 && w.rendezvous.empty())
      throw ConfigError("BRAID_RENDEZVOUS is not set", "start the job with `braid launch`");
  } else if (env::get("OMPI_COMM_WORLD_RANK")) {
    w.launcher = "mpirun";
    w.rank = need_int("OMPI_COMM_WORLD_RANK");
    w.size = need_int("OMPI_COMM_WORLD_SIZE");
    w.local_rank = static_cast<int>(env::get_int("OMPI_COMM_WORLD_LOCAL_RANK", 0));
    w.local_size = static_cast<int>(env::get_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1));
    w.node_rank = static_cast<int>(env::get_int("OMPI_COMM_WORLD_NODE_RANK", 0));
    if (w.size > 1) {
      w.rendezvous = rendezvous_from_env("mpirun");
      w.serve_store = w.rank == 0;
    }
  } else if (env::get("SLURM_PROCID")) {
    w.launcher = "slurm";
    w.rank = need_int("SLURM_PROCID");
    w.size = need_int("SLURM_NTASKS");
    w.local_rank = static_cast<int>(env::get_int("SLURM_LOCALID", 0));
    w.local_size = static_cast<int>(env::get_int("SLURM_NTASKS_PER_NODE", 1));
    w.node_rank = static_cast<int>(env::get_int("SLURM_NODEID", 0));
    if (w.size > 1) {
      w.rendezvous = rendezvous_from_env("srun");
      w.serve_store = w.rank == 0;
    }
  } else {
    w.launcher = "single";
  }
  if (w.size < 1 || w.rank >= w.size)
    throw ConfigError(fmt::format("inconsistent job layout from {}: rank {} of world size {}",
                                  w.launcher, w.rank, w.size));
  if (w.local_size < 1) w.local_size = 1;
  return w;
}

std::string job_secret() {
  if (auto s = env::get("BRAID_JOB_SECRET")) return *s;
  if (auto f = env::get("BRAID_JOB_SECRET_FILE")) {
    std::ifstream in(*f);
    if (!in)
      throw ConfigError("cannot read the job secret file '" + *f + "' (BRAID_JOB_SECRET_FILE)",
                        "check the path and its permissions");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    if (s.empty()) throw ConfigError("the job secret file '" + *f + "' is empty");
    return s;
  }
  return {};
}

}  // namespace braid::comm
