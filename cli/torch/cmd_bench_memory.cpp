// `braid bench memory`: the same model under each memory mode — plain data
// parallelism and ZeRO stages 1-3 over N ranks (threads joined by the
// in-process transport), and activation recomputation none / selective /
// full — with the peak bytes per rank beside the formulas, and tokens/s.
//
// How memory is measured, per kind:
//   parameters, gradients, optimizer state: accounted exactly — the bytes of
//     the buffers the engine allocates and frees (flat buffers, shards, the
//     gathered / armed unit buffers of ZeRO 2-3), current and peak per rank;
//   activations: glibc's heap in use (malloc'ed + mmapped bytes) after one
//     forward pass minus before it, in a single process with nothing else
//     allocating: what the forward left alive for backward.
// --mem-limit is a budget per rank on those bytes (model-state peak +
// activations of one micro-batch): a mode whose formula exceeds it is reported
// as not fitting and not run; a mode that runs is checked against it.
#include "train/pch.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/command.hpp"
#include "comm/communicator.hpp"
#include "core/bytes.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/compute_threads.hpp"
#include "train/memory_accounting.hpp"
#include "train/recompute.hpp"
#include "train/trainer.hpp"

namespace braid::cli {
namespace {

using train::ModelStateBytes;

struct BenchMemoryArgs {
  int ranks = 4;
  int64_t layers = 12, width = 256, heads = 8, vocab = 256;
  int64_t context = 128;              // of the training runs (model state, tokens/s)
  int64_t activation_context = 512;   // of the activation measurement
  int64_t batch = 2;                  // sequences per rank per micro-step
  int steps = 3;                      // measured steps per mode (after one warm-up step)
  std::string mem_limit;              // bytes per rank, e.g. 150M; empty = none
  bool json = false;
};

struct ModeResult {
  int stage = 0;
  bool ran = false;
  ModelStateBytes expected, measured_peak;
  double tokens_per_s = 0;
  double final_loss = 0;
  std::string note;
};

const train::TokenDataset& synthetic_corpus(int64_t context) {
  static std::unique_ptr<train::TokenDataset> ds;
  if (!ds) {
    // Learnable but not trivial: a few repeated phrases with random spelling noise.
    std::mt19937 rng(7);
    const char* words[] = {"memory ", "shards ", "gather ", "scatter ", "recompute ", "the ", "of ", "bytes "};
    std::vector<uint16_t> tokens;
    while (tokens.size() < 400000) {
      std::string w = words[rng() % 8];
      for (char c : w) tokens.push_back(static_cast<uint16_t>(rng() % 50 == 0 ? 'a' + rng() % 26 : c));
    }
    ds = std::make_unique<train::TokenDataset>(
        train::TokenDataset::from_tokens(std::move(tokens), 0.05, context, 256, "<synthetic>"));
  }
  return *ds;
}

train::TrainConfig job_config(const BenchMemoryArgs& a, int stage, const std::string& recompute) {
  train::TrainConfig c;
  c.model.layers = a.layers;
  c.model.width = a.width;
  c.model.heads = a.heads;
  c.model.vocab_size = a.vocab;
  c.model.context = a.context;
  c.data.paths = {"<synthetic>"};
  c.optim.warmup_steps = 0;
  c.train.batch_size = a.batch;
  c.train.steps = a.steps + 1;
  c.train.eval_batches = 1;
  c.parallel.zero = stage;
  c.parallel.recompute = recompute;
  return c;
}

// Runs `steps` + 1 steps of one mode on a.ranks thread ranks; rank 0's peaks.
ModeResult run_mode(const BenchMemoryArgs& a, int stage, int64_t num_params) {
  ModeResult res;
  res.stage = stage;
  res.expected = train::expected_model_state(num_params, stage, a.ranks);
  const auto cfg = job_config(a, stage, "none");
  const auto& data = synthetic_corpus(a.context);
  auto hub = net::make_inproc_hub(a.ranks);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(a.ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < a.ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        comm::Communicator comm(net::connect_inproc(hub, r));
        train::Trainer t(cfg, data, &comm);
        t.train_step();  // warm-up: first-touch and allocator effects stay out of the timing
        Stopwatch sw;
        train::StepMetrics m;
        for (int s = 0; s < a.steps; ++s) m = t.train_step();
        const double seconds = sw.seconds();
        if (r != 0) return;
        res.tokens_per_s = static_cast<double>(t.tokens_per_step()) * a.steps / seconds;
        res.final_loss = m.loss;
        if (auto* z = t.zero()) {
          const auto& mem = z->memory();
          res.measured_peak = {static_cast<double>(mem.params.peak), static_cast<double>(mem.grads.peak),
                               static_cast<double>(mem.optimizer.peak)};
        } else {
          // Plain data parallelism: the flat buffers and the full moments.
          res.measured_peak = {4 * static_cast<double>(t.model().params().params().numel()),
                               4 * static_cast<double>(t.model().params().grads().numel()),
                               8 * static_cast<double>(t.optimizer().numel())};
        }
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  res.ran = true;
  return res;
}

struct ActivationResult {
  std::string mode;
  double measured = 0;  // bytes alive after forward
  double expected = 0;  // formula
};

// Floats one block keeps for backward (see train/recompute.hpp): without
// recomputation the block input, ln1 output, QKV (3), attention output,
// residual h, ln2 output, MLP hidden before and after GELU (4 + 4): 16·B·T·C,
// plus the attention probabilities B·H·T²; selective keeps x and the MLP's
// 10·B·T·C; full keeps the block input only. The head (logits and their
// log-softmax, 2·B·T·V) is the same in every mode.
double expected_activation_bytes(const BenchMemoryArgs& a, train::RecomputeMode mode) {
  const double B = static_cast<double>(a.batch), T = static_cast<double>(a.activation_context),
               C = static_cast<double>(a.width), H = static_cast<double>(a.heads), V = static_cast<double>(a.vocab),
               L = static_cast<double>(a.layers);
  double per_layer = 0;
  switch (mode) {
    case train::RecomputeMode::None: per_layer = 16 * B * T * C + B * H * T * T; break;
    case train::RecomputeMode::Selective: per_layer = 11 * B * T * C; break;
    case train::RecomputeMode::Full: per_layer = B * T * C; break;
  }
  return 4 * (L * per_layer + 2 * B * T * V + 2 * B * T * C);
}

ActivationResult measure_activations(const BenchMemoryArgs& a, train::RecomputeMode mode) {
  train::ModelConfig m;
  m.layers = a.layers;
  m.width = a.width;
  m.heads = a.heads;
  m.vocab_size = a.vocab;
  m.context = a.activation_context;
  train::GptModel model(m, 1);
  train::RecomputeRunner runner(mode);
  model.set_block_runner(&runner);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  auto tokens = torch::randint(0, a.vocab, {a.batch, a.activation_context + 1}, gen, torch::kInt64);
  auto x = tokens.narrow(1, 0, a.activation_context).contiguous();
  auto y = tokens.narrow(1, 1, a.activation_context).contiguous();
  const int64_t before = train::heap_bytes_in_use();
  auto loss = model.loss(x, y);
  const int64_t after = train::heap_bytes_in_use();
  loss.backward();
  return {train::recompute_mode_name(mode), static_cast<double>(after - before), expected_activation_bytes(a, mode)};
}

std::string mib(double bytes) { return fmt::format("{:.1f}", bytes / (1 << 20)); }

int run_bench_memory(const BenchMemoryArgs& a) {
  if (a.ranks < 1 || a.layers < 1 || a.width % a.heads != 0 || a.steps < 1 || a.batch < 1)
    throw ConfigError("bench memory: --ranks, --layers, --steps, --batch must be >= 1 and --width divisible by --heads");
  const uint64_t limit = a.mem_limit.empty() ? 0 : parse_bytes(a.mem_limit);
  train::set_compute_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / a.ranks));

