// braid plan: step time, memory and cross-site bandwidth of a training job,
// from an analytical model (plan/, documented in docs/plan.md). Prints a table,
// --json for machines, --svg FILE for the utilisation-vs-WAN figure, and
// --search ranks every layout that fits. --calibrate measures this host and
// writes a cluster file for it (the measuring needs the training engine: see
// cli/plan_calibrator.hpp).
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>

#include "cli/command.hpp"
#include "cli/plan_calibrator.hpp"
#include "core/error.hpp"
#include "plan/cross_site.hpp"
#include "plan/plan_report.hpp"
#include "plan/plan_search.hpp"
#include "plan/step_model.hpp"
#include "plan/svg_chart.hpp"
#include "plan/units.hpp"

namespace braid::cli {
namespace {

PlanCalibrator& calibrator_slot() {
  static PlanCalibrator slot;  // function-local: registration runs during static initialisation
  return slot;
}

}  // namespace

void register_plan_calibrator(PlanCalibrator calibrator) { calibrator_slot() = std::move(calibrator); }

const PlanCalibrator* plan_calibrator() {
  return calibrator_slot() ? &calibrator_slot() : nullptr;
}

namespace {

struct PlanArgs {
  bool list = false;
  bool calibrate = false;
  PlanCalibrateRequest calibration;
  std::string model;
  std::string hardware;
  std::string cluster;
  int64_t gpus = 0;
  plan::ParallelPlan plan;
  std::string recompute = "selective";
  std::string schedule = "1f1b";
  std::string order = "tp,pp,dp";
  std::string global_batch;  // sequences, "2048" or "2Ki"
  std::string batch_tokens;  // tokens, "16Mi"
  bool no_sequence_parallel = false;
  bool eager_attention = false;
  std::string tokens;        // training budget, "15.6T"
  int64_t diloco = 0;        // H; 0: off
  int64_t streaming = 0;     // fragments; 0: off
  int diloco_bits = 16;
  double diloco_overlap = -1;
  int64_t sites = 0;
  std::string wan_bandwidth;
  std::string wan_latency;
  double target = 0.9;
  bool search = false;
  size_t top = 10;
  bool json = false;
  std::string svg;
};

int64_t whole_count(const std::string& text, const char* flag) {
  double v = plan::parse_count(text);
  if (v < 1 || v != std::floor(v))
    throw ConfigError(fmt::format("{} {} is not a whole positive number", flag, text),
                      "binary prefixes give exact powers of two: 16Mi = 16,777,216");
  return static_cast<int64_t>(v);
}

int list_presets() {
  auto show = [](const char* what, const std::vector<std::string>& names) {
    std::string line;
    for (auto& n : names) line += (line.empty() ? "" : ", ") + n;
    std::printf("%-10s %s\n", what, line.c_str());
  };
  show("models", plan::model_preset_names());
  show("hardware", plan::hardware_preset_names());
  show("clusters", plan::cluster_preset_names());
  std::printf("\nA preset's file is plan/presets/<kind>/<name>.toml; copy and edit one, then pass its path.\n");
  return 0;
}

int run_calibration(const PlanArgs& a) {
  if (!a.model.empty() || !a.cluster.empty() || !a.hardware.empty() || a.search)
    throw ConfigError("--calibrate measures this host and writes a cluster file; it does not plan a job",
                      "run `braid plan --calibrate --out host.toml` first, then `braid plan --cluster host.toml "
                      "--model ...`");
  if (a.calibration.workers < 1) throw ConfigError("--workers must be at least 1");
  const PlanCalibrator* calibrate = plan_calibrator();
  if (!calibrate)
    throw ConfigError("braid plan --calibrate measures with the training engine, and this braid was built without it",
                      "rebuild with -DBRAID_WITH_TORCH=ON (LibTorch comes with scripts/setup), or write the "
                      "cluster file by hand (format: docs/plan.md, section Calibration)");
  return (*calibrate)(a.calibration);
}

int run_plan(PlanArgs a) {
  if (a.calibrate) return run_calibration(a);
  const auto& c = a.calibration;
  if (!c.out.empty() || !c.job.empty() || !c.sets.empty() || c.quick)
    throw ConfigError("--out, --job, --set and --quick belong to --calibrate",
                      "add --calibrate, or leave them out to plan a job");
  if (a.list) return list_presets();
  if (a.model.empty())
    throw ConfigError("no model given", "pass --model llama3-8b (see --list) or --model path/to/model.toml");
  auto model = plan::load_model(a.model);

  std::optional<plan::HardwareSpec> hw;
  if (!a.hardware.empty()) hw = plan::load_hardware(a.hardware);
  auto& p = a.plan;
  p.recompute = plan::parse_recompute(a.recompute);
  p.schedule = plan::parse_schedule(a.schedule);
  p.order = plan::parse_mesh_order(a.order);
  p.sequence_parallel = !a.no_sequence_parallel;
  p.flash_attention = !a.eager_attention;
  if (p.schedule == plan::Schedule::Interleaved && p.virtual_stages == 1) p.virtual_stages = 2;

  plan::ClusterSpec cluster;
  if (!a.cluster.empty()) {
    cluster = plan::load_cluster(a.cluster, hw ? &*hw : nullptr);
  } else {
    int64_t gpus = a.gpus > 0 ? a.gpus : (p.dp > 0 ? p.dp * p.tp * p.pp : 0);
    if (gpus == 0)
      throw ConfigError("how many GPUs?", "pass --gpus N, --dp N, or a --cluster (see --list)");
    cluster = plan::default_cluster(hw ? *hw : plan::hardware_preset("h100"), gpus);
  }
  if (a.gpus > 0) {
    if (a.gpus > cluster.gpus)
      throw ConfigError(fmt::format("--gpus {} is more than cluster '{}' has ({})", a.gpus, cluster.name,
                                    cluster.gpus),
                        "lower --gpus or use a larger cluster");
    if (p.dp == 0) {
      if (a.gpus % (p.tp * p.pp) != 0)
        throw ConfigError(fmt::format("--gpus {} is not a multiple of tp {} × pp {}", a.gpus, p.tp, p.pp),
                          "choose a GPU count that tp × pp divides");
      p.dp = a.gpus / (p.tp * p.pp);
    } else if (p.dp * p.tp * p.pp != a.gpus) {
      throw ConfigError(fmt::format("dp {} × tp {} × pp {} is not --gpus {}", p.dp, p.tp, p.pp, a.gpus),
                        "leave out --dp to use every GPU given");
    }
  }
  if (a.sites > 0) cluster = plan::with_sites(cluster, a.sites);
  if (!a.wan_bandwidth.empty()) cluster.wan.bandwidth = plan::parse_rate(a.wan_bandwidth);
  if (!a.wan_latency.empty()) cluster.wan.latency = plan::parse_duration(a.wan_latency);
  if (cluster.sites > 1 && !(cluster.wan.bandwidth > 0))
    throw ConfigError(fmt::format("{} sites but no WAN bandwidth", cluster.sites),
                      "pass --wan-bandwidth, e.g. 10Tbit/s");

  int64_t seq = p.seq_len > 0 ? p.seq_len : model.context;
  if (!a.global_batch.empty() && !a.batch_tokens.empty())
    throw ConfigError("--global-batch and --batch-tokens both given", "give the batch one way");
  if (!a.global_batch.empty()) p.global_batch = whole_count(a.global_batch, "--global-batch");
  if (!a.batch_tokens.empty()) {
    int64_t tokens = whole_count(a.batch_tokens, "--batch-tokens");
    if (tokens % seq != 0)
      throw ConfigError(fmt::format("--batch-tokens {} is not a whole number of {}-token sequences",
                                    a.batch_tokens, seq),
                        fmt::format("nearest: {} or {} tokens (binary prefixes are exact: 16Mi = 2048 × 8192)",
                                    tokens / seq * seq, (tokens / seq + 1) * seq));
    p.global_batch = tokens / seq;
  }

  plan::DilocoOptions diloco;
  diloco.inner_steps = a.diloco > 0 ? a.diloco : 100;
  diloco.bits = a.diloco_bits;
  diloco.fragments = a.streaming > 0 ? a.streaming : 8;
  diloco.overlap_steps = a.diloco_overlap;
  if (a.diloco > 0 || a.streaming > 0) {
    p.diloco = diloco;
    p.diloco.enabled = true;
    p.diloco.streaming = a.streaming > 0;
  }

  if (a.search) {
    auto result = plan::search_plans(model, cluster, p, a.top);
    if (a.json) std::printf("%s\n", plan::search_json(result).dump(2).c_str());
    else std::printf("%s", plan::format_search(result, model, cluster).c_str());
    return 0;
  }

  auto estimate = plan::estimate_step(model, cluster, p);
  std::optional<plan::TokenBudget> budget;
  if (!a.tokens.empty()) budget = plan::budget_for_tokens(estimate, plan::parse_count(a.tokens));

  // The cross-site table: asked for, or the job spans sites.
  std::optional<plan::CrossSiteAnalysis> cross_site;
  bool asked = a.sites > 0 || !a.svg.empty() || a.diloco > 0 || a.streaming > 0;
  if (asked || estimate.sites_used > 1) {
    plan::CrossSiteOptions opt;
    opt.sites = a.sites > 1 ? a.sites : 2;
    opt.diloco = diloco;
    opt.target = a.target;
    try {
      cross_site = plan::analyse_cross_site(model, cluster, estimate.plan, opt);
    } catch (const ConfigError& e) {
      if (asked) throw;
      estimate.warnings.push_back(std::string("no cross-site analysis: ") + e.what());
    }
  }

  if (!a.svg.empty()) {
    if (!cross_site) throw ConfigError("--svg draws the cross-site figure, which this plan has not got");
    std::string title = fmt::format("{} on {} × {}: compute utilisation against WAN bandwidth",
                                    model.name, plan::format_thousands(estimate.gpus),
                                    cluster.hardware.name);
    std::ofstream out(a.svg);
    out << plan::render_svg(plan::cross_site_chart(*cross_site, title));
    if (!out) throw IoError(fmt::format("cannot write '{}'", a.svg), "check the directory exists and is writable");
  }

  if (a.json) std::printf("%s\n", plan::report_json(estimate, budget, cross_site).dump(2).c_str());
  else std::printf("%s", plan::format_report(estimate, budget, cross_site).c_str());
  if (!a.svg.empty() && !a.json) std::printf("\nwrote %s\n", a.svg.c_str());
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* sub = app.add_subcommand(
      "plan", "Step time, memory and cross-site bandwidth of a training job (analytical model)");
  sub->footer(
      "Examples:\n"
      "  braid plan --model llama3-405b --cluster meta-h100-24k --gpus 16384 --tp 8 --pp 16 \\\n"
      "             --batch-tokens 16Mi --schedule interleaved --virtual-stages 4 --tokens 15.6T\n"
      "  braid plan --model llama3-8b --hardware h100 --gpus 64 --batch-tokens 4Mi --search\n"
      "  braid plan --model llama3-70b --cluster h100-2sites-16k --tp 8 --pp 4 --batch-tokens 16Mi \\\n"
      "             --diloco 100 --svg wan.svg\n"
      "  braid plan --calibrate --out host.toml     # measure this host (needs the training engine)\n"
      "  braid plan --cluster host.toml --model examples/default.toml --gpus 2 --zero 0 --micro-batch 16\n"
      "Formulas and their sources: docs/plan.md. Presets: braid plan --list.");
  auto* g_in = "Inputs";
  sub->add_flag("--list", a->list, "List the model, hardware and cluster presets")->group(g_in);
  sub->add_option("-m,--model", a->model,
                   "Model preset, plan model file, or braid training config (its [model]); "
                   "'example' is examples/default.toml")
      ->group(g_in);
  sub->add_option("--hardware", a->hardware, "Hardware preset or file (default h100; overrides the cluster's)")
      ->group(g_in);
  sub->add_option("--cluster", a->cluster, "Cluster preset or TOML file (default: one pod of --gpus GPUs)")
      ->group(g_in);
  sub->add_option("--gpus", a->gpus, "GPUs the job uses (default: all of the cluster)")->group(g_in);
  sub->add_option("--sites", a->sites, "Split the cluster's GPUs over this many sites")->group(g_in);
  sub->add_option("--wan-bandwidth", a->wan_bandwidth, "WAN bandwidth per site, e.g. 10Tbit/s")->group(g_in);
  sub->add_option("--wan-latency", a->wan_latency, "WAN latency, e.g. 10ms")->group(g_in);

  auto* g_plan = "Plan";
  auto& p = a->plan;
  sub->add_option("--dp", p.dp, "Data parallel degree (default: GPUs / (tp × pp))")->group(g_plan);
  sub->add_option("--tp", p.tp, "Tensor parallel degree")->capture_default_str()->group(g_plan);
  sub->add_option("--pp", p.pp, "Pipeline stages")->capture_default_str()->group(g_plan);
  sub->add_option("--zero", p.zero, "ZeRO stage: 0, 1, 2, 3")->capture_default_str()->group(g_plan);
  sub->add_option("--micro-batch", p.micro_batch, "Sequences per micro-batch")->capture_default_str()->group(g_plan);
  sub->add_option("--global-batch", a->global_batch, "Sequences per step, e.g. 2048 or 2Ki")->group(g_plan);
  sub->add_option("--batch-tokens", a->batch_tokens, "Tokens per step, e.g. 16Mi (= 2048 × 8192)")->group(g_plan);
  sub->add_option("--seq", p.seq_len, "Sequence length (default: the model's context)")->group(g_plan);
  sub->add_option("--recompute", a->recompute, "none, selective or full")->capture_default_str()->group(g_plan);
  sub->add_option("--schedule", a->schedule, "gpipe, 1f1b or interleaved")->capture_default_str()->group(g_plan);
  sub->add_option("--virtual-stages", p.virtual_stages, "Model chunks per GPU (interleaved; default 2)")
      ->group(g_plan);
  sub->add_option("--grad-bits", p.grad_bits, "Gradient reduction precision: 32 or 16")
      ->capture_default_str()
      ->group(g_plan);
  sub->add_option("--order", a->order, "GPU order, innermost first: tp,pp,dp or tp,dp,pp")
      ->capture_default_str()
      ->group(g_plan);
  sub->add_flag("--no-sequence-parallel", a->no_sequence_parallel, "Keep norms and dropout replicated over TP")
      ->group(g_plan);
  sub->add_flag("--eager-attention", a->eager_attention, "Store attention scores (no FlashAttention)")
      ->group(g_plan);
  sub->add_option("--overlap-tp", p.overlap.tp, "Fraction of TP communication hidden")
      ->capture_default_str()
      ->group(g_plan);
  sub->add_option("--overlap-pp", p.overlap.pp, "Fraction of pipeline sends hidden")->capture_default_str()->group(g_plan);
  sub->add_option("--overlap-dp", p.overlap.dp, "Fraction of the DP overlap window usable")
      ->capture_default_str()
      ->group(g_plan);
  sub->add_option("--tokens", a->tokens, "Training budget in tokens, e.g. 15.6T")->group(g_plan);

  auto* g_dl = "Across sites";
  sub->add_option("--diloco", a->diloco, "Train as DiLoCo with H inner steps per outer step")->group(g_dl);
  sub->add_option("--streaming", a->streaming, "Streaming DiLoCo with this many fragments")->group(g_dl);
  sub->add_option("--diloco-bits", a->diloco_bits, "Bits per outer-gradient value on the WAN")
      ->capture_default_str()
      ->group(g_dl);
  sub->add_option("--diloco-overlap", a->diloco_overlap,
                  "Inner steps a streaming fragment overlaps (default H / fragments)")
      ->group(g_dl);
  sub->add_option("--target", a->target, "Compute utilisation the WAN bandwidth is sized for")
      ->capture_default_str()
      ->group(g_dl);

  auto* g_out = "Output";
  sub->add_flag("--search", a->search, "Rank every layout that fits in memory by step time")->group(g_out);
  sub->add_option("--top", a->top, "Layouts --search shows")->capture_default_str()->group(g_out);
  sub->add_flag("--json", a->json, "JSON instead of the table")->group(g_out);
  sub->add_option("--svg", a->svg, "Write compute utilisation against WAN bandwidth to this SVG file")
      ->group(g_out);

  auto* g_cal = "Calibration (measures this host; see docs/plan.md)";
  auto& c = a->calibration;
  sub->add_flag("--calibrate", a->calibrate,
                "Measure this host (matmul FLOP/s, a few steps of a job, shm and tcp all-reduce) and write "
                "a cluster file for it")
      ->group(g_cal);
  sub->add_option("--out", c.out, "Where --calibrate writes the cluster file (default: stdout)")->group(g_cal);
  sub->add_option("--workers", c.workers, "braid workers that will share this host (each is one \"GPU\")")
      ->capture_default_str()
      ->group(g_cal);
  sub->add_option("--job", c.job, "Training config whose steps give the step efficiency (default "
                                  "examples/default.toml)")
      ->group(g_cal);
  sub->add_option("--set", c.sets, "Override a key of --job, e.g. train.batch_size=8 (repeatable)")
      ->take_all()
      ->group(g_cal);
  sub->add_flag("--quick", c.quick, "Tiny measurements (for tests): the numbers are rough")->group(g_cal);
  return [a] { return run_plan(*a); };
}

}  // namespace

BRAID_COMMAND("plan", 70, setup);

}  // namespace braid::cli
