#include "ckpt/checkpointer.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ckpt/checkpoint_dir.hpp"
#include "ckpt/file_io.hpp"
#include "ckpt/write_plan.hpp"
#include "core/bytes.hpp"
#include "core/checksum.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"

namespace braid::ckpt {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kBlobAlign = 64;
// Bytes per write(2): small enough that the piece just hashed (twice: block and
// whole-file checksums) is still in the L2 cache when the kernel copies it to
// the page cache, large enough to keep syscalls rare (1024 per 256 MiB).
constexpr uint64_t kWriteChunk = 256ull << 10;
// Writeback is started every this many bytes.
constexpr uint64_t kWritebackChunk = 16ull << 20;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

json ranges_json(const std::vector<BufferRange>& v) {
  json a = json::array();
  for (auto& r : v) a.push_back({{"buffer", r.buffer}, {"begin", r.range.begin}, {"end", r.range.end}});
  return a;
}

std::vector<BufferRange> ranges_from_json(const std::string& text, int rank) {
  std::vector<BufferRange> out;
  try {
    for (auto& r : json::parse(text))
      out.push_back({r.at("buffer").get<std::string>(), {r.at("begin").get<uint64_t>(), r.at("end").get<uint64_t>()}});
  } catch (const json::exception& e) {
    throw ProtocolError(fmt::format("rank {} published malformed checkpoint holdings: {}", rank, e.what()));
  }
  return out;
}

// Per-block xxh3 of the segments of a shard file, fed with the file's bytes in
// order: one pass over the image computes block and whole-file checksums
// while the data is hot in the cache.
class ShardHasher {
 public:
  explicit ShardHasher(uint64_t block_bytes) : block_(block_bytes) {}
  void add_segment(uint64_t file_offset, uint64_t size) { segs_.push_back({file_offset, size, {}}); }
  // Bytes [off, off + len) of the file, in increasing order of off.
  void feed(uint64_t off, const std::byte* p, uint64_t len) {
    for (; next_ < segs_.size(); ++next_) {
      Seg& s = segs_[next_];
      uint64_t a = std::max(off, s.file_offset), b = std::min(off + len, s.file_offset + s.size);
      if (a >= b) {
        if (s.file_offset >= off + len) return;  // starts later
        continue;  // ended earlier (fully hashed)
      }
      while (a < b) {
        uint64_t n = std::min(b - a, block_ - fill_);
        cur_.update(p + (a - off), n);
        fill_ += n;
        a += n;
        if (fill_ == block_ || a == s.file_offset + s.size) {
          s.hashes.push_back(cur_.digest());
          cur_.reset();
          fill_ = 0;
        }
      }
      if (b < s.file_offset + s.size) return;  // the segment continues in the next piece
    }
  }
  std::vector<uint64_t> block_hashes(size_t i) const { return segs_[i].hashes; }

 private:
  struct Seg {
    uint64_t file_offset, size;
    std::vector<uint64_t> hashes;
  };
  uint64_t block_;
  std::vector<Seg> segs_;
  size_t next_ = 0;
  Xxh3Stream cur_;
  uint64_t fill_ = 0;
};

}  // namespace

BusyPolicy parse_busy_policy(const std::string& text) {
  if (text == "skip") return BusyPolicy::Skip;
  if (text == "wait") return BusyPolicy::Wait;
  throw ConfigError(fmt::format("checkpoint busy policy '{}' is unknown", text),
                    "use 'skip' (drop a save while the previous one is still being written) or 'wait'");
}

std::string_view busy_policy_name(BusyPolicy p) { return p == BusyPolicy::Skip ? "skip" : "wait"; }

CheckpointOptions CheckpointOptions::from_config(Config& c, const std::string& section) {
  CheckpointOptions o;
  const std::string s = section + ".";
  o.dir = c.get_string(s + "dir", "");
  o.keep_last = static_cast<int>(c.get_int(s + "keep_last", o.keep_last, 0, 1'000'000));
  o.if_busy = parse_busy_policy(c.get_choice(s + "if_busy", "wait", {"wait", "skip"}));
  o.block_bytes = parse_bytes(c.get_string(s + "block_size", "4M"));
  if (o.block_bytes == 0) throw ConfigError(s + "block_size must be positive");
  o.commit_timeout_s = c.get_double(s + "commit_timeout_s", o.commit_timeout_s, 0.001, 1e7);
  return o;
}

