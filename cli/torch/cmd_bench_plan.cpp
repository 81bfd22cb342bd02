// braid bench plan: the plan model's step time for braid's own training job
// against the step time braid measures, side by side, at 1 and 2 workers in
// each parallel mode braid has.
//
// Per worker count W it calibrates this host (cli/torch/plan_calibration.hpp:
// W concurrent single-worker runs for the compute rate; shm and tcp
// all-reduce once for the links), predicts every row with plan::estimate_step
// on that calibrated cluster, then runs the row as `braid launch --nproc W --
// braid train JOB --set ...` and takes the median step of rank 0's metrics.
// Calibrating just before the rows that use it keeps the load of a shared
// machine as alike as it can be between the two.
//
// The rows are data: a mode is a name, the worker counts, and `--set`
// overrides of the job (plus environment variables); plan_for_job() maps the
// resulting config onto the plan. Add a row for a new parallel mode by adding
// a line to kModes (or a [mode.NAME] table in a --modes-file).
#include "train/pch.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <toml++/toml.h>

#include "cli/command.hpp"
#include "cli/torch/plan_calibration.hpp"
#include "core/error.hpp"
#include "core/thread.hpp"
#include "plan/cluster_spec.hpp"
#include "plan/plan_report.hpp"
#include "plan/units.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;

struct BenchMode {
  std::string id;
  std::string title;
  std::vector<int> workers;
  std::vector<std::string> sets;  // overrides of the job
  std::vector<std::pair<std::string, std::string>> env;
  // The workers stand for separate hosts: the plan puts each in its own
  // scale-up domain, so their gradients cross the scale-out link (tcp).
  bool one_worker_per_host = false;
};

// Every parallel mode braid has today. Overlap makes no difference to one
// worker (nothing to exchange), so the no-overlap rows start at 2; ZeRO, TP
// and PP need 2 workers to mean anything. Selective recomputation is left out:
// the plan model has no counterpart of braid's (plan_for_job refuses it).
const std::vector<BenchMode> kModes = {
    {"dp", "data parallel, overlapped", {1, 2}, {"parallel.overlap=true"}, {}, false},
    {"dp-sync", "data parallel, all-reduce after backward", {2}, {"parallel.overlap=false"}, {}, false},
    {"accum2", "data parallel, 2 micro-steps accumulated", {1, 2}, {"train.grad_accum=2", "parallel.overlap=true"},
     {}, false},
    {"accum2-sync", "2 micro-steps accumulated, all-reduce after backward", {2},
     {"train.grad_accum=2", "parallel.overlap=false"}, {}, false},
    {"dp-tcp", "data parallel over tcp, one worker per host", {2}, {"parallel.overlap=true"},
     {{"BRAID_TRANSPORT", "tcp"}}, true},
    {"full", "data parallel, full activation recomputation", {2}, {"parallel.recompute=full"}, {}, false},
    {"zero1", "ZeRO-1: optimizer state sharded", {2}, {"parallel.zero=1"}, {}, false},
    {"zero2", "ZeRO-2: + gradients sharded", {2}, {"parallel.zero=2"}, {}, false},
    {"zero3", "ZeRO-3: + parameters sharded (gathered per block)", {2}, {"parallel.zero=3"}, {}, false},
    {"zero3-full", "ZeRO-3 with full recomputation", {2}, {"parallel.zero=3", "parallel.recompute=full"}, {}, false},
    {"tp2", "tensor parallel over 2 workers (one replica)", {2}, {"parallel.tp=2"}, {}, false},
    {"pp2", "2 pipeline stages, 1F1B, 4 micro-batches", {2},
     {"parallel.pp=2", "parallel.schedule=1f1b", "parallel.microbatches=4"}, {}, false},
    {"pp2-gpipe", "2 pipeline stages, GPipe, 4 micro-batches", {2},
     {"parallel.pp=2", "parallel.schedule=gpipe", "parallel.microbatches=4"}, {}, false},
};

