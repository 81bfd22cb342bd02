#include "ckpt/crash_point.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace braid::ckpt {

namespace {
constexpr CrashPoint kAll[] = {CrashPoint::DuringShardWrite, CrashPoint::AfterShardWrite,
                               CrashPoint::BeforeManifest, CrashPoint::BeforeRename, CrashPoint::BeforeLatest};
}

std::string_view crash_point_name(CrashPoint p) {
  switch (p) {
    case CrashPoint::None: return "none";
    case CrashPoint::DuringShardWrite: return "during-shard-write";
    case CrashPoint::AfterShardWrite: return "after-shard-write";
    case CrashPoint::BeforeManifest: return "before-manifest";
    case CrashPoint::BeforeRename: return "before-rename";
    case CrashPoint::BeforeLatest: return "before-latest";
  }
  return "?";
}

CrashPlan CrashPlan::from_env() {
  auto at = env::get("BRAID_CKPT_CRASH_AT");
  if (!at || at->empty() || *at == "none") return {};
  CrashPoint point = CrashPoint::None;
  std::string valid;
  for (CrashPoint p : kAll) {
    if (*at == crash_point_name(p)) point = p;
    valid += (valid.empty() ? "" : ", ") + std::string(crash_point_name(p));
  }
  if (point == CrashPoint::None)
    throw ConfigError(fmt::format("BRAID_CKPT_CRASH_AT='{}' is not a crash point", *at), "use one of: " + valid);
  int rank = static_cast<int>(env::get_int("BRAID_CKPT_CRASH_RANK", -1));
  return {point, rank};
}

std::string CrashPlan::describe() const {
  if (!active()) return "no crash point";
  return fmt::format("crash point '{}' on {}", crash_point_name(point_),
                     rank_ < 0 ? std::string("every rank") : fmt::format("rank {}", rank_));
}

void CrashPlan::maybe_crash(CrashPoint here, int rank) const {
  if (here != point_ || !applies_to(rank)) return;
  log::error("checkpoint test crash point '{}' reached on rank {}: killing this process with SIGKILL",
             crash_point_name(here), rank);
  ::kill(::getpid(), SIGKILL);
  ::pause();  // SIGKILL cannot be caught; never continue past a crash point
}

}  // namespace braid::ckpt
