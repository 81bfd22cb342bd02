#pragma once
// The messages between workers and the coordinator. They ride on the
// rendezvous store's connections (net/tcp_store.hpp) as extension ops, so one
// port and one authenticated connection serve both; bodies are small JSON
// objects (a few hundred bytes per step, never tensor data).
//
// Every request names the member by a token: the coordinator's incarnation (a
// random number drawn at its start) and the member id it assigned at
// registration. A restarted coordinator has a new incarnation, so it answers
// "unknown member" to tokens of its predecessor instead of mistaking them for
// members of its own.
#include <cstdint>
#include <string>
#include <vector>

namespace braid::coord {

enum class CoordOp : uint8_t {
  Register = 32,  // net::kFirstExtensionOp
  Heartbeat = 33,
  Quorum = 34,
  Commit = 35,
  Leave = 36,
  Status = 37,
};
const char* op_name(CoordOp op);
bool is_coord_op(uint8_t op);

struct MemberToken {
  uint64_t incarnation = 0;
  uint64_t member_id = 0;
  bool valid() const { return member_id != 0; }
};

// How the coordinator sees the sender of a request.
enum class MemberStatus : uint8_t {
  Ok = 0,
  Evicted = 1,  // this member was evicted: rejoin as a new member
  Unknown = 2,  // not a member of this coordinator (it restarted): register again
};
const char* member_status_name(MemberStatus s);

struct RegisterRequest {
  std::string replica_id;  // stable name of the replica (e.g. the launcher's rank)
  std::string host;
  std::string address;     // where peers reach this worker (for healing); opaque here
  int restart_count = 0;   // how often the launcher restarted it
  int64_t step = 0;        // the step this worker would do next
  // True if this worker's state is that of its last committed step (false
  // while it has not finished healing). Lets a restarted coordinator tell good
  // sources from bad.
  bool synced = false;
  uint32_t last_epoch = 0;  // newest epoch it took part in (to keep epochs increasing)
  int last_world_size = 0;  // size of that epoch
};

struct RegisterReply {
  MemberToken token;
  uint32_t epoch = 0;
  double heartbeat_death_s = 0;
  double quorum_wait_s = 0;
  double poll_s = 0;  // longest the coordinator holds a quorum/commit request
};

struct HeartbeatRequest {
  MemberToken token;
  uint32_t epoch = 0;  // the epoch the worker is in (0: none yet)
  int64_t step = 0;    // progress, for `braid coordinator` to show
};

struct HeartbeatReply {
  MemberStatus status = MemberStatus::Ok;
  std::string reason;         // why evicted
  uint32_t epoch = 0;         // the coordinator's current epoch
  bool epoch_failed = false;  // the sender's epoch has lost a member or a vote: abort its collectives
};

struct QuorumRequest {
  MemberToken token;
  uint64_t seq = 0;  // the client's quorum call number; a resend (after reconnecting) repeats it
  int64_t step = 0;  // the step the worker would do next
};

struct QuorumMember {
  uint64_t member_id = 0;
  std::string replica_id;
  std::string host;
  std::string address;
  int restart_count = 0;
  int64_t step = 0;  // its step when it asked for the quorum
};

// The agreed membership for the next step.
struct QuorumInfo {
  uint32_t epoch = 0;
  int rank = -1;                     // the receiver's rank in members
  std::vector<QuorumMember> members;  // in rank order
  int64_t step = 0;                  // the step every member does next
  // heal_from[r] >= 0: rank r must receive the state (of `step`) from that
  // rank before the step; -1: rank r is up to date.
  std::vector<int> heal_from;
  int world_size() const { return static_cast<int>(members.size()); }
};

struct QuorumReply {
  MemberStatus status = MemberStatus::Ok;
  std::string reason;   // evicted: why; pending: what the quorum is waiting for
  bool pending = false;  // no quorum yet: ask again (the request stays counted)
  QuorumInfo quorum;
};

struct CommitRequest {
  MemberToken token;
  uint32_t epoch = 0;
  int64_t step = 0;
  bool ok = true;  // this member finished the step without error
};

struct CommitReply {
  MemberStatus status = MemberStatus::Ok;
  std::string reason;
  bool pending = false;   // not every member has voted yet: ask again
  bool committed = false;  // every member of the epoch voted ok
  bool stale = false;      // the vote named an epoch that is no longer current
};

struct LeaveRequest {
  MemberToken token;
  std::string reason;
};

// What `braid coordinator` shows.
struct MemberView {
  uint64_t member_id = 0;
  std::string replica_id;
  std::string host;
  std::string address;
  int restart_count = 0;
  int rank = -1;               // in the current epoch; -1: joining
  int64_t step = 0;            // last reported progress
  bool synced = false;
  bool waiting = false;        // at the step boundary, waiting for the quorum
  double last_seen_s = 0;      // seconds since its last message
  double member_for_s = 0;     // seconds since registration
};

struct EvictionView {
  uint64_t member_id = 0;
  std::string replica_id;
  std::string host;
  std::string reason;
  uint32_t epoch = 0;
  double ago_s = 0;
};

struct StatusView {
  uint64_t incarnation = 0;
  double uptime_s = 0;
  uint32_t epoch = 0;
  bool epoch_failed = false;
  int min_replicas = 1;
  int max_replicas = 0;
  int64_t committed_step = -1;  // newest step committed by a vote
  uint64_t commits = 0;
  uint64_t failed_votes = 0;
  uint64_t quorums = 0;
  uint64_t evictions = 0;
  std::string waiting_for;  // why no quorum forms, if one is being waited for
  std::vector<MemberView> members;  // epoch members in rank order, then joiners
  std::vector<EvictionView> recent_evictions;  // newest first
};

// JSON bodies. Decoders throw ProtocolError naming the message on bad input.
std::string encode(const RegisterRequest& m);
std::string encode(const RegisterReply& m);
std::string encode(const HeartbeatRequest& m);
std::string encode(const HeartbeatReply& m);
std::string encode(const QuorumRequest& m);
std::string encode(const QuorumReply& m);
std::string encode(const CommitRequest& m);
std::string encode(const CommitReply& m);
std::string encode(const LeaveRequest& m);
std::string encode(const StatusView& m);

template <typename T>
T decode(const std::string& body);
template <> RegisterRequest decode<RegisterRequest>(const std::string& body);
template <> RegisterReply decode<RegisterReply>(const std::string& body);
template <> HeartbeatRequest decode<HeartbeatRequest>(const std::string& body);
template <> HeartbeatReply decode<HeartbeatReply>(const std::string& body);
template <> QuorumRequest decode<QuorumRequest>(const std::string& body);
template <> QuorumReply decode<QuorumReply>(const std::string& body);
template <> CommitRequest decode<CommitRequest>(const std::string& body);
template <> CommitReply decode<CommitReply>(const std::string& body);
template <> LeaveRequest decode<LeaveRequest>(const std::string& body);
template <> StatusView decode<StatusView>(const std::string& body);

// A table for humans: epoch, progress, members, recent evictions.
std::string format_status(const StatusView& s);

}  // namespace braid::coord
