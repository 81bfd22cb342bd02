// Transport behaviour with ranks as threads of this process, swept over TCP
// (1 and 4 streams per peer) and shared memory.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>

#include "core/error.hpp"
#include "net/mesh.hpp"
#include "tests/net/mesh_harness.hpp"

namespace braid::net::test {
namespace {

constexpr size_t kRing = 64 << 10;  // small shm ring so that wrap-around and streaming are exercised

class MeshTest : public ::testing::TestWithParam<Variant> {
 protected:
  MeshOptions opts(int rank, int size) {
    MeshOptions o = options_for(GetParam(), rank, size);
    o.shm_ring_bytes = kRing;
    return o;
  }
  std::vector<std::shared_ptr<Mesh>> connect(int n, const std::function<void(MeshOptions&)>& tweak = {}) {
    return connect_threads(n, [&](int r) {
      MeshOptions o = opts(r, n);
      if (tweak) tweak(o);
      return o;
    });
  }
};

Deadline soon() { return Deadline::in_seconds(30); }

Combiner sum_f32() {
  Combiner c;
  c.elem_size = 4;
  c.fn = [](void* dst, const void* local, const void* in, size_t n) {
    auto* d = static_cast<float*>(dst);
    auto* l = static_cast<const float*>(local);
    auto* x = static_cast<const float*>(in);
    for (size_t i = 0; i < n / 4; ++i) d[i] = l[i] + x[i];
  };
  return c;
}

TEST_P(MeshTest, PairKindAndTopology) {
  auto m = connect(3);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(m[r]->rank(), r);
    EXPECT_EQ(m[r]->size(), 3);
    EXPECT_EQ(m[r]->local_ranks(), (std::vector<int>{0, 1, 2}));
    EXPECT_EQ(m[r]->host_ids().size(), 3u);
    for (int p = 0; p < 3; ++p) {
      if (p == r) {
        EXPECT_THROW(m[r]->pair(p), Error);
        continue;
      }
      EXPECT_STREQ(m[r]->pair(p).kind(), GetParam().transport == TransportChoice::Shm ? "shm" : "tcp");
    }
  }
  EXPECT_EQ(m[0]->progress() != nullptr, GetParam().transport == TransportChoice::Shm);
}

// Every size that could trip a boundary, both directions at once, with the
// receive posted before the send and after it.
TEST_P(MeshTest, SizesBothDirectionsPostedBeforeAndAfter) {
  std::vector<size_t> sizes = {0, 1, 2, 3, 5, 7, 8, 9, 13, 16, 24, 31, 32, 33, 63, 64, 65, 1000003,
                               kRing - 1, kRing, kRing + 1, kRing - 64, (1 << 20) - 1, 1 << 20, (1 << 20) + 1,
                               (5 << 20) + 3};
  auto m = connect(2);
  std::barrier sync(2);
  run_threads(2, [&](int r) {
    Pair& p = m[r]->pair(1 - r);
    for (size_t i = 0; i < sizes.size(); ++i) {
      size_t n = sizes[i];
      for (int order = 0; order < 2; ++order) {
        std::vector<uint8_t> out(n), in(n + 1, 0xEE);
        uint64_t seed_out = i * 10 + order * 1000 + r, seed_in = i * 10 + order * 1000 + (1 - r);
        fill_pattern(out.data(), n, seed_out);
        Tag tag = 100 + i * 2 + order;
        RequestPtr rq, sq;
        if (order == 0) {  // receive first
          rq = p.irecv(in.data(), n, tag, static_cast<uint32_t>(n));
          sync.arrive_and_wait();
          sq = p.isend(out.data(), n, tag, static_cast<uint32_t>(n));
        } else {  // send first, receive after the peer's send is surely in flight
          sq = p.isend(out.data(), n, tag, static_cast<uint32_t>(n));
          sync.arrive_and_wait();
          std::this_thread::sleep_for(std::chrono::milliseconds(n > (1 << 20) ? 5 : 0));
          rq = p.irecv(in.data(), n, tag, static_cast<uint32_t>(n));
        }
        sq->wait(soon());
        rq->wait(soon());
        EXPECT_TRUE(check_pattern(in.data(), n, seed_in)) << "size " << n << " order " << order;
        EXPECT_EQ(in[n], 0xEE) << "wrote past the end, size " << n;
      }
    }
  });
  auto st = m[0]->pair(1).stats();
  size_t total = std::accumulate(sizes.begin(), sizes.end(), size_t{0}) * 2;
  EXPECT_EQ(st.bytes_sent, total);
  EXPECT_EQ(st.bytes_received, total);
  EXPECT_EQ(st.messages_sent, sizes.size() * 2);
  EXPECT_EQ(st.messages_received, sizes.size() * 2);
}

// Many messages in flight on one pair, received in the opposite order.
TEST_P(MeshTest, ManyConcurrentTagsAnyOrder) {
  const int kMsgs = 96;
  auto m = connect(2);
  run_threads(2, [&](int r) {
    Pair& p = m[r]->pair(1 - r);
    std::vector<std::vector<uint8_t>> out(kMsgs), in(kMsgs);
    std::vector<RequestPtr> reqs;
    for (int i = 0; i < kMsgs; ++i) {
      size_t n = static_cast<size_t>((i * 7919) % 70000);
      out[i].resize(n);
      in[i].resize(n);
      fill_pattern(out[i].data(), n, i * 2 + r);
    }
    for (int i = kMsgs - 1; i >= 0; i -= 2) reqs.push_back(p.irecv(in[i].data(), in[i].size(), 5000 + i));
    for (int i = 0; i < kMsgs; ++i) reqs.push_back(p.isend(out[i].data(), out[i].size(), 5000 + i));
    for (int i = kMsgs - 2; i >= 0; i -= 2) reqs.push_back(p.irecv(in[i].data(), in[i].size(), 5000 + i));
    for (auto& q : reqs) q->wait(soon());
    for (int i = 0; i < kMsgs; ++i) EXPECT_TRUE(check_pattern(in[i].data(), in[i].size(), i * 2 + (1 - r))) << i;
  });
}

// All-to-all among 4 ranks: every pair carries traffic at the same time.
TEST_P(MeshTest, FourRanksAllToAll) {
  const int n = 4;
  const size_t bytes = 300000;
  auto m = connect(n);
  run_threads(n, [&](int r) {
    std::vector<std::vector<uint8_t>> out(n, std::vector<uint8_t>(bytes)), in(n, std::vector<uint8_t>(bytes));
    std::vector<RequestPtr> reqs;
    for (int p = 0; p < n; ++p) {
      if (p == r) continue;
      fill_pattern(out[p].data(), bytes, r * 10 + p);
      reqs.push_back(m[r]->pair(p).irecv(in[p].data(), bytes, 7));
      reqs.push_back(m[r]->pair(p).isend(out[p].data(), bytes, 7));
    }
    for (auto& q : reqs) q->wait(soon());
    for (int p = 0; p < n; ++p) {
      if (p != r) {
        EXPECT_TRUE(check_pattern(in[p].data(), bytes, p * 10 + r));
      }
    }
  });
}

TEST_P(MeshTest, ReduceFoldsIncomingIntoDestination) {
  auto m = connect(2);
  for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{16}, size_t{1000003}, kRing / 4 + 3}) {
    run_threads(2, [&](int r) {
      Pair& p = m[r]->pair(1 - r);
      std::vector<float> mine(count), acc(count), other(count);
      for (size_t i = 0; i < count; ++i) {
        mine[i] = static_cast<float>((i * 3 + r) % 1000) * 0.5f;
        other[i] = static_cast<float>((i * 3 + 1 - r) % 1000) * 0.5f;
      }
      // In place (dst == local) on rank 0, out of place on rank 1.
      std::vector<float> local = mine;
      float* dst = r == 0 ? local.data() : acc.data();
      auto rq = p.irecv_reduce(dst, local.data(), count * 4, 9, sum_f32(), 42);
      auto sq = p.isend(mine.data(), count * 4, 9, 42);
      sq->wait(soon());
      rq->wait(soon());
      for (size_t i = 0; i < count; ++i) {
        if (dst[i] != mine[i] + other[i]) {
          ADD_FAILURE() << "element " << i << " of " << count << ": " << dst[i] << " != " << mine[i] + other[i];
          break;
        }
      }
    });
  }
}

