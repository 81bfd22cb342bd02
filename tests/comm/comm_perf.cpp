// comm_perf: a development probe for the collectives' speed over the real
// transports (ranks as forked processes on this machine). It is a program,
// not a test; `braid bench comm` is the user-facing benchmark. Prints one
// row per size: time per operation (mean over iterations, slowest rank),
// algbw and busbw with nccl-tests' factors.
//
//   comm_perf --np 2 --transport shm --op allreduce --sizes 8,64M --algo auto
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/reduce.hpp"
#include "core/bytes.hpp"
#include "core/error.hpp"
#include "net/file_store.hpp"
#include "net/mesh.hpp"

using namespace braid;
using namespace braid::comm;

int main(int argc, char** argv) {
  CLI::App app("comm_perf: collective speed over tcp/shm with forked ranks");
  int np = 2, iters = 0, warmup = 5, streams = 1;
  std::string transport = "shm", op_name = "allreduce", sizes_text = "8,64K,1M,16M,64M", algo_text = "auto";
  std::string dtype_text = "f32";
  size_t chunk = 0;
  int window = 0;
  bool raw = false;
  double spin_us = -1;
  app.add_option("--np", np, "ranks");
  app.add_flag("--raw", raw, "also time the bare transport exchange (2 ranks) for comparison");
  app.add_option("--transport", transport, "shm|tcp");
  app.add_option("--op", op_name, "allreduce|reduce_scatter|all_gather|broadcast");
  app.add_option("--sizes", sizes_text, "bytes per rank's vector, e.g. 8:64M or 8,1M");
  app.add_option("--algo", algo_text, "auto|ring|rhd|tree|hier");
  app.add_option("--dtype", dtype_text, "f32|f64|bf16|...");
  app.add_option("--iters", iters, "iterations per size (0: by size)");
  app.add_option("--warmup", warmup, "untimed iterations per size");
  app.add_option("--chunk", chunk, "pipeline chunk bytes (0: default)");
  app.add_option("--window", window, "chunks in flight (0: default)");
  app.add_option("--streams", streams, "TCP streams per peer");
  app.add_option("--spin-us", spin_us, "CommOptions::spin_wait_us (default: the library's)");
  CLI11_PARSE(app, argc, argv);

  const DType type = parse_dtype(dtype_text);
  const Algo algo = parse_algo(algo_text);
  const std::vector<uint64_t> sizes = parse_byte_sizes(sizes_text);
  std::string dir = std::filesystem::temp_directory_path().string() + "/braid-comm-perf-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < np; ++r) {
    pid_t pid = fork();
    if (pid != 0) {
      pids.push_back(pid);
      continue;
    }
    try {
      net::FileStore store(dir);
      net::MeshOptions mo;
      mo.rank = r;
      mo.size = np;
      mo.transport = net::parse_transport(transport);
      mo.streams_per_peer = streams;
      mo.host_id = "perfhost";
      CommOptions co;
      co.chunk_bytes = chunk;
      co.chunks_in_flight = window;
      co.timeout_s = 120;
      if (spin_us >= 0) co.spin_wait_us = spin_us;
      Communicator comm(net::connect_mesh(store, mo), co);
      if (r == 0)
        std::printf("# np %d transport %s op %s algo %s dtype %s reduce-isa %s\n", np, transport.c_str(),
                    op_name.c_str(), algo_name(algo), dtype_text.c_str(), isa_name(active_reduce_kernels().isa));
      if (r == 0) std::printf("%12s %12s %12s %10s %10s\n", "bytes", "count", "time_us", "algbw_GB/s", "busbw_GB/s");
      const size_t es = dtype_size(type);
      if (raw && np == 2) {
        // The transport alone: post a receive and a send to the peer, wait both.
        net::Pair& p = comm.mesh().pair(1 - r);
        for (uint64_t bytes : sizes) {
          std::vector<char> a(bytes), b(bytes);
          int it = iters > 0 ? iters : 2000;
          uint64_t tag = 1ull << 40;
          auto once = [&] {
            auto rq = p.irecv(b.data(), bytes, tag);
            auto sq = p.isend(a.data(), bytes, tag);
            rq->wait(Deadline::in_seconds(60));
            sq->wait(Deadline::in_seconds(60));
            ++tag;
          };
          for (int i = 0; i < warmup; ++i) once();
          auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < it; ++i) once();
          double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / it;
          if (r == 0) std::printf("%12zu %12s %12.2f   (transport exchange)\n", static_cast<size_t>(bytes), "-", us);
        }
      }
      for (uint64_t bytes : sizes) {
        const size_t count = std::max<size_t>(1, bytes / es);
        const size_t n = static_cast<size_t>(np);
        std::vector<char> in(count * es * (op_name == "reduce_scatter" ? n : 1), 1);
        std::vector<char> out(count * es * (op_name == "all_gather" ? n : 1));
        // Small values so that sums stay finite whatever the type.
        if (type == DType::F32)
          for (size_t i = 0; i < in.size() / 4; ++i) reinterpret_cast<float*>(in.data())[i] = 1.0f;
        CollectiveOptions o;
        o.algo = algo;
        auto once = [&] {
          if (op_name == "allreduce") comm.all_reduce(in.data(), out.data(), count, type, ReduceOp::Sum, o).wait();
          else if (op_name == "reduce_scatter")
            comm.reduce_scatter(in.data(), out.data(), count / n ? count / n : 1, type, ReduceOp::Sum, o).wait();
          else if (op_name == "all_gather") comm.all_gather(in.data(), out.data(), count, type, o).wait();
          else comm.broadcast(in.data(), count, type, 0, o).wait();
        };
        int it = iters > 0 ? iters : static_cast<int>(std::clamp<uint64_t>((1ull << 30) / (bytes + 4096), 5, 20000));
        for (int i = 0; i < warmup; ++i) once();
        comm.barrier().wait();
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < it; ++i) once();
        double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / it;
        comm.all_reduce(&us, &us, 1, DType::F64, ReduceOp::Max).wait();
        const double total = static_cast<double>(count * es);
        const double algbw = total / us / 1e3;
        double factor = op_name == "allreduce" ? 2.0 * (np - 1) / np
                        : op_name == "broadcast" ? 1.0
                                                 : static_cast<double>(np - 1) / np;
        if (r == 0) std::printf("%12zu %12zu %12.2f %10.3f %10.3f\n", count * es, count, us, algbw, algbw * factor);
        std::fflush(stdout);
      }
      comm.barrier().wait();
      store.set("exit/" + std::to_string(r), "1");
      for (int q = 0; q < np; ++q) store.get("exit/" + std::to_string(q), Deadline::in_seconds(30));
      _exit(0);
    } catch (const Error& e) {
      std::fprintf(stderr, "rank %d: %s\n", r, e.describe().c_str());
      _exit(1);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      _exit(1);
    }
  }
  int rc = 0;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) rc = 1;
  }
  std::filesystem::remove_all(dir);
  return rc;
}
