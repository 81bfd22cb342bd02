#include "coord/client.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

#include "comm/bootstrap.hpp"
#include "core/clock.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"
#include "net/tcp_store.hpp"

namespace braid::coord {

ClientOptions ClientOptions::from_env() {
  ClientOptions o;
  if (auto c = env::get("BRAID_COORDINATOR"); c && !c->empty()) o.coordinator = *c;
  else if (auto r = env::get("BRAID_RENDEZVOUS"); r && !r->empty()) o.coordinator = *r;
  else
    throw ConfigError("no coordinator address (BRAID_COORDINATOR / BRAID_RENDEZVOUS is not set)",
                      "start the job with `braid launch` (which runs the coordinator), or set "
                      "BRAID_COORDINATOR=HOST:PORT of a `braid coordinator`");
  o.secret = comm::job_secret();
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  o.host = host;
  if (auto r = env::get("BRAID_REPLICA_ID"); r && !r->empty()) o.replica_id = *r;
  else if (auto rank = env::get("BRAID_RANK"); rank && !rank->empty()) o.replica_id = *rank;
  else o.replica_id = fmt::format("{}:{}", o.host, getpid());
  o.restart_count = static_cast<int>(env::get_int("BRAID_RESTART_COUNT", 0));
  o.timeouts = Timeouts::from_env();
  return o;
}

std::vector<int> Quorum::heal_targets() const {
  std::vector<int> out;
  for (int r = 0; r < static_cast<int>(info.heal_from.size()); ++r)
    if (info.heal_from[r] == info.rank && r != info.rank) out.push_back(r);
  return out;
}

Client::Client(ClientOptions options) : options_(std::move(options)) {
  options_.timeouts.validate();
  heartbeat_interval_s_ = options_.timeouts.heartbeat_interval_s;
  coordinator_death_s_ = options_.timeouts.heartbeat_death_s;
  if (options_.replica_id.empty()) throw ConfigError("the coordinator client needs a replica id");
  auto hp = net::HostPort::parse(options_.coordinator);
  control_ = std::make_unique<net::TcpStore>(hp, options_.secret, options_.connect_timeout_s);
  heartbeat_ = std::make_unique<net::TcpStore>(hp, options_.secret, options_.connect_timeout_s);
  register_now(false, false);
  heartbeat_thread_ = std::thread([this] { heartbeat_loop(); });
}

Client::~Client() {
  try {
    leave("the worker is exiting");
  } catch (...) {
  }
  stopping_ = true;
  hb_cv_.notify_all();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

std::string Client::call(CoordOp op, const std::string& body, double per_try_s, const char* what,
                         net::TcpStore* via) {
  net::TcpStore& conn = via ? *via : *control_;
  const Deadline give_up = Deadline::in_seconds(options_.timeouts.job_timeout_s);
  Stopwatch lost_for;
  bool lost = false;
  int delay_ms = 50;
  while (true) {
    std::string reply, error;
    bool ok = false, answered = false;
    try {
      reply = conn.request(static_cast<uint8_t>(op), op_name(op), body, Deadline::in_seconds(per_try_s), &ok);
      answered = true;
    } catch (const AuthError&) {
      throw;
    } catch (const ProtocolError&) {
      throw;
    } catch (const Error& e) {
      error = e.what();
    }
    if (answered) {
      if (!ok)
        throw NetError(fmt::format("the coordinator at {} refused a {} request: {}", options_.coordinator, what,
                                   reply),
                       "the address must be a braid coordinator (`braid launch` embeds one, or run `braid "
                       "coordinator`) of the same braid version");
      if (lost)
        log::info("coordinator at {} is reachable again after {:.1f} s", options_.coordinator, lost_for.seconds());
      return reply;
    }
    if (!lost) {
      log::warn("lost the coordinator at {} during {} ({}); keeping this worker's state and retrying for up to "
                "{:.0f} s (job timeout)",
                options_.coordinator, what, error, options_.timeouts.job_timeout_s);
      lost = true;
      lost_for.reset();
    }
    if (give_up.expired())
      throw Timeout(fmt::format("the coordinator at {} has been unreachable for {:.0f} s (job timeout): {}",
                                options_.coordinator, lost_for.seconds(), error),
                    "restart it on the same address (`braid coordinator --port P`; workers register again by "
                    "themselves), or raise the job timeout (BRAID_JOB_TIMEOUT)");
    usleep(static_cast<useconds_t>(delay_ms) * 1000);
    delay_ms = std::min(delay_ms * 2, 1000);
  }
}

void Client::register_now(bool as_new_member, bool again) {
  RegisterRequest r;
  r.replica_id = options_.replica_id;
  r.host = options_.host;
  r.address = options_.address;
  r.restart_count = options_.restart_count;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r.step = step_;
    r.synced = as_new_member ? false : synced_;
    r.last_epoch = epoch_;
    r.last_world_size = last_world_size_;
  }
  auto reply = decode<RegisterReply>(
      call(CoordOp::Register, encode(r), options_.timeouts.heartbeat_death_s + 5, "registration", heartbeat_.get()));
  if (reply.heartbeat_death_s > 0 && heartbeat_interval_s_ * 2 > reply.heartbeat_death_s) {
    double interval = reply.heartbeat_death_s / 3;
    log::warn("the coordinator declares a worker dead after {} s of silence, but this worker heartbeats every {} s; "
              "heartbeating every {:.2f} s instead (set BRAID_HEARTBEAT_INTERVAL to match)",
              reply.heartbeat_death_s, heartbeat_interval_s_.load(), interval);
    heartbeat_interval_s_ = interval;
  }
  if (reply.heartbeat_death_s > 0) coordinator_death_s_ = reply.heartbeat_death_s;
  std::lock_guard<std::mutex> lock(mu_);
  token_ = reply.token;
  need_register_ = false;
  evicted_ = false;
  epoch_failed_ = false;
  if (as_new_member) synced_ = false;
  if (again) rejoined_ = true;
  poll_s_ = reply.poll_s > 0 ? reply.poll_s : 1;
  log::info("{} the coordinator at {} as member {} (replica {}{})", again ? "registered again with" : "registered with",
            options_.coordinator, token_.member_id, options_.replica_id,
            as_new_member ? ", a new member that will heal from a peer" : "");
}

Quorum Client::quorum(int64_t step) {
  const uint64_t seq = ++quorum_seq_;
  const Deadline give_up = Deadline::in_seconds(options_.timeouts.job_timeout_s);
  Stopwatch waited;
  double next_log_s = std::max(5.0, options_.timeouts.heartbeat_death_s);
  while (true) {
    bool reg = false, as_new = false;
    MemberToken token;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (left_) throw Error("quorum() after leave()", "create a new coord::Client to rejoin");
      step_ = step;
      if (evicted_) reg = as_new = true;
      else if (need_register_) reg = true;
    }
    if (reg) register_now(as_new, true);
    {
      std::lock_guard<std::mutex> lock(mu_);
      token = token_;
    }
    QuorumRequest q{token, seq, step};
    auto rep = decode<QuorumReply>(
        call(CoordOp::Quorum, encode(q), poll_s_ + options_.timeouts.heartbeat_death_s, "the quorum"));
    if (rep.status == MemberStatus::Unknown) {
      std::lock_guard<std::mutex> lock(mu_);
      if (token_.member_id == token.member_id) {
        need_register_ = true;
        log::warn("the coordinator does not know this worker ({}); registering again, keeping step {}", rep.reason,
                  step);
      }
      continue;
    }
    if (rep.status == MemberStatus::Evicted) {
      std::lock_guard<std::mutex> lock(mu_);
      if (token_.member_id == token.member_id && !evicted_) {
        evicted_ = true;
        evicted_reason_ = rep.reason;
        log::warn("evicted by the coordinator: {}; rejoining as a new member", rep.reason);
      }
      continue;
    }
    if (rep.pending) {
      if (waited.seconds() >= next_log_s) {
        log::warn("no quorum after {:.0f} s: {}", waited.seconds(), rep.reason);
        next_log_s = waited.seconds() + std::min(60.0, next_log_s);
      }
      if (give_up.expired())
        throw Timeout(fmt::format("no quorum within the job timeout ({:.0f} s): {}", options_.timeouts.job_timeout_s,
                                  rep.reason),
                      "start the missing workers or lower min_replicas; `braid coordinator --status HOST:PORT` "
                      "shows the membership");
      continue;
    }
    const QuorumInfo& info = rep.quorum;
    const int n = info.world_size();
    if (info.rank < 0 || info.rank >= n || static_cast<int>(info.heal_from.size()) != n ||
        info.members[info.rank].member_id != token.member_id)
      throw ProtocolError(fmt::format("inconsistent quorum from the coordinator (rank {} of {})", info.rank, n));
    Quorum out;
    out.info = info;
    out.heal_source = info.heal_from[info.rank];
    out.heal = out.heal_source >= 0;
    out.member_id = token.member_id;
    std::lock_guard<std::mutex> lock(mu_);
    out.changed = info.epoch != epoch_;
    out.rejoined = rejoined_;
    rejoined_ = false;
    epoch_ = info.epoch;
    last_world_size_ = n;
    epoch_failed_ = false;
    if (out.heal) synced_ = false;
    step_ = info.step;
    return out;
  }
}

