// braid bench health: what silent-data-corruption checks cost. The example
// model trains on two data-parallel ranks (threads of this process over the
// in-process transport, one core each) with the health monitor's
// fingerprints off and on in alternate steps of the same job (off-on, on-off,
// ...), so that load from other processes, caches and the learning-rate
// schedule hit both alike; the overhead is the median relative difference of
// neighbouring steps, and the monitor's own timers (hashing, exchange, state
// copy) say what it is made of. Also the raw xxh3 fingerprint throughput.
#include "train/pch.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
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
  int steps = 50;  // pairs
  int warmup = 3;
  int repeats = 4;
  bool json = false;
};

struct RunResult {
  std::vector<double> off_s, on_s;  // rank 0's step times, in pairs (off_s[k] and on_s[k] are neighbours)
  double fingerprint_s = 0;         // rank 0, hashing, per checked step
  double exchange_s = 0;            // rank 0, the monitor's collectives, per checked step
  double snapshot_s = 0;            // rank 0, the copy before the update (2 replicas), per checked step
  uint64_t fingerprint_bytes = 0;   // per checked step
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// One job of two ranks whose steps alternate between fingerprints off and on
// in pairs (off-on, on-off, off-on, ...: neither kind always goes first), so
// that both kinds see the same load, caches and learning-rate schedule.
RunResult run_interleaved(const train::TrainConfig& cfg, const train::TokenDataset& data, int warmup, int pairs) {
  train::TrainConfig c = cfg;
  c.health.fingerprints = true;
  c.health.bucket_fingerprints = true;
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
        train::HealthStats on_stats;
        for (int k = 0; k < pairs; ++k)
          for (int j = 0; j < 2; ++j) {
            const bool on = (j == 0) == (k % 2 == 1);
            mon.set_fingerprints(on);
            const train::HealthStats before = mon.stats();
            auto m = t.train_step();
            if (r != 0) continue;
            (on ? result.on_s : result.off_s).push_back(m.step_s);
            if (on) {
              const auto& after = mon.stats();
              on_stats.fingerprint_s += after.fingerprint_s - before.fingerprint_s;
              on_stats.exchange_s += after.exchange_s - before.exchange_s;
              on_stats.snapshot_s += after.snapshot_s - before.snapshot_s;
              on_stats.fingerprint_bytes += after.fingerprint_bytes - before.fingerprint_bytes;
            }
          }
        if (r == 0 && pairs > 0) {
          result.fingerprint_s = on_stats.fingerprint_s / pairs;
          result.exchange_s = on_stats.exchange_s / pairs;
          result.snapshot_s = on_stats.snapshot_s / pairs;
          result.fingerprint_bytes = on_stats.fingerprint_bytes / static_cast<uint64_t>(pairs);
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

  std::vector<double> off, on, paired, fp_s, ex_s, snap_s;
  uint64_t fp_bytes = 0;
  for (int rep = 0; rep < a.repeats; ++rep) {
    RunResult r = run_interleaved(cfg, data, a.warmup, a.steps);
    for (size_t k = 0; k < r.on_s.size() && k < r.off_s.size(); ++k) paired.push_back(r.on_s[k] / r.off_s[k] - 1);
    off.push_back(median(r.off_s));
    on.push_back(median(r.on_s));
    fp_s.push_back(r.fingerprint_s);
    ex_s.push_back(r.exchange_s);
    snap_s.push_back(r.snapshot_s);
    fp_bytes = r.fingerprint_bytes;
    if (!a.json)
      std::fprintf(stderr, "  run %d: median step %.1f ms off, %.1f ms on\n", rep + 1, median(r.off_s) * 1e3,
                   median(r.on_s) * 1e3);
  }
  const double gbps = fingerprint_gbps();
  const double t_off = median(off), t_on = median(on);
  // The overhead: the median of the relative differences of neighbouring
  // steps (robust to load that comes and goes); the monitor's own time spent
  // hashing, exchanging and copying, over the step, is what it is made of.
  const double overhead = median(paired);
  // A distribution-free 95% confidence interval of that median: the order
  // statistics n/2 -+ 0.98 sqrt(n) of the sorted differences.
  std::vector<double> sorted = paired;
  std::sort(sorted.begin(), sorted.end());
  const double half = 0.98 * std::sqrt(static_cast<double>(sorted.size()));
  const auto at = [&](double i) {
    return sorted.empty() ? 0.0 : sorted[static_cast<size_t>(std::clamp(i, 0.0, static_cast<double>(sorted.size() - 1)))];
  };
  const double ci_low = at(std::floor(static_cast<double>(sorted.size()) / 2 - half));
  const double ci_high = at(std::ceil(static_cast<double>(sorted.size()) / 2 + half));
  const double own_s = median(fp_s) + median(ex_s) + median(snap_s);
  const double own_share = t_off > 0 ? own_s / t_off : 0;
  const double hash_share = t_off > 0 ? median(fp_s) / t_off : 0;
  if (a.json) {
    nlohmann::ordered_json j;
    j["config"] = a.config;
    j["ranks"] = 2;
    j["pairs"] = a.steps;
    j["repeats"] = a.repeats;
    j["step_ms_off"] = t_off * 1e3;
    j["step_ms_on"] = t_on * 1e3;
    j["overhead"] = overhead;
    j["overhead_ci95"] = {ci_low, ci_high};
    j["pairs_measured"] = paired.size();
    j["overhead_of_medians"] = t_off > 0 ? t_on / t_off - 1 : 0;
    j["runs_ms_off"] = off;
    j["runs_ms_on"] = on;
    for (auto& x : j["runs_ms_off"]) x = x.get<double>() * 1e3;
    for (auto& x : j["runs_ms_on"]) x = x.get<double>() * 1e3;
    j["fingerprint_ms_per_step"] = median(fp_s) * 1e3;
    j["exchange_ms_per_step"] = median(ex_s) * 1e3;
    j["snapshot_ms_per_step"] = median(snap_s) * 1e3;
    j["monitor_share_of_step"] = own_share;
    j["fingerprint_bytes_per_step"] = fp_bytes;
    j["hash_share_of_step"] = hash_share;
    j["fingerprint_gb_per_s"] = gbps;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("braid bench health: %s, 2 ranks (threads, in-process transport, 1 core each), %d pairs of steps "
              "(fingerprints off / on, alternating) x %d runs\n",
              a.config.c_str(), a.steps, a.repeats);
  std::printf("%-28s %12s\n", "", "median step");
  std::printf("%-28s %9.1f ms\n", "fingerprints off", t_off * 1e3);
  std::printf("%-28s %9.1f ms\n", "fingerprints on (default)", t_on * 1e3);
  std::vector<double> off_ms, on_ms;
  for (double x : off) off_ms.push_back(x * 1e3);
  for (double x : on) on_ms.push_back(x * 1e3);
  std::printf("overhead: %+.2f%% of the step (median over %zu neighbouring off/on pairs, 95%% CI %+.2f%% .. %+.2f%%; "
              "run medians off: %s ms, on: %s ms)\n",
              overhead * 100, paired.size(), ci_low * 100, ci_high * 100,
              fmt::format("{:.1f}", fmt::join(off_ms, " ")).c_str(),
              fmt::format("{:.1f}", fmt::join(on_ms, " ")).c_str());
  std::printf("the monitor's own time per checked step: hashing %.2f ms (%.1f MB), exchange %.2f ms, state copy "
              "before the update %.2f ms: %.2f%% of the step\n",
              median(fp_s) * 1e3, static_cast<double>(fp_bytes) * 1e-6, median(ex_s) * 1e3, median(snap_s) * 1e3,
              own_share * 100);
  std::printf("xxh3 fingerprint throughput: %.1f GB/s (one core, 64 MiB buffer)\n", gbps);
  std::printf("target: <= 2%% overhead with the default setting: %s\n", overhead <= 0.02 ? "met" : "NOT met");
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchHealthArgs>();
  auto* cmd = bench.add_subcommand("health", "Step time with SDC fingerprints on and off, and fingerprint GB/s");
  cmd->add_option("--config", a->config, "Job whose model and batch are measured")->capture_default_str();
  cmd->add_option("--set", a->sets, "Override a config key (repeatable)")->take_all();
  cmd->add_option("--steps", a->steps, "Measured pairs of steps (one off, one on) per run")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Unmeasured steps first")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Runs (fresh jobs), each with --steps pairs")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON object");
  return [a] { return run_bench_health(*a); };
}

}  // namespace

BRAID_BENCH("health", 40, setup);

}  // namespace braid::cli
