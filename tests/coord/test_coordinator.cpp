// The coordinator's state machine driven by a fake clock: every rule of
// coord/coordinator.hpp, deterministically and without sockets.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "coord/coordinator.hpp"
#include "core/config.hpp"
#include "core/error.hpp"

using namespace braid;
using namespace braid::coord;

namespace {

CoordinatorOptions test_options(int min = 1, int initial = 0, int max = 0) {
  CoordinatorOptions o;
  o.min_replicas = min;
  o.initial_replicas = initial;
  o.max_replicas = max;
  o.timeouts.collective_s = 1;
  o.timeouts.heartbeat_interval_s = 1;
  o.timeouts.heartbeat_death_s = 5;
  o.timeouts.quorum_wait_s = 15;
  o.timeouts.job_timeout_s = 100;
  o.poll_s = 1;
  return o;
}

// One fake worker: its token and its two connections (requests, heartbeats).
struct W {
  std::string name;
  MemberToken token;
  uint64_t conn = 0, hb_conn = 0;
  uint64_t seq = 0;
};

class Sim {
 public:
  explicit Sim(CoordinatorOptions o, uint64_t incarnation = 1000)
      : c(o, [this](uint64_t conn, const std::string& body) { deferred[conn].push_back(body); }, now,
          incarnation) {}

  W reg(const std::string& name, int64_t step = 0, bool synced = false, uint32_t last_epoch = 0, int lws = 0,
        int restart = 0) {
    W w;
    w.name = name;
    w.conn = next_conn++;
    w.hb_conn = next_conn++;
    RegisterRequest r;
    r.replica_id = name;
    r.host = "host-" + name;
    r.step = step;
    r.synced = synced;
    r.last_epoch = last_epoch;
    r.last_world_size = lws;
    r.restart_count = restart;
    w.token = c.on_register(r, w.hb_conn, now).token;  // as the client does
    return w;
  }
  HeartbeatReply hb(const W& w, uint32_t epoch = 0, int64_t step = 0) {
    return c.on_heartbeat(HeartbeatRequest{w.token, epoch, step}, w.hb_conn, now);
  }
  std::optional<QuorumReply> quorum(W& w, int64_t step, bool new_call = true) {
    if (new_call) ++w.seq;
    return c.on_quorum(QuorumRequest{w.token, w.seq, step}, w.conn, now);
  }
  std::optional<CommitReply> commit(const W& w, uint32_t epoch, int64_t step, bool ok = true) {
    return c.on_commit(CommitRequest{w.token, epoch, step, ok}, w.conn, now);
  }
  // The deferred answers delivered to w's request connection so far.
  std::vector<std::string> take(const W& w) {
    auto v = std::move(deferred[w.conn]);
    deferred.erase(w.conn);
    return v;
  }
  QuorumReply take_quorum(const W& w) {
    auto v = take(w);
    EXPECT_EQ(v.size(), 1u) << w.name;
    return v.empty() ? QuorumReply{} : decode<QuorumReply>(v.back());
  }
  CommitReply take_commit(const W& w) {
    auto v = take(w);
    EXPECT_EQ(v.size(), 1u) << w.name;
    return v.empty() ? CommitReply{} : decode<CommitReply>(v.back());
  }
  // Moves the clock in small steps, heartbeating `alive` on the way.
  void advance(double seconds, std::vector<W*> alive = {}) {
    double end = now + seconds;
    while (now < end - 1e-9) {
      now = std::min(end, now + 0.25);
      for (W* w : alive) hb(*w);
      c.tick(now);
    }
  }

