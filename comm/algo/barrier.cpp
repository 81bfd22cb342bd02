// Dissemination barrier.
//
// Cost model: ceil(log2 n) rounds; in round k each rank sends an empty
// message to rank + 2^k and waits for one from rank - 2^k: ceil(log2 n) α,
// no payload. After the last round every rank has (transitively) heard from
// every other, so none leaves before all have arrived.
#include "comm/algo/algorithms.hpp"

namespace braid::comm {

void dissemination_barrier(const Collective& c) {
  const int n = c.size(), r = c.rank();
  uint32_t round = 0;
  for (int dist = 1; dist < n; dist *= 2, ++round) {
    net::RequestPtr g = c.recv((r - dist + n) % n, nullptr, 0, round);
    net::RequestPtr s = c.send((r + dist) % n, nullptr, 0, round);
    c.wait(g);
    c.wait(s);
  }
}

}  // namespace braid::comm
