// Deterministic segment sums: a stable counting sort of rows by group, then per (group, column strip) sums in the
// fixed 4096-row chunk order of the contract in reduce_kernels.h.
#include <algorithm>

#include "tikmix/reduce_kernels.h"

namespace tikmix::cpu {
namespace {

template <typename Id>
int64_t plan(const Id* ids, int64_t n, int64_t num_groups, int64_t* offsets, int64_t* rows) {
  std::fill(offsets, offsets + num_groups + 1, int64_t(0));
  for (int64_t z = 0; z < n; ++z) {
    const int64_t id = int64_t(ids[z]);
    if (id < 0 || id >= num_groups) return z;
    ++offsets[id + 1];
  }
  for (int64_t j = 0; j < num_groups; ++j) offsets[j + 1] += offsets[j];
  // offsets[j] is advanced while filling; offsets[j] ends at the old offsets[j+1], so shift back afterwards.
  for (int64_t z = 0; z < n; ++z) rows[offsets[ids[z]]++] = z;
  for (int64_t j = num_groups; j > 0; --j) offsets[j] = offsets[j - 1];
  offsets[0] = 0;
  return -1;
}

constexpr int64_t kStrip = 2048;  // columns per inner pass (two accumulator rows stay in L1; a row read is ≤ 16 KiB)

template <typename T>
void reduce(const T* x, int64_t ldx, const int64_t* offsets, const int64_t* rows, int64_t group, int64_t col0,
            int64_t cols, bool mean, T* out) {
  const int64_t begin = offsets[group], end = offsets[group + 1];
  T total[kStrip], part[kStrip];
  for (int64_t s0 = 0; s0 < cols; s0 += kStrip) {
    const int64_t w = std::min(kStrip, cols - s0);
    for (int64_t c = 0; c < w; ++c) total[c] = T(0);
    for (int64_t c = 0; c < w; ++c) part[c] = T(0);
    int64_t chunk = -1;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t z = rows[p];
      const int64_t q = z / kSegmentChunkRows;
      if (q != chunk) {
        if (chunk >= 0) {
          for (int64_t c = 0; c < w; ++c) total[c] += part[c];
          for (int64_t c = 0; c < w; ++c) part[c] = T(0);
        }
        chunk = q;
      }
      const T* src = x + z * ldx + col0 + s0;
      for (int64_t c = 0; c < w; ++c) part[c] += src[c];
    }
    if (chunk >= 0)
      for (int64_t c = 0; c < w; ++c) total[c] += part[c];
    T* dst = out + s0;
    if (mean) {
      const int64_t count = end - begin;
      if (count == 0) {
        for (int64_t c = 0; c < w; ++c) dst[c] = T(0);
      } else {
        const T denom = T(count);
        for (int64_t c = 0; c < w; ++c) dst[c] = total[c] / denom;
      }
    } else {
      for (int64_t c = 0; c < w; ++c) dst[c] = total[c];
    }
  }
}

}  // namespace

int64_t segment_plan(const int64_t* ids, int64_t n, int64_t num_groups, int64_t* offsets, int64_t* rows) {
  return plan(ids, n, num_groups, offsets, rows);
}
int64_t segment_plan(const int32_t* ids, int64_t n, int64_t num_groups, int64_t* offsets, int64_t* rows) {
  return plan(ids, n, num_groups, offsets, rows);
}

void segment_reduce(const float* x, int64_t ldx, const int64_t* offsets, const int64_t* rows, int64_t group,
                    int64_t col0, int64_t cols, bool mean, float* out) {
  reduce(x, ldx, offsets, rows, group, col0, cols, mean, out);
}
void segment_reduce(const double* x, int64_t ldx, const int64_t* offsets, const int64_t* rows, int64_t group,
                    int64_t col0, int64_t cols, bool mean, double* out) {
  reduce(x, ldx, offsets, rows, group, col0, cols, mean, out);
}

}  // namespace tikmix::cpu
