// braid bench ckpt: what checkpoints cost the REAL training loop. A GPT with
// at least 200 MB of training state (params + AdamW moments, 12 B per
// parameter) trains on in-memory bytes; its Checkpointing saves as `braid
// train` does, all measured in one run on one disk:
//   - training time blocked per checkpoint: asynchronous save (the snapshot,
//     triggered through the step's agreed request like an every_minutes save)
//     versus a synchronous save of the same state (snapshot + write + fsync +
//     commit, the path a SIGTERM save takes);
//   - write throughput of the checkpoint writer (shard bytes / time from
//     hand-over to fsynced file) versus a plain sequential write() + fsync of
//     the same number of bytes to the same directory, both while training
//     runs (and both alone, for reference);
//   - the training step time idle and while the background writer runs.
// --synthetic runs the older benchmark on synthetic buffers instead.
#include "train/pch.hpp"

#include <fcntl.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ckpt/file_io.hpp"
#include "cli/ckpt_bench.hpp"
#include "cli/command.hpp"
#include "core/bytes.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "train/checkpointing.hpp"
#include "train/compute_threads.hpp"
#include "train/trainer.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;

struct BenchCkptArgs {
  SyntheticCkptBenchArgs synthetic_args;  // dir, repeats, json shared with the real loop
  bool synthetic = false;
  int64_t layers = 6;
  int64_t width = 512;
  int64_t heads = 8;
  int64_t context = 64;
  int64_t batch = 2;
  int64_t threads = 0;
  bool durable = true;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Result {
  int64_t parameters = 0;
  uint64_t state_bytes = 0;
  uint64_t file_bytes = 0;
  int repeats = 0;
  std::vector<double> sync_blocked, sync_write, async_blocked, async_write, async_commit, plain_alone, plain_busy,
      idle_steps, busy_steps;
  double bps(double s) const { return s > 0 ? static_cast<double>(file_bytes) / s : 0; }
};

// Bytes [0, total) of the concatenation of `parts`, written sequentially in
// 8 MiB write() calls with one fsync at the end: the plain baseline.
double plain_write(const fs::path& file, const std::vector<std::pair<const std::byte*, uint64_t>>& parts,
                   uint64_t total, bool durable) {
  Stopwatch sw;
  ckpt::UniqueFd fd = ckpt::open_file(file, O_WRONLY | O_CREAT | O_TRUNC);
  constexpr uint64_t kChunk = 8ull << 20;
  uint64_t done = 0;
  while (done < total) {
    for (auto& [p, n] : parts)
      for (uint64_t off = 0; off < n && done < total;) {
        uint64_t len = std::min({kChunk, n - off, total - done});
        ckpt::write_all(fd.get(), p + off, len, file);
        off += len;
        done += len;
      }
  }
  if (durable) ckpt::fsync_file(fd.get(), file);
  ckpt::close_file(fd, file);
  double s = sw.seconds();
  std::error_code ec;
  fs::remove(file, ec);
  return s;
}

Result run_real_loop(const BenchCkptArgs& a, const fs::path& root) {
  const int repeats = a.synthetic_args.repeats;
  train::TrainConfig cfg;
  cfg.model.vocab_size = 256;
  cfg.model.context = a.context;
  cfg.model.layers = a.layers;
  cfg.model.width = a.width;
  cfg.model.heads = a.heads;
  cfg.data.paths = {"<memory>"};
  cfg.train.steps = 1'000'000;  // the schedule only sets the learning rate here
  cfg.train.batch_size = a.batch;
  cfg.train.seed = 1;
  cfg.checkpoint.dir = (root / "ckpt").string();
  cfg.checkpoint.keep_last = 2;
  cfg.checkpoint.if_busy = "wait";
  cfg.checkpoint.at_end = false;
  if (cfg.model.width % cfg.model.heads != 0) throw ConfigError("--width must be a multiple of --heads");

  // Learnable bytes: enough windows that batches differ.
  std::vector<uint16_t> tokens(4u << 20);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i % 64 == 0) x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    tokens[i] = static_cast<uint16_t>("abcdefghijklmnopqrstuvwxyz .,\n"[(x >> (i % 64)) % 30]);
  }
  auto data = train::TokenDataset::from_tokens(std::move(tokens), 0.0, cfg.model.context, 256, "<bench bytes>");

  train::set_compute_threads(train::compute_threads_for(static_cast<int>(a.threads), 1));
  train::Trainer trainer(cfg, data, nullptr);
  bool want_async = false;
  train::CheckpointingHooks hooks;
  hooks.stop_requested = [] { return false; };
  // The asynchronous saves take the path of a time-triggered save: a request
  // raised before the step's all-reduce, saved in after_step.
  hooks.time_due = [&] { return std::exchange(want_async, false); };
  hooks.durable = a.durable;
  train::Checkpointing ck(trainer, cfg.checkpoint, cfg.to_toml(), nullptr, hooks);

  Result r;
  r.parameters = trainer.model().num_parameters();
  r.state_bytes = static_cast<uint64_t>(r.parameters) * 12;
  r.repeats = repeats;
  std::vector<std::pair<const std::byte*, uint64_t>> parts;
  for (auto& h : ck.state().held()) parts.emplace_back(static_cast<const std::byte*>(h.data), h.range.size());

  auto step = [&] { return trainer.train_step(); };
  log::warn("bench ckpt: {:.1f}M parameters, {} of training state; warming up", static_cast<double>(r.parameters) * 1e-6,
            human_bytes(static_cast<double>(r.state_bytes)));
  for (int i = 0; i < 2; ++i) step();
  for (int i = 0; i < 3; ++i) r.idle_steps.push_back(step().step_s);

  for (int rep = 0; rep < repeats; ++rep) {
    // 1. Synchronous save at a step boundary: training stands still for all of it.
    step();
    Stopwatch sync;
    ck.save_now();
    r.sync_blocked.push_back(sync.seconds());
    auto st = ck.stats();
    r.file_bytes = st.last_shard_bytes;
    r.sync_write.push_back(st.last_write_s);

    // 2. Plain sequential write of as many bytes, alone and while training runs.
    const fs::path plain = root / "plain.bin";
    r.plain_alone.push_back(plain_write(plain, parts, r.file_bytes, a.durable));
    {
      std::atomic<bool> done{false};
      double s = 0;
      std::exception_ptr err;
      std::thread writer([&] {
        try {
          s = plain_write(plain, parts, r.file_bytes, a.durable);
        } catch (...) {
          err = std::current_exception();
        }
        done = true;
      });
      while (!done) step();
      writer.join();
      if (err) std::rethrow_exception(err);
      r.plain_busy.push_back(s);
    }
    for (int i = 0; i < 2; ++i) r.idle_steps.push_back(step().step_s);

    // 3. Asynchronous save: requested in the step, snapshot in after_step,
    // written while the next steps train.
    want_async = true;
    train::StepMetrics m = step();
    ck.annotate(m);
    double blocked = -1;
    for (auto& [k, v] : m.extra)
      if (k == "ckpt_blocked_s") blocked = v;
    if (blocked < 0) throw Error("bench ckpt: the asynchronous save was not taken at the requested step");
    r.async_blocked.push_back(blocked);
    while (ck.stats().in_flight) {
      train::StepMetrics b = step();
      if (ck.stats().in_flight) r.busy_steps.push_back(b.step_s);  // overlapped the writer entirely
    }
    if (ck.wait() != ckpt::SaveOutcome::Committed)
      throw IoError("bench ckpt: a save failed: " + ck.stats().last_error);
    st = ck.stats();
    r.async_write.push_back(st.last_write_s);
    r.async_commit.push_back(st.last_commit_s);
    for (int i = 0; i < 2; ++i) r.idle_steps.push_back(step().step_s);
  }
  return r;
}

