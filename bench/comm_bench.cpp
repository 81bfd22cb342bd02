#include "bench/comm_bench.hpp"

#include <fmt/format.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/baseline/common.hpp"
#include "comm/bootstrap.hpp"
#include "comm/communicator.hpp"
#include "comm/tuning.hpp"
#include "core/bytes.hpp"
#include "core/clock.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/process_group.hpp"
#include "net/tcp_store.hpp"

namespace braid::bench {
namespace bc = braid::benchcommon;

namespace {

std::string self_exe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw Error("cannot find the braid executable (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

std::string join(const std::vector<uint64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// Writes element i of a buffer of type t from a small integer value.
void put(DType t, void* base, uint64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(base)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v); break;
  }
}

double get(DType t, const void* base, uint64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F64: return static_cast<const double*>(base)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::U8: return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

CommRow parse_row(const std::string& line) {
  auto j = nlohmann::json::parse(line);
  CommRow r;
  r.impl = j.at("impl");
  r.op = j.at("op");
  r.transport = j.at("transport");
  r.algo = j.at("algo");
  r.np = j.at("np");
  r.bytes = j.at("bytes");
  r.time_us = j.at("time_us");
  r.algbw_gbps = j.at("algbw_gbps");
  r.busbw_gbps = j.at("busbw_gbps");
  r.wrong = j.at("wrong");
  return r;
}

// Runs a group of processes, turning JSON lines into rows and passing the rest
// to stderr; throws naming the failed process and its last output lines.
std::vector<CommRow> run_processes(const std::vector<ProcessSpec>& specs, const std::string& what,
                                   bool quiet) {
  std::vector<CommRow> rows;
  std::map<int, std::vector<std::string>> tail;
  ProcessGroup group([&](int i, std::string_view line) {
    if (!line.empty() && line.front() == '{') {
      rows.push_back(parse_row(std::string(line)));
      return;
    }
    auto& t = tail[i];
    t.emplace_back(line);
    if (t.size() > 20) t.erase(t.begin());
    if (!quiet) fmt::print(stderr, "[{} {}] {}\n", what, specs[i].label, line);
  });
  for (auto& s : specs) group.spawn(s);
  std::string failed;
  Deadline give_up = Deadline::never();
  while (group.running_count() > 0 || !failed.empty()) {
    auto e = group.poll(100);
    if (give_up.expired()) {
      group.terminate_all(2.0);
      break;
    }
    if (!e) continue;
    if (!e->ok() && failed.empty()) {
      failed = fmt::format("{} process {} {}", what, specs[e->index].label, e->describe());
      for (auto& l : tail[e->index]) failed += "\n    " + l;
      give_up = Deadline::in_seconds(5);  // the others will fail or finish soon
    }
    if (group.running_count() == 0) break;
  }
  if (!failed.empty()) throw Error(failed, "run the same command with fewer sizes to narrow it down");
  return rows;
}

std::vector<uint64_t> usable_sizes(const CommBenchOptions& o) {
  size_t es = dtype_size(parse_dtype(o.dtype));
  uint64_t unit = es * ((o.op == "reduce_scatter" || o.op == "all_gather") ? o.np : 1);
  std::vector<uint64_t> out;
  for (uint64_t s : parse_byte_sizes(o.sizes)) {
    uint64_t r = s / unit * unit;
    if (r == 0) r = unit;
    if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
  }
  return out;
}

// While alive, the calling thread is inside network namespace `name` (from
// `ip netns`), so sockets it creates belong there; "" does nothing.
class NetnsScope {
 public:
  explicit NetnsScope(const std::string& name) {
    if (name.empty()) return;
    old_ = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    int fd = open(("/var/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
    if (old_ < 0 || fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
      if (fd >= 0) close(fd);
      throw Error("cannot enter network namespace '" + name + "'",
                  "create the test hosts first: scripts/netns-hosts up 2 (needs root)");
    }
    close(fd);
  }
  ~NetnsScope() {
    if (old_ >= 0) {
      setns(old_, CLONE_NEWNET);
      close(old_);
    }
  }
  NetnsScope(const NetnsScope&) = delete;
  NetnsScope& operator=(const NetnsScope&) = delete;

 private:
  int old_ = -1;
};

// The table the communicator uses: BRAID_TUNING_FILE or the built-in one.
comm::TuningTable world_tuning_table() {
  const char* f = std::getenv("BRAID_TUNING_FILE");
  return f && *f ? comm::TuningTable::load(f) : comm::TuningTable::builtin();
}

}  // namespace

uint64_t default_iters(uint64_t bytes) {
  uint64_t b = std::max<uint64_t>(bytes, 4096);
  return std::clamp<uint64_t>((1ull << 30) / b, 5, 20000);
}

int run_comm_bench_worker(const CommBenchOptions& o, const std::vector<uint64_t>& sizes,
                          const std::vector<uint64_t>& iters) {
  comm::InitOptions io;
  io.transport = o.transport;
  io.streams_per_peer = o.streams;
  auto world = comm::init_world(io);
  comm::Communicator& c = *world.comm;
  int rank = c.rank(), n = c.size();
  DType t = parse_dtype(o.dtype);
  size_t es = dtype_size(t);
  comm::CollectiveOptions copt;
  copt.algo = comm::parse_algo(o.algo);
  bc::Args a;
  a.op = o.op;
  a.transport = o.transport;
  // Name the algorithm that actually ran: for auto, what the tuning table picks.
  const auto& hosts = c.mesh().host_ids();
  bool multi = std::any_of(hosts.begin(), hosts.end(), [&](auto& h) { return h != hosts[0]; });
  comm::TuningTable table = world_tuning_table();
  auto algo_for = [&](uint64_t bytes) -> std::string {
    if (copt.algo != comm::Algo::Auto) return comm::algo_name(copt.algo);
    return comm::algo_name(table.pick(comm::parse_op_kind(o.op), bytes, n,
                                      multi ? comm::Topology::MultiHost : comm::Topology::SingleHost));
  };
  for (size_t s = 0; s < sizes.size(); ++s) {
    uint64_t count = bc::elements(o.op, sizes[s], es, n);
    uint64_t in_count = o.op == "reduce_scatter" ? count * n : count;
    uint64_t out_count = o.op == "all_gather" ? count * n : count;
    std::vector<uint64_t> inbuf((in_count * es + 7) / 8 + 1), outbuf((out_count * es + 7) / 8 + 1);
    void* in = inbuf.data();
    void* out = outbuf.data();
    auto fill = [&] {
      for (uint64_t i = 0; i < in_count; ++i) put(t, in, i, bc::input_value(rank, i));
      if (o.op == "broadcast" && rank != 0) std::fill(inbuf.begin(), inbuf.end(), 0);
    };
    auto once = [&] {
      if (o.op == "allreduce") c.all_reduce(in, out, count, t, comm::ReduceOp::Sum, copt).wait();
      else if (o.op == "reduce_scatter") c.reduce_scatter(in, out, count, t, comm::ReduceOp::Sum, copt).wait();
      else if (o.op == "all_gather") c.all_gather(in, out, count, t, copt).wait();
      else c.broadcast(in, count, t, 0, copt).wait();
    };
    fill();
    uint64_t warm = iters[s] / 5 + 2;
    for (uint64_t i = 0; i < warm; ++i) once();
    c.barrier().wait();
    Stopwatch sw;
    for (uint64_t i = 0; i < iters[s]; ++i) once();
    double el = sw.seconds() / static_cast<double>(iters[s]);
    c.all_reduce(&el, &el, 1, DType::F64, comm::ReduceOp::Max).wait();
    fill();
    std::fill(outbuf.begin(), outbuf.end(), 0);
    once();
    const void* res = o.op == "broadcast" ? in : out;
    uint64_t res_count = o.op == "broadcast" ? count : out_count;
    int64_t wrong = 0;
    for (uint64_t i = 0; i < res_count; ++i)
      if (get(t, res, i) != bc::expected_value(o.op, rank, n, i, count)) ++wrong;
    c.all_reduce(&wrong, &wrong, 1, DType::I64, comm::ReduceOp::Sum).wait();
    if (rank == 0) bc::print_row("braid", a, n, sizes[s], el, static_cast<uint64_t>(wrong), algo_for(sizes[s]));
  }
  return 0;
}

std::vector<CommRow> run_comm_bench(const CommBenchOptions& o) {
  if (o.np < 1) throw ConfigError("--np must be at least 1");
  for (auto& op : {o.op})
    if (op != "allreduce" && op != "reduce_scatter" && op != "all_gather" && op != "broadcast")
      throw ConfigError("unknown --op '" + op + "'", "use allreduce, reduce_scatter, all_gather or broadcast");
  if (o.transport != "shm" && o.transport != "tcp")
    throw ConfigError("unknown --transport '" + o.transport + "'", "use shm or tcp");
  comm::parse_algo(o.algo);  // validates
  if (!o.netns.empty() && static_cast<int>(o.netns.size()) != o.np)
    throw ConfigError(fmt::format("--netns names {} namespaces for {} ranks", o.netns.size(), o.np),
                      "name one namespace per rank");
  auto sizes = usable_sizes(o);
  std::vector<uint64_t> iters;
  for (auto s : sizes) iters.push_back(o.iters > 0 ? static_cast<uint64_t>(o.iters) : default_iters(s));
  std::string exe = self_exe();
  std::string dir = std::filesystem::path(exe).parent_path();
  std::vector<std::string> common = {"--op", o.op, "--dtype", o.dtype, "--sizes", join(sizes),
                                     "--iters", join(iters), "--transport", o.transport};
  std::vector<CommRow> rows;

  // Ranks in network namespaces cannot reach loopback here: the store listens
  // inside the first rank's namespace, and the job gets a secret (braid only
  // listens beyond loopback with one).
  std::string secret = comm::job_secret();
  if (!o.netns.empty() && secret.empty()) secret = fmt::format("bench-{}-{}", getpid(), now_ns());
  auto run_braid = [&](const std::string& algo) {
    std::string host = o.bind_addr.empty() ? "127.0.0.1" : o.bind_addr;
    if (!o.netns.empty() && o.bind_addr.empty())
      throw ConfigError("--netns needs --store-addr: the address of the first namespace's host",
                        "with scripts/netns-hosts that is 10.77.0.1");
    std::unique_ptr<net::TcpStoreServer> server_ptr;
    {
      NetnsScope scope(o.netns.empty() ? "" : o.netns[0]);
      server_ptr = std::make_unique<net::TcpStoreServer>(host, 0, secret);
    }
    net::TcpStoreServer& server = *server_ptr;
    std::vector<ProcessSpec> specs;
    for (int r = 0; r < o.np; ++r) {
      ProcessSpec p;
      if (!o.netns.empty()) p.argv = {"ip", "netns", "exec", o.netns[r]};
      for (auto& x : std::vector<std::string>{exe, "bench", "comm", "--worker", "--algo", algo,
                                              "--streams", std::to_string(o.streams)})
        p.argv.push_back(x);
      for (auto& x : common) p.argv.push_back(x);
      p.label = "r" + std::to_string(r);
      p.env = {{"BRAID_RANK", std::to_string(r)},
               {"BRAID_WORLD_SIZE", std::to_string(o.np)},
               {"BRAID_LOCAL_RANK", std::to_string(r)},
               {"BRAID_LOCAL_WORLD_SIZE", std::to_string(o.np)},
               {"BRAID_RENDEZVOUS", host + ":" + std::to_string(server.port())},
               {"BRAID_TRANSPORT", o.transport}};
      if (!o.netns.empty()) {
        p.env.push_back({"BRAID_HOST_ID", o.netns[r]});
        p.env.push_back({"BRAID_JOB_SECRET", secret});
      }
      specs.push_back(p);
    }
    auto r = run_processes(specs, "braid", o.quiet);
    rows.insert(rows.end(), r.begin(), r.end());
  };
  if (!o.tune_out.empty()) {
    // Measure every algorithm that implements the op and keep the fastest per size.
    auto kind = comm::parse_op_kind(o.op);
    bool multi = !o.netns.empty();
    for (auto a : {comm::Algo::Ring, comm::Algo::Rhd, comm::Algo::Tree, comm::Algo::Hierarchical}) {
      if (!comm::algo_supports(kind, a)) continue;
      if (a == comm::Algo::Hierarchical && !multi) continue;
      run_braid(comm::algo_name(a));
    }
    std::vector<comm::TuningMeasurement> ms;
    for (auto& r : rows) {
      comm::TuningMeasurement m;
      m.op = kind;
      m.topology = multi ? comm::Topology::MultiHost : comm::Topology::SingleHost;
      m.world = r.np;
      m.bytes = r.bytes;
      m.algo = comm::parse_algo(r.algo);
      m.time_us = r.time_us;
      ms.push_back(m);
    }
    comm::write_tuning_file(o.tune_out, ms);
    log::info("bench: wrote tuning table {} (use it with BRAID_TUNING_FILE={})", o.tune_out, o.tune_out);
  } else {
    run_braid(o.algo);
  }

  for (auto& peer : o.vs) {
    if (peer == "mpi") {
      std::string bin = dir + "/braid-bench-mpi";
      if (access(bin.c_str(), X_OK) != 0) {
        log::warn("bench: {} not found (Open MPI was missing at build time); skipping mpi", bin);
        continue;
      }
      ProcessSpec p;
      p.argv = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", std::to_string(o.np)};
      if (o.transport == "tcp") {
        for (auto& x : {"--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"}) p.argv.push_back(x);
      }
      p.argv.push_back(bin);
      for (auto& x : common) p.argv.push_back(x);
      p.label = "mpirun";
      auto r = run_processes({p}, "mpi", o.quiet);
      rows.insert(rows.end(), r.begin(), r.end());
    } else if (peer == "gloo") {
      std::string bin = dir + "/braid-bench-gloo";
      if (access(bin.c_str(), X_OK) != 0) {
        log::warn("bench: {} not found (Gloo was missing at build time); skipping gloo", bin);
        continue;
      }
      std::vector<std::string> algos = {"ring_chunked"};
      if (o.op == "allreduce") algos.push_back("halving_doubling");
      for (auto& ga : algos) {
        auto store = std::filesystem::temp_directory_path() /
                     fmt::format("braid-gloo-{}-{}", getpid(), now_ns());
        std::filesystem::create_directories(store);
        std::vector<ProcessSpec> specs;
        for (int r = 0; r < o.np; ++r) {
          ProcessSpec p;
          p.argv = {bin, "--algo", ga, "--store", store.string()};
          for (auto& x : common) p.argv.push_back(x);
          p.label = "r" + std::to_string(r);
          p.env = {{"BRAID_RANK", std::to_string(r)}, {"BRAID_WORLD_SIZE", std::to_string(o.np)}};
          specs.push_back(p);
        }
        auto r = run_processes(specs, "gloo", o.quiet);
        std::filesystem::remove_all(store);
        rows.insert(rows.end(), r.begin(), r.end());
      }
    } else {
      throw ConfigError("unknown --vs peer '" + peer + "'", "use mpi, gloo or mpi,gloo");
    }
  }
  return rows;
}

void print_comm_rows(const std::vector<CommRow>& rows, const CommBenchOptions& o) {
  if (o.json) {
    for (auto& r : rows) {
      nlohmann::ordered_json j = {{"impl", r.impl},       {"op", r.op},
                          {"transport", r.transport}, {"algo", r.algo},
                          {"np", r.np},           {"bytes", r.bytes},
                          {"time_us", r.time_us}, {"algbw_gbps", r.algbw_gbps},
                          {"busbw_gbps", r.busbw_gbps}, {"wrong", r.wrong}};
      fmt::print("{}\n", j.dump());
    }
    return;
  }
  fmt::print("# braid bench comm: {} {}, {} ranks, transport {}, algo {}\n", o.op, o.dtype, o.np,
             o.transport, o.algo);
  fmt::print("# busbw uses nccl-tests' factors; 'braid/x' is braid's busbw over that row's\n");
  fmt::print("{:>12} {:>11} {:>5} {:>6} {:>17} {:>11} {:>9} {:>9} {:>7} {:>8}\n", "size", "count", "type",
             "impl", "algo", "time(us)", "algbw", "busbw", "#wrong", "braid/x");
  fmt::print("{:>12} {:>11} {:>5} {:>6} {:>17} {:>11} {:>9} {:>9} {:>7} {:>8}\n", "(B)", "(elements)", "", "", "",
             "", "(GB/s)", "(GB/s)", "", "");
  std::vector<CommRow> sorted = rows;
  auto order = [](const std::string& impl) { return impl == "braid" ? 0 : impl == "mpi" ? 1 : 2; };
  std::stable_sort(sorted.begin(), sorted.end(), [&](auto& a, auto& b) {
    return a.bytes != b.bytes ? a.bytes < b.bytes : order(a.impl) < order(b.impl);
  });
  size_t es = dtype_size(parse_dtype(o.dtype));
  for (auto& r : sorted) {
    std::string ratio;
    if (r.impl != "braid") {
      for (auto& b : sorted)
        if (b.impl == "braid" && b.bytes == r.bytes && r.busbw_gbps > 0)
          ratio = fmt::format("{:.2f}x", b.busbw_gbps / r.busbw_gbps);
      if (r.bytes <= 4096 && r.time_us > 0)  // latency-bound: compare times instead
        for (auto& b : sorted)
          if (b.impl == "braid" && b.bytes == r.bytes && b.time_us > 0)
            ratio = fmt::format("{:.2f}x t", r.time_us / b.time_us);
    }
    fmt::print("{:>12} {:>11} {:>5} {:>6} {:>17} {:>11.2f} {:>9.3f} {:>9.3f} {:>7} {:>8}\n", r.bytes,
               r.bytes / es, o.dtype, r.impl, r.algo, r.time_us, r.algbw_gbps, r.busbw_gbps, r.wrong, ratio);
  }
  fmt::print("# 'Nx' = braid busbw / that busbw; for sizes <= 4 KiB 'Nx t' = that time / braid time (>1: braid faster)\n");
}

}  // namespace braid::bench