// One save handed from save() to the writer thread.
struct Checkpointer::Job {
  int64_t step = 0;
  std::string model_config;
  uint64_t file_bytes = 0;
  std::vector<BlobRecord> blobs;  // offsets into the image
};

// What a rank wrote, as published to rank 0.
struct Checkpointer::ShardResult {
  FileRecord file;
  std::vector<SegmentRecord> segments;
  std::vector<BlobRecord> blobs;

  json to_json() const {
    json segs = json::array();
    for (auto& s : segments) {
      json blocks = json::array();
      for (uint64_t h : s.block_xxh3) blocks.push_back(hex64(h));
      segs.push_back({{"buffer", s.buffer}, {"begin", s.range.begin}, {"end", s.range.end},
                      {"file_offset", s.file_offset}, {"blocks", blocks}});
    }
    json bl = json::array();
    for (auto& b : blobs)
      bl.push_back({{"name", b.name}, {"rank", b.rank}, {"file_offset", b.file_offset}, {"bytes", b.bytes},
                    {"xxh3", hex64(b.xxh3)}});
    return {{"file", file.name}, {"bytes", file.bytes}, {"xxh3", hex64(file.xxh3)}, {"segments", segs}, {"blobs", bl}};
  }
  static ShardResult from_json(const json& j, int rank) {
    ShardResult r;
    auto h = [](const json& v) { return std::stoull(v.get<std::string>(), nullptr, 16); };
    r.file = {j.at("file").get<std::string>(), rank, j.at("bytes").get<uint64_t>(), h(j.at("xxh3"))};
    for (auto& s : j.at("segments")) {
      SegmentRecord seg{r.file.name, s.at("file_offset").get<uint64_t>(), s.at("buffer").get<std::string>(),
                        {s.at("begin").get<uint64_t>(), s.at("end").get<uint64_t>()}, {}};
      for (auto& b : s.at("blocks")) seg.block_xxh3.push_back(h(b));
      r.segments.push_back(std::move(seg));
    }
    for (auto& b : j.at("blobs"))
      r.blobs.push_back({b.at("name").get<std::string>(), b.at("rank").get<int>(), r.file.name,
                         b.at("file_offset").get<uint64_t>(), b.at("bytes").get<uint64_t>(), h(b.at("xxh3"))});
    return r;
  }
};

void Checkpointer::AlignedFree::operator()(void* p) const { std::free(p); }

std::unique_ptr<std::byte, Checkpointer::AlignedFree> Checkpointer::allocate_image(uint64_t& bytes) {
  // Huge pages where the kernel allows them (THP "madvise" mode): fewer TLB
  // misses in the snapshot copy, the one part of a save that blocks training.
  constexpr uint64_t kHuge = 2ull << 20;
  const uint64_t align = bytes >= kHuge ? kHuge : kPage;
  bytes = align_up(bytes, align);
  std::unique_ptr<std::byte, AlignedFree> p(static_cast<std::byte*>(std::aligned_alloc(align, bytes)));
  if (!p) throw std::bad_alloc();
  if (align == kHuge) ::madvise(p.get(), bytes, MADV_HUGEPAGE);
  // Touching every page now moves the page faults out of the first snapshot.
  std::memset(p.get(), 0, bytes);
  return p;
}

