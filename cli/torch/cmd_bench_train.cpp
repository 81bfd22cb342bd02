// braid bench train: tokens/s and MFU of the example model, in the same run
// as the same model and batch written in PyTorch's Python API
// (bench/reference_train.py on Debian's python3-torch), and the share of the
// all-reduce time that two workers on TCP loopback hide behind backward.
//
// Every measurement is repeated and the runs are interleaved (braid, Python,
// braid, ...), so that load from other processes on a shared machine hits
// both sides alike; the table shows medians and the spread.
#include "train/pch.hpp"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"
#include "train/cpu_kernels.hpp"
#include "train/compute_threads.hpp"
#include "train/gpt_model.hpp"
#include "train/token_dataset.hpp"
#include "train/training_job.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;

struct BenchTrainArgs {
  std::string config = "examples/default.toml";
  std::vector<std::string> sets;
  int steps = 20;
  int warmup = 3;
  int repeats = 3;
  std::string python = "/usr/bin/python3";
  std::string reference;
  bool no_python = false;
  bool no_workers = false;
  bool json = false;
};

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CommandOutput {
  int code = -1;
  std::string out;
};

CommandOutput run_command(const std::string& cmd) {
  CommandOutput r;
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw Error("cannot run: " + cmd);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the braid executable (/proc/self/exe)");
  return p.string();
}

// bench/reference_train.py next to the working directory or the source tree
// the executable was built from (build/braid -> bench/ one level up).
std::string find_reference(const std::string& given) {
  if (!given.empty()) {
    if (!fs::exists(given)) throw ConfigError("reference script '" + given + "' does not exist");
    return given;
  }
  std::vector<fs::path> candidates = {"bench/reference_train.py",
                                      fs::path(self_exe()).parent_path().parent_path() / "bench/reference_train.py"};
  for (const auto& c : candidates)
    if (fs::exists(c)) return c.string();
  throw ConfigError("cannot find bench/reference_train.py",
                    "run from the repository root or pass --reference PATH (or --no-python)");
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

double load_average() {
  std::ifstream f("/proc/loadavg");
  double l = 0;
  f >> l;
  return l;
}

struct TwoWorkerRun {
  double tokens_per_s = 0;
  double step_s = 0;
  double comm_s = 0;     // per step, mean
  double exposed_s = 0;  // per step, mean
  double hidden = 0;     // 1 - exposed / comm
};

TwoWorkerRun run_two_workers(const std::string& config_path, const std::vector<std::string>& sets, int total_steps,
                             int warmup, bool overlap, const std::string& run_dir) {
  std::string exe = self_exe();
  std::string cmd = "BRAID_TRANSPORT=tcp " + shell_quote(exe) + " launch --nproc 2 -- " + shell_quote(exe) +
                    " train " + shell_quote(config_path);
  for (const auto& s : sets) cmd += " --set " + shell_quote(s);
  cmd += fmt::format(" --set train.steps={} --set train.eval_every=0 --set train.sample_tokens=0"
                     " --set data.val_fraction=0 --set run.progress=false --set parallel.overlap={}"
                     " --set run.dir={} 2>&1",
                     total_steps, overlap ? "true" : "false", shell_quote(run_dir));
  auto r = run_command(cmd);
  if (r.code != 0) throw Error("two-worker run failed:\n" + r.out);
  std::ifstream metrics(run_dir + "/metrics.jsonl");
  std::string line;
  double time = 0, tokens = 0, comm = 0, exposed = 0;
  int n = 0;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["step"].get<int>() <= warmup) continue;
    double step_s = j["step_s"].get<double>();
    time += step_s;
    tokens += j["tokens_per_s"].get<double>() * step_s;
    comm += j["comm_s"].get<double>();
    exposed += j["comm_exposed_s"].get<double>();
    ++n;
  }
  if (n == 0) throw Error("two-worker run wrote no measured steps to " + run_dir);
  TwoWorkerRun out;
  out.tokens_per_s = tokens / time;
  out.step_s = time / n;
  out.comm_s = comm / n;
  out.exposed_s = exposed / n;
  out.hidden = comm > 0 ? std::max(0.0, 1.0 - exposed / comm) : 0.0;
  return out;
}

