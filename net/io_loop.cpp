#include "net/io_loop.hpp"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"

namespace braid::net {

IoLoop::IoLoop() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) throw NetError(fmt::format("epoll_create1 failed: {}", std::strerror(errno)));
  wakefd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakefd_ < 0) {
    close(epfd_);
    throw NetError(fmt::format("eventfd failed: {}", std::strerror(errno)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // nullptr marks the wake-up fd
  epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
  ready_.reserve(64);
}

IoLoop::~IoLoop() {
  stop();
  close(wakefd_);
  close(epfd_);
}

void IoLoop::add(int fd, IoHandler* handler, uint32_t events) {
  epoll_event ev{};
  ev.events = events | EPOLLET;
  ev.data.ptr = handler;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0)
    throw NetError(fmt::format("epoll_ctl(ADD) failed: {}", std::strerror(errno)));
}

void IoLoop::remove(int fd) { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void IoLoop::add_timer_handler(IoHandler* handler) { timer_handlers_.push_back(handler); }

void IoLoop::post(IoHandler* handler) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(handler);
  }
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
    uint64_t one = 1;
    (void)!write(wakefd_, &one, sizeof one);
  }
}

void IoLoop::start(const std::string& thread_name) {
  stopping_.store(false);
  thread_ = std::thread([this, thread_name] {
    set_thread_name(thread_name);
    run();
  });
  thread_id_ = thread_.get_id();
}

void IoLoop::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  uint64_t one = 1;
  (void)!write(wakefd_, &one, sizeof one);
  thread_.join();
  thread_id_ = {};
}

void IoLoop::run() {
  while (!stopping_.load(std::memory_order_acquire)) iterate(INT64_MAX);
}

void IoLoop::enqueue(IoHandler* h, uint32_t events) {
  h->pending_events_ |= events;
  if (!h->queued_) {
    h->queued_ = true;
    ready_.push_back(h);
  }
}

bool IoLoop::iterate(int64_t deadline_ns) {
  int64_t now = now_ns();
  if (now >= deadline_ns) return false;
  int64_t wake_at = deadline_ns;
  for (IoHandler* h : timer_handlers_) {
    int64_t t = h->next_timer_ns();
    if (t < wake_at) wake_at = t;
  }
  int timeout_ms;
  if (!ready_.empty()) {
    timeout_ms = 0;
  } else if (wake_at == INT64_MAX) {
    timeout_ms = -1;
  } else {
    int64_t d = wake_at - now;
    timeout_ms = d <= 0 ? 0 : static_cast<int>(std::min<int64_t>((d + 999'999) / 1'000'000, 1'000'000));
  }
  epoll_event events[64];
  int n = epoll_wait(epfd_, events, 64, timeout_ms);
  if (n < 0 && errno != EINTR) {
    log::error("epoll_wait failed: {}", std::strerror(errno));
    return false;
  }
  for (int i = 0; i < n; ++i) {
    auto* h = static_cast<IoHandler*>(events[i].data.ptr);
    if (h == nullptr) {
      uint64_t v;
      (void)!read(wakefd_, &v, sizeof v);
      wake_pending_.store(false, std::memory_order_release);
      std::vector<IoHandler*> posted;
      {
        std::lock_guard<std::mutex> lock(post_mu_);
        posted.swap(posted_);
      }
      for (IoHandler* p : posted) enqueue(p, 0);
      continue;
    }
    enqueue(h, events[i].events);
  }
  if (stopping_.load(std::memory_order_acquire) && deadline_ns == INT64_MAX) return false;
  now = now_ns();
  for (IoHandler* h : timer_handlers_)
    if (h->next_timer_ns() <= now) enqueue(h, 0);
  // Run each ready handler once; those with more work stay in the list.
  size_t count = ready_.size();
  size_t keep = 0;
  for (size_t i = 0; i < count; ++i) {
    IoHandler* h = ready_[i];
    uint32_t ev = h->pending_events_;
    h->pending_events_ = 0;
    bool more = h->on_io(ev);
    if (more || h->pending_events_) {
      ready_[keep++] = h;
    } else {
      h->queued_ = false;
    }
  }
  // Handlers enqueued during this round (by on_io of others) were appended.
  for (size_t i = count; i < ready_.size(); ++i) ready_[keep++] = ready_[i];
  ready_.resize(keep);
  return true;
}

}  // namespace braid::net
