#pragma once
// Fault-tolerant training: the step loop of coord/client.hpp wrapped around
// Trainer::train_step(), so that a run survives workers that crash, hang or
// are cut off, and takes in workers that (re)join.
//
// Per step (FaultTolerance::train_step()):
//
//   quorum(step)           coordinator: who trains this step, at which epoch
//   new epoch?             new Mesh + Communicator for the members (group
//                          "world", the quorum's epoch); Trainer::rebind() moves
//                          data parallelism and the sampler to the new rank and
//                          world (and the per-replica batch, see global_batch)
//   healing?               sources send their TrainState to the joiners
//                          (heal_transfer.hpp), everyone waits in a barrier
//   Trainer::train_step()  forward, backward, all-reduces; in
//                          before_optimizer_apply this worker votes
//   commit vote            committed: the update is applied, step + 1;
//                          a collective failed anywhere (PeerLost, Timeout,
//                          Aborted) or a member was lost: the update is
//                          discarded, the step count and the sampler go back to
//                          the step's start, and the step is redone with the
//                          next quorum (a new epoch without the lost member)
//
// The step count of a survivor never goes back: only the step in flight is
// redone. Only collectives of the current epoch are ever waited on; the
// heartbeat thread aborts them as soon as the coordinator says the epoch
// failed, so a crash costs about a step and a hang about the heartbeat death.
//
// Cost per committed step: two small requests to the coordinator (quorum,
// vote; a few hundred bytes each, one round trip each). A new epoch costs a
// mesh rendezvous (one store round trip per peer plus the connections);
// healing moves 12 bytes per parameter per joiner (heal_transfer.hpp).
//
// Test and benchmark hooks (not for production use):
//   BRAID_FT_EVENTS=DIR   each worker appends JSON lines to DIR/<replica>.jsonl:
//                         start, quorum, heal, heal_sent, commit, discard,
//                         failure, drill, done (with the final state's xxh3);
//                         "t" is CLOCK_MONOTONIC seconds (comparable between
//                         processes of one machine).
//   BRAID_FT_DRILL=ACTION:REPLICA@STEP[/PHASE][,...]  the worker whose replica
//                         id is REPLICA does ACTION to itself at STEP in its
//                         first life (restart count 0): kill (SIGKILL), stop
//                         (SIGSTOP: it waits for a SIGCONT from outside). PHASE:
//                         step (default: after the quorum, before the compute,
//                         so its peers meet it in their all-reduce), vote (after
//                         the collectives, before its vote) or heal (a source,
//                         before it sends the state to a joiner).
//   BRAID_FT_STEP_DELAY=S  sleep S seconds before each step's quorum, so that a
//                         test's run lasts long enough for a restarted or woken
//                         worker to rejoin before the others finish.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "coord/client.hpp"
#include "train/heal_transfer.hpp"
#include "train/train_config.hpp"
#include "train/train_state.hpp"
#include "train/trainer.hpp"

namespace braid::net {
class Store;
}

namespace braid::train {

class Diloco;

// The replica id that sorts first (numerically for numbers, else as text).
std::string lowest_replica(const std::vector<coord::QuorumMember>& members);

// One self-inflicted fault of BRAID_FT_DRILL.
struct FaultDrill {
  std::string action;   // "kill" | "stop"
  std::string replica;  // replica id it applies to
  int64_t step = 0;
  std::string phase = "step";  // "step" | "vote" | "heal"
  // Parses the comma-separated list; throws ConfigError naming the bad item.
  static std::vector<FaultDrill> parse(const std::string& text);
};

// The per-replica micro-batch and accumulation for `replicas` workers under
// fault.global_batch (the same answer on every worker). "per_replica": the
// configured batch_size x grad_accum. "fixed": the global batch of
// reference_replicas x batch_size x grad_accum sequences is split over the
// replicas — rounded down to a multiple of the replica count when it does not
// divide, never more than batch_size sequences per micro-step.
struct BatchShape {
  int64_t batch_size = 0;
  int64_t grad_accum = 0;
  int64_t global_sequences(int replicas) const { return batch_size * grad_accum * replicas; }
};
BatchShape batch_shape_for(const TrainConfig& config, int replicas, int reference_replicas);

// What happened to this worker, for the summary and the benchmark.
struct RecoveryStats {
  int64_t committed = 0;        // steps this worker committed
  int64_t discarded = 0;        // steps it discarded (and redid)
  int64_t epochs = 0;           // communicators it built
  int64_t heals_received = 0;
  int64_t heals_sent = 0;
  uint64_t heal_bytes_received = 0;
  double heal_seconds = 0;      // receiving
  uint64_t heal_bytes_sent = 0;
  int replicas = 0;             // members of its last epoch
};

class FaultTolerance : private StepObserver {
 public:
  // Registers with the coordinator (coord::ClientOptions::from_env(), with
  // the timeouts of config.fault applied over the launcher's) and installs the
  // vote into `trainer`. The trainer must have been built without a
  // communicator; the first quorum gives it one. `local_peak_flops` is this
  // worker's matmul peak (the job's peak for MFU is that times the replicas).
  //
  // With `diloco` (DiLoCo under fault tolerance, docs/diloco.md) every
  // worker is one replica that trains alone; the quorum is taken only at the
  // start, at the steps where Diloco has fragments due (the outer rounds)
  // and after an eviction. A round is: quorum, new communicator and heals as
  // above (the joiner also gets θ_sync and the outer momentum), the
  // pseudo-gradients averaged over the members that trained the round (a
  // joiner adds zeros), the vote, and only if it commits the outer step. A
  // failed round is reduced again with the next quorum; the survivors' local
  // steps of the round are never lost.
  FaultTolerance(const TrainConfig& config, Trainer& trainer, double local_peak_flops, Diloco* diloco = nullptr);
  // Leaves the coordinator (if finish() did not) and closes the communicator.
  ~FaultTolerance() override;
  FaultTolerance(const FaultTolerance&) = delete;
  FaultTolerance& operator=(const FaultTolerance&) = delete;

