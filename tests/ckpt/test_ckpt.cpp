// Checkpoint layer: write plan, manifest, round trips with 1-3 writer ranks
// (threads sharing a MemStore), resharding, corruption detection and
// fallback, keep-last-K, and the skip/wait policy for overlapping saves.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
#include "ckpt/manifest.hpp"
#include "ckpt/save_schedule.hpp"
#include "ckpt/write_plan.hpp"
#include "core/config.hpp"
#include "ckpt_test_util.hpp"
#include "core/error.hpp"

using namespace ckpt_test;

// ---------------------------------------------------------------- write plan

namespace {
// Every byte of every buffer is written by exactly one rank, which holds it.
void expect_exact_cover(const StateLayout& layout, const std::vector<std::vector<BufferRange>>& held,
                        const std::vector<std::vector<BufferRange>>& plan) {
  for (auto& b : layout.buffers()) {
    std::vector<int> writers(b.bytes, 0);
    for (size_t r = 0; r < plan.size(); ++r)
      for (auto& w : plan[r]) {
        if (w.buffer != b.name) continue;
        bool inside = false;
        for (auto& h : held[r]) inside = inside || (h.buffer == b.name && h.range.contains(w.range));
        EXPECT_TRUE(inside) << "rank " << r << " writes bytes it does not hold";
        for (uint64_t i = w.range.begin; i < w.range.end; ++i) ++writers[i];
      }
    for (uint64_t i = 0; i < b.bytes; ++i) ASSERT_EQ(writers[i], 1) << b.name << " byte " << i;
  }
}
}  // namespace

TEST(WritePlan, ReplicatedBufferIsSplitEvenlyAtAlignedCuts) {
  StateLayout l;
  l.add_buffer("p", DType::F32, 3 * 4096 * 10 + 8);
  std::vector<std::vector<BufferRange>> held(3, {{"p", {0, l.buffer("p").bytes}}});
  auto plan = plan_writes(l, held);
  expect_exact_cover(l, held, plan);
  for (auto& rank_plan : plan) {
    ASSERT_EQ(rank_plan.size(), 1u);
    EXPECT_EQ(rank_plan[0].range.begin % kWriteSplitAlign, 0u);
    EXPECT_NEAR(static_cast<double>(rank_plan[0].range.size()), 40968.0, 4096.0);
  }
}

TEST(WritePlan, ShardedHybridAndTinyBuffers) {
  StateLayout l;
  l.add_buffer("params", DType::F32, 100000);
  l.add_buffer("m", DType::F32, 99996);
  l.add_buffer("tiny", DType::U8, 7);
  l.add_buffer("none", DType::F32, 0);
  // 4 ranks: params replicated, m sharded in two groups of two (hybrid), tiny replicated.
  std::vector<std::vector<BufferRange>> held(4);
  for (int r = 0; r < 4; ++r) {
    held[r].push_back({"params", {0, 100000}});
    held[r].push_back({"m", r < 2 ? ByteRange{0, 50000} : ByteRange{50000, 99996}});
    held[r].push_back({"tiny", {0, 7}});
  }
  auto plan = plan_writes(l, held);
  expect_exact_cover(l, held, plan);
  int tiny_writers = 0;
  for (auto& p : plan)
    for (auto& w : p) tiny_writers += w.buffer == "tiny";
  EXPECT_EQ(tiny_writers, 1);  // smaller than the alignment: one rank writes it
  // Pure function: same inputs, same plan on every rank.
  auto again = plan_writes(l, held);
  EXPECT_EQ(plan, again);
}

// A tensor-parallel rank declares thousands of ranges (one per row of a
// row-parallel weight), in no particular order; the plan stays exact.
TEST(WritePlan, ThousandsOfInterleavedRangesInAnyOrder) {
  StateLayout l;
  const uint64_t rows = 1500, row = 96;
  l.add_buffer("w", DType::F32, rows * row);
  l.add_buffer("ln", DType::F32, 4096 + 40);
  std::vector<std::vector<BufferRange>> held(3);
  for (uint64_t i = 0; i < rows; ++i) {
    held[0].push_back({"w", {i * row, i * row + row / 2}});      // first half of each row
    held[1].push_back({"w", {i * row + row / 2, (i + 1) * row}});  // second half
  }
  held[2].push_back({"w", {0, rows * row / 3}});  // a third rank holds a prefix whole
  for (auto& h : held) h.push_back({"ln", {0, 4096 + 40}});
  std::mt19937 rng(7);
  for (auto& h : held) std::shuffle(h.begin(), h.end(), rng);
  auto plan = plan_writes(l, held);
  expect_exact_cover(l, held, plan);
  EXPECT_EQ(plan, plan_writes(l, held));
}

