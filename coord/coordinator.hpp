#pragma once
// The coordinator's state machine: membership, heartbeats and death, epochs,
// the per-step quorum and the commit vote. It never carries tensor data.
//
// Cost model: every event is O(members) work under one mutex (a few µs for
// hundreds of workers); per step each worker sends two requests (quorum,
// commit) and heartbeats at 1 Hz, a few hundred bytes each.
//
// Rules, in the order a step meets them:
// - Members register (replica id, host, address, restart count) and get a
//   member id; a replica that registers again replaces its old member.
// - Quorum: a quorum forms when every member of the current epoch has asked
//   for one (they are at the step boundary), together with the joiners that
//   have asked, if that makes at least min_replicas (at most max_replicas;
//   extra joiners wait). Joiners are therefore admitted only at a step
//   boundary. The very first quorum waits for initial_replicas. A member that
//   is alive but does not reach the boundary within the quorum wait is
//   evicted. Below min_replicas the quorum waits and says why.
// - Epoch: a quorum whose members differ from the current ones, or that
//   follows a failed epoch, starts a new epoch (always larger than any epoch a
//   member reports having seen, so epochs grow across coordinator restarts).
// - Healing: members whose state is behind (a new member, or one at an older
//   step) get a healthy member to copy the state from; see QuorumInfo.
// - Commit vote on (epoch, step): committed iff every member of the epoch
//   votes ok. Any "not ok" vote, an eviction, or a member that has not voted
//   within the quorum wait (it is evicted) fails it. A failed vote fails the
//   epoch: the next quorum forms a new one. Votes naming an older epoch are
//   answered "stale" and change nothing.
// - Death: a member silent for heartbeat_death is evicted; one whose
//   heartbeat connection (the one it registered on, or last heartbeated on)
//   closes without a leave (crash) is evicted at once. An evicted member
//   is told so on its next message and must register again as a new member.
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coord/protocol.hpp"
#include "coord/timeouts.hpp"

namespace braid::coord {

struct CoordinatorOptions {
  int min_replicas = 1;
  int max_replicas = 0;      // 0: no limit
  int initial_replicas = 0;  // the first quorum waits (up to the quorum wait) for this many; 0: min_replicas
  Timeouts timeouts;         // uses heartbeat_death_s and quorum_wait_s
  // Longest a quorum or commit request is held before a "pending" answer, so
  // that clients notice a dead coordinator and can report what they wait for.
  double poll_s = 1.0;
  void validate() const;  // throws ConfigError
};

class Coordinator {
 public:
  // Delivers the answer of a request that was parked (on_quorum/on_commit
  // returned nullopt) to connection `conn`. Called with the coordinator's
  // lock held: it must not call back into the Coordinator.
  using ReplyFn = std::function<void(uint64_t conn, const std::string& body)>;

  // `now` is seconds on a monotonic clock (tests pass a fake one).
  // incarnation 0 draws a random one.
  Coordinator(CoordinatorOptions options, ReplyFn deferred_reply, double now, uint64_t incarnation = 0);

  RegisterReply on_register(const RegisterRequest& r, uint64_t conn, double now);
  HeartbeatReply on_heartbeat(const HeartbeatRequest& r, uint64_t conn, double now);
  // nullopt: parked; the answer goes to ReplyFn(conn, ...) later (at the
  // latest after poll_s, as "pending").
  std::optional<QuorumReply> on_quorum(const QuorumRequest& r, uint64_t conn, double now);
  std::optional<CommitReply> on_commit(const CommitRequest& r, uint64_t conn, double now);
  void on_leave(const LeaveRequest& r, double now);
  // A connection closed: drops what was parked on it; if it carried a
  // member's heartbeats, that member crashed and is evicted.
  void on_close(uint64_t conn, double now);
  // Deaths, quorum-wait and vote expiries, pending answers. Call often
  // (e.g. every heartbeat_death / 20). A gap of more than a quarter of the
  // death timeout since the previous tick means the coordinator itself was
  // not running (stopped, starved): that time does not count against the
  // workers, whose heartbeats it could not read.
  void tick(double now);

