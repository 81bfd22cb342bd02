#pragma once
// Shared pieces of the checkpoint tests: a temporary directory, a synthetic
// multi-buffer training state with awkward sizes, and helpers that run ranks
// as threads.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/checkpointer.hpp"
#include "ckpt/loader.hpp"
#include "ckpt/state_layout.hpp"

namespace ckpt_test {

namespace fs = std::filesystem;
using namespace braid;
using namespace braid::ckpt;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "braid-ckpt-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

inline uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A training state: several flat buffers (sizes 0, 1, primes, larger than a
// checksum block) each cut into tensors of uneven sizes.
struct SyntheticState {
  StateLayout layout;
  std::vector<std::vector<uint8_t>> data;  // one per buffer, layout order

  // `big` is the size of the largest buffer (bytes, multiple of 4).
  static SyntheticState make(uint64_t big = 3 * 12288 + 1000) {
    SyntheticState s;
    struct B {
      const char* name;
      DType dtype;
      uint64_t bytes;
    };
    const B bufs[] = {{"params", DType::F32, big},
                      {"adam_m", DType::F32, 10007 * 4},  // a prime number of elements
                      {"adam_v", DType::F32, 10007 * 4},
                      {"one", DType::U8, 1},
                      {"empty", DType::F32, 0},
                      {"prime_u8", DType::U8, 4099}};
    for (auto& b : bufs) {
      s.layout.add_buffer(b.name, b.dtype, b.bytes);
      uint64_t es = dtype_size(b.dtype);
      uint64_t n = b.bytes / es, off = 0;
      int t = 0;
      // Tensors of 1, 2, 5, 13, ... elements, then the rest.
      for (uint64_t len = 1; off < n; len = len * 2 + 3, ++t) {
        uint64_t take = std::min(len, n - off);
        if (t >= 6) take = n - off;
        s.layout.add_tensor(std::string(b.name) + ".t" + std::to_string(t), b.dtype,
                            {static_cast<int64_t>(take)}, b.name, off * es);
        off += take;
      }
      s.data.emplace_back(b.bytes);
    }
    s.layout.validate();
    return s;
  }

  void fill(uint64_t seed) {
    for (size_t i = 0; i < data.size(); ++i) {
      uint64_t x = seed * 1000 + i;
      for (auto& byte : data[i]) byte = static_cast<uint8_t>(splitmix(x));
    }
  }
  size_t index(const std::string& buffer) const {
    for (size_t i = 0; i < layout.buffers().size(); ++i)
      if (layout.buffers()[i].name == buffer) return i;
    throw std::runtime_error("no buffer " + buffer);
  }
  uint64_t bytes(size_t i) const { return layout.buffers()[i].bytes; }

  // Rank r of w holds: the whole of every buffer (replicated) or, when
  // `sharded`, its contiguous shard of the adam buffers (ZeRO-1 style).
  static ByteRange shard_of(uint64_t bytes, int r, int w) {
    return {bytes * static_cast<uint64_t>(r) / static_cast<uint64_t>(w),
            bytes * static_cast<uint64_t>(r + 1) / static_cast<uint64_t>(w)};
  }
  std::vector<HeldBuffer> held(int r, int w, bool sharded) const {
    std::vector<HeldBuffer> out;
    for (size_t i = 0; i < data.size(); ++i) {
      const std::string& name = layout.buffers()[i].name;
      ByteRange range{0, bytes(i)};
      if (sharded && name.rfind("adam", 0) == 0) range = shard_of(bytes(i), r, w);
      out.push_back({name, range, data[i].data() + range.begin, {}});
    }
    return out;
  }
  std::vector<ReadTarget> reads(int r, int w, bool sharded) {
    std::vector<ReadTarget> out;
    for (size_t i = 0; i < data.size(); ++i) {
      const std::string& name = layout.buffers()[i].name;
      ByteRange range{0, bytes(i)};
      if (sharded && name.rfind("adam", 0) == 0) range = shard_of(bytes(i), r, w);
      out.push_back({name, range, data[i].data() + range.begin});
    }
    return out;
  }
};

// Expects a's bytes in `range` of every buffer to equal b's (whole buffers by default).
inline void expect_same(const SyntheticState& a, const SyntheticState& b, bool adam_sharded = false, int r = 0,
                        int w = 1) {
  for (size_t i = 0; i < a.data.size(); ++i) {
    const std::string& name = a.layout.buffers()[i].name;
    ByteRange range{0, a.bytes(i)};
    if (adam_sharded && name.rfind("adam", 0) == 0) range = SyntheticState::shard_of(a.bytes(i), r, w);
    EXPECT_EQ(0, std::memcmp(a.data[i].data() + range.begin, b.data[i].data() + range.begin, range.size()))
        << "buffer " << name << " differs on rank " << r << " of " << w;
  }
}

inline SaveRequest request(int64_t step, int rank) {
  SaveRequest q;
  q.step = step;
  q.model_config = "[model]\nlayers = 2\ndim = 64\n";
  q.global_blobs = {{"data_position", "{\"seed\":7,\"next_sample\":" + std::to_string(step * 16) + "}"},
                    {"binary", std::string("\0\1\2\xff", 4)}};
  q.rank_blobs = {{"rng", "rng-state-of-rank-" + std::to_string(rank) + "-at-" + std::to_string(step)}};
  return q;
}

inline CheckpointOptions options(const std::string& dir) {
  CheckpointOptions o;
  o.dir = dir;
  o.block_bytes = 12288;  // small blocks: partial-block reads and many blocks in small tests
  o.commit_timeout_s = 30;
  o.durable = true;
  return o;
}

// Runs fn(rank) on `world` threads and rethrows the first failure.
inline void run_ranks(int world, const std::function<void(int)>& fn) {
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

// Saves `states[r]` (rank r's replica/shard) at `step` with `world` thread ranks.
inline void save_with_threads(const std::string& dir, std::vector<SyntheticState>& states, int64_t step,
                              bool sharded, CheckpointOptions opts = {}) {
  int world = static_cast<int>(states.size());
  auto store = std::make_shared<net::MemStore>();
  if (opts.dir.empty()) opts = options(dir);
  run_ranks(world, [&](int r) {
    Checkpointer ck(opts, states[static_cast<size_t>(r)].layout, states[static_cast<size_t>(r)].held(r, world, sharded),
                    r, world, store);
    ck.save_now(request(step, r));
  });
}

inline void flip_byte(const fs::path& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

}  // namespace ckpt_test
