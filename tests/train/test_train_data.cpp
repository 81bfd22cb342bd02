// Configuration validation, data loading and its errors, and the sampler:
// determinism, rank sharding equal to one big batch, save and restore.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/config.hpp"
#include "core/error.hpp"
#include "train/batch_sampler.hpp"
#include "train/token_dataset.hpp"
#include "train/train_config.hpp"

namespace braid::train {
namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/braid_train_data_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name, const std::string& content) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs `fn`, expects a ConfigError whose message (what + hint) contains every needle.
template <typename Fn>
void expect_config_error(Fn fn, std::vector<std::string> needles) {
  try {
    fn();
    FAIL() << "no error thrown";
  } catch (const ConfigError& e) {
    std::string text = e.describe();
    for (const auto& n : needles) EXPECT_NE(text.find(n), std::string::npos) << "'" << n << "' not in: " << text;
    EXPECT_FALSE(e.hint().empty()) << text;
  }
}

TrainConfig parse(const std::string& toml) {
  auto doc = Config::from_string(toml, "job.toml");
  return TrainConfig::from(doc);
}

const char* kMinimal = "[data]\npaths = [\"/tmp/x\"]\n";

TEST(TrainConfig, DefaultsAndOverrides) {
  auto doc = Config::from_string(kMinimal, "job.toml");
  doc.apply_override("optim.lr=3e-4");
  doc.apply_override("parallel.bucket_size=\"1M\"");
  doc.apply_override("model.layers=2");
  auto c = TrainConfig::from(doc);
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.parallel.bucket_bytes, 1u << 20);
  EXPECT_EQ(c.model.layers, 2);
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.data.format, "bytes");
}

TEST(TrainConfig, ResolvedTomlRoundTrips) {
  auto c = parse(std::string(kMinimal) + "[train]\nsample_prompt = \"Q: \\\"why\\\"\\n\"\n[optim]\neps = 1e-9\n");
  auto again = Config::from_string(c.to_toml(), "resolved.toml");
  auto c2 = TrainConfig::from(again);
  EXPECT_EQ(c2.to_toml(), c.to_toml());
  EXPECT_EQ(c2.train.sample_prompt, "Q: \"why\"\n");
  EXPECT_DOUBLE_EQ(c2.optim.eps, 1e-9);
}

TEST(TrainConfig, UnknownKeyIsNamed) {
  expect_config_error([] { parse(std::string(kMinimal) + "[optim]\nlearning_rate = 1e-3\n"); },
                      {"optim.learning_rate"});
  expect_config_error([] { parse(std::string(kMinimal) + "[model]\nlayer = 2\n"); }, {"model.layer", "model.layers"});
}

TEST(TrainConfig, BadValuesNameKeyAndAllowedValues) {
  expect_config_error([] { parse("[data]\npaths = [\"/tmp/x\"]\nformat = \"utf8\"\n"); },
                      {"data.format", "bytes", "uint16"});
  expect_config_error([] { parse(std::string(kMinimal) + "[model]\nlayers = 0\n"); }, {"model.layers", "allowed"});
  expect_config_error([] { parse(std::string(kMinimal) + "[model]\nwidth = 100\nheads = 3\n"); },
                      {"model.width", "model.heads"});
  expect_config_error([] { parse(std::string(kMinimal) + "[parallel]\nbucket_size = \"25Q\"\n"); },
                      {"parallel.bucket_size"});
  expect_config_error([] { parse(std::string(kMinimal) + "[parallel]\nalgo = \"magic\"\n"); },
                      {"parallel.algo", "ring"});
  expect_config_error([] { parse(std::string(kMinimal) + "[optim]\nlr = \"fast\"\n"); }, {"optim.lr"});
  expect_config_error([] { parse("[model]\nlayers = 2\n"); }, {"data.paths"});
  expect_config_error([] { parse(std::string(kMinimal) + "[model]\nvocab_size = 300\n"); },
                      {"model.vocab_size", "256"});
}

TEST(TokenDataset, MissingFileIsAClearError) {
  DataConfig d;
  d.paths = {"/nonexistent/braid/corpus.txt"};
  expect_config_error([&] { TokenDataset::load(d, 8, 256); }, {"/nonexistent/braid/corpus.txt", "does not exist"});
}

TEST(TokenDataset, DataShorterThanOneContextIsAClearError) {
  TempDir dir;
  DataConfig d;
  d.paths = {dir.file("short.txt", "hello")};
  d.val_fraction = 0;
  expect_config_error([&] { TokenDataset::load(d, 16, 256); }, {"short.txt", "5 training tokens", "model.context"});
  // Long enough to train on, but the validation tail is shorter than a window.
  d.paths = {dir.file("medium.txt", std::string(100, 'a'))};
  d.val_fraction = 0.05;
  expect_config_error([&] { TokenDataset::load(d, 16, 256); }, {"validation", "val_fraction"});
}

