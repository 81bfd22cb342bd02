#pragma once
// Faults injected on purpose, for tests and demos: `[health] inject = [...]`
// or `braid train --inject SPEC`. A spec is KIND:key=value,... e.g.
//   bitflip:rank=1,step=40,target=params      one bit of the parameters after the update
//   bitflip:rank=1,step=40,target=grads       one bit of the averaged gradient, after its fingerprint
//   bitflip:rank=1,step=40,target=comm        one bit of a bucket's all-reduce result as this rank received it
//   slow:rank=2,factor=3                      that rank computes `factor` times slower (every step, or from step=)
//   hang:rank=1,step=30[,seconds=S]           that rank stops before the step for S seconds (default: forever)
//   crash:rank=0,step=50                      that rank aborts (SIGABRT) before the step
//   nan:rank=0,step=20[,count=N]              a NaN loss on that rank, reaching every replica (N consecutive steps)
// Optional for bitflips: index=ELEMENT, bit=0..31 (default: derived from
// step and rank), count=N (N consecutive steps). rank=-1 or omitted: rank 0.
// Every fault fires once per (spec, step) and is announced in the log as
// INJECTED so that nobody mistakes it for a real one.
#include <cstdint>
#include <string>
#include <vector>

namespace braid::health {

enum class FaultKind { BitFlip, Slow, Hang, Crash, Nan };
enum class FlipTarget { Params, Grads, Comm };

struct FaultSpec {
  FaultKind kind = FaultKind::BitFlip;
  int rank = 0;
  int64_t step = -1;           // the optimizer step it happens in (1-based, as logged); -1: every step (slow)
  int64_t count = 1;           // consecutive steps from `step`
  FlipTarget target = FlipTarget::Params;
  double factor = 1;           // slow
  double seconds = -1;         // hang; < 0 = forever
  int64_t index = -1;          // bitflip element; -1 = derived
  int bit = -1;                // bitflip bit within the element; -1 = derived
  std::string text;            // as written

  // Whether it applies to `rank` at step `step` (1-based).
  bool at(int r, int64_t s) const {
    if (r != rank || count <= 0) return false;  // count 0: spent
    if (step < 0) return true;
    return s >= step && s < step + count;
  }
};

const char* fault_kind_name(FaultKind k);
const char* flip_target_name(FlipTarget t);
// Throws ConfigError naming the spec and what is wrong.
FaultSpec parse_fault_spec(const std::string& text);
std::vector<FaultSpec> parse_fault_specs(const std::vector<std::string>& texts);

}  // namespace braid::health
