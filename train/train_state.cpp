#include "train/train_state.hpp"

#include "core/error.hpp"
#include "train/trainer.hpp"

namespace braid::train {

ckpt::StateLayout training_state_layout(int64_t numel, const std::vector<ParamSpec>& params) {
  ckpt::StateLayout layout;
  const uint64_t bytes = static_cast<uint64_t>(numel) * 4;
  layout.add_buffer("params", DType::F32, bytes);
  layout.add_buffer("adam_m", DType::F32, bytes);
  layout.add_buffer("adam_v", DType::F32, bytes);
  for (auto& s : params) {
    uint64_t off = static_cast<uint64_t>(s.offset) * 4;
    layout.add_tensor(s.name, DType::F32, s.shape, "params", off);
    layout.add_tensor("adam_m." + s.name, DType::F32, s.shape, "adam_m", off);
    layout.add_tensor("adam_v." + s.name, DType::F32, s.shape, "adam_v", off);
  }
  layout.validate();
  return layout;
}

StateBlobs progress_blobs(const ProgressBlobs& p) {
  StateBlobs b;
  b.global["step"] = std::to_string(p.step);
  b.global["adam_step"] = std::to_string(p.adam_step);
  b.global["sampler"] = p.sampler.to_json();
  return b;
}

ProgressBlobs parse_progress_blobs(const StateBlobs& b) {
  auto need = [&](const char* key) -> const std::string& {
    auto it = b.global.find(key);
    if (it == b.global.end())
      throw CorruptData(std::string("training state has no '") + key + "' entry",
                        "the checkpoint or peer state is incomplete; use an older checkpoint");
    return it->second;
  };
  auto to_int = [&](const char* key) {
    const std::string& s = need(key);
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end || v < 0)
      throw CorruptData(std::string("training state entry '") + key + "' is not a step count: '" + s + "'");
    return static_cast<int64_t>(v);
  };
  ProgressBlobs p;
  p.step = to_int("step");
  p.adam_step = to_int("adam_step");
  p.sampler = SamplerPosition::from_json(need("sampler"));
  return p;
}

TrainState::TrainState(Trainer& t) : trainer_(t) {
  std::vector<ParamSpec> specs;
  for (auto& s : t.model().params().slots()) specs.push_back({s.name, s.shape, s.offset});
  layout_ = training_state_layout(t.model().params().numel(), specs);
}

namespace {

// A ZeRO rank's own ranges: one per parameter piece, in flat order.
std::vector<ckpt::HeldBuffer> zero_held(ZeroOptimizer& zero, float* flat_params) {
  std::vector<ckpt::HeldBuffer> out;
  auto& adam = zero.optimizer();
  for (const auto& p : zero.layout().pieces()) {
    const ckpt::ByteRange range{static_cast<uint64_t>(p.flat_begin) * 4, static_cast<uint64_t>(p.flat_end) * 4};
    const float* params = zero.stage() >= 3 ? zero.shard_params().data() + p.shard_begin : flat_params + p.flat_begin;
    out.push_back({"params", range, params, {}});
    out.push_back({"adam_m", range, adam.exp_avg().data() + p.shard_begin, {}});
    out.push_back({"adam_v", range, adam.exp_avg_sq().data() + p.shard_begin, {}});
  }
  return out;
}

}  // namespace

void TrainState::add_buffer(const std::string& name, float* data, int64_t numel) {
  const uint64_t bytes = static_cast<uint64_t>(numel) * 4;
  layout_.add_buffer(name, DType::F32, bytes);
  layout_.add_tensor(name, DType::F32, {numel}, name, 0);
  extras_.push_back({name, data, bytes});
}

std::vector<ckpt::HeldBuffer> TrainState::held() const {
  auto& flat = trainer_.model().params();
  std::vector<ckpt::HeldBuffer> out;
  if (auto* zero = trainer_.zero()) {
    out = zero_held(*zero, zero->stage() >= 3 ? nullptr : flat.param_data());
  } else {
    auto& opt = trainer_.optimizer();
    const uint64_t bytes = static_cast<uint64_t>(flat.numel()) * 4;
    out = {{"params", {0, bytes}, flat.param_data(), {}},
           {"adam_m", {0, bytes}, opt.exp_avg().data(), {}},
           {"adam_v", {0, bytes}, opt.exp_avg_sq().data(), {}}};
  }
  for (const auto& e : extras_) out.push_back({e.name, {0, e.bytes}, e.data, {}});
  return out;
}

std::vector<ckpt::ReadTarget> TrainState::read_targets() const {
  std::vector<ckpt::ReadTarget> out;
  if (auto* zero = trainer_.zero(); zero && zero->stage() < 3) {
    // Stages 1 and 2 need every parameter; the moments only in their own ranges.
    auto& flat = trainer_.model().params();
    out.push_back({"params", {0, static_cast<uint64_t>(flat.numel()) * 4}, flat.param_data()});
    for (auto& h : held())
      if (h.buffer != "params") out.push_back({h.buffer, h.range, const_cast<void*>(h.data)});
    return out;
  }
  for (auto& h : held()) out.push_back({h.buffer, h.range, const_cast<void*>(h.data)});
  return out;
}

StateBlobs TrainState::blobs() const {
  StateBlobs b = progress_blobs({trainer_.step(), trainer_.optimizer().step(), trainer_.sampler().position()});
  for (const auto& [name, hooks] : trainer_.state_blobs()) b.global[name] = hooks.save();
  return b;
}

void TrainState::restore(const StateBlobs& b) {
  const ProgressBlobs p = parse_progress_blobs(b);
  // The registered extras first: one that throws (malformed) leaves the
  // progress untouched. One the source did not have (an older checkpoint, a
  // run without it) keeps this worker's own.
  for (const auto& [name, hooks] : trainer_.state_blobs())
    if (auto it = b.global.find(name); it != b.global.end()) hooks.load(it->second);
  trainer_.set_step(p.step);
  trainer_.optimizer().set_step(p.adam_step);
  trainer_.sampler().restore(p.sampler);
}

}  // namespace braid::train