TEST(WritePlan, BytesHeldByNoRankAreAnError) {
  StateLayout l;
  l.add_buffer("m", DType::F32, 1000);
  std::vector<std::vector<BufferRange>> held{{{"m", {0, 400}}}, {{"m", {500, 1000}}}};
  try {
    plan_writes(l, held);
    FAIL() << "a gap was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("[400, 500)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(plan_writes(l, {{{"nope", {0, 1}}}}), ConfigError);
  EXPECT_THROW(plan_writes(l, {{{"m", {0, 1001}}}}), ConfigError);
}

// ---------------------------------------------------------------- layout, manifest

TEST(StateLayout, RejectsBadTensorsAndDescribesDifferences) {
  StateLayout l;
  l.add_buffer("p", DType::F32, 16);
  EXPECT_THROW(l.add_buffer("p", DType::F32, 4), ConfigError);
  EXPECT_THROW(l.add_tensor("x", DType::F32, {2}, "q", 0), ConfigError);
  l.add_tensor("a", DType::F32, {2, 2}, "p", 0);
  l.validate();
  StateLayout bad = l;
  bad.add_tensor("b", DType::F32, {1}, "p", 16);
  EXPECT_THROW(bad.validate(), ConfigError);
  StateLayout misaligned = l;
  misaligned.add_tensor("c", DType::F32, {1}, "p", 2);
  EXPECT_THROW(misaligned.validate(), ConfigError);

  StateLayout other;
  other.add_buffer("p", DType::F32, 32);
  other.add_tensor("a", DType::F32, {2, 2}, "p", 0);
  auto d = l.difference(other, "this model", "the checkpoint");
  ASSERT_TRUE(d);
  EXPECT_NE(d->find("16 bytes"), std::string::npos) << *d;
  EXPECT_FALSE(l.difference(l, "a", "b"));
  EXPECT_EQ(l.tensors_overlapping("p", {15, 17}), std::vector<std::string>{"a"});
}

TEST(Manifest, SelfChecksumCatchesEditsAndTruncation) {
  TempDir dir;
  std::vector<SyntheticState> st{SyntheticState::make()};
  st[0].fill(1);
  save_with_threads(dir.str(), st, 10, false);
  fs::path mp = dir.path() / "step-00000010" / kManifestFile;
  std::string text;
  {
    std::ifstream f(mp);
    text.assign(std::istreambuf_iterator<char>(f), {});
  }
  Manifest m = Manifest::parse(text, "m");
  EXPECT_EQ(m.step, 10);
  EXPECT_EQ(m.model_config, request(10, 0).model_config);
  // A changed number that is still valid JSON.
  std::string edited = text;
  auto pos = edited.find("\"step\": 10");
  ASSERT_NE(pos, std::string::npos);
  edited.replace(pos, 10, "\"step\": 11");
  EXPECT_THROW(Manifest::parse(edited, "m"), CorruptData);
  EXPECT_THROW(Manifest::parse(text.substr(0, text.size() / 2), "m"), CorruptData);
  EXPECT_THROW(Manifest::parse("{}", "m"), CorruptData);
}

// ---------------------------------------------------------------- round trips

class RoundTrip : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(RoundTrip, SaveThenLoadGivesBackEveryByteAndBlob) {
  auto [world, sharded] = GetParam();
  TempDir dir;
  std::vector<SyntheticState> st;
  for (int r = 0; r < world; ++r) {
    st.push_back(SyntheticState::make());
    st.back().fill(42);  // replicas hold equal bytes
  }
  save_with_threads(dir.str(), st, 7, sharded);

  CheckpointDir cd(dir.path());
  EXPECT_EQ(cd.latest_step(), 7);
  CheckpointReader rd(cd.step_path(7));
  EXPECT_EQ(rd.manifest().world_size, world);
  EXPECT_EQ(rd.manifest().files.size(), static_cast<size_t>(world));
  EXPECT_TRUE(rd.verify().empty());
  EXPECT_EQ(rd.manifest().data_bytes() - 4 /*binary blob*/ - request(7, 0).global_blobs.at("data_position").size(),
            st[0].layout.total_bytes() + [&] {
              uint64_t n = 0;
              for (int r = 0; r < world; ++r) n += request(7, r).rank_blobs.at("rng").size();
              return n;
            }());

  auto store = std::make_shared<net::MemStore>();
  std::vector<SyntheticState> back;
  for (int r = 0; r < world; ++r) back.push_back(SyntheticState::make());
  run_ranks(world, [&](int r) {
    auto reads = back[static_cast<size_t>(r)].reads(r, world, sharded);
    auto l = load_latest(dir.str(), back[static_cast<size_t>(r)].layout, reads, {store, r, world});
    ASSERT_TRUE(l);
    EXPECT_EQ(l->step, 7);
    EXPECT_EQ(l->saved_world, world);
    EXPECT_EQ(l->model_config, request(7, r).model_config);
    EXPECT_EQ(l->global_blobs, request(7, r).global_blobs);
    EXPECT_EQ(l->rank_blobs, request(7, r).rank_blobs);
    EXPECT_TRUE(l->skipped.empty());
  });
  for (int r = 0; r < world; ++r) expect_same(st[0], back[static_cast<size_t>(r)], sharded, r, world);
}

INSTANTIATE_TEST_SUITE_P(Writers, RoundTrip,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Values(false, true)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "ranks" +
                                  (std::get<1>(info.param) ? "_zero_sharded" : "_replicated");
                         });

