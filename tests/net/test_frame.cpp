// Frame header and handshake payload validation.
#include <gtest/gtest.h>

#include <cstring>

#include "net/frame.hpp"

namespace braid::net {
namespace {

FrameHeader data_header() {
  FrameHeader h;
  h.kind = FrameKind::Data;
  h.epoch = 7;
  h.meta = 0xdeadbeef;
  h.tag = 0x0102030405060708ull;
  h.total = 10000;
  h.offset = 4096;
  h.length = 4096;
  return h;
}

FrameDecode decode(const FrameHeader& h, uint32_t epoch = 7, FrameLimits lim = {}) {
  uint8_t b[kFrameHeaderBytes];
  encode_frame_header(h, b);
  return decode_frame_header(b, sizeof b, epoch, lim);
}

TEST(Frame, RoundTripIsLittleEndian) {
  uint8_t b[kFrameHeaderBytes];
  encode_frame_header(data_header(), b);
  EXPECT_EQ(std::memcmp(b, "BRD1", 4), 0);
  EXPECT_EQ(b[4], 1);
  EXPECT_EQ(b[5], 1);
  EXPECT_EQ(b[16], 0x08);  // tag, low byte first
  EXPECT_EQ(b[23], 0x01);
  FrameDecode d = decode_frame_header(b, sizeof b, 7, {});
  ASSERT_EQ(d.status, FrameDecode::Ok) << d.error;
  EXPECT_EQ(d.header.tag, data_header().tag);
  EXPECT_EQ(d.header.meta, 0xdeadbeefu);
  EXPECT_EQ(d.header.total, 10000u);
  EXPECT_EQ(d.header.offset, 4096u);
  EXPECT_EQ(d.header.length, 4096u);
}

TEST(Frame, RejectsEveryBadField) {
  uint8_t good[kFrameHeaderBytes];
  encode_frame_header(data_header(), good);
  auto bad_at = [&](size_t off, uint8_t v) {
    uint8_t b[kFrameHeaderBytes];
    std::memcpy(b, good, sizeof b);
    b[off] = v;
    return decode_frame_header(b, sizeof b, 7, {});
  };
  EXPECT_EQ(bad_at(0, 'X').status, FrameDecode::Invalid);   // magic
  EXPECT_EQ(bad_at(4, 2).status, FrameDecode::Invalid);     // version
  EXPECT_EQ(bad_at(5, 0).status, FrameDecode::Invalid);     // kind
  EXPECT_EQ(bad_at(5, 99).status, FrameDecode::Invalid);
  EXPECT_EQ(bad_at(6, 1).status, FrameDecode::Invalid);     // flags
  EXPECT_EQ(bad_at(44, 1).status, FrameDecode::Invalid);    // reserved
  EXPECT_EQ(decode_frame_header(good, kFrameHeaderBytes - 1, 7, {}).status, FrameDecode::Invalid);
  EXPECT_EQ(decode_frame_header(nullptr, 0, 7, {}).status, FrameDecode::Invalid);
  EXPECT_NE(bad_at(0, 'X').error.find("magic"), std::string::npos);
}

TEST(Frame, LengthsAreBounded) {
  FrameHeader h = data_header();
  FrameLimits lim;
  lim.max_frame_payload = 1000;
  EXPECT_EQ(decode(h, 7, lim).status, FrameDecode::Invalid);
  lim = {};
  lim.max_message_bytes = 9999;
  EXPECT_EQ(decode(h, 7, lim).status, FrameDecode::Invalid);
  h = data_header();
  h.offset = 8000;  // 8000 + 4096 > 10000
  EXPECT_EQ(decode(h).status, FrameDecode::Invalid);
  h.offset = UINT64_MAX - 10;  // would overflow offset + length
  h.total = UINT64_MAX;
  EXPECT_EQ(decode(h).status, FrameDecode::Invalid);
  h = data_header();
  h.length = 0;  // an empty piece of a non-empty message
  EXPECT_EQ(decode(h).status, FrameDecode::Invalid);
  h.total = 0;
  h.offset = 0;
  EXPECT_EQ(decode(h).status, FrameDecode::Ok);  // the empty message
}

TEST(Frame, OlderEpochIsStaleNewerIsInvalid) {
  EXPECT_EQ(decode(data_header(), 8).status, FrameDecode::Stale);
  EXPECT_EQ(decode(data_header(), 6).status, FrameDecode::Invalid);
}

TEST(Frame, ControlFramesAreChecked) {
  FrameHeader h;
  h.kind = FrameKind::Abort;
  h.epoch = 7;
  h.meta = 2;  // Mismatch
  h.length = h.total = 100;
  EXPECT_EQ(decode(h).status, FrameDecode::Ok);
  h.meta = 9;
  EXPECT_EQ(decode(h).status, FrameDecode::Invalid);
  h.meta = 1;
  h.length = h.total = 5000;  // over the control payload limit
  EXPECT_EQ(decode(h).status, FrameDecode::Invalid);
  h.length = h.total = 10;
  h.tag = 3;  // data-only field
  EXPECT_EQ(decode(h).status, FrameDecode::Invalid);
  FrameHeader c;
  c.kind = FrameKind::Close;
  c.epoch = 7;
  EXPECT_EQ(decode(c).status, FrameDecode::Ok);
  c.length = c.total = 1;
  EXPECT_EQ(decode(c).status, FrameDecode::Invalid);
}

TEST(Frame, HelloRoundTripAndValidation) {
  Hello h;
  h.group = "world";
  h.epoch = 3;
  h.world_size = 8;
  h.from_rank = 5;
  h.to_rank = 2;
  h.stream = 1;
  h.streams = 4;
  h.channel = ChannelKind::ShmControl;
  h.host_id = "node7/abc";
  h.shm_name = "/braid-1-2";
  h.shm_ring_bytes = 1 << 20;
  auto bytes = encode_hello(h);
  std::string err;
  auto back = decode_hello(bytes.data(), bytes.size(), &err);
  ASSERT_TRUE(back) << err;
  EXPECT_EQ(back->group, "world");
  EXPECT_EQ(back->from_rank, 5);
  EXPECT_EQ(back->to_rank, 2);
  EXPECT_EQ(back->stream, 1);
  EXPECT_EQ(back->streams, 4);
  EXPECT_EQ(back->channel, ChannelKind::ShmControl);
  EXPECT_EQ(back->shm_name, "/braid-1-2");
  EXPECT_EQ(back->shm_ring_bytes, 1u << 20);
  // Truncations and trailing bytes are rejected.
  for (size_t n = 0; n < bytes.size(); ++n) EXPECT_FALSE(decode_hello(bytes.data(), n, &err)) << n;
  bytes.push_back(0);
  EXPECT_FALSE(decode_hello(bytes.data(), bytes.size(), &err));
  // Impossible ranks.
  h.to_rank = 9;
  bytes = encode_hello(h);
  EXPECT_FALSE(decode_hello(bytes.data(), bytes.size(), &err));
  h.to_rank = 5;
  bytes = encode_hello(h);
  EXPECT_FALSE(decode_hello(bytes.data(), bytes.size(), &err));
  h.to_rank = 2;
  h.stream = 4;
  bytes = encode_hello(h);
  EXPECT_FALSE(decode_hello(bytes.data(), bytes.size(), &err));
}

TEST(Frame, HelloAckRoundTrip) {
  auto b = encode_hello_ack(HelloAck{false, "wrong epoch"});
  std::string err;
  auto a = decode_hello_ack(b.data(), b.size(), &err);
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->ok);
  EXPECT_EQ(a->error, "wrong epoch");
  b[0] = 7;
  EXPECT_FALSE(decode_hello_ack(b.data(), b.size(), &err));
}

}  // namespace
}  // namespace braid::net
