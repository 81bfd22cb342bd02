#pragma once
// Helpers for transport tests: ranks as threads over a MemStore, ranks as
// forked processes over a FileStore, deterministic payloads.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "net/file_store.hpp"
#include "net/mesh.hpp"
#include "net/store.hpp"

namespace braid::net::test {

// A transport configuration the tests sweep.
struct Variant {
  std::string name;
  TransportChoice transport;
  int streams;
};

inline std::vector<Variant> all_variants() {
  return {{"tcp", TransportChoice::Tcp, 1}, {"tcp4", TransportChoice::Tcp, 4}, {"shm", TransportChoice::Shm, 1}};
}

inline MeshOptions options_for(const Variant& v, int rank, int size) {
  MeshOptions o;
  o.rank = rank;
  o.size = size;
  o.transport = v.transport;
  o.streams_per_peer = v.streams;
  o.host_id = "testhost";
  o.connect_timeout_s = 30;
  o.secret = "";
  return o;
}

// Runs fn(rank) on n threads; rethrows the first exception.
inline void run_threads(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> ts;
  std::mutex mu;
  std::exception_ptr first;
  for (int r = 0; r < n; ++r) {
    ts.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first) first = std::current_exception();
      }
    });
  }
  for (auto& t : ts) t.join();
  if (first) std::rethrow_exception(first);
}

// Connects n meshes (one per thread) and returns them in rank order.
inline std::vector<std::shared_ptr<Mesh>> connect_threads(int n, const std::function<MeshOptions(int)>& opts) {
  MemStore store;
  std::vector<std::shared_ptr<Mesh>> meshes(static_cast<size_t>(n));
  run_threads(n, [&](int r) { meshes[static_cast<size_t>(r)] = connect_mesh(store, opts(r)); });
  return meshes;
}

// Bytes that depend on (seed, index): any misplaced byte shows.
inline void fill_pattern(void* p, size_t n, uint64_t seed) {
  auto* b = static_cast<uint8_t*>(p);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b[i] = static_cast<uint8_t>(x);
  }
}
inline bool check_pattern(const void* p, size_t n, uint64_t seed) {
  std::vector<uint8_t> want(n);
  fill_pattern(want.data(), n, seed);
  return n == 0 || std::memcmp(p, want.data(), n) == 0;
}

// A fresh empty directory under the build tree (or /tmp).
inline std::string temp_dir(const std::string& what) {
  std::string base = std::filesystem::temp_directory_path().string();
  std::string dir = base + "/braid-test-" + what + "-" + std::to_string(getpid()) + "-" +
                    std::to_string(reinterpret_cast<uintptr_t>(&what) & 0xffff) + "-" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Forks n child processes running fn(rank) (exit code 0 = success, anything
// thrown is printed and exits 1). Returns the pids; see wait_children().
inline std::vector<pid_t> fork_ranks(int n, const std::function<int(int)>& fn) {
  std::vector<pid_t> pids;
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < n; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      int rc = 1;
      try {
        rc = fn(r);
      } catch (const Error& e) {
        std::fprintf(stderr, "rank %d failed: %s\n", r, e.describe().c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d failed: %s\n", r, e.what());
      }
      std::fflush(stderr);
      _exit(rc);
    }
    pids.push_back(pid);
  }
  return pids;
}

// Waits for every pid; returns their exit codes (-signal for a signal death).
inline std::vector<int> wait_children(const std::vector<pid_t>& pids) {
  std::vector<int> codes;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    codes.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
  }
  return codes;
}

}  // namespace braid::net::test
