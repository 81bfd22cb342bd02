#pragma once
// The tiny corpus the training tests share: four pangrams, repeated, as byte
// tokens (vocabulary 256, context 16, 10% held out for validation).
#include <cstdint>
#include <string>
#include <vector>

#include "train/token_dataset.hpp"

namespace braid::train::test {

inline const TokenDataset& pangram_corpus() {
  static const TokenDataset ds = [] {
    std::string text;
    const char* lines[] = {"the quick brown fox jumps over the lazy dog. ", "pack my box with five dozen liquor jugs! ",
                           "how vexingly quick daft zebras jump; ", "sphinx of black quartz, judge my vow. "};
    for (int i = 0; i < 400; ++i) text += lines[(i * 7) % 4];
    std::vector<uint16_t> tokens(text.begin(), text.end());
    return TokenDataset::from_tokens(std::move(tokens), 0.1, 16, 256, "<pangrams>");
  }();
  return ds;
}

}  // namespace braid::train::test
