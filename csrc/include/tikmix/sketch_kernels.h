// Declarations of the torch-free CPU kernels of the sketch family (other families: reduce_kernels.h,
// CUDA launchers: cuda_kernels.h).
// Pointers are raw, sizes int64, no ATen types: the binding (csrc/binding) adapts tensors to these.
#pragma once
#include <cstdint>

namespace tikmix::cpu {

// out[r * ld + c] = R[row0 + r, col0 + c] / s_k * value  for r < rows, c < cols, i.e. ±value with the
// signs of the RNG contract (rng.h). Thread-safe; callers parallelise over disjoint tiles.
void fill_signs_f32(uint64_t seed, uint64_t row0, int64_t rows, int64_t col0, int64_t cols, float value,
                    float* out, int64_t ld);

}  // namespace tikmix::cpu
