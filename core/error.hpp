#pragma once
// One exception hierarchy for all of braid. Every error says what failed and,
// where there is one, what the user can do about it (the hint).
#include <stdexcept>
#include <string>

namespace braid {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::string hint = {});
  const std::string& hint() const noexcept { return hint_; }
  // what() followed by "\n  hint: ..." when there is a hint.
  std::string describe() const;

 private:
  std::string hint_;
};

// Bad user input: a config key, a flag, a file the user named.
class ConfigError : public Error { using Error::Error; };
// Reading or writing files failed.
class IoError : public Error { using Error::Error; };
// Stored or received data failed a checksum or format check.
class CorruptData : public Error { using Error::Error; };

// Transport-level failures.
class NetError : public Error { using Error::Error; };
class AuthError : public NetError { using NetError::NetError; };
// A peer sent a frame that fails validation; the connection is closed.
class ProtocolError : public NetError { using NetError::NetError; };

// Collective failures, raised by Work::wait() on every rank involved.
class CommError : public Error { using Error::Error; };
class PeerLost : public CommError {
 public:
  PeerLost(int peer, const std::string& what, std::string hint = {})
      : CommError(what, std::move(hint)), peer_(peer) {}
  int peer() const noexcept { return peer_; }

 private:
  int peer_;
};
class Timeout : public CommError { using CommError::CommError; };
class Aborted : public CommError { using CommError::CommError; };
class Mismatch : public CommError { using CommError::CommError; };

}  // namespace braid
