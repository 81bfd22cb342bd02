#include "train/fault_tolerance.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "comm/bootstrap.hpp"
#include "core/checksum.hpp"
#include "core/clock.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/tcp_store.hpp"
#include "train/diloco.hpp"

namespace braid::train {
namespace {

// Set by finish() on every worker that completed the run: a worker that
// joins later (a restart after the last step) must not train alone from
// scratch, which is what a quorum of latecomers without a healthy member
// would otherwise do.
constexpr const char* kFinishedKey = "braid/ft/finished_step";
constexpr const char* kRunDirKey = "braid/ft/run_dir";

std::string format_bytes(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b * 1e-9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b * 1e-6);
  if (b >= 1e3) return fmt::format("{:.1f} kB", b * 1e-3);
  return fmt::format("{:.0f} B", b);
}

coord::Timeouts timeouts_for(const FaultConfig& f) {
  coord::Timeouts t = coord::Timeouts::from_env();
  if (f.collective_timeout_s) t.collective_s = *f.collective_timeout_s;
  if (f.heartbeat_interval_s) t.heartbeat_interval_s = *f.heartbeat_interval_s;
  if (f.heartbeat_death_s) t.heartbeat_death_s = *f.heartbeat_death_s;
  if (f.quorum_wait_s) t.quorum_wait_s = *f.quorum_wait_s;
  if (f.job_timeout_s) t.job_timeout_s = *f.job_timeout_s;
  t.validate();
  return t;
}

bool is_comm_failure(const std::exception& e) {
  return dynamic_cast<const CommError*>(&e) != nullptr || dynamic_cast<const NetError*>(&e) != nullptr ||
         dynamic_cast<const CorruptData*>(&e) != nullptr;
}

}  // namespace

std::vector<FaultDrill> FaultDrill::parse(const std::string& text) {
  std::vector<FaultDrill> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (item.empty()) continue;
    const auto bad = [&](const std::string& why) {
      return ConfigError(fmt::format("BRAID_FT_DRILL item '{}': {}", item, why),
                         "write ACTION:REPLICA@STEP[/PHASE], e.g. kill:2@10 or stop:1@5/vote (ACTION kill|stop, "
                         "PHASE step|vote|heal)");
    };
    FaultDrill d;
    size_t colon = item.find(':'), at = item.find('@');
    if (colon == std::string::npos || at == std::string::npos || at < colon) throw bad("malformed");
    d.action = item.substr(0, colon);
    d.replica = item.substr(colon + 1, at - colon - 1);
    std::string rest = item.substr(at + 1);
    if (size_t slash = rest.find('/'); slash != std::string::npos) {
      d.phase = rest.substr(slash + 1);
      rest = rest.substr(0, slash);
    }
    char* end = nullptr;
    d.step = std::strtoll(rest.c_str(), &end, 10);
    if (rest.empty() || *end || d.step < 0) throw bad("the step is not a number");
    if (d.action != "kill" && d.action != "stop") throw bad("unknown action '" + d.action + "'");
    if (d.phase != "step" && d.phase != "vote" && d.phase != "heal") throw bad("unknown phase '" + d.phase + "'");
    if (d.replica.empty()) throw bad("no replica id");
    out.push_back(d);
  }
  return out;
}

BatchShape batch_shape_for(const TrainConfig& config, int replicas, int reference_replicas) {
  const int64_t b = config.train.batch_size, a = config.train.grad_accum;
  if (config.fault.global_batch == "per_replica" || replicas <= 0) return {b, a};
  const int64_t global = b * a * std::max(1, reference_replicas);
  const int64_t per_replica = std::max<int64_t>(1, global / replicas);
  // Fewest micro-steps with at most batch_size sequences each that split the
  // replica's share evenly (every micro-step of every rank has the same size,
  // so the gradient is the exact mean over the global batch).
  int64_t accum = (per_replica + b - 1) / b;
  while (per_replica % accum != 0) ++accum;
  return {per_replica / accum, accum};
}

