#pragma once
// The loss / gradient-norm guard: a step whose global loss or gradient norm
// is NaN/Inf, or lies more than `sigma` standard deviations above its running
// mean (exponential moving statistics), is not applied; when such steps come
// `rollback_after` times in a row, the run goes back to its last checkpoint
// and skips the data window that caused them (as PaLM did). Every rank sees
// the same global loss and norm, so every rank reaches the same verdict.
//
// Cost: a few floating-point operations per step.
#include <cstdint>
#include <string>

namespace braid::health {

struct SpikeGuardOptions {
  double sigma = 6;          // spike threshold in running standard deviations; <= 0: only NaN/Inf
  int64_t warmup = 20;       // accepted steps before spikes are judged
  double ema = 0.05;         // weight of a new step in the running statistics
  int64_t rollback_after = 2;  // consecutive bad steps that trigger a rollback; 0 = never roll back
};

enum class GuardVerdict { Apply, Skip, Rollback };
const char* guard_verdict_name(GuardVerdict v);

class SpikeGuard {
 public:
  explicit SpikeGuard(SpikeGuardOptions o = {}) : o_(o) {}
  // Judges a step; `why` says what was wrong when the verdict is not Apply.
  // Applied steps update the running statistics.
  GuardVerdict judge(double loss, double grad_norm, std::string* why = nullptr);
  // After a rollback the streak starts over (the statistics are kept).
  void reset_streak() { streak_ = 0; }
  // The model was replaced (e.g. a DiLoCo outer step moved every parameter):
  // the running statistics start over, and spikes are judged again only after
  // `warmup` accepted steps (NaN/Inf always are).
  void restart() {
    loss_ = Running{};
    norm_ = Running{};
    accepted_ = 0;
    streak_ = 0;
  }
  int64_t streak() const { return streak_; }
  int64_t accepted() const { return accepted_; }
  // The running statistics, counters included, as text that load() takes
  // back exactly (hexadecimal floats): what a healed or resumed worker needs
  // to reach the same verdicts as its peers. load() throws CorruptData on
  // anything else and then changes nothing.
  std::string save() const;
  void load(const std::string& text);

 private:
  struct Running {
    double mean = 0, var = 0;
    void add(double x, double w, bool first);
    double std() const;
  };
  bool spike(const Running& r, double x) const;

  SpikeGuardOptions o_;
  Running loss_, norm_;
  int64_t accepted_ = 0;
  int64_t streak_ = 0;
};

}  // namespace braid::health
