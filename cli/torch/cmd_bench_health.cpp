// braid bench health: what silent-data-corruption checks cost. The example
// model trains on two data-parallel ranks (threads of this process over the
// in-process transport, one core each) with the health monitor's
// fingerprints off and on, runs interleaved (off, on, off, on, ...) so that
// load from other processes hits both alike; the table shows the median step
// time of each and the overhead. Also the raw xxh3 fingerprint throughput.
#include "train/pch.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/command.hpp"
#include "comm/communicator.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "health/fingerprint.hpp"
#include "net/mesh.hpp"
#include "train/compute_threads.hpp"
#include "train/health_monitor.hpp"
#include "train/token_dataset.hpp"
#include "train/trainer.hpp"

namespace braid::cli {
namespace {

struct BenchHealthArgs {
  std::string config = "examples/default.toml";
  std::vector<std::string> sets;
  int steps = 20;
  int warmup = 3;
  int repeats = 3;
  bool json = false;
};

struct RunResult {
  std::vector<double> step_s;  // rank 0, measured steps
  double fingerprint_s = 0;    // rank 0, hashing, per measured step
  double exchange_s = 0;       // rank 0, the monitor's collectives, per measured step
  uint64_t fingerprint_bytes = 0;  // per step
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

RunResult run_pair(const train::TrainConfig& cfg, const train::TokenDataset& data, bool fingerprints, int warmup,
                   int steps) {
  train::TrainConfig c = cfg;
  c.health.fingerprints = fingerprints;
  c.health.bucket_fingerprints = fingerprints;
  c.health.straggler_every = 0;
  RunResult result;
  auto hub = net::make_inproc_hub(2);
  std::vector<std::exception_ptr> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        comm::CommOptions o;
        o.timeout_s = c.parallel.timeout_s;
        comm::Communicator comm(net::connect_inproc(hub, r), o);
        train::Trainer t(c, data, &comm);
        train::HealthMonitor mon(t, c.health, "");
        for (int i = 0; i < warmup; ++i) t.train_step();
        const auto before = mon.stats();
        for (int i = 0; i < steps; ++i) {
          auto m = t.train_step();
          if (r == 0) result.step_s.push_back(m.step_s);
        }
        if (r == 0) {
          const auto& after = mon.stats();
          result.fingerprint_s = (after.fingerprint_s - before.fingerprint_s) / steps;
          result.exchange_s = (after.exchange_s - before.exchange_s) / steps;
          result.fingerprint_bytes = (after.fingerprint_bytes - before.fingerprint_bytes) / static_cast<uint64_t>(steps);
        }
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return result;
}

double fingerprint_gbps() {
  std::vector<float> buf(static_cast<size_t>(64) << 20 >> 2, 1.5f);  // 64 MiB
  uint64_t sink = health::fingerprint_bytes(buf.data(), buf.size() * 4);  // warm the pages
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    Stopwatch sw;
    sink ^= health::fingerprint_bytes(buf.data(), buf.size() * 4, static_cast<uint64_t>(i));
    best = std::max(best, static_cast<double>(buf.size() * 4) / sw.seconds() * 1e-9);
  }
  if (sink == 42) std::printf(" ");  // keeps the hashes from being optimized away
  return best;
}

int run_bench_health(const BenchHealthArgs& a) {
  if (a.steps < 1 || a.repeats < 1 || a.warmup < 0)
    throw ConfigError("--steps and --repeats must be at least 1, --warmup at least 0", "e.g. --steps 20 --repeats 3");
  Config doc = Config::from_file(a.config);
  for (const auto& s : a.sets) doc.apply_override(s);
  train::TrainConfig cfg = train::TrainConfig::from(doc);
  auto data = train::TokenDataset::load(cfg.data, cfg.model.context, cfg.model.vocab_size);
  train::set_compute_threads(1);  // two ranks, one core each

  std::vector<double> off, on, fp_s, ex_s;
  uint64_t fp_bytes = 0;
  for (int rep = 0; rep < a.repeats; ++rep) {
    for (bool fingerprints : {false, true}) {
      RunResult r = run_pair(cfg, data, fingerprints, a.warmup, a.steps);
      (fingerprints ? on : off).push_back(median(r.step_s));
      if (fingerprints) {
        fp_s.push_back(r.fingerprint_s);
        ex_s.push_back(r.exchange_s);
        fp_bytes = r.fingerprint_bytes;
      }
      if (!a.json)
        std::fprintf(stderr, "  run %d, fingerprints %-3s: median step %.1f ms\n", rep + 1, fingerprints ? "on" : "off",
                     median(r.step_s) * 1e3);
    }
  }
  const double gbps = fingerprint_gbps();
  const double t_off = median(off), t_on = median(on);
  const double overhead = t_off > 0 ? t_on / t_off - 1 : 0;
  const double hash_share = t_off > 0 ? median(fp_s) / t_off : 0;
  if (a.json) {
    nlohmann::ordered_json j;
    j["config"] = a.config;
    j["ranks"] = 2;
    j["steps"] = a.steps;
    j["repeats"] = a.repeats;
    j["step_ms_off"] = t_off * 1e3;
    j["step_ms_on"] = t_on * 1e3;
    j["overhead"] = overhead;
    j["runs_ms_off"] = off;
    j["runs_ms_on"] = on;
    for (auto& x : j["runs_ms_off"]) x = x.get<double>() * 1e3;
    for (auto& x : j["runs_ms_on"]) x = x.get<double>() * 1e3;
    j["fingerprint_ms_per_step"] = median(fp_s) * 1e3;
    j["exchange_ms_per_step"] = median(ex_s) * 1e3;
    j["fingerprint_bytes_per_step"] = fp_bytes;
    j["hash_share_of_step"] = hash_share;
    j["fingerprint_gb_per_s"] = gbps;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("braid bench health: %s, 2 ranks (threads, in-process transport, 1 core each), %d measured steps x %d "
              "runs each, interleaved\n",
              a.config.c_str(), a.steps, a.repeats);
  std::printf("%-28s %12s\n", "", "median step");
  std::printf("%-28s %9.1f ms\n", "fingerprints off", t_off * 1e3);
  std::printf("%-28s %9.1f ms\n", "fingerprints on (default)", t_on * 1e3);
  std::vector<double> off_ms, on_ms;
  for (double x : off) off_ms.push_back(x * 1e3);
  for (double x : on) on_ms.push_back(x * 1e3);
  std::printf("overhead: %+.2f%% of the step (runs off: %s ms; on: %s ms)\n", overhead * 100,
              fmt::format("{:.1f}", fmt::join(off_ms, " ")).c_str(), fmt::format("{:.1f}", fmt::join(on_ms, " ")).c_str());
  std::printf("hashing: %.2f ms per step for %.1f MB (%.2f%% of the step), fingerprint exchange %.2f ms per step\n",
              median(fp_s) * 1e3, static_cast<double>(fp_bytes) * 1e-6, hash_share * 100, median(ex_s) * 1e3);
  std::printf("xxh3 fingerprint throughput: %.1f GB/s (one core, 64 MiB buffer)\n", gbps);
  std::printf("target: <= 2%% overhead with the default setting: %s\n",
              overhead <= 0.02 ? "met" : "NOT met (see the hashing share: the rest is noise or exchange)");
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchHealthArgs>();
  auto* cmd = bench.add_subcommand("health", "Step time with SDC fingerprints on and off, and fingerprint GB/s");
  cmd->add_option("--config", a->config, "Job whose model and batch are measured")->capture_default_str();
  cmd->add_option("--set", a->sets, "Override a config key (repeatable)")->take_all();
  cmd->add_option("--steps", a->steps, "Measured steps per run")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Unmeasured steps first")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Runs of each kind, interleaved")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON object");
  return [a] { return run_bench_health(*a); };
}

}  // namespace

BRAID_BENCH("health", 40, setup);

}  // namespace braid::cli