  double now = 100;
  std::map<uint64_t, std::vector<std::string>> deferred;
  Coordinator c;
  uint64_t next_conn = 1;
};

// Everyone asks for the quorum; returns each worker's answer (immediate or deferred).
std::vector<QuorumInfo> all_quorum(Sim& s, std::vector<W*> ws, int64_t step) {
  std::vector<std::optional<QuorumReply>> now;
  for (W* w : ws) now.push_back(s.quorum(*w, step));
  std::vector<QuorumInfo> out;
  for (size_t i = 0; i < ws.size(); ++i) {
    QuorumReply r = now[i] ? *now[i] : s.take_quorum(*ws[i]);
    EXPECT_EQ(r.status, MemberStatus::Ok) << ws[i]->name << ": " << r.reason;
    EXPECT_FALSE(r.pending) << ws[i]->name << ": " << r.reason;
    out.push_back(r.quorum);
  }
  return out;
}

// Everyone votes; returns each worker's result.
std::vector<CommitReply> all_commit(Sim& s, std::vector<W*> ws, uint32_t epoch, int64_t step) {
  std::vector<std::optional<CommitReply>> now;
  for (W* w : ws) now.push_back(s.commit(*w, epoch, step));
  std::vector<CommitReply> out;
  for (size_t i = 0; i < ws.size(); ++i) out.push_back(now[i] ? *now[i] : s.take_commit(*ws[i]));
  return out;
}

std::vector<std::string> names(const QuorumInfo& q) {
  std::vector<std::string> v;
  for (auto& m : q.members) v.push_back(m.replica_id);
  return v;
}

}  // namespace

TEST(Coordinator, FirstQuorumWaitsForInitialReplicasThenEveryoneCommits) {
  Sim s(test_options(/*min=*/2, /*initial=*/3));
  W a = s.reg("r0"), b = s.reg("r1");
  EXPECT_FALSE(s.quorum(a, 0));
  EXPECT_FALSE(s.quorum(b, 0));
  s.advance(1.5, {&a, &b});  // past poll_s: parked requests get "pending" with the reason
  auto pa = s.take_quorum(a);
  EXPECT_TRUE(pa.pending);
  EXPECT_NE(pa.reason.find("2 of 3 replica(s) present"), std::string::npos) << pa.reason;
  W c = s.reg("r2");
  EXPECT_FALSE(s.quorum(a, 0, /*new_call=*/false));  // asking again keeps its place
  s.take(b);
  EXPECT_FALSE(s.quorum(b, 0, false));
  auto qc = s.quorum(c, 0);
  ASSERT_TRUE(qc);
  EXPECT_EQ(qc->quorum.epoch, 1u);
  EXPECT_EQ(qc->quorum.world_size(), 3);
  EXPECT_EQ(qc->quorum.rank, 2);
  EXPECT_EQ(qc->quorum.step, 0);
  EXPECT_EQ(qc->quorum.heal_from, (std::vector<int>{-1, -1, -1}));  // nobody is ahead at the start
  EXPECT_EQ(s.take_quorum(a).quorum.rank, 0);
  EXPECT_EQ(s.take_quorum(b).quorum.rank, 1);

  EXPECT_FALSE(s.commit(a, 1, 0));
  EXPECT_FALSE(s.commit(b, 1, 0));
  auto cc = s.commit(c, 1, 0);
  ASSERT_TRUE(cc);
  EXPECT_TRUE(cc->committed);
  EXPECT_TRUE(s.take_commit(a).committed);
  EXPECT_TRUE(s.take_commit(b).committed);

  // Same members: the next quorum keeps the epoch (no communicator rebuild).
  auto q = all_quorum(s, {&a, &b, &c}, 1);
  EXPECT_EQ(q[0].epoch, 1u);
  EXPECT_EQ(q[0].step, 1);
  auto st = s.c.status(s.now);
  EXPECT_EQ(st.committed_step, 0);
  EXPECT_EQ(st.commits, 1u);
  EXPECT_EQ(st.members.size(), 3u);
}