int run(const BenchCkptArgs& a) {
  if (a.synthetic) return run_synthetic_ckpt_bench(a.synthetic_args);
  if (!std::getenv("BRAID_LOG")) log::set_level(log::Level::Warn);  // one "committed" line per save would drown the table
  if (a.synthetic_args.repeats < 1) throw ConfigError("--repeats must be at least 1");
  const fs::path base = a.synthetic_args.dir.empty() ? fs::temp_directory_path() : fs::path(a.synthetic_args.dir);
  const fs::path root = base / ("braid-bench-ckpt-" + ckpt::random_token());
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw IoError(fmt::format("cannot create {}: {}", root.string(), ec.message()), "choose another --dir");
  struct Cleanup {
    fs::path p;
    ~Cleanup() { ckpt::remove_tree(p); }
  } cleanup{root};

  Result r = run_real_loop(a, root);
  const double sync_blocked = median(r.sync_blocked), async_blocked = median(r.async_blocked);
  const double sync_write = median(r.sync_write), async_write = median(r.async_write);
  const double plain_alone = median(r.plain_alone), plain_busy = median(r.plain_busy);
  const double blocked_ratio = sync_blocked > 0 ? async_blocked / sync_blocked : 0;
  const double ratio_busy = r.bps(plain_busy) > 0 ? r.bps(async_write) / r.bps(plain_busy) : 0;
  const double ratio_alone = r.bps(plain_alone) > 0 ? r.bps(sync_write) / r.bps(plain_alone) : 0;
  const double ratio_async_vs_alone = r.bps(plain_alone) > 0 ? r.bps(async_write) / r.bps(plain_alone) : 0;
  const double idle = median(r.idle_steps), busy = median(r.busy_steps);

  if (a.synthetic_args.json) {
    nlohmann::ordered_json j;
    j["bench"] = "ckpt";
    j["mode"] = "training_loop";
    j["dir"] = base.string();
    j["model"] = {{"layers", a.layers}, {"width", a.width}, {"heads", a.heads}, {"context", a.context},
                  {"batch", a.batch}, {"parameters", r.parameters}};
    j["state_bytes"] = r.state_bytes;
    j["file_bytes"] = r.file_bytes;
    j["writers"] = 1;
    j["repeats"] = r.repeats;
    j["durable"] = a.durable;
    j["sync_save_blocked_s"] = sync_blocked;
    j["async_save_blocked_s"] = async_blocked;
    j["blocked_ratio"] = blocked_ratio;
    j["sync_write_s"] = sync_write;
    j["async_write_s"] = async_write;
    j["async_commit_s"] = median(r.async_commit);
    j["plain_write_s"] = plain_alone;
    j["plain_write_while_training_s"] = plain_busy;
    j["ckpt_write_while_training_bytes_per_s"] = r.bps(async_write);
    j["plain_write_while_training_bytes_per_s"] = r.bps(plain_busy);
    j["throughput_ratio_while_training"] = ratio_busy;
    j["ckpt_write_alone_bytes_per_s"] = r.bps(sync_write);
    j["plain_write_alone_bytes_per_s"] = r.bps(plain_alone);
    j["throughput_ratio_alone"] = ratio_alone;
    j["throughput_ratio_async_vs_plain_alone"] = ratio_async_vs_alone;
    j["step_idle_s"] = idle;
    // null: every background write finished within the step that started it.
  j["step_during_save_s"] = r.busy_steps.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(busy);
    j["samples"] = {{"sync_save_blocked_s", r.sync_blocked},   {"async_save_blocked_s", r.async_blocked},
                    {"sync_write_s", r.sync_write},            {"async_write_s", r.async_write},
                    {"plain_write_s", r.plain_alone},          {"plain_write_while_training_s", r.plain_busy},
                    {"step_idle_s", r.idle_steps},             {"step_during_save_s", r.busy_steps}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  auto mbps = [](double bps) { return bps / 1e6; };
  std::printf("braid bench ckpt: real training loop, GPT %lld layers x %lld wide (%.1fM parameters), %s of state "
              "(%s shard file), 1 rank, median of %d, dir %s%s\n",
              static_cast<long long>(a.layers), static_cast<long long>(a.width), static_cast<double>(r.parameters) * 1e-6,
              human_bytes(static_cast<double>(r.state_bytes)).c_str(), human_bytes(static_cast<double>(r.file_bytes)).c_str(),
              r.repeats, base.c_str(), a.durable ? "" : " (no fsync)");
  std::printf("  %-50s %9.3f s\n", "synchronous save (training blocked)", sync_blocked);
  std::printf("  %-50s %9.3f s  %8.0f MB/s\n", "  its shard write + fsync (writer alone)", sync_write,
              mbps(r.bps(sync_write)));
  std::printf("  %-50s %9.4f s  %7.1f%% of synchronous (target <= 10%%)\n", "asynchronous save (training blocked)",
              async_blocked, 100 * blocked_ratio);
  std::printf("  %-50s %9.3f s  %8.0f MB/s\n", "  background write + fsync, training running", async_write,
              mbps(r.bps(async_write)));
  std::printf("  %-50s %9.3f s\n", "  background, through the commit", median(r.async_commit));
  std::printf("  %-50s %9.3f s  %8.0f MB/s\n", "plain sequential write + fsync, same bytes, alone", plain_alone,
              mbps(r.bps(plain_alone)));
  std::printf("  %-50s %9.3f s  %8.0f MB/s\n", "  the same while training runs", plain_busy, mbps(r.bps(plain_busy)));
  std::printf("  %-50s %9.1f %% while training (target >= 80%%), %.1f %% alone\n",
              "checkpoint write throughput vs plain", 100 * ratio_busy, 100 * ratio_alone);
  if (r.busy_steps.empty())
    std::printf("  %-50s %9.3f s idle (every background write finished within one step)\n", "training step", idle);
  else
    std::printf("  %-50s %9.3f s idle, %.3f s while the writer runs\n", "training step", idle, busy);
  return 0;
}

std::function<int()> setup(CLI::App& bench) {
  auto a = std::make_shared<BenchCkptArgs>();
  auto* sub = bench.add_subcommand(
      "ckpt", "Checkpoint cost in the real training loop: async vs sync blocked time, write throughput vs plain");
  auto& s = a->synthetic_args;
  sub->add_option("--dir", s.dir, "Directory on the disk to measure (default: the temp directory)");
  sub->add_option("--repeats", s.repeats, "Measurements of each kind (medians reported)")->capture_default_str();
  sub->add_flag("--json", s.json, "Machine-readable output");
  sub->add_option("--layers", a->layers, "Model depth")->capture_default_str();
  sub->add_option("--width", a->width, "Model width (12 x 12 x layers x width^2 bytes of state, roughly)")
      ->capture_default_str();
  sub->add_option("--heads", a->heads, "Attention heads")->capture_default_str();
  sub->add_option("--context", a->context, "Tokens per sequence")->capture_default_str();
  sub->add_option("--batch", a->batch, "Sequences per step")->capture_default_str();
  sub->add_option("--threads", a->threads, "Compute threads (0 = all cores)")->capture_default_str();
  sub->add_flag("!--no-fsync", a->durable, "Skip fsync (measures the page cache, not the disk)");
  sub->add_flag("--synthetic", a->synthetic, "Synthetic flat buffers instead of the training loop");
  sub->add_option("--size", s.size, "--synthetic: total state (params, adam_m, adam_v)")->capture_default_str();
  sub->add_option("--writers", s.writers, "--synthetic: ranks (threads) splitting the writing")->capture_default_str();
  return [a] { return run(*a); };
}

BRAID_BENCH("ckpt", 30, setup);

}  // namespace
}  // namespace braid::cli
