// The coordinator as a service: a real CoordinatorServer and coord::Clients
// as threads of this process, with short heartbeat settings.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "coord/client.hpp"
#include "coord/coordinator_server.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/tcp_store.hpp"

using namespace braid;
using namespace braid::coord;

namespace {

// collective < death < quorum wait < job timeout, scaled down for tests.
Timeouts fast_timeouts(double job = 30) {
  Timeouts t;
  t.collective_s = 0.1;
  t.heartbeat_interval_s = 0.05;
  t.heartbeat_death_s = 0.6;
  t.quorum_wait_s = 3;
  t.job_timeout_s = job;
  return t;
}

CoordinatorOptions server_options(int initial, int min = 1) {
  CoordinatorOptions o;
  o.min_replicas = min;
  o.initial_replicas = initial;
  o.timeouts = fast_timeouts();
  o.poll_s = 0.2;
  return o;
}

ClientOptions client_options(uint16_t port, const std::string& replica, const std::string& secret = "",
                             double job = 30) {
  ClientOptions o;
  o.coordinator = "127.0.0.1:" + std::to_string(port);
  o.secret = secret;
  o.replica_id = replica;
  o.host = "test";
  o.timeouts = fast_timeouts(job);
  o.connect_timeout_s = 10;
  return o;
}

struct Event {
  std::string replica;
  std::string kind;  // "commit", "discard", "heal"
  int64_t step;
  uint32_t epoch;
  int world;
};

class EventLog {
 public:
  void add(Event e) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }
  std::vector<Event> all() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  int count(const std::function<bool(const Event&)>& pred) const {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (auto& e : events_) n += pred(e);
    return n;
  }
  // Waits (bounded) until pred holds for some event.
  bool wait_for(const std::function<bool(const Event&)>& pred, double seconds) const {
    Deadline d = Deadline::in_seconds(seconds);
    while (!d.expired()) {
      if (count(pred) > 0) return true;
      usleep(10'000);
    }
    return count(pred) > 0;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

// The training loop of coord/client.hpp with the step's work replaced by a
// short sleep; "healing" takes the step from the quorum.
class FakeWorker {
 public:
  FakeWorker(ClientOptions o, EventLog& log) : log_(log), client_(std::move(o)) {}
  ~FakeWorker() { stop(); }
  void start(int64_t max_steps = 1'000'000) {
    thread_ = std::thread([this, max_steps] {
      try {
        while (!stop_ && step_ < max_steps) {
          Quorum q = client_.quorum(step_);
          if (q.heal) {
            log_.add({name(), "heal", q.step(), q.epoch(), q.world_size()});
            step_ = q.step();
          }
          usleep(5'000);
          while (hold_) usleep(5'000);  // "hung" in the step
          bool ok = client_.commit(step_, q.epoch(), true);
          log_.add({name(), ok ? "commit" : "discard", step_, q.epoch(), q.world_size()});
          if (ok) ++step_;
        }
        client_.leave();  // the others need not wait for this one at the next boundary
      } catch (const std::exception& e) {
        error_ = e.what();
      }
    });
  }
  // Waits for the loop to end by itself (max_steps reached).
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  void request_stop() {
    stop_ = true;
    hold_ = false;
  }
  void stop() {
    request_stop();
    if (thread_.joinable()) thread_.join();
  }
  // Emulates SIGSTOP: no heartbeats and no progress, until resume().
  void hang() {
    client_.suspend_heartbeats(true);
    hold_ = true;
  }
  void resume() {
    client_.suspend_heartbeats(false);
    hold_ = false;
  }
  std::string name() const { return client_.options().replica_id; }
  Client& client() { return client_; }
  const std::string& error() const { return error_; }

 private:
  EventLog& log_;
  Client client_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, hold_{false};
  int64_t step_ = 0;
  std::string error_;
};

// No worker's committed steps go backwards or repeat, and every worker that
// committed (epoch, step) agrees with every other on it.
void expect_consistent_history(const std::vector<Event>& events) {
  std::map<std::string, int64_t> last;
  std::map<std::pair<uint32_t, int64_t>, int> world_of;
  for (auto& e : events) {
    if (e.kind == "heal") {
      last[e.replica] = e.step - 1;
      continue;
    }
    if (e.kind != "commit") continue;
    auto it = last.find(e.replica);
    if (it != last.end()) {
      EXPECT_EQ(e.step, it->second + 1) << e.replica << " committed step " << e.step;
    }
    last[e.replica] = e.step;
    auto key = std::make_pair(e.epoch, e.step);
    auto w = world_of.find(key);
    if (w != world_of.end()) {
      EXPECT_EQ(w->second, e.world);
    }
    world_of[key] = e.world;
  }
}

}  // namespace

TEST(CoordService, AllMembersCommitEveryStepAndTheStoreSharesThePort) {
  CoordinatorServer server("127.0.0.1", 0, "", server_options(3));
  net::TcpStore store({"127.0.0.1", server.port()});
  store.set("mesh/world/e1/rank0", "10.0.0.1:5000");
  EventLog log;
  std::vector<std::unique_ptr<FakeWorker>> ws;
  for (int i = 0; i < 3; ++i)
    ws.push_back(std::make_unique<FakeWorker>(client_options(server.port(), std::to_string(i)), log));
  for (auto& w : ws) w->start(20);
  for (auto& w : ws) w->join();
  for (auto& w : ws) EXPECT_EQ(w->error(), "");
  auto events = log.all();
  EXPECT_EQ(log.count([](const Event& e) { return e.kind == "commit"; }), 60);
  EXPECT_EQ(log.count([](const Event& e) { return e.kind != "commit"; }), 0);
  for (auto& e : events) {
    EXPECT_EQ(e.epoch, 1u);
    EXPECT_EQ(e.world, 3);
  }
  expect_consistent_history(events);
  EXPECT_EQ(store.get("mesh/world/e1/rank0", Deadline::in_seconds(5)), "10.0.0.1:5000");
  auto st = server.status();
  EXPECT_EQ(st.committed_step, 19);
  EXPECT_EQ(st.commits, 20u);
}

TEST(CoordService, AWorkerThatStopsHeartbeatingIsEvictedAndRejoinsAfterWaking) {
  CoordinatorServer server("127.0.0.1", 0, "", server_options(3));
  EventLog log;
  std::vector<std::unique_ptr<FakeWorker>> ws;
  for (int i = 0; i < 3; ++i)
    ws.push_back(std::make_unique<FakeWorker>(client_options(server.port(), std::to_string(i)), log));
  for (auto& w : ws) w->start();
  ASSERT_TRUE(log.wait_for([](const Event& e) { return e.kind == "commit" && e.step >= 5; }, 20));
  Stopwatch hung;
  ws[2]->hang();
  // The survivors go on without it, in a new epoch of two.
  ASSERT_TRUE(log.wait_for([](const Event& e) { return e.kind == "commit" && e.world == 2; }, 20));
  // Not before the heartbeat death timeout (generous lower bound).
  EXPECT_GE(hung.seconds(), 0.6 * 0.9);
  auto evicted_at = log.all();
  int64_t survivors_step = 0;
  for (auto& e : evicted_at)
    if (e.kind == "commit") survivors_step = std::max(survivors_step, e.step);
  ws[2]->resume();
  // It learns it was evicted, rejoins as a new member, heals from a peer, and
  // all three commit together again.
  ASSERT_TRUE(log.wait_for([](const Event& e) { return e.kind == "heal" && e.replica == "2"; }, 20));
  EXPECT_TRUE(log.wait_for(
      [&](const Event& e) { return e.kind == "commit" && e.world == 3 && e.step > survivors_step; }, 20));
  for (auto& w : ws) w->request_stop();
  for (auto& w : ws) w->stop();
  for (auto& w : ws) EXPECT_EQ(w->error(), "");
  auto events = log.all();
  expect_consistent_history(events);
  // The step in flight when it hung was discarded by the hung worker.
  EXPECT_GE(log.count([](const Event& e) { return e.kind == "discard" && e.replica == "2"; }), 1);
  auto st = server.status();
  ASSERT_FALSE(st.recent_evictions.empty());
  EXPECT_NE(st.recent_evictions.back().reason.find("no heartbeat"), std::string::npos);
}

TEST(CoordService, SurvivorsHearThatTheirEpochFailedWhileInTheStep) {
  CoordinatorServer server("127.0.0.1", 0, "", server_options(2));
  Client a(client_options(server.port(), "0"));
  Client b(client_options(server.port(), "1"));
  std::atomic<int> fired{0};
  std::string why;
  std::mutex mu;
  a.on_epoch_failed([&](const std::string& w) {
    std::lock_guard<std::mutex> lock(mu);
    why = w;
    fired++;
  });
  std::thread tb([&] { b.quorum(0); });
  Quorum q = a.quorum(0);
  tb.join();
  EXPECT_EQ(q.world_size(), 2);
  // a is "in its step" (no coordinator calls); b stops heartbeating.
  b.suspend_heartbeats(true);
  Deadline d = Deadline::in_seconds(20);
  while (!fired && !d.expired()) usleep(10'000);
  ASSERT_EQ(fired.load(), 1);
  EXPECT_TRUE(a.epoch_failed());
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_NE(why.find("epoch 1"), std::string::npos) << why;
  }
  EXPECT_FALSE(a.commit(0, q.epoch(), true));
  Quorum q2 = a.quorum(0);
  EXPECT_EQ(q2.world_size(), 1);
  EXPECT_TRUE(q2.changed);
  EXPECT_FALSE(a.epoch_failed());
  // b wakes up: its vote is refused and it rejoins at the next quorum.
  b.suspend_heartbeats(false);
  EXPECT_FALSE(b.commit(0, q.epoch(), true));
  EXPECT_TRUE(b.evicted());
}

TEST(CoordService, WorkersReRegisterWithARestartedCoordinatorAndContinue) {
  auto server = std::make_unique<CoordinatorServer>("127.0.0.1", 0, "", server_options(2));
  const uint16_t port = server->port();
  const uint64_t first = server->incarnation();
  EventLog log;
  std::vector<std::unique_ptr<FakeWorker>> ws;
  for (int i = 0; i < 2; ++i) ws.push_back(std::make_unique<FakeWorker>(client_options(port, std::to_string(i)), log));
  for (auto& w : ws) w->start();
  ASSERT_TRUE(log.wait_for([](const Event& e) { return e.kind == "commit" && e.step >= 5; }, 20));
  uint32_t old_epoch = server->status().epoch;
  server.reset();  // the coordinator dies; the workers keep their state and retry
  usleep(300'000);
  int64_t before = 0;
  for (auto& e : log.all())
    if (e.kind == "commit") before = std::max(before, e.step);
  server = std::make_unique<CoordinatorServer>("127.0.0.1", port, "", server_options(1));
  EXPECT_NE(server->incarnation(), first);
  ASSERT_TRUE(log.wait_for(
      [&](const Event& e) { return e.kind == "commit" && e.epoch > old_epoch && e.step > before + 3; }, 20));
  EXPECT_EQ(server->status().members.size(), 2u);
  for (auto& w : ws) w->request_stop();
  for (auto& w : ws) w->stop();
  for (auto& w : ws) EXPECT_EQ(w->error(), "");
  auto events = log.all();
  expect_consistent_history(events);
  // Both came back as members of one epoch (the second waited for the first's
  // previous world size), and no step was healed: their state was intact.
  EXPECT_EQ(log.count([](const Event& e) { return e.kind == "heal"; }), 0);
}

TEST(CoordService, AWrongOrMissingSecretIsRefused) {
  CoordinatorServer server("127.0.0.1", 0, "job-secret", server_options(1));
  EXPECT_THROW(Client(client_options(server.port(), "0", "not-the-secret")), AuthError);
  EXPECT_THROW(Client(client_options(server.port(), "0", "")), AuthError);
  Client ok(client_options(server.port(), "0", "job-secret"));
  EXPECT_EQ(ok.quorum(0).world_size(), 1);
  EXPECT_EQ(server.status().members.size(), 1u);
}

TEST(CoordService, BelowMinReplicasWorkersWaitThenFailWithTheReason) {
  CoordinatorServer server("127.0.0.1", 0, "", server_options(2, /*min=*/2));
  Client a(client_options(server.port(), "0", "", /*job=*/4));
  {
    Client b(client_options(server.port(), "1", "", 4));
    std::thread tb([&] { b.quorum(0); });
    a.quorum(0);
    tb.join();
  }  // b leaves
  Stopwatch waited;
  try {
    a.quorum(0);
    FAIL() << "trained below min_replicas";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find("min_replicas is 2"), std::string::npos) << e.what();
    EXPECT_GE(waited.seconds(), 4 * 0.9);  // it waited the job timeout, not less
  }
  EXPECT_NE(server.status().waiting_for.find("min_replicas"), std::string::npos);
}

TEST(CoordService, APlainStoreIsNotACoordinator) {
  net::TcpStoreServer plain("127.0.0.1", 0);
  try {
    Client c(client_options(plain.port(), "0"));
    FAIL() << "registered with a plain store";
  } catch (const NetError& e) {
    EXPECT_NE(std::string(e.what()).find("no coordinator"), std::string::npos) << e.what();
  }
}