TEST(Coordinator, SilentMemberIsEvictedAfterDeathTheVoteFailsAndSurvivorsGoOn) {
  Sim s(test_options(1, 3));
  W a = s.reg("r0"), b = s.reg("r1"), c = s.reg("r2");
  auto q = all_quorum(s, {&a, &b, &c}, 0);
  for (auto& r : all_commit(s, {&a, &b, &c}, 1, 0)) EXPECT_TRUE(r.committed);
  q = all_quorum(s, {&a, &b, &c}, 1);
  // r2 stops (SIGSTOP): no heartbeats, no vote. r0 and r1 vote ok.
  EXPECT_FALSE(s.commit(a, 1, 1));
  EXPECT_FALSE(s.commit(b, 1, 1));
  s.advance(4.5, {&a, &b});
  for (auto& body : s.take(a)) EXPECT_TRUE(decode<CommitReply>(body).pending);  // not decided before death
  s.take(b);
  EXPECT_FALSE(s.commit(a, 1, 1));
  EXPECT_FALSE(s.commit(b, 1, 1));
  s.advance(1.0, {&a, &b});  // 5.5 s of silence > heartbeat death
  auto ra = s.take_commit(a), rb = s.take_commit(b);
  EXPECT_FALSE(ra.committed);
  EXPECT_FALSE(rb.committed);
  EXPECT_NE(ra.reason.find("r2 was evicted"), std::string::npos) << ra.reason;
  auto st = s.c.status(s.now);
  ASSERT_EQ(st.recent_evictions.size(), 1u);
  EXPECT_NE(st.recent_evictions[0].reason.find("no heartbeat"), std::string::npos);

  // Survivors redo step 1 in a new epoch without r2.
  q = all_quorum(s, {&a, &b}, 1);
  EXPECT_EQ(q[0].epoch, 2u);
  EXPECT_EQ(names(q[0]), (std::vector<std::string>{"r0", "r1"}));
  for (auto& r : all_commit(s, {&a, &b}, 2, 1)) EXPECT_TRUE(r.committed);

  // r2 wakes up: told it was evicted, on a heartbeat and on its late vote.
  auto h = s.hb(c, 1, 1);
  EXPECT_EQ(h.status, MemberStatus::Evicted);
  EXPECT_NE(h.reason.find("no heartbeat"), std::string::npos);
  auto late = s.commit(c, 1, 1);
  ASSERT_TRUE(late);
  EXPECT_EQ(late->status, MemberStatus::Evicted);
  EXPECT_FALSE(late->committed);

  // It rejoins as a new member, and waits for the step boundary.
  W c2 = s.reg("r2", /*step=*/1, /*synced=*/false, /*last_epoch=*/1, 3);
  EXPECT_NE(c2.token.member_id, c.token.member_id);
  EXPECT_FALSE(s.quorum(c2, 1));
  s.advance(0.5, {&a, &b, &c2});
  EXPECT_TRUE(s.take(c2).empty());  // still waiting: r0 and r1 are mid-step
  q = all_quorum(s, {&a, &b}, 2);
  auto q2 = s.take_quorum(c2);
  EXPECT_EQ(q[0].epoch, 3u);
  EXPECT_EQ(q2.quorum.epoch, 3u);
  EXPECT_EQ(q2.quorum.rank, 2);
  EXPECT_EQ(q2.quorum.step, 2);
  ASSERT_EQ(q2.quorum.heal_from.size(), 3u);
  EXPECT_EQ(q2.quorum.heal_from[0], -1);
  EXPECT_EQ(q2.quorum.heal_from[1], -1);
  EXPECT_EQ(q2.quorum.heal_from[2], 0);  // from a healthy member
  for (auto& r : all_commit(s, {&a, &b, &c2}, 3, 2)) EXPECT_TRUE(r.committed);
}

