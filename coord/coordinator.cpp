#include "coord/coordinator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <random>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace braid::coord {

namespace {

constexpr size_t kMaxBody = 64 * 1024;     // coordinator messages are small; refuse anything else
constexpr size_t kMaxEvictedRemembered = 4096;
constexpr size_t kRecentEvictionsShown = 8;
constexpr double kWaitLogEveryS = 5;

uint64_t random_incarnation(double now) {
  std::random_device rd;
  uint64_t v = (uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(now * 1e9) ^ static_cast<uint64_t>(now_ns());
  return v ? v : 1;
}

std::string list_replicas(const std::vector<std::string>& names) {
  std::string s;
  for (auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

void check_text(const std::string& v, const char* field, size_t max, bool required) {
  if (required && v.empty()) throw ProtocolError(fmt::format("register: {} is empty", field));
  if (v.size() > max) throw ProtocolError(fmt::format("register: {} is longer than {} bytes", field, max));
}

}  // namespace

bool replica_id_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    bool da = std::isdigit(static_cast<unsigned char>(a[i])), db = std::isdigit(static_cast<unsigned char>(b[j]));
    if (da && db) {
      size_t i0 = i, j0 = j;
      while (i < a.size() && a[i] == '0') ++i;
      while (j < b.size() && b[j] == '0') ++j;
      size_t is = i, js = j;
      while (i < a.size() && std::isdigit(static_cast<unsigned char>(a[i]))) ++i;
      while (j < b.size() && std::isdigit(static_cast<unsigned char>(b[j]))) ++j;
      if (i - is != j - js) return i - is < j - js;
      int c = a.compare(is, i - is, b, js, j - js);
      if (c != 0) return c < 0;
      if (i - i0 != j - j0) return i - i0 < j - j0;  // "01" after "1"
    } else {
      if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

void CoordinatorOptions::validate() const {
  if (min_replicas < 1) throw ConfigError(fmt::format("min_replicas must be at least 1 (got {})", min_replicas));
  if (max_replicas < 0) throw ConfigError("max_replicas must be 0 (no limit) or positive");
  if (max_replicas > 0 && max_replicas < min_replicas)
    throw ConfigError(fmt::format("max_replicas ({}) is below min_replicas ({})", max_replicas, min_replicas));
  if (initial_replicas < 0) throw ConfigError("initial_replicas must be 0 (= min_replicas) or positive");
  if (max_replicas > 0 && initial_replicas > max_replicas)
    throw ConfigError(
        fmt::format("initial_replicas ({}) is above max_replicas ({})", initial_replicas, max_replicas));
  if (!(poll_s > 0)) throw ConfigError("the coordinator's poll interval must be positive");
  timeouts.validate();
}

Coordinator::Coordinator(CoordinatorOptions options, ReplyFn deferred_reply, double now, uint64_t incarnation)
    : options_(std::move(options)),
      reply_(std::move(deferred_reply)),
      incarnation_(incarnation ? incarnation : random_incarnation(now)),
      started_at_(now),
      last_tick_(now) {
  options_.validate();
}

uint64_t Coordinator::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

Coordinator::Member* Coordinator::find(const MemberToken& t, MemberStatus* status, std::string* reason) {
  if (t.incarnation != incarnation_) {
    *status = MemberStatus::Unknown;
    *reason = "this coordinator does not know the worker (it was restarted, or the worker talked to another one)";
    return nullptr;
  }
  if (auto it = members_.find(t.member_id); it != members_.end()) {
    *status = MemberStatus::Ok;
    return &it->second;
  }
  if (auto e = evicted_.find(t.member_id); e != evicted_.end()) {
    *status = MemberStatus::Evicted;
    *reason = e->second.reason;
    return nullptr;
  }
  *status = MemberStatus::Unknown;
  *reason = fmt::format("member id {} is unknown to this coordinator (it left, or never registered)", t.member_id);
  return nullptr;
}

bool Coordinator::in_epoch(uint64_t id) const {
  return std::find(epoch_members_.begin(), epoch_members_.end(), id) != epoch_members_.end();
}

// ---------------------------------------------------------------- requests

RegisterReply Coordinator::on_register(const RegisterRequest& r, uint64_t conn, double now) {
  check_text(r.replica_id, "replica_id", 256, true);
  check_text(r.host, "host", 256, false);
  check_text(r.address, "address", 1024, false);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> replaced;
  for (auto& [id, m] : members_)
    if (m.replica_id == r.replica_id) replaced.push_back(id);
  for (uint64_t id : replaced)
    evict(id,
          fmt::format("replaced by a new registration of replica {} (restart {}) from {}", r.replica_id,
                      r.restart_count, r.host.empty() ? "?" : r.host),
          now);
  Member m;
  m.id = next_member_id_++;
  m.replica_id = r.replica_id;
  m.host = r.host;
  m.address = r.address;
  m.restart_count = r.restart_count;
  m.step = r.step;
  m.progress_step = r.step;
  m.synced = r.synced;
  m.last_epoch = r.last_epoch;
  m.last_world_size = r.last_world_size;
  m.registered_at = now;
  m.last_seen = now;
  m.heartbeat_conn = conn;  // clients register on their heartbeat connection
  log::info("coordinator: replica {} joined as member {} from {} (restart {}, step {}{})", m.replica_id, m.id,
            m.host.empty() ? "?" : m.host, m.restart_count, m.step,
            m.last_epoch ? fmt::format(", was in epoch {}", m.last_epoch) : std::string());
  RegisterReply reply;
  reply.token = {incarnation_, m.id};
  members_.emplace(m.id, std::move(m));
  ++version_;
  if (!replaced.empty()) try_form_quorum(now);
  reply.epoch = epoch_;
  reply.heartbeat_death_s = options_.timeouts.heartbeat_death_s;
  reply.quorum_wait_s = options_.timeouts.quorum_wait_s;
  reply.poll_s = options_.poll_s;
  return reply;
}

HeartbeatReply Coordinator::on_heartbeat(const HeartbeatRequest& r, uint64_t conn, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  HeartbeatReply reply;
  Member* m = find(r.token, &reply.status, &reply.reason);
  reply.epoch = epoch_;
  if (!m) return reply;
  m->last_seen = now;
  m->heartbeat_conn = conn;
  m->progress_step = r.step;
  // The client compares against the epoch it is in when the answer arrives,
  // so a heartbeat sent just before a new epoch formed raises no alarm.
  reply.epoch_failed = r.epoch != 0 && (r.epoch < epoch_ || (r.epoch == epoch_ && epoch_failed_));
  return reply;
}

std::optional<QuorumReply> Coordinator::on_quorum(const QuorumRequest& r, uint64_t conn, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  QuorumReply reply;
  Member* m = find(r.token, &reply.status, &reply.reason);
  if (!m) return reply;
  m->last_seen = now;
  const uint64_t id = m->id;
  if (r.seq != 0 && r.seq == m->answered_seq) {
    // A resend after the connection broke: the quorum already formed.
    QuorumReply again;
    again = decode<QuorumReply>(m->answer);
    return again;
  }
  if (r.seq <= m->answered_seq)
    throw ProtocolError(fmt::format("quorum request {} of replica {} is older than its answered request {}", r.seq,
                                    m->replica_id, m->answered_seq));
  if (!m->waiting || m->quorum_seq != r.seq) {
    m->waiting = true;
    m->quorum_seq = r.seq;
    m->step = r.step;
    m->progress_step = r.step;
    ++version_;
  }
  if (round_opened_at_ < 0 && (in_epoch(id) || epoch_members_.empty())) round_opened_at_ = now;
  try_form_quorum(now);
  auto it = members_.find(id);
  if (it == members_.end()) {  // cannot happen (a waiting member is not evicted here), but be safe
    reply.status = MemberStatus::Evicted;
    reply.reason = evicted_.count(id) ? evicted_[id].reason : "evicted";
    return reply;
  }
  if (it->second.answered_seq == r.seq) return decode<QuorumReply>(it->second.answer);
  parked_[conn] = Parked{id, CoordOp::Quorum, now + options_.poll_s, 0, 0};
  return std::nullopt;
}

std::optional<CommitReply> Coordinator::on_commit(const CommitRequest& r, uint64_t conn, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  CommitReply reply;
  Member* m = find(r.token, &reply.status, &reply.reason);
  if (!m) return reply;
  m->last_seen = now;
  const uint64_t id = m->id;
  if (r.epoch != epoch_ || !in_epoch(id)) {
    reply.stale = true;
    reply.reason = fmt::format("stale vote: epoch {} is over (the current epoch is {})", r.epoch, epoch_);
    return reply;
  }
  if (vote_ && vote_->epoch == r.epoch && vote_->step == r.step) {
    if (vote_->result) return vote_reply(*vote_);
  } else if (vote_ && vote_->epoch == r.epoch && !vote_->result) {
    decide_vote(false,
                fmt::format("members disagree on the step: replica {} voted on step {} while the vote is on step {}",
                            m->replica_id, r.step, vote_->step));
    reply.reason = vote_->why;
    return reply;
  } else if (vote_ && vote_->epoch == r.epoch && r.step < vote_->step) {
    reply.stale = true;
    reply.reason = fmt::format("stale vote: the vote on step {} is over", r.step);
    return reply;
  } else {
    vote_ = Vote{r.epoch, r.step, {}, std::nullopt, {}, now};
  }
  if (epoch_failed_) {
    decide_vote(false, fmt::format("epoch {} has lost a member; a new quorum must form", epoch_));
  } else {
    vote_->ballots.emplace(id, r.ok);
    if (!r.ok) decide_vote(false, fmt::format("replica {} voted to discard step {}", m->replica_id, r.step));
    else maybe_complete_vote(now);
  }
  if (vote_->result) return vote_reply(*vote_);
  parked_[conn] = Parked{id, CoordOp::Commit, now + options_.poll_s, r.epoch, r.step};
  return std::nullopt;
}

void Coordinator::on_leave(const LeaveRequest& r, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  MemberStatus st;
  std::string why;
  Member* m = find(r.token, &st, &why);
  if (!m) return;
  const uint64_t id = m->id;
  log::info("coordinator: replica {} (member {}) left{}", m->replica_id, id,
            r.reason.empty() ? std::string() : ": " + r.reason);
  remove_from_epoch(id, fmt::format("replica {} left", m->replica_id));
  for (auto it = parked_.begin(); it != parked_.end();) it = it->second.member == id ? parked_.erase(it) : std::next(it);
  members_.erase(id);
  ++version_;
  try_form_quorum(now);
}

void Coordinator::on_close(uint64_t conn, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  parked_.erase(conn);
  std::vector<uint64_t> crashed;
  for (auto& [id, m] : members_)
    if (m.heartbeat_conn == conn) crashed.push_back(id);
  if (crashed.empty()) return;
  for (uint64_t id : crashed)
    evict(id, "its connection to the coordinator closed: the process exited or crashed", now);
  try_form_quorum(now);
}

void Coordinator::tick(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  const Timeouts& t = options_.timeouts;
  const double gap = now - last_tick_;
  last_tick_ = now;
  if (gap > t.heartbeat_death_s / 4) {
    log::warn("coordinator: it did not run for {:.1f} s (stopped or starved); that time does not count against "
              "the workers",
              gap);
    for (auto& [id, m] : members_) m.last_seen += gap;
    if (round_opened_at_ >= 0) round_opened_at_ += gap;
    if (vote_ && !vote_->result) vote_->opened_at += gap;
  }
  std::vector<uint64_t> dead;
  for (auto& [id, m] : members_)
    if (now - m.last_seen > t.heartbeat_death_s) dead.push_back(id);
  for (uint64_t id : dead) {
    auto& m = members_[id];
    evict(id,
          fmt::format("no heartbeat for {:.1f} s (heartbeat death is {} s): it hung, was stopped or is cut off",
                      now - m.last_seen, t.heartbeat_death_s),
          now);
  }
  if (vote_ && !vote_->result && vote_->epoch == epoch_ && now - vote_->opened_at >= t.quorum_wait_s) {
    std::vector<uint64_t> silent;
    for (uint64_t id : epoch_members_)
      if (!vote_->ballots.count(id)) silent.push_back(id);
    for (uint64_t id : silent)
      evict(id,
            fmt::format("alive but did not vote on step {} within the quorum wait ({} s): stuck in the step?",
                        vote_->step, t.quorum_wait_s),
            now);
  }
  try_form_quorum(now);
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (it->second.expires > now) {
      ++it;
      continue;
    }
    if (it->second.op == CoordOp::Quorum) {
      reply_(it->first, encode(pending_quorum_reply()));
    } else {
      CommitReply pending;
      pending.pending = true;
      pending.reason = "waiting for the other members' votes";
      reply_(it->first, encode(pending));
    }
    it = parked_.erase(it);
  }
  if (!waiting_for_.empty() && round_opened_at_ >= 0 && now - round_opened_at_ >= t.heartbeat_interval_s * 2 &&
      (waiting_logged_at_ < 0 || now - waiting_logged_at_ >= kWaitLogEveryS)) {
    log::warn("coordinator: no quorum for {:.1f} s: {}", now - round_opened_at_, waiting_for_);
    waiting_logged_at_ = now;
  }
}

std::optional<std::string> Coordinator::handle(uint64_t conn, CoordOp op, const std::string& body, double now) {
  if (body.size() > kMaxBody)
    throw ProtocolError(fmt::format("{} request of {} bytes is larger than the limit of {} bytes", op_name(op),
                                    body.size(), kMaxBody));
  switch (op) {
    case CoordOp::Register:
      return encode(on_register(decode<RegisterRequest>(body), conn, now));
    case CoordOp::Heartbeat:
      return encode(on_heartbeat(decode<HeartbeatRequest>(body), conn, now));
    case CoordOp::Quorum: {
      auto r = on_quorum(decode<QuorumRequest>(body), conn, now);
      if (!r) return std::nullopt;
      return encode(*r);
    }
    case CoordOp::Commit: {
      auto r = on_commit(decode<CommitRequest>(body), conn, now);
      if (!r) return std::nullopt;
      return encode(*r);
    }
    case CoordOp::Leave:
      on_leave(decode<LeaveRequest>(body), now);
      return std::string("{}");
    case CoordOp::Status:
      return encode(status(now));
  }
  throw ProtocolError(fmt::format("unknown coordinator op {}", static_cast<int>(op)));
}

// ---------------------------------------------------------------- internals

void Coordinator::evict(uint64_t id, const std::string& reason, double now) {
  auto it = members_.find(id);
  if (it == members_.end()) return;
  Member& m = it->second;
  log::warn("coordinator: evicted replica {} (member {}, {}) from epoch {}: {}", m.replica_id, id,
            m.host.empty() ? "?" : m.host, epoch_, reason);
  evicted_[id] = Evicted{m.replica_id, m.host, reason, epoch_, now};
  evicted_order_.push_back(id);
  while (evicted_order_.size() > kMaxEvictedRemembered) {
    evicted_.erase(evicted_order_.front());
    evicted_order_.pop_front();
  }
  ++evictions_;
  ++version_;
  remove_from_epoch(id, fmt::format("replica {} was evicted: {}", m.replica_id, reason));
  for (auto p = parked_.begin(); p != parked_.end();) {
    if (p->second.member != id) {
      ++p;
      continue;
    }
    if (p->second.op == CoordOp::Quorum) {
      QuorumReply r;
      r.status = MemberStatus::Evicted;
      r.reason = reason;
      reply_(p->first, encode(r));
    } else {
      CommitReply r;
      r.status = MemberStatus::Evicted;
      r.reason = reason;
      reply_(p->first, encode(r));
    }
    p = parked_.erase(p);
  }
  members_.erase(it);
}

void Coordinator::remove_from_epoch(uint64_t id, const std::string& why) {
  auto pos = std::find(epoch_members_.begin(), epoch_members_.end(), id);
  if (pos == epoch_members_.end()) return;
  epoch_members_.erase(pos);
  // The epoch's communicator includes the lost member: it cannot be used for
  // another step, so the next quorum must start a new epoch.
  epoch_failed_ = true;
  if (vote_ && !vote_->result && vote_->epoch == epoch_) decide_vote(false, why);
}

void Coordinator::set_waiting_for(std::string why, double) { waiting_for_ = std::move(why); }

void Coordinator::try_form_quorum(double now) {
  const Timeouts& t = options_.timeouts;
  const bool round_expired = round_opened_at_ >= 0 && now - round_opened_at_ >= t.quorum_wait_s;
  if (!epoch_members_.empty()) {
    std::vector<uint64_t> missing;
    std::vector<std::string> names;
    for (uint64_t id : epoch_members_)
      if (!members_[id].waiting) {
        missing.push_back(id);
        names.push_back(members_[id].replica_id);
      }
    if (!missing.empty()) {
      if (!round_expired) {
        size_t joiners = 0;
        for (auto& [id, m] : members_) joiners += m.waiting && !in_epoch(id);
        const bool full = options_.max_replicas > 0 &&
                          static_cast<int>(epoch_members_.size()) >= options_.max_replicas && joiners > 0;
        set_waiting_for(fmt::format("{} of {} member(s) at the step boundary; waiting for {}{}",
                                    epoch_members_.size() - missing.size(), epoch_members_.size(),
                                    list_replicas(names),
                                    full ? fmt::format("; the job is full (max_replicas {}): {} joiner(s) wait for "
                                                       "a place",
                                                       options_.max_replicas, joiners)
                                         : std::string()),
                        now);
        return;
      }
      for (uint64_t id : missing)
        evict(id,
              fmt::format("alive but did not reach the step boundary within the quorum wait ({} s): stuck or too "
                          "slow",
                          t.quorum_wait_s),
              now);
    }
  }
  std::vector<uint64_t> chosen = epoch_members_;  // all waiting now
  std::vector<uint64_t> joiners;
  for (auto& [id, m] : members_)  // map order = registration order
    if (m.waiting && !in_epoch(id)) joiners.push_back(id);
  const int min = options_.min_replicas, max = options_.max_replicas;
  if (chosen.empty() && joiners.empty()) {  // nobody is at a step boundary: nothing is waited for
    set_waiting_for({}, now);
    return;
  }
  if (chosen.empty()) {
    // No running epoch: the job starts, or restarts after losing everyone or
    // the coordinator. Wait for the expected size for a while so that the
    // first epoch does not start with whoever was fastest.
    int target = options_.initial_replicas > 0 ? options_.initial_replicas : min;
    for (uint64_t id : joiners) target = std::max(target, members_[id].last_world_size);
    if (max > 0) target = std::min(target, max);
    int have = static_cast<int>(joiners.size());
    if (have < target && !(round_expired && have >= min)) {
      std::vector<std::string> names;
      for (uint64_t id : joiners) names.push_back(members_[id].replica_id);
      set_waiting_for(fmt::format("{} of {} replica(s) present to start{}{}", have, target,
                                  names.empty() ? "" : ": ", list_replicas(names)),
                      now);
      return;
    }
  }
  size_t left_out = 0;
  for (uint64_t id : joiners) {
    if (max == 0 || static_cast<int>(chosen.size()) < max) chosen.push_back(id);
    else ++left_out;
  }
  if (static_cast<int>(chosen.size()) < min) {
    std::vector<std::string> names;
    for (uint64_t id : chosen) names.push_back(members_[id].replica_id);
    set_waiting_for(fmt::format("only {} replica(s) present ({}) but min_replicas is {}: not training until more "
                                "join (restart the lost workers, or lower min_replicas)",
                                chosen.size(), names.empty() ? "none" : list_replicas(names), min),
                    now);
    return;
  }
  form_quorum(std::move(chosen), now);
  if (left_out > 0)
    set_waiting_for(fmt::format("the job is full (max_replicas {}): {} joiner(s) wait for a place", max, left_out),
                    now);
}

void Coordinator::form_quorum(std::vector<uint64_t> chosen, double now) {
  std::sort(chosen.begin(), chosen.end(), [&](uint64_t a, uint64_t b) {
    const auto& ra = members_[a].replica_id;
    const auto& rb = members_[b].replica_id;
    if (ra != rb) return replica_id_less(ra, rb);
    return a < b;
  });
  const bool changed = !formed_once_ || epoch_failed_ || chosen != epoch_members_;
  if (changed) {
    uint32_t e = epoch_;
    for (uint64_t id : chosen) e = std::max(e, members_[id].last_epoch);
    epoch_ = e + 1;
    epoch_failed_ = false;
    vote_.reset();
  }
  epoch_members_ = chosen;
  formed_once_ = true;
  const int n = static_cast<int>(chosen.size());

  // Healing sources: members known to hold a committed state (synced) at the
  // newest step among them. Without any (job start, coordinator restart with
  // unsure workers) the newest step among all decides.
  std::vector<int> pool;
  for (int r = 0; r < n; ++r)
    if (members_[chosen[r]].synced) pool.push_back(r);
  if (pool.empty())
    for (int r = 0; r < n; ++r) pool.push_back(r);
  int64_t step = INT64_MIN;
  for (int r : pool) step = std::max(step, members_[chosen[r]].step);
  std::vector<int> sources;
  for (int r : pool)
    if (members_[chosen[r]].step == step) sources.push_back(r);
  std::vector<int> heal_from(n, -1);
  size_t next_source = 0;
  std::vector<std::string> heals;
  for (int r = 0; r < n; ++r) {
    if (std::find(sources.begin(), sources.end(), r) != sources.end()) continue;
    heal_from[r] = sources[next_source++ % sources.size()];
    heals.push_back(fmt::format("{} <- {}", members_[chosen[r]].replica_id, members_[chosen[heal_from[r]]].replica_id));
  }

  QuorumReply reply;
  reply.quorum.epoch = epoch_;
  reply.quorum.step = step;
  reply.quorum.heal_from = heal_from;
  std::vector<std::string> names;
  for (uint64_t id : chosen) {
    const Member& m = members_[id];
    reply.quorum.members.push_back(QuorumMember{id, m.replica_id, m.host, m.address, m.restart_count, m.step});
    names.push_back(m.replica_id);
  }
  for (int r = 0; r < n; ++r) {
    Member& m = members_[chosen[r]];
    reply.quorum.rank = r;
    m.answer = encode(reply);
    m.answered_seq = m.quorum_seq;
    m.waiting = false;
    m.last_epoch = epoch_;
    m.last_world_size = n;
    if (heal_from[r] >= 0) m.synced = false;  // until it commits a step after healing
    m.step = step;
  }
  round_opened_at_ = -1;
  waiting_for_.clear();
  waiting_logged_at_ = -1;
  ++quorums_;
  ++version_;
  if (changed)
    log::info("coordinator: epoch {} with {} member(s) at step {}: {}{}", epoch_, n, step, list_replicas(names),
              heals.empty() ? std::string() : "; healing " + list_replicas(heals));
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (it->second.op != CoordOp::Quorum || !in_epoch(it->second.member)) {
      ++it;
      continue;
    }
    reply_(it->first, members_[it->second.member].answer);
    it = parked_.erase(it);
  }
  (void)now;
}

void Coordinator::decide_vote(bool result, const std::string& why) {
  Vote& v = *vote_;
  if (v.result) return;
  v.result = result;
  v.why = why;
  if (result) {
    for (auto& [id, ok] : v.ballots) {
      auto it = members_.find(id);
      if (it == members_.end()) continue;
      it->second.synced = true;
      it->second.step = v.step + 1;
      it->second.progress_step = v.step + 1;
    }
    committed_step_ = std::max(committed_step_, v.step);
    ++commits_;
    log::debug("coordinator: step {} of epoch {} committed", v.step, v.epoch);
  } else {
    ++failed_votes_;
    if (v.epoch == epoch_) epoch_failed_ = true;
    log::warn("coordinator: step {} of epoch {} is discarded: {}", v.step, v.epoch, why);
  }
  ++version_;
  answer_parked_commits();
}

void Coordinator::maybe_complete_vote(double) {
  if (!vote_ || vote_->result || vote_->epoch != epoch_) return;
  for (uint64_t id : epoch_members_) {
    auto b = vote_->ballots.find(id);
    if (b == vote_->ballots.end() || !b->second) return;
  }
  decide_vote(true, {});
}

void Coordinator::answer_parked_commits() {
  if (!vote_ || !vote_->result) return;
  const std::string body = encode(vote_reply(*vote_));
  for (auto it = parked_.begin(); it != parked_.end();) {
    const Parked& p = it->second;
    if (p.op == CoordOp::Commit && p.epoch == vote_->epoch && p.step == vote_->step) {
      reply_(it->first, body);
      it = parked_.erase(it);
    } else {
      ++it;
    }
  }
}

QuorumReply Coordinator::pending_quorum_reply() const {
  QuorumReply r;
  r.pending = true;
  r.reason = waiting_for_.empty() ? "waiting for the other members to reach the step boundary" : waiting_for_;
  return r;
}

CommitReply Coordinator::vote_reply(const Vote& v) const {
  CommitReply r;
  r.committed = v.result.value_or(false);
  r.reason = r.committed ? std::string() : v.why;
  return r;
}

StatusView Coordinator::status(double now) const {
  std::lock_guard<std::mutex> lock(mu_);
  StatusView s;
  s.incarnation = incarnation_;
  s.uptime_s = now - started_at_;
  s.epoch = epoch_;
  s.epoch_failed = epoch_failed_;
  s.min_replicas = options_.min_replicas;
  s.max_replicas = options_.max_replicas;
  s.committed_step = committed_step_;
  s.commits = commits_;
  s.failed_votes = failed_votes_;
  s.quorums = quorums_;
  s.evictions = evictions_;
  s.waiting_for = waiting_for_;
  auto view = [&](const Member& m, int rank) {
    MemberView v;
    v.member_id = m.id;
    v.replica_id = m.replica_id;
    v.host = m.host;
    v.address = m.address;
    v.restart_count = m.restart_count;
    v.rank = rank;
    v.step = m.progress_step;
    v.synced = m.synced;
    v.waiting = m.waiting;
    v.last_seen_s = now - m.last_seen;
    v.member_for_s = now - m.registered_at;
    return v;
  };
  for (size_t r = 0; r < epoch_members_.size(); ++r)
    s.members.push_back(view(members_.at(epoch_members_[r]), static_cast<int>(r)));
  for (auto& [id, m] : members_)
    if (!in_epoch(id)) s.members.push_back(view(m, -1));
  for (auto it = evicted_order_.rbegin(); it != evicted_order_.rend() && s.recent_evictions.size() < kRecentEvictionsShown;
       ++it) {
    auto e = evicted_.find(*it);
    if (e == evicted_.end()) continue;
    s.recent_evictions.push_back(
        EvictionView{*it, e->second.replica_id, e->second.host, e->second.reason, e->second.epoch, now - e->second.at});
  }
  return s;
}

}  // namespace braid::coord
