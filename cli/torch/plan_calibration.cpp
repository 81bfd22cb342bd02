// Measuring this host for the plan model, and `braid plan --calibrate`.
// Cost: W concurrent runs of warmup + steps training steps of the job (a few
// seconds for the example job), and two `braid bench comm` runs of 2 workers
// (shm, tcp) over the given sizes (~10-30 s at 64 MiB on 2 cores).
#include "train/pch.hpp"

#include "cli/torch/plan_calibration.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "bench/comm_bench.hpp"
#include "cli/plan_calibrator.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "plan/cluster_spec.hpp"
#include "plan/hardware_spec.hpp"
#include "plan/units.hpp"
#include "core/thread.hpp"
#include "train/compute_threads.hpp"

namespace braid::cli {
namespace fs = std::filesystem;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw IoError(fmt::format("cannot read '{}'", path), "the run that should have written it failed");
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

double host_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kib = 0;
  while (f >> key) {
    if (key == "MemTotal:") {
      f >> kib;
      return kib * 1024.0;
    }
    f.ignore(4096, '\n');
  }
  throw IoError("cannot read the host's memory size from /proc/meminfo");
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "this-host";
  return buf;
}

// n of "fp32 NxNxN" in MatmulPeak::describe(), 0 if it is not there.
int64_t matmul_size_from(const std::string& description) {
  auto at = description.find("fp32 ");
  if (at == std::string::npos) return 0;
  long long n = 0;
  return std::sscanf(description.c_str() + at, "fp32 %lld", &n) == 1 ? n : 0;
}

}  // namespace

std::string find_job_config(const std::string& given) {
  if (!given.empty()) {
    if (!fs::exists(given)) throw ConfigError(fmt::format("job config '{}' does not exist", given));
    return given;
  }
  const fs::path rel = "examples/default.toml";
  std::vector<fs::path> candidates = {rel, fs::path(braid_executable()).parent_path().parent_path() / rel};
  for (const auto& c : candidates)
    if (fs::exists(c)) return c.string();
  throw ConfigError("cannot find braid's example job, examples/default.toml",
                    "run from the repository root or pass --job path/to/train.toml");
}

std::string braid_executable() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the braid executable (/proc/self/exe)");
  return p.string();
}

double load_average() {
  std::ifstream f("/proc/loadavg");
  double l = 0;
  f >> l;
  return l;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string utc_now_iso8601() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

RunMetrics read_run_metrics(const std::string& run_dir, int warmup) {
  std::ifstream f(run_dir + "/metrics.jsonl");
  if (!f) throw IoError(fmt::format("no metrics in '{}'", run_dir), "the training run failed before its first step");
  std::vector<double> step, compute, comm, exposed;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    if (j.at("step").get<int64_t>() <= warmup) continue;
    step.push_back(j.at("step_s").get<double>());
    compute.push_back(j.at("compute_s").get<double>());
    comm.push_back(j.at("comm_s").get<double>());
    exposed.push_back(j.at("comm_exposed_s").get<double>());
  }
  if (step.empty())
    throw Error(fmt::format("'{}' has no steps after the {} warm-up steps", run_dir, warmup),
                "measure more steps (--steps)");
  return {static_cast<int>(step.size()), median(step), median(compute), median(comm), median(exposed)};
}

void run_to_completion(const std::vector<ProcessSpec>& specs, const std::string& what) {
  std::map<int, std::vector<std::string>> tail;
  ProcessGroup group([&](int i, std::string_view line) {
    auto& t = tail[i];
    t.emplace_back(line);
    if (t.size() > 15) t.erase(t.begin());
  });
  for (const auto& s : specs) group.spawn(s);
  std::string failed;
  while (group.running_count() > 0) {
    auto e = group.poll(100);
    if (e && !e->ok() && failed.empty()) {
      failed = fmt::format("{} ({}) {}", what, specs[e->index].label, e->describe());
      for (auto& l : tail[e->index]) failed += "\n    " + l;
      group.terminate_all(5.0);  // the others would wait for it
    }
  }
  while (auto e = group.poll(0))
    if (!e->ok() && failed.empty()) {
      failed = fmt::format("{} ({}) {}", what, specs[e->index].label, e->describe());
      for (auto& l : tail[e->index]) failed += "\n    " + l;
    }
  if (!failed.empty()) throw Error(failed, "run the job alone (braid train ...) to see what goes wrong");
}

