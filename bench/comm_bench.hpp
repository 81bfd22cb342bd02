#pragma once
// `braid bench comm`: braid's collectives against Open MPI and Gloo in one run,
// nccl-tests style rows (size, count, type, time, algbw, busbw, #wrong).
#include <cstdint>
#include <string>
#include <vector>

namespace braid::bench {

struct CommRow {
  std::string impl;  // braid | mpi | gloo
  std::string op;
  std::string transport;
  std::string algo;
  int np = 0;
  uint64_t bytes = 0;
  double time_us = 0;
  double algbw_gbps = 0;
  double busbw_gbps = 0;
  uint64_t wrong = 0;
};

struct CommBenchOptions {
  int np = 2;
  std::string op = "allreduce";
  std::string dtype = "f32";
  std::string sizes = "8:64M";
  std::string transport = "shm";  // shm | tcp
  std::string algo = "auto";
  std::vector<std::string> vs;    // mpi, gloo
  int iters = 0;                  // 0: chosen per size
  int streams = 0;                // TCP connections per peer (0: default)
  std::vector<std::string> netns; // run rank i inside network namespace netns[i]
  std::string bind_addr;          // address of the rendezvous store (netns runs)
  std::string tune_out;           // non-empty: measure every algorithm, write the tuning table here
  bool json = false;
  bool quiet = false;
};

// Runs braid (and the requested peers) and returns every row measured.
std::vector<CommRow> run_comm_bench(const CommBenchOptions& o);
// The body of one braid rank (`braid bench comm --worker ...`); prints rows on rank 0.
int run_comm_bench_worker(const CommBenchOptions& o, const std::vector<uint64_t>& sizes,
                          const std::vector<uint64_t>& iters);
// Prints rows as a table with braid/peer ratios, or as JSON lines.
void print_comm_rows(const std::vector<CommRow>& rows, const CommBenchOptions& o);
// Iterations used for a size when --iters is not given.
uint64_t default_iters(uint64_t bytes);

}  // namespace braid::bench
