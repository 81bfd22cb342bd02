#include "train/mesh_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "train/pipeline_trainer.hpp"

namespace braid::train {

namespace {

constexpr const char* kBuffers[3] = {"params", "adam_m", "adam_v"};

int64_t product(const std::vector<int64_t>& v, size_t from) {
  int64_t n = 1;
  for (size_t i = from; i < v.size(); ++i) n *= v[i];
  return n;
}

bool row_parallel(const ShardedSlot& sh) { return !sh.pieces.empty() && sh.pieces.front().dim == 1; }

ckpt::ByteRange bytes_of(int64_t begin, int64_t length) {
  return {static_cast<uint64_t>(begin) * 4, static_cast<uint64_t>(begin + length) * 4};
}

// The part of run r whose local elements lie in [lo, hi), or length 0.
ElementRun clipped(const ElementRun& r, int64_t lo, int64_t hi) {
  const int64_t a = std::max(r.local_begin, lo), b = std::min(r.local_begin + r.length, hi);
  if (a >= b) return {r.full_begin, r.local_begin, 0};
  return {r.full_begin + (a - r.local_begin), a, b - a};
}

}  // namespace

std::vector<ElementRun> element_runs(const TensorParallelGpt& model, bool include_row_parallel) {
  std::vector<ElementRun> runs;
  const auto& slots = model.params().slots();
  const auto& sharding = model.sharding();
  for (size_t i = 0; i < sharding.size(); ++i) {
    const auto& sh = sharding[i];
    const auto& local = slots[i];
    const int64_t F = model.full_offset(sh.full_slot);
    const auto& full_shape = model.full_shape(sh.full_slot);
    if (sh.pieces.empty()) {
      runs.push_back({F, local.offset, local.numel});
      continue;
    }
    for (const auto& p : sh.pieces) {
      if (p.dim == 0) {
        const int64_t row = product(full_shape, 1);
        runs.push_back({F + p.full_begin * row, local.offset + p.local_begin * row, p.length * row});
      } else if (p.dim == 1 && full_shape.size() == 2) {
        if (!include_row_parallel) continue;
        const int64_t full_cols = full_shape[1], local_cols = local.shape[1];
        for (int64_t r = 0; r < full_shape[0]; ++r)
          runs.push_back({F + r * full_cols + p.full_begin, local.offset + r * local_cols + p.local_begin, p.length});
      } else {
        throw Error(fmt::format("checkpoint of '{}': a slice along dimension {} of a {}-d tensor is not supported",
                                local.name, p.dim, full_shape.size()));
      }
    }
  }
  std::sort(runs.begin(), runs.end(), [](const ElementRun& a, const ElementRun& b) { return a.full_begin < b.full_begin; });
  std::vector<ElementRun> merged;
  for (const auto& r : runs) {
    if (r.length == 0) continue;
    if (!merged.empty()) {
      auto& last = merged.back();
      if (last.full_begin + last.length == r.full_begin && last.local_begin + last.length == r.local_begin) {
        last.length += r.length;
        continue;
      }
    }
    merged.push_back(r);
  }
  return merged;
}

MeshState::MeshState(PipelineTrainer& trainer) : trainer_(trainer) {
  const auto& model = trainer.model();
  if (model.params().dtype() != torch::kFloat32)
    throw ConfigError("checkpoints of the mesh engine need float32 parameters",
                      "train with float32 parameters (the checkpoint layout is f32)");
  std::vector<ParamSpec> specs;
  for (int s = 0; s < model.full_slot_count(); ++s)
    specs.push_back({model.full_name(s), model.full_shape(s), model.full_offset(s)});
  layout_ = training_state_layout(model.full_numel(), specs);
  held_runs_ = element_runs(model, true);
  direct_runs_ = element_runs(model, false);
  const auto& slots = model.params().slots();
  const auto& sharding = model.sharding();
  for (size_t i = 0; i < sharding.size(); ++i) {
    if (!row_parallel(sharding[i])) continue;
    const auto& full_shape = model.full_shape(sharding[i].full_slot);
    ColumnSlot c;
    c.local_slot = static_cast<int>(i);
    c.full_offset = model.full_offset(sharding[i].full_slot);
    c.local_offset = slots[i].offset;
    c.rows = full_shape[0];
    c.full_cols = full_shape[1];
    c.local_cols = slots[i].shape[1];
    for (const auto& p : sharding[i].pieces) c.columns.push_back({p.full_begin, p.local_begin, p.length});
    column_slots_.push_back(std::move(c));
  }
}

// Where buffer `which` holds which local elements: the parameters all of
// them in the flat buffer, the moments optimizer_range() (a dp shard under
// ZeRO-1); under ZeRO-2/3 the moments (and stage 3's parameters) are the
// pieces of the ZeRO shard.
std::vector<MeshState::Segment> MeshState::segments(int which) const {
  auto& opt = trainer_.optimizer();
  ZeroOptimizer* zero = trainer_.zero();
  float* params = trainer_.model().params().param_data();
  if (zero && (which > 0 || zero->stage() >= 3)) {
    float* base = which == 0 ? zero->shard_params().data() : which == 1 ? opt.exp_avg().data() : opt.exp_avg_sq().data();
    std::vector<Segment> out;
    for (const auto& p : zero->layout().pieces()) out.push_back({base + p.shard_begin, p.flat_begin, p.flat_end});
    return out;
  }
  const auto [lo, hi] = trainer_.optimizer_range();
  switch (which) {
    case 0: return {{params, 0, trainer_.model().params().numel()}};
    case 1: return {{opt.exp_avg().data(), lo, hi}};
    default: return {{opt.exp_avg_sq().data(), lo, hi}};
  }
}

std::vector<ckpt::HeldBuffer> MeshState::held() const {
  std::vector<ckpt::HeldBuffer> out;
  out.reserve(3 * held_runs_.size());
  for (int b = 0; b < 3; ++b)
    for (const Segment& seg : segments(b))
      for (const auto& run : held_runs_) {
        const ElementRun r = clipped(run, seg.lo, seg.hi);
        if (r.length > 0)
          out.push_back({kBuffers[b], bytes_of(r.full_begin, r.length), seg.data + (r.local_begin - seg.lo), {}});
      }
  return out;
}

std::vector<ckpt::ReadTarget> MeshState::read_targets() const {
  std::vector<ckpt::ReadTarget> out;
  staging_.assign(3, {});
  for (int b = 0; b < 3; ++b) {
    for (const Segment& seg : segments(b))
      for (const auto& run : direct_runs_) {
        const ElementRun r = clipped(run, seg.lo, seg.hi);
        if (r.length > 0)
          out.push_back({kBuffers[b], bytes_of(r.full_begin, r.length), seg.data + (r.local_begin - seg.lo)});
      }
    for (const auto& c : column_slots_) {
      auto& stage = staging_[static_cast<size_t>(b)].emplace_back(static_cast<size_t>(c.rows * c.full_cols));
      out.push_back({kBuffers[b], bytes_of(c.full_offset, c.rows * c.full_cols), stage.data()});
    }
  }
  return out;
}

void MeshState::after_load() {
  if (staging_.size() != 3) throw Error("MeshState::after_load without read_targets()");
  for (int b = 0; b < 3; ++b) {
    const auto segs = segments(b);
    for (size_t k = 0; k < column_slots_.size(); ++k) {
      const auto& c = column_slots_[k];
      const float* stage = staging_[static_cast<size_t>(b)][k].data();
      for (const Segment& seg : segs) {
        if (seg.hi <= c.local_offset || seg.lo >= c.local_offset + c.rows * c.local_cols) continue;
        for (int64_t r = 0; r < c.rows; ++r)
          for (const auto& col : c.columns) {
            const ElementRun run = clipped(
                {r * c.full_cols + col.full_begin, c.local_offset + r * c.local_cols + col.local_begin, col.length},
                seg.lo, seg.hi);
            if (run.length > 0)
              std::memcpy(seg.data + (run.local_begin - seg.lo), stage + run.full_begin,
                          static_cast<size_t>(run.length) * 4);
          }
      }
    }
  }
  staging_.clear();
}

StateBlobs MeshState::blobs() const {
  return progress_blobs({trainer_.step(), trainer_.optimizer().step(), trainer_.sampler().position()});
}

void MeshState::restore(const StateBlobs& b) {
  const ProgressBlobs p = parse_progress_blobs(b);
  trainer_.set_step(p.step);
  trainer_.optimizer().set_step(p.adam_step);
  trainer_.sampler().restore(p.sampler);
}

}  // namespace braid::train
