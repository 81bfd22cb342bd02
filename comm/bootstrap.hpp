#pragma once
// Joining a job from the environment. Works under three launchers:
//   braid launch  BRAID_RANK, BRAID_WORLD_SIZE, BRAID_LOCAL_RANK, BRAID_LOCAL_WORLD_SIZE,
//                 BRAID_NODE_RANK, BRAID_RENDEZVOUS (the launcher of node 0 serves the store)
//   mpirun        OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}; rank 0 serves the store at
//                 BRAID_RENDEZVOUS (or MASTER_ADDR:MASTER_PORT), e.g. mpirun -x BRAID_RENDEZVOUS=node0:29500
//   SLURM (srun)  SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID; store as for mpirun
// With none of these the process is a world of one.
#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "net/mesh.hpp"
#include "net/store.hpp"

namespace braid::net {
class TcpStoreServer;
}

namespace braid::comm {

struct WorldInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  int node_rank = 0;
  std::string rendezvous;   // host:port of the store ("" for a world of one)
  std::string launcher;     // "braid", "mpirun", "slurm" or "single"
  bool serve_store = false; // this process must host the store (rank 0 under mpirun/slurm)
};

// Reads the environment; throws ConfigError if it is inconsistent.
WorldInfo detect_world();

// The job secret from BRAID_JOB_SECRET, or the file named by BRAID_JOB_SECRET_FILE; "" if neither.
std::string job_secret();

struct InitOptions {
  std::string group = "world";
  uint32_t epoch = 0;
  // Defaults come from the environment: BRAID_TRANSPORT (auto|tcp|shm),
  // BRAID_STREAMS (TCP connections per peer), BRAID_FAULTS (see net::FaultSpec),
  // BRAID_COMM_TIMEOUT (seconds per collective), BRAID_TUNING_FILE (table for
  // Algo::Auto written by `braid bench comm --tune`).
  std::string transport;
  int streams_per_peer = 0;
  double connect_timeout_s = 120;
  CommOptions comm;
};

// Everything a process holds to take part in the job. Destroy it to leave.
struct World {
  WorldInfo info;
  std::unique_ptr<net::TcpStoreServer> server;  // set when this process serves the store
  std::shared_ptr<net::Store> store;
  std::unique_ptr<Communicator> comm;
  World();
  ~World();
  World(World&&) noexcept;
  World& operator=(World&&) noexcept;
};

World init_world(const InitOptions& options = {});

// Mesh options filled from the environment and `options` (used by init_world
// and by anything that builds further meshes, e.g. a new epoch).
net::MeshOptions mesh_options_from_env(const WorldInfo& info, const InitOptions& options);

// Runs body(comm) for ranks 0..n-1 as threads of this process, each with a
// Communicator over the in-process transport (benchmarks and tests that need
// no sockets). Returns when every rank has ended; then rethrows the lowest
// rank's exception, if any.
void run_in_process(int n, const std::function<void(Communicator&)>& body);

}  // namespace braid::comm
