// Text form of FaultSpec and TransportChoice.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "core/bytes.hpp"
#include "core/error.hpp"
#include "net/mesh.hpp"

namespace braid::net {

namespace {

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

// "50ms", "2s", "100us", "1.5" (seconds), "1m" is minutes.
double parse_duration(const std::string& field, const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  std::string unit = trim(end);
  if (end == text.c_str() || !std::isfinite(v) || v < 0)
    throw ConfigError(fmt::format("bad duration '{}' for fault '{}'", text, field), "write e.g. 50ms, 2s or 100us");
  if (unit.empty() || unit == "s") return v;
  if (unit == "ms") return v * 1e-3;
  if (unit == "us") return v * 1e-6;
  if (unit == "ns") return v * 1e-9;
  if (unit == "m" || unit == "min") return v * 60;
  throw ConfigError(fmt::format("bad time unit in '{}' for fault '{}'", text, field), "use ns, us, ms, s or min");
}

std::vector<int> parse_ranks(const std::string& field, const std::string& text) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t plus = text.find_first_of("+/", start);
    std::string part = trim(text.substr(start, plus == std::string::npos ? std::string::npos : plus - start));
    char* end = nullptr;
    long r = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end || r < 0 || r > 1'000'000)
      throw ConfigError(fmt::format("bad rank '{}' in fault '{}'", part, field), "write ranks as e.g. 1 or 1+3+4");
    out.push_back(static_cast<int>(r));
    if (plus == std::string::npos) break;
    start = plus + 1;
  }
  return out;
}

std::string format_duration(double s) {
  if (s >= 1 && std::fmod(s, 1.0) == 0) return fmt::format("{}s", s);
  if (s * 1e3 >= 1) return fmt::format("{}ms", s * 1e3);
  return fmt::format("{}us", s * 1e6);
}

std::string join_ranks(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "+" : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

FaultSpec FaultSpec::parse(const std::string& text) {
  FaultSpec f;
  std::string last_list_field;  // "peers=1,2" is accepted as "peers=1+2"
  size_t start = 0;
  std::string t = trim(text);
  if (t.empty()) return f;
  while (start <= t.size()) {
    size_t comma = t.find(',', start);
    std::string item = trim(t.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    start = comma == std::string::npos ? t.size() + 1 : comma + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      if (!last_list_field.empty() && std::isdigit(static_cast<unsigned char>(item[0]))) {
        auto more = parse_ranks(last_list_field, item);
        auto& dst = last_list_field == "peers" ? f.peers : f.ranks;
        dst.insert(dst.end(), more.begin(), more.end());
        continue;
      }
      throw ConfigError(fmt::format("bad fault '{}' in '{}'", item, text), "write NAME=VALUE, e.g. latency=50ms");
    }
    std::string key = trim(item.substr(0, eq));
    std::string value = trim(item.substr(eq + 1));
    last_list_field.clear();
    if (key == "latency") {
      f.latency_s = parse_duration(key, value);
    } else if (key == "rate") {
      f.rate_bps = parse_bitrate(value);
    } else if (key == "drop_after") {
      f.drop_after_bytes = parse_bytes(value);
      if (f.drop_after_bytes == 0)
        throw ConfigError("fault drop_after=0 would drop every connection at once", "use a positive byte count");
    } else if (key == "stall") {
      f.stall_s = parse_duration(key, value);
    } else if (key == "stall_after") {
      f.stall_after_bytes = parse_bytes(value);
    } else if (key == "peers") {
      f.peers = parse_ranks(key, value);
      last_list_field = key;
    } else if (key == "ranks") {
      f.ranks = parse_ranks(key, value);
      last_list_field = key;
    } else {
      throw ConfigError(fmt::format("unknown fault '{}' in '{}'", key, text),
                        "known faults: latency, rate, drop_after, stall, stall_after, peers, ranks");
    }
  }
  return f;
}

std::string FaultSpec::to_string() const {
  std::vector<std::string> parts;
  if (latency_s > 0) parts.push_back("latency=" + format_duration(latency_s));
  if (rate_bps > 0) parts.push_back(fmt::format("rate={}bit", rate_bps));
  if (drop_after_bytes) parts.push_back(fmt::format("drop_after={}", drop_after_bytes));
  if (stall_s > 0) parts.push_back("stall=" + format_duration(stall_s));
  if (stall_after_bytes) parts.push_back(fmt::format("stall_after={}", stall_after_bytes));
  if (!peers.empty()) parts.push_back("peers=" + join_ranks(peers));
  if (!ranks.empty()) parts.push_back("ranks=" + join_ranks(ranks));
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? "," : "") + parts[i];
  return s;
}

bool FaultSpec::applies(int self, int peer) const {
  if (!any()) return false;
  if (!ranks.empty() && std::find(ranks.begin(), ranks.end(), self) == ranks.end()) return false;
  if (!peers.empty() && std::find(peers.begin(), peers.end(), peer) == peers.end()) return false;
  return true;
}

TransportChoice parse_transport(const std::string& name) {
  std::string n;
  for (char c : name) n.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (n.empty() || n == "auto") return TransportChoice::Auto;
  if (n == "tcp") return TransportChoice::Tcp;
  if (n == "shm") return TransportChoice::Shm;
  if (n == "inproc") return TransportChoice::Inproc;
  throw ConfigError(fmt::format("unknown transport '{}'", name), "use auto, tcp or shm");
}

}  // namespace braid::net