Checkpointer::Checkpointer(CheckpointOptions options, StateLayout layout, std::vector<HeldBuffer> held, int rank,
                           int world, std::shared_ptr<net::Store> store)
    : opts_(std::move(options)),
      layout_(std::move(layout)),
      held_(std::move(held)),
      rank_(rank),
      world_(world),
      store_(std::move(store)) {
  if (world_ < 1 || rank_ < 0 || rank_ >= world_)
    throw ConfigError(fmt::format("checkpoint rank {} is outside a world of {}", rank_, world_));
  if (world_ > 1 && !store_)
    throw ConfigError("a checkpoint written by several ranks needs the rendezvous store",
                      "pass the job's net::Store (TcpStore, or MemStore for ranks that are threads)");
  if (opts_.dir.empty())
    throw ConfigError("no checkpoint directory given", "set checkpoint.dir (a directory every rank can see)");
  if (opts_.keep_last < 0) throw ConfigError("checkpoint keep_last must be 0 (keep all) or positive");
  if (opts_.block_bytes == 0) throw ConfigError("checkpoint block size must be positive");
  if (!(opts_.commit_timeout_s > 0)) throw ConfigError("checkpoint commit timeout must be positive");
  layout_.validate();

  std::vector<BufferRange> mine;
  for (size_t i = 0; i < held_.size(); ++i) {
    const HeldBuffer& h = held_[i];
    const BufferSpec& b = layout_.buffer(h.buffer);
    if (h.range.end < h.range.begin || h.range.end > b.bytes)
      throw ConfigError(fmt::format("rank {} holds bytes {} of buffer '{}', which has {} bytes", rank_,
                                    to_string(h.range), h.buffer, b.bytes));
    if (!h.range.empty() && !h.data && !h.copy)
      throw ConfigError(fmt::format("held range {} of buffer '{}' has neither a data pointer nor a copy function",
                                    to_string(h.range), h.buffer));
    if (!h.range.empty()) held_sorted_.push_back(i);
    mine.push_back({h.buffer, h.range});
  }
  // Sorted by (buffer, begin), a rank's ranges overlap only if two
  // neighbours do; without overlaps their ends are sorted too, which the
  // snapshot's lookup uses. (A tp rank declares thousands of ranges: no
  // pairwise scans.)
  std::sort(held_sorted_.begin(), held_sorted_.end(), [&](size_t a, size_t b) {
    const HeldBuffer &x = held_[a], &y = held_[b];
    return x.buffer != y.buffer ? x.buffer < y.buffer : x.range.begin < y.range.begin;
  });
  for (size_t i = 1; i < held_sorted_.size(); ++i) {
    const HeldBuffer &x = held_[held_sorted_[i - 1]], &y = held_[held_sorted_[i]];
    if (x.buffer == y.buffer && !x.range.intersect(y.range).empty())
      throw ConfigError(fmt::format("rank {} declares bytes of buffer '{}' twice ({} and {})", rank_, y.buffer,
                                    to_string(x.range), to_string(y.range)));
  }

  held_by_rank_.assign(static_cast<size_t>(world_), {});
  held_by_rank_[static_cast<size_t>(rank_)] = mine;
  if (world_ > 1) {
    store_->set(opts_.store_prefix + "held/" + std::to_string(rank_), ranges_json(mine).dump());
    Deadline d = Deadline::in_seconds(opts_.commit_timeout_s);
    for (int r = 0; r < world_; ++r)
      if (r != rank_)
        held_by_rank_[static_cast<size_t>(r)] =
            ranges_from_json(store_->get(opts_.store_prefix + "held/" + std::to_string(r), d), r);
  }
  plan_ = plan_writes(layout_, held_by_rank_);

  uint64_t pos = 0;
  for (auto& w : write_ranges()) {
    pos = align_up(pos, kPage);
    segment_offsets_.push_back(pos);
    pos += w.range.size();
  }
  segments_end_ = align_up(pos, kPage);
  // Room for typical blobs too.
  image_capacity_ = align_up(segments_end_ + (1ull << 20), kPage);
  image_ = allocate_image(image_capacity_);

  crash_ = CrashPlan::from_env();
  if (crash_.applies_to(rank_))
    log::warn("checkpoint TEST crash point active ({}): this process will SIGKILL itself during a save",
              crash_.describe());

  if (rank_ == 0) {
    std::error_code ec;
    fs::create_directories(opts_.dir, ec);
    if (ec)
      throw IoError(fmt::format("cannot create checkpoint directory {}: {}", opts_.dir, ec.message()),
                    "check the path and its permissions");
    // No save of this job is in flight yet, so leftovers come from killed saves.
    for (auto& p : CheckpointDir(opts_.dir).leftovers()) {
      std::string why;
      if (remove_tree(p, &why)) log::info("removed {} left by an interrupted checkpoint save", p.string());
      else log::warn("cannot remove {} left by an interrupted save: {}", p.string(), why);
    }
  }
  writer_ = std::thread([this] { writer_loop(); });
}

Checkpointer::~Checkpointer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

std::string Checkpointer::key(int64_t step, const std::string& what) const {
  return fmt::format("{}s{}/{}", opts_.store_prefix, step, what);
}

bool Checkpointer::save(const SaveRequest& request) { return save_impl(request, false); }

