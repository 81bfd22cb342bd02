#include "comm/work.hpp"

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"

namespace braid::comm {

net::AbortKind abort_kind_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Mismatch&) {
    return net::AbortKind::Mismatch;
  } catch (const PeerLost&) {
    return net::AbortKind::PeerLost;
  } catch (const Timeout&) {
    return net::AbortKind::Timeout;
  } catch (...) {
    return net::AbortKind::Aborted;
  }
}

namespace {
std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown failure";
  }
}
}  // namespace

std::exception_ptr FailureState::fail(std::exception_ptr e, bool spread) {
  std::exception_ptr first;
  bool abort_now = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) {
      error_ = e;
      failed_.store(true, std::memory_order_release);
      log::debug("collective group failed: {}", message_of(e));
    }
    first = error_;
    // A failure first recorded without spreading (a pair the transport lost)
    // must still abort the mesh once an operation fails: that operation may
    // leave receives posted on other pairs, into buffers its caller frees as
    // soon as it sees the error.
    if (spread && !spread_) abort_now = spread_ = true;
  }
  if (abort_now) {
    if (auto m = mesh_.lock()) m->abort(abort_kind_of(first), message_of(first));
  }
  return first;
}

std::exception_ptr FailureState::error() const {
  if (!failed()) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void WorkState::complete() {
  uint32_t expected = kPending;
  if (state_.compare_exchange_strong(expected, kDone, std::memory_order_seq_cst) &&
      waiters_.load(std::memory_order_seq_cst))
    futex_wake(&state_, INT32_MAX, false);
}

void WorkState::fail(std::exception_ptr e) {
  // Claim the state first so that only one failure writes error_.
  uint32_t expected = kPending;
  if (!state_.compare_exchange_strong(expected, kFailing, std::memory_order_acq_rel)) return;
  error_ = std::move(e);
  state_.store(kFailed, std::memory_order_seq_cst);
  if (waiters_.load(std::memory_order_seq_cst)) futex_wake(&state_, INT32_MAX, false);
}

void WorkState::wait_done() {
  for (int spin = 0; spin < 1000 && !finished(); ++spin) cpu_relax();
  while (!finished()) {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    uint32_t st = state();
    if (st == kPending) futex_wait(&state_, kPending, 100'000'000, false);
    else if (st == kFailing) cpu_relax();
    waiters_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

std::shared_ptr<WorkState> failed_work(std::exception_ptr e) {
  auto w = std::make_shared<WorkState>();
  w->fail(std::move(e));
  return w;
}

// --- Work ---

void Work::wait() {
  if (!s_) return;
  WorkState& s = *s_;
  if (s.request && s.state() == WorkState::kPending) {
    try {
      s.request->wait(s.deadline);
      s.complete();
    } catch (...) {
      std::exception_ptr e = std::current_exception();
      s.fail(s.failure ? s.failure->fail(e) : e);
    }
  }
  s.wait_done();
  if (s.state() == WorkState::kFailed) std::rethrow_exception(s.error());
}

bool Work::test() {
  if (!s_) return true;
  WorkState& s = *s_;
  if (s.request && s.state() == WorkState::kPending) {
    try {
      if (s.request->test()) s.complete();
      else if (s.deadline.expired())
        throw Timeout("point-to-point operation did not complete before its deadline",
                      "the peer is slow, hung or never posted the matching operation");
    } catch (...) {
      std::exception_ptr e = std::current_exception();
      s.fail(s.failure ? s.failure->fail(e) : e);
    }
  }
  uint32_t st = s.state();
  if (st == WorkState::kFailed) std::rethrow_exception(s.error());
  return st == WorkState::kDone;
}

WorkTiming Work::timing() const { return s_ ? s_->timing : WorkTiming{}; }

}  // namespace braid::comm