TEST(Coordinator, TimeTheCoordinatorDidNotRunDoesNotCountAgainstWorkers) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  s.advance(3, {&a, &b});
  // The coordinator was stopped for 4.8 s: the heartbeats sent meanwhile sit
  // unread in its sockets. On waking it must not evict everyone.
  s.now += 4.8;
  s.c.tick(s.now);
  EXPECT_EQ(s.c.status(s.now).evictions, 0u);
  s.hb(a);
  s.hb(b);
  // Real silence still kills.
  s.advance(6, {&a});
  auto st = s.c.status(s.now);
  EXPECT_EQ(st.evictions, 1u);
  EXPECT_EQ(s.hb(b).status, MemberStatus::Evicted);
}

TEST(Coordinator, ClosedHeartbeatConnectionEvictsAtOnce) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  s.hb(a);
  s.hb(b);
  EXPECT_FALSE(s.commit(a, 1, 0));
  s.c.on_close(b.hb_conn, s.now);  // SIGKILL: the kernel closes its sockets
  auto r = s.take_commit(a);
  EXPECT_FALSE(r.committed);
  EXPECT_NE(r.reason.find("connection to the coordinator closed"), std::string::npos) << r.reason;
  auto q = all_quorum(s, {&a}, 0);
  EXPECT_EQ(q[0].epoch, 2u);
  EXPECT_EQ(q[0].world_size(), 1);
  // Closing a connection that carries no heartbeats evicts nobody.
  s.c.on_close(a.conn, s.now);
  EXPECT_EQ(s.c.status(s.now).members.size(), 1u);
}

TEST(Coordinator, AnyFalseVoteFailsTheStepAtOnceAndTheEpoch) {
  Sim s(test_options(1, 3));
  W a = s.reg("r0"), b = s.reg("r1"), c = s.reg("r2");
  all_quorum(s, {&a, &b, &c}, 0);
  EXPECT_FALSE(s.commit(a, 1, 0));
  auto rb = s.commit(b, 1, 0, /*ok=*/false);  // e.g. its all-reduce threw PeerLost
  ASSERT_TRUE(rb);
  EXPECT_FALSE(rb->committed);
  EXPECT_FALSE(s.take_commit(a).committed);  // decided without waiting for r2
  auto rc = s.commit(c, 1, 0);
  ASSERT_TRUE(rc);
  EXPECT_FALSE(rc->committed);
  EXPECT_NE(rc->reason.find("r1 voted to discard"), std::string::npos) << rc->reason;
  // Same members, but the communicator of epoch 1 is suspect: a new epoch.
  auto q = all_quorum(s, {&a, &b, &c}, 0);
  EXPECT_EQ(q[0].epoch, 2u);
  for (auto& r : all_commit(s, {&a, &b, &c}, 2, 0)) EXPECT_TRUE(r.committed);
}

TEST(Coordinator, StaleEpochVotesAreIgnored) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  all_commit(s, {&a, &b}, 1, 0);
  // Fail epoch 1, form epoch 2.
  s.commit(a, 1, 1, false);
  s.commit(b, 1, 1);
  auto q = all_quorum(s, {&a, &b}, 1);
  ASSERT_EQ(q[0].epoch, 2u);
  EXPECT_FALSE(s.commit(a, 2, 1));  // r0 votes ok in epoch 2 and waits
  // A late "discard" from epoch 1 must not touch the vote of epoch 2.
  auto stale = s.commit(b, 1, 1, /*ok=*/false);
  ASSERT_TRUE(stale);
  EXPECT_TRUE(stale->stale);
  EXPECT_FALSE(stale->committed);
  EXPECT_NE(stale->reason.find("epoch 1 is over"), std::string::npos) << stale->reason;
  EXPECT_TRUE(s.take(a).empty());
  auto rb = s.commit(b, 2, 1);
  ASSERT_TRUE(rb);
  EXPECT_TRUE(rb->committed);
  EXPECT_TRUE(s.take_commit(a).committed);
  // A heartbeat naming an older epoch is told that epoch failed.
  EXPECT_TRUE(s.hb(a, 1).epoch_failed);
  EXPECT_FALSE(s.hb(a, 2).epoch_failed);
}