// The replica id that sorts first: numerically when both are numbers (the
// launcher's slots "0", "1", ..., "10"), else as text.
std::string lowest_replica(const std::vector<coord::QuorumMember>& members) {
  auto number = [](const std::string& id) -> std::optional<long long> {
    if (id.empty() || id.size() > 18 || !std::all_of(id.begin(), id.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::nullopt;
    return std::stoll(id);
  };
  std::string best;
  for (const auto& m : members) {
    const auto a = number(m.replica_id), b = number(best);
    const bool before = best.empty() || (a && b ? *a < *b : m.replica_id < best);
    if (before) best = m.replica_id;
  }
  return best;
}

std::string FaultTolerance::agreed_run_dir(const std::string& proposal) {
  std::string stored;
  if (store_->try_get(kRunDirKey, stored) && !stored.empty()) return stored;
  store_->set(kRunDirKey, proposal);
  return proposal;
}

bool FaultTolerance::is_lead_replica() {
  auto r = env::get("BRAID_RANK");
  return !r || r->empty() || *r == "0";
}

FaultTolerance::FaultTolerance(const TrainConfig& config, Trainer& trainer, double local_peak_flops, Diloco* diloco)
    : config_(config), trainer_(trainer), state_(trainer), local_peak_flops_(local_peak_flops), diloco_(diloco) {
  if (trainer.communicator() != nullptr)
    throw Error("fault tolerance builds its own communicators; construct the trainer without one");
  timeouts_ = timeouts_for(config.fault);
  heal_.chunk_bytes = config.fault.heal_chunk_bytes;
  heal_.timeout_s = config.fault.heal_timeout_s;
  heal_staging_ = std::make_unique<HealStaging>(HealStaging::bytes_for(heal_.piece_bytes, heal_.chunk_bytes, heal_.window));
  heal_.staging = heal_staging_.get();
  reference_replicas_ = config.fault.replicas > 0 ? static_cast<int>(config.fault.replicas)
                                                  : static_cast<int>(env::get_int("BRAID_WORLD_SIZE", 1));
  if (auto d = env::get("BRAID_FT_DRILL"); d && !d->empty()) drills_ = FaultDrill::parse(*d);
  step_delay_s_ = env::get_double("BRAID_FT_STEP_DELAY", 0);

  coord::ClientOptions co = coord::ClientOptions::from_env();
  co.timeouts = timeouts_;
  replica_ = co.replica_id;
  restart_count_ = co.restart_count;
  if (auto r = env::get("BRAID_RANK"); r && !r->empty()) log::set_rank(std::atoi(r->c_str()));

  if (auto dir = env::get("BRAID_FT_EVENTS"); dir && !dir->empty()) {
    std::error_code ec;
    std::filesystem::create_directories(*dir, ec);
    std::string safe = replica_;
    for (char& c : safe)
      if (c == '/' || c == ':') c = '_';
    std::string path = *dir + "/" + safe + ".jsonl";
    events_ = std::fopen(path.c_str(), "a");
    if (!events_) throw IoError("cannot open the fault-tolerance event log " + path, "check BRAID_FT_EVENTS");
  }

  // The store is served on the coordinator's port (embedded or standalone).
  store_ = std::make_shared<net::TcpStore>(net::HostPort::parse(co.coordinator), co.secret, co.connect_timeout_s);
  client_ = std::make_unique<coord::Client>(co);
  client_->on_epoch_failed([this](const std::string& why) {
    note_failure("the coordinator reports: " + why);
    std::lock_guard<std::mutex> lock(comm_mu_);
    comm_broken_ = true;
    if (comm_) comm_->abort(why);
  });
  trainer_.add_observer(this);
  if (diloco_) {
    diloco_->drive_externally();
    diloco_->add_outer_state(state_);  // a joiner gets θ_sync and the outer momentum with the rest
  }
  event("start", fmt::format("{{\"restart\":{},\"reference_replicas\":{}}}", restart_count_, reference_replicas_));
  log::info("fault tolerance: replica {} (restart {}), coordinator {}; {}; global batch {}", replica_,
            restart_count_, co.coordinator, timeouts_.describe(),
            diloco_ ? fmt::format("{} x {} accumulation per DiLoCo replica (fault.global_batch does not apply)",
                                  config.train.batch_size, config.train.grad_accum)
            : config.fault.global_batch == "fixed"
                ? fmt::format("fixed at {} sequences ({} replicas x {} x {} accumulation)",
                              reference_replicas_ * config.train.batch_size * config.train.grad_accum,
                              reference_replicas_, config.train.batch_size, config.train.grad_accum)
                : fmt::format("{} x {} accumulation per replica", config.train.batch_size, config.train.grad_accum));
}

FaultTolerance::~FaultTolerance() {
  // The heartbeat thread goes first (it may abort the communicator), then
  // the communicator, before the trainer it is bound to.
  try {
    if (!finished_ && client_) client_->leave("the worker is exiting");
  } catch (...) {
  }
  client_.reset();
  try {
    drop_communicator("");
  } catch (...) {
  }
  if (events_) std::fclose(events_);
}

void FaultTolerance::event(const std::string& kind, const std::string& fields_json) {
  if (!events_) return;
  nlohmann::ordered_json j;
  j["t"] = now_s();
  j["event"] = kind;
  j["replica"] = replica_;
  j["pid"] = static_cast<int64_t>(getpid());
  if (!fields_json.empty()) {
    auto extra = nlohmann::ordered_json::parse(fields_json);
    for (auto& [k, v] : extra.items()) j[k] = v;
  }
  std::string line = j.dump() + "\n";
  std::lock_guard<std::mutex> lock(events_mu_);
  std::fputs(line.c_str(), events_);
  std::fflush(events_);
}

void FaultTolerance::note_failure(const std::string& why) {
  if (failure_noted_.exchange(true)) return;
  nlohmann::json j;
  j["step"] = trainer_.step();
  j["why"] = why;
  event("failure", j.dump());
}

void FaultTolerance::maybe_drill(const char* phase, int64_t step) {
  if (restart_count_ != 0) return;
  for (auto& d : drills_) {
    if (d.replica != replica_ || d.step != step || d.phase != phase || d.action.empty()) continue;
    const std::string action = d.action;
    d.action.clear();  // once
    event("drill", fmt::format("{{\"action\":\"{}\",\"step\":{},\"phase\":\"{}\"}}", action, step, phase));
    log::warn("fault drill: {} this worker at step {} ({})", action, step, phase);
    std::fflush(stderr);
    raise(action == "kill" ? SIGKILL : SIGSTOP);
    log::warn("fault drill: resumed after SIGSTOP");
  }
}

std::optional<int64_t> FaultTolerance::finished_step_in_store() {
  std::string v;
  try {
    if (!store_->try_get(kFinishedKey, v)) return std::nullopt;
  } catch (const Error& e) {
    log::debug("cannot ask the store whether the job finished: {}", e.what());
    return std::nullopt;
  }
  return std::strtoll(v.c_str(), nullptr, 10);
}

void FaultTolerance::drop_communicator(const std::string& why) {
  std::unique_ptr<comm::Communicator> old;
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    old = std::move(comm_);
  }
  if (!old) return;
  // Wakes anything still waiting on it (a bucket all-reduce left in flight by
  // a failed step writes into the gradient buffer until then).
  if (!why.empty()) old->abort(why);
  if (diloco_) {
    diloco_->bind_outer(nullptr);  // counts the old communicator's bytes first
  } else {
    const BatchShape shape = batch_shape_for(config_, 1, reference_replicas_);
    trainer_.rebind(nullptr, shape.batch_size, shape.grad_accum, timeouts_.collective_s);
  }
  old.reset();
}

void FaultTolerance::rebuild(const coord::Quorum& q) {
  drop_communicator("");
  Stopwatch clock;
  std::shared_ptr<net::Mesh> mesh;
  if (q.world_size() == 1) {
    mesh = net::connect_inproc(net::make_inproc_hub(1), 0, q.epoch());
  } else {
    comm::WorldInfo info;
    info.rank = q.rank();
    info.size = q.world_size();
    comm::InitOptions io;
    io.group = "world";
    io.epoch = q.epoch();
    // A member that has not connected by the heartbeat death is dead or hung
    // (and evicted by then); waiting longer only delays the next epoch.
    io.connect_timeout_s = std::max(timeouts_.heartbeat_death_s, timeouts_.collective_s);
    mesh = net::connect_mesh(*store_, comm::mesh_options_from_env(info, io));
  }
  comm::CommOptions co;
  co.timeout_s = timeouts_.collective_s;
  co.tuning_file = env::get_or("BRAID_TUNING_FILE", "");
  auto c = std::make_unique<comm::Communicator>(std::move(mesh), co);
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    comm_ = std::move(c);
    comm_broken_ = false;
  }
  const int n = q.world_size();
  trainer_.set_job_peak_flops(local_peak_flops_ * n);
  ++stats_.epochs;
  std::string names;
  for (const auto& m : q.info.members) names += (names.empty() ? "" : ", ") + m.replica_id;
  if (diloco_) {
    // The members are the replicas; the trainer stays alone (no inner communicator).
    diloco_->bind_outer(comm_.get());
    diloco_->set_data_share(q.rank(), n);
    log::info("epoch {}: replica {} of {} ({}), outer communicator ready in {:.2f} s", q.epoch(), q.rank(), n, names,
              clock.seconds());
    return;
  }
  const BatchShape shape = batch_shape_for(config_, n, reference_replicas_);
  trainer_.rebind(comm_.get(), shape.batch_size, shape.grad_accum, timeouts_.collective_s);
  const int64_t configured = config_.fault.global_batch == "fixed"
                                 ? config_.train.batch_size * config_.train.grad_accum * reference_replicas_
                                 : shape.global_sequences(n);
  log::info("epoch {}: rank {} of {} ({}), communicator ready in {:.2f} s; {} sequences per step ({} x {} "
            "accumulation x {} replicas){}",
            q.epoch(), q.rank(), n, names, clock.seconds(), shape.global_sequences(n), shape.batch_size,
            shape.grad_accum, n,
            shape.global_sequences(n) != configured
                ? fmt::format(" instead of {}: {} replicas do not divide it", configured, n)
                : "");
}

