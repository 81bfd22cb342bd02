// The collectives with ranks as forked processes over the real transports:
// TCP on loopback, shared memory, and both at once (two fake hosts: shared
// memory inside a host, TCP between them — the hierarchical algorithm's
// home). A reduced sweep checks results against the serial reference and
// across ranks; then a SIGKILLed peer must surface as PeerLost on every
// survivor, and mismatched counts as Mismatch.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "comm/communicator.hpp"
#include "core/checksum.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "process_harness.hpp"

using namespace braid;
using namespace braid::comm;
using namespace braid::comm::harness;

namespace {

int value_at(uint32_t seed, int rank, size_t i) {
  uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(rank) + 1) * 0xC2B2AE3D27D4EB4Full ^ seed;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  return static_cast<int>(h % 9) - 4;
}

void put(DType t, void* p, size_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    default: break;
  }
}

// Expected all-reduce value (exact small-integer sums; avg divides once in
// the accumulation type, as braid does).
void put_reduced(DType t, ReduceOp op, int n, void* p, size_t i, uint32_t seed, size_t j) {
  int acc = value_at(seed, 0, j);
  for (int r = 1; r < n; ++r) {
    int v = value_at(seed, r, j);
    acc = op == ReduceOp::Max ? std::max(acc, v) : op == ReduceOp::Min ? std::min(acc, v) : acc + v;
  }
  if (op != ReduceOp::Avg) return put(t, p, i, acc);
  switch (t) {
    case DType::F64: return put(t, p, i, static_cast<double>(acc) / n);
    case DType::I32:
    case DType::I64: return put(t, p, i, acc / n);
    default: return put(t, p, i, static_cast<double>(static_cast<float>(acc) / static_cast<float>(n)));
  }
}

struct Job {
  const char* kind;
  Algo algo;
};

// One rank's share of the sweep; returns the number of wrong results and
// folds every replicated output into `digest` for the cross-rank check.
int run_sweep(Communicator& comm, const std::vector<Job>& jobs, Xxh3Stream& digest) {
  const int n = comm.size(), r = comm.rank();
  const size_t N = static_cast<size_t>(n);
  int bad = 0;
  uint32_t seed = 1;
  for (const Job& job : jobs) {
    const std::string kind = job.kind;
    const bool reducing = kind == "allreduce" || kind == "reducescatter";
    for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64}) {
      const size_t chunk = 4096 / dtype_size(t);
      std::vector<size_t> counts = {0, 1, 7, 13, chunk - 1, chunk + 1, N * chunk + 3};
      if (t == DType::F32) counts.push_back(kind == "allreduce" || kind == "broadcast" ? 1000003 : 1000003 / N);
      for (size_t count : counts) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
          if (!reducing && op != ReduceOp::Sum) continue;
          if (count > 100000 && op != ReduceOp::Sum) continue;
          const bool in_place = (seed % 2) == 0;
          ++seed;
          const size_t es = dtype_size(t);
          const size_t in_elems = kind == "reducescatter" ? N * count : count;
          const size_t out_elems = kind == "allgather" ? N * count : count;
          std::vector<char> a(std::max<size_t>(1, std::max(in_elems, out_elems) * es));
          std::vector<char> b(std::max<size_t>(1, out_elems * es), 0x33);
          std::vector<char> want(std::max<size_t>(1, out_elems * es));
          CollectiveOptions co;
          co.algo = job.algo;
          void* out = in_place ? a.data() : b.data();
          if (kind == "allreduce") {
            for (size_t i = 0; i < count; ++i) put(t, a.data(), i, value_at(seed, r, i));
            comm.all_reduce(a.data(), out, count, t, op, co).wait();
            for (size_t i = 0; i < count; ++i) put_reduced(t, op, n, want.data(), i, seed, i);
          } else if (kind == "reducescatter") {
            for (size_t i = 0; i < N * count; ++i) put(t, a.data(), i, value_at(seed, r, i));
            if (in_place) out = a.data() + static_cast<size_t>(r) * count * es;
            comm.reduce_scatter(a.data(), out, count, t, op, co).wait();
            for (size_t i = 0; i < count; ++i) put_reduced(t, op, n, want.data(), i, seed, static_cast<size_t>(r) * count + i);
          } else if (kind == "allgather") {
            void* in = in_place ? a.data() + static_cast<size_t>(r) * count * es : a.data();
            if (in_place) out = a.data();
            for (size_t i = 0; i < count; ++i) put(t, in, i, value_at(seed, r, i));
            comm.all_gather(in, out, count, t, co).wait();
            for (size_t i = 0; i < N * count; ++i) put(t, want.data(), i, value_at(seed, static_cast<int>(i / count), i % count));
          } else {
            const int root = static_cast<int>(seed % N);
            out = a.data();
            for (size_t i = 0; i < count; ++i) put(t, out, i, value_at(seed, r == root ? root : r + 100, i));
            comm.broadcast(out, count, t, root, co).wait();
            for (size_t i = 0; i < count; ++i) put(t, want.data(), i, value_at(seed, root, i));
          }
          if (out_elems && std::memcmp(want.data(), out, out_elems * es) != 0) {
            if (bad < 5)
              std::fprintf(stderr, "rank %d: %s/%s %s count %zu op %s %s: wrong result\n", r, kind.c_str(),
                           algo_name(job.algo), std::string(dtype_name(t)).c_str(), count, reduce_op_name(op),
                           in_place ? "in place" : "out of place");
            ++bad;
          }
          if (kind != "reducescatter") digest.update(out, out_elems * es);
        }
      }
    }
  }
  return bad;
}

