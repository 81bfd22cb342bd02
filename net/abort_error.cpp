#include "net/abort_error.hpp"

#include "core/error.hpp"

namespace braid::net {

std::exception_ptr make_abort_error(AbortKind kind, int peer, const std::string& message) {
  switch (kind) {
    case AbortKind::Mismatch:
      return std::make_exception_ptr(Mismatch(message, "every rank must call the same collectives with the same counts, types and roots, in the same order"));
    case AbortKind::PeerLost:
      return std::make_exception_ptr(PeerLost(peer, message));
    case AbortKind::Timeout:
      return std::make_exception_ptr(Timeout(message));
    case AbortKind::Aborted:
    default:
      return std::make_exception_ptr(Aborted(message));
  }
}

}  // namespace braid::net