void FaultTolerance::heal(const coord::Quorum& q) {
  const auto& from = q.info.heal_from;
  if (std::none_of(from.begin(), from.end(), [](int r) { return r >= 0; })) return;
  if (q.heal) {
    state_partial_ = true;
    const int64_t old_step = trainer_.step();
    HealStats s = receive_training_state(*comm_, state_, q.heal_source, heal_);
    state_partial_ = false;
    // No notify_parameters_replaced() here: under data parallelism the guard's
    // verdict must be the same on every rank, so a joiner's guard must not
    // start over while its peers' do not.
    ++stats_.heals_received;
    stats_.heal_bytes_received += s.bytes;
    stats_.heal_seconds += s.seconds;
    const auto& src = q.info.members[static_cast<size_t>(q.heal_source)];
    nlohmann::json j;
    j["from_rank"] = q.heal_source;
    j["from_replica"] = src.replica_id;
    j["step"] = trainer_.step();
    j["old_step"] = old_step;
    j["bytes"] = s.bytes;
    j["chunks"] = s.chunks;
    j["seconds"] = s.seconds;
    j["bytes_per_s"] = s.rate_bytes_per_s();
    j["wait_s"] = s.wait_s;
    j["transfer_bytes_per_s"] = s.transfer_s() > 0 ? static_cast<double>(s.bytes) / s.transfer_s() : 0.0;
    event("heal", j.dump());
    log::info("healed from replica {} (rank {}): {} in {:.3f} s ({}/s), {} chunks xxh3-verified; joining at step {}",
              src.replica_id, q.heal_source, format_bytes(static_cast<double>(s.bytes)), s.seconds,
              format_bytes(s.rate_bytes_per_s()), s.chunks, trainer_.step());
  }
  const auto targets = q.heal_targets();
  if (!targets.empty()) {
    maybe_drill("heal", q.step());
    HealStats s = send_training_state(*comm_, state_, targets, heal_);
    ++stats_.heals_sent;
    stats_.heal_bytes_sent += s.bytes;
    nlohmann::json j;
    j["targets"] = targets;
    j["step"] = trainer_.step();
    j["bytes"] = s.bytes;
    j["seconds"] = s.seconds;
    event("heal_sent", j.dump());
    log::info("sent this worker's state of step {} to rank(s) {}: {} in {:.3f} s", trainer_.step(),
              fmt::format("{}", fmt::join(targets, ", ")), format_bytes(static_cast<double>(s.bytes)), s.seconds);
  }
  // Members that neither send nor receive wait here (with the healing
  // deadline), so that their first collective of the step does not run out of
  // time while a large state is still on its way.
  comm::CollectiveOptions o;
  o.timeout_s = heal_.timeout_s;
  comm_->barrier(o).wait();
}

