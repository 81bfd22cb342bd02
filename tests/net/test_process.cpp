// Ranks as forked processes (FileStore rendezvous), peers killed mid-transfer,
// wrong secrets, and a hand-made peer that sends malformed frames.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.hpp"
#include "net/auth.hpp"
#include "net/file_store.hpp"
#include "net/frame.hpp"
#include "net/mesh.hpp"
#include "net/socket.hpp"
#include "tests/net/mesh_harness.hpp"

namespace braid::net::test {
namespace {

Deadline soon() { return Deadline::in_seconds(60); }

class ProcessTest : public ::testing::TestWithParam<Variant> {};

// Two processes exchange a sweep of sizes in both directions and check them.
TEST_P(ProcessTest, ExchangeAcrossProcesses) {
  std::string dir = temp_dir("proc");
  Variant v = GetParam();
  auto pids = fork_ranks(2, [&](int r) {
    FileStore store(dir);
    MeshOptions o = options_for(v, r, 2);
    o.shm_ring_bytes = 64 << 10;
    auto mesh = connect_mesh(store, o);
    Pair& p = mesh->pair(1 - r);
    int bad = 0;
    size_t i = 0;
    for (size_t n : {size_t{0}, size_t{1}, size_t{13}, size_t{4096}, size_t{65535}, size_t{65536}, size_t{1000003},
                     size_t{9 << 20}}) {
      std::vector<uint8_t> out(n), in(n);
      fill_pattern(out.data(), n, i * 2 + r);
      auto rq = p.irecv(in.data(), n, i);
      auto sq = p.isend(out.data(), n, i);
      sq->wait(soon());
      rq->wait(soon());
      if (!check_pattern(in.data(), n, i * 2 + (1 - r))) {
        std::fprintf(stderr, "rank %d: size %zu corrupted\n", r, n);
        bad++;
      }
      ++i;
    }
    if (std::string(p.kind()) != (v.transport == TransportChoice::Shm ? "shm" : "tcp")) bad++;
    return bad ? 1 : 0;
  });
  auto codes = wait_children(pids);
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

// The peer is SIGKILLed while a large message is half way: the survivor's
// receive fails with PeerLost naming it (not Timeout at the deadline), and
// the mesh's failure callback runs.
TEST_P(ProcessTest, SigkilledPeerIsReportedAsPeerLost) {
  std::string dir = temp_dir("kill");
  Variant v = GetParam();
  const size_t n = 256 << 20;
  // Rank 1 sends slowly (rate cap) so that the kill lands mid-message.
  auto pids = fork_ranks(1, [&](int) {
    FileStore store(dir);
    MeshOptions o = options_for(v, 1, 2);
    o.faults = FaultSpec::parse("rate=400mbit");
    auto mesh = connect_mesh(store, o);
    std::vector<uint8_t> big(n, 7);
    mesh->pair(0).isend(big.data(), n, 1)->wait(soon());
    return 0;
  });
  FileStore store(dir);
  MeshOptions o = options_for(v, 0, 2);
  auto mesh = connect_mesh(store, o);
  std::atomic<int> reported{-1};
  mesh->on_pair_failure([&](int peer, std::exception_ptr) { reported = peer; });
  std::vector<uint8_t> big(n);
  auto r = mesh->pair(1).irecv(big.data(), n, 1);
  // Wait until some bytes have arrived, then kill the sender.
  while (mesh->pair(1).stats().bytes_received < (1 << 20) && !r->done()) {
    if (mesh->progress()) mesh->progress()->progress();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_FALSE(r->done());
  kill(pids[0], SIGKILL);
  try {
    r->wait(Deadline::in_seconds(120));
    ADD_FAILURE() << "the receive completed";
  } catch (const PeerLost& e) {
    EXPECT_EQ(e.peer(), 1);
  }
  for (int i = 0; i < 500 && reported.load() < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(reported.load(), 1);
  EXPECT_TRUE(mesh->pair(1).failed());
  EXPECT_THROW(mesh->pair(1).isend(big.data(), 10, 2)->wait(soon()), PeerLost);
  wait_children(pids);
}

INSTANTIATE_TEST_SUITE_P(Transports, ProcessTest, ::testing::ValuesIn(all_variants()),
                         [](const auto& info) { return info.param.name; });

// A rank with the wrong secret is refused by the others, and the refusal is
// logged by the rank it tried to reach.
TEST(Process, WrongSecretIsRefusedAndLogged) {
  std::string dir = temp_dir("secret");
  auto pids = fork_ranks(1, [&](int) {
    FileStore store(dir);
    MeshOptions o = options_for(all_variants()[0], 1, 2);
    o.secret = "not-the-secret";
    o.connect_timeout_s = 20;
    try {
      connect_mesh(store, o);
    } catch (const AuthError& e) {
      return 42;  // refused, as it should be
    }
    return 1;
  });
  FileStore store(dir);
  MeshOptions o = options_for(all_variants()[0], 0, 2);
  o.secret = "the-job-secret";
  o.connect_timeout_s = 3;
  testing::internal::CaptureStderr();
  std::string what;
  try {
    connect_mesh(store, o);
  } catch (const Timeout& e) {
    what = e.what();
  }
  std::string log = testing::internal::GetCapturedStderr();
  auto codes = wait_children(pids);
  EXPECT_EQ(codes[0], 42) << "the rank with the wrong secret was not refused with AuthError";
  EXPECT_NE(what.find("ranks 1 never connected"), std::string::npos) << what;
  EXPECT_NE(what.find("job secret"), std::string::npos) << what;
  EXPECT_NE(log.find("refused a connection"), std::string::npos) << log;
  EXPECT_NE(log.find("wrong job secret"), std::string::npos) << log;
}

// --- a hand-made peer, to send what a real rank never would ---------------

struct FakePeer {
  Fd fd;
  // Joins `store` as rank 1 of 2 (transport tcp) and completes the handshake
  // with rank 0.
  void join(Store& store, const std::string& secret, uint32_t epoch = 0) {
    uint16_t port = 0;
    Fd listener = listen_tcp("127.0.0.1", 0, &port);
    std::string prefix = "braid/mesh/world/" + std::to_string(epoch) + "/";
    store.set(prefix + "1", "127.0.0.1:" + std::to_string(port) + "\ntesthost\n1\ntcp");
    std::string entry = store.get(prefix + "0", Deadline::in_seconds(30));
    std::string host;
    uint16_t p0;
    split_host_port(entry.substr(0, entry.find('\n')), &host, &p0);
    fd = connect_tcp(host, p0, Deadline::in_seconds(30), "rank 0");
    auth_client(fd.get(), secret, Deadline::in_seconds(30), "rank 0");
    Hello h;
    h.group = "world";
    h.epoch = epoch;
    h.world_size = 2;
    h.from_rank = 1;
    h.to_rank = 0;
    h.host_id = "testhost";
    auto payload = encode_hello(h);
    FrameHeader fh;
    fh.kind = FrameKind::Hello;
    fh.epoch = epoch;
    fh.length = static_cast<uint32_t>(payload.size());
    fh.total = fh.length;
    send_header(fh);
    send_all(fd.get(), payload.data(), payload.size(), Deadline::in_seconds(5), "rank 0");
    uint8_t ack[kFrameHeaderBytes];
    recv_exact(fd.get(), ack, sizeof ack, Deadline::in_seconds(30), "rank 0");
    FrameDecode d = decode_frame_header(ack, sizeof ack, 0, {});
    ASSERT_EQ(d.status, FrameDecode::Ok);
    std::vector<uint8_t> body(d.header.length);
    recv_exact(fd.get(), body.data(), body.size(), Deadline::in_seconds(5), "rank 0");
    std::string err;
    auto a = decode_hello_ack(body.data(), body.size(), &err);
    ASSERT_TRUE(a && a->ok) << err;
  }
  void send_header(const FrameHeader& h) {
    uint8_t b[kFrameHeaderBytes];
    encode_frame_header(h, b);
    send_all(fd.get(), b, sizeof b, Deadline::in_seconds(5), "rank 0");
  }
  void send_bytes(const void* p, size_t n) { send_all(fd.get(), p, n, Deadline::in_seconds(5), "rank 0"); }
};

struct RealRankZero {
  MemStore store;
  std::shared_ptr<Mesh> mesh;
  FakePeer fake;
  void start() {
    std::thread t([&] {
      MeshOptions o = options_for(all_variants()[0], 0, 2);
      mesh = connect_mesh(store, o);
    });
    fake.join(store, "");
    t.join();
  }
};

void expect_protocol_error_naming_rank1(RequestPtr r) {
  try {
    r->wait(soon());
    ADD_FAILURE() << "completed";
  } catch (const ProtocolError& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("rank 1"), std::string::npos) << w;
    EXPECT_NE(w.find("127.0.0.1"), std::string::npos) << w;
  }
}

TEST(Protocol, GarbageClosesTheConnectionWithProtocolError) {
  RealRankZero z;
  z.start();
  std::vector<uint8_t> buf(64);
  auto r = z.mesh->pair(1).irecv(buf.data(), 64, 1);
  std::string junk(kFrameHeaderBytes, 'J');
  z.fake.send_bytes(junk.data(), junk.size());
  expect_protocol_error_naming_rank1(r);
  EXPECT_TRUE(z.mesh->pair(1).failed());
  // The connection is closed: the fake sees EOF.
  char c;
  EXPECT_THROW(recv_exact(z.fake.fd.get(), &c, 1, Deadline::in_seconds(10), "rank 0"), NetError);
}

TEST(Protocol, OversizeFrameIsRefusedBeforeAllocating) {
  RealRankZero z;
  z.start();
  std::vector<uint8_t> buf(64);
  auto r = z.mesh->pair(1).irecv(buf.data(), 64, 1);
  FrameHeader h;
  h.kind = FrameKind::Data;
  h.tag = 2;
  h.total = uint64_t{1} << 50;  // beyond max_message_bytes
  h.length = 1 << 20;
  z.fake.send_header(h);
  expect_protocol_error_naming_rank1(r);
}

TEST(Protocol, PieceOutsideItsMessageIsRefused) {
  RealRankZero z;
  z.start();
  std::vector<uint8_t> buf(64);
  auto r = z.mesh->pair(1).irecv(buf.data(), 64, 1);
  // A valid first piece, then a second piece that disagrees about the total.
  FrameHeader h;
  h.kind = FrameKind::Data;
  h.tag = 1;
  h.total = 64;
  h.offset = 0;
  h.length = 32;
  z.fake.send_header(h);
  z.fake.send_bytes(buf.data(), 32);
  h.total = 128;
  h.offset = 32;
  z.fake.send_header(h);
  expect_protocol_error_naming_rank1(r);
}

TEST(Protocol, StaleEpochFramesAreDropped) {
  MemStore store;
  std::shared_ptr<Mesh> mesh;
  FakePeer fake;
  std::thread t([&] {
    MeshOptions o = options_for(all_variants()[0], 0, 2);
    o.epoch = 5;
    mesh = connect_mesh(store, o);
  });
  fake.join(store, "", 5);
  t.join();
  std::vector<uint8_t> out(100), in(100);
  fill_pattern(out.data(), 100, 9);
  auto r = mesh->pair(1).irecv(in.data(), 100, 3);
  FrameHeader h;
  h.kind = FrameKind::Data;
  h.tag = 3;
  h.total = h.length = 100;
  h.epoch = 4;  // an older membership's frame: dropped
  fake.send_header(h);
  std::vector<uint8_t> junk(100, 0xAB);
  fake.send_bytes(junk.data(), 100);
  h.epoch = 5;
  fake.send_header(h);
  fake.send_bytes(out.data(), 100);
  r->wait(soon());
  EXPECT_TRUE(check_pattern(in.data(), 100, 9));
  EXPECT_FALSE(mesh->pair(1).failed());
}

TEST(Protocol, WrongEpochHelloIsRefused) {
  MemStore store;
  std::string what;
  std::thread t([&] {
    MeshOptions o = options_for(all_variants()[0], 0, 2);
    o.epoch = 2;
    o.connect_timeout_s = 3;
    try {
      connect_mesh(store, o);
    } catch (const Timeout& e) {
      what = e.what();
    }
  });
  // The fake publishes under epoch 2 but says epoch 1 in its HELLO.
  uint16_t port = 0;
  Fd listener = listen_tcp("127.0.0.1", 0, &port);
  store.set("braid/mesh/world/2/1", "127.0.0.1:" + std::to_string(port) + "\ntesthost\n1\ntcp");
  std::string entry = store.get("braid/mesh/world/2/0", Deadline::in_seconds(30));
  std::string host;
  uint16_t p0;
  split_host_port(entry.substr(0, entry.find('\n')), &host, &p0);
  FakePeer fake;
  fake.fd = connect_tcp(host, p0, Deadline::in_seconds(30), "rank 0");
  auth_client(fake.fd.get(), "", Deadline::in_seconds(30), "rank 0");
  Hello h;
  h.group = "world";
  h.epoch = 1;
  h.world_size = 2;
  h.from_rank = 1;
  h.to_rank = 0;
  h.host_id = "testhost";
  auto payload = encode_hello(h);
  FrameHeader fh;
  fh.kind = FrameKind::Hello;
  fh.length = static_cast<uint32_t>(payload.size());
  fh.total = fh.length;
  fake.send_header(fh);
  fake.send_bytes(payload.data(), payload.size());
  uint8_t ack[kFrameHeaderBytes];
  recv_exact(fake.fd.get(), ack, sizeof ack, Deadline::in_seconds(30), "rank 0");
  FrameDecode d = decode_frame_header(ack, sizeof ack, 0, {});
  ASSERT_EQ(d.status, FrameDecode::Ok);
  std::vector<uint8_t> body(d.header.length);
  recv_exact(fake.fd.get(), body.data(), body.size(), Deadline::in_seconds(5), "rank 0");
  std::string err;
  auto a = decode_hello_ack(body.data(), body.size(), &err);
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->ok);
  EXPECT_NE(a->error.find("epoch 1"), std::string::npos) << a->error;
  t.join();
  EXPECT_NE(what.find("epoch 1"), std::string::npos) << what;
}

}  // namespace
}  // namespace braid::net::test
