#pragma once
// Human-friendly sizes: "64M", "256MiB", "8", "1.5G", and ranges "8:256M".
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace braid {

// Parses a byte size; suffixes K/M/G/T (binary, 1024-based), optional "iB"/"B".
// Throws ConfigError naming the text on bad input.
uint64_t parse_bytes(std::string_view text);
// "8:256M" -> 8, 16, 32, ... 256M (doubling); a single size gives one element;
// "a,b,c" gives exactly those sizes.
std::vector<uint64_t> parse_byte_sizes(std::string_view text);
// 65536 -> "64 KiB"
std::string human_bytes(double bytes);
// Parses a bit rate such as "100mbit", "1gbit", "10Gbps" into bits per second.
double parse_bitrate(std::string_view text);

}  // namespace braid
