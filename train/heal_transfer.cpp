#include "train/heal_transfer.hpp"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>

#include "core/checksum.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::train {
namespace {

// Tags of the healing messages (the p2p tag space of the epoch's communicator,
// which carries nothing else while a quorum heals).
constexpr uint32_t kHealHeaderSize = 0x48450001u;
constexpr uint32_t kHealHeader = 0x48450002u;
constexpr uint32_t kHealPiece = 0x48460000u;        // + piece index
constexpr uint64_t kMaxPieces = 0xffffffffu - kHealPiece;
constexpr uint64_t kMaxHeaderBytes = 64ull << 20;
constexpr uint64_t kMaxPieceBytes = 64ull << 20;
constexpr int kWireVersion = 2;
constexpr size_t kHugePage = 2u << 20;

struct Chunk {
  const char* data = nullptr;  // sender: the bytes; receiver: where they land
  uint64_t bytes = 0;
};

// The state as a list of chunks: each held buffer in layout order, cut into
// pieces of at most chunk_bytes (a chunk never spans two buffers).
std::vector<Chunk> chunks_of(const std::vector<ckpt::HeldBuffer>& held, uint64_t chunk_bytes) {
  std::vector<Chunk> out;
  for (const auto& h : held) {
    const char* base = static_cast<const char*>(h.data);
    const uint64_t n = h.range.size();
    for (uint64_t off = 0; off < n; off += chunk_bytes) out.push_back({base + off, std::min(chunk_bytes, n - off)});
  }
  return out;
}

// What goes over the wire: every chunk cut into pieces of at most
// piece_bytes, each its own message (tag kHealPiece + index), staged through
// the bounce buffer on both sides.
struct Piece {
  size_t chunk = 0;     // index into the chunk list
  uint64_t offset = 0;  // within the chunk
  uint64_t bytes = 0;
  bool last = false;    // the chunk's last piece
};

std::vector<Piece> pieces_of(const std::vector<Chunk>& chunks, uint64_t piece_bytes) {
  std::vector<Piece> out;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const uint64_t n = chunks[c].bytes;
    for (uint64_t off = 0; off < n; off += piece_bytes) {
      const uint64_t b = std::min(piece_bytes, n - off);
      out.push_back({c, off, b, off + b == n});
    }
  }
  if (out.size() > kMaxPieces)
    throw ConfigError(fmt::format("the training state needs {} healing messages, more than the {} tags available",
                                  out.size(), kMaxPieces),
                      "raise fault.heal_chunk");
  return out;
}

// The staging memory of one side of a transfer: `slots` buffers of `slot_bytes`
// in one 2 MiB-aligned block that asks for transparent huge pages.
// (Why stage at all: see heal_transfer.hpp. The kernel's first access to a
// page of this process is what costs, so the slots sit on huge pages.)
// Uses the caller's HealStaging when it is large enough, else maps its own.
class Bounce {
 public:
  Bounce(size_t slots, size_t slot_bytes, HealStaging* staging) : slots_(slots), slot_bytes_(slot_bytes) {
    if (staging && staging->size() >= slots * slot_bytes) {
      base_ = staging->data();
      return;
    }
    own_ = std::make_unique<HealStaging>(slots * slot_bytes);
    base_ = own_->data();
  }
  size_t slots() const { return slots_; }
  char* slot(size_t i) { return base_ + (i % slots_) * slot_bytes_; }

 private:
  size_t slots_, slot_bytes_;
  std::unique_ptr<HealStaging> own_;
  char* base_ = nullptr;
};

// While the transport may still read or write a bounce buffer, an exception
// must not free the buffer under it: aborting the communicator first fails
// every pending operation, and the transport lets go of their buffers. (A
// failed operation has already done so: its failure aborts the communicator.)
class AbortOnUnwind {
 public:
  explicit AbortOnUnwind(comm::Communicator& comm) : comm_(comm), uncaught_(std::uncaught_exceptions()) {}
  ~AbortOnUnwind() {
    if (std::uncaught_exceptions() <= uncaught_) return;
    try {
      comm_.abort("a heal transfer failed");
    } catch (...) {
    }
  }
  AbortOnUnwind(const AbortOnUnwind&) = delete;
  AbortOnUnwind& operator=(const AbortOnUnwind&) = delete;

 private:
  comm::Communicator& comm_;
  int uncaught_;
};

size_t slot_count(int window, size_t pieces) {
  return std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(std::max(1, window)), pieces));
}

nlohmann::json layout_json(const ckpt::StateLayout& layout) {
  nlohmann::json j;
  for (const auto& b : layout.buffers())
    j["buffers"].push_back({{"name", b.name}, {"dtype", std::string(dtype_name(b.dtype))}, {"bytes", b.bytes}});
  for (const auto& t : layout.tensors())
    j["tensors"].push_back({{"name", t.name},
                            {"dtype", std::string(dtype_name(t.dtype))},
                            {"shape", t.shape},
                            {"buffer", t.buffer},
                            {"offset", t.offset}});
  return j;
}

