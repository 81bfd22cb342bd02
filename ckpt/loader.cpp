#include "ckpt/loader.hpp"

#include <fmt/format.h>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace braid::ckpt {

namespace {

std::string join_problems(const std::vector<Problem>& problems) {
  std::string s;
  for (auto& p : problems) s += (s.empty() ? "" : "; ") + p.describe();
  return s;
}

LoadedCheckpoint load_from(const CheckpointReader& rd, const StateLayout& expected,
                           const std::vector<ReadTarget>& reads, int rank) {
  const std::string where = rd.path().string();
  if (auto diff = expected.difference(rd.layout(), "this model", "the checkpoint"))
    throw ConfigError(fmt::format("checkpoint {} does not match this model: {}", where, *diff),
                      "resume with the model config the checkpoint was written with (`braid ckpt inspect` shows "
                      "it), or use a new checkpoint directory");
  auto problems = rd.check_files();
  if (!problems.empty())
    throw CorruptData(fmt::format("{}: {}", where, join_problems(problems)));
  for (auto& t : reads) {
    if (!t.dst && !t.range.empty()) throw ConfigError(fmt::format("read of buffer '{}' has no destination", t.buffer));
    rd.read(t.buffer, t.range, t.dst);
  }
  LoadedCheckpoint l;
  l.step = rd.step();
  l.path = where;
  l.saved_world = rd.manifest().world_size;
  l.model_config = rd.manifest().model_config;
  l.global_blobs = rd.read_blobs(-1);
  if (rank < l.saved_world) l.rank_blobs = rd.read_blobs(rank);
  return l;
}

}  // namespace

LoadedCheckpoint load_step_dir(const std::string& step_dir, const StateLayout& expected,
                               const std::vector<ReadTarget>& reads, int rank) {
  CheckpointReader rd(step_dir);
  return load_from(rd, expected, reads, rank);
}

std::optional<LoadedCheckpoint> load_latest(const std::string& dir, const StateLayout& expected,
                                            const std::vector<ReadTarget>& reads, const LoadOptions& o) {
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world)
    throw ConfigError(fmt::format("load rank {} is outside a world of {}", o.rank, o.world));
  if (o.world > 1 && !o.store)
    throw ConfigError("loading a checkpoint on several ranks needs the rendezvous store",
                      "pass the job's net::Store in LoadOptions");
  CheckpointDir cd(dir);
  std::vector<StepDir> ignored;
  std::string latest_problem;
  std::vector<StepDir> candidates = cd.committed_newest_first(&ignored, &latest_problem);
  if (!latest_problem.empty())
    log::warn("{}; considering every step directory, newest first", latest_problem);
  for (auto& d : ignored)
    log::info("ignoring {}: newer than `latest` (its save was interrupted before the commit)", d.path.string());

  if (o.world > 1) {
    // Every rank must walk the same candidates: rank 0's listing is the truth.
    std::string key = o.store_prefix + "load/candidates";
    if (o.rank == 0) {
      std::string list;
      for (auto& c : candidates) list += std::to_string(c.step) + " ";
      o.store->set(key, list);
    } else {
      std::string list = o.store->get(key, Deadline::in_seconds(o.timeout_s));
      std::vector<StepDir> mine;
      size_t pos = 0;
      while (pos < list.size()) {
        size_t sp = list.find(' ', pos);
        int64_t step = std::stoll(list.substr(pos, sp - pos));
        mine.push_back({step, cd.step_path(step)});
        pos = sp + 1;
      }
      candidates = std::move(mine);
    }
  }
  // The last rank done with the walk clears the candidate list, so a later
  // load through the same store starts clean.
  auto leave = [&] {
    if (o.world > 1 && o.store->add(o.store_prefix + "load/left", 1) == o.world) {
      o.store->erase(o.store_prefix + "load/candidates");
      o.store->erase(o.store_prefix + "load/left");
    }
  };
  if (candidates.empty()) {
    leave();
    return std::nullopt;
  }

  std::vector<SkippedCheckpoint> skipped;
  for (auto& c : candidates) {
    std::string reason;
    LoadedCheckpoint result;
    try {
      CheckpointReader rd(c.path);
      result = load_from(rd, expected, reads, o.rank);
    } catch (const CorruptData& e) {
      reason = e.what();
    } catch (const IoError& e) {
      reason = e.what();
    }
    if (o.world > 1) {
      // All ranks must have loaded this step completely, or all move on.
      std::string base = fmt::format("{}load/{}/", o.store_prefix, c.step);
      o.store->set(base + std::to_string(o.rank), reason.empty() ? "ok" : reason);
      Deadline d = Deadline::in_seconds(o.timeout_s);
      for (int r = 0; r < o.world; ++r) {
        std::string v = o.store->get(base + std::to_string(r), d);
        if (v != "ok" && reason.empty()) reason = fmt::format("rank {} could not load it: {}", r, v);
      }
      if (o.store->add(base + "done", 1) == o.world) {
        for (int r = 0; r < o.world; ++r) o.store->erase(base + std::to_string(r));
        o.store->erase(base + "done");
      }
    }
    if (reason.empty()) {
      leave();
      result.skipped = std::move(skipped);
      if (!result.skipped.empty())
        log::warn("resuming from {} (step {}) after skipping {} newer invalid checkpoint(s)", result.path,
                  result.step, result.skipped.size());
      return result;
    }
    log::warn("checkpoint {} is not valid, trying the previous one: {}", c.path.string(), reason);
    skipped.push_back({c.step, c.path.string(), reason});
  }
  leave();
  std::string all;
  for (auto& s : skipped) all += fmt::format("\n  step {}: {}", s.step, s.reason);
  throw CorruptData(fmt::format("no valid checkpoint in {}:{}", dir, all),
                    "restore the damaged files from a backup, or start from scratch with a new directory");
}

std::optional<std::string> find_latest_valid(const std::string& dir, bool deep,
                                             std::vector<SkippedCheckpoint>* skipped) {
  CheckpointDir cd(dir);
  for (auto& c : cd.committed_newest_first()) {
    std::string reason;
    try {
      CheckpointReader rd(c.path);
      auto problems = deep ? rd.verify() : rd.check_files();
      if (problems.empty()) return c.path.string();
      reason = join_problems(problems);
    } catch (const CorruptData& e) {
      reason = e.what();
    } catch (const IoError& e) {
      reason = e.what();
    }
    if (skipped) skipped->push_back({c.step, c.path.string(), reason});
  }
  return std::nullopt;
}

}  // namespace braid::ckpt
