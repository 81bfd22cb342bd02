#include "ckpt/save_benchmark.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <memory>
#include <thread>

#include "ckpt/checkpointer.hpp"
#include "ckpt/file_io.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/store.hpp"

namespace braid::ckpt {
namespace fs = std::filesystem;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs fn(rank) on one thread per rank and rethrows the first failure.
template <typename Fn>
void on_ranks(int world, Fn fn) {
  std::vector<std::thread> ts;
  std::vector<std::exception_ptr> errs(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        errs[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : ts) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}

// The stand-in for a training step: one read-modify-write pass over params and
// adam_m, memory bound like an optimizer step.
void training_step(std::vector<float>& p, std::vector<float>& m) {
  const size_t n = p.size();
  for (size_t i = 0; i < n; ++i) {
    float g = p[i] * 1e-3f;
    m[i] = 0.9f * m[i] + 0.1f * g;
    p[i] -= 1e-4f * m[i];
  }
}

}  // namespace

SaveBenchResult run_save_benchmark(const SaveBenchOptions& o) {
  if (o.dir.empty()) throw ConfigError("no directory for the checkpoint benchmark");
  if (o.state_bytes < 3 * 4096) throw ConfigError("the checkpoint benchmark needs at least 12 KiB of state");
  if (o.writers < 1 || o.writers > 64) throw ConfigError("--writers must be between 1 and 64");
  if (o.repeats < 1) throw ConfigError("--repeats must be at least 1");

  const fs::path root = fs::path(o.dir) / ("braid-bench-ckpt-" + random_token());
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw IoError(fmt::format("cannot create {}: {}", root.string(), ec.message()));
  struct Cleanup {
    fs::path p;
    ~Cleanup() { remove_tree(p); }
  } cleanup{root};

  // Three flat f32 buffers with 128 tensor views each.
  const uint64_t elems = o.state_bytes / 3 / 4;
  std::vector<float> params(elems), adam_m(elems), adam_v(elems);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (auto* buf : {&params, &adam_m, &adam_v})
    for (auto& f : *buf) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      f = static_cast<float>(static_cast<double>(x >> 40) * 0x1p-24 * 2.0 - 1.0);
    }
  StateLayout layout;
  const char* names[] = {"params", "adam_m", "adam_v"};
  for (const char* name : names) {
    layout.add_buffer(name, DType::F32, elems * 4);
    for (uint64_t t = 0, off = 0; t < 128; ++t) {
      uint64_t end = elems * (t + 1) / 128;
      layout.add_tensor(fmt::format("{}.t{}", name, t), DType::F32, {static_cast<int64_t>(end - off)}, name, off * 4);
      off = end;
    }
  }
  std::vector<HeldBuffer> held{{"params", {0, elems * 4}, params.data(), {}},
                               {"adam_m", {0, elems * 4}, adam_m.data(), {}},
                               {"adam_v", {0, elems * 4}, adam_v.data(), {}}};

  CheckpointOptions co;
  co.dir = (root / "ckpt").string();
  co.keep_last = 1;
  co.durable = o.durable;
  co.if_busy = BusyPolicy::Wait;
  auto store = std::make_shared<net::MemStore>();
  std::vector<std::unique_ptr<Checkpointer>> cks(static_cast<size_t>(o.writers));
  on_ranks(o.writers, [&](int r) {
    cks[static_cast<size_t>(r)] = std::make_unique<Checkpointer>(co, layout, held, r, o.writers, store);
  });
  auto request = [](int64_t step) {
    SaveRequest q;
    q.step = step;
    q.model_config = "# synthetic state of braid bench ckpt\n";
    q.global_blobs = {{"data_position", fmt::format("{{\"next_sample\":{}}}", step)}};
    q.rank_blobs = {{"rng", std::string(5056, 'r')}};  // about a CUDA generator state
    return q;
  };

  SaveBenchResult res;
  res.state_bytes = elems * 4 * 3;
  res.writers = o.writers;
  res.repeats = o.repeats;

  std::vector<double> idle_steps, busy_steps, commit_samples;
  for (int i = 0; i < 3; ++i) {
    Stopwatch sw;
    training_step(params, adam_m);
    idle_steps.push_back(sw.seconds());
  }

