// Torch-free host launchers of the CUDA kernels (csrc/cuda/*.cu): raw device pointers, int64 sizes, a stream.
// The binding (csrc/binding/*_cuda.cpp) checks inputs, allocates outputs and scratch with ATen and calls these.
// Every launcher enqueues on `stream`, never synchronises, and returns the first CUDA error it saw
// (cudaSuccess otherwise); it does not check arguments the binding has already checked.
#pragma once
#if defined(TIKMIX_CPU_EMULATION)
#include "cuda_emu.h"  // tests/cpp: CPU stand-ins for the CUDA runtime types (tests/test_mma_layout.py)
#else
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

#include "tikmix/cuda_plan.h"

namespace tikmix::cuda {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---- sketch family (sketch.cu) -------------------------------------------------------------------------------
// out[n, c] = out_scale · Σ_r x[n, r]·scale[r]·sign(seed, offset + r, c)      (accumulate: out[n, c] += …)
//   sign(seed, r, c) = ±1 per the RNG contract (rng.h); the sketch op passes out_scale = float(1/√k), sketch_kron
//   passes 1 (unit signs). x: [n, d] of `dtype`, row stride ldx elements (column stride 1); scale: [d] float32 or
//   nullptr; out: [n, k] float32, row stride ldo; workspace: sketch_workspace_floats(n, d, k) floats (nullptr when
//   that is 0). Tensor cores (mma.sync m16n8k16): bf16/fp16 x without scale directly; float32 x, or any x with a
//   scale, as the exact bf16 hi/mid/lo split of fl32(x·scale) (3 MMAs per tile). The reduction over d is split by
//   sketch_plan(n, d, k) only and partial sums are added in a fixed order: the bits do not depend on the GPU.
//   Requires n ≥ 1, d ≥ 0, 1 ≤ k < 2^26, offset + d ≤ 2^44 (the binding checks).
cudaError_t sketch(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* scale,
                   uint64_t seed, uint64_t offset, int64_t k, float out_scale, float* out, int64_t ldo,
                   bool accumulate, float* workspace, cudaStream_t stream);

// ---- segment sums (segment.cu): the contract order of reduce_kernels.h --------------------------------------
// Inputs describe rows sorted by group (stable): rows[p] for p in [0, n_rows) lists group 0's rows ascending,
// then group 1's, …; a "segment" is a maximal run of positions with one group and one 4096-row chunk
// (rows[p] / kSegmentChunkRows). seg_start: [num_segments] ascending first positions (seg_start[0] = 0).
// partial[m, c] = +0.0 + x[rows[p0], c] + x[rows[p0+1], c] + … over segment m, in order.
cudaError_t segment_partials(const float* x, int64_t ldx, int64_t k, const int64_t* rows, int64_t n_rows,
                             const int64_t* seg_start, int64_t num_segments, float* partial, cudaStream_t stream);
cudaError_t segment_partials(const double* x, int64_t ldx, int64_t k, const int64_t* rows, int64_t n_rows,
                             const int64_t* seg_start, int64_t num_segments, double* partial, cudaStream_t stream);
// out[j, c] = +0.0 + partial[group_seg[j], c] + … + partial[group_seg[j+1] − 1, c]; mean: divided by
// count_j = offsets[j+1] − offsets[j] when > 0 (0 otherwise). group_seg, offsets: [num_groups + 1].
cudaError_t segment_combine(const float* partial, int64_t k, const int64_t* group_seg, const int64_t* offsets,
                            int64_t num_groups, bool mean, float* out, int64_t ldo, cudaStream_t stream);
cudaError_t segment_combine(const double* partial, int64_t k, const int64_t* group_seg, const int64_t* offsets,
                            int64_t num_groups, bool mean, double* out, int64_t ldo, cudaStream_t stream);

// ---- mixture_scores (mixture.cu): the contract of reduce_kernels.h, one thread per (candidate, column) --------
// per_sample: [N, n] row stride ld; offsets [G + 1] / rows [N]: rows sorted by domain (stable); counts: [C, G]
// draw counts (validated: no draws from an empty domain); out: [C, n] row stride ldo.
cudaError_t mixture_scores(const float* per_sample, int64_t ld, int64_t n, const int64_t* offsets,
                           const int64_t* rows, const int64_t* counts, int64_t num_cand, int64_t num_groups,
                           int64_t draws, uint64_t seed, float* out, int64_t ldo, cudaStream_t stream);
cudaError_t mixture_scores(const double* per_sample, int64_t ld, int64_t n, const int64_t* offsets,
                           const int64_t* rows, const int64_t* counts, int64_t num_cand, int64_t num_groups,
                           int64_t draws, uint64_t seed, double* out, int64_t ldo, cudaStream_t stream);

}  // namespace tikmix::cuda