void Checkpointer::save_now(const SaveRequest& request) {
  save_impl(request, true);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !busy_; });
  if (last_outcome_ != SaveOutcome::Committed)
    throw IoError(fmt::format("checkpoint of step {} failed: {}", request.step, last_error_),
                  "see the log of every rank; the previous checkpoint is still valid");
}

SaveOutcome Checkpointer::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !busy_; });
  return last_outcome_;
}

CheckpointStats Checkpointer::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool Checkpointer::save_impl(const SaveRequest& req, bool force) {
  Stopwatch blocked;
  bool busy_now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.requested;
    if (req.step <= last_step_)
      throw ConfigError(fmt::format("checkpoint step {} is not after the previous save's step {}", req.step, last_step_),
                        "save steps must increase; every rank must save the same steps");
    if (req.step < 0) throw ConfigError(fmt::format("checkpoint step {} is negative", req.step));
    last_step_ = req.step;
    busy_now = busy_;
  }

  bool go = true;
  if (!force && opts_.if_busy == BusyPolicy::Skip) {
    if (world_ > 1) {
      // The first rank to arrive decides for all, so that no rank writes a
      // shard of a save that the others skip.
      std::string decision;
      if (store_->add(key(req.step, "arrive"), 1) == 1) {
        decision = busy_now ? "skip" : "go";
        store_->set(key(req.step, "decision"), decision);
      } else {
        decision = store_->get(key(req.step, "decision"), Deadline::in_seconds(opts_.commit_timeout_s));
      }
      if (store_->add(key(req.step, "decided"), 1) == world_)
        for (const char* k : {"arrive", "decision", "decided"}) store_->erase(key(req.step, k));
      go = decision == "go";
    } else {
      go = !busy_now;
    }
  }

  std::unique_lock<std::mutex> lock(mu_);
  if (!go) {
    ++stats_.skipped_busy;
    double b = blocked.seconds();
    stats_.last_blocked_s = b;
    stats_.total_blocked_s += b;
    stats_.max_blocked_s = std::max(stats_.max_blocked_s, b);
    log::debug("checkpoint of step {} skipped: the previous save is still being written", req.step);
    return false;
  }
  double wait_s = 0;
  if (busy_) {
    ++stats_.waited_busy;
    Stopwatch w;
    cv_.wait(lock, [&] { return !busy_; });
    wait_s = w.seconds();
  }
  busy_ = true;
  stats_.in_flight = true;
  lock.unlock();

  // The writer is idle: the image is ours until the job is handed over.
  Stopwatch snap;
  auto job = std::make_unique<Job>();
  try {
    job->step = req.step;
    job->model_config = req.model_config;
    uint64_t pos = segments_end_;
    auto place = [&](const std::string& name, int blob_rank, const std::string& bytes) {
      pos = align_up(pos, kBlobAlign);
      job->blobs.push_back({name, blob_rank, shard_file_name(rank_), pos, bytes.size(), 0});
      pos += bytes.size();
    };
    if (rank_ == 0)
      for (auto& [name, bytes] : req.global_blobs) place(name, -1, bytes);
    for (auto& [name, bytes] : req.rank_blobs) place(name, rank_, bytes);
    job->file_bytes = pos;
    if (pos > image_capacity_) {
      uint64_t cap = align_up(pos + (pos >> 3), kPage);
      image_.reset();
      image_ = allocate_image(cap);
      image_capacity_ = cap;
    }
    std::byte* img = image_.get();
    const auto& writes = write_ranges();
    for (size_t i = 0; i < writes.size(); ++i) {
      const BufferRange& w = writes[i];
      std::byte* dst = img + segment_offsets_[i];
      // The first held range of w's buffer that ends after w begins, then on
      // while they start before w ends.
      auto it = std::partition_point(held_sorted_.begin(), held_sorted_.end(), [&](size_t k) {
        const HeldBuffer& h = held_[k];
        return h.buffer != w.buffer ? h.buffer < w.buffer : h.range.end <= w.range.begin;
      });
      for (; it != held_sorted_.end(); ++it) {
        const HeldBuffer& h = held_[*it];
        if (h.buffer != w.buffer || h.range.begin >= w.range.end) break;
        ByteRange part = h.range.intersect(w.range);
        if (part.empty()) continue;
        std::byte* to = dst + (part.begin - w.range.begin);
        if (h.copy) h.copy(part.begin, part.size(), to);
        else std::memcpy(to, static_cast<const std::byte*>(h.data) + (part.begin - h.range.begin), part.size());
      }
    }
    // Blobs change size between saves: clear the blob area so the file holds
    // no stale bytes from an earlier save in its padding.
    std::memset(img + segments_end_, 0, job->file_bytes - segments_end_);
    size_t bi = 0;
    auto copy_blob = [&](const std::string& bytes) {
      std::memcpy(img + job->blobs[bi].file_offset, bytes.data(), bytes.size());
      ++bi;
    };
    if (rank_ == 0)
      for (auto& [name, bytes] : req.global_blobs) copy_blob(bytes);
    for (auto& [name, bytes] : req.rank_blobs) copy_blob(bytes);
  } catch (...) {
    std::lock_guard<std::mutex> l(mu_);
    busy_ = false;
    stats_.in_flight = false;
    cv_.notify_all();
    throw;
  }
  double snap_s = snap.seconds();

  lock.lock();
  job_ = std::move(job);
  ++stats_.started;
  double b = blocked.seconds();
  stats_.last_wait_s = wait_s;
  stats_.last_snapshot_s = snap_s;
  stats_.last_blocked_s = b;
  stats_.total_blocked_s += b;
  stats_.max_blocked_s = std::max(stats_.max_blocked_s, b);
  lock.unlock();
  cv_.notify_all();
  return true;
}

