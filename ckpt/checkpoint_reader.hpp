#pragma once
// Reads one committed checkpoint (a step directory): its manifest, any byte
// range of any buffer (this is how a different world size reshards: each new
// rank reads the ranges it needs from whichever files hold them), and blobs.
// Every read verifies the checksum of each block it touches; a mismatch, a
// short file or a missing file is a CorruptData error naming the file and the
// tensors whose bytes are affected. Nothing is returned unverified.
//
// Cost: a read of n bytes reads and hashes n rounded out to whole blocks
// (block_bytes, 4 MiB by default) at each end; verify() reads every file once.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/manifest.hpp"
#include "ckpt/file_io.hpp"

namespace braid::ckpt {

// One thing wrong with a checkpoint, for reports and warnings.
struct Problem {
  std::string file;                  // relative to the step directory ("" for the directory itself)
  std::string what;                  // what is wrong
  std::vector<std::string> tensors;  // tensors whose bytes are affected (may be empty)
  std::string describe() const;      // "rank-00001.bin: checksum mismatch ... (tensors: a, b)"
};

class CheckpointReader {
 public:
  // Reads and checks the manifest. Throws CorruptData when it is missing,
  // unparsable, fails its self-checksum or is inconsistent.
  explicit CheckpointReader(std::filesystem::path step_dir);
  ~CheckpointReader();
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;

  const std::filesystem::path& path() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  const StateLayout& layout() const { return manifest_.layout; }
  int64_t step() const { return manifest_.step; }

  // Cheap checks (no data read): every file exists and has its recorded size.
  std::vector<Problem> check_files() const;
  // Full check: check_files() plus every block, blob and whole-file checksum.
  // Empty result: the checkpoint is valid.
  std::vector<Problem> verify() const;

  // Copies bytes `range` of `buffer` into dst (range.size() bytes), verifying
  // every block it touches. Throws CorruptData naming file and tensors, or
  // ConfigError for an unknown buffer / out-of-bounds range. On a throw, dst
  // holds unspecified bytes.
  void read(const std::string& buffer, ByteRange range, void* dst) const;
  // A blob's bytes, verified; nullopt when the checkpoint has no such blob.
  std::optional<std::string> read_blob(const std::string& name, int rank = -1) const;
  // All global blobs, or all blobs of one writer rank.
  std::map<std::string, std::string> read_blobs(int rank = -1) const;

 private:
  int fd_for(const std::string& file) const;
  std::filesystem::path dir_;
  Manifest manifest_;
  mutable std::map<std::string, UniqueFd> fds_;  // not thread-safe: one reader per thread
};

}  // namespace braid::ckpt
