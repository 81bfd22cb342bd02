#include "ckpt/state_layout.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.hpp"

namespace braid::ckpt {

std::string to_string(const ByteRange& r) { return fmt::format("[{}, {})", r.begin, r.end); }

uint64_t TensorSpec::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= d < 0 ? 0 : static_cast<uint64_t>(d);
  return n;
}

void StateLayout::add_buffer(const std::string& name, DType dtype, uint64_t bytes) {
  if (name.empty()) throw ConfigError("a checkpoint buffer needs a name");
  if (find_buffer(name))
    throw ConfigError(fmt::format("buffer '{}' is declared twice in the state layout", name),
                      "give every flat buffer a distinct name");
  buffers_.push_back({name, dtype, bytes});
}

void StateLayout::add_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                             const std::string& buffer_name, uint64_t offset) {
  if (name.empty()) throw ConfigError("a checkpoint tensor needs a name");
  for (auto& t : tensors_)
    if (t.name == name)
      throw ConfigError(fmt::format("tensor '{}' is declared twice in the state layout", name),
                        "tensor names must be unique across all buffers");
  buffer(buffer_name);  // throws on an unknown buffer
  tensors_.push_back({name, dtype, std::move(shape), buffer_name, offset});
}

void StateLayout::validate() const {
  for (auto& t : tensors_) {
    for (int64_t d : t.shape)
      if (d < 0) throw ConfigError(fmt::format("tensor '{}' has a negative dimension", t.name));
    const BufferSpec& b = buffer(t.buffer);
    if (t.offset % dtype_size(t.dtype) != 0)
      throw ConfigError(fmt::format("tensor '{}' starts at byte {} of buffer '{}', not a multiple of its "
                                    "element size {}",
                                    t.name, t.offset, t.buffer, dtype_size(t.dtype)));
    if (t.offset > b.bytes || t.bytes() > b.bytes - t.offset)
      throw ConfigError(fmt::format("tensor '{}' (bytes {}) does not fit in buffer '{}' of {} bytes",
                                    t.name, to_string(t.range()), t.buffer, b.bytes),
                        "check the tensor's offset and shape against the flat buffer's size");
  }
}

const BufferSpec* StateLayout::find_buffer(const std::string& name) const {
  for (auto& b : buffers_)
    if (b.name == name) return &b;
  return nullptr;
}

const BufferSpec& StateLayout::buffer(const std::string& name) const {
  if (auto* b = find_buffer(name)) return *b;
  std::string known;
  for (auto& b : buffers_) known += (known.empty() ? "" : ", ") + b.name;
  throw ConfigError(fmt::format("unknown buffer '{}'", name),
                    known.empty() ? "the state layout has no buffers yet" : "known buffers: " + known);
}

uint64_t StateLayout::total_bytes() const {
  uint64_t n = 0;
  for (auto& b : buffers_) n += b.bytes;
  return n;
}

std::vector<std::string> StateLayout::tensors_overlapping(const std::string& buffer_name,
                                                          const ByteRange& range) const {
  std::vector<std::string> out;
  for (auto& t : tensors_)
    if (t.buffer == buffer_name && !t.range().intersect(range).empty()) out.push_back(t.name);
  return out;
}

std::string StateLayout::describe_names(const std::vector<std::string>& names, size_t max_shown) {
  if (names.empty()) return "no tensor";
  std::string s;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > max_shown) s += fmt::format(" and {} more", names.size() - max_shown);
  return s;
}

std::optional<std::string> StateLayout::difference(const StateLayout& o, const std::string& a,
                                                   const std::string& b) const {
  for (auto& x : buffers_) {
    const BufferSpec* y = o.find_buffer(x.name);
    if (!y) return fmt::format("buffer '{}' exists in {} but not in {}", x.name, a, b);
    if (x.dtype != y->dtype)
      return fmt::format("buffer '{}' is {} in {} but {} in {}", x.name, dtype_name(x.dtype), a,
                         dtype_name(y->dtype), b);
    if (x.bytes != y->bytes)
      return fmt::format("buffer '{}' has {} bytes in {} but {} bytes in {}", x.name, x.bytes, a,
                         y->bytes, b);
  }
  for (auto& y : o.buffers_)
    if (!find_buffer(y.name)) return fmt::format("buffer '{}' exists in {} but not in {}", y.name, b, a);
  for (auto& x : tensors_) {
    const TensorSpec* y = nullptr;
    for (auto& t : o.tensors_)
      if (t.name == x.name) y = &t;
    if (!y) return fmt::format("tensor '{}' exists in {} but not in {}", x.name, a, b);
    if (!(x == *y))
      return fmt::format("tensor '{}' differs: {} has {} {} at byte {} of '{}', {} has {} {} at byte {} of '{}'",
                         x.name, a, dtype_name(x.dtype), fmt::join(x.shape, "x"), x.offset, x.buffer, b,
                         dtype_name(y->dtype), fmt::join(y->shape, "x"), y->offset, y->buffer);
  }
  if (o.tensors_.size() != tensors_.size())
    for (auto& y : o.tensors_) {
      bool found = false;
      for (auto& x : tensors_) found = found || x.name == y.name;
      if (!found) return fmt::format("tensor '{}' exists in {} but not in {}", y.name, b, a);
    }
  return std::nullopt;
}

}  // namespace braid::ckpt
