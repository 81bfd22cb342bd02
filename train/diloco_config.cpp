#include "train/diloco_config.hpp"

#include <fmt/format.h>

#include "comm/codec.hpp"
#include "core/config.hpp"
#include "core/error.hpp"

namespace braid::train {

DilocoConfig DilocoConfig::read(Config& doc) {
  DilocoConfig d;
  d.enabled = doc.get_bool("diloco.enabled", d.enabled);
  d.inner_steps = doc.get_int("diloco.inner_steps", d.inner_steps, 1, INT64_MAX / 4);
  d.outer_lr = doc.get_double("diloco.outer_lr", d.outer_lr, 0.0, 100.0);
  d.outer_momentum = doc.get_double("diloco.outer_momentum", d.outer_momentum, 0.0, 0.999999);
  d.nesterov = doc.get_bool("diloco.nesterov", d.nesterov);
  d.codec = doc.get_string("diloco.codec", d.codec);
  comm::parse_codec(d.codec);  // ConfigError listing the codecs
  d.error_feedback = doc.get_bool("diloco.error_feedback", d.error_feedback);
  d.fragments = doc.get_int("diloco.fragments", d.fragments, 1, 1 << 20);
  d.delay = doc.get_int("diloco.delay", d.delay, 0, INT64_MAX / 4);
  d.replicas = doc.get_int("diloco.replicas", d.replicas, 0, 1 << 20);
  d.workers_per_replica = doc.get_int("diloco.workers_per_replica", d.workers_per_replica, 0, 1 << 20);
  // A fragment's all-reduce must land before the same fragment is due again.
  if (d.fragments > d.inner_steps)
    throw ConfigError(fmt::format("'diloco.fragments' = {} is more than 'diloco.inner_steps' = {}", d.fragments,
                                  d.inner_steps),
                      "each fragment syncs once every inner_steps steps at its own step; use fragments <= inner_steps");
  if (d.delay >= d.inner_steps)
    throw ConfigError(fmt::format("'diloco.delay' = {} is not below 'diloco.inner_steps' = {}", d.delay,
                                  d.inner_steps),
                      "a fragment's all-reduce must be applied before its next sync; use delay < inner_steps");
  return d;
}

std::string DilocoConfig::to_toml() const {
  return fmt::format(
      "[diloco]\nenabled = {}\ninner_steps = {}\nouter_lr = {}\nouter_momentum = {}\nnesterov = {}\n"
      "codec = \"{}\"\nerror_feedback = {}\nfragments = {}\ndelay = {}\nreplicas = {}\nworkers_per_replica = {}\n\n",
      enabled, inner_steps, outer_lr, outer_momentum, nesterov, codec, error_feedback, fragments, delay, replicas,
      workers_per_replica);
}

void DilocoConfig::resolve(int world, int& replicas_out, int& workers_out) const {
  int64_t r = replicas, w = workers_per_replica;
  if (r == 0 && w == 0) w = 1;
  if (r == 0) r = world / w;
  if (w == 0) w = r > 0 ? world / r : 0;
  if (r < 1 || w < 1 || r * w != world)
    throw ConfigError(fmt::format("[diloco] replicas = {} x workers_per_replica = {} does not make the {} ranks "
                                  "of this job",
                                  replicas, workers_per_replica, world),
                      "set diloco.replicas (or diloco.workers_per_replica) to a divisor of the number of ranks");
  replicas_out = static_cast<int>(r);
  workers_out = static_cast<int>(w);
}

}  // namespace braid::train
