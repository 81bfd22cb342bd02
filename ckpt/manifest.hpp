#pragma once
// The manifest of one checkpoint (manifest.json in its step directory): what
// was saved, where every byte lives, and an xxh3 of every block, blob and
// file. The format is described in docs/checkpoint-format.md.
//
// Segments are checksummed in fixed-size blocks (block_bytes, 4 MiB by
// default, counted from the segment start) so that reading part of a segment
// (a different world size reads different ranges) verifies only the blocks it
// touches: cost of verification = bytes read rounded out to whole blocks.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/state_layout.hpp"

namespace braid::ckpt {

inline constexpr int kFormatVersion = 1;
inline constexpr const char* kFormatName = "braid-checkpoint";
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr uint64_t kDefaultBlockBytes = 4ull << 20;

std::string shard_file_name(int rank);  // "rank-00003.bin"

// Bytes [range) of a buffer, stored at file_offset of a shard file, with one
// checksum per block of block_bytes (the last block may be shorter).
struct SegmentRecord {
  std::string file;
  uint64_t file_offset = 0;
  std::string buffer;
  ByteRange range;
  std::vector<uint64_t> block_xxh3;
};

// A small named byte string: global (written once, by rank 0) or of one rank.
struct BlobRecord {
  std::string name;
  int rank = -1;  // -1: global
  std::string file;
  uint64_t file_offset = 0;
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
  bool global() const { return rank < 0; }
};

struct FileRecord {
  std::string name;  // relative to the step directory
  int rank = 0;      // the writer
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;  // of the whole file
};

// One block of a segment: the buffer bytes it covers and where they are.
struct BlockRef {
  const SegmentRecord* segment = nullptr;
  size_t index = 0;
  ByteRange range;  // in buffer coordinates
  uint64_t file_offset = 0;
};

struct Manifest {
  int format_version = kFormatVersion;
  int64_t step = 0;
  int64_t created_unix_ms = 0;
  int world_size = 1;
  uint64_t block_bytes = kDefaultBlockBytes;
  std::string model_config;  // TOML text as given by the trainer
  StateLayout layout;
  // holdings[r]: the ranges rank r held when saving (the world layout).
  std::vector<std::vector<BufferRange>> holdings;
  std::vector<FileRecord> files;
  std::vector<SegmentRecord> segments;
  std::vector<BlobRecord> blobs;

  // JSON text with a self-checksum ("manifest_xxh3") over its canonical form.
  std::string to_json_text() const;
  // Parses, checks the self-checksum and the consistency of every record.
  // Throws CorruptData naming `source` and the problem.
  static Manifest parse(const std::string& text, const std::string& source);

  // Segments of `buffer`, sorted by range (they tile the buffer exactly).
  std::vector<const SegmentRecord*> segments_of(const std::string& buffer) const;
  const FileRecord* find_file(const std::string& name) const;
  const BlobRecord* find_blob(const std::string& name, int rank) const;
  // The blocks of `seg` that overlap `range` (buffer coordinates).
  std::vector<BlockRef> blocks_overlapping(const SegmentRecord& seg, const ByteRange& range) const;
  uint64_t data_bytes() const;  // sum of the segment and blob sizes

  // Checks that segments tile every buffer exactly once and lie inside their
  // files, that blobs lie inside their files, and that block counts match.
  // Throws CorruptData naming `source`.
  void check_consistency(const std::string& source) const;
};

}  // namespace braid::ckpt