  // Runs steps until one commits and returns its metrics; discarded steps are
  // redone inside. nullopt: the job finished without this worker (it joined
  // after the last step). Throws Timeout when no quorum forms within the job
  // timeout (e.g. fewer than min_replicas workers).
  std::optional<StepMetrics> train_step();
  // Validation over the current members; nullopt if a collective failed
  // (the next quorum then starts a new epoch).
  std::optional<double> evaluate();
  // Records the final state's hash, tells the coordinator this worker is done
  // and marks the job finished in the store (late joiners then exit).
  void finish();

  comm::Communicator* communicator() { return comm_.get(); }
  const RecoveryStats& stats() const { return stats_; }
  const coord::Timeouts& timeouts() const { return timeouts_; }
  // The replica that starts the run directory: the launcher's rank 0.
  static bool is_lead_replica();
  // Whether this worker writes the run's records (metrics.jsonl, summary.json)
  // in the current epoch: the member with the lowest replica id, i.e. the lead
  // while it is a member, else the survivor that takes over its records.
  bool keeps_records() const { return keeps_records_; }
  // The run directory of the job, agreed through the coordinator's store:
  // the first worker to ask stores its proposal, later ones get that path.
  std::string agreed_run_dir(const std::string& proposal);

 private:
  bool before_optimizer_apply(Trainer&, const StepMetrics&) override;

  enum class Entry { kReady, kRetry, kLate };
  // Asks for the quorum of the current step and sets it up (communicator,
  // heals). kRetry: the epoch could not start (a discard was recorded); ask
  // again. kLate: the job finished without this worker.
  Entry enter(coord::Quorum& q, bool& first);
  // Records a discarded step or round: drops the communicator after a
  // failure (`why` not empty), votes "not ok" unless `voted`.
  void discard(const coord::Quorum& q, const std::string& why, bool voted, const char* phase);
  void event_commit(int64_t step, uint32_t epoch, double loss);
  std::optional<StepMetrics> diloco_step();
  // One outer round until it commits; false: the job finished without this worker.
  bool outer_round();
  void rebuild(const coord::Quorum& q);
  void heal(const coord::Quorum& q);
  void drop_communicator(const std::string& why);
  void note_failure(const std::string& why);
  void maybe_drill(const char* phase, int64_t step);
  std::optional<int64_t> finished_step_in_store();
  void event(const std::string& kind, const std::string& fields_json);

  TrainConfig config_;
  Trainer& trainer_;
  TrainState state_;
  double local_peak_flops_ = 0;
  Diloco* diloco_ = nullptr;
  uint32_t epoch_ = 0;  // DiLoCo: the epoch of the last outer round
  coord::Timeouts timeouts_;
  HealOptions heal_;
  std::unique_ptr<HealStaging> heal_staging_;  // made once: heal_.staging
  int reference_replicas_ = 1;
  std::vector<FaultDrill> drills_;
  double step_delay_s_ = 0;  // BRAID_FT_STEP_DELAY
  std::string replica_;
  int restart_count_ = 0;

  std::shared_ptr<net::Store> store_;
  std::unique_ptr<coord::Client> client_;
  std::mutex comm_mu_;  // comm_ against the heartbeat thread's abort
  std::unique_ptr<comm::Communicator> comm_;
  std::atomic<bool> comm_broken_{false};
  std::atomic<bool> failure_noted_{false};  // one "failure" event per step attempt

  // The vote of the step in flight (set by train_step, cast in the observer).
  struct Vote {
    bool active = false;
    bool cast = false;
    bool committed = false;
    int64_t step = 0;
    uint32_t epoch = 0;
  } vote_;
  int world_ = 0;
  bool state_partial_ = false;  // a heal into this worker failed half-way
  bool finished_ = false;
  bool keeps_records_ = false;
  RecoveryStats stats_;

  std::mutex events_mu_;
  std::FILE* events_ = nullptr;
};

}  // namespace braid::train
