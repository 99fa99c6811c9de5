// sketch_kron's torch-free part: the per-sample product Y = g̃ᵀ·Ã (kron_outer)
// and the single output scale (reduce_kernels.h). Ã and g̃ come from rowdot (influence.cpp).
#include <algorithm>
#include <cmath>

#include "clones.h"

#include "tikmix/reduce_kernels.h"
#include "tikmix/rng.h"

namespace tikmix::cpu {

float kron_scale(int64_t k_in, int64_t k_out) {
  return float(1.0 / std::sqrt(double(k_in) * double(k_out)));
}

namespace {

// Eight rows of Y at a time: each row of Ã is read once per 8 rows of Y, which stay in L1.
TIKMIX_CLONES void kron_outer_impl(const float* gt, int64_t ldg, const float* at, int64_t lda, int64_t T, int64_t p0,
                                   int64_t p1, int64_t k_in, float scale, float* out) {
  constexpr int64_t kRows = 8;
  for (int64_t pb = p0; pb < p1; pb += kRows) {
    const int64_t np = std::min(kRows, p1 - pb);
    float* y = out + pb * k_in;
    std::fill(y, y + np * k_in, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      const float* arow = at + t * lda;
      const float* grow = gt + t * ldg + pb;
      for (int64_t j = 0; j < np; ++j) {
        const float gv = grow[j];
        float* yr = y + j * k_in;
        for (int64_t q = 0; q < k_in; ++q) yr[q] = yr[q] + gv * arow[q];
      }
    }
    for (int64_t q = 0; q < np * k_in; ++q) y[q] = y[q] * scale;
  }
}

}  // namespace

void kron_outer(const float* gt, int64_t ldg, const float* at, int64_t lda, int64_t T, int64_t p0, int64_t p1,
                int64_t k_in, float scale, float* out) {
  kron_outer_impl(gt, ldg, at, lda, T, p0, p1, k_in, scale, out);
}

}  // namespace tikmix::cpu
