// The collectives over ranks-as-threads: every algorithm × world size 1..8 ×
// element counts (edge cases, primes, around the chunk size, one large) ×
// every type × every reduction × in place / out of place. Results are
// compared with a serial reference and across ranks byte for byte.
//
// The inputs are small integers (-4..4), so every sum is exact in every type
// and the reference does not depend on the order of reduction; avg divides
// the exact sum once (as braid does), so it matches bit for bit too. The
// order-dependent case (random floats) is covered by CrossRankIdentity below.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>

#include "comm/communicator.hpp"
#include "core/checksum.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "harness.hpp"

using namespace braid;
using namespace braid::comm;
using braid::comm::harness::run_ranks;

namespace {

constexpr size_t kChunkBytes = 1024;  // small, so that short vectors span several chunks
constexpr size_t kLarge = 1000003;
const DType kTypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64};
const ReduceOp kOps[] = {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min};

int input_value(uint32_t seed, int rank, size_t i) {
  uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(rank) + 1) * 0xC2B2AE3D27D4EB4Full ^ seed;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  return static_cast<int>(h % 9) - 4;
}

// Stores a small integer, or a final f32/f64 value, as type t at index i.
void store_int(DType t, void* p, size_t i, int v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = v; break;
    case DType::I64: static_cast<int64_t*>(p)[i] = v; break;
    default: break;
  }
}

// The expected bytes of a reduction over the ranks' values at index i.
void store_expected(DType t, ReduceOp op, int n, void* p, size_t i, const std::function<int(int)>& value_at_rank) {
  int acc = value_at_rank(0);
  for (int r = 1; r < n; ++r) {
    int v = value_at_rank(r);
    acc = op == ReduceOp::Max ? std::max(acc, v) : op == ReduceOp::Min ? std::min(acc, v) : acc + v;
  }
  const bool avg = op == ReduceOp::Avg;
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = avg ? static_cast<float>(acc) / static_cast<float>(n) : static_cast<float>(acc); break;
    case DType::F64: static_cast<double*>(p)[i] = avg ? static_cast<double>(acc) / n : acc; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(avg ? static_cast<float>(acc) / static_cast<float>(n) : static_cast<float>(acc)); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(avg ? static_cast<float>(acc) / static_cast<float>(n) : static_cast<float>(acc)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = avg ? acc / n : acc; break;
    case DType::I64: static_cast<int64_t*>(p)[i] = avg ? acc / n : acc; break;
    default: break;
  }
}

struct Case {
  size_t count;
  DType type;
  ReduceOp op;
  bool in_place;
  uint32_t seed;
};

std::string case_name(const Case& c) {
  return fmt::format("count={} type={} op={} {}", c.count, dtype_name(c.type), reduce_op_name(c.op),
                     c.in_place ? "in-place" : "out-of-place");
}

// Counts for a type: the fixed edge cases, around the chunk, and around n chunks.
std::vector<size_t> counts_for(DType t, int n) {
  const size_t chunk = kChunkBytes / dtype_size(t);
  std::vector<size_t> c = {0, 1, 2, 3, 5, 7, 8, 9, 13, 16, 24, 32, chunk - 1, chunk, chunk + 1,
                           static_cast<size_t>(n) * chunk + 1};
  return c;
}

// Full cross product for the small counts; the large count for a few
// (type, op, mode) combinations that together touch every code path kind.
std::vector<Case> make_cases(int n, bool reducing, bool per_rank_count) {
  std::vector<Case> cases;
  uint32_t seed = 1;
  for (DType t : kTypes)
    for (size_t count : counts_for(t, n))
      for (ReduceOp op : kOps) {
        if (!reducing && op != ReduceOp::Sum) continue;
        for (bool in_place : {false, true}) cases.push_back({count, t, op, in_place, seed++});
      }
  // For reduce-scatter and all-gather the count is per rank: keep the whole
  // vector near kLarge elements so that n = 8 does not move 8x more.
  const size_t large = per_rank_count ? kLarge / static_cast<size_t>(n) : kLarge;
  if (reducing) {
    cases.push_back({large, DType::F32, ReduceOp::Sum, false, seed++});
    cases.push_back({large, DType::BF16, ReduceOp::Avg, true, seed++});
    cases.push_back({large, DType::I64, ReduceOp::Max, true, seed++});
  } else {
    cases.push_back({large, DType::F32, ReduceOp::Sum, false, seed++});
    cases.push_back({large, DType::F16, ReduceOp::Sum, true, seed++});
  }
  return cases;
}

