#pragma once
// xxh3-64 checksums (xxhash) for frames, checkpoints and parameter fingerprints.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace braid {

uint64_t xxh3_64(const void* data, size_t len, uint64_t seed = 0);
std::string hex64(uint64_t v);  // 16 lower-case hex digits

// Incremental xxh3-64: same result as xxh3_64() over the concatenation.
class Xxh3Stream {
 public:
  explicit Xxh3Stream(uint64_t seed = 0);
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void update(const void* data, size_t len);
  uint64_t digest() const;
  void reset(uint64_t seed = 0);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace braid
