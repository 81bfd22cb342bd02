#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "core/error.hpp"
#include "net/tcp_store.hpp"

using namespace braid;
using namespace braid::net;

TEST(TcpStore, SetGetAddTryGetErase) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStore a({"127.0.0.1", server.port()});
  TcpStore b({"127.0.0.1", server.port()});
  a.set("k", "v1");
  EXPECT_EQ(b.get("k", Deadline::in_seconds(5)), "v1");
  EXPECT_EQ(a.add("n", 5), 5);
  EXPECT_EQ(b.add("n", -2), 3);
  std::string v;
  EXPECT_TRUE(b.try_get("n", v));
  EXPECT_EQ(v, "3");
  b.erase("n");
  EXPECT_FALSE(a.try_get("n", v));
  std::string big(3 << 20, 'x');
  a.set("big", big);
  EXPECT_EQ(b.get("big", Deadline::in_seconds(5)), big);
}

TEST(TcpStore, GetWaitsForAKeySetLater) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStore a({"127.0.0.1", server.port()});
  std::thread t([&] {
    TcpStore b({"127.0.0.1", server.port()});
    usleep(100'000);
    b.set("late", "here");
  });
  EXPECT_EQ(a.get("late", Deadline::in_seconds(10)), "here");
  t.join();
}

TEST(TcpStore, GetTimesOutNamingTheKeyAndTheClientRecovers) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStore a({"127.0.0.1", server.port()});
  try {
    a.get("never", Deadline::in_seconds(0.2));
    FAIL() << "no timeout";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find("never"), std::string::npos);
  }
  // The parked GET must not be mistaken for the answer to the next request.
  a.set("x", "1");
  EXPECT_EQ(a.get("x", Deadline::in_seconds(5)), "1");
  a.set("never", "now");
  EXPECT_EQ(a.get("x", Deadline::in_seconds(5)), "1");
}

TEST(TcpStore, ServerDropsMalformedClientsAndKeepsServing) {
  TcpStoreServer server("127.0.0.1", 0);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server.port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  // A length prefix of 4 GiB: must be refused, not allocated.
  const unsigned char bad[] = {0xff, 0xff, 0xff, 0xff, 1, 2, 3};
  ASSERT_EQ(write(fd, bad, sizeof bad), static_cast<ssize_t>(sizeof bad));
  char c;
  EXPECT_EQ(read(fd, &c, 1), 0);  // server closed the connection
  close(fd);
  TcpStore ok({"127.0.0.1", server.port()});
  ok.set("still", "alive");
  EXPECT_EQ(ok.get("still", Deadline::in_seconds(5)), "alive");
}

TEST(TcpStore, ClientFailsClearlyWithoutAServer) {
  TcpStoreServer server("127.0.0.1", 0);
  uint16_t port = server.port();
  server.stop();
  try {
    TcpStore s({"127.0.0.1", port}, "", 0.3);
    FAIL() << "connected to nothing";
  } catch (const NetError& e) {
    EXPECT_NE(std::string(e.what()).find("rendezvous store"), std::string::npos);
  }
}

TEST(HostPort, ParsesAndRejects) {
  auto hp = HostPort::parse("node0:29500");
  EXPECT_EQ(hp.host, "node0");
  EXPECT_EQ(hp.port, 29500);
  EXPECT_THROW(HostPort::parse("node0"), ConfigError);
  EXPECT_THROW(HostPort::parse("node0:99999"), ConfigError);
  EXPECT_THROW(HostPort::parse(":1"), ConfigError);
}
