// Flight recorder ring and its dumps. The dump writer formats with snprintf
// into a stack buffer and write(2)s it, without allocating, so that the same
// code serves the fatal-signal path (best effort: a crash inside the
// allocator or with the recorder's lock held still gets its dump, since the
// signal path only try-locks).
#include "comm/flight_recorder.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>

namespace braid::comm {
namespace {

int64_t unix_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void copy_text(char* dst, size_t cap, const char* src) {
  if (!src) src = "";
  size_t n = 0;
  for (; n + 1 < cap && src[n]; ++n) dst[n] = (src[n] == '"' || src[n] == '\\' || src[n] == '\n') ? '\'' : src[n];
  dst[n] = 0;
}

// Recorders that dump on a fatal signal (fixed array: the handler must not allocate).
constexpr int kMaxRecorders = 64;
std::array<std::atomic<FlightRecorder*>, kMaxRecorders> g_recorders{};
std::atomic<bool> g_handlers_installed{false};

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

const char* flight_state_name(FlightState s) {
  switch (s) {
    case FlightState::Issued: return "issued";
    case FlightState::Running: return "running";
    case FlightState::Done: return "done";
    case FlightState::Failed: return "failed";
    case FlightState::NotRun: return "not_run";
  }
  return "?";
}

struct FlightSignalDump {
  static void handler(int sig) {
    char reason[48];
    std::snprintf(reason, sizeof reason, "fatal signal %d", sig);
    for (auto& a : g_recorders) {
      FlightRecorder* r = a.load(std::memory_order_acquire);
      if (!r) continue;
      bool locked = r->mu_.try_lock();
      if (!r->path_.empty()) r->write_locked(reason, -1);
      if (locked) r->mu_.unlock();
    }
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
};

FlightRecorder::FlightRecorder(size_t capacity) : ring_(std::max<size_t>(capacity, 1)) {}

FlightRecorder::~FlightRecorder() {
  for (auto& a : g_recorders) {
    FlightRecorder* self = this;
    a.compare_exchange_strong(self, nullptr);
  }
}

FlightEntry* FlightRecorder::slot(uint64_t token) {
  if (token == 0) return nullptr;
  FlightEntry& e = ring_[token % ring_.size()];
  return e.record == token ? &e : nullptr;  // overwritten by a newer record
}

uint64_t FlightRecorder::issued(const char* op, const char* dtype, uint64_t bytes, uint64_t seq, uint32_t epoch,
                                uint32_t group, int rank, int group_size, int peer) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t token = next_record_++;
  FlightEntry& e = ring_[token % ring_.size()];
  e = FlightEntry{};
  e.record = token;
  e.seq = seq;
  e.epoch = epoch;
  e.group = group;
  e.rank = rank;
  e.group_size = group_size;
  e.peer = peer;
  copy_text(e.op, sizeof e.op, op);
  copy_text(e.dtype, sizeof e.dtype, dtype);
  e.bytes = bytes;
  e.issued_unix_ns = unix_ns();
  return token;
}

void FlightRecorder::started(uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = slot(token)) {
    e->state = FlightState::Running;
    e->started_unix_ns = unix_ns();
  }
}

void FlightRecorder::finished(uint64_t token, bool ok, const char* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = slot(token)) {
    e->state = ok ? FlightState::Done : FlightState::Failed;
    e->finished_unix_ns = unix_ns();
    if (!ok) copy_text(e->error, sizeof e->error, error);
  }
}

void FlightRecorder::not_run(uint64_t token, const char* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = slot(token)) {
    e->state = FlightState::NotRun;
    copy_text(e->error, sizeof e->error, error);
  }
}

std::vector<FlightEntry> FlightRecorder::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FlightEntry> out;
  for (const auto& e : ring_)
    if (e.record) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const FlightEntry& a, const FlightEntry& b) { return a.record < b.record; });
  return out;
}

void FlightRecorder::set_dump_path(const std::string& path, int rank) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    path_ = path;
    dump_rank_ = rank;
  }
  // Listed for the fatal-signal dump (once).
  for (auto& a : g_recorders)
    if (a.load() == this) return;
  for (auto& a : g_recorders) {
    FlightRecorder* empty = nullptr;
    if (a.compare_exchange_strong(empty, this)) return;
  }
}

std::string FlightRecorder::dump_path() const {
  std::lock_guard<std::mutex> lock(mu_);
  return path_;
}

bool FlightRecorder::dump(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (path_.empty()) return false;
  return write_locked(reason.c_str(), -1);
}

void FlightRecorder::on_failure(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (path_.empty() || dumped_failure_) return;
  dumped_failure_ = true;
  write_locked(reason.c_str(), -1);
}

bool FlightRecorder::write_locked(const char* reason, int fd_in) {
  // Written to a temporary name and renamed, so a reader never sees half a dump.
  char tmp[4096];
  if (path_.size() + 8 >= sizeof tmp) return false;
  std::snprintf(tmp, sizeof tmp, "%s.tmp", path_.c_str());
  int fd = fd_in >= 0 ? fd_in : ::open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  char line[1024];
  char why[160];
  copy_text(why, sizeof why, reason);
  int n = std::snprintf(line, sizeof line,
                        "{\"flight_recorder\":1,\"rank\":%d,\"reason\":\"%s\",\"dumped_unix_ns\":%lld,"
                        "\"capacity\":%zu}\n",
                        dump_rank_, why, static_cast<long long>(unix_ns()), ring_.size());
  write_all(fd, line, static_cast<size_t>(std::min<int>(n, sizeof line - 1)));
  // Oldest first without allocating: walk the ring from the oldest record.
  uint64_t first = next_record_ > ring_.size() ? next_record_ - ring_.size() : 1;
  for (uint64_t rec = first; rec < next_record_; ++rec) {
    const FlightEntry& e = ring_[rec % ring_.size()];
    if (e.record != rec) continue;
    n = std::snprintf(line, sizeof line,
                      "{\"record\":%llu,\"seq\":%llu,\"epoch\":%u,\"group\":%u,\"rank\":%d,\"group_size\":%d,"
                      "\"peer\":%d,\"op\":\"%s\",\"dtype\":\"%s\",\"bytes\":%llu,\"state\":\"%s\","
                      "\"issued_unix_ns\":%lld,\"started_unix_ns\":%lld,\"finished_unix_ns\":%lld,"
                      "\"error\":\"%s\"}\n",
                      static_cast<unsigned long long>(e.record), static_cast<unsigned long long>(e.seq), e.epoch,
                      e.group, e.rank, e.group_size, e.peer, e.op, e.dtype, static_cast<unsigned long long>(e.bytes),
                      flight_state_name(e.state), static_cast<long long>(e.issued_unix_ns),
                      static_cast<long long>(e.started_unix_ns), static_cast<long long>(e.finished_unix_ns), e.error);
    write_all(fd, line, static_cast<size_t>(std::min<int>(n, sizeof line - 1)));
  }
  if (fd_in < 0) {
    ::close(fd);
    if (::rename(tmp, path_.c_str()) != 0) return false;
  }
  return true;
}

void FlightRecorder::install_fatal_signal_dump() {
  if (g_handlers_installed.exchange(true)) return;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) {
    struct sigaction sa {};
    sa.sa_handler = &FlightSignalDump::handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    ::sigaction(sig, &sa, nullptr);
  }
}

}  // namespace braid::comm
