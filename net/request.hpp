#pragma once
// A Request is the completion of one posted send or receive. The transport
// completes or fails it; the poster tests or waits on it. Waiting never hangs:
// it returns, or throws the failure, or throws Timeout at the deadline.
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>

#include "core/clock.hpp"

namespace braid::net {

// Something a waiter can drive while it waits (shared memory is progressed
// inline by the waiting thread, not by an extra thread: on a 2-core host a
// spinning helper thread per rank would halve the speed of everything).
class Progress {
 public:
  virtual ~Progress() = default;
  // Does whatever copying can be done now without blocking. Returns true if
  // anything moved.
  virtual bool progress() = 0;
  // Blocks until this source may have something to move (a peer wrote data
  // or freed space), or `word` no longer holds `expected` (the waited-for
  // request finished), or `timeout_ns` passes; spurious returns are fine.
  // Returns false if the source cannot block: the caller then sleeps on
  // `word` alone, in short slices.
  virtual bool wait_for_activity(std::atomic<uint32_t>* word, uint32_t expected, int64_t timeout_ns) {
    return wait_for_activity(&word, 1, expected, timeout_ns);
  }
  // The same for several words (waiting for whichever of several requests
  // finishes first): returns once any of them no longer holds `expected`.
  virtual bool wait_for_activity(std::atomic<uint32_t>* const* words, size_t n, uint32_t expected,
                                 int64_t timeout_ns) {
    (void)words;
    (void)n;
    (void)expected;
    (void)timeout_ns;
    return false;
  }
};

class Request {
 public:
  enum State : uint32_t { kPending = 0, kDone = 1, kFailed = 2 };

  explicit Request(Progress* progress = nullptr) : progress_(progress) {}
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  // True once complete; throws the failure if the request failed.
  bool test();
  // Waits until complete; throws the failure, or braid::Timeout at `deadline`.
  void wait(const Deadline& deadline);
  // Waits until `a` or `b` has finished (completed or failed: test() the one
  // that did). Returns false if neither had by `deadline`. A pipeline that
  // waits for its next receive while its send window is full uses this: a
  // send completing must let it post the next send, or two ranks can each
  // wait for a message the other holds back.
  static bool wait_either(Request& a, Request& b, const Deadline& deadline);
  State state() const { return static_cast<State>(state_.load(std::memory_order_acquire)); }
  bool done() const { return state() != kPending; }

  // --- for transports ---
  void complete();
  // First failure wins; later calls are ignored.
  void fail(std::exception_ptr error);
  std::exception_ptr error() const;
  // Makes a finished request pending again, so that a transport can recycle
  // it. Only when nobody else holds it (its shared_ptr use_count is 1).
  void reset_for_reuse();

 private:
  std::atomic<uint32_t> state_{kPending};
  std::atomic<uint32_t> waiters_{0};
  Progress* progress_;
  mutable std::mutex mu_;
  std::exception_ptr error_;
};

using RequestPtr = std::shared_ptr<Request>;

}  // namespace braid::net
