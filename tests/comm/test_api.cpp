// The rest of the Communicator's contract: order-dependent float sums are
// bit-identical on every rank; asynchronous work through the executor;
// point-to-point; subgroups; argument checking; statistics.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "comm/communicator.hpp"
#include "core/checksum.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "harness.hpp"

using namespace braid;
using namespace braid::comm;
using braid::comm::harness::describe;
using braid::comm::harness::run_ranks;

namespace {

void expect_no_errors(const std::vector<std::exception_ptr>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_FALSE(errors[r]) << "rank " << r << ": " << describe(errors[r]);
}

// A uniform float in [-1, 1) from (seed, rank, i), cheap enough for references.
float random_value(uint32_t seed, int rank, size_t i) {
  uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(rank) + 7) * 0xC2B2AE3D27D4EB4Full ^ seed;
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 29;
  return static_cast<float>(static_cast<double>(h >> 40) / static_cast<double>(1ull << 23) - 1.0);
}

// Random floats make the result depend on the order of additions: every
// rank must still hold the same bytes, close to the exact sum.
TEST(CrossRank, RandomFloatSumsAreBitIdenticalOnEveryRank) {
  for (Algo algo : {Algo::Ring, Algo::Rhd, Algo::Tree, Algo::Hierarchical}) {
    for (int n : {2, 3, 4, 5, 7, 8}) {
      for (DType t : {DType::F32, DType::BF16, DType::F64}) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg}) {
          const size_t count = 3001;
          std::vector<uint64_t> hash(static_cast<size_t>(n));
          std::vector<double> max_err(static_cast<size_t>(n));
          CommOptions opt;
          opt.chunk_bytes = 2048;
          const int per_host = n % 2 == 0 ? 2 : 0;
          auto errors = run_ranks(
              n, opt,
              [&](Communicator& comm) {
                const int r = comm.rank();
                std::vector<char> buf(count * dtype_size(t));
                for (size_t i = 0; i < count; ++i) {
                  float v = random_value(11, r, i);
                  if (t == DType::F32) reinterpret_cast<float*>(buf.data())[i] = v;
                  else if (t == DType::F64) reinterpret_cast<double*>(buf.data())[i] = v;
                  else reinterpret_cast<uint16_t*>(buf.data())[i] = f32_to_bf16(v);
                }
                comm.all_reduce(buf.data(), buf.data(), count, t, op, {algo}).wait();
                hash[static_cast<size_t>(r)] = xxh3_64(buf.data(), buf.size());
                double worst = 0;
                for (size_t i = 0; i < count; ++i) {
                  double exact = 0;
                  for (int q = 0; q < n; ++q) {
                    float v = random_value(11, q, i);
                    exact += t == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : v;
                  }
                  if (op == ReduceOp::Avg) exact /= n;
                  double got = t == DType::F32   ? reinterpret_cast<float*>(buf.data())[i]
                               : t == DType::F64 ? reinterpret_cast<double*>(buf.data())[i]
                                                 : bf16_to_f32(reinterpret_cast<uint16_t*>(buf.data())[i]);
                  worst = std::max(worst, std::fabs(got - exact));
                }
                max_err[static_cast<size_t>(r)] = worst;
              },
              algo == Algo::Hierarchical && per_host ? harness::hosts_of(n, per_host) : std::vector<std::string>{});
          SCOPED_TRACE(fmt::format("{} n={} {} {}", algo_name(algo), n, dtype_name(t), reduce_op_name(op)));
          expect_no_errors(errors);
          for (int r = 1; r < n; ++r) EXPECT_EQ(hash[0], hash[static_cast<size_t>(r)]) << "rank " << r;
          // bf16 rounds once at the end: at most half an ulp of |x| <= 8 is 2^-5.
          const double tol = t == DType::BF16 ? 1.0 / 32 : t == DType::F32 ? 1e-5 : 1e-12;
          EXPECT_LE(max_err[0], tol);
        }
      }
    }
  }
}

