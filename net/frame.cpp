// Frame header encode/decode. Kept free of other braid code (only the standard
// library) so that the fuzz target can compile it alone with clang.
#include "net/frame.hpp"

#include <cstring>

namespace braid::net {

namespace {

// Little-endian stores/loads that do not depend on the host byte order.
void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string hex32(uint32_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int i = 7; i >= 0; --i) s.push_back(digits[(v >> (4 * i)) & 15]);
  return s;
}

FrameDecode invalid(std::string why) {
  FrameDecode d;
  d.status = FrameDecode::Invalid;
  d.error = std::move(why);
  return d;
}

bool known_kind(uint8_t k) { return k >= 1 && k <= 5; }

// Bounded reader for handshake payloads: every read checks the remaining length.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool u8(uint8_t& v) {
    if (n_ < 1) return false;
    v = *p_;
    skip(1);
    return true;
  }
  bool u16(uint16_t& v) {
    if (n_ < 2) return false;
    v = get16(p_);
    skip(2);
    return true;
  }
  bool u32(uint32_t& v) {
    if (n_ < 4) return false;
    v = get32(p_);
    skip(4);
    return true;
  }
  bool u64(uint64_t& v) {
    if (n_ < 8) return false;
    v = get64(p_);
    skip(8);
    return true;
  }
  bool str(std::string& s, size_t max) {
    uint16_t len;
    if (!u16(len) || len > max || len > n_) return false;
    s.assign(reinterpret_cast<const char*>(p_), len);
    skip(len);
    return true;
  }
  bool at_end() const { return n_ == 0; }

 private:
  void skip(size_t k) {
    p_ += k;
    n_ -= k;
  }
  const uint8_t* p_;
  size_t n_;
};

class Writer {
 public:
  void u8(uint8_t v) { b_.push_back(v); }
  void u16(uint16_t v) {
    uint8_t t[2];
    put16(t, v);
    b_.insert(b_.end(), t, t + 2);
  }
  void u32(uint32_t v) {
    uint8_t t[4];
    put32(t, v);
    b_.insert(b_.end(), t, t + 4);
  }
  void u64(uint64_t v) {
    uint8_t t[8];
    put64(t, v);
    b_.insert(b_.end(), t, t + 8);
  }
  void str(const std::string& s) {
    size_t n = s.size() > 1024 ? 1024 : s.size();
    u16(static_cast<uint16_t>(n));
    b_.insert(b_.end(), s.begin(), s.begin() + static_cast<std::ptrdiff_t>(n));
  }
  std::vector<uint8_t> take() { return std::move(b_); }

 private:
  std::vector<uint8_t> b_;
};

constexpr size_t kMaxHelloString = 1024;

}  // namespace

const char* frame_kind_name(FrameKind kind) {
  switch (kind) {
    case FrameKind::Data: return "DATA";
    case FrameKind::Abort: return "ABORT";
    case FrameKind::Hello: return "HELLO";
    case FrameKind::HelloAck: return "HELLO_ACK";
    case FrameKind::Close: return "CLOSE";
  }
  return "?";
}

void encode_frame_header(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]) {
  put32(out + 0, kFrameMagic);
  out[4] = kFrameVersion;
  out[5] = static_cast<uint8_t>(h.kind);
  put16(out + 6, 0);
  put32(out + 8, h.epoch);
  put32(out + 12, h.meta);
  put64(out + 16, h.tag);
  put64(out + 24, h.total);
  put64(out + 32, h.offset);
  put32(out + 40, h.length);
  put32(out + 44, 0);
}