TEST(TokenDataset, BytesDirectoriesSkipLinksAndExcludedFiles) {
  TempDir dir;
  dir.file("b.txt", "BBBB");
  dir.file("a.txt", "AAAA");
  dir.file("a.dat", "binary index");
  fs::create_symlink(dir.path() + "/a.txt", dir.path() + "/a.u8");
  DataConfig d;
  d.paths = {dir.path()};
  d.val_fraction = 0.25;
  auto ds = TokenDataset::load(d, 1, 256);
  ASSERT_EQ(ds.files().size(), 2u);
  EXPECT_EQ(ds.size(), 8u);
  EXPECT_EQ(ds.train().size(), 6u);
  EXPECT_EQ(ds.val().size(), 2u);
  EXPECT_EQ(ds.train()[0], 'A');
  EXPECT_EQ(ds.val()[1], 'B');
}

TEST(TokenDataset, Uint16TokensAreLittleEndianAndChecked) {
  TempDir dir;
  std::string bytes;
  for (uint16_t t : {1, 258, 700, 3, 4, 5, 6, 7}) {
    bytes += static_cast<char>(t & 0xff);
    bytes += static_cast<char>(t >> 8);
  }
  DataConfig d;
  d.format = "uint16";
  d.val_fraction = 0;
  d.paths = {dir.file("tokens.bin", bytes)};
  auto ds = TokenDataset::load(d, 2, 1024);
  ASSERT_EQ(ds.size(), 8u);
  EXPECT_EQ(ds.train()[1], 258);
  EXPECT_EQ(ds.train()[2], 700);
  expect_config_error([&] { TokenDataset::load(d, 2, 512); }, {"700", "vocab_size"});
  d.paths = {dir.file("odd.bin", bytes + "x")};
  EXPECT_THROW(TokenDataset::load(d, 2, 1024), CorruptData);
}

TEST(BatchSampler, DeterministicAndInRange) {
  BatchSampler a(1000, 16, 8, 0, 1, 5), b(1000, 16, 8, 0, 1, 5), c(1000, 16, 8, 0, 1, 6);
  std::set<uint64_t> seen;
  for (int i = 0; i < 50; ++i) {
    auto oa = a.next_offsets(), ob = b.next_offsets(), oc = c.next_offsets();
    EXPECT_EQ(oa, ob);
    EXPECT_NE(oa, oc);
    for (auto o : oa) {
      EXPECT_LE(o + 17, 1000u);
      seen.insert(o);
    }
  }
  EXPECT_GT(seen.size(), 300u);  // spread over the data, not a few repeated windows
}

TEST(BatchSampler, RanksTogetherReadOneBigBatch) {
  for (int world : {2, 3, 4}) {
    BatchSampler single(5000, 8, 4 * world, 0, 1, 9);
    std::vector<BatchSampler> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(5000, 8, 4, r, world, 9);
    for (int step = 0; step < 10; ++step) {
      auto all = single.next_offsets();
      std::vector<uint64_t> joined;
      for (auto& s : ranks) {
        auto o = s.next_offsets();
        joined.insert(joined.end(), o.begin(), o.end());
      }
      EXPECT_EQ(joined, all) << "world " << world << " step " << step;
    }
  }
}

TEST(BatchSampler, PositionSavesAndRestores) {
  BatchSampler a(4096, 32, 4, 1, 2, 77);
  for (int i = 0; i < 7; ++i) a.next_offsets();
  auto saved = SamplerPosition::from_json(a.position().to_json());
  EXPECT_EQ(saved, a.position());
  auto expect = a.next_offsets();
  BatchSampler b(4096, 32, 4, 1, 2, 1);  // other seed: the restore brings the saved one
  b.restore(saved);
  EXPECT_EQ(b.next_offsets(), expect);
  EXPECT_THROW(SamplerPosition::from_json("{\"seed\": 1}"), CorruptData);
}

TEST(BatchSampler, EvalWindowsAreShardedAndCoverTheSplit) {
  auto all = eval_offsets(1000, 10, 7, 0, 1);
  ASSERT_EQ(all.size(), 7u);
  EXPECT_EQ(all.front(), 0u);
  EXPECT_EQ(all.back(), 1000u - 11u);
  std::vector<uint64_t> joined;
  for (int r = 0; r < 3; ++r) {
    auto part = eval_offsets(1000, 10, 7, r, 3);
    joined.insert(joined.end(), part.begin(), part.end());
  }
  std::sort(joined.begin(), joined.end());
  EXPECT_EQ(joined, all);
}

TEST(BatchSampler, GatherWindowsCopiesContextPlusOne) {
  std::vector<uint16_t> tokens(100);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i);
  std::vector<uint64_t> offsets = {0, 50, 95};
  std::vector<int64_t> out(3 * 5);
  gather_windows(tokens, offsets, 4, out.data());
  EXPECT_EQ(out[5], 50);
  EXPECT_EQ(out[14], 99);
  offsets = {96};
  EXPECT_THROW(gather_windows(tokens, offsets, 4, out.data()), Error);
}

}  // namespace
}  // namespace braid::train
