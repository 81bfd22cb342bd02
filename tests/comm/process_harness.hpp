#pragma once
// Ranks as forked processes joined by the real transports: each child builds
// its mesh with net::connect_mesh over a FileStore (a directory; no server,
// and unlike a MemStore it works across fork), runs a body and exits with
// its result. The children arm alarm() so that a hang kills them instead of
// the suite.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "net/file_store.hpp"
#include "net/mesh.hpp"

namespace braid::comm::harness {

struct TransportCase {
  std::string name;
  net::TransportChoice transport;
  int per_host;  // > 0: host ids give this many ranks per host (auto picks shm inside, tcp across)
  int streams = 1;  // TCP connections per peer
};

inline std::string fresh_dir(const std::string& what) {
  std::string dir = std::filesystem::temp_directory_path().string() + "/braid-comm-" + what + "-" +
                    std::to_string(getpid()) + "-" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline net::MeshOptions mesh_options(const TransportCase& t, int rank, int size) {
  net::MeshOptions o;
  o.rank = rank;
  o.size = size;
  o.transport = t.transport;
  o.host_id = t.per_host > 0 ? "host" + std::to_string(rank / t.per_host) : "testhost";
  o.connect_timeout_s = 60;
  o.streams_per_peer = t.streams;
  return o;
}

// Forks n ranks running body(rank, store) -> exit code; returns their pids.
inline std::vector<pid_t> fork_ranks(int n, const std::string& dir,
                                     const std::function<int(int, net::FileStore&)>& body, int alarm_s = 150) {
  std::vector<pid_t> pids;
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < n; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      alarm(static_cast<unsigned>(alarm_s));
      int rc = 100;
      try {
        net::FileStore store(dir);
        rc = body(r, store);
      } catch (const Error& e) {
        std::fprintf(stderr, "rank %d failed: %s\n", r, e.describe().c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d failed: %s\n", r, e.what());
      }
      std::fflush(stdout);
      std::fflush(stderr);
      _exit(rc);
    }
    pids.push_back(pid);
  }
  return pids;
}

// Exit codes in rank order; -signal for a child killed by a signal.
inline std::vector<int> wait_ranks(const std::vector<pid_t>& pids) {
  std::vector<int> codes;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    codes.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
  }
  return codes;
}

}  // namespace braid::comm::harness
