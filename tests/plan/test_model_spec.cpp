#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/config.hpp"
#include "core/error.hpp"
#include "plan/model_spec.hpp"

using namespace braid;
using namespace braid::plan;

namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("braid_plan_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path) << text;
  return path.string();
}

}  // namespace

// Parameter counts of the presets against the released checkpoints.
TEST(ModelSpec, PresetParameterCounts) {
  struct Row {
    const char* name;
    double params;
  } rows[] = {
      {"gpt2-124m", 124439808},      // GPT-2 small with tied head and position table
      {"llama3-8b", 8030261248},     // Llama 3 8B
      {"llama3-70b", 70553706496},   // Llama 3 70B
      {"llama3-405b", 405853388800}, // Llama 3 405B
  };
  for (auto& r : rows) EXPECT_DOUBLE_EQ(load_model(r.name).total_params(), r.params) << r.name;
}

TEST(ModelSpec, FlopsPerToken) {
  auto m = load_model("llama3-8b");
  // Matmul weights: 32 layers × 218,103,808 plus the 128256 × 4096 output layer.
  double matmul = 32.0 * 218103808 + 128256.0 * 4096;
  EXPECT_DOUBLE_EQ(m.matmul_params(), matmul);
  EXPECT_DOUBLE_EQ(flops_per_token_6n(m), 6.0 * 8030261248);
  // PaLM: 6N + 12·L·H·Q·T with H·Q = 4096, T = 8192.
  EXPECT_DOUBLE_EQ(flops_per_token_palm(m, 8192), 6.0 * matmul + 12.0 * 32 * 4096 * 8192);
  // Forward of a layer: 2 per weight plus 4·T·H·Q for scores and values.
  double fwd = 2.0 * 218103808 + 4.0 * 8192 * 4096;
  EXPECT_DOUBLE_EQ(layer_forward_flops_per_token(m, 8192), fwd);
  EXPECT_DOUBLE_EQ(layer_hardware_flops_per_token(m, 8192, Recompute::None), 3 * fwd);
  EXPECT_DOUBLE_EQ(layer_hardware_flops_per_token(m, 8192, Recompute::Selective), 3 * fwd + 4.0 * 8192 * 4096);
  EXPECT_DOUBLE_EQ(layer_hardware_flops_per_token(m, 8192, Recompute::Full), 4 * fwd);
  // PaLM's count per token equals the layers' and output layer's 3 × forward.
  EXPECT_DOUBLE_EQ(flops_per_token_palm(m, 8192), 32 * 3 * fwd + 3 * output_forward_flops_per_token(m));
}

TEST(ModelSpec, UnknownPresetListsThePresets) {
  try {
    load_model("llama9");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("llama9"), std::string::npos);
    EXPECT_NE(e.hint().find("llama3-8b"), std::string::npos);
    EXPECT_NE(e.hint().find("example"), std::string::npos);
  }
}

TEST(ModelSpec, UnknownKeyInModelFileIsNamed) {
  auto path = write_temp("typo.toml",
                         "[model]\nlayers = 2\nd_model = 64\nheads = 4\nvocab = 100\ncontext = 32\nffm = 256\n");
  try {
    load_model(path);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.ffm"), std::string::npos);
    EXPECT_NE(e.hint().find("model.ffn"), std::string::npos);
  }
}

TEST(ModelSpec, MissingKeyAndBadShapes) {
  EXPECT_THROW(load_model(write_temp("missing.toml", "[model]\nlayers = 2\nd_model = 64\nheads = 4\nvocab = 100\n")),
               ConfigError);
  // heads must divide d_model; kv_heads must divide heads
  EXPECT_THROW(load_model(write_temp("heads.toml",
                                     "[model]\nlayers = 2\nd_model = 64\nheads = 5\nvocab = 100\ncontext = 8\n")),
               ConfigError);
  EXPECT_THROW(load_model(write_temp("kv.toml", "[model]\nlayers = 2\nd_model = 64\nheads = 4\nkv_heads = 3\n"
                                                "vocab = 100\ncontext = 8\n")),
               ConfigError);
  EXPECT_THROW(load_model("/nonexistent/model.toml"), ConfigError);
}

// A braid training config: [model] is read with the engine's keys and
// defaults, the engine's other sections are left to it.
TEST(ModelSpec, ReadsTheModelSectionOfATrainingConfig) {
  auto path = write_temp("train.toml",
                         "[model]\nvocab_size = 256\ncontext = 128\nlayers = 4\nwidth = 128\nheads = 4\n"
                         "init_std = 0.02\n[train]\nsteps = 100\n[data]\npaths = [\"x\"]\n");
  auto m = load_model(path);
  EXPECT_EQ(m.layers, 4);
  EXPECT_EQ(m.d_model, 128);
  EXPECT_EQ(m.ffn, 4 * 128);  // mlp_ratio 4
  EXPECT_EQ(m.kv_heads, 4);
  EXPECT_EQ(m.context, 128);
  EXPECT_EQ(m.vocab, 256);
  EXPECT_EQ(m.ffn_kind, FfnKind::Gelu);
  // braid's GPT: wte, wpe, 4 blocks with biases, final LayerNorm, tied head.
  // Per layer: QKV, projection, MLP in and out (12·C²), their biases (9·C) and two LayerNorms (4·C).
  double per_layer = 12.0 * 128 * 128 + 13.0 * 128;
  EXPECT_DOUBLE_EQ(m.total_params(), 256.0 * 128 + 128.0 * 128 + 4 * per_layer + 2 * 128);
  // Missing keys take the engine's defaults, mlp_ratio scales the MLP.
  auto defaults = load_model(write_temp("train2.toml", "[model]\nmlp_ratio = 2\n[train]\nsteps = 1\n"));
  EXPECT_EQ(defaults.layers, 4);
  EXPECT_EQ(defaults.d_model, 128);
  EXPECT_EQ(defaults.ffn, 256);
}

// "example" is braid's example training config; when it is absent the error says where it looked.
TEST(ModelSpec, ExampleModelIsTheExampleTrainingConfig) {
  bool present = std::filesystem::exists(std::string(BRAID_SOURCE_DIR) + "/examples/default.toml") ||
                 std::filesystem::exists("examples/default.toml");
  if (present) {
    auto m = load_model("example");
    EXPECT_EQ(m.name, "example");
    EXPECT_GT(m.total_params(), 0);
  } else {
    try {
      load_model("example");
      FAIL();
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("examples/default.toml"), std::string::npos);
    }
  }
}

TEST(ModelSpec, RecomputeNames) {
  EXPECT_EQ(parse_recompute("full"), Recompute::Full);
  EXPECT_EQ(to_string(Recompute::Selective), "selective");
  EXPECT_THROW(parse_recompute("some"), ConfigError);
}
