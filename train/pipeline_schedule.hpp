#pragma once
// Pipeline schedules: the order in which one stage runs the forward and
// backward passes of the micro-batches of an optimizer step.
//
//   GPipe  all M forwards, then all M backwards (reversed). Activations of
//          all M micro-batches are alive at once.
//   1F1B   (PipeDream-flush, Megatron's default) stage s of P runs
//          min(P - 1 - s, M) warm-up forwards, then alternates one forward
//          and one backward, then drains the remaining backwards. At most
//          P - s micro-batches are in flight on stage s, whatever M is.
//
//   interleaved  (Narayanan et al. 2021, Megatron's interleaved 1F1B) every
//          stage holds V model chunks: chunk v of stage s is virtual stage
//          v·P + s, so the layers go round the stages V times. Forwards run
//          in groups of P micro-batches per chunk (k-th forward: chunk
//          (k mod P·V) / P, micro-batch (k / P·V)·P + k mod P), backwards
//          likewise with the chunks reversed; (P - s - 1)·2 + (V - 1)·P
//          warm-up forwards (all of them when M = P), then 1F1B. Needs
//          P > 1 and M a multiple of P.
//
// Cost model: with forward time f and backward time b per micro-batch and
// stage, GPipe and 1F1B take (M + P - 1)·(f + b) per step, of which
// (P - 1)·(f + b) is bubble: a share of (P - 1) / (M + P - 1). 1F1B does not
// shrink the bubble; it bounds activation memory by P instead of M. The
// interleaved schedule's chunks take (f + b)/V each, so its bubble is
// (P - 1)·(f + b)/V: a share of (P - 1) / (V·M + P - 1), for V times as many
// point-to-point messages and up to ~(1 + (P-1)/(P·V))·P micro-batch-stages'
// activations.
//
// A forward of micro-batch m at virtual stage u receives its input from
// virtual stage u - 1 (if u > 0) and sends its output to u + 1; a backward
// receives the output's gradient from u + 1 (if u is not the last) and sends
// the input's gradient to u - 1. Without interleaving the virtual stage is
// the stage. Sends are posted without waiting; receives block.
#include <cstdint>
#include <string>
#include <vector>

namespace braid::train {

enum class PipelineScheduleKind { GPipe, OneFOneB, Interleaved };
// "gpipe" | "1f1b" | "interleaved"
PipelineScheduleKind parse_pipeline_schedule(const std::string& name);

struct PipelineAction {
  enum Kind : uint8_t { Forward, Backward } kind;
  int microbatch;
  int chunk = 0;  // model chunk of the stage (interleaved), else 0
  bool operator==(const PipelineAction&) const = default;
};

// The actions of `stage` (0-based) of `stages`, over `microbatches`
// micro-batches; `chunks` model chunks per stage (interleaved only, >= 2;
// the others take 1). Throws ConfigError for shapes the schedule cannot run.
std::vector<PipelineAction> pipeline_schedule(PipelineScheduleKind kind, int stages, int stage, int microbatches,
                                              int chunks = 1);

// Replays the schedules of all stages with the messages they exchange (sends
// never block, a receive blocks until its message was sent) in simulated
// time: forward costs `forward_cost`, backward `backward_cost`, messages are
// free. Throws Error naming the stuck stages if the schedules deadlock.
struct PipelineSimulation {
  double makespan = 0;              // time until the last stage finishes
  std::vector<double> idle;         // per stage: time spent waiting (the bubble)
  std::vector<int> peak_in_flight;  // per stage: most (micro-batch, chunk) forwards not yet backwarded
};
// With chunks > 1 an action costs forward_cost / chunks (or backward_cost /
// chunks): the stage's layers are split into that many chunks.
PipelineSimulation simulate_pipeline(PipelineScheduleKind kind, int stages, int microbatches,
                                     double forward_cost = 1.0, double backward_cost = 2.0, int chunks = 1);
// The same for explicit per-stage action lists (plans[s] is stage s's).
PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineAction>>& plans,
                                     double forward_cost = 1.0, double backward_cost = 2.0, int chunks = 1);

}  // namespace braid::train
