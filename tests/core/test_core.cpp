#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/bytes.hpp"
#include "core/checksum.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"

using namespace braid;

TEST(Bytes, ParsesSuffixes) {
  EXPECT_EQ(parse_bytes("0"), 0u);
  EXPECT_EQ(parse_bytes("8"), 8u);
  EXPECT_EQ(parse_bytes("64K"), 64u * 1024);
  EXPECT_EQ(parse_bytes("256M"), 256ull << 20);
  EXPECT_EQ(parse_bytes("1GiB"), 1ull << 30);
  EXPECT_EQ(parse_bytes("1.5k"), 1536u);
  EXPECT_THROW(parse_bytes("12Q"), ConfigError);
  EXPECT_THROW(parse_bytes(""), ConfigError);
  EXPECT_THROW(parse_bytes("-3"), ConfigError);
}

TEST(Bytes, ParsesRangesAndLists) {
  auto r = parse_byte_sizes("8:64");
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0], 8u);
  EXPECT_EQ(r[3], 64u);
  auto l = parse_byte_sizes("1,3,5M");
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[2], 5ull << 20);
  EXPECT_THROW(parse_byte_sizes("64:8"), ConfigError);
}

TEST(Bytes, BitRates) {
  EXPECT_DOUBLE_EQ(parse_bitrate("100mbit"), 100e6);
  EXPECT_DOUBLE_EQ(parse_bitrate("1gbit"), 1e9);
  EXPECT_DOUBLE_EQ(parse_bitrate("10Gbps"), 10e9);
  EXPECT_THROW(parse_bitrate("fast"), ConfigError);
}

TEST(Checksum, StreamMatchesOneShot) {
  std::string s(100003, 'x');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 31);
  Xxh3Stream st;
  st.update(s.data(), 1000);
  st.update(s.data() + 1000, s.size() - 1000);
  EXPECT_EQ(st.digest(), xxh3_64(s.data(), s.size()));
  EXPECT_NE(xxh3_64(s.data(), s.size()), xxh3_64(s.data(), s.size() - 1));
  EXPECT_EQ(hex64(0xabcULL), "0000000000000abc");
}

TEST(DType, HalfConversionsRoundTrip) {
  for (float f : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 3.14159f}) {
    float back = f16_to_f32(f32_to_f16(f));
    EXPECT_NEAR(back, f, std::fabs(f) * 1e-3 + 1e-7) << f;
    float bback = bf16_to_f32(f32_to_bf16(f));
    EXPECT_NEAR(bback, f, std::fabs(f) * 1e-2 + 1e-30) << f;
  }
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  // Every f16 bit pattern that is a finite number survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    EXPECT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h);
  }
  EXPECT_EQ(parse_dtype("bf16"), DType::BF16);
  EXPECT_THROW(parse_dtype("f8"), ConfigError);
}

TEST(Config, TypedGettersAndUnknownKeys) {
  auto c = Config::from_string("[train]\nlr = 0.001\nsteps = 10\nname = \"x\"\n[model]\nlayers = 2\n");
  EXPECT_DOUBLE_EQ(c.get_double("train.lr", 1), 0.001);
  EXPECT_EQ(c.get_int("train.steps", 0), 10);
  EXPECT_EQ(c.get_string("train.name", ""), "x");
  EXPECT_EQ(c.get_int("train.missing", 7), 7);
  try {
    c.finish();
    FAIL() << "unknown key accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers"), std::string::npos);
  }
}

TEST(Config, OverridesAndValidation) {
  auto c = Config::from_string("[train]\nlr = 0.001\n");
  c.apply_override("train.lr=0.5");
  c.apply_override("model.kind=gpt");
  c.apply_override("model.layers=4");
  EXPECT_DOUBLE_EQ(c.get_double("train.lr", 1), 0.5);
  EXPECT_EQ(c.get_choice("model.kind", "mlp", {"gpt", "mlp"}), "gpt");
  EXPECT_THROW(c.get_int("model.layers", 1, 1, 3), ConfigError);
  EXPECT_THROW(c.get_choice("model.kind", "gpt", {"mlp"}), ConfigError);
  EXPECT_THROW(c.apply_override("novalue"), ConfigError);
  EXPECT_THROW(Config::from_string("[broken"), ConfigError);
  EXPECT_THROW(Config::from_file("/nonexistent/x.toml"), ConfigError);
}

TEST(Config, SuggestsClosestKey) {
  auto c = Config::from_string("[train]\nlearning_rat = 1\n");
  c.get_double("train.learning_rate", 1);
  try {
    c.finish();
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(e.hint().find("train.learning_rate"), std::string::npos) << e.hint();
  }
}

TEST(Clock, Deadlines) {
  EXPECT_FALSE(Deadline::never().expired());
  EXPECT_EQ(Deadline::never().remaining_ms_for_poll(), -1);
  EXPECT_TRUE(Deadline::in_seconds(-1).expired());
  EXPECT_GT(Deadline::in_seconds(10).remaining_ns(), 0);
}
