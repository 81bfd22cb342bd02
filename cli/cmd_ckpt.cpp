// braid ckpt ls|verify|inspect: look into a checkpoint directory without
// training. `verify` exits 0 only when the checkpoint(s) checked are valid
// and names every problem (file, what, tensors) otherwise.
// braid bench ckpt --synthetic: blocked time of an asynchronous save versus a
// synchronous one, and write throughput versus a plain sequential write, on
// synthetic state (the default `bench ckpt` drives the real training loop:
// cli/torch/cmd_bench_ckpt.cpp).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
#include "ckpt/save_benchmark.hpp"
#include "cli/ckpt_bench.hpp"
#include "cli/command.hpp"
#include "core/bytes.hpp"
#include "core/checksum.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;
using namespace braid::ckpt;

std::string when(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

bool is_step_dir(const fs::path& p) {
  std::error_code ec;
  return parse_step_dir_name(p.filename().string()).has_value() || fs::exists(p / kManifestFile, ec);
}

fs::path clean(const std::string& s) {
  fs::path p(s);
  if (p.has_filename()) return p;
  return p.parent_path();  // "DIR/" -> "DIR"
}

void require_dir(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec))
    throw ConfigError(fmt::format("{} is not a directory", p.string()), "give the checkpoint directory (checkpoint.dir)");
}

// ------------------------------------------------------------------ ls

int run_ls(const std::string& dir_arg) {
  fs::path dir = clean(dir_arg);
  require_dir(dir);
  CheckpointDir cd(dir);
  std::string latest_problem;
  auto latest = cd.latest_step(&latest_problem);
  auto all = cd.list();
  std::printf("checkpoints in %s (latest: %s)\n", dir.c_str(),
              latest ? step_dir_name(*latest).c_str() : (latest_problem.empty() ? "none" : "unreadable"));
  if (!latest_problem.empty()) std::printf("  warning: %s\n", latest_problem.c_str());
  if (all.empty()) std::printf("  (no step directories)\n");
  else
    std::printf("  %-10s %-10s %6s %8s %10s  %-19s  %s\n", "STEP", "SIZE", "RANKS", "TENSORS", "BLOCKS", "WRITTEN",
                "STATUS");
  for (auto& d : all) {
    std::string status, size = "-", ranks = "-", tensors = "-", blocks = "-", written = "-";
    try {
      CheckpointReader rd(d.path);
      const Manifest& m = rd.manifest();
      uint64_t bytes = 0, nblocks = 0;
      for (auto& f : m.files) bytes += f.bytes;
      for (auto& s : m.segments) nblocks += s.block_xxh3.size();
      size = human_bytes(static_cast<double>(bytes));
      ranks = std::to_string(m.world_size);
      tensors = std::to_string(m.layout.tensors().size());
      blocks = std::to_string(nblocks);
      written = when(m.created_unix_ms);
      auto problems = rd.check_files();
      status = problems.empty() ? "ok" : "DAMAGED: " + problems[0].describe();
    } catch (const Error& e) {
      status = std::string("DAMAGED: ") + e.what();
    }
    if (latest && d.step > *latest) status += " (uncommitted: newer than latest, ignored by resume)";
    else if (latest && d.step == *latest) status += " (latest)";
    std::printf("  %-10lld %-10s %6s %8s %10s  %-19s  %s\n", static_cast<long long>(d.step), size.c_str(),
                ranks.c_str(), tensors.c_str(), blocks.c_str(), written.c_str(), status.c_str());
  }
  for (auto& p : cd.leftovers())
    std::printf("  leftover %s (an interrupted or replaced save; the next save removes it)\n", p.filename().c_str());
  std::printf("  (ls checks manifests and file sizes; `braid ckpt verify` checks every checksum)\n");
  return 0;
}

// ------------------------------------------------------------------ verify

// Verifies one step directory; prints the result; true when valid.
bool verify_one(const fs::path& step_dir) {
  try {
    CheckpointReader rd(step_dir);
    auto problems = rd.verify();
    const Manifest& m = rd.manifest();
    if (problems.empty()) {
      uint64_t blocks = 0;
      for (auto& s : m.segments) blocks += s.block_xxh3.size();
      std::printf("%s: valid (step %lld, %zu file(s), %s, %llu block checksums, %zu blobs)\n", step_dir.c_str(),
                  static_cast<long long>(m.step), m.files.size(), human_bytes(static_cast<double>(m.data_bytes())).c_str(),
                  static_cast<unsigned long long>(blocks), m.blobs.size());
      return true;
    }
    std::printf("%s: INVALID (%zu problem(s))\n", step_dir.c_str(), problems.size());
    for (auto& p : problems) std::printf("  %s\n", p.describe().c_str());
    return false;
  } catch (const Error& e) {
    std::printf("%s: INVALID\n  %s\n", step_dir.c_str(), e.what());
    return false;
  }
}