bool Client::commit(int64_t step, uint32_t epoch, bool ok) {
  MemberToken token;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (left_) throw Error("commit() after leave()");
    if (evicted_ || need_register_) {
      log::warn("step {} is discarded: this worker is no longer a member of epoch {} ({})", step, epoch,
                evicted_ ? "evicted: " + evicted_reason_ : "the coordinator restarted");
      return false;
    }
    token = token_;
    step_ = step;
  }
  const Deadline give_up = Deadline::in_seconds(options_.timeouts.job_timeout_s);
  while (true) {
    auto rep = decode<CommitReply>(call(CoordOp::Commit, encode(CommitRequest{token, epoch, step, ok}),
                                        poll_s_ + options_.timeouts.heartbeat_death_s, "the commit vote"));
    std::lock_guard<std::mutex> lock(mu_);
    switch (rep.status) {
      case MemberStatus::Unknown:
        if (token_.member_id == token.member_id) need_register_ = true;
        log::warn("the vote on step {} was lost: the coordinator restarted ({}); discarding the step", step,
                  rep.reason);
        return false;
      case MemberStatus::Evicted:
        if (token_.member_id == token.member_id && !evicted_) {
          evicted_ = true;
          evicted_reason_ = rep.reason;
        }
        log::warn("evicted by the coordinator: {}; discarding step {} and rejoining as a new member", rep.reason,
                  step);
        return false;
      case MemberStatus::Ok:
        break;
    }
    if (rep.pending) {
      if (give_up.expired())
        throw Timeout(fmt::format("the vote on step {} did not finish within the job timeout", step));
      continue;
    }
    if (rep.committed) {
      synced_ = true;
      step_ = step + 1;
      return true;
    }
    log::info("step {} of epoch {} is not committed: {}", step, epoch, rep.reason);
    return false;
  }
}

