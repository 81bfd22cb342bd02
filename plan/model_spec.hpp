#pragma once
// The shape of a decoder-only transformer, and what follows from it alone:
// parameter counts and FLOPs per token.
//
// Cost model (docs/plan.md, "FLOPs"):
//   6N per token          Kaplan et al. 2020; the count behind "3.8e25 FLOPs" in Llama 3.
//   6N' + 12·L·H·Q·T      PaLM (Chowdhery et al. 2022, app. B): matmul parameters N' plus
//                         attention scores and values over a context of T tokens.
//   recompute             selective adds the attention core's forward again (4·L·H·Q·T),
//                         full adds every layer's forward again.
#include <cstdint>
#include <string>
#include <vector>

namespace braid {
class Config;
}

namespace braid::plan {

enum class FfnKind { Gelu, SwiGlu };
enum class Recompute { None, Selective, Full };

std::string to_string(FfnKind k);
std::string to_string(Recompute r);
Recompute parse_recompute(const std::string& text);

struct ModelSpec {
  std::string name;
  std::string source;  // preset name or file it was read from
  int64_t layers = 0;
  int64_t d_model = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;  // grouped-query attention; == heads for multi-head
  int64_t ffn = 0;       // hidden width of the MLP
  int64_t vocab = 0;
  int64_t context = 0;   // training sequence length
  FfnKind ffn_kind = FfnKind::Gelu;
  bool tied_embeddings = false;
  bool learned_positions = false;  // GPT-2's position table (context × d_model)
  bool bias = false;               // biases in linear layers and norms (GPT-2)
  bool dropout = false;            // dropout masks are stored activations

  int64_t head_dim() const { return d_model / heads; }
  int64_t kv_dim() const { return kv_heads * head_dim(); }

  // Weights of the matmuls in one layer (Q, K, V, O and the MLP).
  double layer_matmul_params() const;
  // Everything in one layer: matmuls, biases, norms.
  double layer_params() const;
  // Input embedding (+ position table when learned).
  double embedding_params() const;
  // Output projection when it is not tied to the input embedding, else 0.
  double output_params() const;
  double final_norm_params() const;
  double total_params() const;
  // Parameters that take part in a matmul per token: every layer's matmuls and
  // the output projection (even when tied), not the embedding lookup.
  double matmul_params() const;

  // Throws ConfigError when the shape is not a valid transformer.
  void validate() const;
};

// FLOPs per token of training (forward + backward).
double flops_per_token_6n(const ModelSpec& m);
double flops_per_token_palm(const ModelSpec& m, int64_t seq_len);
// Forward FLOPs per token of one layer, and of the output projection.
double layer_forward_flops_per_token(const ModelSpec& m, int64_t seq_len);
double attention_core_forward_flops_per_token(const ModelSpec& m, int64_t seq_len);
double output_forward_flops_per_token(const ModelSpec& m);
// What the hardware executes per token and per layer (forward + backward +
// recomputation); the output layer is never recomputed.
double layer_hardware_flops_per_token(const ModelSpec& m, int64_t seq_len, Recompute r);

// Presets: gpt2-124m, llama3-8b, llama3-70b, llama3-405b (plan/presets/models/),
// and "example": braid's example training config, examples/default.toml.
std::vector<std::string> model_preset_names();
// A preset name or a path to a TOML file: either a plan model file ([model]
// only, every key checked) or a braid training config (any other section),
// whose [model] is read with the training engine's keys and defaults
// (vocab_size, context, layers, width, heads, mlp_ratio) as braid's GPT:
// learned positions, biases, GELU MLP, output layer tied to the embedding.
ModelSpec load_model(const std::string& name_or_path);
// Reads [model] from an already parsed document.
ModelSpec model_from_config(Config& c, bool training_config);

}  // namespace braid::plan
