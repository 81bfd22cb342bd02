#pragma once
// The training corpus as one sequence of token ids, split into a training part
// and a validation tail. Byte-level text gives ids 0..255; token files are
// little-endian uint16 (the nanoGPT / llm.c convention). No LibTorch here.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "train/train_config.hpp"

namespace braid::train {

class TokenDataset {
 public:
  // Reads every file named by `data` (directories expanded, exclusions
  // applied) and checks that both splits hold at least one window of
  // context + 1 tokens and that every id is below vocab_size.
  // Throws ConfigError / IoError with a hint on missing or too-short data.
  static TokenDataset load(const DataConfig& data, int64_t context, int64_t vocab_size);
  // For tests and tools: a dataset from tokens already in memory.
  static TokenDataset from_tokens(std::vector<uint16_t> tokens, double val_fraction,
                                  int64_t context, int64_t vocab_size,
                                  const std::string& what = "<memory>");

  std::span<const uint16_t> train() const { return {tokens_.data(), train_size_}; }
  std::span<const uint16_t> val() const {
    return {tokens_.data() + train_size_, tokens_.size() - train_size_};
  }
  const std::vector<std::string>& files() const { return files_; }
  size_t size() const { return tokens_.size(); }

 private:
  std::vector<uint16_t> tokens_;
  size_t train_size_ = 0;
  std::vector<std::string> files_;
};

// The files a DataConfig names, in the order they are read.
std::vector<std::string> expand_data_paths(const DataConfig& data);

}  // namespace braid::train