struct VerifyArgs {
  std::string dir;
  int64_t step = -1;
  bool all = false;
};

int run_verify(const VerifyArgs& a) {
  fs::path dir = clean(a.dir);
  require_dir(dir);
  if (is_step_dir(dir) && a.step < 0) return verify_one(dir) ? 0 : 1;
  CheckpointDir cd(dir);
  if (a.step >= 0) {
    fs::path p = cd.step_path(a.step);
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      std::printf("%s: no checkpoint of step %lld\n", dir.c_str(), static_cast<long long>(a.step));
      return 1;
    }
    return verify_one(p) ? 0 : 1;
  }
  std::vector<StepDir> ignored;
  std::string latest_problem;
  auto candidates = cd.committed_newest_first(&ignored, &latest_problem);
  if (!latest_problem.empty()) std::printf("warning: %s\n", latest_problem.c_str());
  for (auto& d : ignored)
    std::printf("note: %s is newer than latest (an interrupted save): resume ignores it\n", d.path.c_str());
  if (candidates.empty()) {
    std::printf("%s: no committed checkpoint\n", dir.c_str());
    return 1;
  }
  if (a.all) {
    bool ok = true;
    for (auto& c : candidates) ok = verify_one(c.path) && ok;
    return ok ? 0 : 1;
  }
  // Default: the checkpoint a resume would load first.
  if (verify_one(candidates[0].path)) return 0;
  if (candidates.size() > 1)
    std::printf("resume would skip it and try %s next (check it with --step %lld)\n", candidates[1].path.c_str(),
                static_cast<long long>(candidates[1].step));
  else
    std::printf("resume has no older checkpoint to fall back to\n");
  return 1;
}

// ------------------------------------------------------------------ inspect

struct InspectArgs {
  std::string path;
  bool blocks = false;
  bool json = false;
};

