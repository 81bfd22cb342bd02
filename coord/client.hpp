#pragma once
// A worker's side of the coordinator: registration, a heartbeat thread, the
// per-step quorum and commit vote, eviction and coordinator-loss handling.
//
// The training loop it is made for:
//
//   coord::Client client(coord::ClientOptions::from_env());
//   client.on_epoch_failed([&](const std::string& why) { if (comm) comm->abort(why); });
//   while (step < steps) {
//     coord::Quorum q = client.quorum(step);        // blocks at the step boundary
//     if (q.changed) comm = rebuild(store, "world", q.info.epoch, q.info.rank, q.info.world_size());
//     if (q.heal) step = receive_state_from(q.info.heal_from[q.info.rank]);  // joiner: from a healthy peer
//     else send_state_to(ranks r with q.info.heal_from[r] == q.info.rank);
//     bool ok = run_step();                         // false on PeerLost / Timeout / Aborted
//     if (client.commit(step, q.info.epoch, ok)) { apply_update(); ++step; }
//     else discard_update();                        // redo this step in the next quorum
//   }
//   client.leave();
//
// Failures the client absorbs, so the loop only ever sees a false commit and
// a changed quorum:
// - evicted (e.g. the process was stopped for longer than heartbeat death):
//   commit() returns false, the next quorum() registers again as a new member
//   and returns heal = true;
// - the coordinator dies: calls retry (logging once) until it is back or the
//   job timeout passes; a restarted coordinator does not know this worker, so
//   the client registers again, keeping its step and state; the vote that was
//   in flight is lost and counts as not committed.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "coord/protocol.hpp"
#include "coord/timeouts.hpp"

namespace braid::net {
class TcpStore;
}

namespace braid::coord {

struct ClientOptions {
  std::string coordinator;  // HOST:PORT
  std::string secret;       // job secret (empty: none, loopback only)
  std::string replica_id;   // stable name of this replica
  std::string host;         // shown in status and logs
  std::string address;      // where peers reach this worker for healing (opaque to the coordinator)
  int restart_count = 0;
  Timeouts timeouts;
  double connect_timeout_s = 60;  // to reach the coordinator at start

  // coordinator: BRAID_COORDINATOR, else BRAID_RENDEZVOUS; secret: the job
  // secret (BRAID_JOB_SECRET / _FILE); replica_id: BRAID_REPLICA_ID, else
  // BRAID_RANK, else host:pid; restart_count: BRAID_RESTART_COUNT; timeouts:
  // Timeouts::from_env(). Throws ConfigError without a coordinator address.
  static ClientOptions from_env();
};

struct Quorum {
  QuorumInfo info;          // epoch, members in rank order, my rank, step, heal_from
  bool changed = false;     // a different epoch than the previous quorum: rebuild the communicator
  bool heal = false;        // this worker must receive the state of info.step before the step
  int heal_source = -1;     // rank to receive it from (heal) 
  bool rejoined = false;    // registered again since the previous quorum (evicted, or coordinator restarted)
  uint64_t member_id = 0;
  int rank() const { return info.rank; }
  int world_size() const { return info.world_size(); }
  uint32_t epoch() const { return info.epoch; }
  int64_t step() const { return info.step; }
  // Ranks that this worker must send its state to (it is their heal source).
  std::vector<int> heal_targets() const;
};

class Client {
 public:
  // Connects, authenticates, registers and starts heartbeating. Throws
  // AuthError (wrong secret), NetError (no coordinator within
  // connect_timeout_s), ConfigError (bad timeouts).
  explicit Client(ClientOptions options);
  // Leaves (best effort) and stops the heartbeat thread.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Blocks until the members agree on the next step; `step` is the step this
  // worker would do next. Throws Timeout after job_timeout without a quorum
  // (e.g. below min_replicas, or no coordinator), naming what it waited for.
  Quorum quorum(int64_t step);
  // The per-step vote: true iff every member of `epoch` voted ok. False also
  // when this worker was evicted, the epoch is stale, or the coordinator
  // restarted during the vote. Blocks until every member voted (or failed).
  bool commit(int64_t step, uint32_t epoch, bool ok);
  // Tells the coordinator this worker is done (the others form a new epoch
  // without waiting for its heartbeats to stop).
  void leave(const std::string& reason = "finished");

  // Progress shown by `braid coordinator` (quorum/commit also report it).
  void report_step(int64_t step);
  // Called from the heartbeat thread when the coordinator says the epoch this
  // worker is in has failed (a member was lost) or this worker was evicted:
  // a good moment to abort the communicator instead of waiting for the
  // collective deadline.
  void on_epoch_failed(std::function<void(const std::string& why)> fn);

  bool evicted() const;
  bool epoch_failed() const;
  uint64_t member_id() const;
  uint32_t epoch() const;
  const Timeouts& timeouts() const { return options_.timeouts; }
  const ClientOptions& options() const { return options_; }

  // Fault drills and tests: stop (true) or resume sending heartbeats while the
  // rest of the client keeps working, as a hung heartbeat would.
  void suspend_heartbeats(bool suspend);

 private:
  // One request with retries until the job timeout while the coordinator is
  // unreachable; on `via` (default: the control connection).
  std::string call(CoordOp op, const std::string& body, double per_try_s, const char* what,
                   net::TcpStore* via = nullptr);
  void register_now(bool as_new_member, bool again);
  void heartbeat_loop();
  void fire_epoch_failed(const std::string& why);

  ClientOptions options_;
  std::unique_ptr<net::TcpStore> control_;    // register, quorum, commit, leave (the caller's thread)
  // The heartbeat thread's own connection. Registration goes over it too, so
  // the coordinator ties the member to it from the start: when it closes
  // without a leave, the process died.
  std::unique_ptr<net::TcpStore> heartbeat_;
  double poll_s_ = 1;

  mutable std::mutex mu_;  // guards the fields below
  MemberToken token_;
  bool need_register_ = false;  // the coordinator does not know us (restarted)
  bool evicted_ = false;
  std::string evicted_reason_;
  bool epoch_failed_ = false;
  bool synced_ = false;  // state is that of the last committed step (false while healing)
  bool rejoined_ = false;
  bool left_ = false;
  uint32_t epoch_ = 0;
  int last_world_size_ = 0;
  int64_t step_ = 0;
  std::function<void(const std::string&)> on_epoch_failed_;

  uint64_t quorum_seq_ = 0;  // caller's thread only
  std::atomic<double> heartbeat_interval_s_{1};  // may be shortened by the coordinator's death timeout
  std::atomic<double> coordinator_death_s_{5};   // as the coordinator told us
  std::atomic<bool> heartbeats_suspended_{false};
  std::atomic<bool> stopping_{false};
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
  std::thread heartbeat_thread_;
};

}  // namespace braid::coord
