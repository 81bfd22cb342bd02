#pragma once
// Builds the exception a rank throws for an AbortKind, so that an error that
// started on one rank surfaces with the same type on every rank.
#include <exception>
#include <string>

#include "net/pair.hpp"

namespace braid::net {

std::exception_ptr make_abort_error(AbortKind kind, int peer, const std::string& message);

}  // namespace braid::net