int run_inspect(const InspectArgs& a) {
  fs::path p = clean(a.path);
  require_dir(p);
  if (!is_step_dir(p)) {
    auto c = CheckpointDir(p).committed_newest_first();
    if (c.empty()) throw ConfigError(fmt::format("{} holds no committed checkpoint", p.string()));
    p = c[0].path;
  }
  CheckpointReader rd(p);
  const Manifest& m = rd.manifest();
  if (a.json) {
    std::fputs(m.to_json_text().c_str(), stdout);
    return 0;
  }
  std::printf("checkpoint %s\n", p.c_str());
  std::printf("  step %lld, written %s by %d rank(s), format %d, checksum block %s\n", static_cast<long long>(m.step),
              when(m.created_unix_ms).c_str(), m.world_size, m.format_version,
              human_bytes(static_cast<double>(m.block_bytes)).c_str());
  std::printf("files:\n");
  for (auto& f : m.files)
    std::printf("  %-16s rank %-4d %12llu bytes (%s)  xxh3 %s\n", f.name.c_str(), f.rank,
                static_cast<unsigned long long>(f.bytes), human_bytes(static_cast<double>(f.bytes)).c_str(),
                hex64(f.xxh3).c_str());
  std::printf("buffers:\n");
  for (auto& b : m.layout.buffers()) {
    std::string writers;
    for (auto* s : m.segments_of(b.name))
      writers += fmt::format("{}{} in {}", writers.empty() ? "" : ", ", to_string(s->range), s->file);
    std::printf("  %-16s %-5s %12llu bytes  %s\n", b.name.c_str(), std::string(dtype_name(b.dtype)).c_str(),
                static_cast<unsigned long long>(b.bytes), writers.empty() ? "-" : writers.c_str());
  }
  std::printf("tensors (%zu):\n", m.layout.tensors().size());
  std::printf("  %-32s %-5s %-18s %-10s %12s %12s  %s\n", "NAME", "DTYPE", "SHAPE", "BUFFER", "OFFSET", "BYTES",
              "STORED IN");
  for (auto& t : m.layout.tensors()) {
    std::string where;
    for (auto* s : m.segments_of(t.buffer)) {
      ByteRange part = s->range.intersect(t.range());
      if (!part.empty()) where += fmt::format("{}{}@{}", where.empty() ? "" : " ", s->file, s->file_offset + part.begin - s->range.begin);
    }
    std::printf("  %-32s %-5s %-18s %-10s %12llu %12llu  %s\n", t.name.c_str(), std::string(dtype_name(t.dtype)).c_str(),
                fmt::format("{}", fmt::join(t.shape, "x")).c_str(), t.buffer.c_str(),
                static_cast<unsigned long long>(t.offset), static_cast<unsigned long long>(t.bytes()), where.c_str());
  }
  std::printf("blobs:\n");
  for (auto& b : m.blobs)
    std::printf("  %-20s %-8s %10llu bytes  in %s@%llu  xxh3 %s\n", b.name.c_str(),
                b.global() ? "global" : fmt::format("rank {}", b.rank).c_str(), static_cast<unsigned long long>(b.bytes),
                b.file.c_str(), static_cast<unsigned long long>(b.file_offset), hex64(b.xxh3).c_str());
  uint64_t nblocks = 0;
  for (auto& s : m.segments) nblocks += s.block_xxh3.size();
  std::printf("checksums: %zu segment(s), %llu block(s) of up to %s%s\n", m.segments.size(),
              static_cast<unsigned long long>(nblocks), human_bytes(static_cast<double>(m.block_bytes)).c_str(),
              a.blocks ? ":" : " (--blocks lists them)");
  if (a.blocks)
    for (auto& s : m.segments) {
      std::printf("  %s @%llu  buffer %s %s\n", s.file.c_str(), static_cast<unsigned long long>(s.file_offset),
                  s.buffer.c_str(), to_string(s.range).c_str());
      for (size_t k = 0; k < s.block_xxh3.size(); ++k)
        std::printf("    block %-6zu %s\n", k, hex64(s.block_xxh3[k]).c_str());
    }
  std::printf("model config:\n");
  if (m.model_config.empty()) std::printf("  (none)\n");
  size_t pos = 0;
  while (pos < m.model_config.size()) {
    size_t nl = m.model_config.find('\n', pos);
    std::string line = m.model_config.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    std::printf("  %s\n", line.c_str());
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto* sub = app.add_subcommand("ckpt", "List, verify and inspect checkpoints");
  sub->require_subcommand(1);

  auto ls_dir = std::make_shared<std::string>();
  auto* ls = sub->add_subcommand("ls", "List the checkpoints of a directory (quick checks)");
  ls->add_option("dir", *ls_dir, "Checkpoint directory")->required();

  auto va = std::make_shared<VerifyArgs>();
  auto* verify = sub->add_subcommand("verify", "Check every checksum; exit code 0 only if valid");
  verify->add_option("dir", va->dir, "Checkpoint directory, or one step directory")->required();
  verify->add_option("--step", va->step, "Verify this step (default: the one resume would load)");
  verify->add_flag("--all", va->all, "Verify every committed checkpoint");

  auto ia = std::make_shared<InspectArgs>();
  auto* inspect = sub->add_subcommand("inspect", "Show a checkpoint's tensors, files, checksums and config");
  inspect->add_option("path", ia->path, "DIR/step-N (or DIR: its newest checkpoint)")->required();
  inspect->add_flag("--blocks", ia->blocks, "List every block checksum");
  inspect->add_flag("--json", ia->json, "Print the manifest");

  return [=] {
    if (ls->parsed()) return run_ls(*ls_dir);
    if (verify->parsed()) return run_verify(*va);
    return run_inspect(*ia);
  };
}

BRAID_COMMAND("ckpt", 50, setup);

}  // namespace

// ------------------------------------------------------------------ bench ckpt --synthetic

