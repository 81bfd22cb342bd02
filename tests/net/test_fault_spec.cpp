#include <gtest/gtest.h>

#include "core/error.hpp"
#include "net/mesh.hpp"

namespace braid::net {
namespace {

TEST(FaultSpec, ParsesEveryField) {
  FaultSpec f = FaultSpec::parse("latency=50ms, rate=100mbit,drop_after=1M,stall=2s,stall_after=64K,peers=1+3,ranks=0");
  EXPECT_DOUBLE_EQ(f.latency_s, 0.05);
  EXPECT_DOUBLE_EQ(f.rate_bps, 100e6);
  EXPECT_EQ(f.drop_after_bytes, 1u << 20);
  EXPECT_DOUBLE_EQ(f.stall_s, 2);
  EXPECT_EQ(f.stall_after_bytes, 64u << 10);
  EXPECT_EQ(f.peers, (std::vector<int>{1, 3}));
  EXPECT_EQ(f.ranks, (std::vector<int>{0}));
  EXPECT_TRUE(f.any());
  EXPECT_TRUE(f.applies(0, 1));
  EXPECT_FALSE(f.applies(0, 2));
  EXPECT_FALSE(f.applies(1, 3));
}

TEST(FaultSpec, CommaListsAndRoundTrip) {
  FaultSpec f = FaultSpec::parse("peers=1,2,latency=100us");
  EXPECT_EQ(f.peers, (std::vector<int>{1, 2}));
  EXPECT_DOUBLE_EQ(f.latency_s, 100e-6);
  FaultSpec g = FaultSpec::parse(f.to_string());
  EXPECT_EQ(g.peers, f.peers);
  EXPECT_DOUBLE_EQ(g.latency_s, f.latency_s);
  EXPECT_FALSE(FaultSpec::parse("").any());
  EXPECT_FALSE(FaultSpec().applies(0, 1));
}

TEST(FaultSpec, BadTextNamesTheField) {
  for (const char* bad : {"latency=fast", "rate=-10", "drop_after=0", "colour=red", "latency", "peers=a",
                          "stall=3parsecs", "rate=1gbiz"}) {
    try {
      FaultSpec::parse(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const ConfigError& e) {
      SUCCEED();
    }
  }
}

TEST(Transport, Parse) {
  EXPECT_EQ(parse_transport("auto"), TransportChoice::Auto);
  EXPECT_EQ(parse_transport("TCP"), TransportChoice::Tcp);
  EXPECT_EQ(parse_transport("shm"), TransportChoice::Shm);
  EXPECT_THROW(parse_transport("carrier-pigeon"), ConfigError);
}

}  // namespace
}  // namespace braid::net
