#pragma once
// Quantities with units, as people write them in cluster files and on the
// command line: "400 Gbit/s", "450 GB/s", "80 GiB", "989 TFLOP/s", "5 us",
// "15.6T" tokens. Inside plan/ every rate is bytes per second, every size is
// bytes, every time is seconds and every count is a plain number.
//
// The b/B distinction is the one that matters: a lowercase "b" or "bit" is a
// bit, an uppercase "B" is a byte ("Gbps" = gigabits, "GB/s" = gigabytes).
// Decimal prefixes (k, M, G, T, P) are powers of 1000; binary ones (Ki, Mi,
// Gi, Ti) powers of 1024. Every parser throws ConfigError naming the text and
// showing a correct example.
#include <cstdint>
#include <string>
#include <string_view>

namespace braid::plan {

// Bytes per second from "400 Gbit/s", "10Gbps", "450 GB/s", "25 GiB/s".
double parse_rate(std::string_view text);
// Bytes from "80 GiB", "141 GB", "1.6 TB", "512 MiB".
double parse_size(std::string_view text);
// Seconds from "5 us", "5µs", "30 ms", "1.5 s", "200 ns".
double parse_duration(std::string_view text);
// FLOP/s from "989 TFLOP/s", "2.25 PFLOPS", "989e12".
double parse_flops(std::string_view text);
// A count with an optional prefix: "2048", "15.6T" (decimal), "16Mi" (binary).
double parse_count(std::string_view text);

// Formatting for tables: three significant digits and a unit.
std::string format_bits_per_s(double bytes_per_s);  // "12.9 Tbit/s"
std::string format_bytes_per_s(double bytes_per_s);  // "450 GB/s"
std::string format_size(double bytes);                // "1.62 TB" (decimal)
std::string format_size_gib(double bytes);            // "71.3 GiB"
std::string format_duration(double seconds);          // "312 ms", "6.52 s", "70.2 days"
std::string format_count(double n);                   // "16.8M", "405B", "1.62T"
std::string format_flops(double flops_per_s);         // "989 TFLOP/s"
// 16384 -> "16,384"
std::string format_thousands(int64_t n);
// Three significant digits, no unit ("0.412", "12.9", "4096").
std::string format_sig3(double x);

}  // namespace braid::plan
