#include "core/bytes.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "core/error.hpp"

namespace braid {
namespace {

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

}  // namespace

uint64_t parse_bytes(std::string_view text) {
  std::string s = lower(text);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  if (s.empty()) throw ConfigError("empty size", "write a size such as 4096, 64K, 16M or 1G");
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string suffix(end);
  while (!suffix.empty() && suffix.front() == ' ') suffix.erase(0, 1);
  if (end == s.c_str() || !std::isfinite(v) || v < 0)
    throw ConfigError("bad size '" + std::string(text) + "'",
                      "write a size such as 4096, 64K, 16M or 1G");
  double mul = 1;
  if (suffix == "" || suffix == "b") mul = 1;
  else if (suffix == "k" || suffix == "kb" || suffix == "kib") mul = 1024.0;
  else if (suffix == "m" || suffix == "mb" || suffix == "mib") mul = 1024.0 * 1024;
  else if (suffix == "g" || suffix == "gb" || suffix == "gib") mul = 1024.0 * 1024 * 1024;
  else if (suffix == "t" || suffix == "tb" || suffix == "tib") mul = 1024.0 * 1024 * 1024 * 1024;
  else
    throw ConfigError("bad size suffix in '" + std::string(text) + "'",
                      "use K, M, G or T (powers of 1024), e.g. 64M");
  return static_cast<uint64_t>(std::llround(v * mul));
}

std::vector<uint64_t> parse_byte_sizes(std::string_view text) {
  std::vector<uint64_t> out;
  auto colon = text.find(':');
  if (colon != std::string_view::npos) {
    uint64_t lo = parse_bytes(text.substr(0, colon));
    uint64_t hi = parse_bytes(text.substr(colon + 1));
    if (hi < lo)
      throw ConfigError("size range '" + std::string(text) + "' ends below its start",
                        "write LOW:HIGH, e.g. 8:256M");
    for (uint64_t s = lo; s <= hi; s = (s == 0 ? 1 : s * 2)) out.push_back(s);
    return out;
  }
  size_t start = 0;
  while (start <= text.size()) {
    auto comma = text.find(',', start);
    auto part = text.substr(start, comma == std::string_view::npos ? std::string_view::npos
                                                                  : comma - start);
    out.push_back(parse_bytes(part));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) { b /= 1024; ++u; }
  if (u == 0) return fmt::format("{:.0f} B", b);
  return fmt::format("{:.{}f} {}", b, b < 10 ? 2 : (b < 100 ? 1 : 0), units[u]);
}

double parse_bitrate(std::string_view text) {
  std::string s = lower(text);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string suffix(end);
  if (end == s.c_str() || v <= 0)
    throw ConfigError("bad bit rate '" + std::string(text) + "'", "write e.g. 100mbit or 1gbit");
  if (suffix.ends_with("ps")) suffix.resize(suffix.size() - 2);
  if (suffix.ends_with("it")) suffix.resize(suffix.size() - 2);  // "mbit" -> "mb"
  double mul;
  if (suffix == "" || suffix == "b") mul = 1;
  else if (suffix == "k" || suffix == "kb") mul = 1e3;
  else if (suffix == "m" || suffix == "mb") mul = 1e6;
  else if (suffix == "g" || suffix == "gb") mul = 1e9;
  else if (suffix == "t" || suffix == "tb") mul = 1e12;
  else throw ConfigError("bad bit-rate unit in '" + std::string(text) + "'", "use kbit, mbit, gbit or tbit");
  return v * mul;
}

}  // namespace braid
