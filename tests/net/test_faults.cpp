// Fault injection is effective. Delays are checked as lower bounds only (a
// delay that was injected must be observed; how much slower a loaded machine
// is on top of it is not a test's business).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "tests/net/mesh_harness.hpp"

namespace braid::net::test {
namespace {

Deadline soon() { return Deadline::in_seconds(60); }

class FaultTest : public ::testing::TestWithParam<Variant> {
 protected:
  std::vector<std::shared_ptr<Mesh>> connect(int n, const std::string& faults) {
    return connect_threads(n, [&](int r) {
      MeshOptions o = options_for(GetParam(), r, n);
      o.shm_ring_bytes = 64 << 10;
      o.faults = FaultSpec::parse(faults);
      return o;
    });
  }
};

// Ping-pong of 8-byte messages: each one-way trip carries the added latency.
TEST_P(FaultTest, LatencyIsAddedToEveryMessage) {
  const double kLatency = 0.02;
  const int kRounds = 5;
  auto m = connect(2, "latency=20ms");
  Stopwatch sw;
  run_threads(2, [&](int r) {
    Pair& p = m[r]->pair(1 - r);
    uint64_t v = 0;
    for (int i = 0; i < kRounds; ++i) {
      if (r == 0) {
        p.isend(&v, 8, i)->wait(soon());
        p.irecv(&v, 8, i)->wait(soon());
      } else {
        p.irecv(&v, 8, i)->wait(soon());
        v++;
        p.isend(&v, 8, i)->wait(soon());
      }
    }
    if (r == 0) {
      EXPECT_EQ(v, static_cast<uint64_t>(kRounds));
    }
  });
  EXPECT_GE(sw.seconds(), 2 * kRounds * kLatency);
}

// A rate cap of 80 Mbit/s (10 MB/s): 4 MiB cannot arrive in less than ~0.4 s.
TEST_P(FaultTest, RateCapBoundsThroughput) {
  const size_t n = 4 << 20;
  auto m = connect(2, "rate=80mbit,ranks=0");
  std::vector<uint8_t> out(n), in(n);
  fill_pattern(out.data(), n, 1);
  Stopwatch sw;
  run_threads(2, [&](int r) {
    if (r == 0) m[0]->pair(1).isend(out.data(), n, 1)->wait(soon());
    if (r == 1) m[1]->pair(0).irecv(in.data(), n, 1)->wait(soon());
  });
  double min_s = static_cast<double>(n) / 10e6 - 0.01;  // minus the bucket's initial burst
  EXPECT_GE(sw.seconds(), min_s);
  EXPECT_TRUE(check_pattern(in.data(), n, 1));
}

TEST_P(FaultTest, StallHoldsSendsOnce) {
  auto m = connect(2, "stall=300ms,stall_after=64K,ranks=0");
  const size_t n = 1 << 20;
  std::vector<uint8_t> out(n), in(n);
  fill_pattern(out.data(), n, 2);
  Stopwatch sw;
  run_threads(2, [&](int r) {
    if (r == 0) m[0]->pair(1).isend(out.data(), n, 1)->wait(soon());
    if (r == 1) m[1]->pair(0).irecv(in.data(), n, 1)->wait(soon());
  });
  EXPECT_GE(sw.seconds(), 0.3);
  EXPECT_TRUE(check_pattern(in.data(), n, 2));
}

// Dropping the connection after 1 MiB: both ends see PeerLost and report it.
TEST_P(FaultTest, DropAfterBytesLosesThePeerOnBothSides) {
  auto m = connect(2, "drop_after=1M,ranks=0");
  std::atomic<int> lost0{-1}, lost1{-1};
  m[0]->on_pair_failure([&](int p, std::exception_ptr) { lost0 = p; });
  m[1]->on_pair_failure([&](int p, std::exception_ptr) { lost1 = p; });
  const size_t n = 4 << 20;
  std::vector<uint8_t> out(n), in(n);
  std::exception_ptr e0, e1;
  run_threads(2, [&](int r) {
    try {
      if (r == 0) m[0]->pair(1).isend(out.data(), n, 1)->wait(soon());
      if (r == 1) m[1]->pair(0).irecv(in.data(), n, 1)->wait(soon());
    } catch (...) {
      (r == 0 ? e0 : e1) = std::current_exception();
    }
  });
  ASSERT_TRUE(e0);
  ASSERT_TRUE(e1);
  EXPECT_THROW(std::rethrow_exception(e0), PeerLost);
  EXPECT_THROW(std::rethrow_exception(e1), PeerLost);
  for (int i = 0; i < 500 && (lost0 < 0 || lost1 < 0); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(lost0.load(), 1);
  EXPECT_EQ(lost1.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, FaultTest, ::testing::ValuesIn(all_variants()),
                         [](const auto& info) { return info.param.name; });

// Faults limited to some peers leave the others alone (the only effect we can
// observe without timing: a drop on pair 0-1 does not touch pair 0-2).
TEST(Faults, PeersFilterSelectsPairs) {
  auto m = connect_threads(3, [](int r) {
    MeshOptions o = options_for(all_variants()[0], r, 3);
    o.faults = FaultSpec::parse("drop_after=64K,peers=1,ranks=0");
    return o;
  });
  std::vector<uint8_t> buf(1 << 20);
  run_threads(3, [&](int r) {
    if (r == 0) {
      EXPECT_THROW(m[0]->pair(1).isend(buf.data(), buf.size(), 1)->wait(soon()), PeerLost);
      m[0]->pair(2).isend(buf.data(), buf.size(), 1)->wait(soon());
    } else if (r == 1) {
      std::vector<uint8_t> in(buf.size());
      EXPECT_THROW(m[1]->pair(0).irecv(in.data(), in.size(), 1)->wait(soon()), PeerLost);
    } else {
      std::vector<uint8_t> in(buf.size());
      m[2]->pair(0).irecv(in.data(), in.size(), 1)->wait(soon());
    }
  });
  EXPECT_FALSE(m[0]->pair(2).failed());
}

TEST(Faults, EnvironmentVariableIsRead) {
  setenv("BRAID_FAULTS", "latency=30ms", 1);
  auto m = connect_threads(2, [](int r) { return options_for(all_variants()[0], r, 2); });
  unsetenv("BRAID_FAULTS");
  uint64_t v = 1, got = 0;
  Stopwatch sw;
  auto rq = m[1]->pair(0).irecv(&got, 8, 1);
  m[0]->pair(1).isend(&v, 8, 1)->wait(soon());
  rq->wait(soon());
  EXPECT_GE(sw.seconds(), 0.03);
  EXPECT_EQ(got, 1u);
}

}  // namespace
}  // namespace braid::net::test
