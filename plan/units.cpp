#include "plan/units.hpp"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <utility>

#include "core/error.hpp"

namespace braid::plan {
namespace {

struct NumberAndUnit {
  double value;
  std::string unit;  // spaces removed
};

NumberAndUnit split_number(std::string_view text, const char* example) {
  std::string s(text);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || !std::isfinite(v))
    throw ConfigError(fmt::format("'{}' does not start with a number", text),
                      fmt::format("write e.g. \"{}\"", example));
  if (v < 0)
    throw ConfigError(fmt::format("'{}' is negative", text),
                      fmt::format("write e.g. \"{}\"", example));
  std::string unit;
  for (const char* p = end; *p; ++p)
    if (!std::isspace(static_cast<unsigned char>(*p))) unit += *p;
  return {v, unit};
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Multiplier of an SI or IEC prefix ("", "k", "M", "Gi", ...); case of the
// first letter does not matter (nobody means millibits), nullopt if unknown.
std::optional<double> prefix_multiplier(const std::string& prefix) {
  std::string p = lower(prefix);
  static const std::array<std::pair<const char*, double>, 11> table{{
      {"", 1.0},
      {"k", 1e3},
      {"m", 1e6},
      {"g", 1e9},
      {"t", 1e12},
      {"p", 1e15},
      {"ki", 1024.0},
      {"mi", 1024.0 * 1024},
      {"gi", 1024.0 * 1024 * 1024},
      {"ti", 1024.0 * 1024 * 1024 * 1024},
      {"pi", 1024.0 * 1024 * 1024 * 1024 * 1024},
  }};
  for (auto& [name, mul] : table)
    if (p == name) return mul;
  return std::nullopt;
}

// Strips the first matching suffix from `unit`; returns whether one matched.
bool strip_suffix(std::string& unit, std::initializer_list<std::string_view> suffixes) {
  for (auto suffix : suffixes)
    if (ends_with(unit, suffix)) {
      unit.resize(unit.size() - suffix.size());
      return true;
    }
  return false;
}

std::string trim_zeros(std::string s) {
  if (s.find('.') == std::string::npos) return s;
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// Value scaled into [1, 1000) with the matching prefix, three significant digits.
std::string with_prefix(double x, std::string_view unit, bool space = true) {
  static const std::array<std::pair<double, const char*>, 7> prefixes{{
      {1e18, "E"}, {1e15, "P"}, {1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}, {1.0, ""}}};
  if (x == 0) return fmt::format("0{}{}", space ? " " : "", unit);
  for (auto& [scale, name] : prefixes)
    if (std::fabs(x) >= scale * 0.9995)
      return fmt::format("{}{}{}{}", format_sig3(x / scale), space ? " " : "", name, unit);
  if (std::fabs(x) >= 1e-3) return fmt::format("{}{}{}", format_sig3(x), space ? " " : "", unit);
  return fmt::format("{:.2e}{}{}", x, space ? " " : "", unit);
}

}  // namespace

std::string format_sig3(double x) {
  if (!std::isfinite(x)) return x > 0 ? "inf" : (x < 0 ? "-inf" : "nan");
  double a = std::fabs(x);
  if (a >= 1000) return fmt::format("{:.0f}", x);
  if (a >= 100) return trim_zeros(fmt::format("{:.0f}", x));
  if (a >= 10) return trim_zeros(fmt::format("{:.1f}", x));
  if (a >= 1) return trim_zeros(fmt::format("{:.2f}", x));
  if (a == 0) return "0";
  return trim_zeros(fmt::format("{:.3g}", x));
}

std::string format_thousands(int64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') out += ',';
    out += digits[i];
  }
  return out;
}

double parse_rate(std::string_view text) {
  const char* example = "400 Gbit/s";
  auto [v, unit] = split_number(text, example);
  double base;
  if (strip_suffix(unit, {"bits/s", "bit/s", "bps", "b/s"})) base = 1.0 / 8.0;
  else if (strip_suffix(unit, {"bytes/s", "byte/s", "Bps", "B/s"})) base = 1.0;
  else
    throw ConfigError(fmt::format("'{}' is not a rate", text),
                      "write bits as \"400 Gbit/s\" or \"10 Gbps\", bytes as \"450 GB/s\"");
  auto mul = prefix_multiplier(unit);
  if (!mul)
    throw ConfigError(fmt::format("unknown prefix '{}' in '{}'", unit, text),
                      "use k, M, G, T, P (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024)");
  return v * *mul * base;
}

double parse_size(std::string_view text) {
  auto [v, unit] = split_number(text, "80 GiB");
  if (!strip_suffix(unit, {"bytes", "byte", "B"}))
    throw ConfigError(fmt::format("'{}' is not a size in bytes", text),
                      "write e.g. \"80 GiB\" (powers of 1024) or \"141 GB\" (powers of 1000)");
  auto mul = prefix_multiplier(unit);
  if (!mul)
    throw ConfigError(fmt::format("unknown prefix '{}' in '{}'", unit, text),
                      "use k, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024)");
  return v * *mul;
}

double parse_duration(std::string_view text) {
  auto [v, unit] = split_number(text, "5 us");
  static const std::array<std::pair<const char*, double>, 10> table{{
      {"ns", 1e-9},
      {"us", 1e-6},
      {"\xc2\xb5s", 1e-6},  // µs
      {"ms", 1e-3},
      {"s", 1.0},
      {"min", 60.0},
      {"h", 3600.0},
      {"day", 86400.0},
      {"days", 86400.0},
      {"d", 86400.0},
  }};
  for (auto& [name, mul] : table)
    if (unit == name) return v * mul;
  throw ConfigError(fmt::format("'{}' is not a duration", text),
                    "write e.g. \"5 us\", \"30 ms\" or \"1.5 s\"");
}

double parse_flops(std::string_view text) {
  auto [v, unit] = split_number(text, "989 TFLOP/s");
  if (unit.empty()) return v;
  std::string u = unit;
  if (!strip_suffix(u, {"FLOP/s", "flop/s", "FLOPS", "flops", "FLOPs", "Flop/s"}))
    throw ConfigError(fmt::format("'{}' is not a FLOP rate", text),
                      "write e.g. \"989 TFLOP/s\" or a plain number of FLOP/s such as 989e12");
  auto mul = prefix_multiplier(u);
  if (!mul)
    throw ConfigError(fmt::format("unknown prefix '{}' in '{}'", u, text),
                      "use G, T or P, e.g. \"989 TFLOP/s\"");
  return v * *mul;
}

double parse_count(std::string_view text) {
  auto [v, unit] = split_number(text, "15.6T");
  auto mul = prefix_multiplier(unit);
  if (!mul)
    throw ConfigError(fmt::format("'{}' is not a count", text),
                      "write a number with an optional K, M, G, T (powers of 1000) or "
                      "Ki, Mi, Gi, Ti (powers of 1024), e.g. 15.6T or 16Mi");
  return v * *mul;
}

std::string format_bits_per_s(double bytes_per_s) {
  if (std::isinf(bytes_per_s)) return "unlimited";
  return with_prefix(bytes_per_s * 8.0, "bit/s");
}
std::string format_bytes_per_s(double bytes_per_s) {
  if (std::isinf(bytes_per_s)) return "unlimited";
  return with_prefix(bytes_per_s, "B/s");
}
std::string format_size(double bytes) { return with_prefix(bytes, "B"); }
std::string format_size_gib(double bytes) {
  return fmt::format("{} GiB", format_sig3(bytes / (1024.0 * 1024 * 1024)));
}
std::string format_count(double n) {
  static const std::array<std::pair<double, const char*>, 5> prefixes{{
      {1e15, "P"}, {1e12, "T"}, {1e9, "B"}, {1e6, "M"}, {1e3, "K"}}};
  for (auto& [scale, name] : prefixes)
    if (std::fabs(n) >= scale * 0.9995) return format_sig3(n / scale) + name;
  return format_sig3(n);
}
std::string format_flops(double f) { return with_prefix(f, "FLOP/s"); }

std::string format_duration(double s) {
  if (!std::isfinite(s)) return "never";
  if (s < 1e-3) return format_sig3(s * 1e6) + " us";
  if (s < 1.0) return format_sig3(s * 1e3) + " ms";
  if (s < 120.0) return format_sig3(s) + " s";
  if (s < 2 * 3600.0) return format_sig3(s / 60.0) + " min";
  if (s < 2 * 86400.0) return format_sig3(s / 3600.0) + " h";
  return format_sig3(s / 86400.0) + " days";
}

}  // namespace braid::plan
