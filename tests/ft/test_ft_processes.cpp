// Fault-tolerant training end to end, through the binary: three data-parallel
// workers of a tiny model under `braid launch`, with one of them killed,
// stopped and continued, or restarted by the launcher (the faults are
// self-inflicted at a chosen step with BRAID_FT_DRILL, so the tests are
// deterministic), or cut off by taking its network namespace's link down.
//
// Every worker logs its fault-tolerance events (BRAID_FT_EVENTS): quorums,
// commits, discards, heals and the final state's xxh3. The tests check from
// them that
//   - every worker that finishes ends at the last step with bit-identical
//     parameters and optimizer state;
//   - no committed step is lost: within one process the step of each quorum
//     is the step after its last commit (or the step it healed to), so the
//     counter never goes back and a discarded step is redone, not skipped;
//   - the faulty worker was evicted (the others trained with 2) and, where it
//     comes back, healed from a peer and trained with the others again.
// Short heartbeat settings keep each test within a few tens of seconds; the
// checks hold however slow the machine is (an unlucky timeout only adds
// discarded-and-redone steps, which the checks allow).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kBraid = std::string(BRAID_BINARY_DIR) + "/braid";
const std::string kTimeouts = "--heartbeat-interval 0.5 --heartbeat-death 3 --collective-timeout 2 --quorum-wait 8";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A shell command in its own process group, output to a file.
struct Background {
  pid_t pid = -1;
  int code = -1;
  bool done = false;
  void start(const std::string& cmd, const std::string& log) {
    pid = fork();
    if (pid == 0) {
      setpgid(0, 0);
      std::string line = "exec env " + cmd + " >" + log + " 2>&1";
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  bool poll() {
    if (done || pid <= 0) return done;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      done = true;
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return done;
  }
  // Waits up to timeout_s; then terminates the whole group and returns false.
  bool wait(double timeout_s) {
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (!poll()) {
      if (std::chrono::steady_clock::now() > until) {
        kill(-pid, SIGTERM);
        std::this_thread::sleep_for(std::chrono::seconds(3));
        kill(-pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        done = true;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
  }
  ~Background() {
    if (pid > 0 && !poll()) {
      kill(-pid, SIGKILL);
      int status;
      waitpid(pid, &status, 0);
    }
  }
};

class FaultTolerantTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/braid_ft_XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::ofstream text(dir_ + "/corpus.txt");
    for (int i = 0; i < 300; ++i) text << "line " << i % 17 << ": the quick brown fox jumps over the lazy dog.\n";
  }
  void TearDown() override {
    // A worker left stopped by a failed test must not linger.
    for (pid_t p : stopped_) {
      kill(p, SIGKILL);
      kill(p, SIGCONT);
    }
    if (!HasFailure()) fs::remove_all(dir_);
    else std::fprintf(stderr, "kept %s for inspection\n", dir_.c_str());
  }

  // `extra`: more TOML appended (e.g. a [diloco] section).
  std::string config(int steps, const std::string& extra = "") {
    std::string path = dir_ + "/job.toml";
    std::ofstream f(path);
    f << "[model]\ncontext = 16\nlayers = 1\nwidth = 16\nheads = 2\n"
      << "[data]\npaths = [\"" << dir_ << "/corpus.txt\"]\nval_fraction = 0.1\n"
      << "[optim]\nlr = 3e-3\nwarmup_steps = 2\n"
      << "[train]\nsteps = " << steps << "\nbatch_size = 4\neval_every = 0\nsample_tokens = 0\nthreads = 1\n"
      << "[parallel]\nbucket_size = \"4K\"\n"
      << "[run]\ndir = \"" << dir_ << "/run\"\nprogress = false\n"
      << "[fault]\nenabled = true\n" << extra;
    return path;
  }
  std::string events_dir() const { return dir_ + "/events"; }
  std::string env(const std::string& drill, double step_delay_s) const {
    return "BRAID_FT_EVENTS=" + events_dir() + " BRAID_FT_DRILL=" + drill +
           " BRAID_FT_STEP_DELAY=" + std::to_string(step_delay_s) + " ";
  }

  // Events of every replica, in file order.
  std::map<std::string, std::vector<json>> events() const {
    std::map<std::string, std::vector<json>> out;
    if (!fs::exists(events_dir())) return out;
    for (const auto& e : fs::directory_iterator(events_dir())) {
      std::ifstream f(e.path());
      std::string line;
      while (std::getline(f, line)) {
        if (line.empty()) continue;
        try {
          auto j = json::parse(line);
          out[j["replica"].get<std::string>()].push_back(j);
        } catch (const json::exception&) {  // a line being written
        }
      }
    }
    return out;
  }
  // Polls the events until pred holds (true) or timeout_s passes (false).
  bool wait_events(const std::function<bool(const std::map<std::string, std::vector<json>>&)>& pred,
                   double timeout_s, Background* job) {
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < until) {
      if (pred(events())) return true;
      if (job && job->poll()) return pred(events());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // The invariants of one replica's history (see the file's comment); returns
  // the number of processes (lives) it had.
  static int check_history(const std::string& replica, const std::vector<json>& ev, int steps) {
    std::map<int64_t, std::vector<const json*>> lives;
    std::vector<int64_t> order;
    for (const auto& e : ev) {
      int64_t pid = e["pid"].get<int64_t>();
      if (!lives.count(pid)) order.push_back(pid);
      lives[pid].push_back(&e);
    }
    for (int64_t pid : order) {
      int64_t expected = 0;  // the step this process does next
      std::set<int64_t> discarded;
      for (const json* e : lives[pid]) {
        const std::string kind = (*e)["event"].get<std::string>();
        const std::string where = "replica " + replica + " pid " + std::to_string(pid) + ": " + e->dump();
        if (kind == "quorum") {
          const int64_t s = (*e)["step"].get<int64_t>();
          // A joiner learns the step to heal to from its quorum.
          if (s != expected) {
            auto hf = (*e)["heal_from"];
            int rank = (*e)["rank"].get<int>();
            EXPECT_GE(hf[static_cast<size_t>(rank)].get<int>(), 0) << "step jumps without a heal: " << where;
            EXPECT_GT(s, expected) << "the step went back: " << where;
          }
        } else if (kind == "heal") {
          EXPECT_GE((*e)["step"].get<int64_t>(), expected) << where;
          expected = (*e)["step"].get<int64_t>();
          discarded.clear();  // superseded: the state of a later committed step arrived
        } else if (kind == "commit") {
          const int64_t s = (*e)["step"].get<int64_t>();
          EXPECT_EQ(s, expected) << "a committed step was lost or repeated: " << where;
          discarded.erase(s);
          expected = s + 1;
        } else if (kind == "discard") {
          // Only the step in flight is discarded; it is redone next.
          EXPECT_EQ((*e)["step"].get<int64_t>(), expected) << where;
          discarded.insert(expected);
        } else if (kind == "done") {
          EXPECT_EQ((*e)["step"].get<int64_t>(), steps) << where;
          EXPECT_EQ(expected, steps) << where;
          EXPECT_TRUE(discarded.empty()) << "a discarded step was never redone: " << where;
        }
      }
    }
    return static_cast<int>(order.size());
  }

  static const json* find(const std::vector<json>& ev, const std::string& kind) {
    for (const auto& e : ev)
      if (e["event"] == kind) return &e;
    return nullptr;
  }
  static int count(const std::vector<json>& ev, const std::string& kind) {
    int n = 0;
    for (const auto& e : ev) n += e["event"] == kind;
    return n;
  }
  // True if the replica committed a step while its epoch had `world` members.
  static bool committed_with(const std::vector<json>& ev, int world) {
    for (const auto& e : ev)
      if (e["event"] == "commit" && e["world"].get<int>() == world) return true;
    return false;
  }
  // Every replica in `replicas` finished at `steps` with the same state
  // (parameters; and the optimizer's moments unless `params_only`: DiLoCo's
  // replicas share parameters after the last outer step, not their inner AdamW).
  void expect_same_final_state(const std::map<std::string, std::vector<json>>& ev,
                               const std::vector<std::string>& replicas, int steps, bool params_only = false) {
    std::string params, state;
    for (const auto& r : replicas) {
      ASSERT_TRUE(ev.count(r)) << "no events of replica " << r;
      const auto& list = ev.at(r);
      const json* done = nullptr;
      for (const auto& e : list)
        if (e["event"] == "done") done = &e;
      ASSERT_NE(done, nullptr) << "replica " << r << " did not finish";
      EXPECT_EQ((*done)["step"].get<int>(), steps);
      if (params.empty()) {
        params = (*done)["params_xxh3"].get<std::string>();
        state = (*done)["state_xxh3"].get<std::string>();
      }
      EXPECT_EQ((*done)["params_xxh3"].get<std::string>(), params) << "replica " << r;
      if (!params_only) {
        EXPECT_EQ((*done)["state_xxh3"].get<std::string>(), state) << "replica " << r;
      }
    }
  }
  // Starts `braid launch --nproc 3 FLAGS` (with the short timeouts) of
  // `braid train CFG` under the drill, output to launch.log.
  void launch(Background& job, const std::string& drill, double step_delay_s, const std::string& flags,
              const std::string& cfg) {
    job.start(env(drill, step_delay_s) + kBraid + " launch --nproc 3 " + flags + " " + kTimeouts + " -- " + kBraid +
                  " train " + cfg,
              dir_ + "/launch.log");
  }
  // A job run to its end (or terminated after timeout_s): whether it ended by
  // itself, its exit code and launch.log.
  struct JobEnd {
    bool finished = false;
    int code = -1;
    std::string log;
  };
  JobEnd run_job(const std::string& drill, double step_delay_s, const std::string& flags, const std::string& cfg,
                 double timeout_s) {
    Background job;
    launch(job, drill, step_delay_s, flags, cfg);
    JobEnd e;
    e.finished = job.wait(timeout_s);
    e.code = job.code;
    e.log = slurp(dir_ + "/launch.log");
    return e;
  }
  // Waits until `replica` stopped itself by its drill; its pid (remembered
  // for TearDown), or 0 when that did not happen within 90 s.
  pid_t wait_until_stopped(const std::string& replica, Background& job) {
    int64_t pid = 0;
    wait_events(
        [&](const auto& ev) {
          if (!ev.count(replica)) return false;
          if (const json* d = find(ev.at(replica), "drill")) pid = (*d)["pid"].get<int64_t>();
          return pid != 0;
        },
        90, &job);
    if (pid != 0) stopped_.push_back(static_cast<pid_t>(pid));
    return static_cast<pid_t>(pid);
  }
  // The replica's outer round at `step` (DiLoCo), or null.
  static const json* outer_at(const std::vector<json>& ev, int64_t step) {
    for (const auto& e : ev)
      if (e["event"] == "outer" && e["step"].get<int64_t>() == step) return &e;
    return nullptr;
  }

  std::string dir_;
  std::vector<pid_t> stopped_;
};

TEST_F(FaultTolerantTraining, KilledWorkerTheOtherTwoFinishIdentical) {
  const int steps = 30;
  auto cfg = config(steps);
  const JobEnd end = run_job("kill:2@5", 0, "", cfg, 150);
  ASSERT_TRUE(end.finished) << "the job did not finish\n" << end.log;
  const std::string& log = end.log;
  // The launcher let the survivors finish and names the lost worker.
  EXPECT_EQ(end.code, 0) << log;
  EXPECT_NE(log.find("finished without 1 lost worker"), std::string::npos) << log;

  auto ev = events();
  ASSERT_TRUE(ev.count("2"));
  EXPECT_NE(find(ev["2"], "drill"), nullptr);
  EXPECT_EQ(find(ev["2"], "done"), nullptr) << "the killed worker cannot have finished";
  expect_same_final_state(ev, {"0", "1"}, steps);
  for (const std::string r : {"0", "1"}) {
    EXPECT_EQ(check_history(r, ev[r], steps), 1);
    EXPECT_TRUE(committed_with(ev[r], 3)) << r;
    EXPECT_TRUE(committed_with(ev[r], 2)) << r;
    // The step in flight when the worker died (step 5) was discarded and redone.
    bool discarded_5 = false;
    for (const auto& e : ev[r]) discarded_5 |= e["event"] == "discard" && e["step"] == 5;
    EXPECT_TRUE(discarded_5) << r;
  }
  // run directory of the lead (replica 0) reports the recovery.
  auto summary = json::parse(slurp(dir_ + "/run/summary.json"));
  EXPECT_GE(summary["fault_tolerance"]["discarded_and_redone"].get<int>(), 1);
  EXPECT_EQ(summary["fault_tolerance"]["replicas_at_end"].get<int>(), 2);
}

TEST_F(FaultTolerantTraining, StoppedWorkerIsEvictedThenRejoinsAndHeals) {
  const int steps = 160;
  auto cfg = config(steps);
  Background job;
  // The step delay makes the run last long enough after the SIGCONT for the
  // woken worker to rejoin (~1 s) before the others finish.
  launch(job, "stop:2@5", 0.05, "", cfg);
  const pid_t stopped_pid = wait_until_stopped("2", job);
  ASSERT_GT(stopped_pid, 0) << slurp(dir_ + "/launch.log");
  // Evicted after the heartbeat death: the others commit steps without it.
  ASSERT_TRUE(wait_events(
      [&](const auto& ev) { return ev.count("0") && ev.count("1") && committed_with(ev.at("0"), 2) &&
                                   committed_with(ev.at("1"), 2); },
      60, &job))
      << slurp(dir_ + "/launch.log");
  ASSERT_FALSE(job.poll()) << "the job ended before the stopped worker could rejoin\n" << slurp(dir_ + "/launch.log");
  ASSERT_EQ(kill(stopped_pid, SIGCONT), 0);
  stopped_.clear();
  ASSERT_TRUE(job.wait(150)) << "the job did not finish\n" << slurp(dir_ + "/launch.log");
  const std::string log = slurp(dir_ + "/launch.log");
  EXPECT_EQ(job.code, 0) << log;
  EXPECT_NE(log.find("evicted"), std::string::npos) << log;

  auto ev = events();
  expect_same_final_state(ev, {"0", "1", "2"}, steps);
  for (const std::string r : {"0", "1", "2"}) EXPECT_EQ(check_history(r, ev[r], steps), 1) << r;
  // Replica 2 healed from a peer (no disk) and trained with the others again.
  const json* heal = find(ev["2"], "heal");
  ASSERT_NE(heal, nullptr) << log;
  EXPECT_GT((*heal)["bytes"].get<uint64_t>(), 0u);
  EXPECT_GT((*heal)["step"].get<int64_t>(), 5);
  for (const std::string r : {"0", "1"}) EXPECT_TRUE(committed_with(ev[r], 2)) << r;
  EXPECT_EQ(count(ev["0"], "heal_sent") + count(ev["1"], "heal_sent"), 1);
  // After healing, all three committed steps together again.
  bool three_after_heal = false, after = false;
  for (const auto& e : ev["2"]) {
    if (e["event"] == "heal") after = true;
    if (after && e["event"] == "commit" && e["world"] == 3) three_after_heal = true;
  }
  EXPECT_TRUE(three_after_heal) << log;
}

TEST_F(FaultTolerantTraining, LauncherRestartsAKilledWorkerWhichHeals) {
  const int steps = 30;
  auto cfg = config(steps);
  // --min-replicas 3: the two survivors wait at the step boundary (no quorum
  // below the minimum) until the restarted process has started its runtime
  // anew and registered, so it joins however slow the machine is.
  const JobEnd end = run_job("kill:2@5", 0, "--max-restarts 1 --min-replicas 3", cfg, 200);
  ASSERT_TRUE(end.finished) << "the job did not finish\n" << end.log;
  const std::string& log = end.log;
  EXPECT_EQ(end.code, 0) << log;
  auto ev = events();
  expect_same_final_state(ev, {"0", "1", "2"}, steps);
  for (const std::string r : {"0", "1"}) EXPECT_EQ(check_history(r, ev[r], steps), 1) << r;
  // Two processes for replica 2: the killed one and its restart.
  EXPECT_EQ(check_history("2", ev["2"], steps), 2);
  int restarted_start = 0;
  for (const auto& e : ev["2"])
    if (e["event"] == "start" && e["restart"].get<int>() == 1) ++restarted_start;
  EXPECT_EQ(restarted_start, 1);
  const json* heal = find(ev["2"], "heal");
  ASSERT_NE(heal, nullptr) << log;
  EXPECT_GT((*heal)["bytes"].get<uint64_t>(), 0u);
  EXPECT_GE((*heal)["step"].get<int64_t>(), 5);
  EXPECT_EQ((*heal)["old_step"].get<int64_t>(), 0);  // a fresh process, state from the peer
  // Below the minimum nobody trained: no step was committed by 2 replicas.
  for (const std::string r : {"0", "1"}) EXPECT_FALSE(committed_with(ev[r], 2)) << r;
}

// DiLoCo under fault tolerance: three replicas sync every 5 steps (int8
// pseudo-gradients); replica 2 is killed in the middle of the second round.
// The other two finish that round (their average, without the lost replica's
// local steps) and the run, ending with the same parameters.
const std::string kDiloco = "[diloco]\nenabled = true\ninner_steps = 5\ncodec = \"int8\"\n";

TEST_F(FaultTolerantTraining, DilocoReplicaKilledMidRoundTheOthersFinishTheRoundAndTheRun) {
  const int steps = 20;
  auto cfg = config(steps, kDiloco);
  const JobEnd end = run_job("kill:2@7", 0, "", cfg, 150);
  ASSERT_TRUE(end.finished) << "the job did not finish\n" << end.log;
  const std::string& log = end.log;
  EXPECT_EQ(end.code, 0) << log;
  EXPECT_NE(log.find("finished without 1 lost worker"), std::string::npos) << log;
  auto ev = events();
  ASSERT_NE(find(ev["2"], "drill"), nullptr) << log;
  EXPECT_EQ(find(ev["2"], "done"), nullptr);
  expect_same_final_state(ev, {"0", "1"}, steps, /*params_only=*/true);
  for (const std::string r : {"0", "1"}) {
    EXPECT_EQ(check_history(r, ev[r], steps), 1) << r;
    // Round 1 with all three; the round replica 2 died in, and every later
    // one, averaged over the two that trained it.
    const json* first = outer_at(ev[r], 5);
    ASSERT_NE(first, nullptr) << r;
    EXPECT_EQ((*first)["contributors"].get<int>(), 3) << r;
    for (int64_t s = 10; s <= steps; s += 5) {
      const json* o = outer_at(ev[r], s);
      ASSERT_NE(o, nullptr) << r << " has no outer round at step " << s << "\n" << log;
      EXPECT_EQ((*o)["world"].get<int>(), 2) << r;
      EXPECT_EQ((*o)["contributors"].get<int>(), 2) << r;
    }
  }
  // Only outer rounds talk to the coordinator: no quorum between them.
  for (const auto& e : ev["0"])
    if (e["event"] == "quorum") {
      EXPECT_EQ(e["step"].get<int64_t>() % 5, 0) << e.dump();
    }
  auto summary = json::parse(slurp(dir_ + "/run/summary.json"));
  EXPECT_EQ(summary["diloco"]["replicas"].get<int>(), 2);
  EXPECT_EQ(summary["fault_tolerance"]["replicas_at_end"].get<int>(), 2);
}

// Replica 2 killed inside the round at step 10 (after its all-reduce, before
// its vote): the survivors' vote fails, nothing is applied, and the round is
// reduced again. The launcher restarts the replica, which joins that round:
// it heals from a peer (parameters, inner AdamW, θ of the last sync and the
// outer momentum), adds nothing to it (the average is over the two that
// trained it), trains the following rounds with the others, and all three end
// with the same parameters. --min-replicas 3 makes the survivors wait at the
// round for the restarted process, however slow the machine.
TEST_F(FaultTolerantTraining, DilocoRestartedReplicaJoinsAtAnOuterStep) {
  const int steps = 20;
  auto cfg = config(steps, kDiloco);
  const JobEnd end = run_job("kill:2@10/vote", 0, "--max-restarts 1 --min-replicas 3", cfg, 200);
  ASSERT_TRUE(end.finished) << "the job did not finish\n" << end.log;
  const std::string& log = end.log;
  EXPECT_EQ(end.code, 0) << log;
  auto ev = events();
  expect_same_final_state(ev, {"0", "1", "2"}, steps, /*params_only=*/true);
  for (const std::string r : {"0", "1"}) EXPECT_EQ(check_history(r, ev[r], steps), 1) << r;
  EXPECT_EQ(check_history("2", ev["2"], steps), 2);
  const json* heal = find(ev["2"], "heal");
  ASSERT_NE(heal, nullptr) << log;
  EXPECT_EQ((*heal)["step"].get<int64_t>(), 10);
  EXPECT_EQ((*heal)["old_step"].get<int64_t>(), 0);
  for (const std::string r : {"0", "1"}) {
    bool redone = false;
    for (const auto& e : ev[r]) redone |= e["event"] == "discard" && e["step"] == 10 && e["phase"] == "outer";
    EXPECT_TRUE(redone) << r << ": the round replica 2 died in was discarded and redone\n" << log;
  }
  for (const std::string r : {"0", "1", "2"}) {
    const json* joined = outer_at(ev[r], 10);
    ASSERT_NE(joined, nullptr) << r << "\n" << log;
    EXPECT_EQ((*joined)["world"].get<int>(), 3) << r;
    EXPECT_EQ((*joined)["contributors"].get<int>(), 2) << r;
    const json* next = outer_at(ev[r], 15);
    ASSERT_NE(next, nullptr) << r;
    EXPECT_EQ((*next)["contributors"].get<int>(), 3) << r;
  }
}

// A replica stopped (SIGSTOP) in the middle of a round is evicted at the
// heartbeat death; the others go on with two. Woken, it learns it was
// evicted after its next local step and joins the members' next round as a
// new replica (healed, adding nothing to that round) instead of training on
// alone; all three end with the same parameters.
TEST_F(FaultTolerantTraining, DilocoStoppedReplicaIsEvictedThenJoinsAtAnOuterStep) {
  const int steps = 200;
  auto cfg = config(steps, kDiloco);
  Background job;
  launch(job, "stop:2@7", 0.05, "", cfg);
  const pid_t stopped_pid = wait_until_stopped("2", job);
  ASSERT_GT(stopped_pid, 0) << slurp(dir_ + "/launch.log");
  auto round_with_two = [](const std::vector<json>& ev) {
    for (const auto& e : ev)
      if (e["event"] == "outer" && e["world"].get<int>() == 2) return true;
    return false;
  };
  ASSERT_TRUE(wait_events([&](const auto& ev) { return ev.count("0") && round_with_two(ev.at("0")); }, 60, &job))
      << slurp(dir_ + "/launch.log");
  ASSERT_FALSE(job.poll()) << "the job ended before the stopped replica could rejoin\n" << slurp(dir_ + "/launch.log");
  ASSERT_EQ(kill(stopped_pid, SIGCONT), 0);
  stopped_.clear();
  ASSERT_TRUE(job.wait(150)) << "the job did not finish\n" << slurp(dir_ + "/launch.log");
  const std::string log = slurp(dir_ + "/launch.log");
  EXPECT_EQ(job.code, 0) << log;
  auto ev = events();
  expect_same_final_state(ev, {"0", "1", "2"}, steps, /*params_only=*/true);
  for (const std::string r : {"0", "1", "2"}) EXPECT_EQ(check_history(r, ev[r], steps), 1) << r;
  const json* heal = find(ev["2"], "heal");
  ASSERT_NE(heal, nullptr) << log;
  const int64_t joined_at = (*heal)["step"].get<int64_t>();
  EXPECT_EQ(joined_at % 5, 0);
  EXPECT_GT(joined_at, (*heal)["old_step"].get<int64_t>());
  const json* joined = outer_at(ev["2"], joined_at);
  ASSERT_NE(joined, nullptr) << log;
  EXPECT_EQ((*joined)["contributors"].get<int>(), 2);
  EXPECT_EQ((*joined)["world"].get<int>(), 3);
}

// The lead worker (launch slot 0, which writes the run directory) killed and
// restarted: it heals like any other, and its second life continues the
// run's metrics.jsonl instead of starting it anew, then writes summary.json.
TEST_F(FaultTolerantTraining, RestartedLeadKeepsTheRunsMetrics) {
  const int steps = 30;
  auto cfg = config(steps);
  const JobEnd end = run_job("kill:0@8", 0, "--max-restarts 1 --min-replicas 3", cfg, 200);
  ASSERT_TRUE(end.finished) << "the job did not finish\n" << end.log;
  const std::string& log = end.log;
  ASSERT_EQ(end.code, 0) << log;
  auto ev = events();
  expect_same_final_state(ev, {"0", "1", "2"}, steps);
  EXPECT_EQ(check_history("0", ev["0"], steps), 2) << "replica 0 had two lives";
  ASSERT_NE(find(ev["0"], "heal"), nullptr) << log;
  std::set<int64_t> seen;
  std::ifstream metrics(dir_ + "/run/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);)
    if (!line.empty()) seen.insert(json::parse(line).at("step").get<int64_t>());
  EXPECT_TRUE(seen.count(1)) << "the first life's steps are kept";
  EXPECT_TRUE(seen.count(steps)) << "the second life's steps follow";
  EXPECT_TRUE(fs::exists(dir_ + "/run/summary.json")) << log;
}

// The lead killed for good (no restarts): the lowest surviving replica takes
// over the run directory, whose path the lead agreed through the
// coordinator's store, so metrics.jsonl has every step once and
// summary.json is written at the end.
TEST_F(FaultTolerantTraining, LeadLostForGoodASurvivorKeepsTheRecords) {
  const int steps = 30;
  auto cfg = config(steps);
  const JobEnd end = run_job("kill:0@8", 0, "", cfg, 150);
  ASSERT_TRUE(end.finished) << "the job did not finish\n" << end.log;
  const std::string& log = end.log;
  EXPECT_EQ(end.code, 0) << log;
  EXPECT_NE(log.find("now writes"), std::string::npos) << log;
  auto ev = events();
  expect_same_final_state(ev, {"1", "2"}, steps);
  std::map<int64_t, int> lines;
  std::ifstream metrics(dir_ + "/run/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);)
    if (!line.empty()) ++lines[json::parse(line).at("step").get<int64_t>()];
  for (int64_t s = 1; s <= steps; ++s) EXPECT_EQ(lines[s], 1) << "step " << s << "'s line";
  ASSERT_TRUE(fs::exists(dir_ + "/run/summary.json")) << log;
  auto summary = json::parse(slurp(dir_ + "/run/summary.json"));
  EXPECT_EQ(summary["steps"].get<int>(), steps);
  EXPECT_EQ(summary["fault_tolerance"]["replicas_at_end"].get<int>(), 2);
}

// Three "hosts" (network namespaces joined by a bridge, scripts/netns-hosts),
// a standalone coordinator on host 0, one worker per host. Host 2's link goes
// down in the middle of the run: the others evict it after the heartbeat death
// and go on; the link comes back: worker 2 learns it was evicted, rejoins,
// heals and finishes with the others.
TEST_F(FaultTolerantTraining, CutLinkIsEvictedThenRejoinsWhenItComesBack) {
  if (geteuid() != 0) GTEST_SKIP() << "skipping the network-cut test: network namespaces need root";
  const std::string script = std::string(BRAID_SOURCE_DIR) + "/scripts/netns-hosts";
  const std::string prefix = "bft" + std::to_string(getpid() % 100000);
  struct Hosts {
    std::string down_cmd;
    bool up = false;
    ~Hosts() {
      if (up && std::system(down_cmd.c_str()) != 0) std::fprintf(stderr, "cannot remove the test hosts\n");
    }
  } hosts;
  hosts.down_cmd = script + " --prefix " + prefix + " down >/dev/null 2>&1";
  if (std::system((script + " --prefix " + prefix + " up 3 >" + dir_ + "/netns.log 2>&1").c_str()) != 0)
    GTEST_SKIP() << "skipping the network-cut test: scripts/netns-hosts up failed (no CAP_NET_ADMIN?): "
                 << slurp(dir_ + "/netns.log");
  hosts.up = true;
  auto in_host = [&](int i) { return "ip netns exec " + prefix + "-h" + std::to_string(i) + " "; };

  const int steps = 250;  // time for TCP's retransmission backoff after the link is back
  auto cfg = config(steps);
  const std::string secret = "BRAID_JOB_SECRET=ft-netns-test-secret ";
  Background coordinator;
  coordinator.start(in_host(0) + "env " + secret + kBraid +
                        " coordinator --port 29500 --initial-replicas 3 " + kTimeouts,
                    dir_ + "/coordinator.log");
  std::vector<std::unique_ptr<Background>> workers;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(std::make_unique<Background>());
    workers.back()->start(in_host(i) + "env " + secret + env("", 0.06) +
                              "BRAID_TRANSPORT=tcp BRAID_COORDINATOR=10.77.0.1:29500 BRAID_RENDEZVOUS=10.77.0.1:29500 BRAID_RANK=" + std::to_string(i) +
                              " BRAID_WORLD_SIZE=3 BRAID_HEARTBEAT_INTERVAL=0.5 BRAID_HEARTBEAT_DEATH=3 "
                              "BRAID_QUORUM_WAIT=8 BRAID_COMM_TIMEOUT=2 " +
                              kBraid + " train " + cfg,
                          dir_ + "/worker" + std::to_string(i) + ".log");
  }
  auto logs = [&] {
    std::string all = "--- coordinator\n" + slurp(dir_ + "/coordinator.log");
    for (int i = 0; i < 3; ++i) all += "--- worker " + std::to_string(i) + "\n" + slurp(dir_ + "/worker" + std::to_string(i) + ".log");
    return all;
  };
  // All three train together first.
  ASSERT_TRUE(wait_events([&](const auto& ev) { return ev.count("2") && committed_with(ev.at("2"), 3); }, 120,
                          workers[2].get()))
      << logs();
  ASSERT_EQ(std::system(("ip -n " + prefix + "-h2 link set eth0 down").c_str()), 0);
  const bool evicted = wait_events(
      [&](const auto& ev) {
        return ev.count("0") && ev.count("1") && committed_with(ev.at("0"), 2) && committed_with(ev.at("1"), 2);
      },
      60, workers[0].get());
  ASSERT_EQ(std::system(("ip -n " + prefix + "-h2 link set eth0 up").c_str()), 0);
  ASSERT_TRUE(evicted) << "the others did not go on without the cut-off worker\n" << logs();
  for (auto& w : workers) ASSERT_TRUE(w->wait(180)) << logs();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(workers[static_cast<size_t>(i)]->code, 0) << "worker " << i << "\n" << logs();
  kill(-coordinator.pid, SIGTERM);
  coordinator.wait(10);

  auto ev = events();
  expect_same_final_state(ev, {"0", "1", "2"}, steps);
  for (const std::string r : {"0", "1", "2"}) EXPECT_EQ(check_history(r, ev[r], steps), 1) << r;
  const json* heal = find(ev["2"], "heal");
  ASSERT_NE(heal, nullptr) << logs();
  EXPECT_GT((*heal)["bytes"].get<uint64_t>(), 0u);
}

// `braid bench recovery --faults cut` on the tiny job: the benchmark builds
// its own namespace hosts, cuts the last worker's link at the chosen step,
// restores it, and reports the eviction and the heal from the events.
TEST_F(FaultTolerantTraining, BenchRecoveryMeasuresANetworkCut) {
  if (geteuid() != 0) GTEST_SKIP() << "skipping: the network cut needs network namespaces (root)";
  const int steps = 250;
  auto cfg = config(steps);
  const std::string out = dir_ + "/bench.json", err = dir_ + "/bench.err";
  const std::string cmd = "BRAID_FT_STEP_DELAY=0.06 BRAID_HEARTBEAT_INTERVAL=0.5 BRAID_HEARTBEAT_DEATH=3 "
                          "BRAID_QUORUM_WAIT=8 BRAID_COMM_TIMEOUT=2 " +
                          kBraid + " bench recovery --config " + cfg + " --faults cut --workers 3 --steps " +
                          std::to_string(steps) + " --at 5 --timeout 240 --json >" + out + " 2>" + err;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(err);
  const json j = json::parse(slurp(out));
  ASSERT_EQ(j["faults"].size(), 1u) << j.dump(2);
  const json& cut = j["faults"][0];
  EXPECT_EQ(cut["fault"], "cut");
  ASSERT_TRUE(cut["ok"].get<bool>()) << cut.dump(2) << slurp(err);
  EXPECT_EQ(cut["world_after"].get<int>(), 2) << "the survivors' first commit after the cut is without it";
  EXPECT_GT(cut["detect_s"].get<double>(), 0);
  EXPECT_GE(cut["next_commit_s"].get<double>(), cut["detect_s"].get<double>());
  EXPECT_GT(cut["heal_bytes"].get<uint64_t>(), 0u) << "the worker came back and healed";
  EXPECT_GT(cut["rejoin_s"].get<double>(), cut["next_commit_s"].get<double>());
  // The benchmark removed its hosts.
  const std::string left = "ip netns list | grep -q '^bbr' ";
  EXPECT_NE(std::system(left.c_str()), 0) << "namespaces left behind";
}

}  // namespace
