// The rendezvous store's additions for the coordinator: the job-secret
// handshake on every connection and extension ops on the same port.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <vector>

#include "core/error.hpp"
#include "net/tcp_store.hpp"

using namespace braid;
using namespace braid::net;

TEST(StoreAuth, TheRightSecretIsAcceptedWrongOrMissingOnesAreRefused) {
  TcpStoreServer server("127.0.0.1", 0, "s3cret");
  TcpStore good({"127.0.0.1", server.port()}, "s3cret", 5);
  good.set("k", "v");
  EXPECT_EQ(good.get("k", Deadline::in_seconds(5)), "v");
  // Refusals are immediate AuthErrors, not retried until the connect timeout.
  try {
    TcpStore bad({"127.0.0.1", server.port()}, "guess", 60);
    FAIL() << "a wrong secret was accepted";
  } catch (const AuthError& e) {
    EXPECT_NE(std::string(e.what()).find("secret"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TcpStore({"127.0.0.1", server.port()}, "", 60), AuthError);
  // A server without a secret refuses a client that has one (modes must agree).
  TcpStoreServer open("127.0.0.1", 0);
  EXPECT_THROW(TcpStore({"127.0.0.1", open.port()}, "s3cret", 60), AuthError);
  // The refused clients did not disturb the store.
  EXPECT_EQ(good.get("k", Deadline::in_seconds(5)), "v");
  EXPECT_EQ(server.key_count(), 1u);
}

TEST(StoreAuth, APeerThatNeverSpeaksIsDroppedAndOthersAreServedMeanwhile) {
  TcpStoreServer server("127.0.0.1", 0, "s3cret");
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server.port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  // While that connection hangs in its handshake, a real client gets through.
  TcpStore ok({"127.0.0.1", server.port()}, "s3cret", 5);
  ok.set("a", "1");
  EXPECT_EQ(ok.get("a", Deadline::in_seconds(5)), "1");
  close(fd);
}

TEST(StoreExtension, OpsWithoutAnExtensionAreRefusedWithAClearMessage) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStore c({"127.0.0.1", server.port()});
  bool ok = true;
  std::string r = c.request(kFirstExtensionOp + 2, "quorum", "{}", Deadline::in_seconds(5), &ok);
  EXPECT_FALSE(ok);
  EXPECT_NE(r.find("no coordinator"), std::string::npos) << r;
  EXPECT_THROW(c.request(3, "k", "v", Deadline::in_seconds(5), &ok), Error);  // not an extension op
  c.set("still", "works");
  EXPECT_EQ(c.get("still", Deadline::in_seconds(5)), "works");
}

namespace {

// Echoes every request: at once for op 40, on the next tick for op 41; counts closes.
class EchoExtension : public StoreServerExtension {
 public:
  void on_attach(TcpStoreServer& s) override { server_ = &s; }
  void on_request(uint64_t conn, uint8_t op, const std::string& key, const std::string& value) override {
    conns_.push_back(conn);
    if (op == 40) server_->reply(conn, true, key + "=" + value);
    else deferred_[conn] = key + "~" + value;
  }
  void on_close(uint64_t conn) override {
    closed_.push_back(conn);
    closes_++;
  }
  void on_tick() override {
    ticks_++;
    for (auto& [conn, v] : deferred_) server_->reply(conn, true, v);
    deferred_.clear();
  }
  int tick_interval_ms() const override { return 10; }
  std::atomic<int> ticks_{0}, closes_{0};
  std::vector<uint64_t> conns_, closed_;

 private:
  TcpStoreServer* server_ = nullptr;
  std::map<uint64_t, std::string> deferred_;
};

}  // namespace

TEST(StoreExtension, RequestsReachTheExtensionAndRepliesMayBeDeferred) {
  EchoExtension ext;
  {
    TcpStoreServer server("127.0.0.1", 0, "", &ext);
    {
      TcpStore a({"127.0.0.1", server.port()});
      TcpStore b({"127.0.0.1", server.port()});
      bool ok = false;
      EXPECT_EQ(a.request(40, "x", "1", Deadline::in_seconds(5), &ok), "x=1");
      EXPECT_TRUE(ok);
      EXPECT_EQ(b.request(41, "y", "2", Deadline::in_seconds(5), &ok), "y~2");
      EXPECT_TRUE(ok);
      // Key-value operations still work on the same connections.
      a.set("k", "v");
      EXPECT_EQ(b.get("k", Deadline::in_seconds(5)), "v");
      // A big value travels through the extension path unchanged.
      std::string big(1 << 20, 'z');
      EXPECT_EQ(a.request(40, "", big, Deadline::in_seconds(5), &ok), "=" + big);
    }
    // Both clients are gone: the extension hears about each connection.
    for (int i = 0; i < 500 && ext.closes_ < 2; ++i) usleep(10'000);
    EXPECT_EQ(ext.closes_.load(), 2);
    EXPECT_GT(ext.ticks_.load(), 0);
  }
  ASSERT_GE(ext.conns_.size(), 3u);
  EXPECT_NE(ext.conns_[0], ext.conns_[1]);  // one id per connection
}
