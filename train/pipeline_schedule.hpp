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
// Cost model: with forward time f and backward time b per micro-batch and
// stage, both schedules take (M + P - 1)·(f + b) per step, of which
// (P - 1)·(f + b) is bubble: a share of (P - 1) / (M + P - 1). 1F1B does not
// shrink the bubble; it bounds activation memory by P instead of M.
//
// A forward of micro-batch m on stage s receives its input from stage s - 1
// (if s > 0) and sends its output to s + 1; a backward receives the output's
// gradient from s + 1 (if s < P - 1) and sends the input's gradient to s - 1.
// Sends are posted without waiting; receives block.
#include <cstdint>
#include <string>
#include <vector>

namespace braid::train {

enum class PipelineScheduleKind { GPipe, OneFOneB };
PipelineScheduleKind parse_pipeline_schedule(const std::string& name);  // "gpipe" | "1f1b"

struct PipelineAction {
  enum Kind : uint8_t { Forward, Backward } kind;
  int microbatch;
  bool operator==(const PipelineAction&) const = default;
};

// The actions of `stage` (0-based) of `stages`, over `microbatches` micro-batches.
std::vector<PipelineAction> pipeline_schedule(PipelineScheduleKind kind, int stages, int stage, int microbatches);

// Replays the schedules of all stages with the messages they exchange (sends
// never block, a receive blocks until its message was sent) in simulated
// time: forward costs `forward_cost`, backward `backward_cost`, messages are
// free. Throws Error naming the stuck stages if the schedules deadlock.
struct PipelineSimulation {
  double makespan = 0;              // time until the last stage finishes
  std::vector<double> idle;         // per stage: time spent waiting (the bubble)
  std::vector<int> peak_in_flight;  // per stage: most micro-batches forwarded but not yet backwarded
};
PipelineSimulation simulate_pipeline(PipelineScheduleKind kind, int stages, int microbatches,
                                     double forward_cost = 1.0, double backward_cost = 2.0);
// The same for explicit per-stage action lists (plans[s] is stage s's).
PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineAction>>& plans,
                                     double forward_cost = 1.0, double backward_cost = 2.0);

}  // namespace braid::train
