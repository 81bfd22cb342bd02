// Hierarchical all-reduce: reduce-scatter inside each host (shared memory),
// all-reduce across hosts (network), all-gather inside each host.
//
// Cost model (H hosts of L ranks, S bytes): inside a host the ring moves
// (L-1)/L S per rank twice over the fast link; across hosts each rank
// all-reduces only its S/L block with its counterparts on the other hosts,
// so the slow links carry 2 (H-1)/H * S/L per rank, L streams in parallel per
// host — instead of the flat ring's 2(n-1)/n S through the host's links in
// a single stream. Steps: 2(L-1) + those of the cross-host algorithm.
//
// Order: each element is reduced inside its host by the ring's fixed chain
// (one owner per host), then across hosts by the cross-host algorithm's fixed
// order (one final owner, who divides for avg); the all-gather copies.
// Preconditions: several hosts, every host with the same number of ranks
// (>= 2); otherwise the flat `cross_host` algorithm runs over all ranks.
#include <map>
#include <string>

#include "comm/algo/algorithms.hpp"

namespace braid::comm {

HostLayout HostLayout::from_host_ids(const std::vector<std::string>& ids) {
  HostLayout l;
  std::map<std::string, int> index;
  std::vector<int> sizes;
  for (const std::string& id : ids) {
    auto [it, added] = index.emplace(id, static_cast<int>(sizes.size()));
    if (added) sizes.push_back(0);
    l.host_of.push_back(it->second);
    sizes[static_cast<size_t>(it->second)]++;
  }
  l.hosts = static_cast<int>(sizes.size());
  l.uniform = l.hosts >= 2 && sizes[0] >= 2;
  for (int s : sizes) l.uniform = l.uniform && s == sizes[0];
  return l;
}

namespace {

void flat_all_reduce(const Collective& c, const void* in, void* out, size_t count, Algo algo) {
  switch (algo) {
    case Algo::Rhd: rhd_all_reduce(c, in, out, count); return;
    case Algo::Tree: tree_all_reduce(c, in, out, count); return;
    default: ring_all_reduce(c, in, out, count); return;
  }
}

}  // namespace

void hierarchical_all_reduce(const Collective& c, const void* in, void* out, size_t count,
                             const HostLayout& layout, Algo cross_host) {
  if (!layout.uniform) {
    flat_all_reduce(c, in, out, count, cross_host);
    return;
  }
  const int n = c.size(), me = c.rank();
  const int my_host = layout.host_of[static_cast<size_t>(me)];
  std::vector<int> local;                  // group ranks on this host, ascending
  std::vector<std::vector<int>> by_host(static_cast<size_t>(layout.hosts));
  for (int r = 0; r < n; ++r) {
    by_host[static_cast<size_t>(layout.host_of[static_cast<size_t>(r)])].push_back(r);
    if (layout.host_of[static_cast<size_t>(r)] == my_host) local.push_back(r);
  }
  int li = 0;
  while (local[static_cast<size_t>(li)] != me) ++li;
  std::vector<int> cross;  // the li-th rank of every host, hosts in order
  for (const auto& h : by_host) cross.push_back(h[static_cast<size_t>(li)]);

  const size_t es = c.elem;
  const Partition p = Partition::balanced(count, static_cast<int>(local.size()));
  char* block = static_cast<char*>(out) + p.at(li) * es;

  std::vector<int> storage0, storage1, storage2;
  Collective intra = c.subgroup(local, storage0, 0);
  intra.avg_divisor = 0;  // partial sums: the cross-host owner divides
  ring_reduce_scatter(intra, in, block, p);

  Collective across = c.subgroup(cross, storage1, 1);
  flat_all_reduce(across, block, block, p.len(li), cross_host);

  Collective gather = c.subgroup(local, storage2, 2);
  ring_all_gather(gather, block, out, p);
}

}  // namespace braid::comm
