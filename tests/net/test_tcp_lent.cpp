// Lent TCP sends (TcpPair::isend_lent: vmsplice + splice of the caller's
// pages): byte-exact delivery, the stream's order kept when lent and copied
// frames interleave (the pipe must drain before anything else is written),
// striping over several streams, unaligned buffers and odd sizes, folding
// receives, and the fallbacks (small messages, fault injection). The sender keeps every buffer untouched until the peer
// has confirmed receipt, as the lending contract requires.
#include <gtest/gtest.h>

#include <barrier>
#include <cstring>
#include <vector>

#include "mesh_harness.hpp"
#include "net/tcp_pair.hpp"

namespace braid::net::test {
namespace {

Deadline soon() { return Deadline::in_seconds(30); }

struct LentCase {
  std::string name;
  int streams;
};

class TcpLent : public ::testing::TestWithParam<LentCase> {};

// Both ranks send a mixed sequence at once: lent and copied messages of
// every size class, some from unaligned addresses, half of the receives
// posted before the peer sends and half after, plus folding receives.
TEST_P(TcpLent, MixedLentAndCopiedSendsArriveExactAndInOrder) {
  const LentCase lc = GetParam();
  auto meshes = connect_threads(2, [&](int r) {
    MeshOptions o = options_for({"tcp", TransportChoice::Tcp, lc.streams}, r, 2);
    return o;
  });
  const std::vector<size_t> sizes = {0,         1,         4096,      (64 << 10) + 1, 128 << 10,   (128 << 10) + 3,
                                     (1 << 20), 1000003,   (3 << 20) + 4093, 77,     (5 << 20) + 7, 256 << 10};
  std::barrier sync(2);
  run_threads(2, [&](int r) {
    auto* tcp = dynamic_cast<TcpPair*>(&meshes[static_cast<size_t>(r)]->pair(1 - r));
    ASSERT_NE(tcp, nullptr);
    const size_t k = sizes.size();
    std::vector<std::vector<uint8_t>> out(k), in(k);
    std::vector<RequestPtr> sends, recvs(k);
    for (size_t i = 0; i < k; ++i) {
      const size_t skew = i % 3;  // unaligned starts
      out[i].resize(sizes[i] + skew);
      fill_pattern(out[i].data() + skew, sizes[i], 1000 * i + static_cast<size_t>(r));
      in[i].assign(sizes[i] + 1, 0xEE);
      if (i % 2 == 0) recvs[i] = tcp->irecv(in[i].data(), sizes[i], 500 + i, 9);
    }
    sync.arrive_and_wait();
    for (size_t i = 0; i < k; ++i) {
      const uint8_t* src = out[i].data() + i % 3;
      sends.push_back(i % 4 == 3 ? tcp->isend(src, sizes[i], 500 + i, 9) : tcp->isend_lent(src, sizes[i], 500 + i, 9));
    }
    for (size_t i = 1; i < k; i += 2) recvs[i] = tcp->irecv(in[i].data(), sizes[i], 500 + i, 9);
    for (auto& s : sends) s->wait(soon());
    for (size_t i = 0; i < k; ++i) {
      recvs[i]->wait(soon());
      EXPECT_TRUE(check_pattern(in[i].data(), sizes[i], 1000 * i + static_cast<size_t>(1 - r))) << "size " << sizes[i];
      EXPECT_EQ(in[i][sizes[i]], 0xEE) << "wrote past the end, size " << sizes[i];
    }
    // Folding receive of a lent message.
    const size_t nf = (3 << 20) / 4 + 5;
    std::vector<float> mine(nf), theirs(nf), got(nf, -1.0f);
    for (size_t i = 0; i < nf; ++i) {
      mine[i] = static_cast<float>(i % 1000) + static_cast<float>(r);
      theirs[i] = static_cast<float>(i % 1000) + static_cast<float>(1 - r);
    }
    Combiner sum;
    sum.elem_size = 4;
    sum.fn = [](void* dst, const void* local, const void* inc, size_t n) {
      for (size_t i = 0; i < n / 4; ++i)
        static_cast<float*>(dst)[i] = static_cast<const float*>(local)[i] + static_cast<const float*>(inc)[i];
    };
    RequestPtr rr = tcp->irecv_reduce(got.data(), mine.data(), nf * 4, 900, sum, 3);
    RequestPtr ss = tcp->isend_lent(mine.data(), nf * 4, 900, 3);
    ss->wait(soon());
    rr->wait(soon());
    size_t wrong = 0;
    for (size_t i = 0; i < nf; ++i) wrong += got[i] != mine[i] + theirs[i];
    EXPECT_EQ(wrong, 0u);
    sync.arrive_and_wait();  // the peer has read everything: buffers may go
  });
  auto st = meshes[0]->pair(1).stats();
  EXPECT_EQ(st.messages_sent, sizes.size() + 1);
  EXPECT_EQ(st.messages_received, sizes.size() + 1);
}

// With fault injection the pair meters bytes through sendmsg: lent sends are
// copied, and the faults still apply (a latency holds them back).
TEST(TcpLentFaults, LatencyFaultStillDelaysLentSends) {
  auto meshes = connect_threads(2, [&](int r) {
    MeshOptions o = options_for({"tcp", TransportChoice::Tcp, 1}, r, 2);
    o.faults = FaultSpec::parse("latency=100ms,ranks=0");
    return o;
  });
  std::vector<uint8_t> out(1 << 20), in(1 << 20);
  fill_pattern(out.data(), out.size(), 5);
  auto* tcp0 = dynamic_cast<TcpPair*>(&meshes[0]->pair(1));
  ASSERT_NE(tcp0, nullptr);
  RequestPtr rq = meshes[1]->pair(0).irecv(in.data(), in.size(), 1, 0);
  const int64_t t0 = now_ns();
  RequestPtr sq = tcp0->isend_lent(out.data(), out.size(), 1, 0);
  rq->wait(soon());
  sq->wait(soon());
  EXPECT_GE(now_ns() - t0, 90'000'000);  // the fault's latency, not a speed assertion
  EXPECT_TRUE(check_pattern(in.data(), in.size(), 5));
}

INSTANTIATE_TEST_SUITE_P(Net, TcpLent,
                         ::testing::Values(LentCase{"one_stream", 1}, LentCase{"four_streams", 4}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace braid::net::test