TEST(Coordinator, BelowMinReplicasTheQuorumWaitsAndSaysWhy) {
  Sim s(test_options(/*min=*/2, /*initial=*/2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  all_commit(s, {&a, &b}, 1, 0);
  s.hb(b);
  s.c.on_close(b.hb_conn, s.now);  // r1 crashed
  EXPECT_FALSE(s.quorum(a, 1));
  // Far beyond the quorum wait: still no quorum of one.
  for (int i = 0; i < 40; ++i) {
    s.advance(1.0, {&a});
    for (auto& body : s.take(a)) {
      auto r = decode<QuorumReply>(body);
      EXPECT_TRUE(r.pending);
      EXPECT_NE(r.reason.find("min_replicas is 2"), std::string::npos) << r.reason;
    }
    EXPECT_FALSE(s.quorum(a, 1, false));
  }
  EXPECT_NE(s.c.status(s.now).waiting_for.find("min_replicas"), std::string::npos);
  W b2 = s.reg("r1", 0, false, 1, 2, /*restart=*/1);
  auto qb = s.quorum(b2, 0);
  ASSERT_TRUE(qb);
  EXPECT_EQ(qb->quorum.epoch, 2u);
  EXPECT_EQ(qb->quorum.step, 1);
  EXPECT_EQ(qb->quorum.heal_from[1], 0);  // the restarted worker heals from r0
  EXPECT_EQ(s.take_quorum(a).quorum.epoch, 2u);
}

TEST(Coordinator, MaxReplicasKeepsExtraJoinersWaiting) {
  Sim s(test_options(1, 2, /*max=*/2));
  W a = s.reg("r0"), b = s.reg("r1"), c = s.reg("r2");
  EXPECT_FALSE(s.quorum(a, 0));
  auto qb = s.quorum(b, 0);  // formed with the first two
  ASSERT_TRUE(qb);
  EXPECT_EQ(qb->quorum.world_size(), 2);
  s.take(a);
  EXPECT_FALSE(s.quorum(c, 0));
  all_commit(s, {&a, &b}, 1, 0);
  auto q = all_quorum(s, {&a, &b}, 1);  // r2 asked, but the job is full
  EXPECT_EQ(q[0].world_size(), 2);
  EXPECT_EQ(q[0].epoch, 1u);
  s.advance(1.5, {&a, &b, &c});
  auto pc = s.take(c);
  ASSERT_FALSE(pc.empty());
  auto rc = decode<QuorumReply>(pc.back());
  EXPECT_TRUE(rc.pending);
  EXPECT_NE(rc.reason.find("max_replicas"), std::string::npos) << rc.reason;
  all_commit(s, {&a, &b}, 1, 1);
  // r1 leaves: at the next boundary r2 takes its place (and heals).
  s.c.on_leave(LeaveRequest{b.token, "done"}, s.now);
  EXPECT_FALSE(s.quorum(c, 0, false));
  auto qa = s.quorum(a, 2);
  ASSERT_TRUE(qa);
  EXPECT_EQ(names(qa->quorum), (std::vector<std::string>{"r0", "r2"}));
  EXPECT_EQ(qa->quorum.heal_from, (std::vector<int>{-1, 0}));
  EXPECT_EQ(qa->quorum.step, 2);
  EXPECT_EQ(s.take_quorum(c).quorum.rank, 1);
}

TEST(Coordinator, LiveMemberThatNeverReachesTheBoundaryIsEvictedAfterTheQuorumWait) {
  Sim s(test_options(1, 3));
  W a = s.reg("r0"), b = s.reg("r1"), c = s.reg("r2");
  all_quorum(s, {&a, &b, &c}, 0);
  all_commit(s, {&a, &b, &c}, 1, 0);
  EXPECT_FALSE(s.quorum(a, 1));
  EXPECT_FALSE(s.quorum(b, 1));
  s.advance(14, {&a, &b, &c});  // r2 heartbeats (its main thread is stuck)
  s.take(a);
  s.take(b);
  EXPECT_EQ(s.c.status(s.now).evictions, 0u);
  EXPECT_FALSE(s.quorum(a, 1, false));
  EXPECT_FALSE(s.quorum(b, 1, false));
  s.advance(1.5, {&a, &b, &c});
  auto qa = s.take(a);
  ASSERT_FALSE(qa.empty());
  auto q = decode<QuorumReply>(qa.back());
  EXPECT_FALSE(q.pending);
  EXPECT_EQ(names(q.quorum), (std::vector<std::string>{"r0", "r1"}));
  EXPECT_EQ(s.hb(c).status, MemberStatus::Evicted);
  EXPECT_NE(s.c.status(s.now).recent_evictions[0].reason.find("step boundary"), std::string::npos);
}

TEST(Coordinator, LiveMemberThatNeverVotesIsEvictedAfterTheQuorumWait) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  EXPECT_FALSE(s.commit(a, 1, 0));
  s.advance(14, {&a, &b});  // r1 heartbeats but is stuck in the step
  s.take(a);
  EXPECT_EQ(s.c.status(s.now).evictions, 0u);
  s.advance(2, {&a, &b});
  s.take(a);
  auto again = s.commit(a, 1, 0);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->committed);
  EXPECT_NE(again->reason.find("did not vote"), std::string::npos) << again->reason;
  EXPECT_EQ(s.hb(b).status, MemberStatus::Evicted);
}

