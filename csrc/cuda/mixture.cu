// mixture_scores on CUDA: one thread per (candidate c, column i) sums its draws in the contract order of
// tikmix/reduce_kernels.h — domains j ascending, draws t ascending, float64 adds from +0.0, row of draw t =
// rows_j[resample_word(key, c, j, t) mod n_j] — so the result equals the CPU's bit for bit. Lanes of a warp take
// consecutive columns of one candidate where n allows: they hash the same draws and read one row together.
#include "launch.cuh"

#include <algorithm>
#include <cstdint>

#include "tikmix/cuda_kernels.h"
#include "tikmix/rng.h"

namespace tikmix::cuda {
namespace {

constexpr int kMixThreads = 128;

template <typename T>
__global__ void mixture_scores_kernel(const T* __restrict__ per_sample, int64_t ld, int64_t n,
                                      const int64_t* __restrict__ offsets, const int64_t* __restrict__ rows,
                                      const int64_t* __restrict__ counts, int64_t num_cand, int64_t num_groups,
                                      int64_t draws, uint64_t key, T* __restrict__ out, int64_t ldo) {
  const int64_t total = num_cand * n;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = idx / n, i = idx - c * n;
    const int64_t* cnt = counts + c * num_groups;
    double acc = 0.0;
    for (int64_t j = 0; j < num_groups; ++j) {
      const int64_t m = cnt[j];
      if (m == 0) continue;
      const int64_t* domain = rows + offsets[j];
      const uint64_t nj = uint64_t(offsets[j + 1] - offsets[j]);  // > 0: validated by the binding
      for (int64_t t = 0; t < m; ++t) {
        const uint64_t word = resample_word(key, uint64_t(c), uint64_t(j), uint64_t(t));
        acc = __dadd_rn(acc, double(per_sample[domain[word % nj] * ld + i]));
      }
    }
    out[c * ldo + i] = T(__ddiv_rn(acc, double(draws)));
  }
}

template <typename T>
cudaError_t scores_impl(const T* per_sample, int64_t ld, int64_t n, const int64_t* offsets, const int64_t* rows,
                        const int64_t* counts, int64_t num_cand, int64_t num_groups, int64_t draws, uint64_t seed,
                        T* out, int64_t ldo, cudaStream_t stream) {
  const int64_t total = num_cand * n;
  if (total == 0) return cudaSuccess;
  const unsigned grid = unsigned(std::min<int64_t>(ceil_div(total, kMixThreads), int64_t(1) << 20));
  TIKMIX_LAUNCH(mixture_scores_kernel<T>, grid, kMixThreads, 0, stream, per_sample, ld, n, offsets, rows, counts,
                num_cand, num_groups, draws, rng_key(seed), out, ldo);
  return cudaGetLastError();
}

}  // namespace

cudaError_t mixture_scores(const float* per_sample, int64_t ld, int64_t n, const int64_t* offsets,
                           const int64_t* rows, const int64_t* counts, int64_t num_cand, int64_t num_groups,
                           int64_t draws, uint64_t seed, float* out, int64_t ldo, cudaStream_t stream) {
  return scores_impl(per_sample, ld, n, offsets, rows, counts, num_cand, num_groups, draws, seed, out, ldo, stream);
}
cudaError_t mixture_scores(const double* per_sample, int64_t ld, int64_t n, const int64_t* offsets,
                           const int64_t* rows, const int64_t* counts, int64_t num_cand, int64_t num_groups,
                           int64_t draws, uint64_t seed, double* out, int64_t ldo, cudaStream_t stream) {
  return scores_impl(per_sample, ld, n, offsets, rows, counts, num_cand, num_groups, draws, seed, out, ldo, stream);
}

}  // namespace tikmix::cuda