TEST(RoundTrip, DefaultBlockSizeWithABufferLargerThanTwoBlocks) {
  TempDir dir;
  std::vector<SyntheticState> st{SyntheticState::make(9'000'004), SyntheticState::make(9'000'004)};
  st[0].fill(3);
  st[1].fill(3);
  CheckpointOptions o = options(dir.str());
  o.block_bytes = kDefaultBlockBytes;
  save_with_threads(dir.str(), st, 1, false, o);
  CheckpointReader rd(CheckpointDir(dir.path()).step_path(1));
  EXPECT_EQ(rd.manifest().block_bytes, kDefaultBlockBytes);
  EXPECT_TRUE(rd.verify().empty());
  // Arbitrary partial ranges straddling block boundaries read back exactly.
  const auto& want = st[0].data[0];
  uint64_t x = 5;
  for (int i = 0; i < 20; ++i) {
    uint64_t a = splitmix(x) % want.size(), b = splitmix(x) % want.size();
    if (a > b) std::swap(a, b);
    std::vector<uint8_t> got(b - a);
    rd.read("params", {a, b}, got.data());
    ASSERT_EQ(0, std::memcmp(got.data(), want.data() + a, b - a)) << a << ".." << b;
  }
}

TEST(RoundTrip, CopyFunctionsStandInForDeviceMemory) {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  s.fill(9);
  std::vector<HeldBuffer> held;
  std::atomic<int> copies{0};
  for (size_t i = 0; i < s.data.size(); ++i) {
    const uint8_t* base = s.data[i].data();
    held.push_back({s.layout.buffers()[i].name, {0, s.bytes(i)}, nullptr,
                    [base, &copies](uint64_t begin, uint64_t len, void* dst) {
                      ++copies;
                      std::memcpy(dst, base + begin, len);
                    }});
  }
  {
    Checkpointer ck(options(dir.str()), s.layout, held, 0, 1);
    ck.save_now(request(3, 0));
  }
  EXPECT_GT(copies.load(), 0);
  SyntheticState back = SyntheticState::make();
  auto l = load_latest(dir.str(), back.layout, back.reads(0, 1, false));
  ASSERT_TRUE(l);
  expect_same(s, back);
}

// ---------------------------------------------------------------- resharding

class Reshard : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(Reshard, NRanksSaveMRanksLoadExactly) {
  auto [n, m, sharded] = GetParam();
  TempDir dir;
  std::vector<SyntheticState> st;
  for (int r = 0; r < n; ++r) {
    st.push_back(SyntheticState::make());
    st.back().fill(77);
  }
  save_with_threads(dir.str(), st, 20, sharded);

  auto store = std::make_shared<net::MemStore>();
  std::vector<SyntheticState> back;
  for (int r = 0; r < m; ++r) back.push_back(SyntheticState::make());
  run_ranks(m, [&](int r) {
    auto l = load_latest(dir.str(), back[static_cast<size_t>(r)].layout,
                         back[static_cast<size_t>(r)].reads(r, m, sharded), {store, r, m});
    ASSERT_TRUE(l);
    EXPECT_EQ(l->step, 20);
    EXPECT_EQ(l->saved_world, n);
    EXPECT_EQ(l->global_blobs, request(20, 0).global_blobs);
    // Rank blobs exist only for ranks that existed when saving.
    if (r < n) EXPECT_EQ(l->rank_blobs, request(20, r).rank_blobs);
    else EXPECT_TRUE(l->rank_blobs.empty());
  });
  for (int r = 0; r < m; ++r) expect_same(st[0], back[static_cast<size_t>(r)], sharded, r, m);
}

