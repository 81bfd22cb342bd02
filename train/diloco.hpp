#pragma once
// DiLoCo (Douillard et al. 2023) and Streaming DiLoCo (Douillard et al. 2025):
// replicas train on their own with the inner optimizer (AdamW) and meet only
// every H steps over the slow link.
//
//   every H steps, per fragment f (F fragments at staggered steps):
//     Δ_f  = θ_sync_f − θ_f                     (pseudo-gradient, this replica)
//     Δ̄_f  = avg over replicas of Δ_f           (all-reduce on the outer
//                                                 communicator, through a codec)
//     b_f  = μ b_f + Δ̄_f;  θ_sync_f −= lr · (Nesterov ? Δ̄_f + μ b_f : b_f)
//     θ_f  = θ_sync_f                           (every replica identical again)
//
// Streaming: fragment f is due at steps s with s mod H = (f+1)·H/F mod H; its
// all-reduce runs on the outer communicator's own thread while the next τ
// inner steps go on, and is applied (the last two lines) τ steps later. The
// fragment's local progress in those τ steps is replaced by the synced value,
// so replicas stay identical per fragment. The last step of the run syncs
// every fragment, so all replicas end with the same parameters.
//
// A replica may be W workers in data parallelism (the Trainer's inner
// communicator). Worker j of each replica owns slice j of every fragment: it
// all-reduces only that slice with worker j of the other replicas (outer
// communicator j), applies the outer step to it, and the replica's workers
// all-gather the new slices over the fast inner link. So the slow link
// carries each fragment once per replica, not W times.
//
// Cost model per outer round of P parameters, R replicas, codec ratio k:
// each worker sends 2 (R−1)/R · k · 4 P / W bytes on the slow link (ring), in
// 2 (R−1) messages; data parallelism sends the same amount every step with
// k = 1, so DiLoCo divides slow-link bytes by H / k.
//
// Under fault tolerance (FaultTolerance, docs/diloco.md) every worker is one
// replica and the outer rounds are driven from outside: the coordinator's
// quorum is taken only at the steps where a fragment is due, the quorum's
// communicator becomes the outer one (bind_outer), and a round is reduced,
// voted on, and only then applied (reduce_round / apply_round). A replica
// that joins at a round heals from a peer (add_outer_state: θ_sync and the
// momentum travel with the training state), contributes nothing to that
// round (the average is over the replicas that trained it) and starts the
// next round from θ_sync.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "comm/codec.hpp"
#include "comm/communicator.hpp"
#include "train/diloco_config.hpp"
#include "train/train_state.hpp"
#include "train/trainer.hpp"

namespace braid::train {

// The world split into replicas (inner: one replica's data-parallel workers)
// and outer groups (worker j of every replica).
struct DilocoGroups {
  std::unique_ptr<comm::Communicator> inner;  // null when the job is one rank
  std::unique_ptr<comm::Communicator> outer;  // null when the job is one rank
  int replicas = 1;
  int workers_per_replica = 1;
  int replica = 0;       // this rank's replica
  int worker = 0;        // its rank inside the replica
  int global_rank = 0;
  int global_world = 1;
  // Ranks r*W .. r*W+W-1 form replica r. Every rank of `world` must call it.
  static DilocoGroups make(const DilocoConfig& config, comm::Communicator* world);
};

struct DilocoStats {
  int64_t outer_rounds = 0;        // fragment syncs applied
  uint64_t bytes_wan = 0;          // sent by this rank on the outer communicator(s)
  double outer_wait_s = 0;         // compute waited for outer all-reduces
  double outer_apply_s = 0;        // outer optimizer and inner all-gather
};

class Diloco : public StepObserver {
 public:
  // Registers itself with the trainer, which must use groups.inner. Points
  // the trainer's sampler at the global rank's share of the data (replicas
  // read disjoint samples, as data-parallel ranks would). `train_tokens`:
  // size of the training split. Throws ConfigError for fragments > tensors.
  Diloco(const DilocoConfig& config, Trainer& trainer, DilocoGroups& groups, size_t train_tokens);
  ~Diloco() override;

