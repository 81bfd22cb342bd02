#include "health/fault_injection.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <optional>

#include "core/error.hpp"

namespace braid::health {
namespace {

constexpr const char* kHint =
    "write KIND:key=value,... with KIND one of bitflip, slow, hang, crash, nan, e.g. "
    "bitflip:rank=1,step=40,target=params";

int64_t to_int(const std::string& spec, const std::string& key, const std::string& v) {
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end) throw ConfigError(fmt::format("fault '{}': {}={} is not an integer", spec, key, v), kHint);
  return x;
}

double to_double(const std::string& spec, const std::string& key, const std::string& v) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end) throw ConfigError(fmt::format("fault '{}': {}={} is not a number", spec, key, v), kHint);
  return x;
}

}  // namespace

const char* fault_kind_name(FaultKind k) {
  switch (k) {
    case FaultKind::BitFlip: return "bitflip";
    case FaultKind::Slow: return "slow";
    case FaultKind::Hang: return "hang";
    case FaultKind::Crash: return "crash";
    case FaultKind::Nan: return "nan";
  }
  return "?";
}

const char* flip_target_name(FlipTarget t) {
  switch (t) {
    case FlipTarget::Params: return "params";
    case FlipTarget::Grads: return "grads";
    case FlipTarget::Comm: return "comm";
  }
  return "?";
}

FaultSpec parse_fault_spec(const std::string& text) {
  FaultSpec f;
  f.text = text;
  const auto colon = text.find(':');
  const std::string kind = text.substr(0, colon);
  if (kind == "bitflip") f.kind = FaultKind::BitFlip;
  else if (kind == "slow") f.kind = FaultKind::Slow;
  else if (kind == "hang") f.kind = FaultKind::Hang;
  else if (kind == "crash") f.kind = FaultKind::Crash;
  else if (kind == "nan") f.kind = FaultKind::Nan;
  else throw ConfigError(fmt::format("fault '{}': unknown kind '{}'", text, kind), kHint);

  std::map<std::string, std::string> kv;
  if (colon != std::string::npos) {
    std::string rest = text.substr(colon + 1);
    size_t pos = 0;
    while (pos <= rest.size()) {
      size_t comma = rest.find(',', pos);
      std::string item = rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      if (!item.empty()) {
        auto eq = item.find('=');
        if (eq == std::string::npos || eq == 0)
          throw ConfigError(fmt::format("fault '{}': '{}' is not key=value", text, item), kHint);
        kv[item.substr(0, eq)] = item.substr(eq + 1);
      }
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  auto take = [&](const char* key) -> std::optional<std::string> {
    auto it = kv.find(key);
    if (it == kv.end()) return std::nullopt;
    std::string v = it->second;
    kv.erase(it);
    return v;
  };
  if (auto v = take("rank")) f.rank = static_cast<int>(to_int(text, "rank", *v));
  if (f.rank < 0) f.rank = 0;
  if (auto v = take("step")) f.step = to_int(text, "step", *v);
  const bool count_given = kv.count("count") > 0;
  if (auto v = take("count")) f.count = to_int(text, "count", *v);
  if (f.count < 1) throw ConfigError(fmt::format("fault '{}': count must be at least 1", text), kHint);
  if (f.step == 0 || f.step < -1)
    throw ConfigError(fmt::format("fault '{}': step {} (steps are counted from 1)", text, f.step), kHint);
  switch (f.kind) {
    case FaultKind::BitFlip: {
      std::string t = take("target").value_or("params");
      if (t == "params") f.target = FlipTarget::Params;
      else if (t == "grads") f.target = FlipTarget::Grads;
      else if (t == "comm") f.target = FlipTarget::Comm;
      else throw ConfigError(fmt::format("fault '{}': target '{}'", text, t), "target is params, grads or comm");
      if (auto v = take("index")) f.index = to_int(text, "index", *v);
      if (auto v = take("bit")) f.bit = static_cast<int>(to_int(text, "bit", *v));
      if (f.bit > 31) throw ConfigError(fmt::format("fault '{}': bit {} of a 32-bit element", text, f.bit), kHint);
      if (f.step < 0) throw ConfigError(fmt::format("fault '{}' needs step=N", text), kHint);
      break;
    }
    case FaultKind::Slow:
      f.factor = to_double(text, "factor", take("factor").value_or("2"));
      if (!(f.factor >= 1)) throw ConfigError(fmt::format("fault '{}': factor must be >= 1", text), kHint);
      if (f.step > 0 && !count_given) f.count = INT64_MAX / 4;  // from `step` on
      break;
    case FaultKind::Hang:
      if (auto v = take("seconds")) f.seconds = to_double(text, "seconds", *v);
      [[fallthrough]];
    case FaultKind::Crash:
    case FaultKind::Nan:
      if (f.step < 0) throw ConfigError(fmt::format("fault '{}' needs step=N", text), kHint);
      break;
  }
  if (!kv.empty())
    throw ConfigError(fmt::format("fault '{}': unknown key '{}' for {}", text, kv.begin()->first, kind), kHint);
  return f;
}

std::vector<FaultSpec> parse_fault_specs(const std::vector<std::string>& texts) {
  std::vector<FaultSpec> out;
  for (const auto& t : texts) out.push_back(parse_fault_spec(t));
  return out;
}

}  // namespace braid::health
