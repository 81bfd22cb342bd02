#pragma once
// One epoll thread that progresses every socket of a mesh.
//
// Sockets are registered edge-triggered; a handler that still has work after
// its turn (more bytes to read or write than one turn's budget) asks to be
// called again, so one busy connection cannot starve the others. Other
// threads hand work to the loop with post() (an eventfd wake-up). Handlers
// with timers (fault injection: latency, rate caps, stalls) report their next
// deadline and the loop sleeps no longer than that.
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace braid::net {

class IoLoop;

class IoHandler {
 public:
  virtual ~IoHandler() = default;
  // Runs in the loop thread with the epoll events seen since the last call (0
  // when woken by post() or a timer). Returns true if it has more work now.
  virtual bool on_io(uint32_t events) = 0;
  // Next time (now_ns() clock) it must run without events; INT64_MAX = none.
  virtual int64_t next_timer_ns() { return INT64_MAX; }

 private:
  friend class IoLoop;
  uint32_t pending_events_ = 0;
  bool queued_ = false;  // in the loop's ready list (loop thread only)
};

class IoLoop {
 public:
  IoLoop();
  ~IoLoop();
  IoLoop(const IoLoop&) = delete;
  IoLoop& operator=(const IoLoop&) = delete;

  // Registers fd (edge-triggered for `events`, EPOLLET is added).
  void add(int fd, IoHandler* handler, uint32_t events);
  void remove(int fd);
  // Asks the loop to consult handler->next_timer_ns() on every iteration.
  void add_timer_handler(IoHandler* handler);
  // Thread-safe: runs handler->on_io(0) soon in the loop thread.
  void post(IoHandler* handler);

  void start(const std::string& thread_name);
  // Stops and joins the thread (idempotent). Handlers are not called after.
  void stop();
  bool in_loop_thread() const { return std::this_thread::get_id() == thread_id_; }
  bool running() const { return thread_.joinable(); }

  // Runs iterations until `done()` returns true or `deadline_ns` passes; used
  // for the orderly close at shutdown (called from the loop thread's function
  // or, when the thread is not running, from the caller).
  template <typename F>
  void run_until(F done, int64_t deadline_ns) {
    while (!done() && iterate(deadline_ns)) {
    }
  }

 private:
  void run();
  // One epoll_wait + dispatch; false when the deadline passed or stop() was called.
  bool iterate(int64_t deadline_ns);
  void enqueue(IoHandler* h, uint32_t events);

  int epfd_ = -1;
  int wakefd_ = -1;
  std::thread thread_;
  std::thread::id thread_id_{};
  std::atomic<bool> stopping_{false};
  std::mutex post_mu_;
  std::vector<IoHandler*> posted_;
  std::atomic<bool> wake_pending_{false};
  std::vector<IoHandler*> ready_;
  std::vector<IoHandler*> timer_handlers_;
};

}  // namespace braid::net
