#include "ckpt/manifest.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/checksum.hpp"
#include "core/error.hpp"

namespace braid::ckpt {
using nlohmann::json;

std::string shard_file_name(int rank) { return fmt::format("rank-{:05d}.bin", rank); }

namespace {

[[noreturn]] void corrupt(const std::string& source, const std::string& what) {
  throw CorruptData(fmt::format("{}: {}", source, what),
                    "the manifest is damaged or was not written by this version of braid; "
                    "`braid ckpt verify` checks the whole checkpoint");
}

uint64_t parse_hex64(const std::string& s, const std::string& source, const char* field) {
  if (s.size() != 16 || s.find_first_not_of("0123456789abcdef") != std::string::npos)
    corrupt(source, fmt::format("field '{}' is not a 16-digit hex checksum: '{}'", field, s));
  return std::stoull(s, nullptr, 16);
}

json range_json(const BufferRange& r) {
  return json{{"buffer", r.buffer}, {"begin", r.range.begin}, {"end", r.range.end}};
}

// The canonical form that the self-checksum covers: compact dump of the object
// without the checksum field (nlohmann::json keeps keys sorted, so the dump of
// a parsed document is the same text as the dump it was written from).
uint64_t canonical_hash(json j) {
  j.erase("manifest_xxh3");
  std::string text = j.dump();
  return xxh3_64(text.data(), text.size());
}

}  // namespace

std::string Manifest::to_json_text() const {
  json j;
  j["format"] = kFormatName;
  j["format_version"] = format_version;
  j["step"] = step;
  j["created_unix_ms"] = created_unix_ms;
  j["world_size"] = world_size;
  j["block_bytes"] = block_bytes;
  j["model_config"] = model_config;

  json bufs = json::array();
  for (auto& b : layout.buffers())
    bufs.push_back({{"name", b.name}, {"dtype", std::string(dtype_name(b.dtype))}, {"bytes", b.bytes}});
  j["buffers"] = bufs;

  json tensors = json::array();
  for (auto& t : layout.tensors()) {
    // Where the tensor's bytes are: informational (derivable from the
    // segments), so that a reader of the manifest sees each tensor's shards.
    json ranges = json::array();
    for (const SegmentRecord* s : segments_of(t.buffer)) {
      ByteRange part = s->range.intersect(t.range());
      if (!part.empty())
        ranges.push_back({{"file", s->file}, {"begin", part.begin}, {"end", part.end},
                          {"file_offset", s->file_offset + (part.begin - s->range.begin)}});
    }
    tensors.push_back({{"name", t.name},
                       {"dtype", std::string(dtype_name(t.dtype))},
                       {"shape", t.shape},
                       {"buffer", t.buffer},
                       {"offset", t.offset},
                       {"bytes", t.bytes()},
                       {"ranges", ranges}});
  }
  j["tensors"] = tensors;

  json hold = json::array();
  for (auto& rank_ranges : holdings) {
    json rr = json::array();
    for (auto& r : rank_ranges) rr.push_back(range_json(r));
    hold.push_back(rr);
  }
  j["holdings"] = hold;

  json files_j = json::array();
  for (auto& f : files)
    files_j.push_back({{"name", f.name}, {"rank", f.rank}, {"bytes", f.bytes}, {"xxh3", hex64(f.xxh3)}});
  j["files"] = files_j;

  json segs = json::array();
  for (auto& s : segments) {
    json blocks = json::array();
    for (uint64_t h : s.block_xxh3) blocks.push_back(hex64(h));
    segs.push_back({{"file", s.file},
                    {"file_offset", s.file_offset},
                    {"buffer", s.buffer},
                    {"begin", s.range.begin},
                    {"end", s.range.end},
                    {"block_xxh3", blocks}});
  }
  j["segments"] = segs;

  json blobs_j = json::array();
  for (auto& b : blobs)
    blobs_j.push_back({{"name", b.name},
                       {"scope", b.global() ? "global" : "rank"},
                       {"rank", b.rank},
                       {"file", b.file},
                       {"file_offset", b.file_offset},
                       {"bytes", b.bytes},
                       {"xxh3", hex64(b.xxh3)}});
  j["blobs"] = blobs_j;

  try {
    j["manifest_xxh3"] = hex64(canonical_hash(j));
    return j.dump(1) + "\n";
  } catch (const json::exception& e) {
    throw ConfigError(fmt::format("cannot write the checkpoint manifest: {}", e.what()),
                      "the model config and all names must be valid UTF-8 text");
  }
}

Manifest Manifest::parse(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    corrupt(source, fmt::format("not valid JSON ({}; {} bytes, truncated?)", e.what(), text.size()));
  }
  if (!j.is_object()) corrupt(source, "not a JSON object");
  if (!j.contains("format") || j["format"] != kFormatName)
    corrupt(source, fmt::format("not a braid checkpoint manifest (no \"format\": \"{}\")", kFormatName));
  if (!j.contains("manifest_xxh3") || !j["manifest_xxh3"].is_string())
    corrupt(source, "no manifest_xxh3 self-checksum");
  uint64_t stored = parse_hex64(j["manifest_xxh3"].get<std::string>(), source, "manifest_xxh3");
  if (canonical_hash(j) != stored)
    corrupt(source, "the manifest's own checksum does not match its content (edited or damaged)");

