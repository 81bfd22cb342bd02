#include "core/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace braid::log {
namespace {

Level initial_level() {
  const char* e = std::getenv("BRAID_LOG");
  if (!e) return Level::Info;
  if (!std::strcmp(e, "debug")) return Level::Debug;
  if (!std::strcmp(e, "warn")) return Level::Warn;
  if (!std::strcmp(e, "error")) return Level::Error;
  if (!std::strcmp(e, "off")) return Level::Off;
  return Level::Info;
}

std::atomic<int> g_level{static_cast<int>(initial_level())};
std::atomic<int> g_rank{-1};
std::mutex g_mu;

}  // namespace

Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }
void set_level(Level l) { g_level.store(static_cast<int>(l)); }
void set_rank(int rank) { g_rank.store(rank); }

void write(Level l, std::string_view msg) {
  using namespace std::chrono;
  auto now = system_clock::now();
  auto t = system_clock::to_time_t(now);
  int ms = static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  static const char kTag[] = {'D', 'I', 'W', 'E'};
  char rank[16] = "";
  int r = g_rank.load();
  if (r >= 0) std::snprintf(rank, sizeof rank, " r%d", r);
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "[braid %02d:%02d:%02d.%03d%s %c] %.*s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
               ms, rank, kTag[static_cast<int>(l) & 3], static_cast<int>(msg.size()), msg.data());
}

}  // namespace braid::log
