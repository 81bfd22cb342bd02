#include "train/train_config.hpp"

#include <fmt/format.h>

#include <sstream>

#include "core/bytes.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "train/parallel_mesh.hpp"

namespace braid::train {
namespace {

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += c;
    }
  }
  return out + "\"";
}

std::string toml_list(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + toml_string(v[i]);
  return out + "]";
}

// Sizes may be written as numbers of bytes or as text ("25M"); the error names the key.
uint64_t get_bytes(Config& doc, const std::string& key, uint64_t def) {
  if (!doc.has(key)) {
    doc.get_string(key, "");  // marks the key as known
    return def;
  }
  std::string text = doc.get_string(key, "");
  try {
    return parse_bytes(text);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: '{}' = '{}' is not a size", doc.source(), key, text),
                      "write a byte count or a size such as 512K, 25M, 1G");
  }
}

}  // namespace

TrainConfig TrainConfig::from(Config& doc) {
  try {
    return from_unchecked(doc);
  } catch (const ConfigError& e) {
    if (!e.hint().empty()) throw;
    throw ConfigError(e.what(), "docs/training.md lists every key with its default and allowed values");
  }
}

TrainConfig TrainConfig::from_unchecked(Config& doc) {
  TrainConfig c;
  const auto& src = doc.source();

  auto& m = c.model;
  m.vocab_size = doc.get_int("model.vocab_size", m.vocab_size, 2, 65536);
  m.context = doc.get_int("model.context", m.context, 1, 1 << 16);
  m.layers = doc.get_int("model.layers", m.layers, 1, 1024);
  m.width = doc.get_int("model.width", m.width, 1, 1 << 16);
  m.heads = doc.get_int("model.heads", m.heads, 1, 1024);
  m.mlp_ratio = doc.get_int("model.mlp_ratio", m.mlp_ratio, 1, 64);
  m.init_std = doc.get_double("model.init_std", m.init_std, 1e-6, 1.0);
  if (m.width % m.heads != 0)
    throw ConfigError(fmt::format("{}: 'model.width' = {} is not divisible by 'model.heads' = {}",
                                  src, m.width, m.heads),
                      "choose heads that divide width, e.g. width 128 with 4 heads");

  auto& d = c.data;
  d.paths = doc.get_string_list("data.paths", d.paths);
  if (d.paths.empty())
    throw ConfigError(fmt::format("{}: 'data.paths' is missing or empty", src),
                      "name the training text, e.g. paths = [\"/usr/share/games/fortunes\"]");
  d.exclude = doc.get_string_list("data.exclude", d.exclude);
  d.format = doc.get_choice("data.format", d.format, {"bytes", "uint16"});
  d.val_fraction = doc.get_double("data.val_fraction", d.val_fraction, 0.0, 0.5);
  if (d.format == "bytes" && m.vocab_size != 256)
    throw ConfigError(fmt::format("{}: 'model.vocab_size' = {} but data.format = 'bytes' has 256 symbols",
                                  src, m.vocab_size),
                      "set model.vocab_size = 256 for byte-level text");

  auto& o = c.optim;
  o.lr = doc.get_double("optim.lr", o.lr, 0.0, 10.0);
  o.min_lr = doc.get_double("optim.min_lr", o.min_lr, 0.0, 10.0);
  o.warmup_steps = doc.get_int("optim.warmup_steps", o.warmup_steps, 0, INT64_MAX / 2);
  o.weight_decay = doc.get_double("optim.weight_decay", o.weight_decay, 0.0, 10.0);
  o.beta1 = doc.get_double("optim.beta1", o.beta1, 0.0, 0.999999);
  o.beta2 = doc.get_double("optim.beta2", o.beta2, 0.0, 0.999999999);
  o.eps = doc.get_double("optim.eps", o.eps, 1e-30, 1.0);
  o.grad_clip = doc.get_double("optim.grad_clip", o.grad_clip, 0.0, 1e12);
  if (o.min_lr > o.lr)
    throw ConfigError(fmt::format("{}: 'optim.min_lr' = {} is above 'optim.lr' = {}", src, o.min_lr, o.lr),
                      "min_lr is where the cosine decay ends; keep it at or below lr");

  auto& t = c.train;
  t.steps = doc.get_int("train.steps", t.steps, 1, INT64_MAX / 2);
  t.batch_size = doc.get_int("train.batch_size", t.batch_size, 1, 1 << 20);
  t.grad_accum = doc.get_int("train.grad_accum", t.grad_accum, 1, 1 << 20);
  t.seed = static_cast<uint64_t>(doc.get_int("train.seed", static_cast<int64_t>(t.seed), 0, INT64_MAX));
  t.eval_every = doc.get_int("train.eval_every", t.eval_every, 0, INT64_MAX / 2);
  t.eval_batches = doc.get_int("train.eval_batches", t.eval_batches, 1, 1 << 20);
  t.log_every = doc.get_int("train.log_every", t.log_every, 1, INT64_MAX / 2);
  t.threads = doc.get_int("train.threads", t.threads, 0, 4096);
  t.sample_tokens = doc.get_int("train.sample_tokens", t.sample_tokens, 0, 1 << 20);
  t.sample_prompt = doc.get_string("train.sample_prompt", t.sample_prompt);
  t.sample_temperature = doc.get_double("train.sample_temperature", t.sample_temperature, 1e-3, 100.0);
  t.sample_top_k = doc.get_int("train.sample_top_k", t.sample_top_k, 0, 1 << 20);
  if (t.sample_prompt.empty())
    throw ConfigError(fmt::format("{}: 'train.sample_prompt' is empty", src),
                      "give at least one character (the default is a newline)");

  auto& p = c.parallel;
  p.bucket_bytes = get_bytes(doc, "parallel.bucket_size", p.bucket_bytes);
  p.overlap = doc.get_bool("parallel.overlap", p.overlap);
  p.algo = doc.get_choice("parallel.algo", p.algo, {"auto", "ring", "rhd", "tree", "hier"});
  p.timeout_s = doc.get_double("parallel.timeout_s", p.timeout_s, 0.001, 1e6);
  p.dp = doc.get_int("parallel.dp", p.dp, 0, 1 << 20);
  p.tp = doc.get_int("parallel.tp", p.tp, 1, 1024);
  p.pp = doc.get_int("parallel.pp", p.pp, 1, 1024);
  p.sequence_parallel = doc.get_bool("parallel.sequence_parallel", p.sequence_parallel);
  p.schedule = doc.get_choice("parallel.schedule", p.schedule, {"gpipe", "1f1b", "interleaved"});
  p.microbatches = doc.get_int("parallel.microbatches", p.microbatches, 0, 1 << 20);
  p.chunks = doc.get_int("parallel.chunks", p.chunks, 0, 1024);
  p.zero = doc.get_int("parallel.zero", p.zero, 0, 3);
  p.recompute = doc.get_choice("parallel.recompute", p.recompute, {"none", "selective", "full"});
  validate_mesh_config(c.model, c.train, p);  // train/parallel_mesh.hpp: what must divide what

  auto& f = c.fault;
  f.enabled = doc.get_bool("fault.enabled", f.enabled);
  f.global_batch = doc.get_choice("fault.global_batch", f.global_batch, {"fixed", "per_replica"});
  f.replicas = doc.get_int("fault.replicas", f.replicas, 0, 1 << 20);
  f.heal_chunk_bytes = get_bytes(doc, "fault.heal_chunk", f.heal_chunk_bytes);
  if (f.heal_chunk_bytes == 0)
    throw ConfigError(fmt::format("{}: 'fault.heal_chunk' is 0", src), "use a chunk such as 4M");
  f.heal_timeout_s = doc.get_double("fault.heal_timeout", f.heal_timeout_s, 0.001, 1e7);
  for (auto [key, field] : {std::pair{"fault.collective_timeout", &f.collective_timeout_s},
                            std::pair{"fault.heartbeat_interval", &f.heartbeat_interval_s},
                            std::pair{"fault.heartbeat_death", &f.heartbeat_death_s},
                            std::pair{"fault.quorum_wait", &f.quorum_wait_s},
                            std::pair{"fault.job_timeout", &f.job_timeout_s}})
    if (doc.has(key)) *field = doc.get_double(key, 0, 0.001, 1e9);
    else doc.get_double(key, 0);  // marks the key as known

  c.diloco = DilocoConfig::read(doc);  // train/diloco_config.cpp

  auto& r = c.run;
  r.dir = doc.get_string("run.dir", r.dir);
  r.name = doc.get_string("run.name", r.name);
  r.progress = doc.get_bool("run.progress", r.progress);
  if (r.name.empty() || r.name.find('/') != std::string::npos)
    throw ConfigError(fmt::format("{}: 'run.name' = '{}' is not a plain name", src, r.name),
                      "use letters, digits, '-' or '_' (it becomes part of a directory name)");

  auto& k = c.checkpoint;
  k.dir = doc.get_string("checkpoint.dir", k.dir);
  k.every_steps = doc.get_int("checkpoint.every_steps", k.every_steps, 0, INT64_MAX / 2);
  k.every_minutes = doc.get_double("checkpoint.every_minutes", k.every_minutes, 0.0, 1e9);
  k.keep_last = doc.get_int("checkpoint.keep_last", k.keep_last, 0, 1'000'000);
  k.if_busy = doc.get_choice("checkpoint.if_busy", k.if_busy, {"wait", "skip"});
  k.block_bytes = get_bytes(doc, "checkpoint.block_size", k.block_bytes);
  if (k.block_bytes == 0)
    throw ConfigError(fmt::format("{}: 'checkpoint.block_size' is 0", src), "use a checksum block such as 4M");
  k.commit_timeout_s = doc.get_double("checkpoint.commit_timeout_s", k.commit_timeout_s, 0.001, 1e7);
  k.at_end = doc.get_bool("checkpoint.at_end", k.at_end);
  c.health = read_health_config(doc);  // [health]: train/health_config.hpp
  if (c.fault.enabled && c.parallel.zero > 0)
    throw ConfigError(fmt::format("{}: parallel.zero = {} cannot be combined with fault.enabled yet", src, c.parallel.zero),
                      "healing and elastic membership move whole replicas; use parallel.zero = 0 with [fault]");
  if (c.diloco.enabled && c.parallel.zero > 0)
    throw ConfigError(fmt::format("{}: parallel.zero = {} cannot be combined with diloco.enabled yet", src, c.parallel.zero),
                      "DiLoCo's outer step reads whole parameter replicas; use parallel.zero = 0 with [diloco]");
  if (c.diloco.enabled && c.fault.enabled) {
    // Fault-tolerant DiLoCo (docs/diloco.md): every worker is one replica and
    // the membership may change at each outer round.
    const auto& d = c.diloco;
    if (d.delay != 0)
      throw ConfigError(fmt::format("{}: 'diloco.delay' = {} cannot be combined with fault.enabled: a fragment's "
                                    "all-reduce cannot run behind compute while the membership may change under it",
                                    src, d.delay),
                        "set diloco.delay = 0 (fragments still sync at staggered steps) or fault.enabled = false");
    if (d.workers_per_replica > 1 || d.replicas > 0)
      throw ConfigError(fmt::format("{}: 'diloco.replicas' / 'diloco.workers_per_replica' cannot be set with "
                                    "fault.enabled: each fault-tolerant worker is one replica",
                                    src),
                        "remove diloco.replicas and diloco.workers_per_replica; the coordinator's members are the "
                        "replicas (bounded by the launcher's --min-replicas / --max-replicas)");
  }

  doc.finish();
  return c;
}