  Manifest m;
  try {
    m.format_version = j.at("format_version").get<int>();
    if (m.format_version != kFormatVersion)
      corrupt(source, fmt::format("format version {} is not supported (this braid reads version {})",
                                  m.format_version, kFormatVersion));
    m.step = j.at("step").get<int64_t>();
    m.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    m.world_size = j.at("world_size").get<int>();
    m.block_bytes = j.at("block_bytes").get<uint64_t>();
    m.model_config = j.at("model_config").get<std::string>();
    for (auto& b : j.at("buffers"))
      m.layout.add_buffer(b.at("name").get<std::string>(), parse_dtype(b.at("dtype").get<std::string>()),
                          b.at("bytes").get<uint64_t>());
    for (auto& t : j.at("tensors")) {
      m.layout.add_tensor(t.at("name").get<std::string>(), parse_dtype(t.at("dtype").get<std::string>()),
                          t.at("shape").get<std::vector<int64_t>>(), t.at("buffer").get<std::string>(),
                          t.at("offset").get<uint64_t>());
    }
    for (auto& rr : j.at("holdings")) {
      std::vector<BufferRange> v;
      for (auto& r : rr)
        v.push_back({r.at("buffer").get<std::string>(), {r.at("begin").get<uint64_t>(), r.at("end").get<uint64_t>()}});
      m.holdings.push_back(std::move(v));
    }
    for (auto& f : j.at("files"))
      m.files.push_back({f.at("name").get<std::string>(), f.at("rank").get<int>(), f.at("bytes").get<uint64_t>(),
                         parse_hex64(f.at("xxh3").get<std::string>(), source, "files.xxh3")});
    for (auto& s : j.at("segments")) {
      SegmentRecord r;
      r.file = s.at("file").get<std::string>();
      r.file_offset = s.at("file_offset").get<uint64_t>();
      r.buffer = s.at("buffer").get<std::string>();
      r.range = {s.at("begin").get<uint64_t>(), s.at("end").get<uint64_t>()};
      for (auto& h : s.at("block_xxh3"))
        r.block_xxh3.push_back(parse_hex64(h.get<std::string>(), source, "segments.block_xxh3"));
      m.segments.push_back(std::move(r));
    }
    for (auto& b : j.at("blobs")) {
      BlobRecord r;
      r.name = b.at("name").get<std::string>();
      std::string scope = b.at("scope").get<std::string>();
      r.rank = scope == "global" ? -1 : b.at("rank").get<int>();
      if (scope != "global" && scope != "rank") corrupt(source, "blob scope '" + scope + "' is unknown");
      r.file = b.at("file").get<std::string>();
      r.file_offset = b.at("file_offset").get<uint64_t>();
      r.bytes = b.at("bytes").get<uint64_t>();
      r.xxh3 = parse_hex64(b.at("xxh3").get<std::string>(), source, "blobs.xxh3");
      m.blobs.push_back(std::move(r));
    }
  } catch (const json::exception& e) {
    corrupt(source, fmt::format("malformed field: {}", e.what()));
  } catch (const ConfigError& e) {
    corrupt(source, e.what());
  }
  m.check_consistency(source);
  return m;
}

std::vector<const SegmentRecord*> Manifest::segments_of(const std::string& buffer) const {
  std::vector<const SegmentRecord*> out;
  for (auto& s : segments)
    if (s.buffer == buffer) out.push_back(&s);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->range.begin < b->range.begin; });
  return out;
}

