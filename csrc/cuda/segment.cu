// Deterministic segment sums on CUDA, in the exact summation order of the contract in tikmix/reduce_kernels.h
// (so CUDA and CPU agree bit for bit): per (group, 4096-row chunk) a partial sum over the group's rows of that
// chunk in ascending row order starting from +0.0, then per group the partials in ascending chunk order starting
// from +0.0. Only IEEE adds (and one division for the mean); no atomics.
//
// The binding sorts rows by group (stable) and finds the segments — maximal runs with one group and one chunk —
// with ATen; the two kernels here are one thread per (segment, column) and one per (group, column), with
// consecutive threads on consecutive columns (coalesced row reads).
#include "launch.cuh"

#include <algorithm>
#include <cstdint>

#include "tikmix/cuda_kernels.h"

namespace tikmix::cuda {
namespace {

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

constexpr int kSegThreads = 256;

unsigned grid_for(int64_t total) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kSegThreads), int64_t(1) << 20)));
}

template <typename T>
__global__ void segment_partials_kernel(const T* __restrict__ x, int64_t ldx, int64_t k,
                                        const int64_t* __restrict__ rows, int64_t n_rows,
                                        const int64_t* __restrict__ seg_start, int64_t num_segments,
                                        T* __restrict__ partial) {
  const int64_t total = num_segments * k;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx / k, c = idx - m * k;
    const int64_t begin = seg_start[m], end = m + 1 < num_segments ? seg_start[m + 1] : n_rows;
    T s = T(0);
    for (int64_t p = begin; p < end; ++p) s = add_rn(s, x[rows[p] * ldx + c]);
    partial[idx] = s;
  }
}

template <typename T>
__global__ void segment_combine_kernel(const T* __restrict__ partial, int64_t k, const int64_t* __restrict__ group_seg,
                                       const int64_t* __restrict__ offsets, int64_t num_groups, int mean,
                                       T* __restrict__ out, int64_t ldo) {
  const int64_t total = num_groups * k;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx / k, c = idx - j * k;
    T s = T(0);
    for (int64_t m = group_seg[j]; m < group_seg[j + 1]; ++m) s = add_rn(s, partial[m * k + c]);
    if (mean) {
      const int64_t count = offsets[j + 1] - offsets[j];
      s = count > 0 ? div_rn(s, T(count)) : T(0);
    }
    out[j * ldo + c] = s;
  }
}

template <typename T>
cudaError_t partials_impl(const T* x, int64_t ldx, int64_t k, const int64_t* rows, int64_t n_rows,
                          const int64_t* seg_start, int64_t num_segments, T* partial, cudaStream_t stream) {
  const int64_t total = num_segments * k;
  if (total == 0) return cudaSuccess;
  TIKMIX_LAUNCH(segment_partials_kernel<T>, grid_for(total), kSegThreads, 0, stream, x, ldx, k, rows, n_rows,
                seg_start, num_segments, partial);
  return cudaGetLastError();
}

template <typename T>
cudaError_t combine_impl(const T* partial, int64_t k, const int64_t* group_seg, const int64_t* offsets,
                         int64_t num_groups, bool mean, T* out, int64_t ldo, cudaStream_t stream) {
  const int64_t total = num_groups * k;
  if (total == 0) return cudaSuccess;
  TIKMIX_LAUNCH(segment_combine_kernel<T>, grid_for(total), kSegThreads, 0, stream, partial, k, group_seg, offsets,
                num_groups, mean ? 1 : 0, out, ldo);
  return cudaGetLastError();
}

}  // namespace

cudaError_t segment_partials(const float* x, int64_t ldx, int64_t k, const int64_t* rows, int64_t n_rows,
                             const int64_t* seg_start, int64_t num_segments, float* partial, cudaStream_t stream) {
  return partials_impl(x, ldx, k, rows, n_rows, seg_start, num_segments, partial, stream);
}
cudaError_t segment_partials(const double* x, int64_t ldx, int64_t k, const int64_t* rows, int64_t n_rows,
                             const int64_t* seg_start, int64_t num_segments, double* partial, cudaStream_t stream) {
  return partials_impl(x, ldx, k, rows, n_rows, seg_start, num_segments, partial, stream);
}
cudaError_t segment_combine(const float* partial, int64_t k, const int64_t* group_seg, const int64_t* offsets,
                            int64_t num_groups, bool mean, float* out, int64_t ldo, cudaStream_t stream) {
  return combine_impl(partial, k, group_seg, offsets, num_groups, mean, out, ldo, stream);
}
cudaError_t segment_combine(const double* partial, int64_t k, const int64_t* group_seg, const int64_t* offsets,
                            int64_t num_groups, bool mean, double* out, int64_t ldo, cudaStream_t stream) {
  return combine_impl(partial, k, group_seg, offsets, num_groups, mean, out, ldo, stream);
}

}  // namespace tikmix::cuda
