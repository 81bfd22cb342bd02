#pragma once
// Shared by the baseline benchmark programs (Open MPI, Gloo) and braid's own
// comm benchmark worker, so that all three fill, time, check and report in
// exactly the same way. Header-only and free of braid dependencies: the
// baselines link only their own library.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace braid::benchcommon {

// Command line shared by all implementations.
struct Args {
  std::string op = "allreduce";  // allreduce | reduce_scatter | all_gather | broadcast
  std::string dtype = "f32";
  std::string algo = "auto";
  std::string transport = "shm";
  std::vector<uint64_t> sizes;  // bytes of the per-rank buffer ("count" in nccl-tests terms)
  std::vector<uint64_t> iters;  // timed iterations per size
  std::string store;            // gloo: FileStore directory
  std::string iface = "127.0.0.1";
};

inline std::vector<uint64_t> parse_list(const char* s) {
  std::vector<uint64_t> v;
  while (*s) {
    char* end;
    v.push_back(std::strtoull(s, &end, 10));
    s = *end == ',' ? end + 1 : end;
    if (end == s && *s) break;
  }
  return v;
}

inline Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--op") a.op = v;
    else if (k == "--dtype") a.dtype = v;
    else if (k == "--algo") a.algo = v;
    else if (k == "--transport") a.transport = v;
    else if (k == "--sizes") a.sizes = parse_list(v);
    else if (k == "--iters") a.iters = parse_list(v);
    else if (k == "--store") a.store = v;
    else if (k == "--iface") a.iface = v;
    else {
      std::fprintf(stderr, "unknown argument %s\n", k.c_str());
      std::exit(2);
    }
  }
  if (a.sizes.size() != a.iters.size()) {
    std::fprintf(stderr, "--sizes and --iters must have the same length\n");
    std::exit(2);
  }
  return a;
}

// nccl-tests' bus-bandwidth factors.
inline double bus_factor(const std::string& op, int n) {
  if (n <= 1) return 1.0;
  if (op == "allreduce") return 2.0 * (n - 1) / n;
  if (op == "reduce_scatter" || op == "all_gather") return static_cast<double>(n - 1) / n;
  return 1.0;
}

// Elements per rank-buffer for a size in bytes. For reduce_scatter and
// all_gather the size names the larger (gathered / scattered) buffer, as in
// nccl-tests, so the count is divided by the world size.
inline uint64_t elements(const std::string& op, uint64_t bytes, size_t esize, int n) {
  uint64_t c = bytes / esize;
  if (op == "reduce_scatter" || op == "all_gather") c /= static_cast<uint64_t>(n);
  return c;
}

// Deterministic input: small integers, so sums are exact in every float type.
inline double input_value(int rank, uint64_t i) { return static_cast<double>((rank + 1) * ((i % 7) + 1)); }

// Expected output element i (index into the output buffer of `rank`).
inline double expected_value(const std::string& op, int rank, int n, uint64_t i, uint64_t count) {
  double tri = n * (n + 1) / 2.0;
  if (op == "allreduce") return tri * ((i % 7) + 1);
  if (op == "reduce_scatter") return tri * (((static_cast<uint64_t>(rank) * count + i) % 7) + 1);
  if (op == "all_gather") {
    uint64_t src = i / count;
    return input_value(static_cast<int>(src), i % count);
  }
  if (op == "broadcast") return input_value(0, i);
  return 0;
}

inline void print_row(const char* impl, const Args& a, int n, uint64_t bytes, double seconds,
                      uint64_t wrong, const std::string& algo) {
  double algbw = seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0;
  std::printf(
      "{\"impl\": \"%s\", \"op\": \"%s\", \"transport\": \"%s\", \"algo\": \"%s\", \"np\": %d, "
      "\"bytes\": %llu, \"time_us\": %.3f, \"algbw_gbps\": %.4f, \"busbw_gbps\": %.4f, \"wrong\": %llu}\n",
      impl, a.op.c_str(), a.transport.c_str(), algo.c_str(), n, static_cast<unsigned long long>(bytes),
      seconds * 1e6, algbw, algbw * bus_factor(a.op, n), static_cast<unsigned long long>(wrong));
  std::fflush(stdout);
}

}  // namespace braid::benchcommon
