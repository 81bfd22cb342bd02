#pragma once
// Minimal leveled logging to stderr. Lines look like
//   [braid 12:01:02.345 r1 W] message
// The level comes from BRAID_LOG (debug|info|warn|error, default info).
#include <fmt/format.h>

#include <string_view>

namespace braid::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

Level level();
void set_level(Level l);
// Rank shown in every line; -1 hides it.
void set_rank(int rank);
void write(Level l, std::string_view msg);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... a) {
  if (level() <= Level::Debug) write(Level::Debug, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... a) {
  if (level() <= Level::Info) write(Level::Info, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... a) {
  if (level() <= Level::Warn) write(Level::Warn, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... a) {
  if (level() <= Level::Error) write(Level::Error, fmt::format(f, std::forward<Args>(a)...));
}

}  // namespace braid::log
