#include "train/token_dataset.hpp"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"

namespace braid::train {
namespace fs = std::filesystem;

std::vector<std::string> expand_data_paths(const DataConfig& data) {
  std::vector<std::string> files;
  for (const auto& p : data.paths) {
    std::error_code ec;
    auto st = fs::status(p, ec);
    if (ec || !fs::exists(st))
      throw ConfigError(fmt::format("data file '{}' does not exist", p),
                        "check data.paths (the example uses /usr/share/games/fortunes from "
                        "Debian's 'fortunes' package: run scripts/setup)");
    if (fs::is_directory(st)) {
      std::vector<std::string> inside;
      for (const auto& e : fs::directory_iterator(p)) {
        // Symbolic links are skipped: in fortunes/ every foo.u8 points at foo.
        if (e.is_symlink() || !e.is_regular_file()) continue;
        std::string name = e.path().filename().string();
        bool excluded = false;
        for (const auto& g : data.exclude)
          if (fnmatch(g.c_str(), name.c_str(), 0) == 0) excluded = true;
        if (!excluded) inside.push_back(e.path().string());
      }
      std::sort(inside.begin(), inside.end());
      if (inside.empty())
        throw ConfigError(fmt::format("data directory '{}' has no files to read", p),
                          "check data.paths and data.exclude");
      files.insert(files.end(), inside.begin(), inside.end());
    } else {
      files.push_back(p);
    }
  }
  return files;
}

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError(fmt::format("cannot read data file '{}'", path), "check its permissions");
  f.seekg(0, std::ios::end);
  auto n = static_cast<size_t>(f.tellg());
  f.seekg(0);
  std::vector<char> buf(n);
  if (n && !f.read(buf.data(), static_cast<std::streamsize>(n)))
    throw IoError(fmt::format("reading data file '{}' failed", path));
  return buf;
}

}  // namespace

TokenDataset TokenDataset::load(const DataConfig& data, int64_t context, int64_t vocab_size) {
  auto files = expand_data_paths(data);
  std::vector<uint16_t> tokens;
  for (const auto& path : files) {
    auto bytes = read_file(path);
    if (data.format == "bytes") {
      tokens.insert(tokens.end(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    reinterpret_cast<const unsigned char*>(bytes.data()) + bytes.size());
    } else {
      if (bytes.size() % 2 != 0)
        throw CorruptData(fmt::format("token file '{}' has an odd number of bytes ({})", path,
                                      bytes.size()),
                          "data.format = 'uint16' expects little-endian 16-bit token ids");
      size_t first = tokens.size();
      tokens.resize(first + bytes.size() / 2);
      for (size_t i = 0; i < bytes.size() / 2; ++i)
        tokens[first + i] = static_cast<uint16_t>(static_cast<unsigned char>(bytes[2 * i]) |
                                                  (static_cast<unsigned char>(bytes[2 * i + 1]) << 8));
    }
  }
  std::string what = files.size() == 1 ? "'" + files[0] + "'" : fmt::format("{} files", files.size());
  auto ds = from_tokens(std::move(tokens), data.val_fraction, context, vocab_size, what);
  ds.files_ = std::move(files);
  return ds;
}

TokenDataset TokenDataset::from_tokens(std::vector<uint16_t> tokens, double val_fraction,
                                       int64_t context, int64_t vocab_size, const std::string& what) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] >= vocab_size)
      throw ConfigError(fmt::format("data {} holds token id {} at position {}, outside model.vocab_size = {}",
                                    what, tokens[i], i, vocab_size),
                        "raise model.vocab_size above the largest token id");
  TokenDataset ds;
  const size_t window = static_cast<size_t>(context) + 1;
  size_t val = static_cast<size_t>(std::floor(static_cast<double>(tokens.size()) * val_fraction));
  ds.train_size_ = tokens.size() - val;
  if (ds.train_size_ < window)
    throw ConfigError(fmt::format("data {} has {} training tokens, fewer than one context window "
                                  "(model.context + 1 = {})",
                                  what, ds.train_size_, window),
                      "use more data or a smaller model.context");
  if (val_fraction > 0 && val < window)
    throw ConfigError(fmt::format("the validation split of data {} has {} tokens, fewer than one "
                                  "context window (model.context + 1 = {})",
                                  what, val, window),
                      "raise data.val_fraction, use more data, lower model.context, or set "
                      "data.val_fraction = 0 to skip validation");
  ds.tokens_ = std::move(tokens);
  return ds;
}

}  // namespace braid::train