void Client::leave(const std::string& reason) {
  MemberToken token;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (left_) return;
    left_ = true;
    token = token_;
  }
  stopping_ = true;
  hb_cv_.notify_all();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  try {
    bool ok;
    control_->request(static_cast<uint8_t>(CoordOp::Leave), op_name(CoordOp::Leave),
                      encode(LeaveRequest{token, reason}), Deadline::in_seconds(2), &ok);
  } catch (const Error& e) {
    log::debug("could not tell the coordinator that this worker leaves: {}", e.what());
  }
}

void Client::report_step(int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  step_ = step;
}

void Client::on_epoch_failed(std::function<void(const std::string&)> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  on_epoch_failed_ = std::move(fn);
}

bool Client::evicted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evicted_;
}

bool Client::epoch_failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return epoch_failed_;
}

uint64_t Client::member_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return token_.member_id;
}

uint32_t Client::epoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return epoch_;
}

void Client::suspend_heartbeats(bool suspend) { heartbeats_suspended_ = suspend; }

void Client::fire_epoch_failed(const std::string& why) {
  std::function<void(const std::string&)> fn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn = on_epoch_failed_;
  }
  if (fn) fn(why);
}

void Client::heartbeat_loop() {
  set_thread_name("braid-heartbeat");
  bool lost = false;
  while (!stopping_) {
    {
      std::unique_lock<std::mutex> lock(hb_mu_);
      hb_cv_.wait_for(lock, std::chrono::duration<double>(heartbeat_interval_s_.load()),
                      [&] { return stopping_.load(); });
    }
    if (stopping_) break;
    if (heartbeats_suspended_) continue;
    HeartbeatRequest r;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!token_.valid() || evicted_ || need_register_) continue;
      r.token = token_;
      r.epoch = epoch_;
      r.step = step_;
    }
    HeartbeatReply rep;
    try {
      bool ok;
      // Waiting as long as the death timeout: giving up sooner would close
      // this connection, which the coordinator takes for a crash, when it
      // was only slow.
      double wait = std::max(heartbeat_interval_s_.load(), coordinator_death_s_.load());
      std::string body = heartbeat_->request(static_cast<uint8_t>(CoordOp::Heartbeat), op_name(CoordOp::Heartbeat),
                                             encode(r), Deadline::in_seconds(wait), &ok);
      if (!ok) {
        log::warn("heartbeat refused by the coordinator: {}", body);
        continue;
      }
      rep = decode<HeartbeatReply>(body);
    } catch (const Error& e) {
      if (!lost)
        log::warn("heartbeat: cannot reach the coordinator at {} ({}); the worker keeps its state and retries",
                  options_.coordinator, e.what());
      lost = true;
      continue;
    }
    if (lost) log::info("heartbeat: the coordinator at {} answers again", options_.coordinator);
    lost = false;
    std::string fire;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (token_.member_id != r.token.member_id || token_.incarnation != r.token.incarnation) continue;
      switch (rep.status) {
        case MemberStatus::Unknown:
          if (!need_register_) {
            need_register_ = true;
            log::warn("the coordinator at {} does not know this worker ({}); registering again at the next step "
                      "boundary, keeping this worker's state",
                      options_.coordinator, rep.reason);
          }
          break;
        case MemberStatus::Evicted:
          if (!evicted_) {
            evicted_ = true;
            evicted_reason_ = rep.reason;
            log::warn("evicted by the coordinator: {}; rejoining as a new member at the next step boundary",
                      rep.reason);
            fire = "this worker was evicted: " + rep.reason;
          }
          break;
        case MemberStatus::Ok:
          // Only for the epoch we are still in: an answer about an epoch we
          // have already left must not abort the new one's collectives.
          if (rep.epoch_failed && r.epoch == epoch_ && !epoch_failed_) {
            epoch_failed_ = true;
            fire = fmt::format("epoch {} lost a member", r.epoch);
          }
          break;
      }
    }
    if (!fire.empty()) fire_epoch_failed(fire);
  }
}

}  // namespace braid::coord