  int64_t num_params = 0;
  {
    train::ModelConfig m;
    m.layers = a.layers;
    m.width = a.width;
    m.heads = a.heads;
    m.vocab_size = a.vocab;
    m.context = a.context;
    num_params = train::GptModel(m, 1).num_parameters();
  }

  // Activations first, alone in the process (the heap measure is process-wide).
  std::vector<ActivationResult> acts;
  for (auto mode : {train::RecomputeMode::None, train::RecomputeMode::Selective, train::RecomputeMode::Full})
    acts.push_back(measure_activations(a, mode));
  // Activations of one training micro-batch (context of the runs, no recompute),
  // for the --mem-limit budget: scaled from the measurement by the formula.
  BenchMemoryArgs at_train = a;
  at_train.activation_context = a.context;
  const double train_activations =
      acts[0].measured * expected_activation_bytes(at_train, train::RecomputeMode::None) / acts[0].expected;

  std::vector<ModeResult> modes;
  for (int stage = 0; stage <= 3; ++stage) {
    auto expected = train::expected_model_state(num_params, stage, a.ranks);
    if (limit && expected.total() + train_activations > static_cast<double>(limit)) {
      ModeResult r;
      r.stage = stage;
      r.expected = expected;
      r.note = fmt::format("does not fit --mem-limit: needs {} MiB per rank", mib(expected.total() + train_activations));
      modes.push_back(r);
      continue;
    }
    if (!a.json) std::fprintf(stderr, "running zero %d on %d ranks...\n", stage, a.ranks);
    auto r = run_mode(a, stage, num_params);
    if (limit && r.measured_peak.total() + train_activations > static_cast<double>(limit))
      r.note = fmt::format("measured peak {} MiB exceeds --mem-limit", mib(r.measured_peak.total() + train_activations));
    modes.push_back(r);
  }
  const double plain_state = train::expected_model_state(num_params, 0, a.ranks).total();