INSTANTIATE_TEST_SUITE_P(Worlds, Reshard,
                         ::testing::Values(std::make_tuple(2, 1, false), std::make_tuple(1, 2, false),
                                           std::make_tuple(2, 3, false), std::make_tuple(2, 1, true),
                                           std::make_tuple(1, 2, true), std::make_tuple(2, 3, true),
                                           std::make_tuple(3, 2, true)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "to" +
                                  std::to_string(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_zero_sharded" : "_replicated");
                         });

// ---------------------------------------------------------------- corruption and fallback

namespace {

// Two good checkpoints (steps 1 and 2, different contents) written by 2 ranks.
struct TwoCheckpoints {
  TempDir dir;
  std::vector<SyntheticState> step1, step2;
  TwoCheckpoints() {
    for (int r = 0; r < 2; ++r) {
      step1.push_back(SyntheticState::make());
      step1.back().fill(1);
      step2.push_back(SyntheticState::make());
      step2.back().fill(2);
    }
    save_with_threads(dir.str(), step1, 1, false);
    save_with_threads(dir.str(), step2, 2, false);
  }
  fs::path step_dir(int64_t s) const { return CheckpointDir(dir.path()).step_path(s); }
  // Loads with one rank; expects step 1 and a skipped step 2 whose reason contains every `needle`.
  void expect_fallback_to_step1(const std::vector<std::string>& needles) {
    SyntheticState back = SyntheticState::make();
    testing::internal::CaptureStderr();
    auto l = load_latest(dir.str(), back.layout, back.reads(0, 1, false));
    std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(l);
    EXPECT_EQ(l->step, 1);
    expect_same(step1[0], back);
    ASSERT_EQ(l->skipped.size(), 1u);
    EXPECT_EQ(l->skipped[0].step, 2);
    for (auto& n : needles) {
      EXPECT_NE(l->skipped[0].reason.find(n), std::string::npos) << "'" << n << "' not in: " << l->skipped[0].reason;
      EXPECT_NE(log.find(n), std::string::npos) << "the warning does not name '" << n << "': " << log;
    }
  }
};

// The file and file offset that hold byte `buffer_offset` of `buffer`, and the tensor there.
struct Located {
  std::string file;
  uint64_t file_offset;
  std::string tensor;
};
Located locate(const fs::path& step_dir, const std::string& buffer, uint64_t buffer_offset) {
  CheckpointReader rd(step_dir);
  for (auto& s : rd.manifest().segments)
    if (s.buffer == buffer && s.range.begin <= buffer_offset && buffer_offset < s.range.end) {
      auto names = rd.layout().tensors_overlapping(buffer, {buffer_offset, buffer_offset + 1});
      return {s.file, s.file_offset + (buffer_offset - s.range.begin), names.at(0)};
    }
  throw std::runtime_error("not found");
}

}  // namespace

TEST(Corruption, FlippedByteIsNamedWithItsTensorAndLoadFallsBack) {
  TwoCheckpoints c;
  Located at = locate(c.step_dir(2), "adam_v", 4 * 10000);  // the last tensor of adam_v
  flip_byte(c.step_dir(2) / at.file, at.file_offset);
  auto problems = CheckpointReader(c.step_dir(2)).verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].file, at.file);
  EXPECT_NE(problems[0].what.find("checksum mismatch"), std::string::npos);
  EXPECT_NE(std::find(problems[0].tensors.begin(), problems[0].tensors.end(), at.tensor), problems[0].tensors.end())
      << problems[0].describe();
  EXPECT_TRUE(CheckpointReader(c.step_dir(1)).verify().empty());
  c.expect_fallback_to_step1({at.file, at.tensor, "checksum mismatch"});
}

TEST(Corruption, TruncatedFileIsNamedWithTheLostTensors) {
  TwoCheckpoints c;
  Located at = locate(c.step_dir(2), "params", 100);
  fs::path f = c.step_dir(2) / at.file;
  fs::resize_file(f, at.file_offset);
  auto problems = CheckpointReader(c.step_dir(2)).verify();
  ASSERT_FALSE(problems.empty());
  EXPECT_EQ(problems[0].file, at.file);
  EXPECT_NE(problems[0].what.find("truncated"), std::string::npos) << problems[0].describe();
  EXPECT_NE(std::find(problems[0].tensors.begin(), problems[0].tensors.end(), at.tensor), problems[0].tensors.end())
      << problems[0].describe();
  c.expect_fallback_to_step1({at.file, "truncated", at.tensor});
}

