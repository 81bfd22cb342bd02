#include "train/pipeline_schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "core/error.hpp"

namespace braid::train {

PipelineScheduleKind parse_pipeline_schedule(const std::string& name) {
  if (name == "gpipe") return PipelineScheduleKind::GPipe;
  if (name == "1f1b") return PipelineScheduleKind::OneFOneB;
  if (name == "interleaved") return PipelineScheduleKind::Interleaved;
  throw ConfigError(fmt::format("unknown pipeline schedule '{}'", name), "use \"gpipe\", \"1f1b\" or \"interleaved\"");
}

namespace {

// Megatron's interleaved 1F1B for one stage.
std::vector<PipelineAction> interleaved_schedule(int stages, int stage, int microbatches, int chunks) {
  if (stages < 2 || chunks < 2 || microbatches % stages != 0)
    throw ConfigError(fmt::format("the interleaved schedule over {} stages, {} chunks per stage and {} micro-batches",
                                  stages, chunks, microbatches),
                      "it needs pp >= 2, parallel.chunks >= 2 and micro-batches a multiple of pp");
  const int total = microbatches * chunks, group = stages * chunks;
  auto micro = [&](int k) { return (k / group) * stages + k % stages; };
  auto forward = [&](int k) { return PipelineAction{PipelineAction::Forward, micro(k), (k % group) / stages}; };
  auto backward = [&](int k) {
    return PipelineAction{PipelineAction::Backward, micro(k), chunks - 1 - (k % group) / stages};
  };
  const int warmup =
      microbatches == stages ? total : std::min((stages - stage - 1) * 2 + (chunks - 1) * stages, total);
  std::vector<PipelineAction> out;
  out.reserve(2 * static_cast<size_t>(total));
  int f = 0, b = 0;
  while (f < warmup) out.push_back(forward(f++));
  while (f < total) {
    out.push_back(forward(f++));
    out.push_back(backward(b++));
  }
  while (b < total) out.push_back(backward(b++));
  return out;
}

}  // namespace

std::vector<PipelineAction> pipeline_schedule(PipelineScheduleKind kind, int stages, int stage, int microbatches,
                                              int chunks) {
  if (stages < 1 || stage < 0 || stage >= stages || microbatches < 1)
    throw ConfigError(fmt::format("pipeline schedule for stage {} of {} over {} micro-batches", stage, stages,
                                  microbatches),
                      "stages and micro-batches must be positive and the stage below stages");
  if (kind == PipelineScheduleKind::Interleaved) return interleaved_schedule(stages, stage, microbatches, chunks);
  if (chunks != 1)
    throw ConfigError(fmt::format("{} model chunks per stage need the interleaved schedule", chunks),
                      "set parallel.schedule = \"interleaved\", or parallel.chunks = 1");
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
                                     double backward_cost, int chunks) {
  std::vector<std::vector<PipelineAction>> plans;
  for (int s = 0; s < stages; ++s) plans.push_back(pipeline_schedule(kind, stages, s, microbatches, chunks));
  return simulate_pipeline(plans, forward_cost, backward_cost, chunks);
}

PipelineSimulation simulate_pipeline(const std::vector<std::vector<PipelineAction>>& plans, double forward_cost,
                                     double backward_cost, int chunks) {
  const int stages = static_cast<int>(plans.size());
  const int last_virtual = stages * chunks - 1;
  forward_cost /= chunks;
  backward_cost /= chunks;
  // Arrival time of each message: key (receiving virtual stage, kind, micro-batch).
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
        if (a.chunk < 0 || a.chunk >= chunks)
          throw Error(fmt::format("pipeline schedule: stage {} runs chunk {} of {}", s, a.chunk, chunks));
        const bool fwd = a.kind == PipelineAction::Forward;
        const int u = a.chunk * stages + s;  // virtual stage
        const bool needs_message = fwd ? u > 0 : u < last_virtual;
        double ready = t;
        if (needs_message) {
          auto it = sent.find({u, a.kind, a.microbatch});
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
        if (fwd && u < last_virtual) sent[{u + 1, PipelineAction::Forward, a.microbatch}] = t;
        if (!fwd && u > 0) sent[{u - 1, PipelineAction::Backward, a.microbatch}] = t;
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
