#pragma once
// A TOML document read through typed, validated getters. Every getter records
// the key it read; finish() then rejects any key nobody asked for, so a typo
// in a config file is an error that names the key instead of a silent default.
//
//   Config c = Config::from_file("job.toml");
//   c.apply_override("train.lr=3e-4");            // from --set
//   double lr = c.get_double("train.lr", 1e-3, 0.0, 10.0);
//   auto mode = c.get_choice("model.kind", "gpt", {"gpt", "mlp"});
//   c.finish();                                   // throws on unknown keys
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace braid {

class Config {
 public:
  Config();  // empty document
  ~Config();
  Config(Config&&) noexcept;
  Config& operator=(Config&&) noexcept;

  static Config from_file(const std::string& path);
  static Config from_string(const std::string& text, const std::string& source = "<string>");

  // "a.b.c=value": value is parsed as a TOML value (number, bool, string in
  // quotes, array); anything that does not parse is taken as a bare string.
  void apply_override(const std::string& assignment);

  bool has(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t def, int64_t min = INT64_MIN,
                  int64_t max = INT64_MAX);
  double get_double(const std::string& key, double def, double min = -1e308, double max = 1e308);
  bool get_bool(const std::string& key, bool def);
  std::string get_string(const std::string& key, const std::string& def);
  std::string get_choice(const std::string& key, const std::string& def,
                         const std::vector<std::string>& allowed);
  std::vector<std::string> get_string_list(const std::string& key,
                                           const std::vector<std::string>& def);
  // Required variants throw ConfigError when the key is absent.
  std::string require_string(const std::string& key);

  // Marks every key under `prefix` as known without reading it (for sections
  // handed to another component).
  void accept_section(const std::string& prefix);
  // Throws ConfigError naming the unknown keys (and the closest known key).
  void finish() const;

  // The document as TOML text (with overrides applied), for the run directory.
  std::string to_toml() const;
  const std::string& source() const { return source_; }

 private:
  struct Doc;
  std::unique_ptr<Doc> doc_;
  std::string source_;
  std::set<std::string> used_;
  std::vector<std::string> accepted_prefixes_;
};

}  // namespace braid
