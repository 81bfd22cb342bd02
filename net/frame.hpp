#pragma once
// The wire format of braid's socket connections.
//
// Every frame is a fixed 48-byte header followed by `length` payload bytes.
// All integers are little-endian:
//
//   off size field
//     0   4  magic      "BRD1" (0x31445242)
//     4   1  version    1
//     5   1  kind       FrameKind
//     6   2  flags      0 (reserved; rejected if set)
//     8   4  epoch      membership epoch of the mesh
//    12   4  meta       DATA: the caller's check value; ABORT: AbortKind
//    16   8  tag        DATA: message tag
//    24   8  total      DATA: length of the whole message
//    32   8  offset     DATA: where this piece starts inside the message
//    40   4  length     payload bytes that follow this header
//    44   4  reserved   0
//
// A message larger than one frame, or striped over several connections, is
// sent as several DATA frames with the same tag and total, each covering
// [offset, offset+length). The decoder below is a pure function over bytes
// (the fuzz target): it validates every field against FrameLimits before the
// transport allocates or writes anything.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace braid::net {

inline constexpr uint32_t kFrameMagic = 0x31445242;  // "BRD1" on the wire
inline constexpr uint8_t kFrameVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 48;

enum class FrameKind : uint8_t {
  Data = 1,      // a piece of a tagged message
  Abort = 2,     // the sender failed the pair; payload is a UTF-8 reason
  Hello = 3,     // first frame of a connection after authentication (payload: Hello)
  HelloAck = 4,  // the acceptor's answer (payload: HelloAck)
  Close = 5,     // orderly shutdown: the sender is destroying its mesh
};
const char* frame_kind_name(FrameKind kind);

struct FrameHeader {
  FrameKind kind = FrameKind::Data;
  uint32_t epoch = 0;
  uint32_t meta = 0;
  uint64_t tag = 0;
  uint64_t total = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

struct FrameLimits {
  // Largest payload of one DATA frame. Senders split bigger messages.
  uint32_t max_frame_payload = 64u << 20;
  // Largest message (sum of its frames) a receiver accepts.
  uint64_t max_message_bytes = uint64_t{1} << 40;
  // Largest payload of ABORT / HELLO / HELLO_ACK / CLOSE frames.
  uint32_t max_control_payload = 4096;
};

struct FrameDecode {
  enum Status : uint8_t {
    Ok,       // header is valid; `header` is filled
    Stale,    // well-formed but from an older epoch: skip `header.length` bytes
    Invalid,  // malformed: close the connection; `error` says why
  };
  Status status = Invalid;
  FrameHeader header;
  std::string error;
};

void encode_frame_header(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]);

// Decodes and validates the header at `data` (needs kFrameHeaderBytes bytes;
// fewer is Invalid). `epoch` is the receiving mesh's epoch: older frames are
// Stale, newer ones Invalid (a peer cannot be ahead of its own connection).
FrameDecode decode_frame_header(const uint8_t* data, size_t len, uint32_t epoch,
                                const FrameLimits& limits);

// What a connecting rank says after authentication.
enum class ChannelKind : uint8_t {
  TcpData = 1,     // one of streams_per_peer data connections
  ShmControl = 2,  // control/liveness connection of a shared-memory pair
};

struct Hello {
  std::string group;
  uint32_t epoch = 0;
  int32_t world_size = 0;
  int32_t from_rank = 0;
  int32_t to_rank = 0;
  uint16_t stream = 0;
  uint16_t streams = 1;
  ChannelKind channel = ChannelKind::TcpData;
  std::string host_id;
  std::string shm_name;       // ShmControl: segment the connector created
  uint64_t shm_ring_bytes = 0;
};

struct HelloAck {
  bool ok = false;
  std::string error;  // why the acceptor refused
};

// Payload encodings (bounded, length-prefixed strings). Decoders return
// nullopt and set *error on malformed input.
std::vector<uint8_t> encode_hello(const Hello& h);
std::optional<Hello> decode_hello(const uint8_t* data, size_t len, std::string* error);
std::vector<uint8_t> encode_hello_ack(const HelloAck& a);
std::optional<HelloAck> decode_hello_ack(const uint8_t* data, size_t len, std::string* error);

}  // namespace braid::net
