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
#include "comm/bootstrap.hpp"
#include "comm/communicator.hpp"
#include "core/bytes.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"
#include "train/compute_threads.hpp"
#include "train/memory_accounting.hpp"
#include "train/parallel_mesh.hpp"
#include "train/pipeline_trainer.hpp"
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
  comm::run_in_process(a.ranks, [&](comm::Communicator& comm) {
    train::Trainer t(cfg, data, &comm);
    t.train_step();  // warm-up: first-touch and allocator effects stay out of the timing
    Stopwatch sw;
    train::StepMetrics m;
    for (int s = 0; s < a.steps; ++s) m = t.train_step();
    const double seconds = sw.seconds();
    if (comm.rank() != 0) return;
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
  });
  res.ran = true;
  return res;
}

// ---------------------------------------------------------------- mesh modes
// The same model on the dp x tp x pp mesh (train/pipeline_trainer.hpp),
// a.ranks ranks as threads, 4 micro-batches of a.batch sequences per step.
struct MeshMode {
  std::string name;
  int dp = 1, tp = 1, pp = 1, zero = 0;
  bool sequence_parallel = false;
  std::string schedule = "1f1b";  // "interleaved": 2 chunks per stage
};

struct MeshResult {
  MeshMode mode;
  bool ran = false;
  ModelStateBytes expected, measured;  // per rank: the largest over the ranks
  double split_params = 0;             // bytes of the weights tp splits, held by rank 0
  double tokens_per_s = 0;
  double bubble_share = 0;  // rank 0's measured share of the pipeline time spent waiting
  double bubble_ideal = 0;  // (pp-1)/(chunks·M+pp-1)
  double final_loss = 0;
  std::string note;
};

constexpr int64_t kMeshMicrobatches = 4;

// The weights tensor parallelism splits (column-parallel qkv and fc with
// their biases, row-parallel output projections without theirs).
bool is_tp_split(const std::string& name) {
  for (const char* suffix : {".attn.qkv.weight", ".attn.qkv.bias", ".attn.proj.weight", ".mlp.fc.weight",
                             ".mlp.fc.bias", ".mlp.proj.weight"})
    if (name.ends_with(suffix)) return true;
  return false;
}

// Elements of one block's weights that tp splits: qkv (3C·C + 3C), the
// attention projection (C·C), fc (4C·C + 4C), the MLP projection (4C·C).
int64_t tp_split_elements_per_layer(int64_t C) { return 3 * C * C + 3 * C + C * C + 4 * C * C + 4 * C + 4 * C * C; }

// Elements of one rank of the mesh (stage `stage`), from the layout of
// train/tensor_parallel_gpt.hpp: per block the split weights / tp plus the
// replicated LayerNorms and row-parallel biases; wte + wpe on the first
// stage, lnf (and with pp > 1 a copy of wte) on the last.
int64_t mesh_rank_elements(const BenchMemoryArgs& a, const MeshMode& m, int stage) {
  const int64_t C = a.width, V = a.vocab, L = a.layers;
  const int64_t split = tp_split_elements_per_layer(C), replicated = 6 * C;
  int64_t n = L / m.pp * (split / m.tp + replicated);
  if (stage == 0) n += V * C + a.context * C;
  if (stage == m.pp - 1) n += 2 * C + (m.pp > 1 ? V * C : 0);
  return n;
}

// Steady-state bytes of a rank holding n elements of its stage: ZeRO-1 shards
// the moments over dp, ZeRO-2 the gradients too, ZeRO-3 the parameters too.
ModelStateBytes mesh_expected(double n, int zero, int dp) {
  const double shard = std::ceil(n / dp);
  return {4 * (zero >= 3 ? shard : n), 4 * (zero >= 2 ? shard : n), 8 * (zero >= 1 ? shard : n)};
}

train::TrainConfig mesh_config(const BenchMemoryArgs& a, const MeshMode& m) {
  auto c = job_config(a, m.zero, "none");
  c.parallel.dp = m.dp;
  c.parallel.tp = m.tp;
  c.parallel.pp = m.pp;
  c.parallel.sequence_parallel = m.sequence_parallel;
  c.parallel.microbatches = kMeshMicrobatches;
  c.parallel.schedule = m.schedule;
  return c;
}

