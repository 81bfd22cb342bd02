#include "core/env.hpp"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "core/error.hpp"

namespace braid::env {

std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

std::string get_or(const char* name, const std::string& def) {
  auto v = get(name);
  return v ? *v : def;
}

int64_t get_int(const char* name, int64_t def) {
  auto v = get(name);
  if (!v || v->empty()) return def;
  char* end = nullptr;
  long long r = std::strtoll(v->c_str(), &end, 10);
  if (*end != '\0')
    throw ConfigError(std::string("environment variable ") + name + "='" + *v + "' is not an integer");
  return r;
}

double get_double(const char* name, double def) {
  auto v = get(name);
  if (!v || v->empty()) return def;
  char* end = nullptr;
  double r = std::strtod(v->c_str(), &end);
  if (*end != '\0')
    throw ConfigError(std::string("environment variable ") + name + "='" + *v + "' is not a number");
  return r;
}

bool get_bool(const char* name, bool def) {
  auto v = get(name);
  if (!v || v->empty()) return def;
  if (*v == "1" || *v == "true" || *v == "yes" || *v == "on") return true;
  if (*v == "0" || *v == "false" || *v == "no" || *v == "off") return false;
  throw ConfigError(std::string("environment variable ") + name + "='" + *v + "' is not a boolean",
                    "use 1/0, true/false, yes/no or on/off");
}

std::string host_id() {
  if (auto v = get("BRAID_HOST_ID")) return *v;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string id = host;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string b;
  if (boot >> b) id += "/" + b;
  return id;
}

}  // namespace braid::env