TEST(Coordinator, ARegistrationOfTheSameReplicaReplacesItsOldMember) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  EXPECT_FALSE(s.commit(a, 1, 0));
  // The launcher restarted r1 before its death was noticed.
  W b2 = s.reg("r1", 0, false, 0, 0, /*restart=*/1);
  auto r = s.take_commit(a);
  EXPECT_FALSE(r.committed);
  EXPECT_EQ(s.hb(b).status, MemberStatus::Evicted);
  EXPECT_NE(s.hb(b).reason.find("replaced"), std::string::npos);
  auto q = all_quorum(s, {&b2, &a}, 0);
  EXPECT_EQ(q[1].epoch, 2u);
  EXPECT_EQ(q[1].members[1].restart_count, 1);
}

TEST(Coordinator, LeavingMembersDoNotStallTheOthers) {
  Sim s(test_options(1, 3));
  W a = s.reg("r0"), b = s.reg("r1"), c = s.reg("r2");
  all_quorum(s, {&a, &b, &c}, 0);
  all_commit(s, {&a, &b, &c}, 1, 0);
  EXPECT_FALSE(s.quorum(a, 1));
  EXPECT_FALSE(s.quorum(b, 1));
  s.c.on_leave(LeaveRequest{c.token, "finished"}, s.now);
  auto q = s.take_quorum(a);
  EXPECT_EQ(q.quorum.epoch, 2u);
  EXPECT_EQ(q.quorum.world_size(), 2);
  EXPECT_EQ(s.c.status(s.now).evictions, 0u);
}

