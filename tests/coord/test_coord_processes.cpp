// Fake workers as processes (tests/coord/fake_worker.cpp) against a real
// coordinator: SIGSTOP and SIGCONT, SIGKILL and a restart, the coordinator
// process killed and restarted on the same port, and `braid launch` running
// the coordinator embedded.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "coord/coordinator_server.hpp"
#include "core/clock.hpp"
#include "core/process_group.hpp"

using namespace braid;
using namespace braid::coord;

namespace {

const std::string kWorker = COORD_FAKE_WORKER;
const std::string kBraid = std::string(BRAID_BINARY_DIR) + "/braid";

// collective < death < quorum wait < job timeout, scaled down for tests.
Timeouts fast_timeouts() {
  Timeouts t;
  t.collective_s = 0.5;
  t.heartbeat_interval_s = 0.1;
  t.heartbeat_death_s = 1.0;
  t.quorum_wait_s = 4;
  t.job_timeout_s = 60;
  return t;
}

struct Event {
  int index = -1;  // process slot
  std::string kind;
  int64_t step = -1;
  uint32_t epoch = 0;
  int world = 0;
  size_t seq = 0;  // position in the output
};

std::optional<Event> parse(int index, const std::string& line, size_t seq) {
  Event e;
  e.index = index;
  e.seq = seq;
  char kind[16] = {};
  long long step = 0;
  unsigned epoch = 0;
  int world = 0;
  if (std::sscanf(line.c_str(), "%15s step=%lld epoch=%u world=%d", kind, &step, &epoch, &world) == 4 &&
      (std::string(kind) == "COMMIT" || std::string(kind) == "DISCARD")) {
    e.kind = kind;
    e.step = step;
    e.epoch = epoch;
    e.world = world;
    return e;
  }
  int from = 0;
  if (std::sscanf(line.c_str(), "HEAL from=%d step=%lld", &from, &step) == 2) {
    e.kind = "HEAL";
    e.step = step;
    return e;
  }
  return std::nullopt;
}

class Procs {
 public:
  Procs()
      : group_([this](int i, std::string_view l) {
          std::string s(l);
          if (getenv("COORD_TEST_VERBOSE")) std::printf("[%d] %s\n", i, s.c_str());  // for debugging
          lines_.emplace_back(i, s);
          if (auto e = parse(i, s, lines_.size())) events_.push_back(*e);
        }) {
    char dir[] = "/tmp/braid-coord-test-XXXXXX";
    dir_ = mkdtemp(dir);
    stop_file_ = dir_ + "/stop";
  }
  ~Procs() {
    group_.terminate_all(2);
    std::remove(stop_file_.c_str());
    rmdir(dir_.c_str());
  }

  int spawn_worker(const std::string& replica, const std::string& coordinator,
                   std::vector<std::pair<std::string, std::string>> env = {}, std::vector<std::string> args = {}) {
    ProcessSpec s;
    s.argv = {kWorker, "--step-ms", "10", "--stop-file", stop_file_};
    for (auto& a : args) s.argv.push_back(a);
    s.label = "w" + replica;
    s.env = {{"BRAID_COORDINATOR", coordinator}, {"BRAID_REPLICA_ID", replica}, {"BRAID_RESTART_COUNT", "0"}};
    for (auto& kv : fast_timeouts().to_env(true)) s.env.push_back(kv);
    for (auto& kv : env) s.env.push_back(kv);
    return group_.spawn(s);
  }
  int spawn(ProcessSpec s) { return group_.spawn(s); }
  // Starts slot `index` again (after it exited); its old exit is forgotten.
  void respawn(int index) {
    exits_.erase(index);
    group_.respawn(index);
  }
  ProcessGroup& group() { return group_; }
  void stop_all() { std::ofstream(stop_file_) << "stop\n"; }

