#include "net/request.hpp"

#include "core/error.hpp"
#include "core/thread.hpp"

#include <sched.h>

namespace braid::net {

bool Request::test() {
  if (progress_ && state() == kPending) progress_->progress();
  State s = state();
  if (s == kFailed) std::rethrow_exception(error());
  return s == kDone;
}

void Request::wait(const Deadline& deadline) {
  // Spin first (completions usually arrive within microseconds on shared
  // memory and loopback), then sleep on the futex in short slices so that the
  // deadline is honoured.
  int spins = 0;
  while (state() == kPending) {
    if (progress_) {
      if (progress_->progress()) { spins = 0; continue; }
    }
    if (++spins < 2000) { cpu_relax(); continue; }
    if (deadline.expired()) {
      throw Timeout("request did not complete before its deadline",
                    "a peer is slow, hung or unreachable; raise the collective timeout if the link is slow");
    }
    if (progress_) {
      // Inline progress: yield the CPU instead of sleeping, so the peer runs.
      if (spins < 20000) { std::atomic_thread_fence(std::memory_order_seq_cst); sched_yield(); continue; }
      // Then sleep until the progress source reports activity (shared memory:
      // the peer rings a doorbell futex) or this request finishes.
      waiters_.fetch_add(1, std::memory_order_acq_rel);
      int64_t slice = deadline.remaining_ns();
      if (slice > 10'000'000) slice = 10'000'000;
      if (state() == kPending && !progress_->wait_for_activity(&state_, kPending, slice))
        futex_wait(&state_, kPending, 50'000, false);  // 50 us
      waiters_.fetch_sub(1, std::memory_order_acq_rel);
      continue;
    }
    waiters_.fetch_add(1, std::memory_order_acq_rel);
    int64_t slice = deadline.remaining_ns();
    if (slice > 100'000'000) slice = 100'000'000;
    futex_wait(&state_, kPending, slice, false);
    waiters_.fetch_sub(1, std::memory_order_acq_rel);
  }
  if (state() == kFailed) std::rethrow_exception(error());
}

void Request::complete() {
  uint32_t expected = kPending;
  if (state_.compare_exchange_strong(expected, kDone, std::memory_order_acq_rel)) {
    if (waiters_.load(std::memory_order_acquire)) futex_wake(&state_, INT32_MAX, false);
  }
}

void Request::fail(std::exception_ptr e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state() != kPending) return;
    error_ = e;
  }
  uint32_t expected = kPending;
  if (state_.compare_exchange_strong(expected, kFailed, std::memory_order_acq_rel))
    futex_wake(&state_, INT32_MAX, false);
}

void Request::reset_for_reuse() {
  if (state() == kFailed) {  // only a failed request carries an error
    std::lock_guard<std::mutex> lock(mu_);
    error_ = nullptr;
  }
  waiters_.store(0, std::memory_order_relaxed);
  state_.store(kPending, std::memory_order_release);
}

std::exception_ptr Request::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

}  // namespace braid::net