  // The wire entry point: decodes `body`, dispatches, encodes the answer;
  // nullopt when parked. Throws braid::Error (e.g. ProtocolError) for a bad
  // request; the caller answers it with the "failed" status.
  std::optional<std::string> handle(uint64_t conn, CoordOp op, const std::string& body, double now);

  StatusView status(double now) const;
  uint64_t incarnation() const { return incarnation_; }
  // Bumped on every change of membership, epoch, eviction or commit; lets a
  // printer show the status only when something happened.
  uint64_t version() const;
  const CoordinatorOptions& options() const { return options_; }

 private:
  struct Member {
    uint64_t id = 0;
    std::string replica_id, host, address;
    int restart_count = 0;
    int64_t step = 0;           // step it asked a quorum for / committed to
    int64_t progress_step = 0;  // from heartbeats, for display
    bool synced = false;
    uint32_t last_epoch = 0;
    int last_world_size = 0;
    double registered_at = 0, last_seen = 0;
    uint64_t heartbeat_conn = 0;
    bool waiting = false;  // asked for the quorum that has not formed yet
    uint64_t quorum_seq = 0, answered_seq = 0;
    std::string answer;  // encoded QuorumReply for answered_seq
  };
  struct Vote {
    uint32_t epoch = 0;
    int64_t step = 0;
    std::map<uint64_t, bool> ballots;
    std::optional<bool> result;
    std::string why;  // why it failed
    double opened_at = 0;
  };
  struct Parked {
    uint64_t member = 0;
    CoordOp op = CoordOp::Quorum;
    double expires = 0;
    uint32_t epoch = 0;  // commit: the vote it waits for
    int64_t step = 0;
  };
  struct Evicted {
    std::string replica_id, host, reason;
    uint32_t epoch = 0;
    double at = 0;
  };

  // Lookup of the sender; sets *status (and *reason) when it is not a member.
  Member* find(const MemberToken& t, MemberStatus* status, std::string* reason);
  bool in_epoch(uint64_t id) const;
  void evict(uint64_t id, const std::string& reason, double now);
  void remove_from_epoch(uint64_t id, const std::string& why);
  void try_form_quorum(double now);
  void form_quorum(std::vector<uint64_t> chosen, double now);
  void decide_vote(bool result, const std::string& why);
  void maybe_complete_vote(double now);
  void answer_parked_commits();
  void set_waiting_for(std::string why, double now);
  QuorumReply pending_quorum_reply() const;
  CommitReply vote_reply(const Vote& v) const;

  CoordinatorOptions options_;
  ReplyFn reply_;
  uint64_t incarnation_;
  double started_at_;
  mutable std::mutex mu_;
  uint64_t next_member_id_ = 1;
  std::map<uint64_t, Member> members_;
  std::vector<uint64_t> epoch_members_;  // rank order
  uint32_t epoch_ = 0;
  bool epoch_failed_ = false;
  bool formed_once_ = false;
  double round_opened_at_ = -1;  // first request at this step boundary
  std::optional<Vote> vote_;
  std::map<uint64_t, Parked> parked_;  // by connection
  std::map<uint64_t, Evicted> evicted_;
  std::deque<uint64_t> evicted_order_;  // bounds evicted_
  std::string waiting_for_;
  double waiting_logged_at_ = -1;
  double last_tick_ = 0;
  int64_t committed_step_ = -1;
  uint64_t commits_ = 0, failed_votes_ = 0, quorums_ = 0, evictions_ = 0;
  uint64_t version_ = 0;
};

// Natural order of replica ids ("r2" < "r10"): ranks follow replica ids so
// that a replica keeps its rank across epochs when others come and go.
bool replica_id_less(const std::string& a, const std::string& b);

}  // namespace braid::coord
