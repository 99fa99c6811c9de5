// mixture_scores: largest-remainder draw counts per candidate and the resampled float64 mean, in the exact order
// of the contract in reduce_kernels.h (so the CUDA kernel and the solvers' numpy path reproduce the same bits).
#include <algorithm>
#include <cmath>
#include <vector>

#include "tikmix/reduce_kernels.h"
#include "tikmix/rng.h"

namespace tikmix::cpu {

int mixture_counts(const double* w, int64_t num_groups, int64_t draws, int64_t* counts, int64_t* bad) {
  double s = 0.0;
  for (int64_t j = 0; j < num_groups; ++j) {
    const double v = w[j];
    if (!std::isfinite(v)) {
      *bad = j;
      return kMixtureNonFinite;
    }
    if (v < 0.0) {
      *bad = j;
      return kMixtureNegative;
    }
    s += v;
  }
  if (!(s > 0.0) || !std::isfinite(s)) return kMixtureBadSum;
  std::vector<double> frac(size_t(num_groups), 0.0);
  std::vector<int64_t> order;
  order.reserve(size_t(num_groups));
  int64_t assigned = 0;
  for (int64_t j = 0; j < num_groups; ++j) {
    const double q = (w[j] / s) * double(draws);
    const double f = std::floor(q);
    counts[j] = int64_t(f);
    frac[j] = q - f;
    assigned += counts[j];
    if (w[j] > 0.0) order.push_back(j);
  }
  const int64_t remaining = draws - assigned;
  if (remaining < 0 || remaining > int64_t(order.size())) return kMixtureInternal;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return frac[a] != frac[b] ? frac[a] > frac[b] : a < b;
  });
  for (int64_t u = 0; u < remaining; ++u) ++counts[order[u]];
  return kMixtureOk;
}

namespace {

template <typename T>
void scores(const T* per_sample, int64_t ld, int64_t n, const int64_t* offsets, const int64_t* rows,
            const int64_t* counts, int64_t num_groups, int64_t draws, uint64_t seed, int64_t c0, int64_t c1,
            double* acc, T* out, int64_t ldo) {
  const uint64_t key = rng_key(seed);
  const double denom = double(draws);
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t i = 0; i < n; ++i) acc[i] = 0.0;
    const int64_t* cnt = counts + c * num_groups;
    for (int64_t j = 0; j < num_groups; ++j) {
      const int64_t m = cnt[j];
      if (m == 0) continue;
      const int64_t* domain = rows + offsets[j];
      const uint64_t nj = uint64_t(offsets[j + 1] - offsets[j]);  // > 0: validated by the caller
      for (int64_t t = 0; t < m; ++t) {
        const uint64_t word = resample_word(key, uint64_t(c), uint64_t(j), uint64_t(t));
        const T* src = per_sample + domain[word % nj] * ld;
        for (int64_t i = 0; i < n; ++i) acc[i] += double(src[i]);
      }
    }
    T* dst = out + c * ldo;
    for (int64_t i = 0; i < n; ++i) dst[i] = T(acc[i] / denom);
  }
}

}  // namespace

void mixture_scores(const float* per_sample, int64_t ld, int64_t n, const int64_t* offsets, const int64_t* rows,
                    const int64_t* counts, int64_t num_groups, int64_t draws, uint64_t seed, int64_t c0, int64_t c1,
                    double* acc, float* out, int64_t ldo) {
  scores(per_sample, ld, n, offsets, rows, counts, num_groups, draws, seed, c0, c1, acc, out, ldo);
}
void mixture_scores(const double* per_sample, int64_t ld, int64_t n, const int64_t* offsets, const int64_t* rows,
                    const int64_t* counts, int64_t num_groups, int64_t draws, uint64_t seed, int64_t c0, int64_t c1,
                    double* acc, double* out, int64_t ldo) {
  scores(per_sample, ld, n, offsets, rows, counts, num_groups, draws, seed, c0, c1, acc, out, ldo);
}

}  // namespace tikmix::cpu