void Checkpointer::writer_loop() {
  set_thread_name("braid-ckpt-w");
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || job_; });
    if (job_) {
      std::unique_ptr<Job> job = std::move(job_);
      lock.unlock();
      run_job(*job);
      lock.lock();
      busy_ = false;
      stats_.in_flight = false;
      cv_.notify_all();
      continue;
    }
    if (stop_) return;
  }
}

void Checkpointer::run_job(Job& job) {
  Stopwatch total;
  const fs::path root = opts_.dir;
  const int64_t step = job.step;
  const auto deadline = [&] { return Deadline::in_seconds(opts_.commit_timeout_s); };
  std::string error;
  bool committed = false;
  bool shard_published = false, tmp_published = false;
  double write_s = 0;
  fs::path tmp_dir;

  try {
    if (opts_.before_write) opts_.before_write(step);

    // 1. The temporary directory, named by rank 0.
    std::string tmp_name;
    if (rank_ == 0) {
      tmp_name = std::string(kTempPrefix) + step_dir_name(step) + "-" + random_token();
      tmp_dir = root / tmp_name;
      std::error_code ec;
      fs::create_directories(tmp_dir, ec);
      if (ec) throw IoError(fmt::format("cannot create {}: {}", tmp_dir.string(), ec.message()));
      if (world_ > 1) {
        store_->set(key(step, "tmp"), tmp_name);
        tmp_published = true;
      }
    } else {
      tmp_name = store_->get(key(step, "tmp"), deadline());
      if (tmp_name.empty()) throw IoError(fmt::format("rank 0 could not start the save of step {}", step));
      tmp_dir = root / tmp_name;
    }

    // 2. This rank's shard file: the snapshot image, verbatim, hashed on the
    // way out (see ShardHasher) with writeback started behind the writes.
    ShardResult shard;
    shard.file = {shard_file_name(rank_), rank_, job.file_bytes, 0};
    const std::byte* img = image_.get();
    const auto& writes = write_ranges();
    ShardHasher hasher(opts_.block_bytes);
    for (size_t i = 0; i < writes.size(); ++i) hasher.add_segment(segment_offsets_[i], writes[i].range.size());
    fs::path file = tmp_dir / shard.file.name;
    {
      UniqueFd fd = open_file(file, O_WRONLY | O_CREAT | O_TRUNC);
      Xxh3Stream whole;
      bool halfway_checked = false;
      uint64_t flushed = 0;
      for (uint64_t off = 0; off < job.file_bytes; off += kWriteChunk) {
        size_t n = static_cast<size_t>(std::min(kWriteChunk, job.file_bytes - off));
        hasher.feed(off, img + off, n);
        whole.update(img + off, n);
        write_all(fd.get(), img + off, n, file);
        if (opts_.durable && off + n - flushed >= kWritebackChunk) {
          // Start writing these pages to disk now (asynchronously), so the disk
          // works while the next pieces are hashed and the final fsync has
          // little left to wait for.
          ::sync_file_range(fd.get(), static_cast<off_t>(flushed), static_cast<off_t>(off + n - flushed),
                            SYNC_FILE_RANGE_WRITE);
          flushed = off + n;
        }
        if (!halfway_checked && off + n >= job.file_bytes / 2) {
          halfway_checked = true;
          crash_.maybe_crash(CrashPoint::DuringShardWrite, rank_);
        }
      }
      if (job.file_bytes == 0) crash_.maybe_crash(CrashPoint::DuringShardWrite, rank_);
      shard.file.xxh3 = whole.digest();
      double written_s = total.seconds();
      if (opts_.durable) fsync_file(fd.get(), file);
      close_file(fd, file);
      log::debug("checkpoint step {}: shard of {} written in {:.3f} s, fsync {:.3f} s", step,
                 human_bytes(static_cast<double>(job.file_bytes)), written_s, total.seconds() - written_s);
    }
    for (size_t i = 0; i < writes.size(); ++i)
      shard.segments.push_back({shard.file.name, segment_offsets_[i], writes[i].buffer, writes[i].range,
                                hasher.block_hashes(i)});
    for (auto b : job.blobs) {
      b.xxh3 = xxh3_64(img + b.file_offset, b.bytes);
      shard.blobs.push_back(b);
    }
    write_s = total.seconds();
    crash_.maybe_crash(CrashPoint::AfterShardWrite, rank_);

    if (rank_ != 0) {
      // 3a. Hand the shard to rank 0 and learn the outcome.
      store_->set(key(step, "shard/" + std::to_string(rank_)), shard.to_json().dump());
      shard_published = true;
      std::string outcome = store_->get(key(step, "outcome"), deadline());
      if (outcome != "ok") throw IoError(outcome);
      committed = true;
    } else {
      // 3b. Rank 0 gathers every shard, writes the manifest and commits.
      Manifest m;
      m.step = step;
      m.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      m.world_size = world_;
      m.block_bytes = opts_.block_bytes;
      m.model_config = job.model_config;
      m.layout = layout_;
      m.holdings = held_by_rank_;
      std::vector<ShardResult> shards{shard};
      for (int r = 1; r < world_; ++r) {
        std::string text;
        try {
          text = store_->get(key(step, "shard/" + std::to_string(r)), deadline());
        } catch (const Timeout&) {
          throw Timeout(fmt::format("rank {} did not hand in its shard of step {} within {} s", r, step,
                                    opts_.commit_timeout_s),
                        "a rank died, or the ranks called save() at different steps");
        }
        json j;
        try {
          j = json::parse(text);
          if (j.contains("error"))
            throw IoError(fmt::format("rank {} could not write its shard of step {}: {}", r, step,
                                      j["error"].get<std::string>()));
          shards.push_back(ShardResult::from_json(j, r));
        } catch (const json::exception& e) {
          throw ProtocolError(fmt::format("rank {} handed in a malformed shard description: {}", r, e.what()));
        }
      }
      for (auto& s : shards) {
        // Every shard must be visible here: catches a directory that is not
        // shared between the ranks' hosts before anything claims to be complete.
        std::error_code ec;
        auto size = fs::file_size(tmp_dir / s.file.name, ec);
        if (ec || size != s.file.bytes)
          throw IoError(fmt::format("rank {}'s shard {} is {} from rank 0", s.file.rank, (tmp_dir / s.file.name).string(),
                                    ec ? "not visible" : fmt::format("{} bytes instead of {}", size, s.file.bytes)),
                        "the checkpoint directory must be on a filesystem that every rank shares");
        m.files.push_back(s.file);
        for (auto& seg : s.segments) m.segments.push_back(seg);
        for (auto& b : s.blobs) m.blobs.push_back(b);
      }
      m.check_consistency("the manifest being written");

      crash_.maybe_crash(CrashPoint::BeforeManifest, rank_);
      {
        fs::path mp = tmp_dir / kManifestFile;
        std::string text = m.to_json_text();
        UniqueFd fd = open_file(mp, O_WRONLY | O_CREAT | O_TRUNC);
        write_all(fd.get(), text.data(), text.size(), mp);
        if (opts_.durable) fsync_file(fd.get(), mp);
        close_file(fd, mp);
      }
      if (opts_.durable) fsync_dir(tmp_dir);

      crash_.maybe_crash(CrashPoint::BeforeRename, rank_);
      CheckpointDir cdir(root);
      fs::path final_dir = cdir.step_path(step);
      fs::path trash;
      std::error_code ec;
      if (fs::exists(final_dir, ec)) {
        // Saving a step again (after a fallback): move the old one aside first,
        // rename(2) cannot replace a non-empty directory.
        trash = root / (std::string(kTrashPrefix) + step_dir_name(step) + "-" + random_token());
        fs::rename(final_dir, trash, ec);
        if (ec) throw IoError(fmt::format("cannot move the old {} aside: {}", final_dir.string(), ec.message()));
        log::warn("replacing existing checkpoint {}", final_dir.string());
      }
      fs::rename(tmp_dir, final_dir, ec);
      if (ec) throw IoError(fmt::format("cannot rename {} to {}: {}", tmp_dir.string(), final_dir.string(), ec.message()));
      tmp_dir.clear();
      if (opts_.durable) fsync_dir(root);

      crash_.maybe_crash(CrashPoint::BeforeLatest, rank_);
      cdir.set_latest(step, opts_.durable);
      committed = true;
      if (world_ > 1) store_->set(key(step, "outcome"), "ok");
      if (!trash.empty()) remove_tree(trash);

      // Keep the newest keep_last committed checkpoints.
      std::vector<StepDir> older;
      for (auto& d : cdir.list()) {
        if (d.step <= step) older.push_back(d);
        else
          log::warn("{} is newer than the step just committed ({}): loaders ignore it; it is left from an earlier run",
                    d.path.string(), step);
      }
      if (opts_.keep_last > 0 && older.size() > static_cast<size_t>(opts_.keep_last))
        for (size_t i = 0; i + static_cast<size_t>(opts_.keep_last) < older.size(); ++i) {
          std::string why;
          if (!remove_tree(older[i].path, &why)) log::warn("cannot remove old checkpoint {}: {}", older[i].path.string(), why);
        }
      log::info("checkpoint {} committed: {} on {} rank(s), {:.2f} s after the snapshot",
                final_dir.string(), human_bytes(static_cast<double>(m.data_bytes())), world_, total.seconds());
    }
  } catch (const std::exception& e) {
    error = e.what();
    if (auto* be = dynamic_cast<const Error*>(&e); be && !be->hint().empty()) error += " (" + be->hint() + ")";
    try {
      if (world_ > 1) {
        if (rank_ == 0) {
          if (!tmp_published) store_->set(key(step, "tmp"), "");
          if (!committed) store_->set(key(step, "outcome"), fmt::format("rank 0 could not commit step {}: {}", step, error));
        } else if (!shard_published) {
          store_->set(key(step, "shard/" + std::to_string(rank_)), json{{"error", error}}.dump());
        }
      }
    } catch (const std::exception& e2) {
      log::warn("cannot report the failed checkpoint save to the other ranks: {}", e2.what());
    }
    if (rank_ == 0 && !tmp_dir.empty()) remove_tree(tmp_dir);
  }

  if (world_ > 1) {
    try {
      // The last rank to finish clears this save's keys from the store.
      if (store_->add(key(step, "ack"), 1) == world_) {
        for (const char* k : {"tmp", "outcome", "ack"}) store_->erase(key(step, k));
        for (int r = 1; r < world_; ++r) store_->erase(key(step, "shard/" + std::to_string(r)));
      }
    } catch (const std::exception& e) {
      log::debug("cannot clear the store keys of checkpoint step {}: {}", step, e.what());
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  stats_.last_write_s = write_s;
  stats_.last_commit_s = total.seconds();
  stats_.last_shard_bytes = job.file_bytes;
  if (committed && error.empty()) {
    ++stats_.committed;
    stats_.last_committed_step = step;
    last_outcome_ = SaveOutcome::Committed;
  } else {
    if (committed) {  // committed, but something after the commit point failed (pruning, store)
      ++stats_.committed;
      stats_.last_committed_step = step;
      last_outcome_ = SaveOutcome::Committed;
      log::warn("checkpoint step {} committed, but: {}", step, error);
      return;
    }
    ++stats_.failed;
    stats_.last_error = error;
    last_error_ = error;
    last_outcome_ = SaveOutcome::Failed;
    log::error("checkpoint of step {} failed: {}", step, error);
  }
}

}  // namespace braid::ckpt