TEST(Executor, QueuedWorkCompletesInIssueOrderWithTimings) {
  CommOptions opt;
  opt.inline_max_bytes = 0;  // everything through the executor thread
  auto errors = run_ranks(3, opt, [](Communicator& comm) {
    const int r = comm.rank();
    std::vector<std::vector<int64_t>> bufs;
    for (size_t k = 0; k < 6; ++k) bufs.emplace_back((k + 1) * 1000 + k, static_cast<int64_t>(r + 1));
    std::vector<Work> works;
    for (auto& b : bufs) works.push_back(comm.all_reduce(b.data(), b.data(), b.size(), DType::I64, ReduceOp::Sum));
    for (size_t k = works.size(); k-- > 0;) works[k].wait();  // out of order waiting is fine
    for (auto& b : bufs)
      for (int64_t x : b) ASSERT_EQ(x, 6);
    for (auto& w : works) {
      WorkTiming t = w.timing();
      EXPECT_GT(t.enqueued_ns, 0);
      EXPECT_LE(t.enqueued_ns, t.started_ns);
      EXPECT_LE(t.started_ns, t.finished_ns);
      EXPECT_TRUE(w.test());
    }
    // A small collective issued behind a queued large one still runs after it.
    std::vector<float> big(1 << 18, 1.0f), small(4, 2.0f);
    CommOptions unused;
    (void)unused;
    Work wb = comm.all_reduce(big.data(), big.data(), big.size(), DType::F32, ReduceOp::Sum);
    Work ws = comm.all_reduce(small.data(), small.data(), small.size(), DType::F32, ReduceOp::Max);
    ws.wait();
    wb.wait();
    EXPECT_EQ(big[12345], 3.0f);
    EXPECT_EQ(small[0], 2.0f);
  });
  expect_no_errors(errors);
}

TEST(Executor, InlineAndQueuedOperationsInterleaveInOrder) {
  CommOptions opt;
  opt.inline_max_bytes = 1024;
  auto errors = run_ranks(4, opt, [](Communicator& comm) {
    const int r = comm.rank();
    for (int iter = 0; iter < 20; ++iter) {
      std::vector<int32_t> big(10000 + iter, r), small(3, r);
      Work wb = comm.all_reduce(big.data(), big.data(), big.size(), DType::I32, ReduceOp::Max);
      Work ws = comm.all_reduce(small.data(), small.data(), small.size(), DType::I32, ReduceOp::Sum);
      comm.barrier().wait();
      ws.wait();
      wb.wait();
      ASSERT_EQ(big.back(), 3);
      ASSERT_EQ(small[2], 6);
    }
  });
  expect_no_errors(errors);
}

TEST(PointToPoint, MessagesWithTheSameTagArriveInOrder) {
  auto errors = run_ranks(3, {}, [](Communicator& comm) {
    const int r = comm.rank();
    const int next = (r + 1) % 3, prev = (r + 2) % 3;
    std::vector<std::vector<int>> out(5), in(5);
    std::vector<Work> ws;
    for (int k = 0; k < 5; ++k) {
      out[k].assign(100 + k, r * 100 + k);
      in[k].assign(100 + k, -1);
      ws.push_back(comm.recv(in[k].data(), in[k].size() * sizeof(int), prev, 42));
    }
    for (int k = 0; k < 5; ++k) ws.push_back(comm.send(out[k].data(), out[k].size() * sizeof(int), next, 42));
    for (auto& w : ws) w.wait();
    for (int k = 0; k < 5; ++k) EXPECT_EQ(in[k][0], prev * 100 + k);
    // p2p does not queue behind collectives.
    std::vector<float> big(1 << 17, 1.0f);
    Work c = comm.all_reduce(big.data(), big.data(), big.size(), DType::F32, ReduceOp::Sum);
    int token = r, got = -1;
    Work s = comm.send(&token, sizeof token, next, 7);
    Work g = comm.recv(&got, sizeof got, prev, 7);
    g.wait();
    s.wait();
    c.wait();
    EXPECT_EQ(got, prev);
  });
  expect_no_errors(errors);
}