int run_synthetic_ckpt_bench(const SyntheticCkptBenchArgs& a) {
  // One "committed" line per save would drown the table.
  if (!std::getenv("BRAID_LOG")) log::set_level(log::Level::Warn);
  SaveBenchOptions o;
  o.dir = a.dir.empty() ? fs::temp_directory_path().string() : a.dir;
  o.state_bytes = parse_bytes(a.size);
  o.writers = a.writers;
  o.repeats = a.repeats;
  SaveBenchResult r = run_save_benchmark(o);
  if (a.json) {
    nlohmann::json j{{"bench", "ckpt"},
                     {"dir", o.dir},
                     {"state_bytes", r.state_bytes},
                     {"file_bytes", r.file_bytes},
                     {"writers", r.writers},
                     {"repeats", r.repeats},
                     {"sync_save_blocked_s", r.sync_blocked_s},
                     {"async_save_blocked_s", r.async_blocked_s},
                     {"blocked_ratio", r.blocked_ratio()},
                     {"sync_write_s", r.sync_write_s},
                     {"sync_write_bytes_per_s", r.sync_write_bps()},
                     {"sync_throughput_ratio", r.sync_throughput_ratio()},
                     {"async_write_s", r.async_write_s},
                     {"async_commit_s", r.async_commit_s},
                     {"plain_write_s", r.plain_write_s},
                     {"ckpt_write_bytes_per_s", r.ckpt_write_bps()},
                     {"plain_write_bytes_per_s", r.plain_write_bps()},
                     {"plain_write_while_training_s", r.plain_busy_write_s},
                     {"plain_write_while_training_bytes_per_s", r.plain_busy_write_bps()},
                     {"throughput_ratio", r.throughput_ratio()},
                     {"throughput_ratio_while_training", r.busy_throughput_ratio()},
                     {"step_idle_s", r.step_idle_s},
                     {"step_during_save_s", r.step_during_save_s},
                     {"samples",
                      {{"sync_save_blocked_s", r.sync_samples},
                       {"sync_write_s", r.sync_write_samples},
                       {"async_save_blocked_s", r.async_blocked_samples},
                       {"async_write_s", r.async_write_samples},
                       {"plain_write_s", r.plain_samples},
                       {"plain_write_while_training_s", r.plain_busy_samples}}}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  auto mbps = [](double bps) { return bps / 1e6; };
  std::printf("braid bench ckpt: %s of state (%s in shard files), %d writer rank(s), median of %d, dir %s\n",
              human_bytes(static_cast<double>(r.state_bytes)).c_str(), human_bytes(static_cast<double>(r.file_bytes)).c_str(),
              r.writers, r.repeats, o.dir.c_str());
  std::printf("  %-46s %9.3f s\n", "synchronous save (training blocked)", r.sync_blocked_s);
  std::printf("  %-46s %9.3f s  %8.0f MB/s\n", "  its shard write + fsync (writer alone)", r.sync_write_s,
              mbps(r.sync_write_bps()));
  std::printf("  %-46s %9.3f s  %7.1f%% of synchronous\n", "asynchronous save (training blocked)", r.async_blocked_s,
              100 * r.blocked_ratio());
  std::printf("  %-46s %9.3f s  %8.0f MB/s\n", "  background write + fsync, training running", r.async_write_s,
              mbps(r.ckpt_write_bps()));
  std::printf("  %-46s %9.3f s\n", "  background, through the commit", r.async_commit_s);
  std::printf("  %-46s %9.3f s  %8.0f MB/s\n", "plain sequential write + fsync, same bytes", r.plain_write_s,
              mbps(r.plain_write_bps()));
  std::printf("  %-46s %9.3f s  %8.0f MB/s\n", "  the same while training runs", r.plain_busy_write_s,
              mbps(r.plain_busy_write_bps()));
  std::printf("  %-46s %9.1f %% alone, %.1f %% while training (%.1f %% of plain alone)\n",
              "checkpoint write throughput vs plain", 100 * r.sync_throughput_ratio(), 100 * r.busy_throughput_ratio(),
              100 * r.throughput_ratio());
  std::printf("  %-46s %9.4f s idle, %.4f s while writing\n", "simulated training step (memory-bound pass)",
              r.step_idle_s, r.step_during_save_s);
  return 0;
}

#ifndef BRAID_WITH_TORCH
namespace {

std::function<int()> bench_setup(CLI::App& bench) {
  auto a = std::make_shared<SyntheticCkptBenchArgs>();
  auto* sub = bench.add_subcommand("ckpt", "Checkpoint cost: async vs sync blocked time, write throughput vs plain");
  sub->add_option("--dir", a->dir, "Directory on the disk to measure (default: the temp directory)");
  sub->add_option("--size", a->size, "Total state in flat buffers (params, adam_m, adam_v)")->capture_default_str();
  sub->add_option("--writers", a->writers, "Ranks (threads) splitting the writing")->capture_default_str();
  sub->add_option("--repeats", a->repeats, "Measurements of each kind (medians reported)")->capture_default_str();
  sub->add_flag("--json", a->json, "Machine-readable output");
  return [a] { return run_synthetic_ckpt_bench(*a); };
}

// With LibTorch, cli/torch/cmd_bench_ckpt.cpp registers `bench ckpt` (the
// real training loop by default, this one with --synthetic).
BRAID_BENCH("ckpt", 30, bench_setup);

}  // namespace
#endif
}  // namespace braid::cli