TEST(Corruption, MissingManifestOrShardFileIsDetected) {
  TwoCheckpoints c;
  fs::remove(c.step_dir(2) / kManifestFile);
  EXPECT_THROW(CheckpointReader{c.step_dir(2)}, CorruptData);
  c.expect_fallback_to_step1({"manifest.json"});
  auto first = find_latest_valid(c.dir.str());
  ASSERT_TRUE(first);
  EXPECT_EQ(fs::path(*first).filename(), "step-00000001");
}

TEST(Corruption, MissingShardFileNamesItsTensors) {
  TwoCheckpoints c;
  fs::remove(c.step_dir(2) / shard_file_name(1));
  auto problems = CheckpointReader(c.step_dir(2)).verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].file, shard_file_name(1));
  EXPECT_FALSE(problems[0].tensors.empty());
  c.expect_fallback_to_step1({shard_file_name(1), "missing"});
}

TEST(Corruption, DamagedBlobAndPaddingAreReported) {
  TwoCheckpoints c;
  CheckpointReader rd(c.step_dir(2));
  const BlobRecord* rng = rd.manifest().find_blob("rng", 1);
  ASSERT_TRUE(rng);
  flip_byte(c.step_dir(2) / rng->file, rng->file_offset);
  auto problems = rd.verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].what.find("blob 'rng' of rank 1"), std::string::npos) << problems[0].describe();
  EXPECT_THROW(rd.read_blob("rng", 1), CorruptData);

  // Padding between segments belongs to no tensor: verify still fails, loads are unaffected.
  CheckpointReader rd1(c.step_dir(1));
  const FileRecord& f0 = rd1.manifest().files[0];
  std::vector<std::pair<uint64_t, uint64_t>> used;
  for (auto& s : rd1.manifest().segments)
    if (s.file == f0.name) used.push_back({s.file_offset, s.file_offset + s.range.size()});
  for (auto& b : rd1.manifest().blobs)
    if (b.file == f0.name) used.push_back({b.file_offset, b.file_offset + b.bytes});
  std::sort(used.begin(), used.end());
  uint64_t gap = 0;
  for (size_t i = 0; i + 1 < used.size() && !gap; ++i)
    if (used[i + 1].first > used[i].second) gap = used[i].second;
  ASSERT_GT(gap, 0u);
  flip_byte(c.step_dir(1) / f0.name, gap);
  auto p1 = rd1.verify();
  ASSERT_EQ(p1.size(), 1u);
  EXPECT_NE(p1[0].what.find("padding"), std::string::npos) << p1[0].describe();
}

TEST(Corruption, NoValidCheckpointIsAnErrorNotAFreshStart) {
  TwoCheckpoints c;
  fs::remove(c.step_dir(1) / kManifestFile);
  fs::remove(c.step_dir(2) / kManifestFile);
  SyntheticState back = SyntheticState::make();
  testing::internal::CaptureStderr();
  EXPECT_THROW(load_latest(c.dir.str(), back.layout, back.reads(0, 1, false)), CorruptData);
  testing::internal::GetCapturedStderr();

  TempDir empty;
  EXPECT_FALSE(load_latest(empty.str(), back.layout, back.reads(0, 1, false)));
  EXPECT_FALSE(load_latest((empty.path() / "does-not-exist").string(), back.layout, back.reads(0, 1, false)));
}

TEST(Corruption, TwoRanksAgreeOnTheFallbackWhenOnlyOneRankSeesDamage) {
  TwoCheckpoints c;
  // Rank 1 (sharded load) reads the second half of adam_m; damage only that half.
  uint64_t bytes = c.step1[0].bytes(c.step1[0].index("adam_m"));
  Located at = locate(c.step_dir(2), "adam_m", bytes - 8);
  flip_byte(c.step_dir(2) / at.file, at.file_offset);
  auto store = std::make_shared<net::MemStore>();
  std::vector<SyntheticState> back{SyntheticState::make(), SyntheticState::make()};
  std::vector<int64_t> steps(2, -1);
  testing::internal::CaptureStderr();
  run_ranks(2, [&](int r) {
    auto l = load_latest(c.dir.str(), back[r].layout, back[r].reads(r, 2, true), {store, r, 2});
    steps[r] = l ? l->step : -1;
  });
  testing::internal::GetCapturedStderr();
  EXPECT_EQ(steps[0], 1);
  EXPECT_EQ(steps[1], 1);
  expect_same(c.step1[0], back[0], true, 0, 2);
  expect_same(c.step1[0], back[1], true, 1, 2);
}

