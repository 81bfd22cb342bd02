// `braid ckpt ls|verify|inspect` on real checkpoints: exit codes and the
// problems named in the output. Runs the built `braid` binary (BRAID_BIN
// overrides its path).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/checkpoint_reader.hpp"
#include "ckpt_test_util.hpp"

using namespace ckpt_test;

namespace {

struct CliRun {
  int code;
  std::string out;
};

CliRun run_braid(const std::string& args) {
  const char* bin = std::getenv("BRAID_BIN");
  std::string cmd = std::string(bin ? bin : BRAID_BINARY_DIR "/braid") + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen failed");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

struct Dir {
  TempDir dir;
  SyntheticState s = SyntheticState::make();
  Dir() {
    testing::internal::CaptureStderr();
    for (int64_t step : {100, 200}) {
      std::vector<SyntheticState> st{SyntheticState::make(), SyntheticState::make()};
      st[0].fill(static_cast<uint64_t>(step));
      st[1].fill(static_cast<uint64_t>(step));
      save_with_threads(dir.str(), st, step, false);
    }
    testing::internal::GetCapturedStderr();
  }
  fs::path step(int64_t s) const { return CheckpointDir(dir.path()).step_path(s); }
};

}  // namespace

TEST(CkptCli, LsVerifyInspectOnValidCheckpoints) {
  Dir d;
  CliRun ls = run_braid("ckpt ls " + d.dir.str());
  EXPECT_EQ(ls.code, 0) << ls.out;
  EXPECT_NE(ls.out.find("latest: step-00000200"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("100"), std::string::npos) << ls.out;

  CliRun v = run_braid("ckpt verify " + d.dir.str());
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("step-00000200: valid"), std::string::npos) << v.out;
  EXPECT_EQ(run_braid("ckpt verify " + d.dir.str() + " --all").code, 0);
  EXPECT_EQ(run_braid("ckpt verify " + d.step(100).string()).code, 0);
  EXPECT_EQ(run_braid("ckpt verify " + d.dir.str() + " --step 150").code, 1);

  CliRun in = run_braid("ckpt inspect " + d.step(100).string());
  EXPECT_EQ(in.code, 0) << in.out;
  for (const char* want : {"step 100", "rank-00001.bin", "adam_v.t6", "layers = 2", "data_position", "xxh3"})
    EXPECT_NE(in.out.find(want), std::string::npos) << "inspect lacks '" << want << "':\n" << in.out;
  CliRun js = run_braid("ckpt inspect --json " + d.dir.str());
  EXPECT_EQ(js.code, 0);
  EXPECT_NO_THROW(Manifest::parse(js.out, "inspect --json"));
}

TEST(CkptCli, VerifyFailsNamingTheFileAndTensor) {
  Dir d;
  CheckpointReader rd(d.step(200));
  const SegmentRecord* seg = rd.manifest().segments_of("adam_m")[1];
  auto tensors = rd.layout().tensors_overlapping("adam_m", {seg->range.end - 1, seg->range.end});
  flip_byte(d.step(200) / seg->file, seg->file_offset + seg->range.size() - 1);
  CliRun v = run_braid("ckpt verify " + d.dir.str());
  EXPECT_EQ(v.code, 1) << v.out;
  EXPECT_NE(v.out.find("INVALID"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find(seg->file), std::string::npos) << v.out;
  EXPECT_NE(v.out.find(tensors.at(0)), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("step-00000100"), std::string::npos) << "no word on the fallback:\n" << v.out;
  EXPECT_EQ(run_braid("ckpt verify " + d.dir.str() + " --step 100").code, 0);
  EXPECT_EQ(run_braid("ckpt verify " + d.dir.str() + " --all").code, 1);

  fs::resize_file(d.step(100) / shard_file_name(0), 10);
  CliRun t = run_braid("ckpt verify " + d.dir.str() + " --step 100");
  EXPECT_EQ(t.code, 1);
  EXPECT_NE(t.out.find("truncated"), std::string::npos) << t.out;
  CliRun ls = run_braid("ckpt ls " + d.dir.str());
  EXPECT_NE(ls.out.find("DAMAGED"), std::string::npos) << ls.out;

  fs::remove(d.step(200) / kManifestFile);
  CliRun m = run_braid("ckpt verify " + d.step(200).string());
  EXPECT_EQ(m.code, 1);
  EXPECT_NE(m.out.find("manifest.json"), std::string::npos) << m.out;
}

TEST(CkptCli, BadArgumentsAreClearErrors) {
  TempDir empty;
  CliRun v = run_braid("ckpt verify " + empty.str());
  EXPECT_EQ(v.code, 1);
  EXPECT_NE(v.out.find("no committed checkpoint"), std::string::npos) << v.out;
  CliRun n = run_braid("ckpt ls " + (empty.path() / "nope").string());
  EXPECT_NE(n.code, 0);
  EXPECT_NE(n.out.find("not a directory"), std::string::npos) << n.out;
}
