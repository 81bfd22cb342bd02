#pragma once
// Applies a FaultSpec to the bytes one pair sends: how many may go now
// (rate cap as a token bucket, a one-time stall, a drop after N bytes), and
// when to try again. Latency is applied per message by the callers (a
// not-before time on each message). Not thread-safe: each pair calls it from
// one place at a time (the I/O thread for TCP, under the send lock for shm).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "net/mesh.hpp"

namespace braid::net {

class FaultGate {
 public:
  FaultGate() = default;
  FaultGate(const FaultSpec& spec, int peer) : spec_(spec), peer_(peer), tokens_at_(now_ns()) {}

  int64_t latency_ns() const { return static_cast<int64_t>(spec_.latency_s * 1e9); }

  // Bytes that may be sent now, at most `want`. 0 means wait: *wake_at says
  // until when, or *drop is set when the connection must be dropped now.
  size_t allowance(size_t want, int64_t now, int64_t* wake_at, bool* drop) {
    if (spec_.stall_s > 0 && !stalled_once_ && sent_ >= spec_.stall_after_bytes) {
      stalled_once_ = true;
      stall_until_ = now + static_cast<int64_t>(spec_.stall_s * 1e9);
      log::info("fault injection: stalling sends to rank {} for {:.3f} s after {} bytes", peer_, spec_.stall_s,
                sent_);
    }
    if (now < stall_until_) {
      *wake_at = stall_until_;
      return 0;
    }
    size_t allow = want;
    if (spec_.stall_s > 0 && !stalled_once_) allow = std::min<uint64_t>(allow, spec_.stall_after_bytes - sent_);
    if (spec_.drop_after_bytes) {
      if (sent_ >= spec_.drop_after_bytes) {
        *drop = true;
        return 0;
      }
      allow = std::min<uint64_t>(allow, spec_.drop_after_bytes - sent_);
    }
    if (spec_.rate_bps > 0) {
      double bytes_per_s = spec_.rate_bps / 8;
      double burst = std::max(16384.0, bytes_per_s * 0.002);
      tokens_ = std::min(burst, tokens_ + static_cast<double>(now - tokens_at_) * 1e-9 * bytes_per_s);
      tokens_at_ = now;
      double need = static_cast<double>(std::min<size_t>(allow, 4096));
      if (tokens_ < need) {
        *wake_at = now + static_cast<int64_t>((need - tokens_) / bytes_per_s * 1e9) + 1;
        return 0;
      }
      allow = std::min(allow, static_cast<size_t>(tokens_));
    }
    return allow;
  }

  void sent(size_t n) {
    sent_ += n;
    tokens_ -= static_cast<double>(n);
  }
  uint64_t total_sent() const { return sent_; }

 private:
  FaultSpec spec_;
  int peer_ = -1;
  double tokens_ = 0;
  int64_t tokens_at_ = 0;
  uint64_t sent_ = 0;
  int64_t stall_until_ = 0;
  bool stalled_once_ = false;
};

}  // namespace braid::net
