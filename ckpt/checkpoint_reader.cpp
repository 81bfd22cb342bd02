#include "ckpt/checkpoint_reader.hpp"

#include <fcntl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "ckpt/checkpoint_dir.hpp"
#include "core/checksum.hpp"
#include "core/error.hpp"

namespace braid::ckpt {
namespace fs = std::filesystem;

std::string Problem::describe() const {
  std::string s = file.empty() ? what : file + ": " + what;
  if (!tensors.empty()) s += "; affected tensor(s): " + StateLayout::describe_names(tensors, 6);
  return s;
}

namespace {

const char* kVerifyHint =
    "run `braid ckpt verify DIR` for a full report; resume falls back to the previous valid checkpoint";

std::vector<std::string> union_names(std::vector<std::string> a, const std::vector<std::string>& b) {
  for (auto& n : b)
    if (std::find(a.begin(), a.end(), n) == a.end()) a.push_back(n);
  return a;
}

}  // namespace

CheckpointReader::CheckpointReader(fs::path step_dir) : dir_(std::move(step_dir)) {
  fs::path mp = dir_ / kManifestFile;
  std::error_code ec;
  if (!fs::is_directory(dir_, ec))
    throw CorruptData(fmt::format("{} is not a checkpoint directory (it does not exist)", dir_.string()),
                      "`braid ckpt ls DIR` lists the checkpoints");
  if (!fs::exists(mp, ec))
    throw CorruptData(fmt::format("{}: no {} (the save did not finish, or the file was deleted)", dir_.string(),
                                  kManifestFile),
                      kVerifyHint);
  std::string text;
  try {
    text = read_text_file(mp);
  } catch (const IoError& e) {
    throw CorruptData(e.what(), kVerifyHint);
  }
  manifest_ = Manifest::parse(text, mp.string());
  auto name_step = parse_step_dir_name(dir_.filename().string());
  if (name_step && *name_step != manifest_.step)
    throw CorruptData(fmt::format("{}: the manifest is for step {}, the directory name says step {}", mp.string(),
                                  manifest_.step, *name_step),
                      "a step directory was renamed or a manifest copied between checkpoints");
}

CheckpointReader::~CheckpointReader() = default;
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;

int CheckpointReader::fd_for(const std::string& file) const {
  auto it = fds_.find(file);
  if (it != fds_.end()) return it->second.get();
  fs::path p = dir_ / file;
  std::error_code ec;
  if (!fs::exists(p, ec)) {
    std::vector<std::string> tensors;
    for (auto& s : manifest_.segments)
      if (s.file == file) tensors = union_names(tensors, layout().tensors_overlapping(s.buffer, s.range));
    throw CorruptData(
        fmt::format("{}: shard file is missing; affected tensor(s): {}", p.string(),
                    StateLayout::describe_names(tensors, 6)),
        kVerifyHint);
  }
  UniqueFd fd = open_file(p, O_RDONLY);
  int raw = fd.get();
  fds_.emplace(file, std::move(fd));
  return raw;
}

std::vector<Problem> CheckpointReader::check_files() const {
  std::vector<Problem> out;
  for (auto& f : manifest_.files) {
    fs::path p = dir_ / f.name;
    std::error_code ec;
    auto size = fs::file_size(p, ec);
    std::vector<std::string> tensors;
    if (ec) {
      for (auto& s : manifest_.segments)
        if (s.file == f.name) tensors = union_names(tensors, layout().tensors_overlapping(s.buffer, s.range));
      out.push_back({f.name, ec == std::errc::no_such_file_or_directory ? "shard file is missing"
                                                                         : "cannot stat: " + ec.message(),
                     tensors});
      continue;
    }
    if (size == f.bytes) continue;
    if (size < f.bytes) {
      // Tensors whose bytes lie past the actual end are lost.
      for (auto& s : manifest_.segments) {
        if (s.file != f.name || s.file_offset + s.range.size() <= size) continue;
        uint64_t lost_from = s.range.begin + (size > s.file_offset ? size - s.file_offset : 0);
        tensors = union_names(tensors, layout().tensors_overlapping(s.buffer, {lost_from, s.range.end}));
      }
      out.push_back({f.name, fmt::format("truncated: {} bytes, the manifest says {}", size, f.bytes), tensors});
    } else {
      out.push_back({f.name, fmt::format("{} bytes, the manifest says {} (data appended?)", size, f.bytes), {}});
    }
  }
  return out;
}

std::vector<Problem> CheckpointReader::verify() const {
  std::vector<Problem> out = check_files();
  std::set<std::string> bad_files;
  for (auto& p : out) bad_files.insert(p.file);

  for (auto& f : manifest_.files) {
    if (bad_files.count(f.name)) continue;
    // Everything stored in this file, in file order: blocks of segments and blobs.
    struct Piece {
      uint64_t offset, size, xxh3;
      const SegmentRecord* seg;  // null for a blob
      ByteRange buffer_range;
      const BlobRecord* blob;
    };
    std::vector<Piece> pieces;
    for (auto& s : manifest_.segments)
      if (s.file == f.name)
        for (auto& b : manifest_.blocks_overlapping(s, s.range))
          pieces.push_back({b.file_offset, b.range.size(), s.block_xxh3[b.index], &s, b.range, nullptr});
    for (auto& b : manifest_.blobs)
      if (b.file == f.name) pieces.push_back({b.file_offset, b.bytes, b.xxh3, nullptr, {}, &b});
    std::sort(pieces.begin(), pieces.end(), [](auto& a, auto& b) { return a.offset < b.offset; });

    fs::path p = dir_ / f.name;
    int fd;
    try {
      fd = fd_for(f.name);
    } catch (const Error& e) {
      out.push_back({f.name, e.what(), {}});
      continue;
    }
    Xxh3Stream whole;
    std::vector<char> buf;
    uint64_t pos = 0;
    size_t bad_blocks = 0;
    std::vector<std::string> bad_tensors;
    std::string first_bad;
    bool piece_problem = false;  // a block or blob is bad: the file hash adds nothing
    bool overlap = false;
    auto read_hash = [&](uint64_t off, uint64_t len) -> uint64_t {
      buf.resize(static_cast<size_t>(len));
      size_t n = pread_full(fd, buf.data(), buf.size(), off, p);
      if (n != len) throw CorruptData(fmt::format("short read at byte {} (file changed while verifying?)", off + n));
      whole.update(buf.data(), buf.size());
      return xxh3_64(buf.data(), buf.size());
    };
    try {
      for (auto& pc : pieces) {
        if (pc.offset < pos) {
          out.push_back({f.name, fmt::format("records overlap at byte {}", pc.offset), {}});
          piece_problem = overlap = true;
          break;
        }
        if (pc.offset > pos) read_hash(pos, pc.offset - pos);  // padding
        uint64_t h = read_hash(pc.offset, pc.size);
        pos = pc.offset + pc.size;
        if (h == pc.xxh3) continue;
        piece_problem = true;
        if (pc.blob) {
          out.push_back({f.name,
                         fmt::format("checksum mismatch in blob '{}'{} (bytes [{}, {}) of the file)", pc.blob->name,
                                     pc.blob->global() ? "" : fmt::format(" of rank {}", pc.blob->rank),
                                     pc.offset, pc.offset + pc.size),
                         {}});
          continue;
        }
        ++bad_blocks;
        bad_tensors = union_names(bad_tensors, layout().tensors_overlapping(pc.seg->buffer, pc.buffer_range));
        if (first_bad.empty())
          first_bad = fmt::format("bytes [{}, {}) of the file, buffer '{}' bytes {}", pc.offset,
                                  pc.offset + pc.size, pc.seg->buffer, to_string(pc.buffer_range));
      }
      if (!overlap && pos < f.bytes) read_hash(pos, f.bytes - pos);
    } catch (const Error& e) {
      out.push_back({f.name, e.what(), {}});
      continue;
    }
    if (bad_blocks)
      out.push_back({f.name,
                     fmt::format("checksum mismatch in {} block(s), first at {}", bad_blocks, first_bad),
                     bad_tensors});
    else if (!piece_problem && whole.digest() != f.xxh3)
      out.push_back({f.name, "whole-file checksum mismatch outside every tensor and blob (padding bytes changed)", {}});
  }
  return out;
}

void CheckpointReader::read(const std::string& buffer, ByteRange range, void* dst) const {
  const BufferSpec& b = layout().buffer(buffer);
  if (range.end < range.begin || range.end > b.bytes)
    throw ConfigError(fmt::format("cannot read bytes {} of buffer '{}': it has {} bytes in {}", to_string(range),
                                  buffer, b.bytes, dir_.string()));
  if (range.empty()) return;
  auto* out = static_cast<char*>(dst);
  std::vector<char> scratch;
  uint64_t covered = 0;
  for (const SegmentRecord* seg : manifest_.segments_of(buffer)) {
    if (seg->range.intersect(range).empty()) continue;
    int fd = fd_for(seg->file);
    fs::path p = dir_ / seg->file;
    for (const BlockRef& blk : manifest_.blocks_overlapping(*seg, range)) {
      ByteRange want = blk.range.intersect(range);
      bool direct = want == blk.range;  // whole block wanted: read straight into dst
      char* target = out + (blk.range.begin - range.begin);
      if (!direct) {
        scratch.resize(static_cast<size_t>(blk.range.size()));
        target = scratch.data();
      }
      size_t n = pread_full(fd, target, blk.range.size(), blk.file_offset, p);
      auto fail = [&](const std::string& what) {
        throw CorruptData(
            fmt::format("{}: {} in bytes [{}, {}) (buffer '{}' bytes {}); affected tensor(s): {}", p.string(), what,
                        blk.file_offset, blk.file_offset + blk.range.size(), buffer, to_string(blk.range),
                        StateLayout::describe_names(layout().tensors_overlapping(buffer, blk.range), 6)),
            kVerifyHint);
      };
      if (n != blk.range.size())
        fail(fmt::format("file ends early (truncated at byte {})", blk.file_offset + n));
      if (xxh3_64(target, n) != seg->block_xxh3[blk.index]) fail("checksum mismatch");
      if (!direct) std::memcpy(out + (want.begin - range.begin), scratch.data() + (want.begin - blk.range.begin), want.size());
      covered += want.size();
    }
  }
  if (covered != range.size())  // check_consistency() makes segments tile buffers; keep the guard anyway
    throw CorruptData(fmt::format("{}: bytes {} of buffer '{}' are not in any shard file", dir_.string(),
                                  to_string(range), buffer),
                      kVerifyHint);
}

std::optional<std::string> CheckpointReader::read_blob(const std::string& name, int rank) const {
  const BlobRecord* b = manifest_.find_blob(name, rank);
  if (!b) return std::nullopt;
  std::string out(static_cast<size_t>(b->bytes), '\0');
  fs::path p = dir_ / b->file;
  size_t n = pread_full(fd_for(b->file), out.data(), out.size(), b->file_offset, p);
  std::string label = rank < 0 ? fmt::format("global blob '{}'", name) : fmt::format("blob '{}' of rank {}", name, rank);
  if (n != out.size())
    throw CorruptData(fmt::format("{}: file ends early inside {}", p.string(), label), kVerifyHint);
  if (xxh3_64(out.data(), out.size()) != b->xxh3)
    throw CorruptData(fmt::format("{}: checksum mismatch in {}", p.string(), label), kVerifyHint);
  return out;
}

std::map<std::string, std::string> CheckpointReader::read_blobs(int rank) const {
  std::map<std::string, std::string> out;
  for (auto& b : manifest_.blobs)
    if (b.rank == rank) out[b.name] = *read_blob(b.name, rank);
  return out;
}

}  // namespace braid::ckpt
