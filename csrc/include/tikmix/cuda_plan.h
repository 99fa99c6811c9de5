// Launch plan of the CUDA sketch kernel: a pure function of (N, d, k) — never of the device, its SM count or
// anything else — so the split of the reduction, and therefore every bit of the result, is the same on every
// GPU. Plain C++ (no CUDA headers) so that tests/test_mma_layout.py can check it with g++.
#pragma once
#include <algorithm>
#include <cstdint>

namespace tikmix::cuda {

constexpr int kTileRows = 64;             // rows of R (columns of x) staged per shared-memory tile
constexpr int kMaxWarps = 8;              // warps per CTA; each owns one 64-column hash block
constexpr int kMaxNTiles = 8;             // n8 tiles per CTA: at most 64 samples (registers: 4·4·NT accumulators)
constexpr int64_t kPlanCtas = 1056;       // split-K aims at this many CTAs (8 waves of 132): a constant, not the SM count
constexpr int64_t kMinSplitTiles = 64;    // ≥ 4096 rows per split
constexpr int64_t kMaxSplits = 1024;
constexpr int64_t kMaxWorkspaceFloats = int64_t(1) << 28;  // partial sums ≤ 1 GiB

struct SketchPlan {
  int n_tiles = 1;          // n8 tiles per CTA (1, 2, 4 or 8): samples per CTA = 8·n_tiles
  int64_t groups = 1;       // sample groups (grid.y)
  int warps = 1;            // warps per CTA (block = 32·warps threads)
  int64_t col_ctas = 1;     // CTAs along the columns (grid.x)
  int64_t blocks = 1;       // 64-column hash blocks: ceil(k / 64)
  int64_t k_pad = 64;       // partial row length: 64·blocks
  int64_t splits = 1;       // d-chunks (grid.z); partial sums [splits][N][k_pad], added in order by a 2nd kernel
  int64_t chunk_tiles = 1;  // tiles (kTileRows rows) per split; the last split may have fewer
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline SketchPlan sketch_plan(int64_t n, int64_t d, int64_t k) {
  SketchPlan p;
  const int64_t need = ceil_div(std::max<int64_t>(n, 1), 8);
  p.n_tiles = need >= 8 ? 8 : need > 2 ? 4 : int(need);  // 1, 2, 4, 8
  p.groups = ceil_div(std::max<int64_t>(n, 1), 8 * p.n_tiles);
  p.blocks = ceil_div(k, 64);
  p.k_pad = 64 * p.blocks;
  p.warps = int(std::min<int64_t>(kMaxWarps, p.blocks));
  p.col_ctas = ceil_div(p.blocks, p.warps);
  const int64_t tiles = std::max<int64_t>(1, ceil_div(d, kTileRows));
  int64_t s = ceil_div(kPlanCtas, p.col_ctas * p.groups);
  s = std::min(s, ceil_div(tiles, kMinSplitTiles));
  s = std::min(s, kMaxSplits);
  s = std::min(s, std::max<int64_t>(1, kMaxWorkspaceFloats / (std::max<int64_t>(n, 1) * p.k_pad)));
  s = std::max<int64_t>(s, 1);
  p.chunk_tiles = ceil_div(tiles, s);
  p.splits = ceil_div(tiles, p.chunk_tiles);  // no empty split
  return p;
}

// Floats of scratch the sketch launcher needs: the partial sums, or none when there is one split (the kernel then
// writes the output directly).
inline int64_t sketch_workspace_floats(int64_t n, int64_t d, int64_t k) {
  const SketchPlan p = sketch_plan(n, d, k);
  return p.splits > 1 ? p.splits * n * p.k_pad : 0;
}

}  // namespace tikmix::cuda