enum class Kind { AllReduce, ReduceScatter, AllGather, Broadcast };

struct SweepParam {
  Kind kind;
  Algo algo;
  int world;
  int per_host;  // > 0: fake hosts of this many ranks
};

std::string param_name(const ::testing::TestParamInfo<SweepParam>& info) {
  const char* k = info.param.kind == Kind::AllReduce       ? "allreduce"
                  : info.param.kind == Kind::ReduceScatter ? "reducescatter"
                  : info.param.kind == Kind::AllGather     ? "allgather"
                                                           : "broadcast";
  std::string s = fmt::format("{}_{}_n{}", k, algo_name(info.param.algo), info.param.world);
  if (info.param.per_host) s += fmt::format("_hosts{}", info.param.per_host);
  return s;
}

class Sweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(Sweep, MatchesSerialReferenceOnEveryRank) {
  const SweepParam P = GetParam();
  const int n = P.world;
  const bool reducing = P.kind == Kind::AllReduce || P.kind == Kind::ReduceScatter;
  const bool per_rank = P.kind == Kind::ReduceScatter || P.kind == Kind::AllGather;
  const std::vector<Case> cases = make_cases(n, reducing, per_rank);
  CommOptions opt;
  opt.chunk_bytes = kChunkBytes;
  opt.timeout_s = 60;
  CollectiveOptions co;
  co.algo = P.algo;

  // hashes[case][rank] of the outputs that must agree across ranks
  std::vector<std::vector<uint64_t>> hashes(cases.size(), std::vector<uint64_t>(static_cast<size_t>(n)));
  std::mutex fail_mu;
  std::vector<std::string> failures;
  auto report = [&](int rank, const Case& c, const std::string& what) {
    std::lock_guard<std::mutex> lock(fail_mu);
    if (failures.size() < 8) failures.push_back(fmt::format("rank {} {}: {}", rank, case_name(c), what));
  };

