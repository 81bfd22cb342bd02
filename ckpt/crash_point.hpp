#pragma once
// Test-only crash points of a save: with BRAID_CKPT_CRASH_AT=<point> in the
// environment (and optionally BRAID_CKPT_CRASH_RANK=<rank>), the process kills
// itself with SIGKILL when its writer reaches that point, so tests can check
// that a save killed anywhere leaves the previous checkpoint intact and no
// directory that looks complete. Active points are announced in the log.
#include <string>
#include <string_view>

namespace braid::ckpt {

enum class CrashPoint {
  None,
  DuringShardWrite,  // half of this rank's shard file written
  AfterShardWrite,   // shard file written and fsynced, not yet announced to rank 0
  BeforeManifest,    // rank 0: all shards in, manifest not written
  BeforeRename,      // rank 0: manifest written, temporary directory not renamed
  BeforeLatest,      // rank 0: step directory renamed, `latest` not updated
};

std::string_view crash_point_name(CrashPoint p);  // "after-shard-write", ...

class CrashPlan {
 public:
  CrashPlan() = default;
  CrashPlan(CrashPoint point, int rank) : point_(point), rank_(rank) {}
  // Reads BRAID_CKPT_CRASH_AT / BRAID_CKPT_CRASH_RANK; throws ConfigError on
  // an unknown point name, listing the valid ones.
  static CrashPlan from_env();
  bool active() const { return point_ != CrashPoint::None; }
  bool applies_to(int rank) const { return active() && (rank_ < 0 || rank_ == rank); }
  std::string describe() const;
  // SIGKILLs this process if `here` is the planned point and `rank` matches.
  void maybe_crash(CrashPoint here, int rank) const;

 private:
  CrashPoint point_ = CrashPoint::None;
  int rank_ = -1;  // -1: every rank
};

}  // namespace braid::ckpt