  nlohmann::ordered_json j;
  j["model"] = {{"layers", a.layers}, {"width", a.width}, {"heads", a.heads}, {"vocab", a.vocab},
                {"parameters", num_params}, {"context", a.context}, {"batch_per_rank", a.batch}};
  j["ranks"] = a.ranks;
  j["mem_limit_bytes"] = limit;
  j["measurement"] = "model state: accounted buffer bytes (peak per rank); activations: glibc heap in use after forward";
  j["model_state"] = nlohmann::ordered_json::array();
  for (const auto& r : modes) {
    nlohmann::ordered_json o;
    o["zero"] = r.stage;
    o["ran"] = r.ran;
    o["expected"] = {{"params", r.expected.params}, {"grads", r.expected.grads}, {"optimizer", r.expected.optimizer},
                     {"total", r.expected.total()}};
    if (r.ran) {
      o["measured_peak"] = {{"params", r.measured_peak.params}, {"grads", r.measured_peak.grads},
                            {"optimizer", r.measured_peak.optimizer}, {"total", r.measured_peak.total()}};
      o["share_of_plain_dp"] = r.measured_peak.total() / plain_state;
      o["tokens_per_s"] = r.tokens_per_s;
      o["final_loss"] = r.final_loss;
    }
    if (!r.note.empty()) o["note"] = r.note;
    j["model_state"].push_back(o);
  }
  j["activations"] = nlohmann::ordered_json::array();
  for (const auto& x : acts)
    j["activations"].push_back({{"recompute", x.mode}, {"context", a.activation_context}, {"batch", a.batch},
                                {"measured", x.measured}, {"expected", x.expected},
                                {"reduction_vs_none", acts[0].measured / x.measured}});
  const auto& zero3 = modes[3];
  const double zero3_share = zero3.ran ? zero3.measured_peak.total() / plain_state : 0;
  const double full_cut = acts[0].measured / acts[2].measured;
  j["targets"] = {{"zero3_share_of_plain_dp_model_state", zero3_share},
                  {"zero3_le_40pct", zero3.ran && zero3_share <= 0.40},
                  {"full_recompute_activation_cut", full_cut},
                  {"full_recompute_cut_ge_3x", full_cut >= 3}};
  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  std::printf("model: %ld layers, width %ld, %ld heads, vocab %ld: %.2fM parameters; %d ranks (threads), batch %ld x context %ld per rank\n",
              a.layers, a.width, a.heads, a.vocab, num_params / 1e6, a.ranks, a.batch, a.context);
  std::printf("model state per rank, MiB (peak, accounted buffer bytes; expected = fp32 formula 4+4+8 B/param)\n");
  std::printf("%-7s %17s %17s %17s %17s %8s %10s  %s\n", "mode", "params exp/meas", "grads exp/meas",
              "optim exp/meas", "total exp/meas", "vs DP", "tokens/s", "");
  for (const auto& r : modes) {
    auto pair = [&](double e, double m) { return r.ran ? mib(e) + " / " + mib(m) : mib(e) + " / -"; };
    const std::string share = r.ran ? fmt::format("{:.0f}%", 100 * r.measured_peak.total() / plain_state) : "-";
    const std::string speed = r.ran ? fmt::format("{:.0f}", r.tokens_per_s) : "-";
    std::printf("%-7s %17s %17s %17s %17s %8s %10s  %s\n", r.stage == 0 ? "DP" : fmt::format("zero{}", r.stage).c_str(),
                pair(r.expected.params, r.measured_peak.params).c_str(),
                pair(r.expected.grads, r.measured_peak.grads).c_str(),
                pair(r.expected.optimizer, r.measured_peak.optimizer).c_str(),
                pair(r.expected.total(), r.measured_peak.total()).c_str(), share.c_str(), speed.c_str(),
                r.note.c_str());
  }
  std::printf("\nactivations kept by one forward pass, batch %ld x context %ld (MiB; glibc heap in use after forward)\n",
              a.batch, a.activation_context);
  std::printf("%-10s %10s %10s %8s\n", "recompute", "expected", "measured", "cut");
  for (const auto& x : acts)
    std::printf("%-10s %10s %10s %7.1fx\n", x.mode.c_str(), mib(x.expected).c_str(), mib(x.measured).c_str(),
                acts[0].measured / x.measured);
  if (limit)
    std::printf("\n--mem-limit %s per rank (model state + %s MiB activations of one micro-batch)\n", a.mem_limit.c_str(),
                mib(train_activations).c_str());
  std::printf("\ntarget: ZeRO-3 on %d ranks <= 40%% of plain DP's per-rank model state: %s  %s\n", a.ranks,
              zero3.ran ? fmt::format("{:.0f}%", 100 * zero3_share).c_str() : "not run",
              zero3.ran && zero3_share <= 0.40 ? "met" : "NOT met");
  std::printf("target: full recomputation cuts activations >= 3x at context %ld: %.1fx  %s\n", a.activation_context,
              full_cut, full_cut >= 3 ? "met" : "NOT met");
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchMemoryArgs>();
  auto* cmd = bench.add_subcommand("memory", "Peak memory per rank under ZeRO 0-3 and activation recomputation");
  cmd->add_option("--ranks", a->ranks, "Data-parallel ranks (threads)")->capture_default_str();
  cmd->add_option("--layers", a->layers, "Transformer blocks")->capture_default_str();
  cmd->add_option("--width", a->width, "Model width")->capture_default_str();
  cmd->add_option("--heads", a->heads, "Attention heads")->capture_default_str();
  cmd->add_option("--context", a->context, "Context of the training runs")->capture_default_str();
  cmd->add_option("--activation-context", a->activation_context, "Context of the activation measurement")
      ->capture_default_str();
  cmd->add_option("--batch", a->batch, "Sequences per rank per micro-step")->capture_default_str();
  cmd->add_option("--steps", a->steps, "Measured steps per mode (after one warm-up step)")->capture_default_str();
  cmd->add_option("--mem-limit", a->mem_limit, "Budget per rank (bytes, e.g. 150M): modes that exceed it do not run");
  cmd->add_flag("--json", a->json, "Print one JSON object");
  return [a] { return run_bench_memory(*a); };
}

}  // namespace

BRAID_BENCH("memory", 40, setup);

}  // namespace braid::cli