ckpt::StateLayout layout_from_json(const nlohmann::json& j) {
  ckpt::StateLayout layout;
  for (const auto& b : j.at("buffers"))
    layout.add_buffer(b.at("name").get<std::string>(), parse_dtype(b.at("dtype").get<std::string>()),
                      b.at("bytes").get<uint64_t>());
  for (const auto& t : j.at("tensors"))
    layout.add_tensor(t.at("name").get<std::string>(), parse_dtype(t.at("dtype").get<std::string>()),
                      t.at("shape").get<std::vector<int64_t>>(), t.at("buffer").get<std::string>(),
                      t.at("offset").get<uint64_t>());
  return layout;
}

comm::CollectiveOptions until(const Deadline& d) {
  comm::CollectiveOptions o;
  // A zero deadline would mean "the communicator's default"; keep it positive.
  o.timeout_s = std::max(1e-3, static_cast<double>(d.remaining_ns()) * 1e-9);
  return o;
}

}  // namespace

HealStaging::HealStaging(size_t bytes) {
  bytes_ = std::max<size_t>(kHugePage, (bytes + kHugePage - 1) / kHugePage * kHugePage);
  void* p = mmap(nullptr, bytes_ + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Align to a huge page; the slack on either side goes back at once.
  auto* raw = static_cast<char*>(p);
  auto* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + kHugePage - 1) & ~(kHugePage - 1));
  if (aligned > raw) munmap(raw, static_cast<size_t>(aligned - raw));
  const size_t tail = static_cast<size_t>(raw + bytes_ + kHugePage - (aligned + bytes_));
  if (tail > 0) munmap(aligned + bytes_, tail);
  base_ = aligned;
  (void)madvise(base_, bytes_, MADV_HUGEPAGE);  // advice: without THP the slots are plain pages
  std::memset(base_, 0, bytes_);                // fault every page in now, not during a heal
}

HealStaging::~HealStaging() { munmap(base_, bytes_); }

size_t HealStaging::bytes_for(uint64_t piece_bytes, uint64_t chunk_bytes, int window) {
  return 2 * static_cast<size_t>(std::max(1, window)) * std::min(piece_bytes, chunk_bytes);
}

HealStats send_training_state(comm::Communicator& comm, const TrainState& state, const std::vector<int>& targets,
                              const HealOptions& options) {
  HealStats stats;
  if (targets.empty()) return stats;
  if (options.chunk_bytes == 0) throw ConfigError("the healing chunk size must be positive");
  Stopwatch clock;
  const Deadline deadline = Deadline::in_seconds(options.timeout_s);
  if (options.piece_bytes == 0 || options.piece_bytes > kMaxPieceBytes)
    throw ConfigError(fmt::format("the healing message size must be between 1 and {} bytes", kMaxPieceBytes));
  const auto held = state.held();
  const auto chunks = chunks_of(held, options.chunk_bytes);
  const uint64_t piece_bytes = std::min(options.piece_bytes, options.chunk_bytes);
  const auto pieces = pieces_of(chunks, piece_bytes);

  // One hash pass, shared by all targets.
  nlohmann::json header;
  header["version"] = kWireVersion;
  header["layout"] = layout_json(state.layout());
  header["chunk_bytes"] = options.chunk_bytes;
  header["piece_bytes"] = piece_bytes;
  std::vector<std::string> hashes;
  hashes.reserve(chunks.size());
  for (const auto& c : chunks) hashes.push_back(hex64(xxh3_64(c.data, c.bytes)));
  header["chunks"] = hashes;
  const StateBlobs blobs = state.blobs();
  header["blobs"] = blobs.global;
  const std::string text = header.dump();
  const uint64_t text_bytes = text.size();

  std::vector<comm::Work> head;
  for (int t : targets) {
    head.push_back(comm.send(&text_bytes, sizeof text_bytes, t, kHealHeaderSize, until(deadline)));
    head.push_back(comm.send(text.data(), text.size(), t, kHealHeader, until(deadline)));
  }
  // Each piece is copied into a free slot once and sent from there to every
  // target; a slot is refilled when all its sends completed (the transport
  // has taken the bytes).
  Bounce bounce(slot_count(options.window, pieces.size()), piece_bytes, options.staging);
  AbortOnUnwind guard(comm);  // destroyed before the bounce buffer
  std::vector<std::vector<comm::Work>> busy(bounce.slots());
  for (size_t i = 0; i < pieces.size(); ++i) {
    auto& sends = busy[i % bounce.slots()];
    for (auto& w : sends) w.wait();
    sends.clear();
    const Piece& p = pieces[i];
    char* slot = bounce.slot(i);
    std::memcpy(slot, chunks[p.chunk].data + p.offset, p.bytes);
    for (int t : targets) {
      sends.push_back(comm.send(slot, p.bytes, t, kHealPiece + static_cast<uint32_t>(i), until(deadline)));
      stats.bytes += p.bytes;
    }
  }
  for (auto& w : head) w.wait();
  for (auto& sends : busy)
    for (auto& w : sends) w.wait();
  stats.chunks = chunks.size() * targets.size();
  stats.seconds = clock.seconds();
  return stats;
}