MeshResult run_mesh_mode(const BenchMemoryArgs& a, const MeshMode& mode) {
  MeshResult res;
  res.mode = mode;
  for (int stage = 0; stage < mode.pp; ++stage) {
    const auto e = mesh_expected(static_cast<double>(mesh_rank_elements(a, mode, stage)), mode.zero, mode.dp);
    if (e.total() > res.expected.total()) res.expected = e;
  }
  const auto cfg = mesh_config(a, mode);
  const auto& data = synthetic_corpus(a.context);
  const int world = mode.dp * mode.tp * mode.pp;
  std::vector<ModelStateBytes> per_rank(static_cast<size_t>(world));
  comm::run_in_process(world, [&](comm::Communicator& comm) {
    train::ParallelMesh mesh(&comm, train::MeshShape{mode.dp, mode.tp, mode.pp});
    train::PipelineTrainer t(cfg, data, mesh);
    t.train_step();  // warm-up, as for the DP rows
    Stopwatch sw;
    train::StepMetrics m;
    double bubble = 0, pipeline = 0;
    for (int s = 0; s < a.steps; ++s) {
      m = t.train_step();
      bubble += t.last_timing().bubble_s;
      pipeline += t.last_timing().pipeline_s;
    }
    const double seconds = sw.seconds();
    const double n = static_cast<double>(t.model().params().numel());
    auto& mine = per_rank[static_cast<size_t>(comm.rank())];
    if (auto* z = t.zero()) {  // ZeRO-2/3: the optimizer's accounted peaks (gathered blocks included)
      const auto& mem = z->memory();
      mine = {static_cast<double>(mem.params.peak), static_cast<double>(mem.grads.peak),
              static_cast<double>(mem.optimizer.peak)};
    } else {
      mine = {4 * n, 4 * n, 8 * static_cast<double>(t.optimizer().numel())};
    }
    if (comm.rank() != 0) return;
    res.tokens_per_s = static_cast<double>(t.tokens_per_step()) * a.steps / seconds;
    res.final_loss = m.loss;
    res.bubble_share = pipeline > 0 ? bubble / pipeline : 0;
    res.bubble_ideal = t.ideal_bubble_share();
    for (const auto& slot : t.model().params().slots())
      if (is_tp_split(slot.name)) res.split_params += 4 * static_cast<double>(slot.numel);
  });
  for (const auto& b : per_rank)
    if (b.total() > res.measured.total()) res.measured = b;
  res.ran = true;
  return res;
}

// The mesh shapes that a.ranks ranks and the model allow, in a fixed order
// (the interleaved row: 2 chunks per stage, so layers % 4 == 0).
std::vector<MeshMode> mesh_modes(const BenchMemoryArgs& a) {
  std::vector<MeshMode> out;
  const bool tp2 = a.heads % 2 == 0 && a.context % 2 == 0, pp2 = a.layers % 2 == 0;
  if (a.ranks % 2 != 0) return out;
  const int half = a.ranks / 2;
  if (tp2) out.push_back({fmt::format("dp{}xtp2", half), half, 2, 1});
  if (pp2) out.push_back({fmt::format("dp{}xpp2", half), half, 1, 2});
  if (a.layers % 4 == 0) out.push_back({fmt::format("dp{}xpp2+il", half), half, 1, 2, 0, false, "interleaved"});
  if (tp2 && half > 1)
    for (int zero : {1, 2, 3}) out.push_back({fmt::format("dp{}xtp2+z{}", half, zero), half, 2, 1, zero});
  if (pp2 && half > 1) out.push_back({fmt::format("dp{}xpp2+z3", half), half, 1, 2, 3});
  if (tp2 && pp2 && a.ranks % 4 == 0) {
    const int dp = a.ranks / 4;
    const std::string prefix = dp > 1 ? fmt::format("dp{}x", dp) : "";
    out.push_back({prefix + "tp2xpp2", dp, 2, 2});
    out.push_back({prefix + "tp2xpp2+sp", dp, 2, 2, 0, true});
  }
  return out;
}