std::vector<std::string> measuring_run_sets(int total_steps, const std::string& run_dir) {
  return {fmt::format("train.steps={}", total_steps), "train.eval_every=0", "train.sample_tokens=0",
          "data.val_fraction=0", "run.progress=false", "run.dir=" + run_dir};
}

train::TrainConfig load_job(const std::string& path, const std::vector<std::string>& sets) {
  Config doc = Config::from_file(path);
  for (const auto& s : sets) doc.apply_override(s);
  return train::TrainConfig::from(doc);
}

plan::ModelSpec plan_model_for_job(const std::string& path, const std::vector<std::string>& sets) {
  Config doc = Config::from_file(path);
  for (const auto& s : sets) doc.apply_override(s);
  auto m = plan::model_from_config(doc, true);
  m.name = fs::path(path).stem().string();
  return m;
}

plan::ParallelPlan plan_for_job(const train::TrainConfig& config, int workers) {
  // The engine's ZeRO/TP/PP modes landed after this mapping was written; until
  // they are mapped here, a row that uses them would be predicted as plain DP.
  if (config.parallel.zero != 0 || config.parallel.tp != 1 || config.parallel.pp != 1)
    throw ConfigError(fmt::format("the plan mapping of braid's job covers data parallelism only (this job: "
                                  "zero {}, tp {}, pp {})",
                                  config.parallel.zero, config.parallel.tp, config.parallel.pp),
                      "map parallel.zero/tp/pp onto plan::ParallelPlan in plan_for_job "
                      "(cli/torch/plan_calibration.cpp), or leave those keys at their defaults");
  plan::ParallelPlan p;
  p.dp = workers;
  p.tp = 1;
  p.pp = 1;
  p.zero = 0;  // every worker holds all weights, gradients and AdamW state
  p.micro_batch = config.train.batch_size;
  p.global_batch = config.train.batch_size * config.train.grad_accum * workers;
  p.seq_len = config.model.context;
  // The engine stores the attention probabilities for backward and recomputes
  // nothing (train/fused_ops.hpp).
  p.recompute = plan::Recompute::None;
  p.flash_attention = false;
  p.grad_bits = 32;
  // Bucket all-reduces start during the last micro-step's backward, or after it.
  p.overlap.dp = config.parallel.overlap ? 1.0 : 0.0;
  return p;
}

std::string plan_command_for_job(const std::string& job, const std::string& cluster_file,
                                 const plan::ParallelPlan& p) {
  return fmt::format("braid plan --cluster {} --model {} --gpus {} --zero {} --micro-batch {} --global-batch {} "
                     "--seq {} --recompute none --eager-attention --grad-bits {} --overlap-dp {}",
                     cluster_file, job, p.dp * p.tp * p.pp, p.zero, p.micro_batch, p.global_batch, p.seq_len,
                     p.grad_bits, p.overlap.dp);
}

