// braid bench diloco: data parallelism against DiLoCo (H in {10, 50, 100})
// and streaming DiLoCo, each with f32, bf16 and int8 pseudo-gradients, over
// emulated sites: every worker is its own site, and every TCP pair between
// workers is a slow link shaped by braid's fault injection (BRAID_FAULTS:
// `latency` per message, `rate` token bucket per pair). All configurations
// train on equal tokens (same steps, batch and worker count).
//
// Reported per configuration: final validation loss, bytes sent across sites
// (rank 0's bytes on the slow link times the number of workers: a ring
// all-reduce sends equal shares from every rank), wall time, and compute
// utilization = time computing / time in the training loop (exposed
// communication and outer-step waits count as not computing). A self-contained
// HTML page draws validation loss against tokens and against bytes.
#include "train/pch.hpp"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.hpp"
#include "cli/diloco_page.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/train_config.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;

struct BenchDilocoArgs {
  std::string config = "examples/default.toml";
  std::vector<std::string> sets;
  bool quick = false;
  bool json = false;
  int workers = 4;
  int steps = 0;  // 0: 600 (quick: 200)
  std::string latency = "50ms";
  std::string rate = "100mbit";
  std::string only;  // substring filter on configuration names
  bool error_feedback = false;
  std::string out;
};

struct Variant {
  std::string name;
  std::string mode;  // dp | diloco | streaming
  int64_t inner_steps = 0;
  std::string codec = "f32";
  int64_t fragments = 1;
  int64_t delay = 0;
};

using CurvePoint = DilocoCurvePoint;  // cli/diloco_page.hpp

struct Result {
  Variant v;
  double final_val_loss = NAN;
  double bytes_wan = 0;
  double wall_s = 0;
  double loop_s = 0;
  double compute_s = 0;
  double utilization = 0;
  std::vector<CurvePoint> curve;
};

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the braid executable (/proc/self/exe)");
  return p.string();
}