TEST_P(MeshTest, ReduceRejectsBadCombiner) {
  auto m = connect(2);
  float x[4];
  Combiner c = sum_f32();
  c.elem_size = 3;
  EXPECT_THROW(m[0]->pair(1).irecv_reduce(x, x, 12, 1, c), Error);
  c.elem_size = 4;
  EXPECT_THROW(m[0]->pair(1).irecv_reduce(x, x, 10, 1, c), Error);
}

TEST_P(MeshTest, LengthOrCheckMismatchFailsReceiveOnly) {
  auto m = connect(2);
  std::vector<uint8_t> a(100), b(200);
  for (int late = 0; late < 2; ++late) {
    Tag t = 10 + late * 2;
    RequestPtr r1;
    if (!late) r1 = m[1]->pair(0).irecv(b.data(), 200, t, 5);
    m[0]->pair(1).isend(a.data(), 100, t, 5)->wait(soon());
    if (late) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      r1 = m[1]->pair(0).irecv(b.data(), 200, t, 5);
    }
    EXPECT_THROW(r1->wait(soon()), Mismatch);
    RequestPtr r2 = m[1]->pair(0).irecv(a.data(), 100, t + 1, 6);
    m[0]->pair(1).isend(a.data(), 100, t + 1, 7)->wait(soon());
    EXPECT_THROW(r2->wait(soon()), Mismatch);
  }
  // The pair still works afterwards.
  fill_pattern(a.data(), 100, 77);
  auto r3 = m[1]->pair(0).irecv(b.data(), 100, 99, 1);
  m[0]->pair(1).isend(a.data(), 100, 99, 1)->wait(soon());
  r3->wait(soon());
  EXPECT_TRUE(check_pattern(b.data(), 100, 77));
  EXPECT_FALSE(m[1]->pair(0).failed());
}

