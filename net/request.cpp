#include "net/request.hpp"

#include "core/error.hpp"
#include "core/thread.hpp"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

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

namespace {

// Sleeps until one of two private futex words no longer holds `expected`, or
// `timeout_ns` passes (futex_waitv, Linux 5.16+). False if the kernel lacks
// futex_waitv; the caller then polls.
bool futex_wait_two(std::atomic<uint32_t>* a, std::atomic<uint32_t>* b, uint32_t expected, int64_t timeout_ns) {
  static std::atomic<bool> missing{false};
  if (missing.load(std::memory_order_relaxed)) return false;
  struct futex_waitv w[2] = {};
  w[0].val = expected;
  w[0].uaddr = reinterpret_cast<uintptr_t>(a);
  w[0].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
  w[1] = w[0];
  w[1].uaddr = reinterpret_cast<uintptr_t>(b);
  timespec abs{};
  clock_gettime(CLOCK_MONOTONIC, &abs);
  int64_t ns = abs.tv_nsec + timeout_ns;
  abs.tv_sec += ns / 1'000'000'000;
  abs.tv_nsec = ns % 1'000'000'000;
  long r = syscall(SYS_futex_waitv, w, 2u, 0u, &abs, CLOCK_MONOTONIC);
  if (r < 0 && errno == ENOSYS) {
    missing.store(true, std::memory_order_relaxed);
    return false;
  }
  return true;
}

}  // namespace

bool Request::wait_either(Request& a, Request& b, const Deadline& deadline) {
  // As wait(), for two requests: spin (driving inline progress), yield, then
  // sleep on both words (and the progress source's doorbells) at once.
  Progress* progress = a.progress_ ? a.progress_ : b.progress_;
  auto pending = [&] { return a.state() == kPending && b.state() == kPending; };
  int spins = 0;
  while (pending()) {
    if (progress && progress->progress()) {
      spins = 0;
      continue;
    }
    if (++spins < 2000) {
      cpu_relax();
      continue;
    }
    if (deadline.expired()) return false;
    if (progress && spins < 20000) {
      std::atomic_thread_fence(std::memory_order_seq_cst);
      sched_yield();
      continue;
    }
    a.waiters_.fetch_add(1, std::memory_order_acq_rel);
    b.waiters_.fetch_add(1, std::memory_order_acq_rel);
    int64_t slice = deadline.remaining_ns();
    if (slice > 10'000'000) slice = 10'000'000;
    if (slice < 0) slice = 0;
    if (pending()) {
      std::atomic<uint32_t>* words[2] = {&a.state_, &b.state_};
      bool slept = progress ? progress->wait_for_activity(words, 2, kPending, slice)
                            : futex_wait_two(&a.state_, &b.state_, kPending, slice);
      if (!slept) futex_wait(&a.state_, kPending, 50'000, false);  // poll b every 50 us
    }
    a.waiters_.fetch_sub(1, std::memory_order_acq_rel);
    b.waiters_.fetch_sub(1, std::memory_order_acq_rel);
  }
  return true;
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
