#pragma once
// What a training state looks like, independently of any file: named flat
// buffers, named tensors that are views into them, and byte ranges of those
// buffers. Checkpoint writing, loading, resharding and (later) peer fetch for
// live healing all speak in these terms, so none of them ever sees a tensor.
//
//   StateLayout layout;
//   layout.add_buffer("params", DType::F32, n * 4);
//   layout.add_tensor("wte", DType::F32, {vocab, dim}, "params", 0);
//   layout.validate();
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace braid::ckpt {

// Half-open byte range [begin, end) of one buffer.
struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;

  uint64_t size() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
  bool contains(const ByteRange& o) const { return o.begin >= begin && o.end <= end; }
  // Empty range when they do not overlap.
  ByteRange intersect(const ByteRange& o) const {
    ByteRange r{begin > o.begin ? begin : o.begin, end < o.end ? end : o.end};
    if (r.end < r.begin) r.end = r.begin;
    return r;
  }
  bool operator==(const ByteRange&) const = default;
};
std::string to_string(const ByteRange& r);  // "[begin, end)"

struct BufferSpec {
  std::string name;
  DType dtype = DType::U8;
  uint64_t bytes = 0;
  bool operator==(const BufferSpec&) const = default;
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::string buffer;   // the flat buffer it is a view of
  uint64_t offset = 0;  // byte offset of its first element in that buffer

  uint64_t numel() const;
  uint64_t bytes() const { return numel() * dtype_size(dtype); }
  ByteRange range() const { return {offset, offset + bytes()}; }
  bool operator==(const TensorSpec&) const = default;
};

class StateLayout {
 public:
  // Throws ConfigError on a duplicate name.
  void add_buffer(const std::string& name, DType dtype, uint64_t bytes);
  // Throws ConfigError on a duplicate name or an unknown buffer.
  void add_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                  const std::string& buffer, uint64_t offset);

  // Checks that every tensor lies inside its buffer, has a non-negative shape and
  // an offset aligned to its element size. Throws ConfigError naming the tensor.
  void validate() const;

  const std::vector<BufferSpec>& buffers() const { return buffers_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  const BufferSpec* find_buffer(const std::string& name) const;
  // Throws ConfigError listing the known buffers.
  const BufferSpec& buffer(const std::string& name) const;
  uint64_t total_bytes() const;

  // Names of the tensors of `buffer` that overlap `range`, in layout order.
  std::vector<std::string> tensors_overlapping(const std::string& buffer, const ByteRange& range) const;
  // "a, b, c" (or "a, b and 7 more"; "no tensor" when empty): for error messages.
  static std::string describe_names(const std::vector<std::string>& names, size_t max_shown = 4);

  // First difference from `other` in words ("buffer 'params' has 400 bytes here but
  // 800 bytes in the checkpoint"), or nullopt when equal. `this_name` and
  // `other_name` label the two sides.
  std::optional<std::string> difference(const StateLayout& other, const std::string& this_name,
                                        const std::string& other_name) const;

 private:
  std::vector<BufferSpec> buffers_;
  std::vector<TensorSpec> tensors_;
};

// A byte range of one buffer that a rank holds in memory (or is to write).
struct BufferRange {
  std::string buffer;
  ByteRange range;
  bool operator==(const BufferRange&) const = default;
};

}  // namespace braid::ckpt
