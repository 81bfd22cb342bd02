#include "ckpt/write_plan.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"

namespace braid::ckpt {

std::vector<std::vector<BufferRange>> plan_writes(const StateLayout& layout,
                                                  const std::vector<std::vector<BufferRange>>& held,
                                                  uint64_t align) {
  if (align == 0) align = 1;
  const int world = static_cast<int>(held.size());
  std::vector<std::vector<BufferRange>> plan(static_cast<size_t>(world));

  for (int r = 0; r < world; ++r)
    for (auto& h : held[static_cast<size_t>(r)]) {
      const BufferSpec& b = layout.buffer(h.buffer);  // throws on an unknown name
      if (h.range.end < h.range.begin || h.range.end > b.bytes)
        throw ConfigError(fmt::format("rank {} declares bytes {} of buffer '{}', which has {} bytes", r,
                                      to_string(h.range), h.buffer, b.bytes),
                          "held ranges must lie inside their buffer");
    }

  for (const BufferSpec& b : layout.buffers()) {
    if (b.bytes == 0) continue;
    // Each rank's ranges of this buffer, sorted by start, with the largest end
    // so far: a rank holds an elementary piece [s, e) iff the largest end
    // among its ranges that start at or before s reaches e. The pieces come
    // in order, so one cursor per rank walks its ranges once (a tp rank
    // declares thousands of ranges; scanning them all for each piece was
    // quadratic).
    struct Sorted {
      std::vector<ByteRange> ranges;
      std::vector<uint64_t> max_end;
      size_t cursor = 0;  // ranges [0, cursor) start at or before the current piece
    };
    std::vector<Sorted> by_rank(static_cast<size_t>(world));
    std::vector<uint64_t> cuts{0, b.bytes};
    for (int r = 0; r < world; ++r) {
      Sorted& sr = by_rank[static_cast<size_t>(r)];
      for (auto& h : held[static_cast<size_t>(r)])
        if (!h.range.empty() && h.buffer == b.name) {
          sr.ranges.push_back(h.range);
          cuts.push_back(h.range.begin);
          cuts.push_back(h.range.end);
        }
      std::sort(sr.ranges.begin(), sr.ranges.end(),
                [](const ByteRange& x, const ByteRange& y) { return x.begin < y.begin; });
      uint64_t m = 0;
      for (auto& rg : sr.ranges) sr.max_end.push_back(m = std::max(m, rg.end));
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

    // Elementary pieces between consecutive cuts, merged while the holder set is
    // unchanged so a replicated buffer stays one piece split W ways.
    struct Piece {
      ByteRange range;
      std::vector<int> holders;
    };
    std::vector<Piece> pieces;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      ByteRange seg{cuts[i], cuts[i + 1]};
      std::vector<int> holders;
      for (int r = 0; r < world; ++r) {
        Sorted& sr = by_rank[static_cast<size_t>(r)];
        while (sr.cursor < sr.ranges.size() && sr.ranges[sr.cursor].begin <= seg.begin) ++sr.cursor;
        if (sr.cursor > 0 && sr.max_end[sr.cursor - 1] >= seg.end) holders.push_back(r);
      }
      if (holders.empty())
        throw ConfigError(fmt::format("bytes {} of buffer '{}' are held by no rank", to_string(seg), b.name),
                          "every byte of every buffer must be held by at least one rank to be checkpointed");
      if (!pieces.empty() && pieces.back().holders == holders && pieces.back().range.end == seg.begin)
        pieces.back().range.end = seg.end;
      else
        pieces.push_back({seg, std::move(holders)});
    }

    for (auto& p : pieces) {
      const uint64_t k = p.holders.size();
      const uint64_t len = p.range.size();
      uint64_t prev = p.range.begin;
      for (uint64_t j = 0; j < k; ++j) {
        uint64_t next;
        if (j + 1 == k) {
          next = p.range.end;
        } else {
          // Cut at an aligned offset (from the buffer start), never before the
          // previous cut: a piece smaller than the alignment goes whole to its
          // last holder.
          unsigned __int128 ideal = static_cast<unsigned __int128>(len) * (j + 1) / k;
          next = (p.range.begin + static_cast<uint64_t>(ideal)) / align * align;
          next = std::clamp(next, prev, p.range.end);
        }
        if (next > prev) plan[static_cast<size_t>(p.holders[j])].push_back({b.name, {prev, next}});
        prev = next;
      }
    }
  }
  return plan;
}

}  // namespace braid::ckpt
