#pragma once
// Reading quantities with units ("400 Gbit/s", "80 GiB", "5 us") from a
// validated Config: the key is marked as read, and a bad value is an error
// that names the file and the key.
#include <string>
#include <vector>

#include "core/config.hpp"

namespace braid::plan {

double read_rate(Config& c, const std::string& key, double def);
double read_size(Config& c, const std::string& key, double def);
double read_duration(Config& c, const std::string& key, double def);
// A plain number (FLOP/s) or a string with a unit ("989 TFLOP/s").
double read_flops(Config& c, const std::string& key, double def);

}  // namespace braid::plan

namespace braid::plan {

// Names of the keys of the table at `path` ("" for the top level), in file order.
std::vector<std::string> table_keys(const Config& c, const std::string& path);

}  // namespace braid::plan