ComputeCalibration calibrate_compute(const HostCalibrationOptions& o, int workers) {
  if (workers < 1) throw ConfigError("a calibration needs at least 1 worker");
  const auto config = load_job(o.job, o.sets);
  ComputeCalibration c;
  c.workers = workers;
  c.threads = train::compute_threads_for(static_cast<int>(config.train.threads), workers);
  const std::string exe = braid_executable();
  const int total = o.warmup + o.steps;
  const bool pin = workers * c.threads <= available_cpus() && std::system("taskset -c 0 true >/dev/null 2>&1") == 0;
  std::vector<std::string> dirs;
  std::vector<ProcessSpec> specs;
  for (int i = 0; i < workers; ++i) {
    dirs.push_back(fmt::format("{}/calibrate-w{}-{}", o.tmp_dir, workers, i));
    fs::remove_all(dirs.back());
    ProcessSpec p;
    p.argv = {exe, "train", o.job};
    // Each run on its own block of cores. Unpinned, W independent processes
    // on this 2-core VM measured ~0.37 s per step of the example job against
    // ~0.19 s pinned, and ~0.20 s for the same workers in one data-parallel
    // job; pinned runs are what the job's workers get.
    if (pin && workers > 1) {
      const int first = i * c.threads;
      p.argv.insert(p.argv.begin(), {"taskset", "-c", fmt::format("{}-{}", first, first + c.threads - 1)});
    }
    std::vector<std::string> sets = o.sets;
    for (auto& s : measuring_run_sets(total, dirs.back())) sets.push_back(s);
    sets.push_back(fmt::format("train.threads={}", c.threads));
    for (auto& s : sets) {
      p.argv.push_back("--set");
      p.argv.push_back(s);
    }
    p.label = fmt::format("calibration worker {} of {}", i + 1, workers);
    specs.push_back(p);
  }
  if (o.say)
    o.say(fmt::format("calibrating compute: {} concurrent single-worker run(s) of {}, {} thread(s) each, {} + {} "
                      "steps",
                      workers, o.job, c.threads, o.warmup, o.steps));
  c.load_before = load_average();
  run_to_completion(specs, "calibration run");
  c.load_after = load_average();

  std::vector<double> steps, peaks;
  for (const auto& d : dirs) {
    steps.push_back(read_run_metrics(d, o.warmup).step_s);
    auto summary = nlohmann::json::parse(read_text(d + "/summary.json"));
    peaks.push_back(summary.at("peak_flops_per_rank").get<double>());
    if (c.matmul_description.empty()) c.matmul_description = summary.at("peak_description").get<std::string>();
  }
  c.step_s = median(steps);
  c.matmul_flops = median(peaks);
  c.matmul_size = matmul_size_from(c.matmul_description);

  // What the model counts for one step of one worker (it does not depend on
  // the cluster, so any will do).
  auto model = plan_model_for_job(o.job, o.sets);
  auto one = plan::estimate_step(model, plan::default_cluster(plan::hardware_preset("h100"), 1),
                                 plan_for_job(config, 1));
  c.hardware_flops_per_step = one.hardware_flops_per_step;
  c.efficiency = c.hardware_flops_per_step / (c.step_s * c.matmul_flops);
  if (o.say)
    o.say(fmt::format("  matmul {:.1f} GFLOP/s per worker, step {:.3f} s, {:.2f} GFLOP per step: efficiency {:.3f} "
                      "(load average {:.1f} -> {:.1f})",
                      c.matmul_flops * 1e-9, c.step_s, c.hardware_flops_per_step * 1e-9, c.efficiency,
                      c.load_before, c.load_after));
  return c;
}

std::map<std::string, plan::TransportMeasurement> calibrate_transports(const HostCalibrationOptions& o) {
  std::map<std::string, plan::TransportMeasurement> out;
  for (const char* transport : {"shm", "tcp"}) {
    bench::CommBenchOptions b;
    b.np = 2;
    b.op = "allreduce";
    b.dtype = "f32";
    b.sizes = o.comm_sizes;
    b.transport = transport;
    b.quiet = true;
    if (o.say) o.say(fmt::format("calibrating {}: braid bench comm --np 2 --transport {} --sizes {}", transport,
                                 transport, o.comm_sizes));
    auto rows = bench::run_comm_bench(b);
    const bench::CommRow* smallest = nullptr;
    const bench::CommRow* largest = nullptr;
    for (const auto& r : rows) {
      if (r.impl != "braid") continue;
      if (r.wrong) throw Error(fmt::format("the {} all-reduce gave wrong results during calibration", transport),
                               "run braid bench comm --transport " + std::string(transport) + " to investigate");
      if (!smallest || r.bytes < smallest->bytes) smallest = &r;
      if (!largest || r.bytes > largest->bytes) largest = &r;
    }
    if (!smallest || largest->bytes == smallest->bytes)
      throw ConfigError(fmt::format("calibrating {} needs at least two message sizes, got '{}'", transport,
                                    o.comm_sizes),
                        "give a small and a large size, e.g. 8,64M");
    plan::TransportMeasurement m;
    m.bandwidth = largest->busbw_gbps * 1e9;
    // A small all-reduce on the ring takes 2(n-1) message steps.
    m.latency = smallest->time_us * 1e-6 / (2.0 * (b.np - 1));
    m.note = fmt::format("braid bench comm --np 2: all-reduce busbw at {} ({} algorithm), latency from {} ({:.1f} us)",
                         plan::format_size(static_cast<double>(largest->bytes)), largest->algo,
                         plan::format_size(static_cast<double>(smallest->bytes)), smallest->time_us);
    if (o.say)
      o.say(fmt::format("  {}: {:.3f} GB/s bus bandwidth, {:.1f} us latency", transport, m.bandwidth * 1e-9,
                        m.latency * 1e6));
    out[transport] = m;
  }
  return out;
}

