#include "core/config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

#include "core/error.hpp"

namespace braid {

struct Config::Doc {
  toml::table table;
};

Config::Config() : doc_(std::make_unique<Doc>()) {}
Config::~Config() = default;
Config::Config(Config&&) noexcept = default;
Config& Config::operator=(Config&&) noexcept = default;

Config Config::from_string(const std::string& text, const std::string& source) {
  Config c;
  c.source_ = source;
  try {
    c.doc_->table = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw ConfigError(fmt::format("{}:{}:{}: {}", source, b.line, b.column, e.description()),
                      "fix the TOML syntax at that line");
  }
  return c;
}

Config Config::from_file(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    throw ConfigError("cannot open config file '" + path + "'",
                      "check the path; examples/default.toml is a working example");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_string(ss.str(), path);
}

namespace {

// Walks "a.b.c" into the table; returns nullptr if absent.
const toml::node* find(const toml::table& t, const std::string& key) {
  return t.at_path(key).node();
}

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : key) {
    if (c == '.') { parts.push_back(cur); cur.clear(); } else cur += c;
  }
  parts.push_back(cur);
  return parts;
}

void collect_keys(const toml::table& t, const std::string& prefix, std::vector<std::string>& out) {
  for (auto&& [k, v] : t) {
    std::string full = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (auto* sub = v.as_table()) collect_keys(*sub, full, out);
    else out.push_back(full);
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

void Config::apply_override(const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("bad --set '" + assignment + "'", "write --set section.key=value");
  std::string key = assignment.substr(0, eq);
  std::string value = assignment.substr(eq + 1);
  toml::table parsed;
  bool ok = true;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    ok = false;
  }
  auto parts = split_key(key);
  toml::table* t = &doc_->table;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    auto* n = t->get(parts[i]);
    if (!n) {
      t->insert(parts[i], toml::table{});
      n = t->get(parts[i]);
    }
    if (!n->is_table())
      throw ConfigError("--set " + key + ": '" + parts[i] + "' is a value, not a section");
    t = n->as_table();
  }
  if (ok) t->insert_or_assign(parts.back(), *parsed.get("v"));
  else t->insert_or_assign(parts.back(), value);
}

bool Config::has(const std::string& key) const { return find(doc_->table, key) != nullptr; }

int64_t Config::get_int(const std::string& key, int64_t def, int64_t min, int64_t max) {
  used_.insert(key);
  auto* n = find(doc_->table, key);
  if (!n) return def;
  std::optional<int64_t> v = n->value<int64_t>();
  if (!v || !n->is_integer())
    throw ConfigError(fmt::format("{}: '{}' must be an integer", source_, key));
  if (*v < min || *v > max)
    throw ConfigError(fmt::format("{}: '{}' = {} is out of range", source_, key, *v),
                      fmt::format("allowed: {} to {}", min, max));
  return *v;
}

double Config::get_double(const std::string& key, double def, double min, double max) {
  used_.insert(key);
  auto* n = find(doc_->table, key);
  if (!n) return def;
  if (!n->is_number()) throw ConfigError(fmt::format("{}: '{}' must be a number", source_, key));
  double v = *n->value<double>();
  if (!(v >= min && v <= max))
    throw ConfigError(fmt::format("{}: '{}' = {} is out of range", source_, key, v),
                      fmt::format("allowed: {} to {}", min, max));
  return v;
}

bool Config::get_bool(const std::string& key, bool def) {
  used_.insert(key);
  auto* n = find(doc_->table, key);
  if (!n) return def;
  if (!n->is_boolean())
    throw ConfigError(fmt::format("{}: '{}' must be true or false", source_, key));
  return *n->value<bool>();
}

std::string Config::get_string(const std::string& key, const std::string& def) {
  used_.insert(key);
  auto* n = find(doc_->table, key);
  if (!n) return def;
  if (!n->is_string()) {
    // Accept numbers where a string is expected (e.g. --set zero=1), as text.
    if (n->is_integer()) return std::to_string(*n->value<int64_t>());
    throw ConfigError(fmt::format("{}: '{}' must be a string", source_, key));
  }
  return *n->value<std::string>();
}

std::string Config::get_choice(const std::string& key, const std::string& def,
                               const std::vector<std::string>& allowed) {
  std::string v = get_string(key, def);
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    throw ConfigError(fmt::format("{}: '{}' = '{}' is not allowed", source_, key, v),
                      "allowed values: " + list);
  }
  return v;
}

std::vector<std::string> Config::get_string_list(const std::string& key,
                                                 const std::vector<std::string>& def) {
  used_.insert(key);
  auto* n = find(doc_->table, key);
  if (!n) return def;
  if (n->is_string()) return {*n->value<std::string>()};
  auto* arr = n->as_array();
  if (!arr) throw ConfigError(fmt::format("{}: '{}' must be a list of strings", source_, key));
  std::vector<std::string> out;
  for (auto& e : *arr) {
    if (!e.is_string())
      throw ConfigError(fmt::format("{}: '{}' must be a list of strings", source_, key));
    out.push_back(*e.value<std::string>());
  }
  return out;
}

std::string Config::require_string(const std::string& key) {
  if (!has(key))
    throw ConfigError(fmt::format("{}: required key '{}' is missing", source_, key));
  return get_string(key, "");
}

void Config::accept_section(const std::string& prefix) { accepted_prefixes_.push_back(prefix); }

void Config::finish() const {
  std::vector<std::string> keys;
  collect_keys(doc_->table, "", keys);
  std::vector<std::string> unknown;
  for (auto& k : keys) {
    if (used_.count(k)) continue;
    bool accepted = false;
    for (auto& p : accepted_prefixes_)
      if (k == p || k.rfind(p + ".", 0) == 0) accepted = true;
    if (!accepted) unknown.push_back(k);
  }
  if (unknown.empty()) return;
  std::string msg = fmt::format("{}: unknown key{} ", source_, unknown.size() > 1 ? "s" : "");
  std::string hint;
  for (size_t i = 0; i < unknown.size(); ++i) {
    msg += (i ? ", '" : "'") + unknown[i] + "'";
    std::string best;
    size_t bestd = 4;
    for (auto& u : used_) {
      size_t d = edit_distance(unknown[i], u);
      if (d < bestd) { bestd = d; best = u; }
    }
    if (!best.empty()) hint += (hint.empty() ? "" : "; ") + ("did you mean '" + best + "'?");
  }
  if (hint.empty()) {
    hint = "known keys: ";
    size_t i = 0;
    for (auto& u : used_) hint += (i++ ? ", " : "") + u;
  }
  throw ConfigError(msg, hint);
}

std::string Config::to_toml() const {
  std::stringstream ss;
  ss << doc_->table;
  return ss.str() + "\n";
}

}  // namespace braid