  void after_step(Trainer& t, const StepMetrics& m) override;
  // Syncs whatever is pending and every fragment not synced at this step
  // (the end of a run, or before a final evaluation). Several fragments go
  // as one all-reduce of their slices laid end to end: over a slow link the
  // latency of a ring all-reduce (2(n-1) messages) is paid once, not once
  // per fragment.
  void sync_all();
  // Adds diloco_* fields to the step's metrics.
  void annotate(StepMetrics& m) const;

  const DilocoStats& stats() const { return stats_; }
  int fragments() const { return static_cast<int>(fragments_.size()); }
  // [begin, end) of fragment f in the flat parameter buffer.
  std::pair<int64_t, int64_t> fragment_range(int f) const { return fragments_[static_cast<size_t>(f)]; }
  // True when fragment f is due for a sync after step `step`.
  bool due(int f, int64_t step) const;

  // --- outer rounds driven from outside (fault tolerance) ---
  // after_step() then leaves every sync to the caller. Needs delay 0 and
  // one worker per replica (TrainConfig checks it for [diloco] + [fault]).
  void drive_externally();
  // The fragments to sync after step s: those due at s, and every fragment
  // at the run's last step; empty at step 0.
  std::vector<int> fragments_due(int64_t s) const;
  // The outer communicator of the next rounds (null: none). The previous one
  // must still be alive (its bytes are added to bytes_wan).
  void bind_outer(comm::Communicator* outer);
  // Reads the samples of data-parallel rank `replica` of `replicas`, from
  // the sampler's current position.
  void set_data_share(int replica, int replicas);
  // The first half of a round over `fragments`: this replica's
  // pseudo-gradients (zeros when `contribute` is false) summed over the
  // outer communicator through the codec and divided by `contributors`.
  // Throws the comm layer's errors; changes nothing but scratch memory, so
  // a failed round can be reduced again (with another communicator).
  void reduce_round(const std::vector<int>& fragments, bool contribute, int contributors);
  // The second half: the outer step on the fragments of the last
  // reduce_round. A replica that did not contribute then takes θ_sync for
  // the whole model (it starts the next round from the synced parameters).
  void apply_round(bool contributed);
  // Adds θ_sync and the outer momentum to the state a healing peer sends.
  void add_outer_state(TrainState& state);

 private:
  struct Pending {
    bool active = false;
    comm::Work work;
    int64_t apply_at = 0;
  };
  std::pair<int64_t, int64_t> own_slice(int f) const;
  // θ_sync − θ over fragment f's own slice, into delta_.
  void compute_delta(int f);
  // Averages n pseudo-gradient values across replicas in place (through the
  // codec; with one replica, what the codec would carry).
  comm::Work reduce_outer(float* d, size_t n, comm::ReduceOp op = comm::ReduceOp::Avg);
  void launch(int f, int64_t step);
  // Waits for fragment f's all-reduce in flight, then update(f).
  void apply(int f);
  // The outer step on fragment f with the averaged pseudo-gradient in delta_.
  void update(int f);
  // reduce_round + apply_round with every replica contributing.
  void sync_now(const std::vector<int>& fragments);
  void count_bytes();

  DilocoConfig config_;
  Trainer& trainer_;
  DilocoGroups& groups_;
  const comm::Codec& codec_;
  comm::Communicator* outer_ = nullptr;  // groups_.outer, or the one bound from outside
  uint64_t bytes_of_unbound_ = 0;        // bytes_wan of outer communicators bound before
  bool external_ = false;
  size_t train_tokens_ = 0;
  std::vector<std::pair<int64_t, int64_t>> fragments_;
  std::vector<Pending> pending_;
  std::vector<int64_t> synced_at_;  // step of each fragment's last apply
  std::vector<float> sync_;         // θ_sync (whole model; own slices updated, the rest gathered)
  std::vector<float> momentum_;     // outer momentum (own slices)
  std::vector<float> delta_;        // pseudo-gradients in flight (own slices)
  std::vector<float> residual_;     // error feedback (own slices)
  std::vector<unsigned char> encode_scratch_;
  std::vector<float> gather_;
  std::vector<float> fused_, fused_residual_;  // a round: the fragments' slices, end to end
  std::vector<int> round_;                     // fragments of the last reduce_round
  DilocoStats stats_;
};

}  // namespace braid::train