std::vector<BenchMode> read_modes_file(const std::string& path) {
  toml::table doc;
  try {
    doc = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw ConfigError(fmt::format("{}: {}", path, e.description()), "see --help for the format of a modes file");
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("cannot read modes file '{}': {}", path, e.what()));
  }
  auto bad = [&](const std::string& what) {
    return ConfigError(fmt::format("{}: {}", path, what),
                       "a mode is [mode.NAME] with title = \"...\", workers = [1, 2], set = [\"key=value\", ...], "
                       "and optionally env = [\"VAR=value\"], one_worker_per_host = true");
  };
  for (auto& [key, node] : doc)
    if (key.str() != "mode") throw bad(fmt::format("unknown table '{}'", key.str()));
  auto* modes = doc["mode"].as_table();
  if (!modes || modes->empty()) throw bad("no [mode.NAME] tables");
  std::vector<BenchMode> out;
  for (auto& [name, node] : *modes) {
    auto* t = node.as_table();
    if (!t) throw bad(fmt::format("mode.{} is not a table", name.str()));
    BenchMode m;
    m.id = std::string(name.str());
    for (auto& [k, v] : *t) {
      std::string key(k.str());
      if (key == "title") {
        if (!v.is_string()) throw bad(fmt::format("mode.{}.title must be a string", m.id));
        m.title = *v.value<std::string>();
      } else if (key == "workers") {
        auto* a = v.as_array();
        if (!a || a->empty()) throw bad(fmt::format("mode.{}.workers must be a list such as [1, 2]", m.id));
        for (auto& w : *a) {
          auto n = w.value<int64_t>();
          if (!n || *n < 1 || *n > 1024) throw bad(fmt::format("mode.{}.workers: counts are 1 to 1024", m.id));
          m.workers.push_back(static_cast<int>(*n));
        }
      } else if (key == "set" || key == "env") {
        auto* a = v.as_array();
        if (!a) throw bad(fmt::format("mode.{}.{} must be a list of strings", m.id, key));
        for (auto& s : *a) {
          auto text = s.value<std::string>();
          if (!text || text->find('=') == std::string::npos)
            throw bad(fmt::format("mode.{}.{} entries look like \"name=value\"", m.id, key));
          if (key == "set") m.sets.push_back(*text);
          else m.env.emplace_back(text->substr(0, text->find('=')), text->substr(text->find('=') + 1));
        }
      } else if (key == "one_worker_per_host") {
        auto b = v.value<bool>();
        if (!b) throw bad(fmt::format("mode.{}.one_worker_per_host must be true or false", m.id));
        m.one_worker_per_host = *b;
      } else {
        throw bad(fmt::format("unknown key mode.{}.{}", m.id, key));
      }
    }
    if (m.workers.empty()) throw bad(fmt::format("mode.{} has no workers", m.id));
    if (m.title.empty()) m.title = m.id;
    out.push_back(m);
  }
  return out;
}

struct BenchPlanArgs {
  std::string job;
  std::vector<std::string> sets;
  int steps = 20;
  int warmup = 3;
  int calibration_steps = 12;
  std::string comm_sizes = "8,64M";
  std::vector<std::string> modes;  // ids; empty: all
  std::string modes_file;
  std::vector<std::string> clusters;  // calibrated files to use instead of measuring
  std::string calibration_dir;        // keep the calibrated files here
  double tolerance = 0.25;
  bool quick = false;
  bool json = false;
  bool predict_only = false;  // only the predictions, from --cluster files: nothing is measured
};

struct RowResult {
  const BenchMode* mode = nullptr;
  int workers = 0;
  std::vector<std::string> sets;
  plan::StepEstimate predicted;
  double predicted_comm_s = 0;
  RunMetrics measured;
  double load_before = 0;
  double load_after = 0;
  double error = 0;  // (predicted - measured) / measured
  bool calibration_job = false;  // the row is the run the compute was calibrated on
  std::string plan_command;
};