// More unexpected data than the budget: the sender is held back (its sends
// cannot all complete), nothing is lost, and no deadlock once receives come.
TEST_P(MeshTest, UnexpectedBudgetAppliesBackPressure) {
  const size_t kBudget = 256 << 10, kMsg = 64 << 10;
  const int kMsgs = 128;  // 8 MiB, 32x the budget
  auto m = connect(2, [&](MeshOptions& o) {
    o.unexpected_budget_bytes = kBudget;
    o.socket_buffer_bytes = 128 << 10;
  });
  std::vector<std::vector<uint8_t>> out(kMsgs, std::vector<uint8_t>(kMsg)), in(kMsgs, std::vector<uint8_t>(kMsg));
  std::vector<RequestPtr> sends;
  for (int i = 0; i < kMsgs; ++i) {
    fill_pattern(out[i].data(), kMsg, i);
    sends.push_back(m[0]->pair(1).isend(out[i].data(), kMsg, 300 + i));
  }
  // Drive the sends for a while; shm needs the waiter to progress.
  Progress* prog = m[0]->progress();
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (std::chrono::steady_clock::now() < until) {
    if (prog) {
      prog->progress();
      if (m[1]->progress()) m[1]->progress()->progress();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  int done = 0;
  for (auto& s : sends) done += s->done();
  EXPECT_LT(done, kMsgs) << "all sends completed although the receiver buffers at most " << kBudget << " bytes";
  // Receives in reverse order: the last message can only arrive after the others.
  std::vector<RequestPtr> recvs;
  for (int i = kMsgs - 1; i >= 0; --i) recvs.push_back(m[1]->pair(0).irecv(in[i].data(), kMsg, 300 + i));
  std::thread sender([&] {
    for (auto& s : sends) s->wait(soon());
  });
  for (auto& r : recvs) r->wait(soon());
  sender.join();
  for (int i = 0; i < kMsgs; ++i) EXPECT_TRUE(check_pattern(in[i].data(), kMsg, i)) << i;
}

// A message larger than the whole budget waits in the transport for its receive.
TEST_P(MeshTest, MessageLargerThanBudgetWaitsForItsReceive) {
  auto m = connect(2, [](MeshOptions& o) { o.unexpected_budget_bytes = 64 << 10; });
  const size_t n = 3 << 20;
  std::vector<uint8_t> out(n), in(n);
  fill_pattern(out.data(), n, 5);
  auto s = m[0]->pair(1).isend(out.data(), n, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto r = m[1]->pair(0).irecv(in.data(), n, 1);
  std::thread t([&] { s->wait(soon()); });
  r->wait(soon());
  t.join();
  EXPECT_TRUE(check_pattern(in.data(), n, 5));
}

// Each rank waits for its own large send before posting the receive for the
// peer's: buffering (within the budget) must let both sends finish.
TEST_P(MeshTest, CrossedLargeSendsDoNotDeadlock) {
  const size_t n = 6 << 20;
  auto m = connect(2, [](MeshOptions& o) { o.socket_buffer_bytes = 128 << 10; });
  run_threads(2, [&](int r) {
    std::vector<uint8_t> out(n), in(n);
    fill_pattern(out.data(), n, 70 + r);
    m[r]->pair(1 - r).isend(out.data(), n, 1)->wait(soon());
    m[r]->pair(1 - r).irecv(in.data(), n, 1)->wait(soon());
    EXPECT_TRUE(check_pattern(in.data(), n, 70 + (1 - r)));
  });
}

TEST_P(MeshTest, AbortSpreadsItsKindToThePeer) {
  auto m = connect(3);
  std::atomic<int> callbacks{0};
  m[1]->on_pair_failure([&](int peer, std::exception_ptr e) {
    EXPECT_EQ(peer, 0);
    EXPECT_THROW(std::rethrow_exception(e), Mismatch);
    callbacks++;
  });
  std::vector<uint8_t> buf(1000);
  auto r1 = m[1]->pair(0).irecv(buf.data(), 1000, 1);
  auto r0 = m[0]->pair(1).irecv(buf.data(), 1000, 2);
  m[0]->abort(AbortKind::Mismatch, "rank 0 saw a count mismatch");
  EXPECT_THROW(r0->wait(soon()), Mismatch);
  try {
    r1->wait(soon());
    ADD_FAILURE() << "no error";
  } catch (const Mismatch& e) {
    EXPECT_NE(std::string(e.what()).find("count mismatch"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(m[0]->pair(1).failed());
  EXPECT_TRUE(m[1]->pair(0).failed());
  // Future requests fail too; other pairs of rank 1 are unaffected.
  EXPECT_THROW(m[1]->pair(0).isend(buf.data(), 10, 3)->wait(soon()), Mismatch);
  std::vector<uint8_t> other(10);
  auto ok_r = m[2]->pair(1).irecv(other.data(), 10, 4);
  m[1]->pair(2).isend(buf.data(), 10, 4)->wait(soon());
  ok_r->wait(soon());
  for (int i = 0; i < 200 && callbacks.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(callbacks.load(), 1);
}

TEST_P(MeshTest, PeerShutdownFailsPendingWithPeerLost) {
  auto m = connect(2);
  std::vector<uint8_t> buf(1 << 20);
  auto r = m[1]->pair(0).irecv(buf.data(), buf.size(), 1);
  m[0].reset();  // rank 0 leaves
  try {
    r->wait(soon());
    ADD_FAILURE() << "receive completed";
  } catch (const PeerLost& e) {
    EXPECT_EQ(e.peer(), 0);
  }
  EXPECT_THROW(m[1]->pair(0).irecv(buf.data(), 10, 2)->wait(soon()), PeerLost);
}

// A peer that sends and then leaves: what it sent stays receivable, whether
// the receive was posted before it left or after; only receives that no
// message can satisfy fail with PeerLost.
TEST_P(MeshTest, MessagesSentBeforeThePeerLeftStayReceivable) {
  auto m = connect(2);
  const std::vector<size_t> sizes = {1, 100, 10000, 30000};  // all fit in the shm ring together
  std::vector<std::vector<uint8_t>> out(sizes.size()), in(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    out[i].resize(sizes[i]);
    in[i].resize(sizes[i]);
    fill_pattern(out[i].data(), sizes[i], 40 + i);
  }
  auto early = m[1]->pair(0).irecv(in[0].data(), sizes[0], 0);
  uint8_t nothing[4];
  auto never = m[1]->pair(0).irecv(nothing, 4, 99);
  for (size_t i = 0; i < sizes.size(); ++i) m[0]->pair(1).isend(out[i].data(), sizes[i], i)->wait(soon());
  m[0].reset();  // rank 0 leaves right after its sends completed
  early->wait(soon());
  EXPECT_THROW(never->wait(soon()), PeerLost);
  for (size_t i = 1; i < sizes.size(); ++i) m[1]->pair(0).irecv(in[i].data(), sizes[i], i)->wait(soon());
  for (size_t i = 0; i < sizes.size(); ++i) EXPECT_TRUE(check_pattern(in[i].data(), sizes[i], 40 + i)) << i;
  EXPECT_THROW(m[1]->pair(0).irecv(nothing, 4, 100)->wait(soon()), PeerLost);
  EXPECT_THROW(m[1]->pair(0).isend(nothing, 4, 100)->wait(soon()), PeerLost);
}

TEST_P(MeshTest, DestroyingTheMeshFailsItsPendingRequests) {
  // Small socket buffers, so that the kernel cannot take the whole send.
  auto m = connect(2, [](MeshOptions& o) { o.socket_buffer_bytes = 64 << 10; });
  std::vector<uint8_t> big(8 << 20), small(16);
  auto r = m[0]->pair(1).irecv(small.data(), small.size(), 1);
  auto s = m[0]->pair(1).isend(big.data(), big.size(), 2);  // nobody receives it
  m[0].reset();
  EXPECT_THROW(r->wait(soon()), Aborted);
  EXPECT_THROW(s->wait(soon()), Aborted);
}

TEST_P(MeshTest, WaitHonoursItsDeadline) {
  auto m = connect(2);
  uint8_t b[8];
  auto r = m[1]->pair(0).irecv(b, 8, 1);
  EXPECT_THROW(r->wait(Deadline::in_seconds(0.05)), Timeout);
}

INSTANTIATE_TEST_SUITE_P(Transports, MeshTest, ::testing::ValuesIn(all_variants()),
                         [](const auto& info) { return info.param.name; });

TEST(Mesh, WorldOfOne) {
  MemStore store;
  MeshOptions o;
  auto m = connect_mesh(store, o);
  EXPECT_EQ(m->size(), 1);
  EXPECT_EQ(m->local_ranks(), std::vector<int>{0});
  EXPECT_THROW(m->pair(0), Error);
}

TEST(Mesh, AutoUsesShmOnlyBetweenRanksOfOneHost) {
  auto m = connect_threads(3, [](int r) {
    MeshOptions o;
    o.rank = r;
    o.size = 3;
    o.host_id = r < 2 ? "hostA" : "hostB";
    return o;
  });
  EXPECT_STREQ(m[0]->pair(1).kind(), "shm");
  EXPECT_STREQ(m[0]->pair(2).kind(), "tcp");
  EXPECT_STREQ(m[2]->pair(1).kind(), "tcp");
  EXPECT_EQ(m[0]->local_ranks(), (std::vector<int>{0, 1}));
  EXPECT_EQ(m[2]->local_ranks(), (std::vector<int>{2}));
  EXPECT_EQ(m[1]->host_ids(), (std::vector<std::string>{"hostA", "hostA", "hostB"}));
  // A mixed mesh: TCP waits also drive shared memory.
  ASSERT_NE(m[0]->progress(), nullptr);
  std::vector<uint8_t> a(2 << 20), b(2 << 20);
  fill_pattern(a.data(), a.size(), 3);
  run_threads(3, [&](int r) {
    if (r == 0) m[0]->pair(2).isend(a.data(), a.size(), 1)->wait(soon());
    if (r == 2) {
      std::vector<uint8_t> tmp(a.size());
      m[2]->pair(0).irecv(tmp.data(), tmp.size(), 1)->wait(soon());
      m[2]->pair(1).isend(tmp.data(), tmp.size(), 2)->wait(soon());
    }
    if (r == 1) m[1]->pair(2).irecv(b.data(), b.size(), 2)->wait(soon());
  });
  EXPECT_TRUE(check_pattern(b.data(), b.size(), 3));
}

TEST(Mesh, ShmAcrossHostsIsRefused) {
  EXPECT_THROW(connect_threads(2,
                               [](int r) {
                                 MeshOptions o;
                                 o.rank = r;
                                 o.size = 2;
                                 o.transport = TransportChoice::Shm;
                                 o.host_id = r ? "b" : "a";
                                 o.connect_timeout_s = 10;
                                 return o;
                               }),
               ConfigError);
}

TEST(Mesh, MissingRanksAreNamedOnTimeout) {
  MemStore store;
  MeshOptions o;
  o.rank = 1;
  o.size = 4;
  o.connect_timeout_s = 0.3;
  try {
    connect_mesh(store, o);
    FAIL() << "connected without peers";
  } catch (const Timeout& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("0, 2, 3"), std::string::npos) << w;
  }
}

TEST(Mesh, NonLoopbackBindWithoutSecretIsRefused) {
  MemStore store;
  MeshOptions o;
  o.size = 2;
  o.bind_addr = "10.1.2.3";
  EXPECT_THROW(connect_mesh(store, o), ConfigError);
}

TEST(Mesh, BadOptionsAreConfigErrors) {
  MemStore store;
  MeshOptions o;
  o.size = 2;
  o.streams_per_peer = 0;
  EXPECT_THROW(connect_mesh(store, o), ConfigError);
  o.streams_per_peer = 1;
  o.shm_ring_bytes = 100000;
  EXPECT_THROW(connect_mesh(store, o), ConfigError);
  o.shm_ring_bytes = 1 << 20;
  o.rank = 2;
  EXPECT_THROW(connect_mesh(store, o), ConfigError);
}

}  // namespace
}  // namespace braid::net::test