int run_shell(const std::string& cmd, std::string& out) {
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw Error("cannot run: " + cmd);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<Variant> variants(bool quick) {
  std::vector<Variant> v;
  v.push_back({"dp", "dp", 0, "f32", 1, 0});
  for (int64_t H : {10, 50, 100})
    for (const char* c : {"f32", "bf16", "int8"})
      v.push_back({fmt::format("diloco-H{}-{}", H, c), "diloco", H, c, 1, 0});
  // Streaming: 4 fragments at staggered steps, each all-reduce may take
  // `delay` steps of compute to hide behind.
  const int64_t H = quick ? 50 : 100;
  for (const char* c : {"f32", "bf16", "int8"})
    v.push_back({fmt::format("streaming-H{}-F4-d5-{}", H, c), "streaming", H, c, 4, 5});
  return v;
}

Result run_variant(const BenchDilocoArgs& a, const Variant& v, const train::TrainConfig& cfg, int64_t steps,
                   const std::string& dir, const std::string& faults) {
  const std::string exe = self_exe();
  std::string cmd = "BRAID_TRANSPORT=tcp BRAID_FAULTS=" + shell_quote(faults) + " " + shell_quote(exe) +
                    fmt::format(" launch --nproc {} -- ", a.workers) + shell_quote(exe) + " train " +
                    shell_quote(a.config);
  std::vector<std::string> sets = a.sets;
  if (a.quick) {
    // CI size: a small model, one gradient bucket.
    for (const char* s : {"model.layers=2", "model.width=64", "model.context=64", "train.batch_size=8",
                          "parallel.bucket_size=8M", "optim.warmup_steps=20"})
      sets.insert(sets.begin(), s);
  }
  const int64_t eval_every = std::max<int64_t>(1, steps / 10);
  sets.push_back(fmt::format("train.steps={}", steps));
  sets.push_back(fmt::format("train.eval_every={}", eval_every));
  sets.push_back("train.sample_tokens=0");
  sets.push_back("run.progress=false");
  sets.push_back("run.dir=" + dir);
  if (v.mode != "dp") {
    sets.push_back("diloco.enabled=true");
    sets.push_back(fmt::format("diloco.inner_steps={}", v.inner_steps));
    sets.push_back("diloco.codec=\"" + v.codec + "\"");
    sets.push_back(fmt::format("diloco.fragments={}", v.fragments));
    sets.push_back(fmt::format("diloco.delay={}", v.delay));
    sets.push_back(fmt::format("diloco.error_feedback={}", a.error_feedback));
  }
  for (const auto& s : sets) cmd += " --set " + shell_quote(s);
  cmd += " 2>&1";
  std::string out;
  Stopwatch wall;
  const int code = run_shell(cmd, out);
  if (code != 0) throw Error(fmt::format("configuration {} failed (exit {}):\n{}", v.name, code, out));
  Result r;
  r.v = v;
  r.wall_s = wall.seconds();

  std::ifstream sf(dir + "/summary.json");
  if (!sf) throw Error(fmt::format("configuration {} wrote no {}/summary.json:\n{}", v.name, dir, out));
  auto summary = nlohmann::json::parse(sf);
  double outer_s = 0;
  if (summary.contains("diloco"))
    outer_s = summary["diloco"]["outer_wait_s"].get<double>() + summary["diloco"]["outer_apply_s"].get<double>();
  if (summary.contains("final_val_loss")) r.final_val_loss = summary["final_val_loss"].get<double>();

  // Tokens of the whole job per step (every worker's batch).
  Config doc = Config::from_file(a.config);
  for (const auto& s : sets) doc.apply_override(s);
  const auto run_cfg = train::TrainConfig::from(doc);
  const double tokens_per_step = static_cast<double>(run_cfg.train.batch_size * run_cfg.train.grad_accum *
                                                     run_cfg.model.context * a.workers);
  (void)cfg;
  std::ifstream mf(dir + "/metrics.jsonl");
  std::string line;
  double bytes_rank0 = 0, step_time = 0, exposed = 0;
  while (std::getline(mf, line)) {
    auto j = nlohmann::json::parse(line);
    const int64_t step = j["step"].get<int64_t>();
    step_time += j["step_s"].get<double>();
    exposed += j["comm_exposed_s"].get<double>();
    if (j.contains("diloco_bytes_wan")) bytes_rank0 = j["diloco_bytes_wan"].get<double>();
    else bytes_rank0 += j["bytes_sent"].get<double>();
    if (j.contains("val_loss") && !j["val_loss"].is_null())
      r.curve.push_back({step, tokens_per_step * static_cast<double>(step), bytes_rank0 * a.workers,
                         j["val_loss"].get<double>()});
  }
  r.bytes_wan = bytes_rank0 * a.workers;
  r.loop_s = step_time + outer_s;
  r.compute_s = step_time - exposed;
  r.utilization = r.loop_s > 0 ? r.compute_s / r.loop_s : 0;
  return r;
}

// --- the HTML page: two SVG plots, one polyline per configuration ---

DilocoResults page_data(const std::vector<Result>& rs, const std::string& setup) {
  DilocoResults d;
  d.setup = setup;
  for (const auto& r : rs) {
    DilocoRow row;
    row.name = r.v.name;
    row.final_val_loss = r.final_val_loss;
    row.bytes_wan = r.bytes_wan;
    row.wall_s = r.wall_s;
    row.utilization = r.utilization;
    row.curve = r.curve;
    d.rows.push_back(std::move(row));
  }
  return d;
}

int run_bench_diloco(const BenchDilocoArgs& a) {
  if (a.workers < 2) throw ConfigError("--workers must be at least 2", "DiLoCo needs replicas to sync");
  const auto spec = net::FaultSpec::parse(fmt::format("latency={},rate={}", a.latency, a.rate));  // checks the values
  Config doc = Config::from_file(a.config);
  for (const auto& s : a.sets) doc.apply_override(s);
  const auto cfg = train::TrainConfig::from(doc);
  const int64_t steps = a.steps > 0 ? a.steps : (a.quick ? 200 : 600);
  std::string out = a.out;
  if (out.empty()) {
    char stamp[32];
    std::time_t t = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::gmtime(&t));
    out = std::string("runs/bench-diloco-") + stamp;
  }
  fs::create_directories(out);
  std::vector<Result> results;
  for (const auto& v : variants(a.quick)) {
    if (!a.only.empty() && v.name != "dp") {
      bool wanted = false;
      std::stringstream names(a.only);
      for (std::string part; std::getline(names, part, ',');)
        wanted = wanted || (!part.empty() && v.name.find(part) != std::string::npos);
      if (!wanted) continue;
    }
    if (v.mode != "dp" && v.inner_steps > steps) continue;
    if (!a.json) std::fprintf(stderr, "running %s ...\n", v.name.c_str());
    results.push_back(run_variant(a, v, cfg, steps, out + "/" + v.name, spec.to_string()));
  }
  const Result& dp = results.front();
  const std::string setup =
      fmt::format("{} workers, each its own site; every pair shaped to latency {} and rate {} (BRAID_FAULTS over TCP); "
                  "{} steps per configuration (equal tokens){}; config {}{}",
                  a.workers, a.latency, a.rate, steps, a.quick ? ", --quick model" : "", a.config,
                  a.sets.empty() ? "" : fmt::format(" with --set {}", fmt::join(a.sets, " --set ")));
  write_diloco_pages(page_data(results, setup), out + "/diloco.html", out + "/diloco.svg");
  nlohmann::ordered_json j;
  j["setup"] = setup;
  j["page"] = out + "/diloco.html";
  for (const auto& r : results) {
    nlohmann::ordered_json e;
    e["name"] = r.v.name;
    e["mode"] = r.v.mode;
    e["inner_steps"] = r.v.inner_steps;
    e["codec"] = r.v.codec;
    e["fragments"] = r.v.fragments;
    e["delay"] = r.v.delay;
    e["final_val_loss"] = r.final_val_loss;
    e["val_loss_vs_dp"] = r.final_val_loss / dp.final_val_loss - 1;
    e["bytes_wan"] = r.bytes_wan;
    e["bytes_reduction_vs_dp"] = r.bytes_wan > 0 ? dp.bytes_wan / r.bytes_wan : 0;
    e["wall_s"] = r.wall_s;
    e["compute_utilization"] = r.utilization;
    nlohmann::ordered_json c = nlohmann::json::array();
    for (const auto& p : r.curve) c.push_back({{"step", p.step}, {"tokens", p.tokens}, {"bytes_wan", p.bytes_wan}, {"val_loss", p.val_loss}});
    e["curve"] = c;
    j["results"].push_back(e);
  }
  {
    std::ofstream f(out + "/results.json");
    f << j.dump(2) << "\n";
  }
  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%s\n\n", setup.c_str());
  std::printf("%-26s %10s %8s %12s %9s %8s %7s\n", "configuration", "val loss", "vs dp", "bytes wan", "fewer", "wall s",
              "util");
  for (const auto& r : results)
    std::printf("%-26s %10.4f %+7.1f%% %12.3e %8.0fx %8.1f %6.1f%%\n", r.v.name.c_str(), r.final_val_loss,
                (r.final_val_loss / dp.final_val_loss - 1) * 100, r.bytes_wan,
                r.bytes_wan > 0 ? dp.bytes_wan / r.bytes_wan : 0.0, r.wall_s, r.utilization * 100);
  std::printf("\npage: %s/diloco.html   figure: %s/diloco.svg   data: %s/results.json\n", out.c_str(), out.c_str(),
              out.c_str());
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchDilocoArgs>();
  auto* cmd = bench.add_subcommand("diloco", "Data parallel vs DiLoCo and streaming DiLoCo over emulated slow sites");
  cmd->add_option("--config", a->config, "Job whose model and data are trained")->capture_default_str();
  cmd->add_option("--set", a->sets, "Override a config key (repeatable)")->take_all();
  cmd->add_flag("--quick", a->quick, "Small model, 200 steps (CI size)");
  cmd->add_flag("--json", a->json, "Print one JSON object");
  cmd->add_option("--workers", a->workers, "Workers = replicas = sites")->capture_default_str();
  cmd->add_option("--steps", a->steps, "Steps per configuration (default 600, --quick 200)");
  cmd->add_option("--latency", a->latency, "One-way latency per message between sites")->capture_default_str();
  cmd->add_option("--rate", a->rate, "Bandwidth cap per pair of sites")->capture_default_str();
  cmd->add_option("--only", a->only, "Run only configurations whose name contains one of these comma-separated parts (dp always runs)");
  cmd->add_flag("--error-feedback", a->error_feedback, "DiLoCo runs keep codec residuals (diloco.error_feedback)");
  cmd->add_option("--out", a->out, "Directory for the runs, results.json, diloco.html and diloco.svg");
  return [a] { return run_bench_diloco(*a); };
}

}  // namespace

BRAID_BENCH("diloco", 40, setup);

}  // namespace braid::cli
