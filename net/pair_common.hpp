#pragma once
// Pieces shared by the socket and shared-memory pairs: a posted receive, the
// errors they raise, a small FIFO and a spin lock. Internal to net/.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/thread.hpp"
#include "net/pair.hpp"

namespace braid::net {

// Unexpected messages (no receive posted yet) up to this size are buffered
// whenever the budget allows. Larger ones are buffered only while some other
// receive on the pair is waiting (it may be queued behind them) or a send to
// the peer is (two ranks that each wait for their own large send to finish
// before posting receives must not block each other); otherwise they wait
// in the socket or ring for their own receive, which then gets them
// directly, saving a copy and a large allocation.
inline constexpr size_t kSmallUnexpectedBytes = 16 << 10;

// Everything a pair needs from its mesh.
struct PairContext {
  int rank = 0;
  int size = 1;
  uint32_t epoch = 0;
  size_t unexpected_budget = 64 << 20;
  uint32_t max_frame_bytes = 64u << 20;
  uint64_t max_message_bytes = uint64_t{1} << 40;
  // Set on requests so that their waiters progress shared memory (null in a
  // mesh without shm pairs).
  Progress* progress = nullptr;
  // Reports a pair failure the peer caused (lost, protocol error, its ABORT).
  std::function<void(int peer, std::exception_ptr)> on_failure;
};

// A receive posted by the user: where the bytes go and how.
struct RecvOp {
  Tag tag = 0;
  char* dst = nullptr;
  const char* local = nullptr;  // set for irecv_reduce
  size_t len = 0;
  uint32_t meta = 0;
  Combiner combiner;
  RequestPtr req;

  bool reduce() const { return local != nullptr; }
  // Writes bytes [off, off+n) of the message: a copy, or a fold with local.
  void deliver(size_t off, const void* src, size_t n) const {
    if (n == 0) return;
    if (local) {
      combiner.fn(dst + off, local + off, src, n);
    } else {
      std::memcpy(dst + off, src, n);
    }
  }
};

// Mismatch raised on a receive whose length or check value differs from the
// arriving message (the same text on every transport).
std::exception_ptr mismatch_error(int peer, uint64_t got_len, uint32_t got_meta, uint64_t want_len,
                                  uint32_t want_meta);
// Throws braid::Error when a Combiner cannot be used (no function, or an
// element size that is not a power of two up to 64: pieces are 64-aligned).
void check_combiner(const Combiner& c, size_t len);
// The peer in messages: "rank 3 (10.0.0.4:41234)".
std::string describe_peer(int peer, const std::string& addr);

// Test-and-test-and-set lock for the short critical sections of the shm
// fast path (no syscall, no allocation).
class SpinLock {
 public:
  void lock() {
    while (true) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) cpu_relax();
    }
  }
  bool try_lock() {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

// Recycles requests the caller has let go of, so that the fast path does not
// allocate: a ring of the last few issued; one whose only owner is the ring
// (use_count 1) and that has finished is reset and handed out again. Guarded
// by the caller's lock.
class RequestCache {
 public:
  explicit RequestCache(Progress* progress = nullptr) : progress_(progress) {}
  RequestPtr get() {
    RequestPtr& slot = ring_[next_++ & (kSize - 1)];
    if (slot && slot.use_count() == 1 && slot->done()) {
      std::atomic_thread_fence(std::memory_order_acquire);  // the last user's accesses happened before
      slot->reset_for_reuse();
      return slot;
    }
    slot = std::make_shared<Request>(progress_);
    return slot;
  }

 private:
  static constexpr unsigned kSize = 8;
  Progress* progress_;
  RequestPtr ring_[kSize];
  unsigned next_ = 0;
};

// FIFO over a growable ring of slots: after warm-up, push/pop allocate nothing.
template <typename T>
class Fifo {
 public:
  bool empty() const { return count_ == 0; }
  size_t size() const { return count_; }
  T& front() { return slots_[head_]; }
  T& operator[](size_t i) { return slots_[(head_ + i) & (slots_.size() - 1)]; }
  T& back() { return (*this)[count_ - 1]; }
  void push_back(T v) {
    if (count_ == slots_.size()) grow();
    slots_[(head_ + count_) & (slots_.size() - 1)] = std::move(v);
    ++count_;
  }
  void pop_front() {
    slots_[head_] = T();
    head_ = (head_ + 1) & (slots_.size() - 1);
    --count_;
  }
  void clear() {
    while (!empty()) pop_front();
  }

 private:
  void grow() {
    std::vector<T> bigger(slots_.empty() ? 8 : slots_.size() * 2);
    for (size_t i = 0; i < count_; ++i) bigger[i] = std::move((*this)[i]);
    slots_.swap(bigger);
    head_ = 0;
  }
  std::vector<T> slots_;
  size_t head_ = 0;
  size_t count_ = 0;
};

}  // namespace braid::net
