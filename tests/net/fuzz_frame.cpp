// libFuzzer target for the frame decoder and the handshake payload decoders.
// Built alone with clang (see run_fuzz.sh): only net/frame.cpp is linked, so
// the target needs nothing else from braid.
//
// The input is read as a connection's byte stream: frames one after another,
// as the transport's receive loop parses them. Invariants that must hold for
// every accepted header are checked; a violation traps.
#include <cstddef>
#include <cstdint>
#include <string>

#include "net/frame.hpp"

using namespace braid::net;

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FrameLimits lim;
  lim.max_frame_payload = 1 << 16;
  lim.max_message_bytes = 1 << 20;
  lim.max_control_payload = 4096;
  const uint32_t epoch = size ? data[0] % 4 : 0;
  size_t off = size ? 1 : 0;
  while (off < size) {
    FrameDecode d = decode_frame_header(data + off, size - off, epoch, lim);
    if (d.status == FrameDecode::Invalid) {
      check(!d.error.empty());
      break;
    }
    const FrameHeader& h = d.header;
    if (h.kind == FrameKind::Data) {
      check(h.length <= lim.max_frame_payload);
      check(h.total <= lim.max_message_bytes);
      check(h.offset <= h.total && h.length <= h.total - h.offset);
    } else {
      check(h.length <= lim.max_control_payload);
    }
    if (d.status == FrameDecode::Stale) check(h.epoch < epoch);
    // Re-encoding an accepted header gives the same bytes.
    uint8_t again[kFrameHeaderBytes];
    encode_frame_header(h, again);
    for (size_t i = 0; i < kFrameHeaderBytes; ++i) check(again[i] == data[off + i]);
    off += kFrameHeaderBytes;
    size_t len = h.length;
    if (len > size - off) break;
    std::string err;
    if (h.kind == FrameKind::Hello) {
      auto hello = decode_hello(data + off, len, &err);
      if (hello) {
        auto bytes = encode_hello(*hello);
        check(bytes.size() == len);
        auto back = decode_hello(bytes.data(), bytes.size(), &err);
        check(back && back->group == hello->group && back->from_rank == hello->from_rank &&
              back->to_rank == hello->to_rank && back->shm_name == hello->shm_name);
      } else {
        check(!err.empty());
      }
    } else if (h.kind == FrameKind::HelloAck) {
      auto ack = decode_hello_ack(data + off, len, &err);
      if (ack) check(encode_hello_ack(*ack).size() == len);
    }
    off += len;
  }
  // The payload decoders on the raw input too.
  std::string err;
  (void)decode_hello(data, size, &err);
  (void)decode_hello_ack(data, size, &err);
  return 0;
}
