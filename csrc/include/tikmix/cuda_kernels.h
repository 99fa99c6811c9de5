// Torch-free host launchers of the CUDA kernels (csrc/cuda/*.cu): raw device pointers, int64 sizes, a stream.
// The binding (csrc/binding/*_cuda.cpp) checks inputs, allocates outputs and scratch with ATen and calls these.
// Every launcher enqueues on `stream`, never synchronises, and returns the first CUDA error it saw
// (cudaSuccess otherwise); it does not check arguments the binding has already checked.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "tikmix/cuda_plan.h"

namespace tikmix::cuda {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---- sketch family (sketch.cu, signs.cu) -------------------------------------------------------------------
// out[n, c] = s_k · Σ_r x[n, r]·scale[r]·sign(seed, offset + r, c)      (accumulate: out[n, c] += …)
//   x: [n, d] of `dtype`, row stride ldx elements (column stride 1); scale: [d] float32 or nullptr;
//   out: [n, k] float32, row stride ldo; workspace: sketch_workspace_floats(n, d, k) floats (may be nullptr
//   when that is 0). Tensor cores (mma.sync m16n8k16): bf16/fp16 x without scale directly; float32 x, or any x
//   with a scale, as the exact bf16 hi/mid/lo split of x·scale (3 MMAs per tile). The reduction over d is split
//   by sketch_plan(n, d, k) only, and partial sums are added in a fixed order: results do not depend on the GPU.
//   Requires n ≥ 1, d ≥ 0, 1 ≤ k < 2^26, offset + d ≤ 2^44 (the binding checks).
cudaError_t sketch(const void* x, DType dtype, int64_t n, int64_t d, int64_t ldx, const float* scale,
                   uint64_t seed, uint64_t offset, int64_t k, float* out, int64_t ldo, bool accumulate,
                   float* workspace, cudaStream_t stream);

// out[r·ld + c] = value · (sign(seed, row0 + r, c) ? −1 : +1) for r < rows, c < k  (the dense R, e.g. R_in/R_out
// of sketch_kron with value = 1/√k).
cudaError_t fill_signs(uint64_t seed, uint64_t row0, int64_t rows, int64_t k, float value, float* out, int64_t ld,
                       cudaStream_t stream);

}  // namespace tikmix::cuda