HealStats receive_training_state(comm::Communicator& comm, TrainState& state, int source, const HealOptions& options) {
  HealStats stats;
  Stopwatch clock;
  const Deadline deadline = Deadline::in_seconds(options.timeout_s);
  const std::string from = fmt::format("the healing state from rank {}", source);

  uint64_t text_bytes = 0;
  comm.recv(&text_bytes, sizeof text_bytes, source, kHealHeaderSize, until(deadline)).wait();
  stats.wait_s = clock.seconds();
  if (text_bytes == 0 || text_bytes > kMaxHeaderBytes)
    throw CorruptData(fmt::format("{} announces a header of {} bytes", from, text_bytes),
                      "the workers run different braid builds");
  std::string text(text_bytes, '\0');
  comm.recv(text.data(), text.size(), source, kHealHeader, until(deadline)).wait();

  nlohmann::json header;
  ckpt::StateLayout theirs;
  uint64_t chunk_bytes = 0, piece_bytes = 0;
  std::vector<std::string> hashes;
  StateBlobs blobs;
  try {
    header = nlohmann::json::parse(text);
    if (header.at("version").get<int>() != kWireVersion)
      throw CorruptData(fmt::format("{} has wire version {} (this worker speaks {})", from,
                                    header.at("version").get<int>(), kWireVersion),
                        "run the same braid build on every worker");
    theirs = layout_from_json(header.at("layout"));
    chunk_bytes = header.at("chunk_bytes").get<uint64_t>();
    piece_bytes = header.at("piece_bytes").get<uint64_t>();
    hashes = header.at("chunks").get<std::vector<std::string>>();
    blobs.global = header.at("blobs").get<std::map<std::string, std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw CorruptData(fmt::format("{} has a malformed header: {}", from, e.what()),
                      "the workers run different braid builds");
  }
  if (auto diff = state.layout().difference(theirs, "this worker", "the healthy peer"))
    throw ConfigError(fmt::format("cannot heal from rank {}: the training state differs: {}", source, *diff),
                      "every worker of a job must run the same model configuration");
  if (chunk_bytes == 0) throw CorruptData(fmt::format("{} has a zero chunk size", from));
  if (piece_bytes == 0 || piece_bytes > kMaxPieceBytes)
    throw CorruptData(fmt::format("{} has a message size of {} bytes", from, piece_bytes));

  auto targets = state.read_targets();
  std::vector<ckpt::HeldBuffer> as_held;
  for (const auto& t : targets) as_held.push_back({t.buffer, t.range, t.dst, {}});
  const auto chunks = chunks_of(as_held, chunk_bytes);
  if (chunks.size() != hashes.size())
    throw CorruptData(fmt::format("{} lists {} chunks where this worker's state has {}", from, hashes.size(),
                                  chunks.size()));
  const auto pieces = pieces_of(chunks, piece_bytes);

  // A receive is posted into every slot of the bounce buffer; each piece is
  // copied into place as it lands and its slot takes the next receive. A
  // chunk is verified once its last piece is in place. Twice the sender's
  // window of slots: a piece that arrived before its receive was posted would
  // be buffered by the transport in fresh memory.
  Bounce bounce(slot_count(2 * std::max(1, options.window), pieces.size()), piece_bytes, options.staging);
  AbortOnUnwind guard(comm);  // destroyed before the bounce buffer
  std::vector<comm::Work> works(bounce.slots());
  auto post = [&](size_t i) {
    works[i % bounce.slots()] = comm.recv(bounce.slot(i), pieces[i].bytes, source,
                                          kHealPiece + static_cast<uint32_t>(i), until(deadline));
  };
  for (size_t i = 0; i < bounce.slots(); ++i) post(i);
  for (size_t i = 0; i < pieces.size(); ++i) {
    works[i % bounce.slots()].wait();
    const Piece& p = pieces[i];
    std::memcpy(const_cast<char*>(chunks[p.chunk].data) + p.offset, bounce.slot(i), p.bytes);
    if (i + bounce.slots() < pieces.size()) post(i + bounce.slots());
    if (!p.last) continue;
    const Chunk& c = chunks[p.chunk];
    const std::string got = hex64(xxh3_64(c.data, c.bytes));
    if (got != hashes[p.chunk])
      throw CorruptData(fmt::format("{}: chunk {} of {} ({} bytes) has xxh3 {} but the sender computed {}", from,
                                    p.chunk, chunks.size(), c.bytes, got, hashes[p.chunk]),
                        "the state is fetched again from a healthy peer at the next quorum");
    stats.bytes += c.bytes;
  }
  state.restore(blobs);
  stats.chunks = chunks.size();
  stats.seconds = clock.seconds();
  return stats;
}

}  // namespace braid::train
