// Failures surface as typed errors on every rank, never as a hang: mismatched
// calls (Mismatch), a peer that disappears mid-collective (PeerLost), abort()
// (Aborted), a missed deadline (Timeout). Ranks are threads over the
// in-process transport; tests/comm/test_process.cpp repeats the important
// cases with forked processes over TCP and shared memory.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <typeinfo>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "harness.hpp"

using namespace braid;
using namespace braid::comm;
using braid::comm::harness::describe;
using braid::comm::harness::run_ranks;

namespace {

// Which typed error an exception is ("none" if null).
std::string kind_of(const std::exception_ptr& e) {
  if (!e) return "none";
  try {
    std::rethrow_exception(e);
  } catch (const Mismatch&) {
    return "Mismatch";
  } catch (const PeerLost&) {
    return "PeerLost";
  } catch (const Timeout&) {
    return "Timeout";
  } catch (const Aborted&) {
    return "Aborted";
  } catch (const std::exception& x) {
    return std::string("other: ") + x.what();
  }
}

std::string wait_kind(Work w) {
  try {
    w.wait();
    return "none";
  } catch (...) {
    return kind_of(std::current_exception());
  }
}

struct MismatchParam {
  Algo algo;
  int world;
};

class MismatchTest : public ::testing::TestWithParam<MismatchParam> {};

TEST_P(MismatchTest, DifferentCountsFailEveryRankWithMismatch) {
  const auto [algo, n] = GetParam();
  CommOptions opt;
  opt.timeout_s = 20;  // a hang would show as Timeout, failing the test
  std::vector<std::string> kinds(static_cast<size_t>(n));
  auto errors = run_ranks(n, opt, [&](Communicator& comm) {
    // One correct collective first. A rank still finishing it when another
    // rank detects the mismatch of the next one fails it instead: the
    // failure ends all work in flight, with the same error everywhere.
    std::vector<float> ok(64, 1.0f);
    std::string first = wait_kind(comm.all_reduce(ok.data(), ok.data(), ok.size(), DType::F32, ReduceOp::Sum, {algo}));
    const size_t count = comm.rank() == n - 1 ? 1001 : 1000;
    std::vector<float> v(2000, 1.0f);
    std::string second = wait_kind(comm.all_reduce(v.data(), v.data(), count, DType::F32, ReduceOp::Sum, {algo}));
    kinds[static_cast<size_t>(comm.rank())] = first == "none" ? second : first;
    // The group stays failed: the next operation fails at once, the same way.
    std::string next = wait_kind(comm.barrier());
    if (next != kinds[static_cast<size_t>(comm.rank())]) kinds[static_cast<size_t>(comm.rank())] += " then " + next;
  });
  for (int r = 0; r < n; ++r)
    EXPECT_EQ(kinds[static_cast<size_t>(r)], "Mismatch") << "rank " << r << " " << describe(errors[static_cast<size_t>(r)]);
}

std::vector<MismatchParam> mismatch_params() {
  std::vector<MismatchParam> p;
  for (int n : {2, 3, 5, 8})
    for (Algo a : {Algo::Ring, Algo::Rhd, Algo::Tree, Algo::Auto}) p.push_back({a, n});
  return p;
}

INSTANTIATE_TEST_SUITE_P(Comm, MismatchTest, ::testing::ValuesIn(mismatch_params()),
                         [](const auto& info) {
                           return fmt::format("{}_n{}", algo_name(info.param.algo), info.param.world);
                         });

// (A broadcast where every rank believes itself the root cannot be caught:
// nobody receives anything. Roots that disagree otherwise are, see below.)
TEST(Mismatch, DifferentTypesOpsKindsAndEmptyCountsAreCaught) {
  CommOptions opt;
  opt.timeout_s = 20;
  struct Variant {
    const char* name;
    std::function<Work(Communicator&, std::vector<int32_t>&)> call;
  };
  std::vector<Variant> variants = {
      {"type", [](Communicator& c, std::vector<int32_t>& v) {
         return c.all_reduce(v.data(), v.data(), 16, c.rank() ? DType::F32 : DType::I32, ReduceOp::Sum);
       }},
      {"op", [](Communicator& c, std::vector<int32_t>& v) {
         return c.all_reduce(v.data(), v.data(), 16, DType::I32, c.rank() ? ReduceOp::Max : ReduceOp::Sum);
       }},
      {"empty", [](Communicator& c, std::vector<int32_t>& v) {
         return c.all_reduce(v.data(), v.data(), c.rank() ? 16 : 0, DType::I32, ReduceOp::Sum, {Algo::Ring});
       }},
      {"kind", [](Communicator& c, std::vector<int32_t>& v) {
         return c.rank() ? c.all_gather(v.data(), v.data() + 16, 8, DType::I32, {Algo::Ring})
                         : c.all_reduce(v.data(), v.data(), 16, DType::I32, ReduceOp::Sum, {Algo::Ring});
       }},
  };
  for (const auto& var : variants) {
    std::vector<std::string> kinds(2);
    run_ranks(2, opt, [&](Communicator& comm) {
      std::vector<int32_t> v(64, 1);
      kinds[static_cast<size_t>(comm.rank())] = wait_kind(var.call(comm, v));
    });
    EXPECT_EQ(kinds[0], "Mismatch") << var.name;
    EXPECT_EQ(kinds[1], "Mismatch") << var.name;
  }
}

// A rank vanishes while the others are inside a large all-reduce (and have
// more queued behind it): every survivor's current and queued work fails
// with PeerLost naming it, long before the deadline.
class PeerLostTest : public ::testing::TestWithParam<Algo> {};

TEST_P(PeerLostTest, SurvivorsGetPeerLostForCurrentAndQueuedWork) {
  const int n = 4, dead = 2;
  CommOptions opt;
  opt.timeout_s = 30;
  opt.inline_max_bytes = 0;  // everything through the executor, so work can be queued
  const Algo algo = GetParam();
  std::vector<std::vector<std::string>> kinds(n);
  std::vector<std::string> messages(n);
  auto t0 = std::chrono::steady_clock::now();
  run_ranks(n, opt, [&](Communicator& comm) {
    const int r = comm.rank();
    if (r == dead) {
      // Let the others get going, then drop every connection as a crash would.
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      for (int p = 0; p < n; ++p)
        if (p != r) comm.mesh().pair(p).abort(net::AbortKind::PeerLost, fmt::format("rank {} crashed", r));
      return;
    }
    std::vector<std::vector<float>> bufs(3, std::vector<float>(1 << 18, 1.0f));
    std::vector<Work> works;
    for (auto& b : bufs) works.push_back(comm.all_reduce(b.data(), b.data(), b.size(), DType::F32, ReduceOp::Sum, {algo}));
    for (auto& w : works) {
      try {
        w.wait();
        kinds[r].push_back("none");
      } catch (const PeerLost& e) {
        kinds[r].push_back("PeerLost");
        messages[r] = e.what();
      } catch (...) {
        kinds[r].push_back(kind_of(std::current_exception()));
      }
    }
  });
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (int r = 0; r < n; ++r) {
    if (r == dead) continue;
    EXPECT_EQ(kinds[r], (std::vector<std::string>{"PeerLost", "PeerLost", "PeerLost"})) << "rank " << r;
    EXPECT_NE(messages[r].find("rank 2"), std::string::npos) << "rank " << r << ": " << messages[r];
  }
  // Behaviour, not speed: a Timeout would have shown above; this only
  // guards against the failure being reported by the deadline path.
  EXPECT_LT(elapsed, opt.timeout_s);
}

INSTANTIATE_TEST_SUITE_P(Comm, PeerLostTest, ::testing::Values(Algo::Ring, Algo::Rhd, Algo::Tree),
                         [](const auto& info) { return std::string(algo_name(info.param)); });

TEST(Mismatch, DisagreeingBroadcastRootsAreCaught) {
  CommOptions opt;
  opt.timeout_s = 20;
  std::vector<std::string> kinds(3);
  run_ranks(3, opt, [&](Communicator& comm) {
    std::vector<int32_t> v(16, comm.rank());
    kinds[static_cast<size_t>(comm.rank())] =
        wait_kind(comm.broadcast(v.data(), v.size(), DType::I32, comm.rank() == 2 ? 1 : 0, {Algo::Ring}));
  });
  EXPECT_EQ(kinds[2], "Mismatch");
  // Ranks 0 and 1 may have finished their (consistent) part before rank 2
  // noticed; if not, they fail the same way.
  for (int r : {0, 1}) EXPECT_TRUE(kinds[static_cast<size_t>(r)] == "Mismatch" || kinds[static_cast<size_t>(r)] == "none");
}

// Ranks 0-2 are inside an all-reduce that cannot finish (rank 3 is late),
// rank 0 has a second one queued; rank 0 aborts. Everything in flight or
// queued fails with Aborted, on every rank, and so does rank 3's late call.
TEST(Abort, CancelsInFlightAndQueuedWorkOnEveryRank) {
  const int n = 4;
  CommOptions opt;
  opt.timeout_s = 30;
  opt.inline_max_bytes = 0;
  std::vector<std::vector<std::string>> kinds(n);
  run_ranks(n, opt, [&](Communicator& comm) {
    const int r = comm.rank();
    std::vector<float> a(1 << 16, 1.0f), b(1 << 16, 1.0f);
    if (r == 3) std::this_thread::sleep_for(std::chrono::milliseconds(400));
    Work w1 = comm.all_reduce(a.data(), a.data(), a.size(), DType::F32, ReduceOp::Sum, {Algo::Ring});
    Work w2 = comm.all_reduce(b.data(), b.data(), b.size(), DType::F32, ReduceOp::Sum, {Algo::Ring});
    if (r == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      comm.abort("the job is shutting down");
    }
    kinds[r] = {wait_kind(std::move(w1)), wait_kind(std::move(w2)), wait_kind(comm.barrier())};
  });
  for (int r = 0; r < n; ++r)
    EXPECT_EQ(kinds[r], (std::vector<std::string>{"Aborted", "Aborted", "Aborted"})) << "rank " << r;
}

TEST(Deadline, ALateRankMakesEveryRankTimeOut) {
  CommOptions opt;
  opt.timeout_s = 0.3;
  std::vector<std::string> kinds(2);
  run_ranks(2, opt, [&](Communicator& comm) {
    std::vector<double> v(100, 1.0);
    if (comm.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(800));
    kinds[static_cast<size_t>(comm.rank())] =
        wait_kind(comm.all_reduce(v.data(), v.data(), v.size(), DType::F64, ReduceOp::Sum));
  });
  EXPECT_EQ(kinds[0], "Timeout");
  EXPECT_EQ(kinds[1], "Timeout");  // told by rank 0 (or its own deadline)
}

TEST(Deadline, PerOperationTimeoutOverridesTheDefault) {
  CommOptions opt;
  opt.timeout_s = 60;
  std::vector<std::string> kinds(2);
  auto t0 = std::chrono::steady_clock::now();
  run_ranks(2, opt, [&](Communicator& comm) {
    std::vector<float> v(10, 1.0f);
    CollectiveOptions o;
    o.timeout_s = 0.2;
    if (comm.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));
      kinds[1] = wait_kind(comm.barrier(o));
      return;
    }
    kinds[0] = wait_kind(comm.all_reduce(v.data(), v.data(), v.size(), DType::F32, ReduceOp::Sum, o));
  });
  EXPECT_EQ(kinds[0], "Timeout");
  EXPECT_EQ(kinds[1], "Timeout");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
}

TEST(PointToPoint, RecvWithoutSenderTimesOut) {
  CommOptions opt;
  opt.timeout_s = 0.2;
  std::vector<std::string> kinds(2);
  run_ranks(2, opt, [&](Communicator& comm) {
    char buf[8];
    if (comm.rank() == 0) kinds[0] = wait_kind(comm.recv(buf, sizeof buf, 1, 7));
  });
  EXPECT_EQ(kinds[0], "Timeout");
}

}  // namespace