class ProcessSweep : public ::testing::TestWithParam<std::tuple<TransportCase, int>> {};

TEST_P(ProcessSweep, ResultsMatchTheReferenceOnEveryRank) {
  const auto [tc, n] = GetParam();
  std::string dir = fresh_dir("sweep");
  std::vector<Job> jobs = {{"allreduce", Algo::Ring}, {"allreduce", Algo::Rhd},       {"allreduce", Algo::Tree},
                           {"allreduce", Algo::Auto}, {"reducescatter", Algo::Ring}, {"reducescatter", Algo::Rhd},
                           {"allgather", Algo::Ring}, {"allgather", Algo::Rhd},       {"broadcast", Algo::Ring},
                           {"broadcast", Algo::Tree}};
  if (tc.per_host) jobs.push_back({"allreduce", Algo::Hierarchical});
  auto pids = fork_ranks(n, dir, [&, tc = tc, n = n](int r, net::FileStore& store) {
    CommOptions opt;
    opt.chunk_bytes = 4096;
    opt.timeout_s = 60;
    Communicator comm(net::connect_mesh(store, mesh_options(tc, r, n)), opt);
    Xxh3Stream digest;
    int bad = run_sweep(comm, jobs, digest);
    // Every rank's replicated outputs must hash the same.
    store.set(fmt::format("digest/{}", r), std::to_string(digest.digest()));
    comm.barrier().wait();
    for (int q = 0; q < n; ++q) {
      std::string other = store.get(fmt::format("digest/{}", q), Deadline::in_seconds(30));
      if (other != std::to_string(digest.digest())) {
        std::fprintf(stderr, "rank %d: outputs differ from rank %d's\n", r, q);
        return 3;
      }
    }
    // Leave together. (A shared-memory pair that sees its peer close fails
    // receives whose data is still in the ring, so a rank must not tear its
    // mesh down while others may still be reading what it sent last.)
    store.set(fmt::format("exit/{}", r), "1");
    for (int q = 0; q < n; ++q) store.get(fmt::format("exit/{}", q), Deadline::in_seconds(30));
    return bad ? 2 : 0;
  });
  EXPECT_EQ(wait_ranks(pids), std::vector<int>(static_cast<size_t>(n), 0));
  std::filesystem::remove_all(dir);
}

const TransportCase kTcp{"tcp", net::TransportChoice::Tcp, 0};
const TransportCase kShm{"shm", net::TransportChoice::Shm, 0};
const TransportCase kTwoHosts{"hosts", net::TransportChoice::Auto, 2};
const TransportCase kTcp4{"tcp4streams", net::TransportChoice::Tcp, 0, 4};

INSTANTIATE_TEST_SUITE_P(Comm, ProcessSweep,
                         ::testing::Values(std::make_tuple(kTcp, 2), std::make_tuple(kTcp, 3),
                                           std::make_tuple(kShm, 2), std::make_tuple(kShm, 4),
                                           std::make_tuple(kTwoHosts, 4), std::make_tuple(kTcp4, 2)),
                         [](const auto& info) {
                           return fmt::format("{}_n{}", std::get<0>(info.param).name, std::get<1>(info.param));
                         });

class ProcessFaults : public ::testing::TestWithParam<TransportCase> {};