FaultTolerance::Entry FaultTolerance::enter(coord::Quorum& q, bool& first) {
  q = client_->quorum(trainer_.step());
  failure_noted_ = false;
  world_ = q.world_size();
  keeps_records_ = lowest_replica(q.info.members) == replica_;
  stats_.replicas = world_;
  {
    nlohmann::json j;
    j["epoch"] = q.epoch();
    j["world"] = world_;
    j["rank"] = q.rank();
    j["step"] = q.step();
    j["changed"] = q.changed;
    j["rejoined"] = q.rejoined;
    j["heal_from"] = q.info.heal_from;
    event("quorum", j.dump());
  }
  if (!q.heal && (first || q.rejoined)) {
    // Latecomers alone (everyone else finished and left) form a quorum with
    // nobody to heal from: they must not start the run again.
    if (auto done = finished_step_in_store()) {
      log::warn("the job already finished (step {}) without this worker; nothing left to do", *done);
      event("late", fmt::format("{{\"finished_step\":{}}}", *done));
      finished_ = true;
      client_->leave("the job had already finished");
      return Entry::kLate;
    }
  }
  first = false;
  if (state_partial_ && !q.heal)
    throw Error("a heal into this worker failed half-way and no healthy peer is left to heal it again",
                "restart the job from a checkpoint (checkpoint.dir, braid train --resume)");

  if (!q.changed && comm_broken_) {
    // Our communicator failed outside a step (validation) without the
    // coordinator noticing; a not-ok vote fails the epoch, so the next
    // quorum builds a new one.
    client_->commit(q.step(), q.epoch(), false);
    return Entry::kRetry;
  }
  try {
    if (q.changed || !comm_) rebuild(q);
    heal(q);
  } catch (const std::exception& e) {
    if (!is_comm_failure(e)) throw;
    log::warn("epoch {} could not start: {}; trying again with the next quorum", q.epoch(), e.what());
    discard(q, e.what(), false, "setup");
    return Entry::kRetry;
  }
  if (trainer_.step() != q.step())
    throw Error(fmt::format("after the quorum this worker is at step {} but the members do step {}",
                            trainer_.step(), q.step()),
                "this is a bug in braid's fault tolerance; please report it with the logs");
  return Entry::kReady;
}