// ---------------------------------------------------------------- activations

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

  // Mesh rows: activations for --mem-limit counted as plain DP's per layer
  // (an upper bound under tp) for the layers of one stage, times the
  // micro-batches 1F1B keeps in flight on the first stage.
  std::vector<MeshResult> mesh;
  for (const auto& mode : mesh_modes(a)) {
    const double acts_here = train_activations * static_cast<double>(std::min<int64_t>(mode.pp, kMeshMicrobatches)) /
                             static_cast<double>(mode.pp);
    MeshResult probe;
    probe.mode = mode;
    if (limit) {
      // The formula alone decides whether the mode is run.
      for (int stage = 0; stage < mode.pp; ++stage) {
        const double n = static_cast<double>(mesh_rank_elements(a, mode, stage));
        const double need = mesh_expected(n, mode.zero, mode.dp).total() + acts_here;
        if (need > static_cast<double>(limit)) probe.note = fmt::format("does not fit --mem-limit: needs {} MiB per rank", mib(need));
      }
    }
    if (!probe.note.empty()) {
      mesh.push_back(probe);
      continue;
    }
    if (!a.json) std::fprintf(stderr, "running %s...\n", mode.name.c_str());
    auto r = run_mesh_mode(a, mode);
    if (limit && r.measured.total() + acts_here > static_cast<double>(limit))
      r.note = fmt::format("measured {} MiB exceeds --mem-limit", mib(r.measured.total() + acts_here));
    mesh.push_back(r);
  }
  // Bytes of the weights tp splits, whole (what one DP rank holds).
  const double dp_split_params = 4 * static_cast<double>(a.layers * tp_split_elements_per_layer(a.width));

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
  j["mesh"] = nlohmann::ordered_json::array();
  for (const auto& r : mesh) {
    nlohmann::ordered_json o;
    o["mode"] = r.mode.name;
    o["dp"] = r.mode.dp;
    o["tp"] = r.mode.tp;
    o["pp"] = r.mode.pp;
    o["zero"] = r.mode.zero;
    o["sequence_parallel"] = r.mode.sequence_parallel;
    o["microbatches"] = kMeshMicrobatches;
    o["ran"] = r.ran;
    o["expected_max_rank"] = {{"params", r.expected.params}, {"grads", r.expected.grads},
                              {"optimizer", r.expected.optimizer}, {"total", r.expected.total()}};
    if (r.ran) {
      o["measured_max_rank"] = {{"params", r.measured.params}, {"grads", r.measured.grads},
                                {"optimizer", r.measured.optimizer}, {"total", r.measured.total()}};
      o["share_of_plain_dp"] = r.measured.total() / plain_state;
      o["split_params_rank0"] = r.split_params;
      o["split_params_share_of_dp"] = r.split_params / dp_split_params;
      o["tokens_per_s"] = r.tokens_per_s;
      o["bubble_share"] = r.bubble_share;
      o["bubble_ideal"] = r.bubble_ideal;
      o["final_loss"] = r.final_loss;
    }
    if (!r.note.empty()) o["note"] = r.note;
    j["mesh"].push_back(o);
  }
  j["activations"] = nlohmann::ordered_json::array();
  for (const auto& x : acts)
    j["activations"].push_back({{"recompute", x.mode}, {"context", a.activation_context}, {"batch", a.batch},
                                {"measured", x.measured}, {"expected", x.expected},
                                {"reduction_vs_none", acts[0].measured / x.measured}});
  const auto& zero3 = modes[3];
  const double zero3_share = zero3.ran ? zero3.measured_peak.total() / plain_state : 0;
  const double full_cut = acts[0].measured / acts[2].measured;
  double tp2_split_share = 0;
  for (const auto& r : mesh)
    if (r.ran && r.mode.tp == 2 && r.mode.pp == 1 && r.mode.zero == 0) tp2_split_share = r.split_params / dp_split_params;
  j["targets"] = {{"tp2_split_params_share_of_dp", tp2_split_share},
                  {"tp2_halves_split_params", tp2_split_share > 0 && std::abs(tp2_split_share - 0.5) < 1e-9},
                  {"zero3_share_of_plain_dp_model_state", zero3_share},
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
  if (!mesh.empty()) {
    std::printf("\nmesh modes (%ld micro-batches of %ld per step): model state of the fullest rank, MiB\n",
                kMeshMicrobatches, a.batch);
    std::printf("%-15s %17s %17s %8s %13s %10s %14s  %s\n", "mode", "params exp/meas", "total exp/meas", "vs DP",
                "split params", "tokens/s", "bubble/ideal", "");
    for (const auto& r : mesh) {
      auto pair = [&](double e, double m) { return r.ran ? mib(e) + " / " + mib(m) : mib(e) + " / -"; };
      std::printf("%-15s %17s %17s %8s %13s %10s %14s  %s\n", r.mode.name.c_str(),
                  pair(r.expected.params, r.measured.params).c_str(), pair(r.expected.total(), r.measured.total()).c_str(),
                  r.ran ? fmt::format("{:.0f}%", 100 * r.measured.total() / plain_state).c_str() : "-",
                  r.ran ? fmt::format("{:.0f}% of DP", 100 * r.split_params / dp_split_params).c_str() : "-",
                  r.ran ? fmt::format("{:.0f}", r.tokens_per_s).c_str() : "-",
                  r.ran && r.mode.pp > 1 ? fmt::format("{:.0f}% / {:.0f}%", 100 * r.bubble_share, 100 * r.bubble_ideal).c_str()
                                         : "-",
                  r.note.c_str());
    }
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
  std::printf("target: tp=2 halves the per-rank parameters of the split layers: %s  %s\n",
              tp2_split_share > 0 ? fmt::format("{:.0f}% of DP's", 100 * tp2_split_share).c_str() : "not run",
              tp2_split_share > 0 && std::abs(tp2_split_share - 0.5) < 1e-9 ? "met" : "NOT met");
  std::printf("target: full recomputation cuts activations >= 3x at context %ld: %.1fx  %s\n", a.activation_context,
              full_cut, full_cut >= 3 ? "met" : "NOT met");
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchMemoryArgs>();
  auto* cmd = bench.add_subcommand("memory", "Peak memory per rank under ZeRO 0-3, tp/pp meshes and activation recomputation");
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
