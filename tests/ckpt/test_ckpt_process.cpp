// Checkpoints across processes: forked ranks that commit through a TcpStore,
// and saves killed with SIGKILL at each crash point (BRAID_CKPT_CRASH_AT),
// after which the previous checkpoint must be intact and resume must pick it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
#include "ckpt_test_util.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/tcp_store.hpp"

using namespace ckpt_test;

namespace {

// Runs fn in a forked child; returns the child's wait status. Exit code 0 on
// success, 1 when fn threw (the error goes to stderr).
pid_t fork_child(const std::function<void()>& fn) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    int code = 0;
    try {
      fn();
    } catch (const std::exception& e) {
      fprintf(stderr, "child %d failed: %s\n", getpid(), e.what());
      code = 1;
    }
    fflush(stderr);
    _exit(code);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
bool killed_by(int status, int sig) { return WIFSIGNALED(status) && WTERMSIG(status) == sig; }

// Rank r of `world` processes: state filled with `seed`, saved at `step`.
// `ready_key` (if given) is set in the store once the Checkpointer exists.
void save_as_process(const std::string& dir, uint16_t port, int r, int world, int64_t step, uint64_t seed,
                     double timeout_s = 30, const std::string& ready_key = "") {
  auto store = std::make_shared<net::TcpStore>(net::HostPort{"127.0.0.1", port});
  SyntheticState s = SyntheticState::make();
  s.fill(seed);
  CheckpointOptions o = options(dir);
  o.commit_timeout_s = timeout_s;
  Checkpointer ck(o, s.layout, s.held(r, world, /*sharded=*/true), r, world, store);
  if (!ready_key.empty()) store->set(ready_key, "1");
  ck.save_now(request(step, r));
}

}  // namespace

TEST(Processes, ThreeForkedRanksCommitThroughATcpStoreAndTwoLoadIt) {
  TempDir dir;
  net::TcpStoreServer server("127.0.0.1", 0);
  std::vector<pid_t> kids;
  for (int r = 0; r < 3; ++r)
    kids.push_back(fork_child([&, r] {
      net::PrefixStore* unused = nullptr;
      (void)unused;
      save_as_process(dir.str(), server.port(), r, 3, 5, 11);
    }));
  for (pid_t k : kids) ASSERT_TRUE(exited_ok(wait_child(k)));

  CheckpointReader rd(CheckpointDir(dir.path()).step_path(5));
  EXPECT_EQ(rd.manifest().world_size, 3);
  EXPECT_TRUE(rd.verify().empty());

  // Two processes load it (resharding 3 -> 2) and check every byte themselves.
  kids.clear();
  for (int r = 0; r < 2; ++r)
    kids.push_back(fork_child([&, r] {
      auto store = std::make_shared<net::PrefixStore>(
          std::make_shared<net::TcpStore>(net::HostPort{"127.0.0.1", server.port()}), "load2/");
      SyntheticState want = SyntheticState::make(), got = SyntheticState::make();
      want.fill(11);
      auto l = load_latest(dir.str(), got.layout, got.reads(r, 2, true), {store, r, 2});
      if (!l || l->step != 5) throw std::runtime_error("wrong step");
      if (l->rank_blobs != request(5, r).rank_blobs) throw std::runtime_error("wrong rank blobs");
      for (size_t i = 0; i < want.data.size(); ++i) {
        ByteRange range{0, want.bytes(i)};
        if (want.layout.buffers()[i].name.rfind("adam", 0) == 0) range = SyntheticState::shard_of(want.bytes(i), r, 2);
        if (std::memcmp(want.data[i].data() + range.begin, got.data[i].data() + range.begin, range.size()))
          throw std::runtime_error("bytes differ in " + want.layout.buffers()[i].name);
      }
    }));
  for (pid_t k : kids) EXPECT_TRUE(exited_ok(wait_child(k)));
}

class CrashAt : public ::testing::TestWithParam<const char*> {};

