#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "plan/units.hpp"

using namespace braid;
using namespace braid::plan;

TEST(Units, RatesDistinguishBitsFromBytes) {
  EXPECT_DOUBLE_EQ(parse_rate("400 Gbit/s"), 50e9);
  EXPECT_DOUBLE_EQ(parse_rate("10Gbps"), 1.25e9);
  EXPECT_DOUBLE_EQ(parse_rate("100 Mb/s"), 12.5e6);
  EXPECT_DOUBLE_EQ(parse_rate("450 GB/s"), 450e9);
  EXPECT_DOUBLE_EQ(parse_rate("2 GBps"), 2e9);
  EXPECT_DOUBLE_EQ(parse_rate("1 GiB/s"), 1024.0 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(parse_rate("12 Tbit/s"), 1.5e12);
  EXPECT_DOUBLE_EQ(parse_rate("1e3 bit/s"), 125.0);
}

TEST(Units, RatesRejectWhatIsNotARate) {
  EXPECT_THROW(parse_rate("400"), ConfigError);        // no unit
  EXPECT_THROW(parse_rate("400 GB"), ConfigError);     // a size
  EXPECT_THROW(parse_rate("fast"), ConfigError);
  EXPECT_THROW(parse_rate("-1 Gbit/s"), ConfigError);
  EXPECT_THROW(parse_rate("4 Xbit/s"), ConfigError);
  try {
    parse_rate("400");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(e.hint().find("Gbit/s"), std::string::npos);
  }
}

TEST(Units, SizesDecimalAndBinary) {
  EXPECT_DOUBLE_EQ(parse_size("80 GiB"), 80.0 * 1024 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(parse_size("141 GB"), 141e9);
  EXPECT_DOUBLE_EQ(parse_size("1.6 TB"), 1.6e12);
  EXPECT_DOUBLE_EQ(parse_size("512 bytes"), 512);
  EXPECT_THROW(parse_size("80"), ConfigError);
  EXPECT_THROW(parse_size("80 Gb"), ConfigError);  // bits are not a size
}

TEST(Units, Durations) {
  EXPECT_DOUBLE_EQ(parse_duration("5 us"), 5e-6);
  EXPECT_DOUBLE_EQ(parse_duration("5\xc2\xb5s"), 5e-6);
  EXPECT_DOUBLE_EQ(parse_duration("30 ms"), 30e-3);
  EXPECT_DOUBLE_EQ(parse_duration("1.5 s"), 1.5);
  EXPECT_DOUBLE_EQ(parse_duration("200ns"), 200e-9);
  EXPECT_DOUBLE_EQ(parse_duration("2 days"), 2 * 86400.0);
  EXPECT_THROW(parse_duration("5"), ConfigError);
  EXPECT_THROW(parse_duration("5 parsecs"), ConfigError);
}

TEST(Units, FlopsAndCounts) {
  EXPECT_DOUBLE_EQ(parse_flops("989 TFLOP/s"), 989e12);
  EXPECT_DOUBLE_EQ(parse_flops("2.25 PFLOP/s"), 2.25e15);
  EXPECT_DOUBLE_EQ(parse_flops("989e12"), 989e12);
  EXPECT_THROW(parse_flops("989 TB/s"), ConfigError);
  EXPECT_DOUBLE_EQ(parse_count("15.6T"), 15.6e12);
  EXPECT_DOUBLE_EQ(parse_count("16Mi"), 16777216.0);
  EXPECT_DOUBLE_EQ(parse_count("2Ki"), 2048.0);
  EXPECT_DOUBLE_EQ(parse_count("2048"), 2048.0);
  EXPECT_THROW(parse_count("16Q"), ConfigError);
  EXPECT_THROW(parse_count("many"), ConfigError);
}

TEST(Units, Formatting) {
  EXPECT_EQ(format_bits_per_s(12.9e12 / 8), "12.9 Tbit/s");
  EXPECT_EQ(format_bits_per_s(50e9), "400 Gbit/s");
  EXPECT_EQ(format_bytes_per_s(450e9), "450 GB/s");
  EXPECT_EQ(format_size(1.62e12), "1.62 TB");
  EXPECT_EQ(format_size_gib(80.0 * 1024 * 1024 * 1024), "80 GiB");
  EXPECT_EQ(format_duration(0.312), "312 ms");
  EXPECT_EQ(format_duration(6.52), "6.52 s");
  EXPECT_EQ(format_duration(70.2 * 86400), "70.2 days");
  EXPECT_EQ(format_count(16.8e6), "16.8M");
  EXPECT_EQ(format_count(405e9), "405B");
  EXPECT_EQ(format_flops(989e12), "989 TFLOP/s");
  EXPECT_EQ(format_sig3(0.4123), "0.412");
  EXPECT_EQ(format_sig3(4096), "4096");
  EXPECT_EQ(format_duration(INFINITY), "never");
  EXPECT_EQ(format_thousands(16384), "16,384");
  EXPECT_EQ(format_thousands(525312), "525,312");
  EXPECT_EQ(format_thousands(999), "999");
  EXPECT_EQ(format_thousands(-1234567), "-1,234,567");
}
