#include "train/health_config.hpp"

#include <fmt/format.h>

#include "core/config.hpp"
#include "health/fault_injection.hpp"

namespace braid::train {
namespace {

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

HealthConfig read_health_config(Config& doc) {
  HealthConfig h;
  h.fingerprints = doc.get_bool("health.fingerprints", h.fingerprints);
  h.fingerprint_every = doc.get_int("health.fingerprint_every", h.fingerprint_every, 1, 1 << 30);
  h.fingerprint_fraction = doc.get_double("health.fingerprint_fraction", h.fingerprint_fraction, 1e-6, 1.0);
  h.fingerprint_optimizer = doc.get_bool("health.fingerprint_optimizer", h.fingerprint_optimizer);
  h.bucket_fingerprints = doc.get_bool("health.bucket_fingerprints", h.bucket_fingerprints);
  h.guard = doc.get_bool("health.guard", h.guard);
  h.spike_sigma = doc.get_double("health.spike_sigma", h.spike_sigma, 0, 1e6);
  h.guard_warmup = doc.get_int("health.guard_warmup", h.guard_warmup, 0, 1 << 30);
  h.rollback_after = doc.get_int("health.rollback_after", h.rollback_after, 0, 1 << 30);
  h.straggler_every = doc.get_int("health.straggler_every", h.straggler_every, 0, 1 << 30);
  h.straggler_factor = doc.get_double("health.straggler_factor", h.straggler_factor, 1.0, 1e6);
  h.flight_recorder = doc.get_bool("health.flight_recorder", h.flight_recorder);
  h.metrics_port = doc.get_int("health.metrics_port", h.metrics_port, -1, 65535);
  h.metrics_bind = doc.get_string("health.metrics_bind", h.metrics_bind);
  h.inject = doc.get_string_list("health.inject", h.inject);
  health::parse_fault_specs(h.inject);  // throws ConfigError naming a bad spec
  return h;
}

std::string health_config_toml(const HealthConfig& h) {
  std::string s = "[health]\n";
  s += fmt::format("fingerprints = {}\nfingerprint_every = {}\nfingerprint_fraction = {}\nfingerprint_optimizer = {}\n",
                   h.fingerprints, h.fingerprint_every, h.fingerprint_fraction, h.fingerprint_optimizer);
  s += fmt::format("bucket_fingerprints = {}\nguard = {}\nspike_sigma = {}\nguard_warmup = {}\nrollback_after = {}\n",
                   h.bucket_fingerprints, h.guard, h.spike_sigma, h.guard_warmup, h.rollback_after);
  s += fmt::format("straggler_every = {}\nstraggler_factor = {}\nflight_recorder = {}\nmetrics_port = {}\n",
                   h.straggler_every, h.straggler_factor, h.flight_recorder, h.metrics_port);
  s += "metrics_bind = " + quoted(h.metrics_bind) + "\ninject = [";
  for (size_t i = 0; i < h.inject.size(); ++i) s += (i ? ", " : "") + quoted(h.inject[i]);
  return s + "]\n\n";
}

}  // namespace braid::train