// A path as one word of a shell command line (the printed `braid plan` commands).
std::string shell_word(const std::string& s) {
  if (s.find_first_of(" '\"\\$`*?") == std::string::npos) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The plan's cluster for a mode: the calibrated host, or (one worker per
// host) the same workers each in its own scale-up domain.
plan::ClusterSpec cluster_for_mode(plan::ClusterSpec c, const BenchMode& m) {
  if (m.one_worker_per_host) {
    c.domain_size = 1;
    c.hardware.scale_up_domain = 1;
    c.pod_gpus = c.gpus;
    c.validate();
  }
  return c;
}

// The plan a row was predicted with (plan_for_job's mapping, defaults resolved).
nlohmann::ordered_json plan_json(const plan::StepEstimate& e) {
  const auto& p = e.plan;
  return {{"dp", p.dp},
          {"tp", p.tp},
          {"pp", p.pp},
          {"zero", p.zero},
          {"micro_batch", p.micro_batch},
          {"micro_batches", e.micro_batches},
          {"global_batch", p.global_batch},
          {"seq_len", p.seq_len},
          {"schedule", plan::to_string(p.schedule)},
          {"recompute", plan::to_string(p.recompute)},
          {"order", plan::to_string(p.order)},
          {"sequence_parallel", p.sequence_parallel},
          {"flash_attention", p.flash_attention},
          {"grad_bits", p.grad_bits},
          {"overlap", {{"tp", p.overlap.tp}, {"pp", p.overlap.pp}, {"dp", p.overlap.dp}}}};
}

nlohmann::ordered_json predicted_json(const plan::StepEstimate& e) {
  nlohmann::ordered_json comm = nlohmann::ordered_json::array();
  double total = 0;
  for (const auto& c : e.comm) {
    comm.push_back({{"dimension", c.dimension}, {"route", c.route}, {"total_s", c.total}, {"exposed_s", c.exposed}});
    total += c.total;
  }
  return {{"step_s", e.step_time},
          {"compute_s", e.compute},
          {"bubble_s", e.bubble},
          {"comm_s", total},
          {"comm_exposed_s", e.exposed_comm()},
          {"comm", comm}};
}

int run_bench_plan(const BenchPlanArgs& args) {
  BenchPlanArgs a = args;
  if (a.quick) {
    a.steps = std::min(a.steps, 3);
    a.warmup = std::min(a.warmup, 1);
    a.calibration_steps = std::min(a.calibration_steps, 2);
    a.comm_sizes = "8,64K";
  }
  if (a.steps < 1 || a.warmup < 0 || a.calibration_steps < 1)
    throw ConfigError("--steps and --calibration-steps must be at least 1, --warmup at least 0");
  if (!(a.tolerance > 0)) throw ConfigError("--tolerance must be positive, e.g. 0.25");
  const std::string job = find_job_config(a.job);
  load_job(job, a.sets);  // a bad job fails here, before anything is measured

  std::vector<BenchMode> all = a.modes_file.empty() ? kModes : read_modes_file(a.modes_file);
  std::vector<BenchMode> modes;
  if (a.modes.empty()) {
    modes = all;
  } else {
    for (const auto& id : a.modes) {
      auto it = std::find_if(all.begin(), all.end(), [&](auto& m) { return m.id == id; });
      if (it == all.end()) {
        std::string known;
        for (auto& m : all) known += (known.empty() ? "" : ", ") + m.id;
        throw ConfigError(fmt::format("unknown mode '{}'", id), "modes: " + known);
      }
      modes.push_back(*it);
    }
  }
  for (const auto& m : modes) {  // a bad override fails here too
    auto sets = a.sets;
    sets.insert(sets.end(), m.sets.begin(), m.sets.end());
    auto config = load_job(job, sets);
    for (int w : m.workers) plan_for_job(config, w);
  }

  auto say = [&](const std::string& s) {
    if (!a.json) std::fprintf(stderr, "%s\n", s.c_str());
  };
  char tmpl[] = "/tmp/braid-bench-plan-XXXXXX";
  if (!mkdtemp(tmpl)) throw IoError("cannot create a temporary directory under /tmp");
  const std::string tmp = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{tmp};
  const std::string cal_dir = a.calibration_dir.empty() ? tmp : a.calibration_dir;
  if (!a.calibration_dir.empty()) fs::create_directories(cal_dir);

  HostCalibrationOptions cal;
  cal.job = job;
  cal.sets = a.sets;
  cal.warmup = a.warmup;
  cal.steps = a.calibration_steps;
  cal.comm_sizes = a.comm_sizes;
  cal.tmp_dir = tmp;
  cal.say = say;

  // Calibrated clusters given on the command line, by worker count.
  std::map<int, plan::ClusterSpec> clusters;
  std::map<int, std::string> cluster_files;
  for (const auto& f : a.clusters) {
    auto c = plan::load_cluster(f);
    if (!c.calibration.present)
      throw ConfigError(fmt::format("'{}' is not a calibrated cluster file", f),
                        "write one with braid plan --calibrate --workers N --out FILE");
    clusters[static_cast<int>(c.gpus)] = c;
    cluster_files[static_cast<int>(c.gpus)] = f;
  }
  std::set<int> worker_counts;
  for (const auto& m : modes) worker_counts.insert(m.workers.begin(), m.workers.end());

  if (a.predict_only) {
    for (int w : worker_counts)
      if (!clusters.count(w))
        throw ConfigError(fmt::format("--predict-only measures nothing, but no --cluster file is for {} worker(s)", w),
                          fmt::format("write one with braid plan --calibrate --workers {} --out FILE and pass "
                                      "--cluster FILE, or choose --modes that use the given worker counts",
                                      w));
    nlohmann::ordered_json j;
    j["job"] = job;
    j["sets"] = a.sets;
    j["rows"] = nlohmann::ordered_json::array();
    std::vector<std::vector<std::string>> table = {
        {"mode", "workers", "plan", "predicted", "compute", "bubble", "comm exposed"}};
    std::vector<std::string> commands;
    for (int w : worker_counts)
      for (const auto& m : modes) {
        if (std::find(m.workers.begin(), m.workers.end(), w) == m.workers.end()) continue;
        auto sets = a.sets;
        sets.insert(sets.end(), m.sets.begin(), m.sets.end());
        auto p = plan_for_job(load_job(job, sets), w);
        auto e = plan::estimate_step(plan_model_for_job(job, sets), cluster_for_mode(clusters[w], m), p);
        std::string command = plan_command_for_job(shell_word(job), shell_word(cluster_files[w]), p);
        if (m.one_worker_per_host) command += " (with [scale_up] size = 1)";
        j["rows"].push_back({{"mode", m.id},
                             {"title", m.title},
                             {"workers", w},
                             {"sets", sets},
                             {"plan", plan_json(e)},
                             {"predicted", predicted_json(e)},
                             {"plan_command", command}});
        table.push_back({m.id, std::to_string(w), e.plan.describe(), fmt::format("{:.3f} s", e.step_time),
                         fmt::format("{:.3f} s", e.compute), fmt::format("{:.1f} ms", e.bubble * 1e3),
                         fmt::format("{:.1f} ms", e.exposed_comm() * 1e3)});
        commands.push_back(command);
      }
    if (a.json) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("%s", plan::format_table(table, {false, true, false, true, true, true, true}).c_str());
      std::printf("\nthe same predictions with braid plan:\n");
      for (const auto& c : commands) std::printf("  %s\n", c.c_str());
    }
    return 0;
  }

  const double load_start = load_average();
  say(fmt::format("bench plan: {} on {} ({} cores), load average {:.1f}", job, cpu_model(), available_cpus(),
                  load_start));
  std::map<std::string, plan::TransportMeasurement> transports;
  bool need_transports =
      std::any_of(worker_counts.begin(), worker_counts.end(), [&](int w) { return !clusters.count(w); });
  if (need_transports) transports = calibrate_transports(cal);

  std::vector<ComputeCalibration> calibrations;
  std::vector<RowResult> rows;
  const std::string exe = braid_executable();
  for (int w : worker_counts) {
    bool calibrated_here = false;
    if (!clusters.count(w)) {
      auto compute = calibrate_compute(cal, w);
      calibrations.push_back(compute);
      auto cluster = plan::cluster_from_measurements(host_measurements(compute, transports));
      std::string file = fmt::format("{}/host-{}w.toml", cal_dir, w);
      std::ofstream(file) << plan::cluster_to_toml(cluster);
      clusters[w] = cluster;
      cluster_files[w] = file;
      calibrated_here = true;
    }
    for (const auto& m : modes) {
      if (std::find(m.workers.begin(), m.workers.end(), w) == m.workers.end()) continue;
      RowResult r;
      r.mode = &m;
      r.workers = w;
      r.sets = a.sets;
      r.sets.insert(r.sets.end(), m.sets.begin(), m.sets.end());
      auto config = load_job(job, r.sets);
      auto p = plan_for_job(config, w);
      r.predicted = plan::estimate_step(plan_model_for_job(job, r.sets), cluster_for_mode(clusters[w], m), p);
      for (const auto& c : r.predicted.comm) r.predicted_comm_s += c.total;
      r.plan_command = plan_command_for_job(shell_word(job), shell_word(cluster_files[w]), p);
      if (m.one_worker_per_host) r.plan_command += " (with [scale_up] size = 1)";
      // Same layout as the calibration runs: one micro-step, one worker.
      r.calibration_job = calibrated_here && w == 1 && config.train.grad_accum == 1;

      std::string dir = fmt::format("{}/{}-{}w", tmp, m.id, w);
      ProcessSpec spec;
      spec.argv = {exe, "launch", "--nproc", std::to_string(w), "--", exe, "train", job};
      auto sets = r.sets;
      for (auto& s : measuring_run_sets(a.warmup + a.steps, dir)) sets.push_back(s);
      for (auto& s : sets) {
        spec.argv.push_back("--set");
        spec.argv.push_back(s);
      }
      spec.env = {{"BRAID_TRANSPORT", "shm"}};  // braid's choice on one host, unless the mode says otherwise
      for (auto& [k, v] : m.env) {
        auto it = std::find_if(spec.env.begin(), spec.env.end(), [&](auto& e) { return e.first == k; });
        if (it != spec.env.end()) it->second = v;
        else spec.env.emplace_back(k, v);
      }
      spec.label = fmt::format("{} at {} worker(s)", m.id, w);
      say(fmt::format("running {}: {} worker(s), {} + {} steps", m.id, w, a.warmup, a.steps));
      r.load_before = load_average();
      run_to_completion({spec}, "bench plan row");
      r.load_after = load_average();
      r.measured = read_run_metrics(dir, a.warmup);
      r.error = (r.predicted.step_time - r.measured.step_s) / r.measured.step_s;
      say(fmt::format("  predicted {:.3f} s, measured {:.3f} s: {:+.1f}%", r.predicted.step_time,
                      r.measured.step_s, r.error * 100));
      rows.push_back(r);
    }
  }
  const double load_end = load_average();

  int within = 0;
  const RowResult* worst = nullptr;
  for (const auto& r : rows) {
    if (std::fabs(r.error) <= a.tolerance) ++within;
    if (!worst || std::fabs(r.error) > std::fabs(worst->error)) worst = &r;
  }
  const bool met = within == static_cast<int>(rows.size());

  if (a.json) {
    nlohmann::ordered_json j;
    j["machine"] = {{"cpu", cpu_model()},
                    {"cores", available_cpus()},
                    {"load_average_start", load_start},
                    {"load_average_end", load_end}};
    j["job"] = job;
    j["sets"] = a.sets;
    j["steps"] = {{"warmup", a.warmup}, {"measured", a.steps}, {"calibration", a.calibration_steps}};
    j["transports"] = nlohmann::ordered_json::object();
    for (const auto& [name, t] : transports)
      j["transports"][name] = {{"bandwidth_bytes_per_s", t.bandwidth}, {"latency_s", t.latency}, {"note", t.note}};
    j["calibrations"] = nlohmann::ordered_json::array();
    for (const auto& c : calibrations)
      j["calibrations"].push_back({{"workers", c.workers},
                                   {"threads_per_worker", c.threads},
                                   {"matmul_flops", c.matmul_flops},
                                   {"matmul", c.matmul_description},
                                   {"step_s", c.step_s},
                                   {"hardware_flops_per_step", c.hardware_flops_per_step},
                                   {"efficiency", c.efficiency},
                                   {"load_before", c.load_before},
                                   {"load_after", c.load_after},
                                   {"cluster_file", a.calibration_dir.empty() ? "" : cluster_files[c.workers]}});
    j["rows"] = nlohmann::ordered_json::array();
    for (const auto& r : rows) {
      j["rows"].push_back({{"mode", r.mode->id},
                           {"title", r.mode->title},
                           {"workers", r.workers},
                           {"sets", r.sets},
                           {"plan", plan_json(r.predicted)},
                           {"predicted", predicted_json(r.predicted)},
                           {"measured",
                            {{"step_s", r.measured.step_s},
                             {"compute_s", r.measured.compute_s},
                             {"comm_s", r.measured.comm_s},
                             {"comm_exposed_s", r.measured.comm_exposed_s},
                             {"steps", r.measured.steps}}},
                           {"error", r.error},
                           {"within_tolerance", std::fabs(r.error) <= a.tolerance},
                           {"calibration_job", r.calibration_job},
                           {"load_before", r.load_before},
                           {"load_after", r.load_after},
                           {"plan_command", r.plan_command}});
    }
    j["target"] = {{"tolerance", a.tolerance},
                   {"rows", rows.size()},
                   {"rows_within", within},
                   {"met", met},
                   {"worst_error", worst ? worst->error : 0.0}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  std::printf("\nbraid bench plan: %s on %s, %d cores; load average %.1f at the start, %.1f at the end\n",
              job.c_str(), cpu_model().c_str(), available_cpus(), load_start, load_end);
  std::printf("medians of %d steps after %d warm-up steps; predicted step = compute + pipeline bubble + exposed "
              "communication; measured: rank 0's step, and its waiting for neighbours and collectives (the bubble "
              "included) as comm exposed; ZeRO's own collectives are not in the engine's comm figures\n\n",
              a.steps, a.warmup);
  if (!transports.empty()) {
    std::string line = "links (braid bench comm, 2 workers): ";
    bool first = true;
    for (const auto& [name, t] : transports) {
      line += fmt::format("{}{} {:.2f} GB/s, {:.0f} us", first ? "" : "; ", name, t.bandwidth * 1e-9,
                          t.latency * 1e6);
      first = false;
    }
    std::printf("%s\n", line.c_str());
  }
  for (const auto& c : calibrations)
    std::printf("compute, %d worker(s) x %d thread(s): matmul %.1f GFLOP/s per worker, %.3f s per step of the job "
                "-> efficiency %.3f (load %.1f -> %.1f)\n",
                c.workers, c.threads, c.matmul_flops * 1e-9, c.step_s, c.efficiency, c.load_before, c.load_after);
  std::printf("\n");
  std::vector<std::vector<std::string>> table = {
      {"mode", "workers", "predicted", "compute", "bubble", "comm exposed", "measured", "compute", "comm exposed",
       "error", "load"}};
  auto ms = [](double s) { return fmt::format("{:.1f} ms", s * 1e3); };
  for (const auto& r : rows)
    table.push_back({r.mode->id + (r.calibration_job ? " *" : ""), std::to_string(r.workers),
                     fmt::format("{:.3f} s", r.predicted.step_time), fmt::format("{:.3f} s", r.predicted.compute),
                     ms(r.predicted.bubble), ms(r.predicted.exposed_comm()), fmt::format("{:.3f} s", r.measured.step_s),
                     fmt::format("{:.3f} s", r.measured.compute_s), ms(r.measured.comm_exposed_s),
                     fmt::format("{:+.1f}%", r.error * 100),
                     fmt::format("{:.1f}", 0.5 * (r.load_before + r.load_after))});
  std::printf("%s",
              plan::format_table(table, {false, true, true, true, true, true, true, true, true, true, true}).c_str());
  std::printf("\n");
  for (const auto& m : modes) std::printf("  %-12s %s\n", m.id.c_str(), m.title.c_str());
  if (std::any_of(rows.begin(), rows.end(), [](auto& r) { return r.calibration_job; }))
    std::printf("  * the compute rate was calibrated on this job's steps, so this row checks the noise, not the "
                "model\n");
  std::printf("\ntarget: every row within %.0f%%: %d of %zu rows%s  %s\n", a.tolerance * 100, within, rows.size(),
              worst ? fmt::format(" (worst {} at {} worker(s): {:+.1f}%)", worst->mode->id, worst->workers,
                                  worst->error * 100)
                          .c_str()
                    : "",
              met ? "met" : "NOT met");
  if (!a.calibration_dir.empty()) {
    std::printf("\nthe same predictions with braid plan (calibrated files in %s):\n", cal_dir.c_str());
    for (const auto& r : rows) std::printf("  %s\n", r.plan_command.c_str());
  }
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchPlanArgs>();
  auto* cmd = bench.add_subcommand("plan", "braid plan's predicted step time vs measured, per parallel mode");
  cmd->add_option("--job", a->job, "Training config (default examples/default.toml)");
  cmd->add_option("--set", a->sets, "Override a key of the job in every row (repeatable)")->take_all();
  cmd->add_option("--steps", a->steps, "Measured steps per row")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Unmeasured steps first")->capture_default_str();
  cmd->add_option("--calibration-steps", a->calibration_steps, "Measured steps of each calibration run")
      ->capture_default_str();
  cmd->add_option("--comm-sizes", a->comm_sizes, "All-reduce sizes the links are calibrated with (small,large)")
      ->capture_default_str();
  cmd->add_option("--modes", a->modes,
                  "Only these modes (comma list): dp, dp-sync, accum2, accum2-sync, dp-tcp, full, zero1, zero2, "
                  "zero3, zero3-full, tp2, pp2, pp2-gpipe")
      ->delimiter(',');
  cmd->add_option("--modes-file", a->modes_file,
                  "TOML file of modes instead of the built-in ones: [mode.NAME] title, workers = [1, 2], "
                  "set = [\"key=value\"], env = [\"VAR=value\"], one_worker_per_host");
  cmd->add_option("--cluster", a->clusters,
                  "Calibrated cluster file (braid plan --calibrate --workers N) to use for N workers instead of "
                  "measuring (repeatable)");
  cmd->add_option("--calibration-dir", a->calibration_dir,
                  "Keep the calibrated cluster files here and print the braid plan command of every row");
  cmd->add_option("--tolerance", a->tolerance, "Target: |predicted - measured| / measured")->capture_default_str();
  cmd->add_flag("--quick", a->quick, "Few steps and small messages (tests): the numbers are rough");
  cmd->add_flag("--json", a->json, "Print one JSON object");
  cmd->add_flag("--predict-only", a->predict_only,
                "Only predict every row, with the plan each maps to, from --cluster files (one per worker count): "
                "nothing is measured or run");
  cmd->footer(
      "Examples:\n"
      "  braid bench plan                               # calibrate, predict and measure every row\n"
      "  braid bench plan --modes dp,dp-sync --steps 40 --json\n"
      "  braid bench plan --cluster host-2w.toml --modes zero3,tp2,pp2 --predict-only\n"
      "  braid plan --calibrate --workers 2 --out host-2w.toml && braid bench plan --cluster host-2w.toml "
      "--modes dp-sync");
  return [a] { return run_bench_plan(*a); };
}

}  // namespace

BRAID_BENCH("plan", 30, setup);

}  // namespace braid::cli