TEST(Subgroups, DisjointAndOverlappingGroupsWorkSideBySide) {
  auto errors = run_ranks(4, {}, [](Communicator& comm) {
    const int r = comm.rank();
    auto pairs = comm.subgroup(r < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3});
    EXPECT_EQ(pairs->size(), 2);
    EXPECT_EQ(pairs->rank(), r % 2);
    // Listed out of order: group rank follows the list.
    std::unique_ptr<Communicator> odd_even =
        comm.subgroup(r % 2 ? std::vector<int>{3, 1} : std::vector<int>{2, 0});
    EXPECT_EQ(odd_even->rank(), r < 2 ? 1 : 0);
    for (int iter = 0; iter < 10; ++iter) {
      std::vector<int64_t> a(5000, r), b(7000, r), c(3, 1);
      Work wa = pairs->all_reduce(a.data(), a.data(), a.size(), DType::I64, ReduceOp::Sum);
      Work wb = odd_even->all_reduce(b.data(), b.data(), b.size(), DType::I64, ReduceOp::Sum);
      Work wc = comm.all_reduce(c.data(), c.data(), c.size(), DType::I64, ReduceOp::Sum);
      wa.wait();
      wb.wait();
      wc.wait();
      ASSERT_EQ(a[0], r < 2 ? 1 : 5);
      ASSERT_EQ(b[6999], r % 2 ? 4 : 2);
      ASSERT_EQ(c[2], 4);
    }
    // The same list twice gives two independent groups.
    auto again = comm.subgroup(r < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3});
    int32_t x = r;
    again->broadcast(&x, 1, DType::I32, 1).wait();
    EXPECT_EQ(x, r < 2 ? 1 : 3);
  });
  expect_no_errors(errors);
}

TEST(Validation, BadArgumentsAreClearErrors) {
  auto errors = run_ranks(2, {}, [](Communicator& comm) {
    std::vector<float> v(16);
    EXPECT_THROW(comm.broadcast(v.data(), 16, DType::F32, 2), ConfigError);
    EXPECT_THROW(comm.all_reduce(v.data(), v.data() + 1, 8, DType::F32, ReduceOp::Sum), ConfigError);
    EXPECT_THROW(comm.all_reduce(nullptr, v.data(), 8, DType::F32, ReduceOp::Sum), ConfigError);
    EXPECT_THROW(comm.all_reduce(v.data(), v.data(), 8, DType::U8, ReduceOp::Sum), ConfigError);
    EXPECT_THROW(comm.reduce_scatter(v.data(), v.data() + 2, 4, DType::F32, ReduceOp::Sum, {Algo::Tree}),
                 ConfigError);
    EXPECT_THROW(comm.reduce_scatter(v.data(), v.data() + 3, 4, DType::F32, ReduceOp::Sum), ConfigError);
    EXPECT_THROW(comm.all_gather(v.data() + 1, v.data(), 4, DType::F32), ConfigError);
    CollectiveOptions zero;
    zero.timeout_s = 0;
    EXPECT_THROW(comm.barrier(zero), ConfigError);
    EXPECT_THROW(comm.send(v.data(), 4, comm.rank(), 1), ConfigError);
    EXPECT_THROW(comm.recv(v.data(), 4, 5, 1), ConfigError);
    EXPECT_THROW(comm.subgroup({}), ConfigError);
    EXPECT_THROW(comm.subgroup({0, 0, 1}), ConfigError);
    EXPECT_THROW(comm.subgroup({1 - comm.rank()}), ConfigError);
    EXPECT_THROW(comm.subgroup({0, 7}), ConfigError);
    // The group is still usable: argument errors do not consume a sequence number.
    float x = 1.0f;
    comm.all_reduce(&x, &x, 1, DType::F32, ReduceOp::Sum).wait();
    EXPECT_EQ(x, 2.0f);
  });
  expect_no_errors(errors);
  EXPECT_THROW(parse_algo("fastest"), ConfigError);
  EXPECT_EQ(parse_algo("hier"), Algo::Hierarchical);
  EXPECT_EQ(parse_reduce_op("avg"), ReduceOp::Avg);
  EXPECT_THROW(parse_reduce_op("prod"), ConfigError);
  CommOptions bad;
  bad.tuning_file = "/nonexistent/tuning.json";
  EXPECT_THROW(Communicator(net::connect_inproc(net::make_inproc_hub(1), 0), bad), ConfigError);
}

TEST(Stats, CountOperationsAndPayloadBytes) {
  std::vector<CommStats> stats(2);
  auto errors = run_ranks(2, {}, [&](Communicator& comm) {
    std::vector<float> v(1000, 1.0f);
    comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Sum, {Algo::Ring}).wait();
    comm.barrier().wait();
    stats[static_cast<size_t>(comm.rank())] = comm.stats();
    EXPECT_EQ(comm.epoch(), 0u);
  });
  expect_no_errors(errors);
  for (const CommStats& s : stats) {
    EXPECT_EQ(s.ops, 2u);
    // Ring on two ranks: half the vector out in each of two steps.
    EXPECT_EQ(s.bytes_sent, 4000u);
    EXPECT_EQ(s.bytes_received, 4000u);
  }
}

}  // namespace
