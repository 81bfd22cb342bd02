#pragma once
// Reading environment variables with validation: a malformed value is a
// ConfigError naming the variable, never a silent default.
#include <cstdint>
#include <optional>
#include <string>

namespace braid::env {

std::optional<std::string> get(const char* name);
std::string get_or(const char* name, const std::string& def);
int64_t get_int(const char* name, int64_t def);
double get_double(const char* name, double def);
bool get_bool(const char* name, bool def);

// A stable id for this host (hostname plus boot id), used to decide which
// peers can share memory. BRAID_HOST_ID overrides it (tests use this to make
// one machine look like several hosts).
std::string host_id();

}  // namespace braid::env
