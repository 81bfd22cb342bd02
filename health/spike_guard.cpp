#include "health/spike_guard.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "core/error.hpp"

namespace braid::health {

const char* guard_verdict_name(GuardVerdict v) {
  switch (v) {
    case GuardVerdict::Apply: return "apply";
    case GuardVerdict::Skip: return "skip";
    case GuardVerdict::Rollback: return "rollback";
  }
  return "?";
}

void SpikeGuard::Running::add(double x, double w, bool first) {
  if (first) {
    mean = x;
    var = 0;
    return;
  }
  const double d = x - mean;
  mean += w * d;
  var = (1 - w) * (var + w * d * d);
}

double SpikeGuard::Running::std() const { return std::sqrt(std::max(0.0, var)); }

bool SpikeGuard::spike(const Running& r, double x) const {
  if (o_.sigma <= 0 || accepted_ < o_.warmup) return false;
  // A floor on the deviation: a loss that has been flat for a while would
  // otherwise call any wobble a spike.
  const double dev = std::max(r.std(), 0.02 * std::abs(r.mean) + 1e-12);
  return x > r.mean + o_.sigma * dev;
}

std::string SpikeGuard::save() const {
  return fmt::format("spike-guard-1 {} {} {:a} {:a} {:a} {:a}", accepted_, streak_, loss_.mean, loss_.var, norm_.mean,
                     norm_.var);
}

void SpikeGuard::load(const std::string& text) {
  std::istringstream in(text);
  std::string tag;
  std::vector<std::string> f(6);
  in >> tag;
  for (auto& x : f) in >> x;
  std::string extra;
  auto fail = [&] {
    return CorruptData(fmt::format("malformed health-guard state '{}'", text),
                       "the checkpoint or peer runs another braid build; delete the entry or use an older checkpoint");
  };
  if (tag != "spike-guard-1" || !in || (in >> extra)) throw fail();
  auto to_int = [&](const std::string& s) {
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (*end || v < 0) throw fail();
    return static_cast<int64_t>(v);
  };
  auto to_double = [&](const std::string& s) {
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (*end || !std::isfinite(v)) throw fail();
    return v;
  };
  const int64_t accepted = to_int(f[0]), streak = to_int(f[1]);
  const Running loss{to_double(f[2]), to_double(f[3])}, norm{to_double(f[4]), to_double(f[5])};
  accepted_ = accepted;
  streak_ = streak;
  loss_ = loss;
  norm_ = norm;
}

GuardVerdict SpikeGuard::judge(double loss, double grad_norm, std::string* why) {
  std::string reason;
  if (!std::isfinite(loss) || !std::isfinite(grad_norm))
    reason = fmt::format("loss {} / gradient norm {} is not finite", loss, grad_norm);
  else if (spike(loss_, loss))
    reason = fmt::format("loss {:.4f} spikes above the running mean {:.4f} + {} x {:.4f}", loss, loss_.mean, o_.sigma,
                         loss_.std());
  else if (spike(norm_, grad_norm))
    reason = fmt::format("gradient norm {:.4f} spikes above the running mean {:.4f} + {} x {:.4f}", grad_norm,
                         norm_.mean, o_.sigma, norm_.std());
  if (reason.empty()) {
    loss_.add(loss, o_.ema, accepted_ == 0);
    norm_.add(grad_norm, o_.ema, accepted_ == 0);
    ++accepted_;
    streak_ = 0;
    return GuardVerdict::Apply;
  }
  if (why) *why = reason;
  ++streak_;
  return o_.rollback_after > 0 && streak_ >= o_.rollback_after ? GuardVerdict::Rollback : GuardVerdict::Skip;
}

}  // namespace braid::health
