#include "train/heal_transfer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
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
constexpr uint32_t kHealChunk = 0x48460000u;        // + chunk index
constexpr uint64_t kMaxChunks = 0xffffffffu - kHealChunk;
constexpr uint64_t kMaxHeaderBytes = 64ull << 20;
constexpr int kWireVersion = 1;

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
  if (out.size() > kMaxChunks)
    throw ConfigError(fmt::format("the training state needs {} healing chunks, more than the {} tags available",
                                  out.size(), kMaxChunks),
                      "raise fault.heal_chunk");
  return out;
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

HealStats send_training_state(comm::Communicator& comm, const TrainState& state, const std::vector<int>& targets,
                              const HealOptions& options) {
  HealStats stats;
  if (targets.empty()) return stats;
  if (options.chunk_bytes == 0) throw ConfigError("the healing chunk size must be positive");
  Stopwatch clock;
  const Deadline deadline = Deadline::in_seconds(options.timeout_s);
  const auto held = state.held();
  const auto chunks = chunks_of(held, options.chunk_bytes);

  // One hash pass, shared by all targets.
  nlohmann::json header;
  header["version"] = kWireVersion;
  header["layout"] = layout_json(state.layout());
  header["chunk_bytes"] = options.chunk_bytes;
  std::vector<std::string> hashes;
  hashes.reserve(chunks.size());
  for (const auto& c : chunks) hashes.push_back(hex64(xxh3_64(c.data, c.bytes)));
  header["chunks"] = hashes;
  const StateBlobs blobs = state.blobs();
  header["blobs"] = blobs.global;
  const std::string text = header.dump();
  const uint64_t text_bytes = text.size();

  std::deque<comm::Work> in_flight;
  const size_t window = static_cast<size_t>(std::max(1, options.window)) * targets.size();
  auto post = [&](comm::Work w) {
    in_flight.push_back(std::move(w));
    while (in_flight.size() > window) {
      in_flight.front().wait();
      in_flight.pop_front();
    }
  };
  for (int t : targets) {
    post(comm.send(&text_bytes, sizeof text_bytes, t, kHealHeaderSize, until(deadline)));
    post(comm.send(text.data(), text.size(), t, kHealHeader, until(deadline)));
  }
  for (size_t i = 0; i < chunks.size(); ++i)
    for (int t : targets) {
      post(comm.send(chunks[i].data, chunks[i].bytes, t, kHealChunk + static_cast<uint32_t>(i), until(deadline)));
      stats.bytes += chunks[i].bytes;
    }
  while (!in_flight.empty()) {
    in_flight.front().wait();
    in_flight.pop_front();
  }
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
  uint64_t chunk_bytes = 0;
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

  auto targets = state.read_targets();
  std::vector<ckpt::HeldBuffer> as_held;
  for (const auto& t : targets) as_held.push_back({t.buffer, t.range, t.dst, {}});
  const auto chunks = chunks_of(as_held, chunk_bytes);
  if (chunks.size() != hashes.size())
    throw CorruptData(fmt::format("{} lists {} chunks where this worker's state has {}", from, hashes.size(),
                                  chunks.size()));


  // Every receive is posted at once: chunks land in place as they arrive.
  std::vector<comm::Work> works;
  works.reserve(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i)
    works.push_back(comm.recv(const_cast<char*>(chunks[i].data), chunks[i].bytes, source,
                              kHealChunk + static_cast<uint32_t>(i), until(deadline)));
  for (size_t i = 0; i < chunks.size(); ++i) {
    works[i].wait();
    const std::string got = hex64(xxh3_64(chunks[i].data, chunks[i].bytes));
    if (got != hashes[i])
      throw CorruptData(fmt::format("{}: chunk {} of {} ({} bytes) has xxh3 {} but the sender computed {}", from, i,
                                    chunks.size(), chunks[i].bytes, got, hashes[i]),
                        "the state is fetched again from a healthy peer at the next quorum");
    stats.bytes += chunks[i].bytes;
  }
  state.restore(blobs);
  stats.chunks = chunks.size();
  stats.seconds = clock.seconds();
  return stats;
}

}  // namespace braid::train