TEST(Loading, AnotherModelIsAConfigErrorNamingTheDifference) {
  TwoCheckpoints c;
  StateLayout other;
  other.add_buffer("params", DType::F32, 16);
  std::vector<uint8_t> buf(16);
  try {
    load_latest(c.dir.str(), other, {{"params", {0, 16}, buf.data()}});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("params"), std::string::npos) << e.what();
  }
}

TEST(Loading, DirectoriesNewerThanLatestAreIgnored) {
  TwoCheckpoints c;
  CheckpointDir(c.dir.path()).set_latest(1);  // as if killed between rename and `latest`
  SyntheticState back = SyntheticState::make();
  testing::internal::CaptureStderr();
  auto l = load_latest(c.dir.str(), back.layout, back.reads(0, 1, false));
  testing::internal::GetCapturedStderr();
  ASSERT_TRUE(l);
  EXPECT_EQ(l->step, 1);
  EXPECT_TRUE(l->skipped.empty());
  expect_same(c.step1[0], back);
}

TEST(Saving, SavingAStepAgainReplacesTheOldDirectory) {
  TwoCheckpoints c;
  Located at = locate(c.step_dir(2), "params", 0);
  flip_byte(c.step_dir(2) / at.file, at.file_offset);
  std::vector<SyntheticState> again{SyntheticState::make()};
  again[0].fill(5);
  testing::internal::CaptureStderr();
  save_with_threads(c.dir.str(), again, 2, false);
  testing::internal::GetCapturedStderr();
  CheckpointReader rd(c.step_dir(2));
  EXPECT_EQ(rd.manifest().world_size, 1);
  EXPECT_TRUE(rd.verify().empty());
  EXPECT_TRUE(CheckpointDir(c.dir.path()).leftovers().empty());
}

// ---------------------------------------------------------------- keep-last-K and the busy policy

TEST(Saving, KeepsTheLastKCheckpoints) {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  CheckpointOptions o = options(dir.str());
  o.keep_last = 2;
  Checkpointer ck(o, s.layout, s.held(0, 1, false), 0, 1);
  for (int64_t step : {10, 20, 30, 40, 50}) {
    s.fill(static_cast<uint64_t>(step));
    ck.save_now(request(step, 0));
  }
  auto list = CheckpointDir(dir.path()).list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].step, 40);
  EXPECT_EQ(list[1].step, 50);
  EXPECT_EQ(CheckpointDir(dir.path()).latest_step(), 50);
  auto st = ck.stats();
  EXPECT_EQ(st.committed, 5);
  EXPECT_EQ(st.last_committed_step, 50);
  EXPECT_THROW(ck.save(request(50, 0)), ConfigError);  // steps must increase
}

namespace {
// Holds the writer thread at the start of a save until released.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int entered = 0;
  void pass() {
    std::unique_lock<std::mutex> l(mu);
    ++entered;
    cv.notify_all();
    cv.wait(l, [&] { return open; });
  }
  void wait_entered(int n) {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return entered >= n; });
  }
  void release() {
    std::lock_guard<std::mutex> l(mu);
    open = true;
    cv.notify_all();
  }
};
}  // namespace

TEST(BusyPolicy, SkipDropsASaveWhileThePreviousIsInFlight) {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  s.fill(1);
  Gate gate;
  CheckpointOptions o = options(dir.str());
  o.if_busy = BusyPolicy::Skip;
  o.before_write = [&](int64_t step) {
    if (step == 1) gate.pass();
  };
  Checkpointer ck(o, s.layout, s.held(0, 1, false), 0, 1);
  EXPECT_TRUE(ck.save(request(1, 0)));
  gate.wait_entered(1);
  EXPECT_TRUE(ck.stats().in_flight);
  EXPECT_FALSE(ck.save(request(2, 0)));  // skipped: step 1 is still being written
  gate.release();
  EXPECT_EQ(ck.wait(), SaveOutcome::Committed);
  EXPECT_TRUE(ck.save(request(3, 0)));
  EXPECT_EQ(ck.wait(), SaveOutcome::Committed);
  auto st = ck.stats();
  EXPECT_EQ(st.requested, 3);
  EXPECT_EQ(st.started, 2);
  EXPECT_EQ(st.skipped_busy, 1);
  EXPECT_EQ(st.waited_busy, 0);
  EXPECT_EQ(st.committed, 2);
  auto list = CheckpointDir(dir.path()).list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].step, 1);
  EXPECT_EQ(list[1].step, 3);
}

