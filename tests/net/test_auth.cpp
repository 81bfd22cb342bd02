// Job-secret handshake over socket pairs, and secret loading.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "core/error.hpp"
#include "net/auth.hpp"
#include "net/socket.hpp"
#include "tests/net/mesh_harness.hpp"

namespace braid::net {
namespace {

struct Outcome {
  std::exception_ptr client, server;
};

Outcome handshake(const std::string& client_secret, const std::string& server_secret) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd a(sv[0]), b(sv[1]);
  Outcome o;
  std::thread srv([&] {
    try {
      auth_server(b.get(), server_secret, Deadline::in_seconds(5), "test client");
    } catch (...) {
      o.server = std::current_exception();
    }
    b.reset();  // a refused client sees the connection close
  });
  try {
    auth_client(a.get(), client_secret, Deadline::in_seconds(5), "test server");
  } catch (...) {
    o.client = std::current_exception();
  }
  srv.join();
  return o;
}

TEST(Auth, SameSecretIsAccepted) {
  Outcome o = handshake("s3cret", "s3cret");
  EXPECT_FALSE(o.client);
  EXPECT_FALSE(o.server);
}

TEST(Auth, NoSecretOnBothSidesIsAccepted) {
  Outcome o = handshake("", "");
  EXPECT_FALSE(o.client);
  EXPECT_FALSE(o.server);
}

TEST(Auth, WrongSecretIsRefusedOnBothSides) {
  Outcome o = handshake("guess", "s3cret");
  ASSERT_TRUE(o.client);
  ASSERT_TRUE(o.server);
  EXPECT_THROW(std::rethrow_exception(o.client), AuthError);
  EXPECT_THROW(std::rethrow_exception(o.server), AuthError);
}

TEST(Auth, MissingSecretIsRefused) {
  Outcome o = handshake("", "s3cret");
  EXPECT_THROW(std::rethrow_exception(o.client), AuthError);
  EXPECT_THROW(std::rethrow_exception(o.server), AuthError);
  o = handshake("s3cret", "");
  EXPECT_THROW(std::rethrow_exception(o.client), AuthError);
  EXPECT_THROW(std::rethrow_exception(o.server), AuthError);
}

TEST(Auth, GarbageClientIsRefused) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd a(sv[0]), b(sv[1]);
  std::string junk(64, 'x');
  ASSERT_EQ(write(a.get(), junk.data(), junk.size()), 64);
  EXPECT_THROW(auth_server(b.get(), "s", Deadline::in_seconds(5)), AuthError);
}

TEST(Auth, SilentPeerTimesOut) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd a(sv[0]), b(sv[1]);
  EXPECT_THROW(auth_server(b.get(), "s", Deadline::in_seconds(0.1)), Timeout);
}

class SecretEnv : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("BRAID_JOB_SECRET");
    unsetenv("BRAID_JOB_SECRET_FILE");
  }
  void TearDown() override { SetUp(); }
};

TEST_F(SecretEnv, Precedence) {
  EXPECT_EQ(load_job_secret(""), "");
  EXPECT_EQ(load_job_secret("given"), "given");
  std::string dir = test::temp_dir("secret");
  std::string file = dir + "/secret";
  {
    std::ofstream(file) << "from-file\n";
  }
  chmod(file.c_str(), 0600);
  setenv("BRAID_JOB_SECRET_FILE", file.c_str(), 1);
  EXPECT_EQ(load_job_secret(""), "from-file");
  setenv("BRAID_JOB_SECRET", "from-env", 1);
  EXPECT_EQ(load_job_secret(""), "from-env");
  EXPECT_EQ(load_job_secret("given"), "given");
}

TEST_F(SecretEnv, BadFilesAreConfigErrors) {
  setenv("BRAID_JOB_SECRET_FILE", "/nonexistent/braid-secret", 1);
  EXPECT_THROW(load_job_secret(""), ConfigError);
  std::string file = test::temp_dir("secret") + "/empty";
  {
    std::ofstream(file) << "\n";
  }
  setenv("BRAID_JOB_SECRET_FILE", file.c_str(), 1);
  EXPECT_THROW(load_job_secret(""), ConfigError);
}

}  // namespace
}  // namespace braid::net
