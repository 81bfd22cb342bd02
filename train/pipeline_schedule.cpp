#include "train/pipeline_schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "core/error.hpp"

namespace braid::train {

PipelineScheduleKind parse_pipeline_schedule(const std::string& name) {
  if (name == "gpipe") return PipelineScheduleKind::GPipe;
  if (name == "1f1b") return PipelineScheduleKind::OneFOneB;
  throw ConfigError(fmt::format("unknown pipeline schedule '{}'", name), "use \"gpipe\" or \"1f1b\"");
}

std::vector<PipelineAction> pipeline_schedule(PipelineScheduleKind kind, int stages, int stage, int microbatches) {
  if (stages < 1 || stage < 0 || stage >= stages || microbatches < 1)
    throw ConfigError(fmt::format("pipeline schedule for stage {} of {} over {} micro-batches", stage, stages,
                                  microbatches),
                      "stages and micro-batches must be positive and the stage below stages");
  std::vector<PipelineAction> out;
  out.reserve(2 * static_cast<size_t>(microbatches));
  if (kind == PipelineScheduleKind::GPipe) {
    for (int m = 0; m < microbatches; ++m) out.push_back({PipelineAction::Forward, m});
    // Backwards in reverse: the last micro-batch's gradient arrives first
    // from the next stage, and its activations are the newest.
    for (int m = microbatches - 1; m >= 0; --m) out.push_back({PipelineAction::Backward, m});
    return out;
  }
  const int warmup = std::min(stages - 1 - stage, microbatches);
  int next_forward = 0, next_backward = 0;
  for (int i = 0; i < warmup; ++i) out.push_back({PipelineAction::Forward, next_forward++});
  while (next_forward < microbatches) {  // steady state: one forward, one backward
    out.push_back({PipelineAction::Forward, next_forward++});
    out.push_back({PipelineAction::Backward, next_backward++});
  }
  while (next_backward < microbatches) out.push_back({PipelineAction::Backward, next_backward++});
  return out;
}

PipelineSimulation simulate_pipeline(PipelineScheduleKind kind, int stages, int microbatches, double forward_cost,
                                     double backward_cost) {
  std::vector<std::vector<PipelineAction>> plans;
  for (int s = 0; s < stages; ++s) plans.push_back(pipeline_schedule(kind, stages, s, microbatches));
  return simulate_pipeline(plans, forward_cost, backward_cost);
}

PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineAction>>& plans, double forward_cost,
                                     double backward_cost) {
  const int stages = static_cast<int>(plans.size());
  // Arrival time of each message: key (receiving stage, kind, micro-batch).
  std::map<std::tuple<int, int, int>, double> sent;
  std::vector<size_t> next(static_cast<size_t>(stages), 0);
  std::vector<double> clock(static_cast<size_t>(stages), 0.0);
  std::vector<int> in_flight(static_cast<size_t>(stages), 0);
  PipelineSimulation sim;
  sim.idle.assign(static_cast<size_t>(stages), 0.0);
  sim.peak_in_flight.assign(static_cast<size_t>(stages), 0);
  // Each round runs every stage as far as its receives allow; a round with
  // no progress while work remains is a deadlock.
  for (;;) {
    bool progressed = false, remaining = false;
    for (int s = 0; s < stages; ++s) {
      auto& plan = plans[static_cast<size_t>(s)];
      auto& i = next[static_cast<size_t>(s)];
      auto& t = clock[static_cast<size_t>(s)];
      while (i < plan.size()) {
        const auto a = plan[i];
        const bool fwd = a.kind == PipelineAction::Forward;
        const bool needs_message = fwd ? s > 0 : s < stages - 1;
        double ready = t;
        if (needs_message) {
          auto it = sent.find({s, a.kind, a.microbatch});
          if (it == sent.end()) break;  // blocked on a receive
          ready = std::max(t, it->second);
          sent.erase(it);
        }
        sim.idle[static_cast<size_t>(s)] += ready - t;
        t = ready + (fwd ? forward_cost : backward_cost);
        auto& f = in_flight[static_cast<size_t>(s)];
        f += fwd ? 1 : -1;
        if (f < 0)
          throw Error(fmt::format("pipeline schedule: stage {} runs the backward of micro-batch {} before its "
                                  "forward", s, a.microbatch));
        sim.peak_in_flight[static_cast<size_t>(s)] = std::max(sim.peak_in_flight[static_cast<size_t>(s)], f);
        if (fwd && s < stages - 1) sent[{s + 1, PipelineAction::Forward, a.microbatch}] = t;
        if (!fwd && s > 0) sent[{s - 1, PipelineAction::Backward, a.microbatch}] = t;
        ++i;
        progressed = true;
      }
      if (i < plan.size()) remaining = true;
    }
    if (!remaining) break;
    if (!progressed) {
      std::string stuck;
      for (int s = 0; s < stages; ++s)
        if (next[static_cast<size_t>(s)] < plans[static_cast<size_t>(s)].size())
          stuck += fmt::format(" {}", s);
      throw Error(fmt::format("pipeline schedule deadlocks ({} stages): stages{} wait forever", stages, stuck));
    }
  }
  if (!sent.empty()) throw Error("pipeline schedule: a message was sent but never received");
  for (double t : clock) sim.makespan = std::max(sim.makespan, t);
  // Time a stage spends idle after its last action also counts as bubble.
  for (int s = 0; s < stages; ++s) sim.idle[static_cast<size_t>(s)] += sim.makespan - clock[static_cast<size_t>(s)];
  return sim;
}

}  // namespace braid::train
