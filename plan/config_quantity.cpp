#include "plan/config_quantity.hpp"

#include <fmt/format.h>

#include "core/error.hpp"
#include "plan/units.hpp"

namespace braid::plan {
namespace {

template <typename Parse>
double read_with(Config& c, const std::string& key, double def, Parse parse) {
  if (!c.has(key)) {
    c.get_string(key, "");  // marks the key as known
    return def;
  }
  std::string text;
  try {
    text = c.get_string(key, "");
  } catch (const ConfigError&) {
    // A float where a string with a unit was expected.
    throw ConfigError(fmt::format("{}: '{}' needs a unit", c.source(), key),
                      "write it as a string with a unit, e.g. \"400 Gbit/s\", \"80 GiB\" or \"5 us\"");
  }
  try {
    return parse(text);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: '{}': {}", c.source(), key, e.what()), e.hint());
  }
}

}  // namespace

double read_rate(Config& c, const std::string& key, double def) {
  return read_with(c, key, def, [](const std::string& t) { return parse_rate(t); });
}
double read_size(Config& c, const std::string& key, double def) {
  return read_with(c, key, def, [](const std::string& t) { return parse_size(t); });
}
double read_duration(Config& c, const std::string& key, double def) {
  return read_with(c, key, def, [](const std::string& t) { return parse_duration(t); });
}
double read_flops(Config& c, const std::string& key, double def) {
  if (c.has(key)) {
    try {
      return c.get_double(key, def, 0.0);
    } catch (const ConfigError&) {
      // not a number: a string with a unit, handled below
    }
  }
  return read_with(c, key, def, [](const std::string& t) { return parse_flops(t); });
}

}  // namespace braid::plan

#include <toml++/toml.h>

namespace braid::plan {

std::vector<std::string> table_keys(const Config& c, const std::string& path) {
  std::vector<std::string> keys;
  auto doc = toml::parse(c.to_toml());
  const toml::table* t = &doc;
  if (!path.empty()) t = doc.at_path(path).as_table();
  if (!t) return keys;
  for (auto&& [k, v] : *t) keys.emplace_back(k.str());
  return keys;
}

}  // namespace braid::plan