void FaultTolerance::discard(const coord::Quorum& q, const std::string& why, bool voted, const char* phase) {
  if (!why.empty()) {
    note_failure(why);
    drop_communicator(why);
  }
  if (!voted) client_->commit(q.step(), q.epoch(), false);
  nlohmann::json j;
  j["step"] = q.step();
  j["epoch"] = q.epoch();
  j["world"] = world_;
  j["why"] = why.empty() ? "the vote failed" : why;
  j["phase"] = phase;
  event("discard", j.dump());
}

void FaultTolerance::event_commit(int64_t step, uint32_t epoch, double loss) {
  nlohmann::json j;
  j["step"] = step;
  j["epoch"] = epoch;
  j["world"] = world_;
  j["loss"] = loss;
  event("commit", j.dump());
}

std::optional<StepMetrics> FaultTolerance::train_step() {
  if (diloco_) return diloco_step();
  bool first = stats_.epochs == 0;
  while (true) {
    if (step_delay_s_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(step_delay_s_));
    coord::Quorum q;
    const Entry entry = enter(q, first);
    if (entry == Entry::kLate) return std::nullopt;
    if (entry == Entry::kRetry) continue;

    maybe_drill("step", q.step());
    const SamplerPosition position = trainer_.sampler().position();
    vote_ = Vote{true, false, false, q.step(), q.epoch()};
    std::optional<StepMetrics> m;
    std::string why;
    std::exception_ptr after_commit;
    try {
      m = trainer_.train_step();
    } catch (const std::exception& e) {
      if (vote_.cast && vote_.committed) after_commit = std::current_exception();
      else if (!is_comm_failure(e)) {
        vote_.active = false;
        throw;
      }
      why = e.what();
    }
    vote_.active = false;
    if (after_commit) std::rethrow_exception(after_commit);
    if (m && vote_.cast && vote_.committed) {
      ++stats_.committed;
      event_commit(q.step(), q.epoch(), m->loss);
      return m;
    }
    // Discarded: nothing was applied; go back to the step's start.
    if (!why.empty()) log::warn("step {} failed in epoch {}: {}; discarding it", q.step() + 1, q.epoch(), why);
    trainer_.set_step(q.step());
    trainer_.sampler().restore(position);
    ++stats_.discarded;
    discard(q, why, vote_.cast, "step");
  }
}

