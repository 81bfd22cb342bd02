#pragma once
// The collective algorithms, one file each (ring.cpp, rhd.cpp, tree.cpp,
// hierarchical.cpp, barrier.cpp). Each is a plain function over a Collective;
// the communicator resolves Algo::Auto, converts bf16/f16 to their f32
// accumulation type beforehand and narrows afterwards.
//
// Common rules:
//  * `in` may equal `out` (in place) for all-reduce; for reduce-scatter `out`
//    may be this rank's block inside `in`; for all-gather `in` may be this
//    rank's block inside `out`. No other overlap.
//  * Every reduced element is computed in one fixed order (a fixed bracketing,
//    lower ranks first), and the avg division (Collective::avg_divisor) is
//    applied once to the final value, so all ranks end with identical bytes.
//  * count == 0 never reaches an algorithm (the communicator handles it).
#include <cstddef>
#include <string>
#include <vector>

#include "comm/algo/collective.hpp"

namespace braid::comm {

// ring.cpp — chunked, pipelined ring.
void ring_all_reduce(const Collective& c, const void* in, void* out, size_t count);
// `in` holds p.total() elements; this rank's reduced block p.len(rank) goes to `out`.
void ring_reduce_scatter(const Collective& c, const void* in, void* out, const Partition& p);
// `in` holds this rank's block (p.len(rank) elements); `out` receives all p.total().
void ring_all_gather(const Collective& c, const void* in, void* out, const Partition& p);
void ring_broadcast(const Collective& c, void* buf, size_t count, int root);

// rhd.cpp — recursive halving/doubling (Rabenseifner), any world size.
void rhd_all_reduce(const Collective& c, const void* in, void* out, size_t count);
void rhd_reduce_scatter(const Collective& c, const void* in, void* out, const Partition& p);
void rhd_all_gather(const Collective& c, const void* in, void* out, const Partition& p);

// tree.cpp — pipelined binary tree.
void tree_all_reduce(const Collective& c, const void* in, void* out, size_t count);
void tree_broadcast(const Collective& c, void* buf, size_t count, int root);

// hierarchical.cpp — reduce-scatter inside each host, all-reduce across
// hosts, all-gather inside each host.
struct HostLayout {
  // host_of[group rank] = host index, hosts numbered by their lowest rank.
  std::vector<int> host_of;
  int hosts = 1;
  // True when every host has the same number of ranks (and there are several
  // hosts with several ranks each): the precondition of the hierarchy.
  bool uniform = false;
  static HostLayout from_host_ids(const std::vector<std::string>& ids_by_group_rank);
};
// `cross_host` is the flat algorithm for the middle phase (ring, rhd or tree).
void hierarchical_all_reduce(const Collective& c, const void* in, void* out, size_t count,
                             const HostLayout& layout, Algo cross_host);

// barrier.cpp — dissemination barrier, ceil(log2 n) rounds of empty messages.
void dissemination_barrier(const Collective& c);

// Splits a block of `len` elements into the chunk count used by the ring:
// ceil(len / chunk_elems) pieces, capped so that `steps` * chunks messages fit
// in one tag phase.
size_t ring_chunk_count(size_t len, size_t chunk_elems, size_t steps);

}  // namespace braid::comm