TEST(Coordinator, RestartedCoordinatorKeepsEpochsGrowingAndHealsUnsureWorkers) {
  // Old coordinator: epoch 7 reached; then it dies.
  Sim old(test_options(1, 3), /*incarnation=*/1);
  W a = old.reg("r0");
  Sim s(test_options(1, 1), /*incarnation=*/2);
  // Tokens of the old incarnation are unknown here.
  EXPECT_EQ(s.hb(a).status, MemberStatus::Unknown);
  auto uq = s.quorum(a, 10);
  ASSERT_TRUE(uq);
  EXPECT_EQ(uq->status, MemberStatus::Unknown);
  auto uc = s.commit(a, 7, 10);
  ASSERT_TRUE(uc);
  EXPECT_EQ(uc->status, MemberStatus::Unknown);
  EXPECT_FALSE(uc->committed);
  // They register again with what they know; one was mid-heal.
  W a2 = s.reg("r0", 10, true, 7, 3), b2 = s.reg("r1", 10, true, 7, 3), c2 = s.reg("r2", 10, false, 7, 3);
  EXPECT_FALSE(s.quorum(a2, 10));
  EXPECT_FALSE(s.quorum(b2, 10));  // initial_replicas is 1, but they were 3: wait for the third
  auto q = all_quorum(s, {&c2}, 10);
  EXPECT_EQ(q[0].epoch, 8u);
  EXPECT_EQ(q[0].world_size(), 3);
  EXPECT_EQ(q[0].heal_from[2], 0);
  s.take(a2);
  s.take(b2);
}

TEST(Coordinator, WorkersBehindTheNewestStepHeal) {
  // Steps differ at the start (e.g. resumed from different checkpoints).
  Sim s(test_options(1, 3));
  W x = s.reg("r0"), y = s.reg("r1"), z = s.reg("r2");
  EXPECT_FALSE(s.quorum(x, 5));
  EXPECT_FALSE(s.quorum(y, 7));
  auto r = s.quorum(z, 7);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->quorum.step, 7);
  EXPECT_EQ(r->quorum.heal_from, (std::vector<int>{1, -1, -1}));
  s.take(x);
  s.take(y);
}

TEST(Coordinator, SeveralJoinersHealFromDifferentSources) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  all_quorum(s, {&a, &b}, 0);
  all_commit(s, {&a, &b}, 1, 0);
  W c = s.reg("r2"), d = s.reg("r3");
  EXPECT_FALSE(s.quorum(c, 0));
  EXPECT_FALSE(s.quorum(d, 0));
  auto q = all_quorum(s, {&a, &b}, 1);
  EXPECT_EQ(q[0].heal_from, (std::vector<int>{-1, -1, 0, 1}));
  s.take(c);
  s.take(d);
}

TEST(Coordinator, AResentQuorumRequestGetsTheSameAnswer) {
  Sim s(test_options(1, 2));
  W a = s.reg("r0"), b = s.reg("r1");
  auto q = all_quorum(s, {&a, &b}, 0);
  auto again = s.quorum(a, 0, /*new_call=*/false);  // the connection broke before the answer arrived
  ASSERT_TRUE(again);
  EXPECT_EQ(again->quorum.epoch, q[0].epoch);
  EXPECT_EQ(again->quorum.rank, q[0].rank);
  QuorumRequest old{a.token, a.seq - 1, 0};
  EXPECT_THROW(s.c.on_quorum(old, a.conn, s.now), ProtocolError);
}

TEST(Coordinator, WireRequestsAreValidated) {
  Sim s(test_options());
  EXPECT_THROW(s.c.handle(1, CoordOp::Register, "not json", s.now), ProtocolError);
  EXPECT_THROW(s.c.handle(1, CoordOp::Register, R"({"replica_id": 3})", s.now), ProtocolError);
  EXPECT_THROW(s.c.handle(1, CoordOp::Heartbeat, std::string(100000, ' '), s.now), ProtocolError);
  RegisterRequest r;
  EXPECT_THROW(s.c.handle(1, CoordOp::Register, encode(r), s.now), ProtocolError);  // empty replica id
  r.replica_id = "r0";
  auto reply = s.c.handle(1, CoordOp::Register, encode(r), s.now);
  ASSERT_TRUE(reply);
  auto rr = decode<RegisterReply>(*reply);
  EXPECT_EQ(rr.token.incarnation, 1000u);
  EXPECT_EQ(rr.heartbeat_death_s, 5);
  auto st = decode<StatusView>(*s.c.handle(1, CoordOp::Status, "{}", s.now));
  ASSERT_EQ(st.members.size(), 1u);
  EXPECT_EQ(st.members[0].replica_id, "r0");
  EXPECT_NE(format_status(st).find("r0"), std::string::npos);
}

