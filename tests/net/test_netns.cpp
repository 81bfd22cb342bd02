// Multi-host correctness: ranks in separate network namespaces (made by
// scripts/netns-hosts) talk TCP over veth links through a bridge, with the
// job secret (non-loopback addresses need one). Skips with a message when
// namespaces cannot be made (no root / no CAP_NET_ADMIN).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "net/file_store.hpp"
#include "net/mesh.hpp"
#include "tests/net/mesh_harness.hpp"

namespace braid::net::test {
namespace {

class NetnsHosts : public ::testing::Test {
 protected:
  static std::string script() { return std::string(BRAID_SOURCE_DIR) + "/scripts/netns-hosts"; }
  // Fixed by the test process (children must not use their own pid).
  static std::string prefix() {
    static const std::string p = "braid-t" + std::to_string(getpid());
    return p;
  }

  // Brings up n hosts; returns false (with `why`) if this machine cannot.
  bool up(int n, const std::string& extra, std::string* why) {
    (void)prefix();
    if (geteuid() != 0) {
      *why = "network namespaces need root";
      return false;
    }
    std::string cmd = script() + " --prefix " + prefix() + " up " + std::to_string(n) + " " + extra + " >/dev/null 2>&1";
    int rc = std::system(cmd.c_str());
    if (rc != 0) {
      *why = "scripts/netns-hosts up failed (no CAP_NET_ADMIN or iproute2 missing?)";
      return false;
    }
    hosts_up_ = true;
    return true;
  }
  void TearDown() override {
    if (hosts_up_) {
      std::string cmd = script() + " --prefix " + prefix() + " down >/dev/null 2>&1";
      EXPECT_EQ(std::system(cmd.c_str()), 0);
    }
  }
  static void enter_host(int i) {
    std::string path = "/var/run/netns/" + prefix() + "-h" + std::to_string(i);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) throw Error("cannot enter " + path);
    ::close(fd);
  }

  // n ranks, one per host, exchange a sweep of sizes with every other rank.
  void run_exchange(int n, int streams) {
    std::string dir = temp_dir("netns");
    auto pids = fork_ranks(n, [&](int r) {
      enter_host(r);
      FileStore store(dir);
      MeshOptions o;
      o.rank = r;
      o.size = n;
      o.host_id = "host" + std::to_string(r);
      o.secret = "netns-test-secret";
      o.streams_per_peer = streams;
      o.connect_timeout_s = 60;
      auto mesh = connect_mesh(store, o);
      int bad = 0;
      if (mesh->local_ranks() != std::vector<int>{r}) bad++;
      uint64_t i = 0;
      for (size_t bytes : {size_t{0}, size_t{1}, size_t{4099}, size_t{1000003}, size_t{16 << 20}}) {
        std::vector<std::vector<uint8_t>> out(n, std::vector<uint8_t>(bytes)), in(n, std::vector<uint8_t>(bytes));
        std::vector<RequestPtr> reqs;
        for (int p = 0; p < n; ++p) {
          if (p == r) continue;
          if (std::string(mesh->pair(p).kind()) != "tcp") bad++;
          fill_pattern(out[p].data(), bytes, i * 100 + r * 10 + p);
          reqs.push_back(mesh->pair(p).irecv(in[p].data(), bytes, i));
          reqs.push_back(mesh->pair(p).isend(out[p].data(), bytes, i));
        }
        for (auto& q : reqs) q->wait(Deadline::in_seconds(120));
        for (int p = 0; p < n; ++p)
          if (p != r && !check_pattern(in[p].data(), bytes, i * 100 + p * 10 + r)) bad++;
        ++i;
      }
      return bad ? 1 : 0;
    });
    auto codes = wait_children(pids);
    EXPECT_EQ(codes, std::vector<int>(static_cast<size_t>(n), 0));
  }

  bool hosts_up_ = false;
};

TEST_F(NetnsHosts, ThreeHostsExchangeOverTcp) {
  std::string why;
  if (!up(3, "", &why)) GTEST_SKIP() << "skipping multi-host test: " << why;
  run_exchange(3, 1);
}

TEST_F(NetnsHosts, ShapedLinkWithSeveralStreams) {
  std::string why;
  if (!up(2, "--rate 1gbit", &why)) GTEST_SKIP() << "skipping multi-host test: " << why;
  run_exchange(2, 4);
}

TEST_F(NetnsHosts, TwoSitesJoinedByASlowLink) {
  std::string why;
  if (!up(4, "--sites 2 --wan-rate 1gbit", &why)) GTEST_SKIP() << "skipping multi-host test: " << why;
  run_exchange(4, 2);
}

}  // namespace
}  // namespace braid::net::test
