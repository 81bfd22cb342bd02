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
#include "train/parallel_mesh.hpp"

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
  const auto& par = config.parallel;
  if (workers < 1) throw ConfigError(fmt::format("{} workers: a job needs at least 1", workers));
  const int64_t model_ranks = par.tp * par.pp;
  if (workers % model_ranks != 0)
    throw ConfigError(fmt::format("{} worker(s) do not split into parallel.tp {} x parallel.pp {} = {} ranks per "
                                  "replica",
                                  workers, par.tp, par.pp, model_ranks),
                      "run a multiple of tp x pp workers, or change parallel.tp / parallel.pp");
  const int64_t dp = workers / model_ranks;
  if (par.dp != 0 && par.dp != dp)
    throw ConfigError(fmt::format("parallel.dp = {} but {} worker(s) with tp {} x pp {} make {} replicas", par.dp,
                                  workers, par.tp, par.pp, dp),
                      "leave parallel.dp at 0 (derived) or make it workers / (tp x pp)");
  if (par.recompute == "selective")
    throw ConfigError("parallel.recompute = selective has no counterpart in the plan model: braid re-runs the "
                      "whole attention branch (ln1, QKV, attention, projection), the plan's selective mode only "
                      "the attention core (Korthikanti et al.), so it would under-count braid's recomputation",
                      "predict parallel.recompute = none or full, or add braid's mode to plan/ (Recompute)");
  if (par.recompute != "none" && par.recompute != "full")
    throw ConfigError(fmt::format("parallel.recompute = '{}' is not mapped onto the plan", par.recompute),
                      "use none or full");
  if (config.diloco.enabled)
    throw ConfigError("diloco.enabled is not mapped onto the plan: the plan's DiLoCo runs one replica per site "
                      "of a multi-site cluster, braid's bench runs all workers on this host",
                      "predict the job with diloco.enabled = false, or use braid plan --diloco on a multi-site "
                      "cluster");
  const bool mesh_engine = par.tp > 1 || par.pp > 1;  // train/pipeline_job.cpp, else train/trainer.cpp
  if (mesh_engine && par.pp > 1) {
    // The plan puts the output layer on the last stage and, when it weighs
    // more than a block, moves blocks off that stage (Llama 3's split); braid
    // gives every stage layers / pp blocks. Output layer / block, in the plan's
    // FLOPs: 2VC / (2(4C² + 2·ffn·C) + 4TC).
    const double c = static_cast<double>(config.model.width);
    const double ffn = static_cast<double>(config.model.mlp_ratio) * c;
    const double head = 2.0 * static_cast<double>(config.model.vocab_size) * c /
                        (2.0 * (4.0 * c * c + 2.0 * ffn * c) + 4.0 * static_cast<double>(config.model.context) * c);
    if (head > 1.0)
      throw ConfigError(fmt::format("the output layer (vocabulary {}) costs {:.1f} blocks: the plan model would "
                                    "give the last pipeline stage fewer blocks, braid splits model.layers evenly",
                                    config.model.vocab_size, head),
                        "predict this job with parallel.pp = 1, or a vocabulary whose output layer costs less "
                        "than one block");
  }

  plan::ParallelPlan p;
  p.dp = dp;
  p.tp = par.tp;
  p.pp = par.pp;
  p.zero = static_cast<int>(par.zero);  // engine: ZeRO over the dp ranks (with tp/pp: stage 1 only)
  // Ranks are laid out tp innermost, then pp, then dp (docs/parallelism.md).
  p.order = plan::MeshOrder::DpOuter;
  p.micro_batch = config.train.batch_size;
  // A micro-batch is batch_size sequences per replica. The DP engine runs
  // train.grad_accum of them (it ignores parallel.microbatches); the mesh
  // engine runs parallel.microbatches (0: train.grad_accum) through the
  // pipeline, every rank of a replica reading the same windows.
  const int64_t micro_batches =
      mesh_engine && par.microbatches > 0 ? par.microbatches : config.train.grad_accum;
  p.global_batch = config.train.batch_size * micro_batches * dp;
  p.seq_len = config.model.context;
  p.schedule = par.schedule == "gpipe"         ? plan::Schedule::GPipe
               : par.schedule == "interleaved" ? plan::Schedule::Interleaved
                                               : plan::Schedule::OneFOneB;
  p.virtual_stages = static_cast<int>(train::pipeline_chunks(par));
  // none: the engine stores the attention probabilities for backward
  // (train/fused_ops.hpp); full: every block keeps its input and re-runs its
  // forward in backward (train/recompute.hpp), as the plan's full mode.
  p.recompute = par.recompute == "full" ? plan::Recompute::Full : plan::Recompute::None;
  p.flash_attention = false;
  // Sequence parallelism as the plan's: norms and residuals split over tp,
  // the pipeline's messages [B, T/tp, C].
  p.sequence_parallel = par.sequence_parallel && par.tp > 1;
  p.grad_bits = 32;             // FP32 gradients (and weights, activations) throughout
  // What the engine overlaps (docs/plan.md, "braid's job as a plan"):
  //  - TP: the all-reduces sit inside the blocks' forward and backward and
  //    block them: nothing hidden.
  //  - PP: sends are posted without waiting, but the next stage blocks on the
  //    receive, so the transfer is on the critical path: nothing hidden.
  //  - DP, mesh engine: bucket all-reduces from the hooks of each stage's
  //    last backward when parallel.overlap (as the DP engine's last
  //    micro-step); ZeRO-1 on the mesh reduce-scatters and gathers after the
  //    pipeline, ZeRO-2/3 on the mesh wait for each backward action's
  //    reduce-scatters before the next action: nothing hidden.
  //  - DP, ZeRO-0: bucket all-reduces during the last micro-step's backward
  //    when parallel.overlap, else after it.
  //  - ZeRO-1/2: the gradients are reduced during backward (ZeRO-1: the
  //    bucket all-reduces, as ZeRO-0; ZeRO-2: reduce-scatters from the
  //    gradient hooks), but the parameter all-gather after the update is not
  //    overlapped. The plan has one window fraction for both; 0 exposes both.
  //  - ZeRO-3: the next block's gather is launched before the current block
  //    computes and the reduce-scatters run from the gradient hooks: the
  //    plan's "prefetched behind all compute".
  p.overlap.tp = 0;
  p.overlap.pp = 0;
  if (mesh_engine) p.overlap.dp = par.zero == 0 && par.overlap ? 1.0 : 0.0;
  else if (par.zero == 0) p.overlap.dp = par.overlap ? 1.0 : 0.0;
  else if (par.zero <= 2) p.overlap.dp = 0;
  else p.overlap.dp = 1;
  return p;
}

std::string plan_command_for_job(const std::string& job, const std::string& cluster_file,
                                 const plan::ParallelPlan& p) {
  std::string s = fmt::format("braid plan --cluster {} --model {} --gpus {} --tp {} --pp {} --zero {} --micro-batch "
                              "{} --global-batch {} --seq {} --recompute {}",
                              cluster_file, job, p.dp * p.tp * p.pp, p.tp, p.pp, p.zero, p.micro_batch,
                              p.global_batch, p.seq_len, plan::to_string(p.recompute));
  if (p.pp > 1) s += " --schedule " + plan::to_string(p.schedule);
  if (p.schedule == plan::Schedule::Interleaved) s += fmt::format(" --virtual-stages {}", p.virtual_stages);
  s += fmt::format(" --order {}", plan::to_string(p.order));
  if (!p.sequence_parallel) s += " --no-sequence-parallel";
  if (!p.flash_attention) s += " --eager-attention";
  s += fmt::format(" --grad-bits {} --overlap-tp {} --overlap-pp {} --overlap-dp {}", p.grad_bits, p.overlap.tp,
                   p.overlap.pp, p.overlap.dp);
  return s;
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
