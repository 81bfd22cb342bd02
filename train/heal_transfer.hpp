#pragma once
// Live healing: a healthy worker sends its whole training state (TrainState:
// parameters, AdamW moments, step, optimizer step, sampler position) to a
// joining worker over the communicator's point-to-point send/recv — no disk.
//
// Wire, per target (tags of this communicator's p2p space):
//   kHealHeaderSize  8 bytes: length of the header
//   kHealHeader      JSON: the sender's layout (buffers and tensors), the
//                    chunk and message sizes, the xxh3-64 of every chunk, the
//                    state blobs
//   kHealPiece + i   message i: the next at most piece_bytes of the state
//                    (params, adam_m, adam_v back to back; each chunk is cut
//                    into messages on its own)
// The receiver checks the layout against its own (a different model config
// is a ConfigError naming the first difference), verifies each chunk's hash
// once its bytes are in place (CorruptData naming the chunk) and applies the
// blobs only after every byte was verified, so a failed heal never leaves a
// step count that claims a state it does not hold.
//
// Both sides stage the messages through a small bounce buffer (`window`
// slots of piece_bytes on the sender, twice as many on the receiver, on
// transparent huge pages) instead of handing the state's own pages to the
// transport. The state's pages meet the kernel for the first time in a heal
// (the sender's parameters and moments are never sent otherwise; the
// joiner's buffers are new), and on the development VM the kernel's first
// access to each 4 KiB page of a process costs ~10 us even when user space
// has already written it (a loopback test: 10 MB sent between fresh buffers
// took 40-60 ms, the same bytes sent again 3-10 ms, and buffers the kernel had
// touched before, or on huge pages, 4-9 ms the first time). Two more things
// decide the rate (`braid bench recovery`, example model, 10 MB, 5 runs per
// fault on the idle 2-vCPU VM):
//   - slot size: 256 KiB slots stay in the cache between the memcpy into a
//     slot and the kernel's copy out of it (and the other way round on the
//     receiver); with 1 MiB slots the heal ran at 33-36% of the TCP
//     all-reduce busbw, with 256 KiB at 76-95%;
//   - staging made once: a worker maps and faults in its HealStaging when it
//     starts, so a heal allocates nothing (with both: 114-186%).
// In place (no staging), the heal ran at 26-50%.
//
// Cost model: 12 bytes per parameter plus a few hundred bytes of blobs go
// once over the pair to each target; a source with several targets sends to
// them concurrently (they share its link), copying each piece into its bounce
// buffer once. Hashing is one xxh3 pass on each side (>10 GB/s), so the link's
// bandwidth sets the time. At most `window` messages are in flight per
// target, so a slow joiner does not make the transport buffer the whole state.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "train/train_state.hpp"

namespace braid::train {

// Staging memory for heal transfers, mapped on (transparent) huge pages and
// written once when it is made, so that a heal pays neither the allocation nor
// the first touch of its bounce buffers (a few milliseconds for 12 MiB on the
// development VM: a large share of a 10 MB heal). A fault-tolerant worker
// makes one when it starts and hands it to every transfer (HealOptions).
class HealStaging {
 public:
  explicit HealStaging(size_t bytes);
  ~HealStaging();
  HealStaging(const HealStaging&) = delete;
  HealStaging& operator=(const HealStaging&) = delete;
  char* data() const { return base_; }
  size_t size() const { return bytes_; }
  // Bytes a transfer with these options stages on the receiving side (the
  // larger side: twice the sender's window).
  static size_t bytes_for(uint64_t piece_bytes, uint64_t chunk_bytes, int window);

 private:
  char* base_ = nullptr;
  size_t bytes_ = 0;
};

struct HealOptions {
  uint64_t chunk_bytes = 4ull << 20;  // bytes per checksummed chunk
  uint64_t piece_bytes = 256ull << 10;  // bytes per message (at most chunk_bytes are used)
  int window = 4;                     // messages in flight per target (the sender's bounce slots)
  double timeout_s = 60;              // deadline of the whole transfer
  // Reused staging memory; null (or too small) makes each transfer allocate
  // its own. Not shared between concurrent transfers.
  HealStaging* staging = nullptr;
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
