#include "core/checksum.hpp"

#include <fmt/format.h>
#include <xxhash.h>

#include <new>

namespace braid {

uint64_t xxh3_64(const void* data, size_t len, uint64_t seed) {
  return XXH3_64bits_withSeed(data, len, seed);
}

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

struct Xxh3Stream::State {
  XXH3_state_t* st;
};

Xxh3Stream::Xxh3Stream(uint64_t seed) : s_(new State{XXH3_createState()}) {
  if (!s_->st) throw std::bad_alloc();
  reset(seed);
}
Xxh3Stream::~Xxh3Stream() { XXH3_freeState(s_->st); }
void Xxh3Stream::update(const void* data, size_t len) { XXH3_64bits_update(s_->st, data, len); }
uint64_t Xxh3Stream::digest() const { return XXH3_64bits_digest(s_->st); }
void Xxh3Stream::reset(uint64_t seed) { XXH3_64bits_reset_withSeed(s_->st, seed); }

}  // namespace braid