  auto errors = run_ranks(
      n, opt,
      [&](Communicator& comm) {
        const int r = comm.rank();
        std::vector<char> a, b, expect;
        for (size_t ci = 0; ci < cases.size(); ++ci) {
          const Case& c = cases[ci];
          const size_t es = dtype_size(c.type);
          const size_t N = static_cast<size_t>(n);
          // Buffers sized for the largest view of this op.
          const size_t in_elems = P.kind == Kind::ReduceScatter ? N * c.count : c.count;
          const size_t out_elems = P.kind == Kind::AllGather ? N * c.count : c.count;
          a.assign(std::max<size_t>(1, std::max(in_elems, out_elems) * es), 0);
          b.assign(std::max<size_t>(1, out_elems * es), 0x5a);
          void* in = a.data();
          void* out = c.in_place ? a.data() : b.data();
          const bool large = c.count >= kLarge / 8;
          switch (P.kind) {
            case Kind::AllReduce:
              for (size_t i = 0; i < c.count; ++i) store_int(c.type, in, i, input_value(c.seed, r, i));
              comm.all_reduce(in, out, c.count, c.type, c.op, co).wait();
              break;
            case Kind::ReduceScatter:
              for (size_t i = 0; i < N * c.count; ++i) store_int(c.type, in, i, input_value(c.seed, r, i));
              if (c.in_place) out = a.data() + static_cast<size_t>(r) * c.count * es;
              comm.reduce_scatter(in, out, c.count, c.type, c.op, co).wait();
              break;
            case Kind::AllGather:
              if (c.in_place) {
                out = a.data();
                in = a.data() + static_cast<size_t>(r) * c.count * es;
              } else {
                out = b.data();
              }
              for (size_t i = 0; i < c.count; ++i) store_int(c.type, in, i, input_value(c.seed, r, i));
              comm.all_gather(in, out, c.count, c.type, co).wait();
              break;
            case Kind::Broadcast: {
              const int root = static_cast<int>(ci % N);
              out = a.data();
              for (size_t i = 0; i < c.count; ++i)
                store_int(c.type, out, i, input_value(c.seed, r, i) + (r == root ? 0 : 1));
              comm.broadcast(out, c.count, c.type, root, co).wait();
              break;
            }
          }
          // Check against the reference; for the large vector every rank
          // checks a strided share (the hashes below cover the rest).
          const size_t check_elems = P.kind == Kind::AllGather ? N * c.count : c.count;
          expect.assign(std::max<size_t>(1, check_elems * es), 0);
          size_t start = 0, stride = 1;
          if (large && P.kind != Kind::ReduceScatter) {
            start = static_cast<size_t>(r);
            stride = N;
          }
          size_t bad = 0, first_bad = 0;
          for (size_t i = start; i < check_elems; i += stride) {
            switch (P.kind) {
              case Kind::AllReduce:
                store_expected(c.type, c.op, n, expect.data(), i, [&](int rr) { return input_value(c.seed, rr, i); });
                break;
              case Kind::ReduceScatter: {
                size_t j = static_cast<size_t>(r) * c.count + i;
                store_expected(c.type, c.op, n, expect.data(), i, [&](int rr) { return input_value(c.seed, rr, j); });
                break;
              }
              case Kind::AllGather:
                store_int(c.type, expect.data(), i,
                          input_value(c.seed, static_cast<int>(i / c.count), i % c.count));
                break;
              case Kind::Broadcast:
                store_int(c.type, expect.data(), i, input_value(c.seed, static_cast<int>(ci % N), i));
                break;
            }
            if (std::memcmp(expect.data() + i * es, static_cast<char*>(out) + i * es, es) != 0) {
              if (!bad) first_bad = i;
              ++bad;
            }
          }
          if (bad) report(r, c, fmt::format("{} wrong elements, first at {}", bad, first_bad));
          if (P.kind != Kind::ReduceScatter)
            hashes[ci][static_cast<size_t>(r)] = xxh3_64(out, check_elems * es);
        }
      },
      P.per_host ? harness::hosts_of(n, P.per_host) : std::vector<std::string>{});

  for (int r = 0; r < n; ++r)
    EXPECT_FALSE(errors[static_cast<size_t>(r)]) << "rank " << r << ": " << harness::describe(errors[static_cast<size_t>(r)]);
  for (const auto& f : failures) ADD_FAILURE() << f;
  if (P.kind != Kind::ReduceScatter) {
    for (size_t ci = 0; ci < cases.size(); ++ci)
      for (int r = 1; r < n; ++r)
        EXPECT_EQ(hashes[ci][0], hashes[ci][static_cast<size_t>(r)])
            << "rank " << r << " differs from rank 0 in " << case_name(cases[ci]);
  }
}

std::vector<SweepParam> sweep_params() {
  std::vector<SweepParam> p;
  for (int n = 1; n <= 8; ++n) {
    for (Algo a : {Algo::Ring, Algo::Rhd, Algo::Tree}) p.push_back({Kind::AllReduce, a, n, 0});
    for (Algo a : {Algo::Ring, Algo::Rhd}) p.push_back({Kind::ReduceScatter, a, n, 0});
    for (Algo a : {Algo::Ring, Algo::Rhd}) p.push_back({Kind::AllGather, a, n, 0});
    for (Algo a : {Algo::Ring, Algo::Tree}) p.push_back({Kind::Broadcast, a, n, 0});
  }
  // Hierarchical over fake hosts: 2x2, 3x2, 2x3, 2x4, 4x2; and a layout it
  // must decline (uneven hosts) which falls back to the flat algorithm.
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 4, 2});
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 6, 2});
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 6, 3});
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 8, 4});
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 8, 2});
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 5, 2});
  p.push_back({Kind::AllReduce, Algo::Hierarchical, 3, 0});
  // Auto on one and on several hosts.
  p.push_back({Kind::AllReduce, Algo::Auto, 4, 0});
  p.push_back({Kind::AllReduce, Algo::Auto, 8, 2});
  return p;
}

INSTANTIATE_TEST_SUITE_P(Comm, Sweep, ::testing::ValuesIn(sweep_params()), param_name);

}  // namespace
