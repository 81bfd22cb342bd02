#pragma once
// Live healing: a healthy worker sends its whole training state (TrainState:
// parameters, AdamW moments, step, optimizer step, sampler position) to a
// joining worker over the communicator's point-to-point send/recv — no disk.
//
// Wire, per target (tags of this communicator's p2p space):
//   kHealHeaderSize  8 bytes: length of the header
//   kHealHeader      JSON: the sender's layout (buffers and tensors), the
//                    chunk size, the xxh3-64 of every chunk, the state blobs
//   kHealChunk + i   chunk i: raw bytes, received in place into the target's
//                    buffers (params, adam_m, adam_v back to back)
// The receiver checks the layout against its own (a different model config
// is a ConfigError naming the first difference), posts every chunk receive at
// once, verifies each chunk's hash as it lands (CorruptData naming the chunk)
// and applies the blobs only after every byte was verified, so a failed heal
// never leaves a step count that claims a state it does not hold.
//
// Cost model: 12 bytes per parameter plus a few hundred bytes of blobs go
// once over the pair to each target; a source with several targets sends to
// them concurrently (they share its link). Hashing is one xxh3 pass on each
// side (>10 GB/s), so the link's bandwidth sets the time. The sender keeps at
// most `window` chunks in flight per target, so a slow joiner does not make
// the transport buffer the whole state.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "train/train_state.hpp"

namespace braid::train {

struct HealOptions {
  uint64_t chunk_bytes = 4ull << 20;  // bytes per checksummed message
  int window = 8;                     // chunks in flight per target
  double timeout_s = 60;              // deadline of the whole transfer
};

struct HealStats {
  uint64_t bytes = 0;   // state bytes moved (per target for a sender: the sum over targets)
  uint64_t chunks = 0;
  double seconds = 0;   // wall time of the transfer, header included
  // Receiver: time spent waiting for the sender to begin (it may still be
  // finishing its own quorum, or hashing its chunks), part of `seconds`.
  double wait_s = 0;
  // Receiver: the time from the first byte of the header to the last
  // verified chunk, i.e. what the link and the checks took.
  double transfer_s() const { return seconds - wait_s; }
  double rate_bytes_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds : 0; }
};

// Sends this rank's state to every rank in `targets` (which must each call
// receive_training_state with this rank as the source). Throws the comm
// layer's errors (PeerLost, Timeout, Aborted) when a target goes away.
HealStats send_training_state(comm::Communicator& comm, const TrainState& state, const std::vector<int>& targets,
                              const HealOptions& options);

// Receives the state from rank `source` into this rank's buffers and then
// applies its blobs (step, optimizer step, sampler). Throws ConfigError
// (layouts differ), CorruptData (a checksum or the header is wrong) or the
// comm layer's errors; on a throw the blobs are not applied.
HealStats receive_training_state(comm::Communicator& comm, TrainState& state, int source,
                                 const HealOptions& options);

}  // namespace braid::train