plan::CalibrationMeasurements host_measurements(const ComputeCalibration& compute,
                                                const std::map<std::string, plan::TransportMeasurement>& transports) {
  plan::CalibrationMeasurements m;
  m.host = host_name();
  m.date = utc_now_iso8601();
  m.workers = compute.workers;
  m.matmul_flops = compute.matmul_flops;
  m.matmul_dtype = "f32";
  m.matmul_size = compute.matmul_size;
  m.step_efficiency = compute.efficiency;
  m.memory_bytes = host_memory_bytes() / compute.workers;
  m.transports = transports;
  return m;
}

namespace {

// A cluster file for `workers` workers of this host, as TOML, with a header
// that says how it was measured.
std::string calibrated_cluster_text(const plan::ClusterSpec& cluster, const ComputeCalibration& c,
                                    const std::string& job) {
  std::string s = fmt::format(
      "# braid plan --calibrate: {} worker(s) on {} ({}), {} thread(s) each.\n"
      "# matmul: {}; step efficiency from {} concurrent single-worker run(s) of {}\n"
      "# ({:.3f} s per step); load average {:.1f} before, {:.1f} after.\n"
      "# Use: braid plan --cluster THIS_FILE --model {} --gpus N --zero 0 ...\n\n",
      c.workers, cluster.calibration.host, cpu_model(), c.threads, c.matmul_description, c.workers, job, c.step_s,
      c.load_before, c.load_after, job);
  return s + plan::cluster_to_toml(cluster);
}

int calibrate_command(const PlanCalibrateRequest& r) {
  HostCalibrationOptions o;
  o.job = find_job_config(r.job);
  o.sets = r.sets;
  if (r.quick) {
    o.warmup = 1;
    o.steps = 2;
    o.comm_sizes = "8,64K";
  }
  o.say = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  char tmpl[] = "/tmp/braid-calibrate-XXXXXX";
  if (!mkdtemp(tmpl)) throw IoError("cannot create a temporary directory under /tmp");
  o.tmp_dir = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{o.tmp_dir};

  auto compute = calibrate_compute(o, r.workers);
  auto transports = calibrate_transports(o);
  auto measurements = host_measurements(compute, transports);
  auto cluster = plan::cluster_from_measurements(measurements);
  cluster.calibration.notes = fmt::format(
      "{} worker(s) with {} thread(s) each; step efficiency {:.4f} = {:.4g} hardware FLOP per step of {} / "
      "({:.4f} s x {:.4g} FLOP/s)",
      compute.workers, compute.threads, compute.efficiency, compute.hardware_flops_per_step, o.job, compute.step_s,
      compute.matmul_flops);
  std::string text = calibrated_cluster_text(cluster, compute, o.job);
  if (r.out.empty()) {
    std::printf("%s", text.c_str());
    return 0;
  }
  std::ofstream f(r.out);
  f << text;
  f.close();
  if (!f) throw IoError(fmt::format("cannot write '{}'", r.out), "check the directory exists and is writable");
  std::fprintf(stderr, "wrote %s\n", r.out.c_str());
  return 0;
}

[[maybe_unused]] const bool registered = [] {
  register_plan_calibrator(calibrate_command);
  return true;
}();

}  // namespace

}  // namespace braid::cli