FrameDecode decode_frame_header(const uint8_t* data, size_t len, uint32_t epoch,
                                const FrameLimits& limits) {
  if (data == nullptr || len < kFrameHeaderBytes)
    return invalid("truncated frame header (" + std::to_string(len) + " bytes)");
  uint32_t magic = get32(data);
  if (magic != kFrameMagic) return invalid("bad magic " + hex32(magic) + " (not a braid frame, or the stream lost sync)");
  if (data[4] != kFrameVersion)
    return invalid("unsupported frame version " + std::to_string(data[4]) + " (this build speaks " +
                   std::to_string(kFrameVersion) + ")");
  if (!known_kind(data[5])) return invalid("unknown frame kind " + std::to_string(data[5]));
  uint16_t flags = get16(data + 6);
  if (flags != 0) return invalid("reserved flags set (" + std::to_string(flags) + ")");
  if (get32(data + 44) != 0) return invalid("reserved header field is not zero");

  FrameDecode d;
  FrameHeader& h = d.header;
  h.kind = static_cast<FrameKind>(data[5]);
  h.epoch = get32(data + 8);
  h.meta = get32(data + 12);
  h.tag = get64(data + 16);
  h.total = get64(data + 24);
  h.offset = get64(data + 32);
  h.length = get32(data + 40);

  if (h.kind == FrameKind::Data) {
    if (h.length > limits.max_frame_payload)
      return invalid("frame payload of " + std::to_string(h.length) + " bytes exceeds the limit of " +
                     std::to_string(limits.max_frame_payload));
    if (h.total > limits.max_message_bytes)
      return invalid("message of " + std::to_string(h.total) + " bytes exceeds the limit of " +
                     std::to_string(limits.max_message_bytes));
    // offset + length <= total, written so that it cannot overflow.
    if (h.offset > h.total || h.length > h.total - h.offset)
      return invalid("piece [" + std::to_string(h.offset) + ", +" + std::to_string(h.length) +
                     ") lies outside its message of " + std::to_string(h.total) + " bytes");
    if (h.length == 0 && h.total != 0)
      return invalid("empty piece of a non-empty message");
  } else {
    if (h.length > limits.max_control_payload)
      return invalid(std::string(frame_kind_name(h.kind)) + " frame payload of " + std::to_string(h.length) +
                     " bytes exceeds the limit of " + std::to_string(limits.max_control_payload));
    if (h.tag != 0 || h.offset != 0 || h.total != h.length)
      return invalid(std::string(frame_kind_name(h.kind)) + " frame with data-only fields set");
    if (h.kind == FrameKind::Abort && (h.meta < 1 || h.meta > 4))
      return invalid("ABORT frame with unknown abort kind " + std::to_string(h.meta));
    if (h.kind != FrameKind::Abort && h.meta != 0)
      return invalid(std::string(frame_kind_name(h.kind)) + " frame with meta set");
    if (h.kind == FrameKind::Close && h.length != 0) return invalid("CLOSE frame with a payload");
  }
  // Handshake frames carry the epoch in their payload and are checked there.
  if (h.kind != FrameKind::Hello && h.kind != FrameKind::HelloAck) {
    if (h.epoch < epoch) {
      d.status = FrameDecode::Stale;
      return d;
    }
    if (h.epoch > epoch)
      return invalid("frame from epoch " + std::to_string(h.epoch) + " on a connection of epoch " +
                     std::to_string(epoch));
  }
  d.status = FrameDecode::Ok;
  return d;
}

std::vector<uint8_t> encode_hello(const Hello& h) {
  Writer w;
  w.str(h.group);
  w.u32(h.epoch);
  w.u32(static_cast<uint32_t>(h.world_size));
  w.u32(static_cast<uint32_t>(h.from_rank));
  w.u32(static_cast<uint32_t>(h.to_rank));
  w.u16(h.stream);
  w.u16(h.streams);
  w.u8(static_cast<uint8_t>(h.channel));
  w.str(h.host_id);
  w.str(h.shm_name);
  w.u64(h.shm_ring_bytes);
  return w.take();
}

std::optional<Hello> decode_hello(const uint8_t* data, size_t len, std::string* error) {
  Reader r(data, len);
  Hello h;
  uint32_t ws, from, to;
  uint8_t channel;
  bool ok = r.str(h.group, kMaxHelloString) && r.u32(h.epoch) && r.u32(ws) && r.u32(from) &&
            r.u32(to) && r.u16(h.stream) && r.u16(h.streams) && r.u8(channel) &&
            r.str(h.host_id, kMaxHelloString) && r.str(h.shm_name, kMaxHelloString) &&
            r.u64(h.shm_ring_bytes) && r.at_end();
  if (!ok) {
    if (error) *error = "malformed HELLO payload";
    return std::nullopt;
  }
  h.world_size = static_cast<int32_t>(ws);
  h.from_rank = static_cast<int32_t>(from);
  h.to_rank = static_cast<int32_t>(to);
  if (h.world_size < 1 || h.from_rank < 0 || h.to_rank < 0 || h.from_rank >= h.world_size ||
      h.to_rank >= h.world_size || h.from_rank == h.to_rank) {
    if (error)
      *error = "HELLO with impossible ranks (from " + std::to_string(h.from_rank) + " to " +
               std::to_string(h.to_rank) + " in a world of " + std::to_string(h.world_size) + ")";
    return std::nullopt;
  }
  if (h.streams < 1 || h.stream >= h.streams) {
    if (error) *error = "HELLO with stream " + std::to_string(h.stream) + " of " + std::to_string(h.streams);
    return std::nullopt;
  }
  if (channel != static_cast<uint8_t>(ChannelKind::TcpData) &&
      channel != static_cast<uint8_t>(ChannelKind::ShmControl)) {
    if (error) *error = "HELLO with unknown channel kind " + std::to_string(channel);
    return std::nullopt;
  }
  h.channel = static_cast<ChannelKind>(channel);
  return h;
}

std::vector<uint8_t> encode_hello_ack(const HelloAck& a) {
  Writer w;
  w.u8(a.ok ? 1 : 0);
  w.str(a.error);
  return w.take();
}

std::optional<HelloAck> decode_hello_ack(const uint8_t* data, size_t len, std::string* error) {
  Reader r(data, len);
  HelloAck a;
  uint8_t ok;
  if (!r.u8(ok) || ok > 1 || !r.str(a.error, kMaxHelloString) || !r.at_end()) {
    if (error) *error = "malformed HELLO_ACK payload";
    return std::nullopt;
  }
  a.ok = ok == 1;
  return a;
}

}  // namespace braid::net