// Three ranks loop over large all-reduces; the test SIGKILLs rank 1. Both
// survivors must fail with PeerLost (not Timeout: the deadline is 60 s).
TEST_P(ProcessFaults, SigkilledPeerIsPeerLostOnEverySurvivor) {
  const TransportCase tc = GetParam();
  const int n = 3;
  std::string dir = fresh_dir("kill");
  auto pids = fork_ranks(n, dir, [&](int r, net::FileStore& store) {
    CommOptions opt;
    opt.timeout_s = 60;
    Communicator comm(net::connect_mesh(store, mesh_options(tc, r, n)), opt);
    std::vector<float> v(4 << 20, 1.0f);
    comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Sum, {Algo::Ring}).wait();
    store.set(fmt::format("ready/{}", r), "1");
    try {
      for (int i = 0; i < 100000; ++i)
        comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Max, {Algo::Ring}).wait();
    } catch (const PeerLost& e) {
      if (std::string(e.what()).find("1") == std::string::npos)
        std::fprintf(stderr, "rank %d: PeerLost does not name rank 1: %s\n", r, e.what());
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: expected PeerLost, got: %s\n", r, e.what());
      return 4;
    }
    return 5;  // never saw the loss
  });
  {
    net::FileStore store(dir);
    for (int r = 0; r < n; ++r) store.get(fmt::format("ready/{}", r), Deadline::in_seconds(60));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pids[1], SIGKILL);
  auto codes = wait_ranks(pids);
  EXPECT_EQ(codes[0], 0);
  EXPECT_EQ(codes[1], -SIGKILL);
  EXPECT_EQ(codes[2], 0);
  std::filesystem::remove_all(dir);
}

TEST_P(ProcessFaults, MismatchedCountsFailEveryRank) {
  const TransportCase tc = GetParam();
  const int n = 3;
  std::string dir = fresh_dir("mismatch");
  auto pids = fork_ranks(n, dir, [&](int r, net::FileStore& store) {
    CommOptions opt;
    opt.timeout_s = 30;
    Communicator comm(net::connect_mesh(store, mesh_options(tc, r, n)), opt);
    std::vector<int32_t> v(5000, 1);
    try {
      comm.all_reduce(v.data(), v.data(), r == 2 ? 4001 : 4000, DType::I32, ReduceOp::Sum, {Algo::Ring}).wait();
    } catch (const Mismatch&) {
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: expected Mismatch, got: %s\n", r, e.what());
      return 4;
    }
    return 5;
  });
  EXPECT_EQ(wait_ranks(pids), std::vector<int>(static_cast<size_t>(n), 0));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Comm, ProcessFaults, ::testing::Values(kTcp, kShm, kTwoHosts),
                         [](const auto& info) { return info.param.name; });

// Three ranks on two hosts (0 and 1 over shared memory, 2 over TCP), a fresh
// mesh each round, 16 MiB ring all-reduces. The ring's pipeline used to wait
// for its oldest receive even while a full send window held back the chunk
// its right neighbour needed: when the shared-memory receiver had buffered
// far ahead, every rank waited for the others (about one round in five on a
// 2-core VM). 12 rounds catch that with probability ~0.93; the short
// deadline keeps a stall from costing a minute.
TEST(ProcessRing, MixedTransportRingAllReduceNeverStalls) {
  const int n = 3;
  for (int round = 0; round < 12; ++round) {
    SCOPED_TRACE(round);
    std::string dir = fresh_dir("mixring");
    auto pids = fork_ranks(n, dir, [&](int r, net::FileStore& store) {
      CommOptions opt;
      opt.timeout_s = 15;
      Communicator comm(net::connect_mesh(store, mesh_options(kTwoHosts, r, n)), opt);
      std::vector<float> v(4 << 20);
      for (int rep = 0; rep < 2; ++rep) {
        for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i + static_cast<size_t>(r)) % 7);
        try {
          comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Sum, {Algo::Ring}).wait();
        } catch (const std::exception& e) {
          std::fprintf(stderr, "rank %d: all-reduce %d failed: %s\n", r, rep, e.what());
          return 4;
        }
        for (size_t i = 0; i < v.size(); ++i) {
          float want = 0;
          for (int q = 0; q < n; ++q) want += static_cast<float>((i + static_cast<size_t>(q)) % 7);
          if (v[i] != want) {
            std::fprintf(stderr, "rank %d: element %zu is %g, want %g\n", r, i, v[i], want);
            return 3;
          }
        }
      }
      // Leave together (see ProcessSweep).
      store.set(fmt::format("exit/{}", r), "1");
      for (int q = 0; q < n; ++q) store.get(fmt::format("exit/{}", q), Deadline::in_seconds(30));
      return 0;
    });
    ASSERT_EQ(wait_ranks(pids), std::vector<int>(static_cast<size_t>(n), 0));
    std::filesystem::remove_all(dir);
  }
}

class LargeRing : public ::testing::TestWithParam<std::tuple<TransportCase, int>> {};