TEST(Coordinator, ReplicaIdsSortNaturally) {
  EXPECT_TRUE(replica_id_less("r2", "r10"));
  EXPECT_FALSE(replica_id_less("r10", "r2"));
  EXPECT_TRUE(replica_id_less("2", "10"));
  EXPECT_TRUE(replica_id_less("a", "b"));
  EXPECT_TRUE(replica_id_less("r1", "r1a"));
  EXPECT_FALSE(replica_id_less("r1", "r1"));
  EXPECT_TRUE(replica_id_less("node1/r9", "node2/r0"));
}

TEST(CoordinatorOptions, RejectsInconsistentSettings) {
  CoordinatorOptions o;
  EXPECT_NO_THROW(o.validate());
  o.min_replicas = 0;
  EXPECT_THROW(o.validate(), ConfigError);
  o.min_replicas = 3;
  o.max_replicas = 2;
  EXPECT_THROW(o.validate(), ConfigError);
  o.max_replicas = 4;
  o.initial_replicas = 5;
  EXPECT_THROW(o.validate(), ConfigError);
}

TEST(Timeouts, DefaultsFormTheHierarchy) {
  Timeouts t;
  EXPECT_NO_THROW(t.validate());
  EXPECT_LT(t.collective_s, t.heartbeat_death_s);
  EXPECT_LT(t.heartbeat_death_s, t.quorum_wait_s);
  EXPECT_LT(t.quorum_wait_s, t.job_timeout_s);
}

TEST(Timeouts, EachBrokenLevelIsNamed) {
  auto expect_error = [](Timeouts t, const char* words) {
    try {
      t.validate();
      FAIL() << "accepted " << t.describe();
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      EXPECT_FALSE(e.hint().empty());
    }
  };
  Timeouts t;
  t.collective_s = 6;
  expect_error(t, "collective deadline");
  t = {};
  t.quorum_wait_s = 4;
  expect_error(t, "quorum wait");
  t = {};
  t.job_timeout_s = 10;
  expect_error(t, "job timeout");
  t = {};
  t.heartbeat_interval_s = 3;
  expect_error(t, "heartbeat interval");
  t = {};
  t.heartbeat_death_s = -1;
  expect_error(t, "positive");
}

TEST(Timeouts, ReadFromEnvironmentAndConfig) {
  setenv("BRAID_HEARTBEAT_DEATH", "7", 1);
  setenv("BRAID_QUORUM_WAIT", "20", 1);
  Timeouts t = Timeouts::from_env();
  unsetenv("BRAID_HEARTBEAT_DEATH");
  unsetenv("BRAID_QUORUM_WAIT");
  EXPECT_EQ(t.heartbeat_death_s, 7);
  EXPECT_EQ(t.quorum_wait_s, 20);
  bool found = false;
  for (auto& [k, v] : t.to_env(false)) {
    EXPECT_NE(k, "BRAID_COMM_TIMEOUT");
    if (k == "BRAID_HEARTBEAT_DEATH") found = v == "7";
  }
  EXPECT_TRUE(found);
  setenv("BRAID_HEARTBEAT_DEATH", "soon", 1);
  EXPECT_THROW(Timeouts::from_env(), ConfigError);
  unsetenv("BRAID_HEARTBEAT_DEATH");

  Config c = Config::from_string("[fault]\nheartbeat_interval = 0.5\nquorum_wait = 30\n");
  Timeouts u;
  u.read_config(c, "fault");
  c.finish();
  EXPECT_EQ(u.heartbeat_interval_s, 0.5);
  EXPECT_EQ(u.quorum_wait_s, 30);
  EXPECT_EQ(u.heartbeat_death_s, 5);
}
