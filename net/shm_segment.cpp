#include "net/shm_segment.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <random>

#include "core/error.hpp"

namespace braid::net {

namespace {

constexpr uint64_t kShmMagic = 0x4d48534449415242ull;  // "BRAIDSHM"
constexpr uint32_t kShmVersion = 1;

struct SegmentHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t reserved;
  uint64_t ring_bytes;
  uint64_t total_bytes;
};

size_t segment_bytes(size_t ring_bytes) { return ShmSegment::kHeaderBytes + 2 * ring_bytes; }

}  // namespace

std::unique_ptr<ShmSegment> ShmSegment::create(size_t ring_bytes) {
  if (ring_bytes < (64 << 10) || (ring_bytes & (ring_bytes - 1)) != 0)
    throw ConfigError(fmt::format("shared-memory ring of {} bytes is not a power of two >= 64 KiB", ring_bytes));
  std::unique_ptr<ShmSegment> seg(new ShmSegment());
  std::random_device rd;
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    seg->name_ = fmt::format("/braid-{}-{:08x}{:08x}", getpid(), rd(), rd());
    fd = shm_open(seg->name_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0)
    throw NetError(fmt::format("cannot create a shared-memory segment in /dev/shm: {}", std::strerror(errno)),
                   "check that /dev/shm is mounted and has free space, or use BRAID_TRANSPORT=tcp");
  seg->owner_ = true;
  seg->bytes_ = segment_bytes(ring_bytes);
  seg->ring_bytes_ = ring_bytes;
  if (ftruncate(fd, static_cast<off_t>(seg->bytes_)) != 0) {
    int e = errno;
    close(fd);
    shm_unlink(seg->name_.c_str());
    seg->unlinked_ = true;
    throw NetError(fmt::format("cannot size the shared-memory segment to {} bytes: {}", seg->bytes_, std::strerror(e)),
                   "free space in /dev/shm, lower shm_ring_bytes, or use BRAID_TRANSPORT=tcp");
  }
  void* p = mmap(nullptr, seg->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(seg->name_.c_str());
    seg->unlinked_ = true;
    throw NetError(fmt::format("cannot map the shared-memory segment: {}", std::strerror(e)));
  }
  seg->base_ = static_cast<char*>(p);
  auto* h = reinterpret_cast<SegmentHeader*>(seg->base_);
  h->version = kShmVersion;
  h->ring_bytes = ring_bytes;
  h->total_bytes = seg->bytes_;
  __atomic_store_n(&h->magic, kShmMagic, __ATOMIC_RELEASE);
  return seg;
}

std::unique_ptr<ShmSegment> ShmSegment::open(const std::string& name, size_t ring_bytes) {
  if (name.empty() || name[0] != '/' || name.find('/', 1) != std::string::npos || name.size() > 200)
    throw NetError(fmt::format("bad shared-memory segment name '{}'", name));
  std::unique_ptr<ShmSegment> seg(new ShmSegment());
  seg->name_ = name;
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    throw NetError(fmt::format("cannot open the peer's shared-memory segment {}: {}", name, std::strerror(errno)),
                   "both ranks must see the same /dev/shm (same host, same container); otherwise give them "
                   "different BRAID_HOST_ID values or use BRAID_TRANSPORT=tcp");
  struct stat st{};
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != segment_bytes(ring_bytes)) {
    close(fd);
    throw NetError(fmt::format("shared-memory segment {} has {} bytes, expected {}", name,
                               static_cast<long long>(st.st_size), segment_bytes(ring_bytes)));
  }
  seg->bytes_ = segment_bytes(ring_bytes);
  seg->ring_bytes_ = ring_bytes;
  void* p = mmap(nullptr, seg->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) throw NetError(fmt::format("cannot map shared-memory segment {}: {}", name, std::strerror(e)));
  seg->base_ = static_cast<char*>(p);
  auto* h = reinterpret_cast<SegmentHeader*>(seg->base_);
  if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != kShmMagic || h->version != kShmVersion ||
      h->ring_bytes != ring_bytes || h->total_bytes != seg->bytes_)
    throw NetError(fmt::format("shared-memory segment {} has a bad header", name));
  seg->unlinked_ = true;  // the creator unlinks it
  return seg;
}

void ShmSegment::unlink() {
  if (owner_ && !unlinked_) shm_unlink(name_.c_str());
  unlinked_ = true;
}

ShmSegment::~ShmSegment() {
  unlink();
  if (base_) munmap(base_, bytes_);
}

}  // namespace braid::net