int run_bench_train(const BenchTrainArgs& a) {
  if (a.steps < 1 || a.warmup < 0 || a.repeats < 1)
    throw ConfigError("--steps and --repeats must be at least 1, --warmup at least 0");
  Config doc = Config::from_file(a.config);
  for (const auto& s : a.sets) doc.apply_override(s);
  train::TrainConfig cfg = train::TrainConfig::from(doc);
  const int total = a.warmup + a.steps;
  cfg.train.steps = total;
  cfg.train.eval_every = 0;
  cfg.train.sample_tokens = 0;
  cfg.data.val_fraction = 0;
  cfg.run.progress = false;

  const int cores = available_cpus();
  const int threads = train::compute_threads_for(static_cast<int>(cfg.train.threads), 1);
  const train::ComputeThreads compute = train::set_compute_threads(threads);
  auto data = train::TokenDataset::load(cfg.data, cfg.model.context, cfg.model.vocab_size);
  const auto& m = cfg.model;
  double flops_per_token = 0;
  int64_t parameters = 0;
  {
    train::GptModel probe(m, 1);
    flops_per_token = probe.flops_per_token();
    parameters = probe.num_parameters();
  }
  char tmpl[] = "/tmp/braid-bench-train-XXXXXX";
  if (!mkdtemp(tmpl)) throw IoError("cannot create a temporary directory under /tmp");
  const std::string tmp = tmpl;

  std::string reference, data_file;
  if (!a.no_python) {
    reference = find_reference(a.reference);
    if (!fs::exists(a.python))
      throw ConfigError("'" + a.python + "' does not exist", "install python3-torch (scripts/setup) or pass --no-python");
    // The reference reads the same training tokens from one flat file.
    data_file = tmp + "/train_tokens.bin";
    std::ofstream f(data_file, std::ios::binary);
    auto train = data.train();
    if (cfg.data.format == "bytes") {
      std::string bytes(train.begin(), train.end());
      f << bytes;
    } else {
      f.write(reinterpret_cast<const char*>(train.data()), static_cast<std::streamsize>(train.size() * 2));
    }
  }

  auto say = [&](const std::string& s) {
    if (!a.json) std::fprintf(stderr, "%s\n", s.c_str());
  };
  say(fmt::format("bench train: {} layers, width {}, {} heads, context {}, batch {}; {} for braid and for "
                  "PyTorch; {} warm-up + {} measured steps, {} repeats, interleaved",
                  m.layers, m.width, m.heads, m.context, cfg.train.batch_size, compute.describe(), a.warmup, a.steps,
                  a.repeats));

  std::vector<double> braid_tps, python_tps;
  train::MatmulPeak peak;  // the best calibration of all runs: the least disturbed one
  train::JobOptions quiet;
  quiet.progress = nullptr;
  quiet.write_run_dir = false;
  quiet.print_sample = false;
  quiet.measure_from_step = a.warmup;
  auto saved_level = log::level();
  for (int rep = 0; rep < a.repeats; ++rep) {
    log::set_level(log::Level::Warn);
    auto s = train::run_training_job(cfg, nullptr, quiet);
    log::set_level(saved_level);
    braid_tps.push_back(s.tokens_per_s);
    if (s.peak.flops_per_s > peak.flops_per_s) peak = s.peak;
    say(fmt::format("  braid, 1 worker      run {}: {:8.0f} tokens/s", rep + 1, s.tokens_per_s));
    if (!a.no_python) {
      std::string cmd = fmt::format(
          "OPENBLAS_NUM_THREADS={} {} {} --data {} {} --vocab {} --context {} --layers {} --width {} --heads {} --mlp-ratio {} "
          "--init-std {} --batch {} --accum {} --lr {} --min-lr {} --warmup-steps {} --weight-decay {} "
          "--beta1 {} --beta2 {} --eps {} --grad-clip {} --steps {} --warmup {} --threads {} --seed {} 2>&1",
          compute.blas, shell_quote(a.python), shell_quote(reference), shell_quote(data_file),
          cfg.data.format == "uint16" ? "--uint16" : "", m.vocab_size, m.context, m.layers, m.width, m.heads,
          m.mlp_ratio, m.init_std, cfg.train.batch_size, cfg.train.grad_accum, cfg.optim.lr, cfg.optim.min_lr,
          cfg.optim.warmup_steps, cfg.optim.weight_decay, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps,
          cfg.optim.grad_clip, a.steps, a.warmup, compute.intra_op, cfg.train.seed);
      auto r = run_command(cmd);
      auto last_nl = r.out.find_last_of('{');
      if (r.code != 0 || last_nl == std::string::npos)
        throw Error("the Python reference failed (" + cmd + "):\n" + r.out);
      auto j = nlohmann::json::parse(r.out.substr(last_nl));
      python_tps.push_back(j["tokens_per_s"].get<double>());
      say(fmt::format("  PyTorch Python ref.  run {}: {:8.0f} tokens/s", rep + 1, python_tps.back()));
    }
  }

  std::vector<TwoWorkerRun> overlapped, serial;
  if (!a.no_workers) {
    for (int rep = 0; rep < a.repeats; ++rep) {
      overlapped.push_back(run_two_workers(a.config, a.sets, total, a.warmup, true, tmp + fmt::format("/dp{}", rep)));
      say(fmt::format("  braid, 2 workers TCP run {}: {:8.0f} tokens/s, all-reduce {:.1f} ms/step, exposed {:.1f} ms "
                      "({:.0f}% hidden)",
                      rep + 1, overlapped.back().tokens_per_s, overlapped.back().comm_s * 1e3,
                      overlapped.back().exposed_s * 1e3, overlapped.back().hidden * 100));
      serial.push_back(run_two_workers(a.config, a.sets, total, a.warmup, false, tmp + fmt::format("/dps{}", rep)));
      say(fmt::format("  same, overlap off    run {}: {:8.0f} tokens/s, all-reduce {:.1f} ms/step, exposed {:.1f} ms",
                      rep + 1, serial.back().tokens_per_s, serial.back().comm_s * 1e3,
                      serial.back().exposed_s * 1e3));
    }
  }
  fs::remove_all(tmp);

  auto pick = [](const std::vector<TwoWorkerRun>& v, auto field) {
    std::vector<double> x;
    for (const auto& r : v) x.push_back(r.*field);
    return median(x);
  };
  const double braid_med = median(braid_tps), python_med = median(python_tps);
  auto mfu = [&](double tps) { return tps * flops_per_token / std::max(peak.flops_per_s, 1.0); };
  // Each braid run is paired with the Python run right after it (same load,
  // within seconds); the median of the paired ratios is the speed-up.
  std::vector<double> ratios;
  for (size_t i = 0; i < python_tps.size() && i < braid_tps.size(); ++i)
    if (python_tps[i] > 0) ratios.push_back(braid_tps[i] / python_tps[i]);
  const double speedup = median(ratios);
  const double hidden = pick(overlapped, &TwoWorkerRun::hidden);

  nlohmann::ordered_json j;
  j["machine"] = {{"cpu", cpu_model()}, {"cores", cores}, {"load_average_at_end", load_average()}};
  j["model"] = {{"layers", m.layers}, {"width", m.width}, {"heads", m.heads}, {"context", m.context},
                {"vocab", m.vocab_size}, {"parameters", parameters}, {"flops_per_token", flops_per_token}};
  j["batch_per_worker"] = cfg.train.batch_size;
  j["threads"] = {{"cores", threads}, {"blas", compute.blas}, {"intra_op", compute.intra_op}};
  j["steps"] = {{"warmup", a.warmup}, {"measured", a.steps}, {"repeats", a.repeats}};
  j["cpu_kernels"] = train::cpu_kernel_isa();
  j["peak"] = {{"flops_per_s", peak.flops_per_s}, {"description", peak.describe()}};
  j["braid_1_worker"] = {{"tokens_per_s", braid_tps}, {"median", braid_med}, {"mfu_median", mfu(braid_med)}};
  if (!a.no_python)
    j["python_reference"] = {{"tokens_per_s", python_tps},
                             {"median", python_med},
                             {"mfu_median", mfu(python_med)},
                             {"paired_speedups", ratios},
                             {"speedup_of_braid", speedup}};
  if (!a.no_workers) {
    auto arr = [&](const std::vector<TwoWorkerRun>& v) {
      nlohmann::ordered_json out = nlohmann::json::array();
      for (const auto& r : v)
        out.push_back({{"tokens_per_s", r.tokens_per_s}, {"step_s", r.step_s}, {"comm_s", r.comm_s},
                       {"exposed_s", r.exposed_s}, {"hidden_fraction", r.hidden}});
      return out;
    };
    j["braid_2_workers_tcp"] = {{"runs", arr(overlapped)},
                                {"tokens_per_s_median", pick(overlapped, &TwoWorkerRun::tokens_per_s)},
                                {"hidden_fraction_median", hidden}};
    j["braid_2_workers_tcp_no_overlap"] = {{"runs", arr(serial)},
                                           {"tokens_per_s_median", pick(serial, &TwoWorkerRun::tokens_per_s)}};
  }
  j["targets"] = nlohmann::ordered_json::object();
  if (!a.no_python) j["targets"]["speedup_vs_python"] = {{"value", speedup}, {"target", 1.1}, {"met", speedup >= 1.1}};
  if (!a.no_workers)
    j["targets"]["allreduce_hidden_fraction"] = {{"value", hidden}, {"target", 0.7}, {"met", hidden >= 0.7}};

  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("\nbraid bench train — %s, %d cores (load average %.1f at the end)\n", cpu_model().c_str(), cores,
              load_average());
  std::printf("model: %lld layers, width %lld, %lld heads, context %lld: %.2fM parameters, %.1f MFLOP/token (PaLM)\n",
              static_cast<long long>(m.layers), static_cast<long long>(m.width), static_cast<long long>(m.heads),
              static_cast<long long>(m.context), static_cast<double>(parameters) * 1e-6, flops_per_token * 1e-6);
  std::printf("MFU is against the measured matmul peak: %s\n\n", peak.describe().c_str());
  std::printf("%-34s %12s %8s   %s\n", "", "tokens/s", "MFU", "runs");
  auto runs_ratio = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += fmt::format("{}{:.2f}", s.empty() ? "" : ", ", x);
    return s;
  };
  auto runs = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += fmt::format("{}{:.0f}", s.empty() ? "" : ", ", x);
    return s;
  };
  std::printf("threads, both sides: %s\n\n", compute.describe().c_str());
  std::printf("%-34s %12.0f %7.1f%%   %s\n", "braid, 1 worker", braid_med,
              mfu(braid_med) * 100, runs(braid_tps).c_str());
  if (!a.no_python)
    std::printf("%-34s %12.0f %7.1f%%   %s\n", "PyTorch Python API, same model", python_med,
                mfu(python_med) * 100, runs(python_tps).c_str());
  if (!a.no_workers) {
    std::vector<double> o, s;
    for (auto& r : overlapped) o.push_back(r.tokens_per_s);
    for (auto& r : serial) s.push_back(r.tokens_per_s);
    std::printf("%-34s %12.0f %8s   %s\n", "braid, 2 workers, TCP, overlap", median(o), "", runs(o).c_str());
    std::printf("%-34s %12.0f %8s   %s\n", "braid, 2 workers, TCP, no overlap", median(s), "", runs(s).c_str());
    std::printf("\nall-reduce per step (2 workers, overlap): %.1f ms in flight, %.1f ms exposed -> %.0f%% hidden "
                "behind backward\n",
                pick(overlapped, &TwoWorkerRun::comm_s) * 1e3, pick(overlapped, &TwoWorkerRun::exposed_s) * 1e3,
                hidden * 100);
    std::printf("without overlap: %.1f ms in flight, all of it exposed. (Overlapped all-reduces stay in flight longer:\n"
                "they share the cores with backward, so the wall-clock gain is smaller than the hidden share.)\n",
                pick(serial, &TwoWorkerRun::comm_s) * 1e3);
  }
  std::printf("\n");
  if (!a.no_python)
    std::printf("target: 1 worker >= 1.1x the Python reference: %.2fx (median of the paired runs' ratios %s)  %s\n",
                speedup, runs_ratio(ratios).c_str(), speedup >= 1.1 ? "met" : "NOT met");
  if (!a.no_workers)
    std::printf("target: >= 70%% of all-reduce time hidden (2 workers, TCP): %.0f%%  %s\n", hidden * 100,
                hidden >= 0.7 ? "met" : "NOT met");
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchTrainArgs>();
  auto* cmd = bench.add_subcommand("train", "Training tokens/s and MFU vs PyTorch (Python), and DP overlap");
  cmd->add_option("--config", a->config, "Job whose model and batch are measured")->capture_default_str();
  cmd->add_option("--set", a->sets, "Override a config key (repeatable)")->take_all();
  cmd->add_option("--steps", a->steps, "Measured steps per run")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Unmeasured steps first")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Runs of each kind, interleaved")->capture_default_str();
  cmd->add_option("--python", a->python, "Interpreter with torch (Debian's python3-torch)")->capture_default_str();
  cmd->add_option("--reference", a->reference, "Reference script (default bench/reference_train.py)");
  cmd->add_flag("--no-python", a->no_python, "Skip the PyTorch reference");
  cmd->add_flag("--no-workers", a->no_workers, "Skip the two-worker runs");
  cmd->add_flag("--json", a->json, "Print one JSON object");
  return [a] { return run_bench_train(*a); };
}

}  // namespace

BRAID_BENCH("train", 20, setup);

}  // namespace braid::cli
