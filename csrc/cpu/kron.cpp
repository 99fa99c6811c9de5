// sketch_kron's torch-free part: the unit-sign tiles R_in / R_out and the single output scale (reduce_kernels.h).
#include <cmath>

#include "tikmix/reduce_kernels.h"
#include "tikmix/rng.h"
#include "tikmix/sketch_kernels.h"

namespace tikmix::cpu {

void kron_fill_tile(uint64_t seed, uint64_t layer, uint64_t tag, uint64_t row0, int64_t rows, int64_t k, float* out,
                    int64_t ld) {
  fill_signs_f32(kron_seed(seed, layer, tag), row0, rows, 0, k, 1.0f, out, ld);
}

float kron_scale(int64_t k_in, int64_t k_out) {
  return float(1.0 / std::sqrt(double(k_in) * double(k_out)));
}

}  // namespace tikmix::cpu
