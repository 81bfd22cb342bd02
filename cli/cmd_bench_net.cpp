// braid bench net: point-to-point speed of the transports between two ranks
// (forked processes on this host, or in two network namespaces made by
// scripts/netns-hosts). Four measurements per size:
//   pingpong  half the round trip of one message (latency)
//   stream    one direction, a window of messages in flight (bandwidth)
//   exchange  both directions at once, as in one step of a ring all-reduce
//   reduce    exchange whose receive folds f32 sums into the destination
//             (irecv_reduce), the inner step of an all-reduce
//   allreduce2  the message pattern of a 2-rank ring all-reduce of SIZE
//             bytes, as comm/ runs it: chunks of --chunk bytes, --window
//             receives posted ahead and sends outstanding (reduce-scatter
//             with irecv_reduce, then all-gather); GB/s is its busbw
#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "core/bytes.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/file_store.hpp"
#include "net/mesh.hpp"

namespace braid::cli {
namespace {

struct NetBenchOptions {
  std::string transport = "both";
  std::string sizes = "8,64,1K,16K,256K,1M,4M,16M,64M";
  std::string tests = "pingpong,stream,exchange,reduce,allreduce2";
  int streams = 1;
  double seconds = 0.5;  // per measurement
  bool json = false;
  std::string netns;     // "braid-h0,braid-h1": run the two ranks in these namespaces
  std::string addrs;     // bind addresses for the two ranks (with --netns)
  std::string faults;
  std::string ring = "1M";
  std::string socket_buffer = "4M";
  std::string chunk = "512K";
  int window = 4;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t c = s.find(',', start);
    out.push_back(s.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  return out;
}

void add_f32(void* dst, const void* local, const void* in, size_t n) {
  auto* d = static_cast<float*>(dst);
  auto* l = static_cast<const float*>(local);
  auto* x = static_cast<const float*>(in);
  for (size_t i = 0; i < n / 4; ++i) d[i] = l[i] + x[i];
}

Deadline long_deadline() { return Deadline::in_seconds(120); }

// The messages of a 2-rank ring all-reduce: rank r owns half r. Reduce-scatter
// sends our copy of the other half and folds the peer's copy of ours into
// out; all-gather sends our finished half and receives the other. Message m
// (of 2C) is chunk m % C of its phase; tags are distinct per message.
void allreduce2(net::Pair& p, int rank, const char* in, char* out, size_t n, size_t chunk, int window,
                uint64_t tag_base) {
  const size_t half = n / 2 / 4 * 4;
  const size_t mine = rank == 0 ? 0 : half, theirs = rank == 0 ? half : 0;
  const size_t len_mine = rank == 0 ? half : n - half, len_theirs = n - len_mine;
  chunk = std::max<size_t>(chunk / 4 * 4, 4);
  const size_t C = std::max<size_t>((std::max(len_mine, len_theirs) + chunk - 1) / chunk, 1);
  const size_t M = 2 * C;
  net::Combiner comb;
  comb.elem_size = 4;
  comb.fn = add_f32;
  auto piece = [&](size_t base, size_t len, size_t k, size_t* at) {
    size_t lo = std::min(len, k * chunk), hi = std::min(len, (k + 1) * chunk);
    *at = base + lo;
    return hi - lo;
  };
  std::vector<net::RequestPtr> recvs(M), sends(M);
  size_t posted_r = 0, done_r = 0, posted_s = 0, done_s = 0;
  const size_t W = static_cast<size_t>(std::max(window, 1));
  uint64_t tag = tag_base << 24;
  while (done_r < M || done_s < M) {
    while (posted_r < M && posted_r < done_r + W) {
      size_t m = posted_r++, at;
      if (m < C) {  // the peer's copy of our half, folded into out
        size_t len = piece(mine, len_mine, m, &at);
        recvs[m] = p.irecv_reduce(out + at, in + at, len, tag + m, comb);
      } else {  // the peer's finished half
        size_t len = piece(theirs, len_theirs, m - C, &at);
        recvs[m] = p.irecv(out + at, len, tag + m);
      }
    }
    while (posted_s < M && posted_s < done_s + W && (posted_s < C || posted_s - C < done_r)) {
      size_t m = posted_s++, at;
      if (m < C) {
        size_t len = piece(theirs, len_theirs, m, &at);
        sends[m] = p.isend(in + at, len, tag + m);
      } else {
        size_t len = piece(mine, len_mine, m - C, &at);
        sends[m] = p.isend(out + at, len, tag + m);
      }
    }
    while (done_s < posted_s && sends[done_s]->done()) sends[done_s++]->wait(long_deadline());
    if (done_r < posted_r) {
      recvs[done_r]->wait(long_deadline());
      recvs[done_r++].reset();
    } else if (done_s < posted_s) {
      sends[done_s++]->wait(long_deadline());
    }
  }
}

// One measurement, reported by rank 0.
struct Row {
  std::string test;
  size_t bytes;
  double time_us;  // per iteration (pingpong: one way)
  double gbps;     // GB/s of payload moved per direction
};

int run_rank(int rank, const NetBenchOptions& o, const std::string& store_dir, const std::string& tname) {
  if (!o.netns.empty()) {
    auto names = split(o.netns);
    if (names.size() != 2) throw ConfigError("--netns needs two namespace names, e.g. braid-h0,braid-h1");
    std::string path = "/var/run/netns/" + names[static_cast<size_t>(rank)];
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
      throw ConfigError(fmt::format("cannot enter network namespace {}", path),
                        "create them with `scripts/netns-hosts up 2` (needs root)");
    ::close(fd);
  }
  net::FileStore store(store_dir);
  net::MeshOptions mo;
  mo.rank = rank;
  mo.size = 2;
  mo.group = "bench-" + tname;
  mo.transport = net::parse_transport(tname);
  mo.streams_per_peer = o.streams;
  mo.shm_ring_bytes = parse_bytes(o.ring);
  mo.socket_buffer_bytes = parse_bytes(o.socket_buffer);
  mo.host_id = o.netns.empty() ? "bench-host" : fmt::format("bench-host-{}", rank);
  if (!o.faults.empty()) mo.faults = net::FaultSpec::parse(o.faults);
  if (!o.netns.empty()) {
    auto a = split(o.addrs);
    if (a.size() == 2) mo.bind_addr = a[static_cast<size_t>(rank)];
    if (mo.secret.empty() && !std::getenv("BRAID_JOB_SECRET")) mo.secret = "braid-bench-netns";
  }
  auto mesh = net::connect_mesh(store, mo);
  net::Pair& p = mesh->pair(1 - rank);
  std::vector<Row> rows;
  uint64_t tag = 1;
  const size_t chunk = parse_bytes(o.chunk);
  for (uint64_t size : parse_byte_sizes(o.sizes)) {
    size_t n = (size + 3) / 4 * 4;
    std::vector<char> out(std::max<size_t>(n, 4), 1), in(std::max<size_t>(n, 4), 0), acc(std::max<size_t>(n, 4));
    for (const std::string& test : split(o.tests)) {
      // Calibrate the iteration count on rank 0 and share it, so both agree.
      auto one = [&](uint64_t t) {
        if (test == "pingpong") {
          if (rank == 0) {
            auto r = p.irecv(in.data(), n, t);
            p.isend(out.data(), n, t)->wait(long_deadline());
            r->wait(long_deadline());
          } else {
            p.irecv(in.data(), n, t)->wait(long_deadline());
            p.isend(out.data(), n, t)->wait(long_deadline());
          }
        } else if (test == "stream") {
          if (rank == 0) {
            p.isend(out.data(), n, t)->wait(long_deadline());
          } else {
            p.irecv(in.data(), n, t)->wait(long_deadline());
          }
        } else if (test == "exchange") {
          auto r = p.irecv(in.data(), n, t);
          auto s = p.isend(out.data(), n, t);
          s->wait(long_deadline());
          r->wait(long_deadline());
        } else if (test == "reduce") {
          net::Combiner c;
          c.elem_size = 4;
          c.fn = add_f32;
          auto r = p.irecv_reduce(acc.data(), in.data(), n, t, c);
          auto s = p.isend(out.data(), n, t);
          s->wait(long_deadline());
          r->wait(long_deadline());
        } else if (test == "allreduce2") {
          allreduce2(p, rank, out.data(), acc.data(), n, chunk, o.window, t);
        } else {
          throw ConfigError("unknown test '" + test + "'", "use pingpong, stream, exchange, reduce, allreduce2");
        }
      };
      // Both ranks derive the same count from the size (no calibration
      // handshake): about o.seconds at a few GB/s, at least 8 iterations.
      for (int i = 0; i < 3; ++i) one(tag++);
      double budget = o.seconds * 1.0e9;
      uint64_t iters = static_cast<uint64_t>(budget / static_cast<double>(std::max<size_t>(n, 16 << 10)));
      iters = std::clamp<uint64_t>(iters, 8, 50'000);
      Stopwatch sw;
      for (uint64_t i = 0; i < iters; ++i) one(tag++);
      double t = sw.seconds();
      if (rank == 0) {
        double per = t / static_cast<double>(iters);
        Row row{test, n, per * 1e6, 0};
        if (test == "pingpong") row.time_us = per * 1e6 / 2;
        row.gbps = static_cast<double>(n) / (test == "pingpong" ? per / 2 : per) / 1e9;
        rows.push_back(row);
        if (o.json) {
          std::printf("{\"impl\": \"braid\", \"bench\": \"net\", \"transport\": \"%s\", \"streams\": %d, \"test\": \"%s\", "
                      "\"bytes\": %zu, \"time_us\": %.3f, \"gbps\": %.4f}\n",
                      tname.c_str(), o.streams, test.c_str(), n, row.time_us, row.gbps);
        } else {
          std::printf("%-5s %-9s %12s %12.2f %10.3f\n", tname.c_str(), test.c_str(), human_bytes(static_cast<double>(n)).c_str(),
                      row.time_us, row.gbps);
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto o = std::make_shared<NetBenchOptions>();
  auto* cmd = app.add_subcommand("net", "Point-to-point latency and bandwidth of the transports (2 ranks)");
  cmd->add_option("--transport", o->transport, "tcp, shm or both")->capture_default_str();
  cmd->add_option("--sizes", o->sizes, "message sizes, e.g. 8,1K,64M or 8:64M")->capture_default_str();
  cmd->add_option("--tests", o->tests, "pingpong,stream,exchange,reduce,allreduce2")->capture_default_str();
  cmd->add_option("--streams", o->streams, "TCP connections per peer")->capture_default_str();
  cmd->add_option("--seconds", o->seconds, "time per measurement")->capture_default_str();
  cmd->add_option("--ring", o->ring, "shared-memory ring bytes per direction")->capture_default_str();
  cmd->add_option("--chunk", o->chunk, "allreduce2: chunk bytes")->capture_default_str();
  cmd->add_option("--window", o->window, "allreduce2: messages in flight each way")->capture_default_str();
  cmd->add_option("--socket-buffer", o->socket_buffer, "TCP socket buffer bytes (0: kernel autotuning)")
      ->capture_default_str();
  cmd->add_option("--faults", o->faults, "fault injection, e.g. latency=1ms");
  cmd->add_option("--netns", o->netns, "run the two ranks in these network namespaces (scripts/netns-hosts)");
  cmd->add_option("--addrs", o->addrs, "bind addresses of the two ranks with --netns, e.g. 10.77.0.1,10.77.0.2");
  cmd->add_flag("--json", o->json, "one JSON object per row");
  return [o] {
    std::vector<std::string> transports;
    if (o->transport == "both") {
      transports = {"shm", "tcp"};
      if (!o->netns.empty()) transports = {"tcp"};
    } else {
      transports = {o->transport};
    }
    if (!o->json) {
      std::printf("# braid bench net: 2 ranks, %s\n", o->netns.empty() ? "processes on this host" : o->netns.c_str());
      std::printf("%-5s %-9s %12s %12s %10s\n", "tport", "test", "size", "time(us)", "GB/s");
    }
    for (const std::string& t : transports) {
      std::string dir = fmt::format("{}/braid-bench-net-{}-{}", std::filesystem::temp_directory_path().string(),
                                    getpid(), t);
      std::filesystem::remove_all(dir);
      std::fflush(stdout);
      std::vector<pid_t> kids;
      for (int r = 0; r < 2; ++r) {
        pid_t pid = fork();
        if (pid == 0) {
          int rc = 1;
          try {
            rc = run_rank(r, *o, dir, t);
          } catch (const Error& e) {
            std::fprintf(stderr, "braid bench net: rank %d: %s\n", r, e.describe().c_str());
          } catch (const std::exception& e) {
            std::fprintf(stderr, "braid bench net: rank %d: %s\n", r, e.what());
          }
          std::fflush(stdout);
          _exit(rc);
        }
        kids.push_back(pid);
      }
      int bad = 0;
      for (pid_t k : kids) {
        int st = 0;
        waitpid(k, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
      }
      std::filesystem::remove_all(dir);
      if (bad) return 1;
    }
    return 0;
  };
}

BRAID_BENCH("net", 20, setup);

}  // namespace
}  // namespace braid::cli