std::string TrainConfig::to_toml() const {
  std::ostringstream s;
  s << "# Resolved configuration of this run (defaults included).\n";
  s << "[model]\n"
    << fmt::format("vocab_size = {}\ncontext = {}\nlayers = {}\nwidth = {}\nheads = {}\nmlp_ratio = {}\n",
                   model.vocab_size, model.context, model.layers, model.width, model.heads,
                   model.mlp_ratio)
    << fmt::format("init_std = {}\n\n", model.init_std);
  s << "[data]\n"
    << "paths = " << toml_list(data.paths) << "\n"
    << "exclude = " << toml_list(data.exclude) << "\n"
    << "format = " << toml_string(data.format) << "\n"
    << fmt::format("val_fraction = {}\n\n", data.val_fraction);
  s << "[optim]\n"
    << fmt::format("lr = {}\nmin_lr = {}\nwarmup_steps = {}\nweight_decay = {}\n", optim.lr,
                   optim.min_lr, optim.warmup_steps, optim.weight_decay)
    << fmt::format("beta1 = {}\nbeta2 = {}\neps = {}\ngrad_clip = {}\n\n", optim.beta1, optim.beta2,
                   optim.eps, optim.grad_clip);
  s << "[train]\n"
    << fmt::format("steps = {}\nbatch_size = {}\ngrad_accum = {}\nseed = {}\n", train.steps,
                   train.batch_size, train.grad_accum, train.seed)
    << fmt::format("eval_every = {}\neval_batches = {}\nlog_every = {}\nthreads = {}\n",
                   train.eval_every, train.eval_batches, train.log_every, train.threads)
    << fmt::format("sample_tokens = {}\n", train.sample_tokens)
    << "sample_prompt = " << toml_string(train.sample_prompt) << "\n"
    << fmt::format("sample_temperature = {}\nsample_top_k = {}\n\n", train.sample_temperature,
                   train.sample_top_k);
  s << "[parallel]\n"
    << fmt::format("bucket_size = {}\noverlap = {}\n", parallel.bucket_bytes, parallel.overlap)
    << "algo = " << toml_string(parallel.algo) << "\n"
    << fmt::format("timeout_s = {}\n", parallel.timeout_s)
    << fmt::format("dp = {}\ntp = {}\npp = {}\nsequence_parallel = {}\n", parallel.dp, parallel.tp, parallel.pp,
                   parallel.sequence_parallel)
    << "schedule = " << toml_string(parallel.schedule) << "\n"
    << fmt::format("microbatches = {}\n", parallel.microbatches)
    << fmt::format("chunks = {}\n", parallel.chunks)
    << fmt::format("zero = {}\n", parallel.zero) << "recompute = " << toml_string(parallel.recompute) << "\n\n";
  s << "[fault]\n"
    << fmt::format("enabled = {}\n", fault.enabled)
    << "global_batch = " << toml_string(fault.global_batch) << "\n"
    << fmt::format("replicas = {}\nheal_chunk = {}\nheal_timeout = {}\n", fault.replicas, fault.heal_chunk_bytes,
                   fault.heal_timeout_s);
  for (auto [key, field] : {std::pair{"collective_timeout", &fault.collective_timeout_s},
                            std::pair{"heartbeat_interval", &fault.heartbeat_interval_s},
                            std::pair{"heartbeat_death", &fault.heartbeat_death_s},
                            std::pair{"quorum_wait", &fault.quorum_wait_s},
                            std::pair{"job_timeout", &fault.job_timeout_s}})
    if (*field) s << fmt::format("{} = {}\n", key, **field);
  s << "\n";
  s << diloco.to_toml();
  s << "[run]\n"
    << "dir = " << toml_string(run.dir) << "\n"
    << "name = " << toml_string(run.name) << "\n"
    << fmt::format("progress = {}\n\n", run.progress);
  s << "[checkpoint]\n"
    << "dir = " << toml_string(checkpoint.dir) << "\n"
    << fmt::format("every_steps = {}\nevery_minutes = {}\nkeep_last = {}\n", checkpoint.every_steps,
                   checkpoint.every_minutes, checkpoint.keep_last)
    << "if_busy = " << toml_string(checkpoint.if_busy) << "\n"
    << fmt::format("block_size = {}\ncommit_timeout_s = {}\nat_end = {}\n", checkpoint.block_bytes,
                   checkpoint.commit_timeout_s, checkpoint.at_end);
  s << "\n" << health_config_toml(health);
  return s.str();
}

}  // namespace braid::train