  int64_t step = 0;
  for (int rep = 0; rep < o.repeats; ++rep) {
    // Synchronous save: training would stand still for all of it.
    ++step;
    std::vector<double> sync_s(static_cast<size_t>(o.writers));
    on_ranks(o.writers, [&](int r) {
      Stopwatch sw;
      cks[static_cast<size_t>(r)]->save_now(request(step));
      sync_s[static_cast<size_t>(r)] = sw.seconds();
    });
    res.sync_samples.push_back(*std::max_element(sync_s.begin(), sync_s.end()));
    res.file_bytes = 0;
    double sync_write = 0;
    for (auto& ck : cks) {
      res.file_bytes += ck->stats().last_shard_bytes;
      sync_write = std::max(sync_write, ck->stats().last_write_s);
    }
    res.sync_write_samples.push_back(sync_write);

    // Plain sequential write of as many bytes, same disk, one fsync: alone,
    // then while training runs.
    auto plain_write = [&] {
      fs::path plain = root / "plain.bin";
      Stopwatch sw;
      UniqueFd fd = open_file(plain, O_WRONLY | O_CREAT | O_TRUNC);
      const auto* src = reinterpret_cast<const char*>(adam_v.data());
      const uint64_t src_bytes = elems * 4, chunk = 8ull << 20;
      for (uint64_t done = 0; done < res.file_bytes;) {
        uint64_t off = done % src_bytes;
        uint64_t n = std::min({chunk, res.file_bytes - done, src_bytes - off});
        write_all(fd.get(), src + off, n, plain);
        done += n;
      }
      if (o.durable) fsync_file(fd.get(), plain);
      close_file(fd, plain);
      double s = sw.seconds();
      fs::remove(plain, ec);
      return s;
    };
    res.plain_samples.push_back(plain_write());
    {
      std::atomic<bool> done{false};
      double s = 0;
      std::exception_ptr err;
      std::thread writer([&] {
        try {
          s = plain_write();
        } catch (...) {
          err = std::current_exception();
        }
        done = true;
      });
      while (!done) training_step(params, adam_m);
      writer.join();
      if (err) std::rethrow_exception(err);
      res.plain_busy_samples.push_back(s);
    }

    // Asynchronous save: training continues while the writer works.
    ++step;
    training_step(params, adam_m);
    on_ranks(o.writers, [&](int r) { cks[static_cast<size_t>(r)]->save(request(step)); });
    auto any_in_flight = [&] {
      for (auto& ck : cks)
        if (ck->stats().in_flight) return true;
      return false;
    };
    while (any_in_flight()) {
      Stopwatch sw;
      training_step(params, adam_m);
      double t = sw.seconds();
      if (any_in_flight()) busy_steps.push_back(t);  // only steps that overlapped the writer entirely
    }
    double blocked = 0, write = 0, commit = 0;
    for (auto& ck : cks) {
      if (ck->wait() != SaveOutcome::Committed)
        throw IoError("a benchmark save failed: " + ck->stats().last_error);
      auto st = ck->stats();
      blocked = std::max(blocked, st.last_blocked_s);
      write = std::max(write, st.last_write_s);
      commit = std::max(commit, st.last_commit_s);
    }
    res.async_blocked_samples.push_back(blocked);
    res.async_write_samples.push_back(write);
    commit_samples.push_back(commit);
    for (int i = 0; i < 2; ++i) {
      Stopwatch sw;
      training_step(params, adam_m);
      idle_steps.push_back(sw.seconds());
    }
  }
  cks.clear();

  res.sync_blocked_s = median(res.sync_samples);
  res.sync_write_s = median(res.sync_write_samples);
  res.async_blocked_s = median(res.async_blocked_samples);
  res.async_write_s = median(res.async_write_samples);
  res.async_commit_s = median(commit_samples);
  res.plain_write_s = median(res.plain_samples);
  res.plain_busy_write_s = median(res.plain_busy_samples);
  res.step_idle_s = median(idle_steps);
  res.step_during_save_s = median(busy_steps);
  return res;
}

}  // namespace braid::ckpt