TEST(BusyPolicy, SkipDecisionIsTheSameOnEveryRank) {
  TempDir dir;
  std::vector<SyntheticState> st{SyntheticState::make(), SyntheticState::make()};
  Gate gate;
  CheckpointOptions o = options(dir.str());
  o.if_busy = BusyPolicy::Skip;
  o.before_write = [&](int64_t step) {
    if (step == 1) gate.pass();
  };
  auto store = std::make_shared<net::MemStore>();
  std::vector<std::unique_ptr<Checkpointer>> cks(2);
  run_ranks(2, [&](int r) { cks[r] = std::make_unique<Checkpointer>(o, st[r].layout, st[r].held(r, 2, false), r, 2, store); });
  run_ranks(2, [&](int r) { EXPECT_TRUE(cks[r]->save(request(1, r))); });
  gate.wait_entered(2);  // both writers are held: both ranks are busy
  std::vector<int> saved(2, -1);
  run_ranks(2, [&](int r) { saved[r] = cks[r]->save(request(2, r)); });
  EXPECT_EQ(saved[0], 0);
  EXPECT_EQ(saved[1], 0);
  gate.release();
  run_ranks(2, [&](int r) { EXPECT_EQ(cks[r]->wait(), SaveOutcome::Committed); });
  run_ranks(2, [&](int r) { EXPECT_TRUE(cks[r]->save(request(3, r))); });
  run_ranks(2, [&](int r) { EXPECT_EQ(cks[r]->wait(), SaveOutcome::Committed); });
  for (auto& ck : cks) EXPECT_EQ(ck->stats().skipped_busy, 1);
  cks.clear();
  auto list = CheckpointDir(dir.path()).list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[1].step, 3);
}

TEST(BusyPolicy, WaitBlocksUntilThePreviousSaveIsWritten) {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  Gate gate;
  CheckpointOptions o = options(dir.str());
  o.if_busy = BusyPolicy::Wait;
  o.before_write = [&](int64_t step) {
    if (step == 1) gate.pass();
  };
  Checkpointer ck(o, s.layout, s.held(0, 1, false), 0, 1);
  ASSERT_TRUE(ck.save(request(1, 0)));
  gate.wait_entered(1);
  std::atomic<bool> returned{false};
  std::thread second([&] {
    EXPECT_TRUE(ck.save(request(2, 0)));
    returned = true;
  });
  // While step 1 is held, the second save cannot have returned.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(returned.load());
  gate.release();
  second.join();
  EXPECT_EQ(ck.wait(), SaveOutcome::Committed);
  auto st = ck.stats();
  EXPECT_EQ(st.waited_busy, 1);
  EXPECT_EQ(st.skipped_busy, 0);
  EXPECT_EQ(st.committed, 2);
  EXPECT_GE(st.max_blocked_s, st.last_wait_s);
}

// ---------------------------------------------------------------- failures during a save

TEST(Saving, ARankThatNeverHandsInItsShardFailsTheSaveCleanly) {
  TempDir dir;
  std::vector<SyntheticState> st{SyntheticState::make(), SyntheticState::make()};
  save_with_threads(dir.str(), st, 1, false);  // a good checkpoint first
  auto store = std::make_shared<net::MemStore>();
  CheckpointOptions o = options(dir.str());
  o.commit_timeout_s = 1.0;
  testing::internal::CaptureStderr();
  std::unique_ptr<Checkpointer> r1;
  std::thread t([&] { r1 = std::make_unique<Checkpointer>(o, st[1].layout, st[1].held(1, 2, false), 1, 2, store); });
  store->get("ckpt/held/1", Deadline::in_seconds(30));  // the short timeout is for the commit, not for thread start-up
  Checkpointer r0(o, st[0].layout, st[0].held(0, 2, false), 0, 2, store);
  t.join();
  // Rank 1 does not call save (as if it died): rank 0 must give up, not commit.
  try {
    r0.save_now(request(2, 0));
    FAIL() << "committed without rank 1";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
  }
  r1.reset();
  testing::internal::GetCapturedStderr();
  EXPECT_EQ(CheckpointDir(dir.path()).latest_step(), 1);
  EXPECT_EQ(CheckpointDir(dir.path()).list().size(), 1u);
  EXPECT_TRUE(CheckpointDir(dir.path()).leftovers().empty());
  EXPECT_EQ(r0.stats().failed, 1);
}

