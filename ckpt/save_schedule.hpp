#pragma once
// When to save: every N steps, every M minutes, and once more when the job is
// asked to stop (SIGTERM/SIGINT, e.g. from `braid launch` or a scheduler's
// preemption notice).
//
// All ranks must save the same steps. Step-based saves agree by construction.
// The time-based trigger and the stop signal are observed by each rank at its
// own moment, so with several ranks the trainer must agree on them before
// saving: OR the local flag into a collective it already runs every step
// (e.g. one extra element in the loss all-reduce) and save when the result is
// set. The schedule only provides the local decision.
#include <atomic>
#include <cstdint>

#include "core/clock.hpp"

namespace braid::ckpt {

class SaveSchedule {
 public:
  // every_steps <= 0 and every_seconds <= 0 disable the respective trigger.
  SaveSchedule(int64_t every_steps, double every_seconds)
      : every_steps_(every_steps), every_seconds_(every_seconds), last_ns_(now_ns()) {}

  // Whether a save is due after `step` completed (local decision).
  bool due(int64_t step) const {
    if (every_steps_ > 0 && step > 0 && step % every_steps_ == 0) return true;
    return every_seconds_ > 0 && static_cast<double>(now_ns() - last_ns_) * 1e-9 >= every_seconds_;
  }
  // Call after a save (restarts the timer).
  void saved() { last_ns_ = now_ns(); }

 private:
  int64_t every_steps_;
  double every_seconds_;
  int64_t last_ns_;
};

// Installs SIGTERM and SIGINT handlers that only set a flag (the trainer saves
// and exits at the next step boundary). A second signal of the same kind
// restores the default action, so a repeated Ctrl-C still kills at once.
void install_stop_signal_handlers();
// True once a stop signal arrived.
bool stop_requested();
// The signal number that requested the stop (0 if none).
int stop_signal();

}  // namespace braid::ckpt
