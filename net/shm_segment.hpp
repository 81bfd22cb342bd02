#pragma once
// The shared-memory segment of one shm pair: two single-producer
// single-consumer byte rings, one per direction.
//
//   [0, 4096)            header: magic, version, ring size
//   [4096, 4096+256)     per direction: the consumer's published head (own cache-line pair)
//   [4608, 4608+256)     per side: doorbell futex word and sleeper count
//   [8192, 8192+R)       ring of direction 0 (connector -> acceptor)
//   [8192+R, 8192+2R)    ring of direction 1 (acceptor -> connector)
//
// The connecting rank creates it under /dev/shm with a random name (mode 0600),
// sends the name over its authenticated control connection, and unlinks it
// as soon as the peer has mapped it, so nothing is left behind by a crash
// after set-up.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace braid::net {

class ShmSegment {
 public:
  static constexpr size_t kHeaderBytes = 8192;
  ~ShmSegment();
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  // Creates a new segment with rings of ring_bytes (a power of two >= 64 KiB).
  static std::unique_ptr<ShmSegment> create(size_t ring_bytes);
  // Maps a segment the peer created; validates its header. Throws NetError.
  static std::unique_ptr<ShmSegment> open(const std::string& name, size_t ring_bytes);

  const std::string& name() const { return name_; }
  size_t ring_bytes() const { return ring_bytes_; }
  // Removes the name (the mapping stays valid).
  void unlink();

  char* ring(int direction) const { return base_ + kHeaderBytes + ring_bytes_ * static_cast<size_t>(direction); }
  // Consumer position of a direction's ring, in bytes since the start.
  uint64_t* head(int direction) const {
    return reinterpret_cast<uint64_t*>(base_ + 4096 + 128 * static_cast<size_t>(direction));
  }
  // Side 0 is the connecting rank, 1 the accepting one. A side that goes to
  // sleep counts itself in sleepers(side) and waits on doorbell(side); the
  // peer bumps and wakes the doorbell after moving data while it is asleep.
  uint32_t* doorbell(int side) const {
    return reinterpret_cast<uint32_t*>(base_ + 4608 + 128 * static_cast<size_t>(side));
  }
  uint32_t* sleepers(int side) const { return doorbell(side) + 1; }

 private:
  ShmSegment() = default;
  std::string name_;
  char* base_ = nullptr;
  size_t bytes_ = 0;
  size_t ring_bytes_ = 0;
  bool owner_ = false;
  bool unlinked_ = false;
};

}  // namespace braid::net
