#pragma once
// Monotonic time and deadlines. Every blocking call in braid takes a Deadline
// so that nothing waits forever.
#include <chrono>
#include <cstdint>

namespace braid {

using Clock = std::chrono::steady_clock;

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}
inline double now_s() { return static_cast<double>(now_ns()) * 1e-9; }

class Deadline {
 public:
  // A deadline that never expires.
  static Deadline never() { return Deadline(INT64_MAX); }
  static Deadline in(std::chrono::nanoseconds d) {
    int64_t n = now_ns();
    int64_t c = d.count();
    return Deadline(c >= INT64_MAX - n ? INT64_MAX : n + c);
  }
  static Deadline in_seconds(double s) {
    return in(std::chrono::nanoseconds(static_cast<int64_t>(s * 1e9)));
  }
  explicit Deadline(int64_t at_ns) : at_ns_(at_ns) {}

  bool expired() const { return at_ns_ != INT64_MAX && now_ns() >= at_ns_; }
  bool is_never() const { return at_ns_ == INT64_MAX; }
  int64_t at_ns() const { return at_ns_; }
  // Nanoseconds left, clamped at 0; INT64_MAX for never.
  int64_t remaining_ns() const {
    if (at_ns_ == INT64_MAX) return INT64_MAX;
    int64_t r = at_ns_ - now_ns();
    return r < 0 ? 0 : r;
  }
  // Milliseconds left for poll()/epoll_wait(): -1 means forever.
  int remaining_ms_for_poll() const {
    if (at_ns_ == INT64_MAX) return -1;
    int64_t r = remaining_ns();
    return static_cast<int>((r + 999'999) / 1'000'000);
  }
  Deadline earlier(const Deadline& o) const { return at_ns_ < o.at_ns_ ? *this : o; }

 private:
  int64_t at_ns_;
};

class Stopwatch {
 public:
  Stopwatch() : start_(now_ns()) {}
  void reset() { start_ = now_ns(); }
  double seconds() const { return static_cast<double>(now_ns() - start_) * 1e-9; }
  int64_t nanos() const { return now_ns() - start_; }

 private:
  int64_t start_;
};

}  // namespace braid
