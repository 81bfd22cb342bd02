#pragma once
// Asynchronous, sharded, atomically committed checkpoints of flat buffers.
//
// At a step boundary the trainer calls save(): the bytes this rank must write
// are copied into reusable host memory (the snapshot, laid out exactly as the
// rank's shard file) and save() returns; that copy is the only part that
// blocks training. A background writer thread then writes the file, fsyncs
// it, and the ranks commit through the rendezvous store (never through the
// collective communicator, whose calls must be issued in the same order on
// every rank): each rank publishes its file's checksums, rank 0 writes the
// manifest, fsyncs, renames the temporary directory to step-N and moves
// `latest` (see checkpoint_dir.hpp and docs/checkpoint-format.md).
//
// Cost per save on one rank: one memcpy of its share of the state (blocking;
// replicated state is split among its holders, so each of W data-parallel
// ranks copies 1/W of it), then in the background one xxh3 pass and one
// sequential write + fsync of the same bytes, plus ~3 store round trips.
//
//   ckpt::Checkpointer ck(opts, layout, {{"params", {0, n}, params_ptr}, ...}, rank, world, store);
//   ...
//   if (schedule.due(step)) ck.save({step, config_toml, {{"data", pos}}, {{"rng", rng_bytes}}});
//   ...
//   ck.save_now({...});   // on SIGTERM: blocks until committed
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/crash_point.hpp"
#include "ckpt/manifest.hpp"
#include "ckpt/state_layout.hpp"
#include "net/store.hpp"

namespace braid {
class Config;
}

namespace braid::ckpt {

// What save() does when the previous save is still being written.
enum class BusyPolicy {
  // Skip this save (counted in stats().skipped_busy). With several ranks the
  // first rank to reach the save decides for all of them (through the store),
  // so either every rank saves that step or none does; a rank that must save
  // while its own writer is still busy waits for it.
  Skip,
  // Block until the previous save is written, then save (counted in
  // stats().waited_busy, the wait included in the blocked time).
  Wait,
};
BusyPolicy parse_busy_policy(const std::string& text);  // "skip" | "wait"; ConfigError otherwise
std::string_view busy_policy_name(BusyPolicy p);

struct CheckpointOptions {
  std::string dir;  // must be one directory that every rank sees (a shared filesystem)
  int keep_last = 3;  // committed checkpoints kept (0: keep all)
  BusyPolicy if_busy = BusyPolicy::Wait;
  uint64_t block_bytes = kDefaultBlockBytes;  // checksum granularity
  double commit_timeout_s = 600;  // how long ranks wait for each other during a commit
  bool durable = true;  // fsync files and directories (false only for tests on throwaway data)
  std::string store_prefix = "ckpt/";
  // Test hook run on the writer thread before it writes a save.
  std::function<void(int64_t step)> before_write;

