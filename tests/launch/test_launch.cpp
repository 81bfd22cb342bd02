// `braid launch` end to end: environment given to workers, output prefixes,
// exit codes naming failed ranks, restarts, and world detection from the
// environments of braid, mpirun and SLURM.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <optional>
#include <vector>
#include <cstdio>
#include <string>

#include "comm/bootstrap.hpp"
#include "core/error.hpp"

namespace {

struct Result {
  int code;
  std::string out;
};

Result run(const std::string& cmd) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

std::string braid_bin() { return std::string(BRAID_BINARY_DIR) + "/braid"; }

}  // namespace

TEST(Launch, GivesEveryWorkerItsRankAndPrefixesOutput) {
  auto r = run(braid_bin() + " launch -n 3 -- sh -c 'echo rank=$BRAID_RANK/$BRAID_WORLD_SIZE "
                         "local=$BRAID_LOCAL_RANK/$BRAID_LOCAL_WORLD_SIZE rdv=$BRAID_RENDEZVOUS'");
  EXPECT_EQ(r.code, 0) << r.out;
  for (int i = 0; i < 3; ++i) {
    std::string want = "[r" + std::to_string(i) + "] rank=" + std::to_string(i) + "/3 local=" +
                       std::to_string(i) + "/3 rdv=127.0.0.1:";
    EXPECT_NE(r.out.find(want), std::string::npos) << r.out;
  }
}

TEST(Launch, ExitsNonZeroAndNamesTheFailedRanks) {
  auto r = run(braid_bin() + " launch -n 3 -- sh -c 'exit $BRAID_RANK'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("rank 1 exited with code 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 2 exited with code 2"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("rank 0 exited"), std::string::npos) << r.out;
}

TEST(Launch, NamesAWorkerKilledBySignalAndStopsTheOthers) {
  auto r = run(braid_bin() + " launch -n 2 --grace 0.5 -- sh -c "
                         "'if [ $BRAID_RANK = 1 ]; then kill -9 $$; fi; sleep 60'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("rank 1 was killed by signal 9 (SIGKILL)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 0 was terminated by the launcher"), std::string::npos) << r.out;
}

TEST(Launch, RestartsAFailedWorkerWithItsRestartCount) {
  auto r = run(braid_bin() + " launch -n 1 --max-restarts 2 -- sh -c "
                         "'echo attempt $BRAID_RESTART_COUNT; test $BRAID_RESTART_COUNT = 2'");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("attempt 0"), std::string::npos);
  EXPECT_NE(r.out.find("attempt 2"), std::string::npos);
  EXPECT_NE(r.out.find("restarting rank 0 (restart 2 of 2)"), std::string::npos) << r.out;
}

TEST(Launch, BindCoresPinsEachWorkerToItsOwnCpu) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) GTEST_SKIP() << "needs 2 CPUs";
  // The launcher runs on CPUs 0-1; each of its 2 workers gets one of them.
  const std::string show = " -- sh -c 'grep Cpus_allowed_list /proc/self/status'";
  auto r = run("taskset -c 0,1 " + braid_bin() + " launch -n 2 --bind cores" + show);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[r0] Cpus_allowed_list:\t0\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[r1] Cpus_allowed_list:\t1\n"), std::string::npos) << r.out;
  // By default, and with more workers than CPUs, workers inherit the launcher's CPUs.
  r = run("taskset -c 0,1 " + braid_bin() + " launch -n 2" + show);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[r1] Cpus_allowed_list:\t0-1\n"), std::string::npos) << r.out;
  r = run("taskset -c 0,1 " + braid_bin() + " launch -n 3 --bind cores" + show);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[r2] Cpus_allowed_list:\t0-1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("not pinned"), std::string::npos) << r.out;
}

TEST(Launch, RejectsBadArguments) {
  auto r = run(braid_bin() + " launch -n 0 -- true");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--nproc must be at least 1"), std::string::npos) << r.out;
  r = run("env -u BRAID_JOB_SECRET " + braid_bin() + " launch -n 1 --nnodes 2 --rendezvous 127.0.0.1:1 -- true");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("job secret"), std::string::npos) << r.out;
  r = run(braid_bin() + " launch -n 1 -- /nonexistent/program");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("cannot run '/nonexistent/program'"), std::string::npos) << r.out;
}

namespace {
// Sets environment variables for one test and restores them after.
class EnvGuard {
 public:
  void set(const char* k, const char* v) {
    const char* old = getenv(k);
    saved_.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
    setenv(k, v, 1);
  }
  void unset(const char* k) {
    const char* old = getenv(k);
    saved_.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
    unsetenv(k);
  }
  ~EnvGuard() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) setenv(it->first.c_str(), it->second->c_str(), 1);
      else unsetenv(it->first.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};
const char* kAll[] = {"BRAID_RANK", "BRAID_WORLD_SIZE", "BRAID_RENDEZVOUS", "OMPI_COMM_WORLD_RANK",
                      "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "MASTER_ADDR", "MASTER_PORT"};
}  // namespace

TEST(DetectWorld, SingleProcessWithoutLauncher) {
  EnvGuard g;
  for (auto k : kAll) g.unset(k);
  auto w = braid::comm::detect_world();
  EXPECT_EQ(w.launcher, "single");
  EXPECT_EQ(w.size, 1);
}

TEST(DetectWorld, FromMpirun) {
  EnvGuard g;
  for (auto k : kAll) g.unset(k);
  g.set("OMPI_COMM_WORLD_RANK", "3");
  g.set("OMPI_COMM_WORLD_SIZE", "4");
  EXPECT_THROW(braid::comm::detect_world(), braid::ConfigError);  // no rendezvous address
  g.set("BRAID_RENDEZVOUS", "node0:29500");
  auto w = braid::comm::detect_world();
  EXPECT_EQ(w.launcher, "mpirun");
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.size, 4);
  EXPECT_FALSE(w.serve_store);
}

TEST(DetectWorld, FromSlurmWithMasterAddr) {
  EnvGuard g;
  for (auto k : kAll) g.unset(k);
  g.set("SLURM_PROCID", "0");
  g.set("SLURM_NTASKS", "8");
  g.set("MASTER_ADDR", "n1");
  g.set("MASTER_PORT", "1234");
  auto w = braid::comm::detect_world();
  EXPECT_EQ(w.launcher, "slurm");
  EXPECT_EQ(w.rendezvous, "n1:1234");
  EXPECT_TRUE(w.serve_store);
}

TEST(DetectWorld, RejectsInconsistentLayouts) {
  EnvGuard g;
  for (auto k : kAll) g.unset(k);
  g.set("BRAID_RANK", "5");
  g.set("BRAID_WORLD_SIZE", "2");
  g.set("BRAID_RENDEZVOUS", "127.0.0.1:1");
  EXPECT_THROW(braid::comm::detect_world(), braid::ConfigError);
  g.set("BRAID_RANK", "x");
  EXPECT_THROW(braid::comm::detect_world(), braid::ConfigError);
}
