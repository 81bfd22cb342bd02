#pragma once
// The training state of one rank of the mesh engine (PipelineTrainer: tensor
// and pipeline parallelism) in the terms checkpoints use: byte ranges of the
// FULL model's params / adam_m / adam_v (the layout TrainState uses, so a
// checkpoint written under tp/pp loads into plain data parallel or ZeRO and
// the other way round, at any world size), plus the same blobs.
//
// Where a local element lives in the full layout (TensorParallelGpt's
// ShardedSlot): a replicated parameter is one contiguous range; a
// column-parallel slice (rows of qkv, fc) is one contiguous range per piece;
// a row-parallel slice (columns of the output projections) is one piece per
// row. Ranges that follow each other both locally and in the full layout are
// merged, so tp = pp = 1 holds each buffer as one range.
//
// Replicated parameters (LayerNorms, embeddings, the projections' biases, the
// tied embedding's copy on the last stage) and dp replicas are held by several
// ranks; the checkpoint's write plan splits those bytes among their holders.
//
// Loading: contiguous ranges are read straight into the local buffers; a
// row-parallel parameter is read whole into staging memory and its columns
// copied in after_load() (one read per tensor instead of one per row, since
// every read is verified in whole checksum blocks).
//
// ZeRO-1 (PipelineTrainer::optimizer_range): the moments cover only this dp
// rank's shard of the local elements, so their runs are clipped to it.
// ZeRO-2/3 (PipelineTrainer::zero()): the moments — and under stage 3 the
// parameters — are the pieces of the ZeRO shard, a segment per piece.
//
// Cost of a save: the held ranges number ~2·width per layer and buffer under
// tp > 1 (the row-parallel weights); the snapshot copies them as usual.
#include <vector>

#include "train/train_state.hpp"

namespace braid::train {

class PipelineTrainer;
class TensorParallelGpt;

// A run of local elements [local_begin, local_begin + length) that is
// [full_begin, full_begin + length) of the full model's flat buffer.
struct ElementRun {
  int64_t full_begin = 0;
  int64_t local_begin = 0;
  int64_t length = 0;
  bool operator==(const ElementRun&) const = default;
};

// Every local element of `model` as runs in full-layout order, adjacent runs
// merged. Row-parallel parameters give one run per row, or none with
// `include_row_parallel` false (the loader stages them whole).
std::vector<ElementRun> element_runs(const TensorParallelGpt& model, bool include_row_parallel = true);

class MeshState : public CheckpointState {
 public:
  // Throws ConfigError when the parameters are not float32 (the layout is f32).
  explicit MeshState(PipelineTrainer& trainer);

  const ckpt::StateLayout& layout() const override { return layout_; }
  std::vector<ckpt::HeldBuffer> held() const override;
  std::vector<ckpt::ReadTarget> read_targets() const override;
  void after_load() override;
  StateBlobs blobs() const override;
  void restore(const StateBlobs& blobs) override;

 private:
  // A row-parallel parameter: local [rows, local_cols] holds some columns of
  // full [rows, full_cols].
  struct ColumnSlot {
    int local_slot = 0;
    int64_t full_offset = 0, local_offset = 0, rows = 0, full_cols = 0, local_cols = 0;
    std::vector<ElementRun> columns;  // of one row: full column, local column, count
  };
  // Local elements [lo, hi) held at data[0, hi - lo).
  struct Segment {
    float* data;
    int64_t lo, hi;
  };
  std::vector<Segment> segments(int which) const;  // 0 params, 1 adam_m, 2 adam_v

  PipelineTrainer& trainer_;
  ckpt::StateLayout layout_;
  std::vector<ElementRun> held_runs_;    // every local element
  std::vector<ElementRun> direct_runs_;  // all but the row-parallel parameters
  std::vector<ColumnSlot> column_slots_;
  // Loading: the row-parallel parameters read whole, [buffer][column slot].
  mutable std::vector<std::vector<std::vector<float>>> staging_;
};

}  // namespace braid::train
