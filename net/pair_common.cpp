#include "net/pair_common.hpp"

#include <fmt/format.h>

#include "core/error.hpp"
#include "net/abort_error.hpp"

namespace braid::net {

std::exception_ptr mismatch_error(int peer, uint64_t got_len, uint32_t got_meta, uint64_t want_len,
                                  uint32_t want_meta) {
  return make_abort_error(
      AbortKind::Mismatch, peer,
      fmt::format("message from rank {} has {} bytes (check {:08x}) but the receive expects {} bytes (check {:08x})",
                  peer, got_len, got_meta, want_len, want_meta));
}

void check_combiner(const Combiner& c, size_t len) {
  if (!c.fn) throw Error("irecv_reduce needs a Combiner with a function");
  size_t e = c.elem_size;
  if (e == 0 || e > 64 || (e & (e - 1)) != 0)
    throw Error(fmt::format("irecv_reduce element size {} is not a power of two up to 64", e),
                "transports fold 64-byte aligned pieces; use an element type of 1, 2, 4, 8, ... 64 bytes");
  if (len % e != 0)
    throw Error(fmt::format("irecv_reduce of {} bytes is not a whole number of {}-byte elements", len, e));
}

std::string describe_peer(int peer, const std::string& addr) {
  if (addr.empty() || addr == "?") return fmt::format("rank {}", peer);
  return fmt::format("rank {} ({})", peer, addr);
}

}  // namespace braid::net