// With BRAID_TCP_LEND=1, large ring all-reduces over TCP lend their pages to
// the kernel (vmsplice):
// the peer reads our buffer long after our send "completed". Each rank
// scribbles over both buffers the moment an operation returns and starts the
// next one at once, so a rank that returned before its peers had read its
// bytes would corrupt their results (checked: without the closing
// acknowledgement this test fails). Sizes straddle the 4 MiB threshold of
// the acknowledgement; in place and out of place; sum, avg, bf16.
TEST_P(LargeRing, ResultsStayExactWhenBuffersAreReusedAtOnce) {
  const auto [tc, n] = GetParam();
  std::string dir = fresh_dir("lend");
  auto pids = fork_ranks(n, dir, [&, tc = tc, n = n](int r, net::FileStore& store) {
    setenv("BRAID_TCP_LEND", "1", 1);  // opt in (this child only)
    CommOptions opt;
    opt.timeout_s = 60;
    Communicator comm(net::connect_mesh(store, mesh_options(tc, r, n)), opt);
    int bad = 0;
    uint32_t seed = 7;
    // (the last one is large enough for the default chunk to grow to 1 MiB)
    const size_t counts[] = {(4u << 20) / 4 - 1, (4u << 20) / 4 + 1, 3000017, 9000011};
    for (size_t count : counts) {
      for (DType t : {DType::F32, DType::BF16}) {
        if (t == DType::BF16 && count != 3000017) continue;
        const size_t es = dtype_size(t);
        std::vector<char> a(count * es), b(count * es), want(count * es);
        for (int rep = 0; rep < 4; ++rep) {
          const bool in_place = rep % 2 == 0;
          const ReduceOp op = rep < 2 ? ReduceOp::Sum : ReduceOp::Avg;
          ++seed;
          if (count == 9000011 && (rep == 1 || rep == 2)) continue;  // keep the test short
          for (size_t i = 0; i < count; ++i) put(t, a.data(), i, value_at(seed, r, i));
          void* out = in_place ? a.data() : b.data();
          comm.all_reduce(a.data(), out, count, t, op, {Algo::Ring}).wait();
          std::memcpy(want.data(), out, count * es);  // keep the result, then scribble at once
          std::memset(a.data(), 0x7f, a.size());
          std::memset(b.data(), 0x7f, b.size());
          std::vector<char> ref(count * es);
          for (size_t i = 0; i < count; ++i) put_reduced(t, op, n, ref.data(), i, seed, i);
          if (std::memcmp(ref.data(), want.data(), ref.size()) != 0) {
            std::fprintf(stderr, "rank %d: %s count %zu %s %s: wrong result\n", r, std::string(dtype_name(t)).c_str(),
                         count, reduce_op_name(op), in_place ? "in place" : "out of place");
            ++bad;
          }
        }
      }
    }
    store.set(fmt::format("exit/{}", r), "1");
    for (int q = 0; q < n; ++q) store.get(fmt::format("exit/{}", q), Deadline::in_seconds(30));
    return bad ? 2 : 0;
  });
  EXPECT_EQ(wait_ranks(pids), std::vector<int>(static_cast<size_t>(n), 0));
  std::filesystem::remove_all(dir);
}

// Ranks that disagree on BRAID_TCP_LEND would disagree on the ring's closing
// acknowledgement; the setting is part of the check value, so they fail with
// Mismatch rather than waiting for their deadline.
TEST(LargeRingSetting, DisagreeingLendSettingsFailWithMismatch) {
  std::string dir = fresh_dir("lendmismatch");
  auto pids = fork_ranks(2, dir, [&](int r, net::FileStore& store) {
    setenv("BRAID_TCP_LEND", r == 0 ? "1" : "0", 1);
    CommOptions opt;
    opt.timeout_s = 30;
    Communicator comm(net::connect_mesh(store, mesh_options(kTcp, r, 2)), opt);
    std::vector<float> v((5u << 20) / 4, 1.0f);
    try {
      comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Sum, {Algo::Ring}).wait();
    } catch (const Mismatch&) {
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: expected Mismatch, got: %s\n", r, e.what());
      return 4;
    }
    return 5;
  });
  EXPECT_EQ(wait_ranks(pids), (std::vector<int>{0, 0}));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Comm, LargeRing,
                         ::testing::Values(std::make_tuple(kTcp, 2), std::make_tuple(kTcp, 3),
                                           std::make_tuple(kTcp4, 2), std::make_tuple(kTwoHosts, 4)),
                         [](const auto& info) {
                           return fmt::format("{}_n{}", std::get<0>(info.param).name, std::get<1>(info.param));
                         });

}  // namespace