// Thousands of small held ranges, declared out of order, save and load back
// exactly (the snapshot finds each write's held ranges by binary search).
TEST(RoundTrip, ThousandsOfShuffledHeldRanges) {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  s.fill(21);
  std::vector<HeldBuffer> held;
  for (size_t i = 0; i < s.data.size(); ++i)
    for (uint64_t at = 0; at < s.bytes(i); at += 28) {
      const uint64_t end = std::min(at + 28, s.bytes(i));
      held.push_back({s.layout.buffers()[i].name, {at, end}, s.data[i].data() + at, nullptr});
    }
  ASSERT_GT(held.size(), 3000u);
  std::mt19937 rng(11);
  std::shuffle(held.begin(), held.end(), rng);
  {
    Checkpointer ck(options(dir.str()), s.layout, held, 0, 1);
    ck.save_now(request(4, 0));
  }
  SyntheticState back = SyntheticState::make();
  ASSERT_TRUE(load_latest(dir.str(), back.layout, back.reads(0, 1, false)));
  expect_same(s, back);
}

TEST(Saving, BadHoldingsAndOptionsAreConfigErrors) {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  auto held = s.held(0, 1, false);
  held.pop_back();  // prime_u8 held by nobody
  EXPECT_THROW(Checkpointer(options(dir.str()), s.layout, held, 0, 1), ConfigError);
  EXPECT_THROW(Checkpointer(options(""), s.layout, s.held(0, 1, false), 0, 1), ConfigError);
  {
    // Bytes declared twice (overlapping ranges, not next to each other in the list).
    auto twice = s.held(0, 1, false);
    HeldBuffer extra = twice[0];
    extra.range = {8, 16};
    extra.data = static_cast<const uint8_t*>(twice[0].data) + 8;
    twice.push_back(extra);
    EXPECT_THROW(Checkpointer(options(dir.str()), s.layout, twice, 0, 1), ConfigError);
  }
  EXPECT_THROW(Checkpointer(options(dir.str()), s.layout, s.held(0, 1, false), 0, 2), ConfigError);  // no store
  EXPECT_THROW(parse_busy_policy("sometimes"), ConfigError);
}

TEST(Loading, LatestNamingAMissingDirectoryIsReportedAndSkipped) {
  TwoCheckpoints c;
  fs::remove_all(c.step_dir(2));
  c.expect_fallback_to_step1({"step-00000002", "does not exist"});
}

TEST(RoundTrip, SmallBlocksStraddlingTheWriterChunks) {
  // Shards of ~1.5 MB with 12 KiB blocks: blocks cross the writer's 256 KiB
  // write pieces, exercising the streaming block hasher.
  TempDir dir;
  std::vector<SyntheticState> st{SyntheticState::make(3'000'004), SyntheticState::make(3'000'004)};
  st[0].fill(8);
  st[1].fill(8);
  save_with_threads(dir.str(), st, 1, false);
  CheckpointReader rd(CheckpointDir(dir.path()).step_path(1));
  EXPECT_TRUE(rd.verify().empty());
  SyntheticState back = SyntheticState::make(3'000'004);
  auto l = load_latest(dir.str(), back.layout, back.reads(0, 1, false));
  ASSERT_TRUE(l);
  expect_same(st[0], back);
}

TEST(Options, FromConfigAndSchedule) {
  Config c = Config::from_string(
      "[checkpoint]\ndir = \"/x\"\nkeep_last = 5\nif_busy = \"skip\"\nblock_size = \"1M\"\n");
  CheckpointOptions o = CheckpointOptions::from_config(c);
  c.finish();
  EXPECT_EQ(o.dir, "/x");
  EXPECT_EQ(o.keep_last, 5);
  EXPECT_EQ(o.if_busy, BusyPolicy::Skip);
  EXPECT_EQ(o.block_bytes, 1u << 20);
  Config bad = Config::from_string("[checkpoint]\nif_busy = \"maybe\"\n");
  EXPECT_THROW(CheckpointOptions::from_config(bad), ConfigError);

  SaveSchedule every10(10, 0);
  EXPECT_FALSE(every10.due(0));
  EXPECT_FALSE(every10.due(9));
  EXPECT_TRUE(every10.due(10));
  SaveSchedule by_time(0, 1e-9);
  EXPECT_TRUE(by_time.due(1));
  SaveSchedule never(0, 0);
  EXPECT_FALSE(never.due(100));
}