std::optional<StepMetrics> FaultTolerance::diloco_step() {
  // A worker takes part in rounds only: at its start, at every step where a
  // fragment is due, and as soon as it learns it was evicted (it then joins
  // the members' next round as a new replica instead of training on alone).
  if (stats_.epochs == 0 || client_->evicted())
    if (!outer_round()) return std::nullopt;
  if (step_delay_s_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(step_delay_s_));
  const int64_t step = trainer_.step();
  maybe_drill("step", step);
  StepMetrics m = trainer_.train_step();  // this replica alone: nothing to vote on
  ++stats_.committed;
  event_commit(step, epoch_, m.loss);
  if (!diloco_->fragments_due(trainer_.step()).empty() || client_->evicted())
    if (!outer_round()) return std::nullopt;
  return m;
}

bool FaultTolerance::outer_round() {
  bool first = stats_.epochs == 0;
  while (true) {
    coord::Quorum q;
    const Entry entry = enter(q, first);
    if (entry == Entry::kLate) return false;
    if (entry == Entry::kRetry) continue;
    epoch_ = q.epoch();
    // The members' step decides the round: at a step where fragments are due
    // they are averaged; at the start (step 0) the quorum only forms the epoch.
    const std::vector<int> due = diloco_->fragments_due(q.step());
    const auto& from = q.info.heal_from;
    const int contributors = static_cast<int>(std::count(from.begin(), from.end(), -1));
    const bool contribute = !q.heal;  // a joiner did not train this round
    std::string why;
    bool voted = false, committed = false;
    try {
      if (!due.empty()) diloco_->reduce_round(due, contribute, contributors);
      maybe_drill("vote", q.step());
      committed = client_->commit(q.step(), q.epoch(), true);
      voted = true;
    } catch (const std::exception& e) {
      if (!is_comm_failure(e)) throw;
      why = e.what();
    }
    if (committed) {
      if (!due.empty()) diloco_->apply_round(contribute);
      nlohmann::json j;
      j["step"] = q.step();
      j["epoch"] = q.epoch();
      j["world"] = world_;
      j["fragments"] = due.size();
      j["contributors"] = contributors;
      event("outer", j.dump());
      return true;
    }
    // Nothing was applied: the local steps of the round are kept, and the
    // round is reduced again with the next quorum's members.
    if (!why.empty()) log::warn("the outer round at step {} failed in epoch {}: {}; redoing it", q.step(), q.epoch(), why);
    ++stats_.discarded;
    discard(q, why, voted, "outer");
  }
}

bool FaultTolerance::before_optimizer_apply(Trainer&, const StepMetrics&) {
  if (!vote_.active) return true;
  maybe_drill("vote", vote_.step);
  vote_.committed = client_->commit(vote_.step, vote_.epoch, true);
  vote_.cast = true;
  return vote_.committed;
}

std::optional<double> FaultTolerance::evaluate() {
  try {
    return trainer_.evaluate();
  } catch (const std::exception& e) {
    if (!is_comm_failure(e)) throw;
    log::warn("validation at step {} failed: {}; skipped, the next step starts a new epoch", trainer_.step(),
              e.what());
    note_failure(e.what());
    comm_broken_ = true;
    return std::nullopt;
  }
}

void FaultTolerance::finish() {
  if (finished_) return;
  finished_ = true;
  const auto held = state_.held();
  Xxh3Stream all;
  std::string params_hash;
  for (const auto& h : held) {
    all.update(h.data, h.range.size());
    if (h.buffer == "params") params_hash = hex64(xxh3_64(h.data, h.range.size()));
  }
  const std::string state_hash = hex64(all.digest());
  nlohmann::json j;
  j["step"] = trainer_.step();
  j["params_xxh3"] = params_hash;
  j["state_xxh3"] = state_hash;
  j["committed"] = stats_.committed;
  j["discarded"] = stats_.discarded;
  j["epochs"] = stats_.epochs;
  j["heals_received"] = stats_.heals_received;
  j["heal_bytes_received"] = stats_.heal_bytes_received;
  event("done", j.dump());
  log::info("final state at step {}: parameters xxh3 {}, with optimizer state {}; {} step(s) committed here, {} "
            "discarded and redone, {} epoch(s), {} heal(s) received",
            trainer_.step(), params_hash, state_hash, stats_.committed, stats_.discarded, stats_.epochs,
            stats_.heals_received);
  try {
    store_->set(kFinishedKey, std::to_string(trainer_.step()));
  } catch (const Error& e) {
    log::debug("cannot record the end of the job in the store: {}", e.what());
  }
  client_->leave("finished");
}

}  // namespace braid::train
