#include "plan/model_spec.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "core/config.hpp"
#include "core/error.hpp"
#include "plan/config_quantity.hpp"
#include "plan/preset_files.hpp"

namespace braid::plan {

std::string to_string(FfnKind k) { return k == FfnKind::SwiGlu ? "swiglu" : "gelu"; }

std::string to_string(Recompute r) {
  switch (r) {
    case Recompute::None: return "none";
    case Recompute::Selective: return "selective";
    case Recompute::Full: return "full";
  }
  return "?";
}

Recompute parse_recompute(const std::string& text) {
  if (text == "none") return Recompute::None;
  if (text == "selective") return Recompute::Selective;
  if (text == "full") return Recompute::Full;
  throw ConfigError(fmt::format("unknown recompute mode '{}'", text),
                    "use none, selective or full");
}

double ModelSpec::layer_matmul_params() const {
  double d = static_cast<double>(d_model);
  double attention = 2.0 * d * d + 2.0 * d * static_cast<double>(kv_dim());
  double mlp = (ffn_kind == FfnKind::SwiGlu ? 3.0 : 2.0) * d * static_cast<double>(ffn);
  return attention + mlp;
}

double ModelSpec::layer_params() const {
  double d = static_cast<double>(d_model);
  double norms = bias ? 4.0 * d : 2.0 * d;  // two norms, weight (+ bias)
  double biases = 0;
  if (bias) biases = d + 2.0 * static_cast<double>(kv_dim()) + d +  // Q, K, V, O
                     static_cast<double>(ffn) * (ffn_kind == FfnKind::SwiGlu ? 2.0 : 1.0) + d;
  return layer_matmul_params() + norms + biases;
}

double ModelSpec::embedding_params() const {
  double d = static_cast<double>(d_model);
  return static_cast<double>(vocab) * d + (learned_positions ? static_cast<double>(context) * d : 0.0);
}

double ModelSpec::output_params() const {
  return tied_embeddings ? 0.0 : static_cast<double>(vocab) * static_cast<double>(d_model);
}

double ModelSpec::final_norm_params() const { return (bias ? 2.0 : 1.0) * static_cast<double>(d_model); }

double ModelSpec::total_params() const {
  return static_cast<double>(layers) * layer_params() + embedding_params() + output_params() +
         final_norm_params();
}

double ModelSpec::matmul_params() const {
  return static_cast<double>(layers) * layer_matmul_params() +
         static_cast<double>(vocab) * static_cast<double>(d_model);
}

void ModelSpec::validate() const {
  auto positive = [&](int64_t v, const char* key) {
    if (v <= 0)
      throw ConfigError(fmt::format("model '{}': {} = {} must be positive", name, key, v),
                        "set it in the [model] section");
  };
  positive(layers, "layers");
  positive(d_model, "d_model");
  positive(heads, "heads");
  positive(kv_heads, "kv_heads");
  positive(ffn, "ffn");
  positive(vocab, "vocab");
  positive(context, "context");
  if (d_model % heads != 0)
    throw ConfigError(fmt::format("model '{}': d_model {} is not a multiple of heads {}", name,
                                  d_model, heads),
                      "the head width is d_model / heads; pick heads that divide d_model");
  if (kv_heads > heads || heads % kv_heads != 0)
    throw ConfigError(fmt::format("model '{}': kv_heads {} does not divide heads {}", name,
                                  kv_heads, heads),
                      "grouped-query attention shares each K/V head among heads / kv_heads "
                      "query heads; use a divisor of heads (heads itself for multi-head)");
}

double layer_forward_flops_per_token(const ModelSpec& m, int64_t seq_len) {
  return 2.0 * m.layer_matmul_params() + attention_core_forward_flops_per_token(m, seq_len);
}

// Q·K^T and softmax·V: 2·T·H·Q multiply-adds each per token, counted over the
// full context as PaLM does (no halving for the causal mask).
double attention_core_forward_flops_per_token(const ModelSpec& m, int64_t seq_len) {
  return 4.0 * static_cast<double>(seq_len) * static_cast<double>(m.heads * m.head_dim());
}

double output_forward_flops_per_token(const ModelSpec& m) {
  return 2.0 * static_cast<double>(m.vocab) * static_cast<double>(m.d_model);
}

double flops_per_token_6n(const ModelSpec& m) { return 6.0 * m.total_params(); }

double flops_per_token_palm(const ModelSpec& m, int64_t seq_len) {
  return 6.0 * m.matmul_params() + 12.0 * static_cast<double>(m.layers) *
                                       static_cast<double>(m.heads * m.head_dim()) *
                                       static_cast<double>(seq_len);
}

double layer_hardware_flops_per_token(const ModelSpec& m, int64_t seq_len, Recompute r) {
  double fwd = layer_forward_flops_per_token(m, seq_len);
  double flops = 3.0 * fwd;  // backward is twice the forward
  if (r == Recompute::Selective) flops += attention_core_forward_flops_per_token(m, seq_len);
  if (r == Recompute::Full) flops += fwd;
  return flops;
}

namespace {

std::string example_config_path() {
  const std::string rel = "examples/default.toml";
  if (std::filesystem::exists(rel)) return rel;
#ifdef BRAID_SOURCE_DIR
  std::string in_tree = std::string(BRAID_SOURCE_DIR) + "/" + rel;
  if (std::filesystem::exists(in_tree)) return in_tree;
#endif
  throw ConfigError("model 'example' is braid's example training config, examples/default.toml, "
                    "which was not found",
                    "run from the repository root, or pass --model path/to/train.toml");
}

FfnKind parse_ffn_kind(const std::string& s) { return s == "swiglu" ? FfnKind::SwiGlu : FfnKind::Gelu; }

}  // namespace

namespace {

// braid's training engine (train/train_config.cpp) describes its GPT with
// model.{vocab_size, context, layers, width, heads, mlp_ratio}, with the
// engine's defaults; the model itself (train/gpt_model.hpp) has learned
// positions, biases, a GELU MLP and an output layer tied to the embedding.
ModelSpec model_from_training_config(Config& c) {
  ModelSpec m;
  m.source = c.source();
  m.name = std::filesystem::path(c.source()).stem().string();
  m.vocab = c.get_int("model.vocab_size", 256, 1, int64_t{1} << 32);
  m.context = c.get_int("model.context", 128, 1, int64_t{1} << 32);
  m.layers = c.get_int("model.layers", 4, 1, 100000);
  m.d_model = c.get_int("model.width", 128, 1, 1 << 24);
  m.heads = c.get_int("model.heads", 4, 1, 1 << 16);
  m.kv_heads = m.heads;
  m.ffn = c.get_int("model.mlp_ratio", 4, 1, 1024) * m.d_model;
  m.ffn_kind = FfnKind::Gelu;
  m.tied_embeddings = true;
  m.learned_positions = true;
  m.bias = true;
  m.dropout = false;
  // The training engine owns and checks every other key of its config.
  for (auto& k : table_keys(c, "")) c.accept_section(k);
  c.finish();
  m.validate();
  return m;
}

}  // namespace

ModelSpec model_from_config(Config& c, bool training_config) {
  if (training_config) return model_from_training_config(c);
  ModelSpec m;
  m.source = c.source();
  std::string stem = std::filesystem::path(c.source()).stem().string();
  m.name = c.get_string("model.name", stem);
  m.layers = c.get_int("model.layers", 0, 1, 100000);
  m.d_model = c.get_int("model.d_model", 0, 1, 1 << 24);
  m.heads = c.get_int("model.heads", 0, 1, 1 << 16);
  m.kv_heads = c.get_int("model.kv_heads", m.heads, 1, 1 << 16);
  m.ffn_kind = parse_ffn_kind(c.get_choice("model.ffn_kind", "gelu", {"gelu", "swiglu"}));
  m.ffn = c.get_int("model.ffn", 4 * m.d_model, 1, int64_t{1} << 40);
  m.vocab = c.get_int("model.vocab", 0, 1, int64_t{1} << 32);
  m.context = c.get_int("model.context", 0, 1, int64_t{1} << 32);
  m.tied_embeddings = c.get_bool("model.tied_embeddings", false);
  m.learned_positions = c.get_bool("model.learned_positions", false);
  m.bias = c.get_bool("model.bias", false);
  m.dropout = c.get_bool("model.dropout", false);
  for (const char* key : {"model.layers", "model.d_model", "model.heads", "model.vocab", "model.context"})
    if (!c.has(key))
      throw ConfigError(fmt::format("{}: required key '{}' is missing", c.source(), key),
                        "a model needs layers, d_model, heads, vocab and context; "
                        "see plan/presets/models/llama3-8b.toml");
  c.finish();
  m.validate();
  return m;
}

std::vector<std::string> model_preset_names() {
  auto names = preset_names("models");
  names.push_back("example");
  return names;
}

ModelSpec load_model(const std::string& name_or_path) {
  if (!looks_like_path(name_or_path)) {
    if (name_or_path == "example") {
      auto path = example_config_path();
      auto c = Config::from_file(path);
      auto m = model_from_config(c, true);
      m.name = "example";
      m.source = path;
      return m;
    }
    auto preset = find_preset("models", name_or_path);
    if (!preset) {
      std::string list;
      for (auto& n : model_preset_names()) list += (list.empty() ? "" : ", ") + n;
      throw ConfigError(fmt::format("unknown model preset '{}'", name_or_path),
                        "presets: " + list + "; or pass the path of a TOML file with a [model] section");
    }
    auto c = Config::from_string(std::string(preset->text), "preset " + name_or_path);
    auto m = model_from_config(c, false);
    m.source = "preset";
    return m;
  }
  auto c = Config::from_file(name_or_path);
  // A plan model file holds only [model]; anything else is a training config.
  bool training_config = false;
  for (auto& k : table_keys(c, ""))
    if (k != "model") training_config = true;
  return model_from_config(c, training_config);
}

}  // namespace braid::plan