const FileRecord* Manifest::find_file(const std::string& name) const {
  for (auto& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

const BlobRecord* Manifest::find_blob(const std::string& name, int rank) const {
  for (auto& b : blobs)
    if (b.name == name && b.rank == rank) return &b;
  return nullptr;
}

std::vector<BlockRef> Manifest::blocks_overlapping(const SegmentRecord& seg, const ByteRange& range) const {
  std::vector<BlockRef> out;
  ByteRange want = seg.range.intersect(range);
  if (want.empty()) return out;
  size_t first = static_cast<size_t>((want.begin - seg.range.begin) / block_bytes);
  size_t last = static_cast<size_t>((want.end - 1 - seg.range.begin) / block_bytes);
  for (size_t k = first; k <= last; ++k) {
    uint64_t b = seg.range.begin + k * block_bytes;
    uint64_t e = std::min(b + block_bytes, seg.range.end);
    out.push_back({&seg, k, {b, e}, seg.file_offset + k * block_bytes});
  }
  return out;
}

uint64_t Manifest::data_bytes() const {
  uint64_t n = 0;
  for (auto& s : segments) n += s.range.size();
  for (auto& b : blobs) n += b.bytes;
  return n;
}

void Manifest::check_consistency(const std::string& source) const {
  if (step < 0) corrupt(source, fmt::format("negative step {}", step));
  if (world_size < 1) corrupt(source, fmt::format("world size {} is not positive", world_size));
  if (block_bytes == 0) corrupt(source, "block_bytes is 0");
  if (!holdings.empty() && static_cast<int>(holdings.size()) != world_size)
    corrupt(source, fmt::format("holdings list {} ranks, world size is {}", holdings.size(), world_size));
  try {
    layout.validate();
  } catch (const ConfigError& e) {
    corrupt(source, e.what());
  }
  for (size_t i = 0; i < files.size(); ++i) {
    const FileRecord& f = files[i];
    if (f.name.empty() || f.name.find('/') != std::string::npos || f.name.front() == '.')
      corrupt(source, fmt::format("file name '{}' is not a plain file name", f.name));
    for (size_t k = 0; k < i; ++k)
      if (files[k].name == f.name) corrupt(source, fmt::format("file '{}' is listed twice", f.name));
  }
  for (auto& s : segments) {
    const FileRecord* f = find_file(s.file);
    if (!f) corrupt(source, fmt::format("a segment of buffer '{}' names unknown file '{}'", s.buffer, s.file));
    const BufferSpec* b = layout.find_buffer(s.buffer);
    if (!b) corrupt(source, fmt::format("a segment names unknown buffer '{}'", s.buffer));
    if (s.range.empty() || s.range.end > b->bytes)
      corrupt(source, fmt::format("segment {} of buffer '{}' ({} bytes) is empty or out of bounds",
                                  to_string(s.range), s.buffer, b->bytes));
    if (s.file_offset > f->bytes || s.range.size() > f->bytes - s.file_offset)
      corrupt(source, fmt::format("segment {} of buffer '{}' extends past the end of '{}'", to_string(s.range),
                                  s.buffer, s.file));
    uint64_t blocks = (s.range.size() + block_bytes - 1) / block_bytes;
    if (s.block_xxh3.size() != blocks)
      corrupt(source, fmt::format("segment {} of buffer '{}' has {} block checksums, expected {}",
                                  to_string(s.range), s.buffer, s.block_xxh3.size(), blocks));
  }
  for (auto& b : layout.buffers()) {
    uint64_t pos = 0;
    for (const SegmentRecord* s : segments_of(b.name)) {
      if (s->range.begin != pos)
        corrupt(source, fmt::format("buffer '{}': bytes {} are {}", b.name,
                                    to_string({std::min(pos, s->range.begin), std::max(pos, s->range.begin)}),
                                    s->range.begin > pos ? "missing from every file" : "stored twice"));
      pos = s->range.end;
    }
    if (pos != b.bytes)
      corrupt(source, fmt::format("buffer '{}': bytes {} are missing from every file", b.name,
                                  to_string({pos, b.bytes})));
  }
  for (size_t i = 0; i < blobs.size(); ++i) {
    const BlobRecord& b = blobs[i];
    const FileRecord* f = find_file(b.file);
    if (!f) corrupt(source, fmt::format("blob '{}' names unknown file '{}'", b.name, b.file));
    if (b.rank >= world_size || b.rank < -1)
      corrupt(source, fmt::format("blob '{}' belongs to rank {} outside the world of {}", b.name, b.rank, world_size));
    if (b.file_offset > f->bytes || b.bytes > f->bytes - b.file_offset)
      corrupt(source, fmt::format("blob '{}' extends past the end of '{}'", b.name, b.file));
    for (size_t k = 0; k < i; ++k)
      if (blobs[k].name == b.name && blobs[k].rank == b.rank)
        corrupt(source, fmt::format("blob '{}' is listed twice", b.name));
  }
}

}  // namespace braid::ckpt