  void pump(double seconds) {
    Deadline d = Deadline::in_seconds(seconds);
    do {
      if (auto e = group_.poll(20)) exits_[e->index] = *e;
    } while (!d.expired());
  }
  // Pumps until pred holds (bounded); true if it did.
  bool wait(const std::function<bool()>& pred, double seconds) {
    Deadline d = Deadline::in_seconds(seconds);
    while (!pred()) {
      if (d.expired()) return false;
      if (auto e = group_.poll(20)) exits_[e->index] = *e;
    }
    return true;
  }
  bool any(const std::function<bool(const Event&)>& pred, size_t after_seq = 0) const {
    for (auto& e : events_)
      if (e.seq > after_seq && pred(e)) return true;
    return false;
  }
  bool exited(int index) const { return exits_.count(index) > 0; }
  const ProcessExit& exit_of(int index) const { return exits_.at(index); }
  bool line_contains(int index, const std::string& text) const {
    for (auto& [i, l] : lines_)
      if (i == index && l.find(text) != std::string::npos) return true;
    return false;
  }
  std::string output(int index) const {
    std::string s;
    for (auto& [i, l] : lines_)
      if (i == index) s += l + "\n";
    return s;
  }
  size_t seq() const { return lines_.size(); }
  const std::vector<Event>& events() const { return events_; }
  int64_t max_commit(int index) const {
    int64_t m = -1;
    for (auto& e : events_)
      if (e.index == index && e.kind == "COMMIT") m = std::max(m, e.step);
    return m;
  }