  // Reads [checkpoint] keys: dir, keep_last, if_busy, block_size, commit_timeout_s.
  static CheckpointOptions from_config(Config& c, const std::string& section = "checkpoint");
};

// A byte range of a buffer that this rank holds, and where its bytes are.
struct HeldBuffer {
  std::string buffer;
  ByteRange range;
  // Address of byte range.begin of the buffer, in host memory.
  const void* data = nullptr;
  // Instead of `data`, for state outside host memory (a GPU): copies bytes
  // [begin, begin + len) of the buffer (absolute offsets) into dst. Called on
  // the thread that calls save().
  std::function<void(uint64_t begin, uint64_t len, void* dst)> copy;
};

struct SaveRequest {
  int64_t step = 0;
  std::string model_config;  // text stored in the manifest (the model's TOML)
  // Identical on every rank (data position, ...): written once, by rank 0.
  std::map<std::string, std::string> global_blobs;
  // This rank's own state (RNG state, ...): every rank writes its own.
  std::map<std::string, std::string> rank_blobs;
};

enum class SaveOutcome { None, Committed, Failed };

// Counters and timings for the trainer's metrics.
struct CheckpointStats {
  int64_t requested = 0;      // save() calls
  int64_t started = 0;        // snapshots taken
  int64_t committed = 0;      // saves known committed (on every rank after the commit)
  int64_t failed = 0;
  int64_t skipped_busy = 0;   // BusyPolicy::Skip
  int64_t waited_busy = 0;    // saves that had to wait for the previous one
  bool in_flight = false;
  double last_blocked_s = 0;  // time save() kept the caller: wait + snapshot
  double max_blocked_s = 0;
  double total_blocked_s = 0;
  double last_wait_s = 0;
  double last_snapshot_s = 0;
  double last_write_s = 0;   // background: shard file written and fsynced
  double last_commit_s = 0;  // background: whole save, through the commit
  uint64_t last_shard_bytes = 0;  // bytes of this rank's last shard file
  int64_t last_committed_step = -1;
  std::string last_error;
};

class Checkpointer {
 public:
  // Exchanges every rank's held ranges through `store` (all ranks construct
  // their Checkpointer together; world 1 needs no store) and plans which bytes
  // this rank writes. `held` pointers must stay valid for its lifetime.
  // Throws ConfigError on an inconsistent layout or holdings.
  Checkpointer(CheckpointOptions options, StateLayout layout, std::vector<HeldBuffer> held, int rank,
               int world, std::shared_ptr<net::Store> store = nullptr);
  // Waits for the save in flight, so a normal exit commits it.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Snapshots and hands the save to the writer thread. Every rank must call it
  // with the same steps, in increasing order. Returns false if the save was
  // skipped (BusyPolicy::Skip). Throws ConfigError on a non-increasing step.
  bool save(const SaveRequest& request);
  // save() then wait(); throws IoError naming the save's failure. Ignores the
  // busy policy (a final save, e.g. on SIGTERM, is never skipped), so with
  // BusyPolicy::Skip and several ranks every rank must use save_now() for
  // that step.
  void save_now(const SaveRequest& request);
  // Waits until no save is in flight; returns the outcome of the last save.
  SaveOutcome wait();

  CheckpointStats stats() const;
  // The bytes this rank writes (its share of the plan).
  const std::vector<BufferRange>& write_ranges() const { return plan_[static_cast<size_t>(rank_)]; }
  const std::vector<std::vector<BufferRange>>& plan() const { return plan_; }
  int rank() const { return rank_; }
  int world() const { return world_; }
  const CheckpointOptions& options() const { return opts_; }

 private:
  struct Job;
  struct ShardResult;
  bool save_impl(const SaveRequest& request, bool force);
  void writer_loop();
  void run_job(Job& job);
  std::string key(int64_t step, const std::string& what) const;

  CheckpointOptions opts_;
  StateLayout layout_;
  std::vector<HeldBuffer> held_;
  std::vector<size_t> held_sorted_;  // non-empty held_ entries by (buffer, begin)
  int rank_;
  int world_;
  std::shared_ptr<net::Store> store_;
  CrashPlan crash_;
  std::vector<std::vector<BufferRange>> held_by_rank_;
  std::vector<std::vector<BufferRange>> plan_;
  std::vector<uint64_t> segment_offsets_;  // file offset of each write range
  uint64_t segments_end_ = 0;              // where blobs start in the file

  // Snapshot memory (the shard file image), reused across saves.
  struct AlignedFree {
    void operator()(void* p) const;
  };
  static std::unique_ptr<std::byte, AlignedFree> allocate_image(uint64_t& bytes);  // rounds bytes up
  std::unique_ptr<std::byte, AlignedFree> image_;
  uint64_t image_capacity_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<Job> job_;  // the save in flight (owned by the writer once handed over)
  bool busy_ = false;
  bool stop_ = false;
  int64_t last_step_ = -1;
  SaveOutcome last_outcome_ = SaveOutcome::None;
  std::string last_error_;
  CheckpointStats stats_;
  std::thread writer_;
};

}  // namespace braid::ckpt
