#include "coord/protocol.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace braid::coord {

using nlohmann::json;

const char* op_name(CoordOp op) {
  switch (op) {
    case CoordOp::Register: return "register";
    case CoordOp::Heartbeat: return "heartbeat";
    case CoordOp::Quorum: return "quorum";
    case CoordOp::Commit: return "commit";
    case CoordOp::Leave: return "leave";
    case CoordOp::Status: return "status";
  }
  return "?";
}

bool is_coord_op(uint8_t op) {
  return op >= static_cast<uint8_t>(CoordOp::Register) && op <= static_cast<uint8_t>(CoordOp::Status);
}

const char* member_status_name(MemberStatus s) {
  switch (s) {
    case MemberStatus::Ok: return "ok";
    case MemberStatus::Evicted: return "evicted";
    case MemberStatus::Unknown: return "unknown";
  }
  return "?";
}

void to_json(json& j, const MemberStatus& s) { j = static_cast<int>(s); }
void from_json(const json& j, MemberStatus& s) {
  int v = j.get<int>();
  if (v < 0 || v > 2) throw ProtocolError(fmt::format("unknown member status {}", v));
  s = static_cast<MemberStatus>(v);
}

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(MemberToken, incarnation, member_id)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RegisterRequest, replica_id, host, address, restart_count, step, synced,
                                   last_epoch, last_world_size)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RegisterReply, token, epoch, heartbeat_death_s, quorum_wait_s, poll_s)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(HeartbeatRequest, token, epoch, step)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(HeartbeatReply, status, reason, epoch, epoch_failed)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(QuorumRequest, token, seq, step)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(QuorumMember, member_id, replica_id, host, address, restart_count, step)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(QuorumInfo, epoch, rank, members, step, heal_from)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(QuorumReply, status, reason, pending, quorum)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CommitRequest, token, epoch, step, ok)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CommitReply, status, reason, pending, committed, stale)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(LeaveRequest, token, reason)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(MemberView, member_id, replica_id, host, address, restart_count, rank, step,
                                   synced, waiting, last_seen_s, member_for_s)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(EvictionView, member_id, replica_id, host, reason, epoch, ago_s)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(StatusView, incarnation, uptime_s, epoch, epoch_failed, min_replicas,
                                   max_replicas, committed_step, commits, failed_votes, quorums, evictions,
                                   waiting_for, members, recent_evictions)

namespace {

template <typename T>
std::string to_text(const T& m) {
  return json(m).dump();
}

template <typename T>
T from_text(const std::string& body, const char* what) {
  try {
    return json::parse(body).get<T>();
  } catch (const json::exception& e) {
    throw ProtocolError(fmt::format("malformed {} message from the coordinator protocol: {}", what, e.what()),
                        "every worker and the coordinator must run the same braid version");
  } catch (const ProtocolError& e) {
    throw ProtocolError(fmt::format("malformed {} message: {}", what, e.what()),
                        "every worker and the coordinator must run the same braid version");
  }
}

}  // namespace

std::string encode(const RegisterRequest& m) { return to_text(m); }
std::string encode(const RegisterReply& m) { return to_text(m); }
std::string encode(const HeartbeatRequest& m) { return to_text(m); }
std::string encode(const HeartbeatReply& m) { return to_text(m); }
std::string encode(const QuorumRequest& m) { return to_text(m); }
std::string encode(const QuorumReply& m) { return to_text(m); }
std::string encode(const CommitRequest& m) { return to_text(m); }
std::string encode(const CommitReply& m) { return to_text(m); }
std::string encode(const LeaveRequest& m) { return to_text(m); }
std::string encode(const StatusView& m) { return to_text(m); }

template <> RegisterRequest decode<RegisterRequest>(const std::string& b) { return from_text<RegisterRequest>(b, "register"); }
template <> RegisterReply decode<RegisterReply>(const std::string& b) { return from_text<RegisterReply>(b, "register reply"); }
template <> HeartbeatRequest decode<HeartbeatRequest>(const std::string& b) { return from_text<HeartbeatRequest>(b, "heartbeat"); }
template <> HeartbeatReply decode<HeartbeatReply>(const std::string& b) { return from_text<HeartbeatReply>(b, "heartbeat reply"); }
template <> QuorumRequest decode<QuorumRequest>(const std::string& b) { return from_text<QuorumRequest>(b, "quorum"); }
template <> QuorumReply decode<QuorumReply>(const std::string& b) { return from_text<QuorumReply>(b, "quorum reply"); }
template <> CommitRequest decode<CommitRequest>(const std::string& b) { return from_text<CommitRequest>(b, "commit"); }
template <> CommitReply decode<CommitReply>(const std::string& b) { return from_text<CommitReply>(b, "commit reply"); }
template <> LeaveRequest decode<LeaveRequest>(const std::string& b) { return from_text<LeaveRequest>(b, "leave"); }
template <> StatusView decode<StatusView>(const std::string& b) { return from_text<StatusView>(b, "status"); }

namespace {

std::string age(double s) {
  if (s < 10) return fmt::format("{:.1f}s", s);
  if (s < 3600) return fmt::format("{:.0f}s", s);
  return fmt::format("{:.1f}h", s / 3600);
}

}  // namespace

std::string format_status(const StatusView& s) {
  std::string out;
  int in_epoch = 0;
  for (auto& m : s.members) in_epoch += m.rank >= 0;
  const char* epoch_state = !s.epoch_failed ? "" : in_epoch > 0 ? " (failed, re-forming)" : " (ended)";
  out += fmt::format("coordinator up {} · epoch {}{} · {} member(s) + {} joining · replicas min {} max {}\n",
                     age(s.uptime_s), s.epoch, epoch_state, in_epoch,
                     s.members.size() - static_cast<size_t>(in_epoch), s.min_replicas,
                     s.max_replicas > 0 ? std::to_string(s.max_replicas) : std::string("-"));
  out += fmt::format("committed step {} · {} commit(s), {} failed vote(s), {} quorum(s), {} eviction(s)\n",
                     s.committed_step >= 0 ? std::to_string(s.committed_step) : std::string("-"), s.commits,
                     s.failed_votes, s.quorums, s.evictions);
  if (!s.waiting_for.empty()) out += fmt::format("waiting: {}\n", s.waiting_for);
  if (!s.members.empty()) {
    out += fmt::format("  {:>4}  {:<12} {:<20} {:>8} {:>6} {:>8} {:>5}  {}\n", "rank", "replica", "host", "step",
                       "seen", "restarts", "id", "state");
    for (auto& m : s.members) {
      std::string state = m.rank < 0 ? "joining" : (m.synced ? "in sync" : "healing/new");
      if (m.waiting) state += ", at step boundary";
      out += fmt::format("  {:>4}  {:<12} {:<20} {:>8} {:>6} {:>8} {:>5}  {}\n",
                         m.rank >= 0 ? std::to_string(m.rank) : std::string("-"), m.replica_id, m.host, m.step,
                         age(m.last_seen_s), m.restart_count, m.member_id, state);
    }
  }
  for (auto& e : s.recent_evictions)
    out += fmt::format("  evicted {} ago: replica {} (id {}, {}) in epoch {}: {}\n", age(e.ago_s), e.replica_id,
                       e.member_id, e.host, e.epoch, e.reason);
  return out;
}

}  // namespace braid::coord