 private:
  ProcessGroup group_;
  std::vector<std::pair<int, std::string>> lines_;
  std::vector<Event> events_;
  std::map<int, ProcessExit> exits_;
  std::string dir_, stop_file_;
};

// Per process: committed steps go up by one (a heal may jump ahead, never
// back); processes that committed the same (epoch, step) agree on the world.
void expect_consistent_history(const Procs& p) {
  std::map<int, int64_t> last;
  std::map<std::pair<uint32_t, int64_t>, int> world_of;
  for (auto& e : p.events()) {
    if (e.kind == "HEAL") {
      if (last.count(e.index)) {
        EXPECT_GE(e.step, last[e.index]) << "process " << e.index << " healed backwards";
      }
      last[e.index] = e.step - 1;
      continue;
    }
    if (e.kind != "COMMIT") continue;
    if (last.count(e.index)) {
      EXPECT_EQ(e.step, last[e.index] + 1) << "process " << e.index << " committed step " << e.step;
    }
    last[e.index] = e.step;
    auto key = std::make_pair(e.epoch, e.step);
    if (world_of.count(key)) {
      EXPECT_EQ(world_of[key], e.world) << "epoch " << e.epoch << " step " << e.step;
    }
    world_of[key] = e.world;
  }
}

CoordinatorOptions server_options(int initial) {
  CoordinatorOptions o;
  o.initial_replicas = initial;
  o.timeouts = fast_timeouts();
  o.poll_s = 0.5;
  return o;
}

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

struct RunResult {
  int code;
  std::string out;
};

RunResult run(const std::string& cmd) {
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  int st = pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

}  // namespace

TEST(CoordProcesses, AStoppedWorkerIsEvictedAndRejoinsAfterSigcont) {
  CoordinatorServer server("127.0.0.1", 0, "", server_options(3));
  const std::string addr = "127.0.0.1:" + std::to_string(server.port());
  Procs p;
  for (int i = 0; i < 3; ++i) p.spawn_worker(std::to_string(i), addr);
  ASSERT_TRUE(p.wait([&] { return p.max_commit(0) >= 5 && p.max_commit(1) >= 5 && p.max_commit(2) >= 5; }, 30));
  p.group().signal(2, SIGSTOP);
  Stopwatch stopped;
  size_t at_stop = p.seq();
  auto survivors_alone = [&](const Event& e) { return e.kind == "COMMIT" && e.world == 2 && e.index != 2; };
  ASSERT_TRUE(p.wait([&] { return p.any(survivors_alone, at_stop); }, 30)) << p.output(0);
  EXPECT_GE(stopped.seconds(), fast_timeouts().heartbeat_death_s * 0.9);  // evicted for silence, not sooner
  auto st = server.status();
  ASSERT_FALSE(st.recent_evictions.empty());
  EXPECT_EQ(st.recent_evictions[0].replica_id, "2");
  EXPECT_NE(st.recent_evictions[0].reason.find("no heartbeat"), std::string::npos) << st.recent_evictions[0].reason;

  p.group().signal(2, SIGCONT);
  size_t at_cont = p.seq();
  ASSERT_TRUE(p.wait([&] { return p.any([](const Event& e) { return e.index == 2 && e.kind == "HEAL"; }, at_cont); },
                     30))
      << p.output(2);
  ASSERT_TRUE(p.wait([&] {
    return p.any([](const Event& e) { return e.index == 2 && e.kind == "COMMIT" && e.world == 3; }, at_cont) &&
           p.any([](const Event& e) { return e.index == 0 && e.kind == "COMMIT" && e.world == 3; }, at_cont);
  }, 30));
  p.stop_all();
  ASSERT_TRUE(p.wait([&] { return p.exited(0) && p.exited(1) && p.exited(2); }, 30));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(p.exit_of(i).ok()) << p.output(i);
  EXPECT_TRUE(p.line_contains(2, "rejoined=1"));
  expect_consistent_history(p);
}

TEST(CoordProcesses, AKilledWorkerIsEvictedAtOnceAndItsRestartHealsAndRejoins) {
  CoordinatorServer server("127.0.0.1", 0, "", server_options(3));
  const std::string addr = "127.0.0.1:" + std::to_string(server.port());
  Procs p;
  for (int i = 0; i < 3; ++i) p.spawn_worker(std::to_string(i), addr);
  ASSERT_TRUE(p.wait([&] { return p.max_commit(0) >= 5 && p.max_commit(1) >= 5 && p.max_commit(2) >= 5; }, 30));
  p.group().signal(1, SIGKILL);
  size_t at_kill = p.seq();
  ASSERT_TRUE(p.wait([&] { return p.exited(1); }, 30));
  ASSERT_TRUE(p.wait([&] {
    return p.any([](const Event& e) { return e.kind == "COMMIT" && e.world == 2 && e.index == 0; }, at_kill) &&
           p.any([](const Event& e) { return e.kind == "COMMIT" && e.world == 2 && e.index == 2; }, at_kill);
  }, 30));
  auto st = server.status();
  ASSERT_FALSE(st.recent_evictions.empty());
  // Seen through its closed connection, not by waiting for heartbeat death.
  EXPECT_NE(st.recent_evictions[0].reason.find("connection to the coordinator closed"), std::string::npos)
      << st.recent_evictions[0].reason;

  // The launcher's restart: same replica, restart count 1.
  p.group().set_env(1, "BRAID_RESTART_COUNT", "1");
  p.respawn(1);
  size_t at_restart = p.seq();
  ASSERT_TRUE(p.wait([&] {
    return p.any([](const Event& e) { return e.index == 1 && e.kind == "HEAL"; }, at_restart) &&
           p.any([](const Event& e) { return e.index == 1 && e.kind == "COMMIT" && e.world == 3; }, at_restart);
  }, 30)) << p.output(1);
  bool restarted_seen = false;
  for (auto& m : server.status().members) restarted_seen |= m.replica_id == "1" && m.restart_count == 1;
  EXPECT_TRUE(restarted_seen);
  p.stop_all();
  ASSERT_TRUE(p.wait([&] { return p.exited(0) && p.exited(1) && p.exited(2); }, 30));
  for (int i : {0, 2}) EXPECT_TRUE(p.exit_of(i).ok()) << p.output(i);
  EXPECT_TRUE(p.exit_of(1).ok()) << p.output(1);
  expect_consistent_history(p);
}

TEST(CoordProcesses, WorkersSurviveTheCoordinatorProcessBeingKilledAndRestarted) {
  const uint16_t port = free_port();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  const std::vector<std::pair<std::string, std::string>> secret = {{"BRAID_JOB_SECRET", "coord-test-secret"}};
  Procs p;
  auto coordinator_spec = [&] {
    ProcessSpec s;
    s.argv = {kBraid, "coordinator", "--port", std::to_string(port), "--quiet", "--heartbeat-interval", "0.1",
              "--heartbeat-death", "1", "--quorum-wait", "4", "--collective-timeout", "0.5",
              "--initial-replicas", "2"};
    s.label = "coord";
    s.env = secret;
    return s;
  };
  int c0 = p.spawn(coordinator_spec());
  ASSERT_TRUE(p.wait([&] { return p.line_contains(c0, "listening on"); }, 30)) << p.output(c0);
  int w0 = p.spawn_worker("0", addr, secret), w1 = p.spawn_worker("1", addr, secret);
  ASSERT_TRUE(p.wait([&] { return p.max_commit(w0) >= 5 && p.max_commit(w1) >= 5; }, 30));

  // `braid coordinator --status` shows the membership.
  auto status = run("BRAID_JOB_SECRET=coord-test-secret " + kBraid + " coordinator --status " + addr);
  EXPECT_EQ(status.code, 0) << status.out;
  EXPECT_NE(status.out.find("epoch 1"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("2 member(s)"), std::string::npos) << status.out;
  // A worker with the wrong secret is refused.
  int rogue = p.spawn_worker("9", addr, {{"BRAID_JOB_SECRET", "wrong"}});
  ASSERT_TRUE(p.wait([&] { return p.exited(rogue); }, 30));
  EXPECT_FALSE(p.exit_of(rogue).ok());
  EXPECT_TRUE(p.line_contains(rogue, "secret")) << p.output(rogue);

  p.group().signal(c0, SIGKILL);
  ASSERT_TRUE(p.wait([&] { return p.exited(c0); }, 30));
  p.pump(0.3);  // answers already on the wire are read
  size_t at_gone = p.seq();
  const int64_t before0 = p.max_commit(w0), before1 = p.max_commit(w1);
  int64_t before = std::max(before0, before1);
  p.pump(1.0);
  // Without a coordinator nothing commits, and nobody gives up.
  EXPECT_FALSE(p.any([](const Event& e) { return e.kind == "COMMIT"; }, at_gone));
  EXPECT_FALSE(p.exited(w0));
  EXPECT_FALSE(p.exited(w1));

  int c1 = p.spawn(coordinator_spec());
  ASSERT_TRUE(p.wait([&] {
    return p.any([&](const Event& e) { return e.index == w0 && e.kind == "COMMIT" && e.step > before + 3; }) &&
           p.any([&](const Event& e) { return e.index == w1 && e.kind == "COMMIT" && e.step > before + 3; });
  }, 30)) << p.output(w0) << p.output(c1);
  // They came back with their state, in a new epoch. Healing happens only if
  // the coordinator died while sending a vote's result, after one worker got
  // "committed" and before the other did: then the one behind heals.
  EXPECT_TRUE(p.any([&](const Event& e) { return e.kind == "COMMIT" && e.epoch >= 2; }, at_gone));
  if (before0 == before1) {
    EXPECT_FALSE(p.any([](const Event& e) { return e.kind == "HEAL"; })) << p.output(w0) << p.output(w1);
  } else {
    int behind = before0 < before1 ? w0 : w1;
    int64_t target = std::max(before0, before1) + 1;
    EXPECT_TRUE(p.any([&](const Event& e) { return e.index == behind && e.kind == "HEAL" && e.step == target; }))
        << p.output(behind);
  }
  p.stop_all();
  ASSERT_TRUE(p.wait([&] { return p.exited(w0) && p.exited(w1); }, 30));
  EXPECT_TRUE(p.exit_of(w0).ok()) << p.output(w0);
  EXPECT_TRUE(p.exit_of(w1).ok()) << p.output(w1);
  p.group().signal(c1, SIGTERM);
  ASSERT_TRUE(p.wait([&] { return p.exited(c1); }, 30));
  EXPECT_TRUE(p.exit_of(c1).ok()) << p.output(c1);
  expect_consistent_history(p);
}

TEST(CoordProcesses, LaunchRunsTheCoordinatorAndRestartsAKilledWorkerWhichHeals) {
  const std::string flags = " --heartbeat-interval 0.1 --heartbeat-death 1 --quorum-wait 4 --collective-timeout 0.5";
  auto r = run(kBraid + " launch -n 3" + flags + " -- " + kWorker + " --steps 25 --step-ms 5");
  ASSERT_EQ(r.code, 0) << r.out;
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(r.out.find("[r" + std::to_string(i) + "] DONE step=25"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("DISCARD"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("COMMIT step=24 epoch=1 world=3"), std::string::npos) << r.out;

  // Replica 1 SIGKILLs itself at step 8; the launcher restarts it; it heals
  // from a peer and all three finish.
  r = run(kBraid + " launch -n 3 --max-restarts 1" + flags + " -- " + kWorker +
          " --steps 40 --step-ms 5 --die-at-step 8 --die-replica 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[r1] DYING step=8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("restarting rank 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[r1] HEAL from="), std::string::npos) << r.out;
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(r.out.find("[r" + std::to_string(i) + "] DONE step=40"), std::string::npos) << r.out;
}