TEST_P(CrashAt, KilledSaveLeavesThePreviousCheckpointAndResumePicksIt) {
  const std::string point = GetParam();
  TempDir dir;
  // Child: commit step 1, then die at the crash point while saving step 2.
  testing::internal::CaptureStderr();  // before the fork, so the child's log is captured too
  pid_t pid = fork_child([&] {
    SyntheticState s = SyntheticState::make();
    s.fill(1);
    {
      Checkpointer ck(options(dir.str()), s.layout, s.held(0, 1, false), 0, 1);
      ck.save_now(request(1, 0));
    }
    setenv("BRAID_CKPT_CRASH_AT", point.c_str(), 1);
    s.fill(2);
    Checkpointer ck(options(dir.str()), s.layout, s.held(0, 1, false), 0, 1);
    ck.save_now(request(2, 0));
    throw std::runtime_error("the crash point did not fire");
  });
  int status = wait_child(pid);
  std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(killed_by(status, SIGKILL)) << "status " << status << "\n" << log;
  EXPECT_NE(log.find("crash point active"), std::string::npos) << "the crash point was not announced:\n" << log;

  CheckpointDir cd(dir.path());
  EXPECT_EQ(cd.latest_step(), 1);
  EXPECT_TRUE(CheckpointReader(cd.step_path(1)).verify().empty());
  // Nothing that looks complete for step 2: either no step-2 directory, or (killed
  // after the rename) one that is newer than `latest` and so not committed.
  bool step2_dir = fs::exists(cd.step_path(2));
  EXPECT_EQ(step2_dir, point == "before-latest");

  SyntheticState want = SyntheticState::make(), got = SyntheticState::make();
  want.fill(1);
  testing::internal::CaptureStderr();
  auto l = load_latest(dir.str(), got.layout, got.reads(0, 1, false));
  testing::internal::GetCapturedStderr();
  ASSERT_TRUE(l);
  EXPECT_EQ(l->step, 1);
  expect_same(want, got);

  // A new run cleans the leftovers and saves step 2 for real.
  testing::internal::CaptureStderr();
  {
    SyntheticState s = SyntheticState::make();
    s.fill(3);
    Checkpointer ck(options(dir.str()), s.layout, s.held(0, 1, false), 0, 1);
    EXPECT_TRUE(cd.leftovers().empty());
    ck.save_now(request(2, 0));
  }
  testing::internal::GetCapturedStderr();
  EXPECT_EQ(cd.latest_step(), 2);
  EXPECT_TRUE(CheckpointReader(cd.step_path(2)).verify().empty());
}

INSTANTIATE_TEST_SUITE_P(Points, CrashAt,
                         ::testing::Values("during-shard-write", "after-shard-write", "before-manifest",
                                           "before-rename", "before-latest"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(Processes, KilledRankFailsTheCommitAndKeepsThePreviousCheckpoint) {
  TempDir dir;
  net::TcpStoreServer server("127.0.0.1", 0);
  {
    std::vector<pid_t> kids;
    for (int r = 0; r < 2; ++r) kids.push_back(fork_child([&, r] { save_as_process(dir.str(), server.port(), r, 2, 1, 1); }));
    for (pid_t k : kids) ASSERT_TRUE(exited_ok(wait_child(k)));
  }
  // Step 2: rank 1 is killed right after writing its shard; rank 0 must time out
  // and leave step 1 as the newest checkpoint.
  testing::internal::CaptureStderr();
  pid_t r0 = fork_child([&] {
    try {
      // The short timeout is for the commit: let rank 1 start up first.
      net::TcpStore({"127.0.0.1", server.port()}).get("test/rank1-ready", Deadline::in_seconds(30));
      save_as_process(dir.str(), server.port(), 0, 2, 2, 2, /*timeout_s=*/3);
    } catch (const IoError& e) {
      if (std::string(e.what()).find("rank 1") == std::string::npos) throw;
      _exit(3);  // the expected failure
    }
  });
  pid_t r1 = fork_child([&] {
    setenv("BRAID_CKPT_CRASH_AT", "after-shard-write", 1);
    setenv("BRAID_CKPT_CRASH_RANK", "1", 1);
    save_as_process(dir.str(), server.port(), 1, 2, 2, 2, 30, "test/rank1-ready");
  });
  int s1 = wait_child(r1);
  int s0 = wait_child(r0);
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(killed_by(s1, SIGKILL)) << log;
  EXPECT_TRUE(WIFEXITED(s0) && WEXITSTATUS(s0) == 3) << "rank 0 status " << s0 << "\n" << log;

  CheckpointDir cd(dir.path());
  EXPECT_EQ(cd.latest_step(), 1);
  EXPECT_FALSE(fs::exists(cd.step_path(2)));
  EXPECT_TRUE(cd.leftovers().empty()) << "rank 0 should remove the temporary directory of a failed save";
  EXPECT_TRUE(CheckpointReader(cd.step_path(1)).verify().empty());
}
